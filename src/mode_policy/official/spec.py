"""What a config with ``architecture="official"`` must satisfy, and the sizes the official
layout derives from it.

The official network has one layout: noise-routed experts with a 4x hidden width, causal
attention, one observation step of camera tokens (its proprioception path is unused in
the released configs), ResNet-34/50 cameras, or their pooled features given directly
(``image_features``). The checks name the field that does not fit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..model.config import MoDEConfig

OFFICIAL_VISION_DEPTHS = (34, 50)
OFFICIAL_MLP_RATIO = 4


def vision_feature_dim(depth: int, width: int) -> int:
    """Pooled feature width of a ResNet trunk: 8*width (ResNet-34) or 32*width (ResNet-50)."""
    return width * 8 * (4 if depth >= 50 else 1)


OFFICIAL_FEATURE_TRUNKS = {2048: (50, 64), 512: (34, 64)}
"""The official ``obs_dim`` values and the trunks that give them (``resnet_type`` '50'; '18' or '34')."""


def trunk_for_features(feature_dim: int) -> tuple[int, int]:
    """``(vision_depth, vision_width)`` whose pooled width is ``feature_dim``: the official trunk for
    2048 and 512, else a ResNet-50 (F = 32 * width) or ResNet-34 (F = 8 * width) of narrower stem.
    ConfigError when no official trunk gives that width (F not a multiple of 8)."""
    if feature_dim in OFFICIAL_FEATURE_TRUNKS:
        return OFFICIAL_FEATURE_TRUNKS[feature_dim]
    for depth, per_width in ((50, 32), (34, 8)):
        if feature_dim > 0 and feature_dim % per_width == 0:
            return depth, feature_dim // per_width
    raise ConfigError(
        f"image feature width {feature_dim}: no ResNet-34/50 camera pools to it (32 x or 8 x its stem width)"
    )


def check_official_config(cfg: MoDEConfig) -> None:
    """Raise ConfigError naming the first field ``architecture="official"`` cannot honour."""

    def fail(field: str, why: str) -> None:
        raise ConfigError(f"architecture='official': {field}={getattr(cfg, field)!r} {why}")

    if cfg.routing != "noise":
        fail("routing", "is not available: the official routers see the noise embedding only ('noise')")
    if cfg.state_dim != 0:
        fail("state_dim", "must be 0: the official network conditions on camera tokens only")
    if not cfg.image_keys:
        fail("image_keys", "is empty: the official network needs at least one camera")
    if cfg.n_obs_steps != 1:
        fail("n_obs_steps", "must be 1: the official positions cover one observation step")
    if not cfg.causal:
        fail("causal", "must be true: the official attention is causal")
    if cfg.image_features and cfg.vision_pretrained:
        fail("vision_pretrained", "is unused with image_features=true (the policy holds no camera trunks)")
    if cfg.vision_depth not in OFFICIAL_VISION_DEPTHS:
        fail("vision_depth", f"is not an official camera trunk ({OFFICIAL_VISION_DEPTHS})")
    if cfg.mlp_ratio != OFFICIAL_MLP_RATIO:
        fail("mlp_ratio", f"must be {OFFICIAL_MLP_RATIO}: the official experts are 4x wide")
    if cfg.shared_expert and cfg.top_k < 2:
        fail("top_k", "must be >= 2 with shared_expert: the shared expert takes one of the k slots")
    if getattr(cfg, "noise_token", True) is not True:
        fail("noise_token", "must be true: the official sequence starts with the noise token")
    if getattr(cfg, "noise_conditioning", "attention") != "attention":
        fail("noise_conditioning", "must be 'attention': the official blocks add phi to the attention input")
