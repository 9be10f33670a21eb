"""The official code's inputs and calls, for a converted policy (``architecture="official"``).

The official ``MoDEAgent`` acts from two inputs: the cameras' pooled features ``state_images``
(B, n_cameras, F) in the order static, gripper (what its FiLM-ResNets make of the images; 2048-d
for ResNet-50), or the images themselves, and the goal vector ``latent_goal`` (B, [1,] goal_dim)
(a CLIP ViT-B/32 text embedding, 512-d). Its sampler starts from ``torch.randn(B, H, A) *
sigma_max`` and returns the last DDIM step unclipped.

* :func:`official_batch` turns those inputs into the batch of
  :meth:`MoDEPolicy.predict_action_chunk <mode_policy.policy.MoDEPolicy.predict_action_chunk>`,
  which samples as the official sampler does (10 DDIM steps on the exponential schedule, no
  clipping for this architecture unless ``clamp=True``); pass the standard-normal part of the
  official draw as ``noise`` to reproduce one of its samples.
* :class:`OfficialDenoiser` is the denoiser with the official call,
  ``denoiser(state, action, goal, sigma) -> denoised``, in the official argument order (this
  library's ``policy.denoiser(x, sigma, cond)`` takes condition tokens last and returns the
  routings too); the official samplers (``sample_ddim(model, state, x, goal, sigmas)``) accept it.

A policy converted from a denoiser-only checkpoint takes ``state_images``; one converted with its
camera encoders takes ``images`` (or convert it with ``--image_features`` to feed features).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from ..constants import GOAL_KEY
from ..errors import ConfigError, DataError

if TYPE_CHECKING:
    from ..policy import MoDEPolicy

STATE_IMAGES = "state_images"
"""The official key of the cameras' pooled features in ``perceptual_emb``."""


def _official_policy(policy: MoDEPolicy) -> None:
    if policy.config.architecture != "official":
        raise ConfigError(
            f"architecture={policy.config.architecture!r}: the official inputs fit a converted policy "
            "(architecture='official', `mode-policy convert official`)"
        )


def official_goal(goal: Tensor, goal_dim: int) -> Tensor:
    """The official ``latent_goal`` (B, goal_dim) or (B, 1, goal_dim) as this library's ``goal`` (B, goal_dim)."""
    if goal.dim() == 3 and goal.shape[1] == 1:
        goal = goal[:, 0]
    if goal.dim() != 2 or goal.shape[-1] != goal_dim:
        raise DataError(f"goal has shape {tuple(goal.shape)}, expected (B, {goal_dim}) or (B, 1, {goal_dim})")
    return goal


def official_state_images(state: Tensor | Mapping[str, Tensor], n_cameras: int) -> Tensor:
    """The official ``perceptual_emb`` (``{"state_images": (B, n_cameras, F)}``) or its tensor -> (B, n_cameras, F)."""
    if isinstance(state, Mapping):
        if STATE_IMAGES not in state:
            raise DataError(f"state has keys {sorted(state)}; the official pooled camera features are {STATE_IMAGES!r}")
        state = state[STATE_IMAGES]
    if not torch.is_tensor(state) or state.dim() != 3 or state.shape[1] != n_cameras:
        shape = tuple(state.shape) if torch.is_tensor(state) else type(state).__name__
        raise DataError(f"{STATE_IMAGES} has shape {shape}, expected (B, {n_cameras}, F): one row per camera")
    return state


def official_batch(
    policy: MoDEPolicy,
    goal: Tensor,
    state_images: Tensor | Mapping[str, Tensor] | None = None,
    images: Sequence[Tensor] | None = None,
) -> dict[str, Any]:
    """The :meth:`~mode_policy.policy.MoDEPolicy.predict_action_chunk` batch of the official inputs.

    ``goal``: the official ``latent_goal`` (B, [1,] goal_dim). Exactly one of ``state_images``:
    the cameras' pooled features (B, n_cameras, F) (or ``{"state_images": ...}``), for a policy
    that takes image features (a converted denoiser-only checkpoint); ``images``: one tensor per
    camera in the official order (static, gripper), each (B, [1,] 3, H, W) or (B, [1,] H, W, 3),
    uint8 or float in [0, 1] (before the official CLIP pixel normalisation, which the policy applies),
    for a policy with its camera encoders. DataError naming what does not fit.
    """
    _official_policy(policy)
    cfg = policy.config
    keys = list(cfg.image_keys)
    batch: dict[str, Any] = {GOAL_KEY: official_goal(goal, cfg.goal_dim)}
    if (state_images is None) == (images is None):
        raise DataError("official_batch: give the cameras as state_images (pooled features) or as images, not both")
    if state_images is not None:
        if not cfg.image_features:
            raise DataError(
                "this policy encodes camera images (give images=...); a policy that takes state_images "
                "is converted with `mode-policy convert official ... --image_features`"
            )
        features = official_state_images(state_images, len(keys))
        batch.update({key: features[:, i] for i, key in enumerate(keys)})  # each (B, F)
        return batch
    if cfg.image_features:
        raise DataError(
            "this policy takes the cameras' pooled features (state_images=..., (B, "
            f"{len(keys)}, F)), not images: it holds no camera encoders"
        )
    if len(images) != len(keys):
        raise DataError(f"images: {len(images)} cameras given, the policy has {len(keys)} ({', '.join(keys)})")
    batch.update(zip(keys, images))
    return batch


class OfficialDenoiser(nn.Module):
    """A converted policy's denoiser with the official ``GCDenoiser`` call:
    ``forward(state, action, goal, sigma) -> denoised`` (B, H, A).

    ``state``: the cameras' pooled features ``{"state_images": (B, n_cameras, F)}`` or the tensor
    (the shared projection ``tok_emb`` runs here, as in ``MoDeDiT``; a policy with camera encoders
    accepts them too); ``action``: the noisy chunk (B, H, A) in the policy's normalised units (the
    official units for a converted folder, whose normalisation is the identity); ``goal``: the
    goal vector (B, [1,] goal_dim); ``sigma``: the noise level, (B,) or a scalar. Its mode is the
    policy's (``.eval()`` for sampling). The library's own order is ``policy.denoiser(x, sigma,
    cond)`` with condition tokens (:func:`condition_tokens`), returning ``(denoised, routings)``.
    """

    def __init__(self, policy: MoDEPolicy) -> None:
        super().__init__()
        _official_policy(policy)
        self.policy = policy

    def forward(
        self, state: Tensor | Mapping[str, Tensor], action: Tensor, goal: Tensor, sigma: Tensor | float
    ) -> Tensor:
        cond = condition_tokens(self.policy, goal, state)  # (B, 1 + n_cameras, d)
        sigma = torch.as_tensor(sigma, dtype=action.dtype, device=action.device)
        sigma = sigma.expand(action.shape[0]) if sigma.dim() == 0 else sigma  # (B,)
        return self.policy.denoiser(action, sigma, cond)[0]


def condition_tokens(policy: MoDEPolicy, goal: Tensor, state_images: Tensor | Mapping[str, Tensor]) -> Tensor:
    """``[goal, camera_1, ..]`` tokens (B, 1 + n_cameras, d) of the official inputs: the goal vector
    through ``goal_emb`` and each camera's pooled features through ``tok_emb`` (no dropout: eval inputs)."""
    _official_policy(policy)
    cfg = policy.config
    features = official_state_images(state_images, len(cfg.image_keys))
    proj = policy.image_encoder.proj
    if features.shape[-1] != proj.in_features:
        raise DataError(f"{STATE_IMAGES} has width {features.shape[-1]}, the policy's tok_emb takes {proj.in_features}")
    goal = official_goal(goal, cfg.goal_dim).to(policy.goal_proj.weight.dtype)
    return torch.cat([policy.goal_proj(goal).unsqueeze(1), proj(features.to(proj.weight.dtype))], dim=1)
