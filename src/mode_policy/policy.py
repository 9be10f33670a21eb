"""MoDEPolicy: the user-facing policy (LeRobot-style interface).

Batch keys: ``observation.state`` (B, [n_obs,] S), ``goal`` (B, goal_dim)
(or ``task``: list of instructions when a goal encoder is attached),
``action`` (B, H, A) and ``action_is_pad`` (B, H) for training.
The encoders turn a batch into condition tokens; :class:`~mode_policy.model.edm.EDMDenoiser`
does the diffusion (training loss and sampling).
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from .constants import ACTION_IS_PAD_KEY, ACTION_KEY, GOAL_KEY, STATE_KEY, TASK_KEY
from .encoders.state import GroupedStateEncoder, StateEncoder
from .errors import CheckpointError, ConfigError, DataError
from .fileio import atomic_write, atomic_write_text
from .model.config import MoDEConfig
from .model.diffusion import SamplingSettings
from .model.edm import EDMDenoiser
from .model.guidance import GuidanceSettings, InpaintPrefix, check_prefix
from .model.moe import balancing_loss
from .model.normalize import DATASET_KEY, DatasetNormalizers, Normalizer
from .observation import ObservationSchema

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
LEROBOT_MODE_CONFIG_NAME = "mode_config.json"
"""The MoDE config inside a LeRobot checkpoint folder (LeRobot's own config is config.json)."""
LEGACY_PREFIXES = {"transformer.": "denoiser.net."}
"""State-dict key prefixes of checkpoints written before the EDM denoiser module -> today's."""


def upgrade_state_dict(tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``tensors`` with legacy key prefixes renamed (a no-op for current checkpoints)."""
    out = {}
    for key, value in tensors.items():
        old = next((p for p in LEGACY_PREFIXES if key.startswith(p)), None)
        out[LEGACY_PREFIXES[old] + key[len(old) :] if old else key] = value
    return out


class MoDEPolicy(nn.Module):
    """Mixture-of-Denoising-Experts diffusion policy."""

    def __init__(self, config: MoDEConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        d = config.d_model
        self.normalizer = Normalizer(config.action_dim, max(config.state_dim, 0))
        # per-dataset statistics of a mixture-trained policy (empty otherwise: `normalizer` serves)
        self.dataset_normalizers = DatasetNormalizers(config.action_dim, max(config.state_dim, 0))
        self.state_encoder: StateEncoder | GroupedStateEncoder | None = None
        if config.state_groups:
            if sum(config.state_groups) != config.state_dim:
                raise ConfigError(
                    f"state_groups={config.state_groups} sum to {sum(config.state_groups)}, "
                    f"the state has {config.state_dim} values (state_dim)"
                )
            self.state_encoder = GroupedStateEncoder(config.state_groups, config.state_encoder_hidden, d)
        elif config.state_dim > 0:
            self.state_encoder = StateEncoder(config.state_dim, config.state_encoder_hidden, d)
        official = config.architecture == "official"
        self.image_encoder = None
        if config.image_keys and official:
            from .official.vision import OfficialImageEncoder

            self.image_encoder = OfficialImageEncoder(config)
        elif config.image_keys:
            from .encoders.resnet import ImageEncoder

            self.image_encoder = ImageEncoder(
                list(config.image_keys),
                depth=config.vision_depth,
                cond_dim=config.goal_dim,
                out_dim=d,
                width=config.vision_width,
                pretrained=config.vision_pretrained or None,
                shift_pad=config.image_shift_pad,
            )
        self.goal_proj = nn.Linear(config.goal_dim, d, bias=not official)  # the official goal embedding has none
        self.denoiser = EDMDenoiser(config)
        if config.freeze_router:
            for layer in self.denoiser.net.moe_layers():
                layer.router.requires_grad_(False)
        # Turns `task` strings into goal vectors. Frozen encoders (MiniLM, CLIP) are
        # plain attributes, outside the state dict; a trainable task embedding is an
        # nn.Module and so becomes a submodule that trains and saves with the policy.
        self.goal_encoder: Callable[[list[str]], Tensor] | None = None
        if config.goal_encoder:
            from .encoders.language import make_language_encoder

            self.goal_encoder = make_language_encoder(dict(config.goal_encoder))
            dim = self.goal_encoder.known_dim()  # None: its model is not on this machine (needed for text only)
            if dim is not None and dim != config.goal_dim:
                raise ConfigError(
                    f"goal encoder {config.goal_encoder['type']!r} gives {dim}-d goals, "
                    f"config.goal_dim is {config.goal_dim}"
                )
        self.register_load_state_dict_pre_hook(_upgrade_legacy_keys)  # old training checkpoints resume
        self._action_queue: deque[Tensor] = deque()
        self._obs_history: deque[dict[str, Tensor]] = deque(maxlen=config.n_obs_steps)

    # ------------------------------------------------------------------ data
    def set_normalization(self, stats: Mapping[str, Mapping[str, Any]]) -> None:
        """Statistics of the one dataset this policy is trained on (clears per-dataset ones)."""
        self.normalizer.set_stats(stats)
        self.dataset_normalizers.clear()

    def set_dataset_normalization(self, per_dataset: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> None:
        """Per-dataset statistics ``{name: stats}`` (a mixture): each dataset keeps its own action and
        state normalisation and width (at most the policy's); batches then name their rows' dataset
        (``batch["dataset"]``: a name or one per row), as inference does (``dataset=``)."""
        self.dataset_normalizers.set_stats(per_dataset)

    @property
    def dataset_names(self) -> list[str]:
        """The datasets with their own normalisation (empty for a single-dataset policy)."""
        return self.dataset_normalizers.names

    def _dataset_rows(self, batch: Mapping[str, Any], size: int) -> Tensor | None:
        """Member index (B,) of each row's dataset (``batch["dataset"]``: one name, or one per row;
        default: the only dataset); None for a single-dataset policy."""
        names = self.dataset_normalizers.names
        if not names:
            return None
        name = batch.get(DATASET_KEY)
        if name is None and len(names) > 1:
            raise DataError(
                f"this policy normalises each of its datasets ({', '.join(names)}) separately: name "
                f"one, e.g. predict_action_chunk(batch, dataset={names[0]!r}) or batch[{DATASET_KEY!r}]"
            )
        name = names[0] if name is None else name
        if isinstance(name, str):
            name = [name] * size
        if not isinstance(name, (list, tuple)) or len(name) != size or not all(isinstance(n, str) for n in name):
            raise DataError(f"{DATASET_KEY} must be a dataset name or a list of {size} names (one per batch row)")
        return self.dataset_normalizers.rows(name)

    def goal_vector(self, batch: Mapping[str, Any]) -> Tensor:
        """The goal (B, goal_dim) of ``batch``: its ``goal`` vectors, or its ``task`` strings encoded."""
        if GOAL_KEY in batch:
            goal = batch[GOAL_KEY]
        elif TASK_KEY in batch and self.goal_encoder is not None:
            goal = self.goal_encoder(list(batch[TASK_KEY]))
        else:
            raise DataError(
                f"batch needs {GOAL_KEY!r} (B, goal_dim), or {TASK_KEY!r} strings with a goal encoder attached"
            )
        if goal.shape[-1] != self.config.goal_dim:
            raise DataError(f"goal has width {goal.shape[-1]}, the policy expects goal_dim={self.config.goal_dim}")
        return goal.to(device=self.goal_proj.weight.device, dtype=self.goal_proj.weight.dtype)

    def encode_condition(self, batch: Mapping[str, Any]) -> Tensor:
        """Goal and observation tokens: (B, 1 + n_obs * tokens_per_step, d);
        per observation step the state token(s) come first (one per ``state_groups`` entry), then one
        token per camera."""
        goal = self.goal_vector(batch)
        film_goal = goal  # what the cameras' FiLM layers see
        if self.training and self.config.goal_dropout > 0:
            if self.config.architecture == "official":  # zeroed without rescale, on the goal token only
                from .official.network import mask_goal

                goal = mask_goal(goal, self.config.goal_dropout)
            else:
                goal = film_goal = F.dropout(goal, self.config.goal_dropout)
        tokens = [self.goal_proj(goal).unsqueeze(1)]  # (B, 1, d)
        per_step: list[Tensor] = []  # each (B, n_obs, k, d)
        if self.state_encoder is not None:
            if STATE_KEY not in batch:
                raise DataError(f"batch lacks {STATE_KEY!r}")
            state = batch[STATE_KEY].to(self.goal_proj.weight.dtype)
            if state.dim() == 2:
                state = state.unsqueeze(1)  # (B, 1, S)
            rows = self._dataset_rows(batch, state.shape[0])  # per dataset: its own width, checked there
            width = self.config.state_dim if rows is None else state.shape[-1]
            if state.shape[-1] != width or state.shape[1] != self.config.n_obs_steps:
                raise DataError(
                    f"{STATE_KEY} has shape {tuple(state.shape)}, expected "
                    f"(B, {self.config.n_obs_steps}, {self.config.state_dim})"
                )
            if rows is None:
                state = self.normalizer.normalize_state(state)
            else:
                state = self.dataset_normalizers.normalize_state(state, rows)  # (B, n_obs, S), padded
            state_tokens = self.state_encoder(state)  # (B, n_obs, d) or, grouped, (B, n_obs, groups, d)
            per_step.append(state_tokens if self.config.state_groups else state_tokens.unsqueeze(2))
        if self.image_encoder is not None:
            per_step.append(self._image_tokens(batch, film_goal))
        if per_step:
            obs = torch.cat(per_step, dim=2)  # (B, n_obs, tokens_per_step, d)
            tokens.append(obs.flatten(1, 2))
        return torch.cat(tokens, dim=1)

    def _image_tokens(self, batch: Mapping[str, Any], goal: Tensor) -> Tensor:
        """Camera tokens (B, n_obs, n_cameras, d); images (B, [n_obs,] H, W, 3) uint8
        or (B, [n_obs,] 3, H, W) float, FiLM-conditioned on the goal embedding (or, with
        ``config.image_features``, pooled camera features (B, [n_obs,] F))."""
        n_obs, b = self.config.n_obs_steps, goal.shape[0]
        rank, step = (3, "F") if self.config.image_features else (5, "H, W, 3")
        images = {}
        for key in self.config.image_keys:
            if key not in batch:
                raise DataError(f"batch lacks camera {key!r}")
            img = batch[key]
            if img.dim() == rank - 1:
                img = img.unsqueeze(1)  # (B, 1, ...)
            if img.dim() != rank or img.shape[1] != n_obs:
                raise DataError(f"{key} has shape {tuple(img.shape)}, expected (B, {n_obs}, {step})")
            images[key] = img.flatten(0, 1)  # (B * n_obs, ...)
        cond = goal.repeat_interleave(n_obs, dim=0)  # (B * n_obs, goal_dim)
        return self.image_encoder(images, cond).view(b, n_obs, len(self.config.image_keys), -1)

    # -------------------------------------------------------------- training
    def forward(self, batch: Mapping[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        """Training loss. Returns ``(loss, info)``; info values are detached tensors:
        ``diffusion_loss``, ``balance_loss`` and ``expert_usage`` (L, E)."""
        cfg = self.config
        if ACTION_KEY not in batch:
            raise DataError(f"a training batch needs {ACTION_KEY!r} (B, {cfg.horizon}, {cfg.action_dim})")
        actions = batch[ACTION_KEY]
        rows = self._dataset_rows(batch, actions.shape[0]) if actions.dim() == 3 else None  # None: one dataset
        width = cfg.action_dim if rows is None else actions.shape[-1]  # per dataset: checked when normalising
        if actions.dim() != 3 or actions.shape[1:] != (cfg.horizon, width):
            raise DataError(
                f"{ACTION_KEY} has shape {tuple(actions.shape)}, expected (B, {cfg.horizon}, {cfg.action_dim})"
            )
        actions = actions.to(self.goal_proj.weight.dtype)
        cond = self.encode_condition(batch)
        if rows is None:
            x0 = self.normalizer.normalize_action(actions)  # (B, H, A)
            err, routings = self.denoiser.loss(x0, cond)  # (B, H)
        else:
            x0, dims = self.dataset_normalizers.normalize_action(actions, rows)  # (B, H, A), (B, A)
            err, routings = self.denoiser.loss(x0, cond, dims)
        if ACTION_IS_PAD_KEY in batch:
            keep = (~batch[ACTION_IS_PAD_KEY].bool()).float()
            diffusion_loss = (err * keep).sum() / keep.sum().clamp_min(1.0)
        else:
            diffusion_loss = err.mean()
        info: dict[str, Tensor] = {"diffusion_loss": diffusion_loss.detach()}
        loss = diffusion_loss
        if routings:
            balance = torch.stack([balancing_loss(r.probs, r.index) for r in routings]).mean()
            if cfg.balance_loss_weight > 0 and not cfg.freeze_router:
                loss = loss + cfg.balance_loss_weight * balance
            n_exp = routings[0].probs.shape[-1]
            usage = torch.stack(
                [torch.bincount(r.index.reshape(-1), minlength=n_exp).float() / r.index.numel() for r in routings]
            )
            info["balance_loss"] = balance.detach()
            info["expert_usage"] = usage
        info["loss"] = loss.detach()
        return loss, info

    # ------------------------------------------------------------- inference
    @torch.no_grad()
    def predict_action_chunk(
        self,
        batch: Mapping[str, Any],
        noise: Tensor | None = None,
        dataset: str | None = None,
        sampling: SamplingSettings | None = None,
        prefix: Tensor | np.ndarray | None = None,
        delay: int | Sequence[int] | Tensor = 0,
        guidance: GuidanceSettings | None = None,
        clamp: bool | None = None,
    ) -> Tensor:
        """Sample an action chunk (B, H, A) in the original action units.

        ``noise`` (B, H, A) fixes the initial standard-normal draw (scaled by sigma_max here).
        ``clamp``: clip the normalised sample to [-1, 1] before un-normalising; default: as the
        network's own sampler does (this library's network clamps; ``architecture="official"``
        does not, as the official DDIM sampler returns its last step unclipped).
        ``sampling`` samples with other settings than the config's (steps, sigma_min, sampler, ...)
        for this call only.
        A policy trained on a mixture un-normalises with the statistics of ``dataset`` (or
        ``batch["dataset"]``; default: its only dataset) and returns that dataset's action width;
        its state may come at that dataset's width.

        Real-time chunking (see the realtime-chunking guide): ``prefix`` (B, P, A), P <= H, in
        action units, is what the current chunk still plans from the time this observation was
        taken; the first ``delay`` actions (an int, or one per row) are the ones the robot executes
        while this chunk is computed: the returned chunk starts with exactly them, and its next
        actions are guided toward the rest of ``prefix`` with decaying weights (``guidance``:
        :class:`~mode_policy.model.guidance.GuidanceSettings`).
        """
        batch = self.check_inputs(batch if dataset is None else {**batch, DATASET_KEY: dataset})
        names = batch.get(DATASET_KEY)
        if self.dataset_names and isinstance(names, (list, tuple)) and len(set(names)) > 1:
            raise DataError(
                "predict_action_chunk: every row of a batch must name the same dataset "
                "(datasets differ in action width)"
            )
        cond = self.encode_condition(batch)  # encoders run once per chunk
        rows = self._dataset_rows(batch, cond.shape[0])
        inpaint = None
        if prefix is not None:
            prefix, inpaint = self._inpaint_prefix(prefix, delay, rows, cond, guidance)
        elif not (isinstance(delay, int) and delay == 0):
            raise DataError("predict_action_chunk: a delay needs the prefix the robot executes meanwhile (prefix=)")
        actions = self.denoiser.sample(cond, noise, sampling, inpaint)  # (B, H, A), normalised
        if clamp is None:
            clamp = self.config.architecture != "official"  # the official DDIM does not clip
        if clamp:
            actions = actions.clamp(-1.0, 1.0)
        if rows is None:
            actions = self.normalizer.unnormalize_action(actions)
        else:
            actions = self.dataset_normalizers.unnormalize_action(actions, self.dataset_names[int(rows[0])])
        if inpaint is not None:  # the frozen actions exactly as given, in action units
            frozen = inpaint.frozen[:, : prefix.shape[1]]  # (B, P, 1)
            actions[:, : prefix.shape[1]] = torch.where(frozen, prefix, actions[:, : prefix.shape[1]])
        return actions

    def _inpaint_prefix(
        self, prefix: Any, delay: Any, rows: Tensor | None, cond: Tensor, guidance: GuidanceSettings | None
    ) -> tuple[Tensor, InpaintPrefix]:
        """The checked prefix (B, P, A) in action units (on the policy's device and dtype) and the
        normalised :class:`~mode_policy.model.guidance.InpaintPrefix` of it."""
        width = self.config.action_dim
        if rows is not None:
            width = self.dataset_normalizers.member(self.dataset_names[int(rows[0])]).action_min.numel()
        delays = check_prefix(prefix, delay, cond.shape[0], self.config.horizon, width)
        if isinstance(prefix, np.ndarray):
            prefix = torch.from_numpy(np.ascontiguousarray(prefix))
        prefix = prefix.to(device=cond.device, dtype=cond.dtype)
        dims = None
        if rows is None:
            normalised = self.normalizer.normalize_action(prefix)
        else:
            normalised, dims = self.dataset_normalizers.normalize_action(prefix, rows)  # (B, P, A), (B, A)
        inpaint = InpaintPrefix.build(normalised, torch.from_numpy(delays), self.config.horizon, guidance, dims)
        return prefix, inpaint

    def check_inputs(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """The observation ``batch`` with numpy arrays as tensors, checked against the policy's
        :class:`~mode_policy.observation.ObservationSchema` (the rules the server applies to its
        requests): DataError naming the key and what was expected."""
        return ObservationSchema.for_policy(self).check_batch(batch)

    def reset(self) -> None:
        """Clear the action queue and observation history (call at episode start)."""
        self._action_queue.clear()
        self._obs_history.clear()

    @torch.no_grad()
    def select_action(
        self,
        observation: Mapping[str, Any],
        dataset: str | None = None,
        sampling: SamplingSettings | None = None,
        n_action_steps: int | None = None,
    ) -> Tensor:
        """One action (B, A) per call from one observation frame (state (B, S),
        images (B, H, W, 3)); re-plans a chunk when the queue is empty. ``dataset`` and ``sampling``:
        as in :meth:`predict_action_chunk`; ``n_action_steps``: actions of a chunk executed before
        re-planning (default: the config's)."""
        n_action_steps = n_action_steps or self.config.n_action_steps
        if not 1 <= n_action_steps <= self.config.horizon:
            raise ConfigError(f"n_action_steps={n_action_steps} must be in [1, horizon={self.config.horizon}]")
        frame = self.check_inputs(observation if dataset is None else {**observation, DATASET_KEY: dataset})
        if self._obs_history:
            size = {k: v.shape[0] for k, v in frame.items() if torch.is_tensor(v)}
            before = {k: v.shape[0] for k, v in self._obs_history[-1].items() if torch.is_tensor(v)}
            if any(before.get(k, n) != n for k, n in size.items()):
                raise DataError(f"select_action: the batch size changed ({before} -> {size}) without reset()")
        if not self._obs_history:
            self._obs_history.extend([frame] * self.config.n_obs_steps)
        else:
            self._obs_history.append(frame)
        if not self._action_queue:
            batch = dict(frame)
            observed = [STATE_KEY, *self.config.image_keys]
            for key in (k for k in observed if k in frame):  # stack the history: (B, n_obs, ...)
                batch[key] = torch.stack([f[key] for f in self._obs_history], dim=1)
            chunk = self.predict_action_chunk(batch, sampling=sampling)  # (B, H, A)
            self._action_queue.extend(chunk[:, :n_action_steps].unbind(dim=1))
        return self._action_queue.popleft()

    # -------------------------------------------------------------- counting
    def parameter_counts(self) -> dict[str, Any]:
        """Total and active parameters of the policy and of its transformer.
        Active = total minus the experts a forward pass does not use."""
        net = self.denoiser.net
        total = sum(p.numel() for p in self.parameters())
        t_total = sum(p.numel() for p in net.parameters())
        inactive = net.inactive_params()
        return {
            "total_params": total,
            "active_params": total - inactive,
            "transformer": {"total": t_total, "active": t_total - inactive},
        }

    # ------------------------------------------------------------ save / load
    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``config.json`` and ``model.safetensors`` (atomically) into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        atomic_write(directory / WEIGHTS_NAME, lambda tmp: save_file(tensors, tmp))
        atomic_write_text(directory / CONFIG_NAME, self.config.to_json() + "\n")
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str | torch.device = "cpu") -> MoDEPolicy:
        """Rebuild a policy from ``save_pretrained`` output, or from a ``lerobot-train`` checkpoint
        of the ``lerobot_policy_mode`` plugin (whose MoDE config is ``mode_config.json``, beside
        LeRobot's own ``config.json``), in eval mode (no dropout; sampling runs the expert cache,
        for converted official checkpoints too, token routing aside, see
        ``policy.denoiser.use_expert_cache``;
        ``.train()`` to train it); raises CheckpointError naming the file and the mismatch if
        anything does not fit. A goal encoder's language model (e.g. CLIP) is not needed to load:
        goal vectors work without it, and text goals name where it is missing."""
        directory = Path(directory)
        config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
        if (directory / LEROBOT_MODE_CONFIG_NAME).is_file():
            config_path = directory / LEROBOT_MODE_CONFIG_NAME
        for path in (config_path, weights_path):
            if not path.is_file():
                raise CheckpointError(f"checkpoint file missing: {path}")
        try:
            config = MoDEConfig.from_dict(json.loads(config_path.read_text()))
        except (json.JSONDecodeError, ValueError, TypeError) as err:
            raise CheckpointError(f"{config_path}: invalid config: {err}") from None
        policy = cls(config)
        try:
            tensors = load_file(str(weights_path), device=str(map_location))
        except (SafetensorError, OSError, RuntimeError) as err:
            raise CheckpointError(f"{weights_path}: corrupt or truncated weights file ({err})") from None
        policy.load_weights(tensors, source=str(weights_path))
        return policy.to(map_location).eval()  # as LeRobot's and transformers' from_pretrained: ready to act

    def load_weights(self, tensors: Mapping[str, Tensor], source: str = "state dict") -> None:
        """Strict load that names missing, unexpected and mis-shaped tensors
        (legacy key names are renamed first, see :data:`LEGACY_PREFIXES`)."""
        tensors = upgrade_state_dict(tensors)
        self.dataset_normalizers.adopt_layout(tensors, "dataset_normalizers.")  # the checkpoint's datasets
        expected = self.state_dict()
        missing = sorted(set(expected) - set(tensors))
        unexpected = sorted(set(tensors) - set(expected))
        mismatched = [
            f"{k}: checkpoint {tuple(tensors[k].shape)} vs model {tuple(v.shape)}"
            for k, v in expected.items()
            if k in tensors and tensors[k].shape != v.shape
        ]
        problems = []
        if missing:
            problems.append(f"missing tensors: {', '.join(missing[:8])}" + (" ..." if len(missing) > 8 else ""))
        if unexpected:
            problems.append(
                f"unexpected tensors: {', '.join(unexpected[:8])}" + (" ..." if len(unexpected) > 8 else "")
            )
        if mismatched:
            problems.append("shape mismatch: " + "; ".join(mismatched[:8]))
        if problems:
            raise CheckpointError(f"{source} does not fit the model config: " + " | ".join(problems))
        broken = [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]
        if broken:
            raise CheckpointError(
                f"{source} holds NaN or inf weights in {', '.join(broken[:8])}"
                + (" ..." if len(broken) > 8 else "")
                + " (training diverged?)"
            )
        self.load_state_dict(tensors, strict=True)


def _upgrade_legacy_keys(module: nn.Module, state_dict: dict, prefix: str, *_: Any) -> None:
    """load_state_dict pre-hook: rename legacy keys in place (e.g. an EMA state of an old run)."""
    legacy = [k for k in state_dict if any(k.startswith(prefix + p) for p in LEGACY_PREFIXES)]
    for key, value in upgrade_state_dict({k[len(prefix) :]: state_dict.pop(k) for k in legacy}).items():
        state_dict[prefix + key] = value
