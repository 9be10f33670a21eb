"""``ModePolicy``: LeRobot's ``PreTrainedPolicy`` around :class:`mode_policy.policy.MoDEPolicy`.

Normalisation lives in one place, inside the MoDE policy (its ``Normalizer`` buffers, set from the
dataset statistics LeRobot passes in); the processors' normaliser steps are IDENTITY (see
:mod:`.processor_mode`). Goals come from the batch's ``task`` strings through the MoDE policy's
language encoder; cameras of another size than the policy's are resized (:mod:`.images`).

Training follows ``mode-policy train``: :meth:`ModePolicy.get_optim_params` gives AdamW its two
weight-decay groups, LeRobot calls :meth:`ModePolicy.update` after every optimiser step to advance
the EMA of the weights, and the EMA is what the policy acts with and saves.

Checkpoints (a ``lerobot-train`` ``pretrained_model`` folder):

* ``config.json``: the resolved :class:`ModeConfig` (every field, the task vocabulary included);
* ``model.safetensors``: the EMA weights under the MoDE policy's own tensor names (exactly what
  ``MoDEPolicy.save_pretrained`` writes), and ``mode_config.json``, the MoDEConfig, for mode-policy;
* ``../training_state/mode_training_weights.safetensors``: the weights being trained and the EMA's
  step count, which ``--resume=true`` continues from.

Loading (:meth:`ModePolicy.from_pretrained`) rebuilds the network from ``config.json`` alone.
Fields given on top of it (``--policy.n_action_steps=2``) apply when they are inference or training
settings (:data:`ADJUSTABLE_FIELDS`) and raise ConfigError when they would change the network.
With a dataset (``make_policy(cfg, ds_meta=...)``, as ``lerobot-train --policy.path`` does) the
policy fine-tunes as ``mode-policy finetune``: the new dataset's normalisation, frozen routers,
training from the EMA weights; with ``--resume=true`` it continues the run exactly.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch
from lerobot.configs import parser
from lerobot.configs.policies import PreTrainedConfig
from lerobot.policies.pretrained import PreTrainedPolicy
from lerobot.utils.constants import ACTION, PRETRAINED_MODEL_DIR, TRAINING_STATE_DIR
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from mode_policy.constants import ACTION_IS_PAD_KEY, TASK_KEY
from mode_policy.errors import CheckpointError, ConfigError, DataError
from mode_policy.fileio import atomic_write, atomic_write_text
from mode_policy.model.config import MoDEConfig
from mode_policy.model.guidance import GuidanceSettings
from mode_policy.policy import CONFIG_NAME, LEROBOT_MODE_CONFIG_NAME, WEIGHTS_NAME, MoDEPolicy
from mode_policy.training.ema import EMA
from mode_policy.training.finetune import ADJUSTABLE_FIELDS, check_tasks
from mode_policy.training.setup import param_groups

from .configuration_mode import MODE_FIELDS, ModeConfig
from .images import resize_square

MODE_CONFIG_NAME = LEROBOT_MODE_CONFIG_NAME
"""The MoDEConfig inside a LeRobot checkpoint folder, for mode-policy (LeRobot's own config is config.json)."""
TRAINING_WEIGHTS_NAME = "mode_training_weights.safetensors"
"""In a checkpoint's ``training_state/``: the weights being trained (the model folder holds the EMA)."""
INIT_ONLY_FIELDS = ("vision_pretrained",)
"""Fields that only initialise a new network: a loaded checkpoint's weights replace them."""
CHECKPOINT_FIELDS = ("preset", "language_encoder", "n_obs_steps")
"""ModeConfig fields outside the MoDEConfig that a checkpoint fixes."""
_RTC_SCHEDULES = {"ZEROS": "zeros", "ONES": "ones", "LINEAR": "linear", "EXP": "exp"}


class ModePolicy(PreTrainedPolicy):
    """MoDE diffusion policy for LeRobot (``--policy.type=mode``)."""

    config_class = ModeConfig
    name = "mode"

    def __init__(
        self,
        config: ModeConfig,
        dataset_stats: dict[str, dict[str, Any]] | None = None,
        dataset_meta: Any = None,
        base_mode_config: MoDEConfig | None = None,
        **kwargs: Any,
    ) -> None:
        """``dataset_stats`` normalise the data; ``dataset_meta`` gives a learned task embedding its
        instructions; ``base_mode_config``: a checkpoint's MoDEConfig, for the fields left unset."""
        super().__init__(config)
        config.validate_features()
        config.resolve(tasks=dataset_tasks(dataset_meta), base=base_mode_config)
        self.config = config
        self.model = MoDEPolicy(config.mode_config())
        self.model.denoiser.use_expert_cache = True  # fused experts when sampling in eval mode
        if dataset_stats is not None:
            self.model.set_normalization(dataset_stats)
        self.ema: EMA | None = None
        self.sync_ema()

    # ------------------------------------------------------------------ EMA
    def sync_ema(self) -> None:
        """Restart the EMA from the current weights (a new or freshly loaded policy)."""
        self.ema = EMA(self.model, self.config.ema_decay) if self.config.ema_decay > 0 else None
        self.reset()

    @property
    def acting_model(self) -> MoDEPolicy:
        """The weights the policy acts with and saves: the EMA (the trained weights without one)."""
        return self.ema.model if self.ema is not None else self.model

    def update(self) -> None:
        """Advance the EMA; LeRobot's training loop calls it after every optimiser step."""
        if self.ema is not None:
            self.ema.update(self.model)

    def _apply(self, fn: Any, recurse: bool = True) -> ModePolicy:
        super()._apply(fn, recurse)
        if self.ema is not None:  # the EMA copy is not a submodule (not trained, not in the state dict)
            self.ema.model._apply(fn, recurse)
        return self

    # ------------------------------------------------------------------ training
    def get_optim_params(self) -> list[dict[str, Any]]:
        """mode-policy train's groups: weight decay on matrices, none on gains and biases."""
        return param_groups(self.model, self.config.optimizer_weight_decay)

    def forward(self, batch: dict[str, Any]) -> tuple[Tensor, dict[str, float]]:
        """Diffusion + balancing loss on a LeRobot batch: state/cameras (B, n_obs, ...),
        action (B, horizon, A), action_is_pad (B, horizon), task (B strings)."""
        mode_batch = self._observation(batch)
        if ACTION_IS_PAD_KEY not in mode_batch and f"{ACTION}_is_pad" in batch:
            mode_batch[ACTION_IS_PAD_KEY] = batch[f"{ACTION}_is_pad"]
        loss, info = self.model(mode_batch)
        return loss, {k: float(v.mean()) for k, v in info.items() if k != "expert_usage"}

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def predict_action_chunk(
        self,
        batch: dict[str, Any],
        noise: Tensor | None = None,
        inference_delay: int = 0,
        prev_chunk_left_over: Tensor | None = None,
        **kwargs: Any,
    ) -> Tensor:
        """Action chunk (B, horizon, A) in the dataset's units (LeRobot frames (B, ...) or (B, n_obs, ...)).

        LeRobot's real-time chunking: ``prev_chunk_left_over`` (T, A) or (B, T, A), in the units this
        method returns, is what the previous chunk still plans (LeRobot pads it with zero rows to the
        execution horizon: trailing all-zero rows are dropped); its first ``inference_delay`` actions,
        executed while this chunk is computed, start the returned chunk exactly, and the rest of the
        overlap guides the next actions with ``rtc_config``'s weight schedule
        (:meth:`MoDEPolicy.predict_action_chunk <mode_policy.policy.MoDEPolicy.predict_action_chunk>`)."""
        batch = self._observation(batch)
        rtc = self.config.rtc_config
        if prev_chunk_left_over is None or (rtc is not None and not rtc.enabled):
            return self.acting_model.predict_action_chunk(batch, noise=noise)
        prefix, delay = self._rtc_prefix(prev_chunk_left_over, inference_delay, _rows(batch))
        if prefix is None:
            return self.acting_model.predict_action_chunk(batch, noise=noise)
        return self.acting_model.predict_action_chunk(
            batch, noise=noise, prefix=prefix, delay=delay, guidance=self._rtc_guidance()
        )

    def _rtc_prefix(self, left_over: Tensor, delay: int, rows: int) -> tuple[Tensor | None, int]:
        """(prefix (B, P, A), frozen actions) from LeRobot's zero-padded remainder; (None, 0) if empty."""
        prev = torch.as_tensor(left_over)
        prev = prev.unsqueeze(0) if prev.dim() == 2 else prev  # (B, T, A)
        if prev.dim() != 3:
            raise DataError(f"prev_chunk_left_over has shape {tuple(prev.shape)}, expected (T, A) or (B, T, A)")
        nonzero = prev.abs().amax(dim=(0, 2)) > 0  # (T,)
        length = int(nonzero.nonzero().max()) + 1 if bool(nonzero.any()) else 0
        length = min(length, self.config.horizon)
        if length == 0:
            return None, 0
        prefix = prev[:, :length].expand(rows, length, prev.shape[-1])
        return prefix, min(max(int(delay), 0), length)

    def _rtc_guidance(self) -> GuidanceSettings:
        from lerobot.policies.rtc.configuration_rtc import RTCConfig

        rtc = self.config.rtc_config or RTCConfig()
        schedule = _RTC_SCHEDULES[getattr(rtc.prefix_attention_schedule, "value", str(rtc.prefix_attention_schedule))]
        return GuidanceSettings(
            method=self.config.rtc_guidance, schedule=schedule, max_weight=float(rtc.max_guidance_weight)
        )

    def supports_rtc(self) -> bool:
        """LeRobot's real-time chunking: ``predict_action_chunk(batch, inference_delay=, prev_chunk_left_over=)``."""
        return True

    @torch.no_grad()
    def select_action(self, batch: dict[str, Any], **kwargs: Any) -> Tensor:
        """One action (B, A); re-plans a chunk every ``n_action_steps`` calls."""
        return self.acting_model.select_action(self._observation(batch))

    def reset(self) -> None:
        self.model.reset()
        if self.ema is not None:
            self.ema.model.reset()

    def _observation(self, batch: dict[str, Any]) -> dict[str, Any]:
        """LeRobot's batch for MoDE: ``task`` as a list of strings, cameras at the policy's size."""
        out = dict(batch)
        tasks = out.get(TASK_KEY)
        if isinstance(tasks, str):
            out[TASK_KEY] = [tasks]
        size = self.model.config.image_size
        for key in self.model.config.image_keys:
            if size and torch.is_tensor(out.get(key)):
                out[key] = resize_square(out[key], size)
        return out

    # ------------------------------------------------------------------ save
    def _save_pretrained(self, save_directory: Path, state_dict: dict[str, Tensor] | None = None) -> None:
        """config.json, the acting (EMA) weights, mode_config.json; in a checkpoint, the trained weights."""
        save_directory = Path(save_directory)
        self.config._save_pretrained(save_directory)
        _save_tensors(self.acting_model, save_directory / WEIGHTS_NAME)
        atomic_write_text(save_directory / MODE_CONFIG_NAME, self.model.config.to_json() + "\n")
        if self.ema is not None and save_directory.name == PRETRAINED_MODEL_DIR:
            state_dir = save_directory.parent / TRAINING_STATE_DIR
            state_dir.mkdir(parents=True, exist_ok=True)
            _save_tensors(self.model, state_dir / TRAINING_WEIGHTS_NAME, {"ema_updates": str(self.ema.num_updates)})

    # ------------------------------------------------------------------ load
    @classmethod
    def from_pretrained(
        cls,
        pretrained_name_or_path: str | Path,
        *,
        config: PreTrainedConfig | None = None,
        dataset_stats: dict[str, dict[str, Any]] | None = None,
        dataset_meta: Any = None,
        **kwargs: Any,
    ) -> ModePolicy:
        """A checkpoint, rebuilt from its ``config.json`` with ``config``'s inference settings on top
        (ConfigError for a field that would change the network). With ``dataset_stats`` (training on
        a dataset): fine-tuning, or with ``--resume=true`` the run's own state."""
        source = str(pretrained_name_or_path)
        hub = {
            k: kwargs[k]
            for k in ("revision", "cache_dir", "force_download", "token", "local_files_only")
            if k in kwargs
        }
        saved = PreTrainedConfig.from_pretrained(pretrained_name_or_path, **hub)
        if not isinstance(saved, ModeConfig):
            raise CheckpointError(f"{source} is a {saved.type!r} checkpoint, not a 'mode' one")
        given = copy.deepcopy(saved) if config is None else config
        resuming = dataset_stats is not None and resume_requested()
        finetuning = dataset_stats is not None and not resuming
        changed = check_load_overrides(given, saved, source)
        for name in INIT_ONLY_FIELDS:
            setattr(given, name, MoDEConfig.__dataclass_fields__[name].default)
        if finetuning and "freeze_router" not in changed:
            given.freeze_router = True  # as mode-policy finetune (and the official code) fine-tunes
        base = checkpoint_mode_config(saved, pretrained_name_or_path)
        if finetuning:
            check_dataset(base, dataset_meta, source)
        policy = super().from_pretrained(
            pretrained_name_or_path,
            config=given,
            dataset_stats=dataset_stats,
            dataset_meta=dataset_meta,
            base_mode_config=base,
            **kwargs,
        )
        check_same_network(policy.model.config, base, source)
        if finetuning:
            policy.model.set_normalization(dataset_stats)  # the new data's, as mode-policy finetune
            policy.sync_ema()
        elif resuming and policy.ema is not None:  # without an EMA, model.safetensors holds the trained weights
            policy.load_training_weights(Path(source))
        return policy

    @classmethod
    def _load_as_safetensor(cls, model: ModePolicy, model_file: str, map_location: str, strict: bool) -> ModePolicy:
        model.model.load_weights(load_file(model_file, device=str(map_location)), source=model_file)
        model.sync_ema()
        return model

    def load_training_weights(self, pretrained_dir: Path) -> None:
        """Continue a run: the trained weights and the EMA's step count from the checkpoint's
        ``training_state/`` (the model folder holds the EMA)."""
        path = pretrained_dir.parent / TRAINING_STATE_DIR / TRAINING_WEIGHTS_NAME
        if not path.is_file():
            raise CheckpointError(
                f"--resume: {path} is missing (the checkpoint holds only the EMA weights, written before the "
                "plugin kept the trained ones): fine-tune from it with --policy.path instead"
            )
        with safe_open(str(path), framework="pt") as f:
            updates = int((f.metadata() or {}).get("ema_updates", "0"))
        device = next(self.model.parameters()).device
        self.model.load_weights(load_file(str(path), device=str(device)), source=str(path))
        if self.ema is not None:
            self.ema.num_updates = updates


# ---------------------------------------------------------------------- helpers
def resume_requested() -> bool:
    """Whether this process is ``lerobot-train --resume=true`` (LeRobot's own flag, read as LeRobot reads it)."""
    value = parser.parse_arg("resume")
    return value is not None and value.strip().lower() in ("true", "1", "yes")


def check_load_overrides(given: ModeConfig, saved: ModeConfig, source: str) -> set[str]:
    """The fields ``given`` sets differently from the checkpoint's config.json (and those named on the
    command line); ConfigError naming every one that would change the network."""
    names = (*MODE_FIELDS, *CHECKPOINT_FIELDS)
    changed = {n for n in names if getattr(given, n) != getattr(saved, n)}
    changed |= {a.removeprefix("--").split("=", 1)[0] for a in parser.get_cli_overrides("policy") or []} & set(names)
    refused = sorted(
        f"{n}={getattr(given, n)!r} (checkpoint: {getattr(saved, n)!r})"
        for n in changed
        if n not in ADJUSTABLE_FIELDS and n not in INIT_ONLY_FIELDS and getattr(given, n) != getattr(saved, n)
    )
    if refused:
        raise ConfigError(
            f"{source} fixes the network; these settings would change it: {', '.join(refused)}. "
            f"A loaded checkpoint takes only {', '.join(ADJUSTABLE_FIELDS)} (train a new policy for the others)"
        )
    return changed


def checkpoint_mode_config(saved: ModeConfig, path: str | Path) -> MoDEConfig:
    """The checkpoint's MoDEConfig, from its config.json; a checkpoint written before configs were
    resolved (fields left null) takes them from its ``mode_config.json``."""
    config = copy.deepcopy(saved)
    legacy = None
    if not config.resolved:
        mode_json = Path(path) / MODE_CONFIG_NAME
        if not mode_json.is_file():
            missing = [n for n in MODE_FIELDS if getattr(config, n) is None]
            raise CheckpointError(
                f"{path}/config.json leaves {', '.join(missing[:6])} unset and there is no {MODE_CONFIG_NAME} "
                "beside it: re-save the checkpoint with this plugin version"
            )
        legacy = read_mode_config(mode_json)
    config.resolve(base=legacy)
    return config.mode_config()


def check_same_network(built: MoDEConfig, checkpoint: MoDEConfig, source: str) -> None:
    """ConfigError if the policy built here differs from the checkpoint in a field that shapes the
    network (e.g. the dataset's or environment's action width)."""
    ignore = {*ADJUSTABLE_FIELDS, *INIT_ONLY_FIELDS}
    have, want = built.to_dict(), checkpoint.to_dict()
    diffs = [f"{k}: here {have[k]!r}, checkpoint {want[k]!r}" for k in want if k not in ignore and have[k] != want[k]]
    if diffs:
        raise ConfigError(f"{source} does not fit the features it is loaded with: " + "; ".join(diffs))


def check_dataset(mode: MoDEConfig, dataset_meta: Any, source: str) -> None:
    """Fine-tuning on ``dataset_meta``: its state and cameras must be the checkpoint's, and a learned
    task embedding knows only its own instructions (DataError naming what differs)."""
    if dataset_meta is None:
        return
    features = dataset_meta.features
    state = features.get("observation.state")
    width = int(state["shape"][0]) if state is not None else 0
    if mode.state_dim and width != mode.state_dim:
        raise DataError(
            f"the dataset has {width}-d observation.state, the checkpoint {source} reads {mode.state_dim}-d"
        )
    lacking = [k for k in mode.image_keys if k not in features]
    if lacking:
        raise DataError(f"the dataset lacks camera(s) {lacking} that the checkpoint {source} sees")
    check_tasks(mode, dataset_tasks(dataset_meta) or [], source)


def dataset_tasks(dataset_meta: Any) -> list[str] | None:
    """The dataset's instructions in ``task_index`` order (None without a dataset)."""
    tasks = getattr(dataset_meta, "tasks", None)
    if tasks is None:
        return None
    return [str(t) for t in tasks.sort_values("task_index").index]


def read_mode_config(path: Path) -> MoDEConfig:
    """The MoDEConfig in a JSON file; CheckpointError naming it if invalid."""
    try:
        return MoDEConfig.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, ValueError, TypeError) as err:
        raise CheckpointError(f"{path}: invalid MoDE config: {err}") from None


def _save_tensors(model: MoDEPolicy, path: Path, metadata: dict[str, str] | None = None) -> None:
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def _rows(batch: dict[str, Any]) -> int:
    for value in batch.values():
        if torch.is_tensor(value) and value.dim() > 0:
            return int(value.shape[0])
    return 1


def export_mode_checkpoint(lerobot_dir: str | Path, out_dir: str | Path) -> Path:
    """Write a ``lerobot-train`` checkpoint (``.../pretrained_model``) as a folder that
    ``mode_policy.policy.MoDEPolicy.from_pretrained`` loads (config.json + model.safetensors), from
    LeRobot's config.json alone."""
    src, out = Path(lerobot_dir), Path(out_dir)
    saved = PreTrainedConfig.from_pretrained(src)
    if not isinstance(saved, ModeConfig):
        raise CheckpointError(f"{src} is a {saved.type!r} checkpoint, not a 'mode' one")
    mode = checkpoint_mode_config(saved, src)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / CONFIG_NAME, mode.to_json() + "\n")
    tensors = load_file(str(src / WEIGHTS_NAME))
    atomic_write(out / WEIGHTS_NAME, lambda tmp: save_file(tensors, tmp))
    return out
