"""MoDEPolicy: the user-facing policy (LeRobot-style interface).

Batch keys: ``observation.state`` (B, [n_obs,] S), ``goal`` (B, goal_dim)
(or ``task``: list of instructions when a goal encoder is attached),
``action`` (B, H, A) and ``action_is_pad`` (B, H) for training.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from .config import MoDEConfig
from .denoiser import MoDETransformer
from .diffusion import edm_scalings, make_schedule, make_sampler, sample_log_logistic_sigma
from .encoders.state import StateEncoder
from .fileio import atomic_write, atomic_write_text
from .nn.expert_cache import build_layer_cache, weights_version
from .nn.moe import FusedExperts, balancing_loss
from .normalize import Normalizer

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
STATE_KEY = "observation.state"


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, or does not fit the model."""


@dataclass
class SamplingPlan:
    """Everything about a sampling run that does not depend on the data:
    the schedule, per-evaluation EDM scalings (host floats), the noise
    embeddings (M, d) and, for noise routing, the fused experts per
    evaluation and layer. Built once, reused until its key changes."""

    key: tuple
    sigmas: Tensor  # (n+1,) schedule ending in 0, on the CPU (samplers read it as host floats)
    c_skip: list[float]
    c_out: list[float]
    c_in: list[float]
    noise_emb: Tensor  # (M, d)
    fused: list[list[FusedExperts]] | None  # [evaluation][moe layer]
    cache_bytes: int


class MoDEPolicy(nn.Module):
    """Mixture-of-Denoising-Experts diffusion policy."""

    def __init__(self, config: MoDEConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        d = config.d_model
        self.normalizer = Normalizer(config.action_dim, max(config.state_dim, 0))
        self.state_encoder = (
            StateEncoder(config.state_dim, config.state_encoder_hidden, d) if config.state_dim > 0 else None
        )
        self.image_encoder = None
        if config.image_keys:
            from .encoders.resnet import ImageEncoder

            self.image_encoder = ImageEncoder(
                list(config.image_keys), depth=config.vision_depth, cond_dim=config.goal_dim, out_dim=d,
                width=config.vision_width, pretrained=config.vision_pretrained or None,
                shift_pad=config.image_shift_pad,
            )
        self.goal_proj = nn.Linear(config.goal_dim, d)
        self.transformer = MoDETransformer(config)
        self.sampler = make_sampler(config.sampler)
        if config.freeze_router:
            for layer in self.transformer.moe_layers():
                layer.router.requires_grad_(False)
        # Turns `task` strings into goal vectors. Frozen encoders (MiniLM, CLIP) are
        # plain attributes, outside the state dict; a trainable task embedding is an
        # nn.Module and so becomes a submodule that trains and saves with the policy.
        self.goal_encoder: Callable[[list[str]], Tensor] | None = None
        if config.goal_encoder:
            from .encoders.language import make_language_encoder

            self.goal_encoder = make_language_encoder(dict(config.goal_encoder))
            if self.goal_encoder.dim != config.goal_dim:
                raise ValueError(
                    f"goal encoder {config.goal_encoder['type']!r} gives {self.goal_encoder.dim}-d goals, "
                    f"config.goal_dim is {config.goal_dim}"
                )
        self.use_expert_cache = True
        self._plan: SamplingPlan | None = None
        self._action_queue: deque[Tensor] = deque()
        self._obs_history: deque[dict[str, Tensor]] = deque(maxlen=config.n_obs_steps)

    # ------------------------------------------------------------------ data
    def set_normalization(self, stats: Mapping[str, Mapping[str, Any]]) -> None:
        self.normalizer.set_stats(stats)

    def _goal(self, batch: Mapping[str, Any]) -> Tensor:
        if "goal" in batch:
            goal = batch["goal"]
        elif "task" in batch and self.goal_encoder is not None:
            goal = self.goal_encoder(list(batch["task"]))
        else:
            raise KeyError("batch needs 'goal' (B, goal_dim), or 'task' strings with a goal encoder attached")
        if goal.shape[-1] != self.config.goal_dim:
            raise ValueError(f"goal has width {goal.shape[-1]}, the policy expects goal_dim={self.config.goal_dim}")
        return goal.to(device=self.goal_proj.weight.device, dtype=self.goal_proj.weight.dtype)

    def encode_condition(self, batch: Mapping[str, Any]) -> Tensor:
        """Goal and observation tokens: (B, 1 + n_obs * tokens_per_step, d);
        per observation step the state token comes first, then one token per camera."""
        goal = self._goal(batch)
        if self.training and self.config.goal_dropout > 0:
            goal = F.dropout(goal, self.config.goal_dropout)
        tokens = [self.goal_proj(goal).unsqueeze(1)]  # (B, 1, d)
        per_step: list[Tensor] = []  # each (B, n_obs, k, d)
        if self.state_encoder is not None:
            if STATE_KEY not in batch:
                raise KeyError(f"batch lacks {STATE_KEY!r}")
            state = batch[STATE_KEY].to(self.goal_proj.weight.dtype)
            if state.dim() == 2:
                state = state.unsqueeze(1)  # (B, 1, S)
            if state.shape[-1] != self.config.state_dim or state.shape[1] != self.config.n_obs_steps:
                raise ValueError(
                    f"{STATE_KEY} has shape {tuple(state.shape)}, expected "
                    f"(B, {self.config.n_obs_steps}, {self.config.state_dim})"
                )
            per_step.append(self.state_encoder(self.normalizer.normalize_state(state)).unsqueeze(2))
        if self.image_encoder is not None:
            per_step.append(self._image_tokens(batch, goal))
        if per_step:
            obs = torch.cat(per_step, dim=2)  # (B, n_obs, tokens_per_step, d)
            tokens.append(obs.flatten(1, 2))
        return torch.cat(tokens, dim=1)

    def _image_tokens(self, batch: Mapping[str, Any], goal: Tensor) -> Tensor:
        """Camera tokens (B, n_obs, n_cameras, d); images (B, [n_obs,] H, W, 3) uint8
        or (B, [n_obs,] 3, H, W) float, FiLM-conditioned on the goal embedding."""
        n_obs, b = self.config.n_obs_steps, goal.shape[0]
        images = {}
        for key in self.config.image_keys:
            if key not in batch:
                raise KeyError(f"batch lacks camera {key!r}")
            img = batch[key]
            if img.dim() == 4:
                img = img.unsqueeze(1)  # (B, 1, ...)
            if img.dim() != 5 or img.shape[1] != n_obs:
                raise ValueError(f"{key} has shape {tuple(img.shape)}, expected (B, {n_obs}, H, W, 3)")
            images[key] = img.flatten(0, 1)  # (B * n_obs, ...)
        cond = goal.repeat_interleave(n_obs, dim=0)  # (B * n_obs, goal_dim)
        return self.image_encoder(images, cond).view(b, n_obs, len(self.config.image_keys), -1)

    # -------------------------------------------------------------- training
    def forward(self, batch: Mapping[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        """Training loss. Returns ``(loss, info)``; info values are detached tensors:
        ``diffusion_loss``, ``balance_loss`` and ``expert_usage`` (L, E)."""
        cfg = self.config
        actions = batch["action"]
        if actions.dim() != 3 or actions.shape[1:] != (cfg.horizon, cfg.action_dim):
            raise ValueError(
                f"action has shape {tuple(actions.shape)}, expected (B, {cfg.horizon}, {cfg.action_dim})"
            )
        x0 = self.normalizer.normalize_action(actions.to(self.goal_proj.weight.dtype))  # (B, H, A)
        cond = self.encode_condition(batch)
        b = x0.shape[0]
        sigma = sample_log_logistic_sigma(
            b, cfg.train_sigma_loc, cfg.train_sigma_scale, cfg.sigma_min, cfg.sigma_max, x0.device
        )
        c_skip, c_out, c_in, c_noise = (c.view(b, 1, 1) for c in edm_scalings(sigma, cfg.sigma_data))
        noisy = x0 + torch.randn_like(x0) * sigma.view(b, 1, 1)
        noise_emb = self.transformer.embed_noise(c_noise.view(b))
        out, routings = self.transformer(noisy * c_in, noise_emb, cond)
        target = (x0 - c_skip * noisy) / c_out
        err = (out.float() - target.float()).pow(2).mean(-1)  # (B, H)
        if "action_is_pad" in batch:
            keep = (~batch["action_is_pad"].bool()).float()
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
    def sampling_plan(self) -> SamplingPlan:
        """The (cached) plan for the configured sampler and schedule; rebuilt
        when the schedule, the step count, the mode or the weights change."""
        cfg = self.config
        transformer = self.transformer
        cached = self.use_expert_cache and cfg.routing == "noise" and not self.training
        key = (
            cfg.sampler, cfg.schedule, cfg.num_inference_steps, cfg.sigma_min, cfg.sigma_max,
            cfg.karras_rho, cfg.sigma_data, cached, transformer.sigma_embed.weight.device,
            weights_version([transformer.sigma_embed, *transformer.moe_layers()]),
        )
        if self._plan is not None and self._plan.key == key:
            return self._plan
        device = transformer.sigma_embed.weight.device
        sigmas = make_schedule(cfg.schedule, cfg.num_inference_steps, cfg.sigma_min, cfg.sigma_max, cfg.karras_rho)
        eval_sigmas = self.sampler.eval_sigmas(sigmas)  # (M,)
        c_skip, c_out, c_in, c_noise = edm_scalings(eval_sigmas.double(), cfg.sigma_data)
        with torch.no_grad():
            noise_emb = transformer.embed_noise(c_noise.float().to(device))  # (M, d)
            fused, cache_bytes = None, 0
            if cached:
                per_layer = [build_layer_cache(layer, noise_emb) for layer in transformer.moe_layers()]
                fused = [list(step) for step in zip(*(steps for steps, _ in per_layer))]
                cache_bytes = sum(owned for _, owned in per_layer)
        self._plan = SamplingPlan(
            key, sigmas, c_skip.tolist(), c_out.tolist(), c_in.tolist(),
            noise_emb, fused, cache_bytes,
        )
        return self._plan

    @torch.no_grad()
    def predict_action_chunk(self, batch: Mapping[str, Any], noise: Tensor | None = None) -> Tensor:
        """Sample an action chunk (B, H, A) in the original action units.

        ``noise`` (B, H, A) fixes the initial standard-normal draw (scaled by sigma_max here).
        """
        cfg = self.config
        cond = self.encode_condition(batch)  # encoders run once per chunk
        plan = self.sampling_plan()
        b = cond.shape[0]
        if noise is None:
            noise = torch.randn(b, cfg.horizon, cfg.action_dim, device=cond.device, dtype=cond.dtype)
        x = noise * cfg.sigma_max

        def denoise(x: Tensor, j: int) -> Tensor:
            fused = plan.fused[j] if plan.fused is not None else None
            out, _ = self.transformer(x * plan.c_in[j], plan.noise_emb[j].expand(b, -1), cond, fused)
            return x * plan.c_skip[j] + out * plan.c_out[j]

        actions = self.sampler.run(denoise, x, plan.sigmas)
        return self.normalizer.unnormalize_action(actions.clamp(-1.0, 1.0))

    def reset(self) -> None:
        """Clear the action queue and observation history (call at episode start)."""
        self._action_queue.clear()
        self._obs_history.clear()

    @torch.no_grad()
    def select_action(self, observation: Mapping[str, Any]) -> Tensor:
        """One action (B, A) per call from one observation frame (state (B, S),
        images (B, H, W, 3)); re-plans a chunk when the queue is empty."""
        frame = {k: v for k, v in observation.items()}
        if not self._obs_history:
            self._obs_history.extend([frame] * self.config.n_obs_steps)
        else:
            self._obs_history.append(frame)
        if not self._action_queue:
            batch = dict(frame)
            observed = [STATE_KEY, *self.config.image_keys]
            for key in (k for k in observed if k in frame):  # stack the history: (B, n_obs, ...)
                batch[key] = torch.stack([f[key] for f in self._obs_history], dim=1)
            chunk = self.predict_action_chunk(batch)  # (B, H, A)
            self._action_queue.extend(chunk[:, : self.config.n_action_steps].unbind(dim=1))
        return self._action_queue.popleft()

    # -------------------------------------------------------------- counting
    def parameter_counts(self) -> dict[str, Any]:
        """Total and active parameters of the policy and of its transformer.
        Active = total minus the experts a forward pass does not use."""
        total = sum(p.numel() for p in self.parameters())
        t_total = sum(p.numel() for p in self.transformer.parameters())
        inactive = self.transformer.inactive_params()
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
    def from_pretrained(cls, directory: str | Path, map_location: str | torch.device = "cpu") -> "MoDEPolicy":
        """Rebuild a policy from ``save_pretrained`` output; raises CheckpointError
        naming the file and the mismatch if anything does not fit."""
        directory = Path(directory)
        config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
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
        return policy.to(map_location)

    def load_weights(self, tensors: Mapping[str, Tensor], source: str = "state dict") -> None:
        """Strict load that names missing, unexpected and mis-shaped tensors."""
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
        self.load_state_dict(tensors, strict=True)
