"""``ModeConfig``: LeRobot's config for ``--policy.type=mode``.

A named mode-policy preset (``--policy.preset=cpu``) plus any :class:`MoDEConfig` field
as an override (``--policy.d_model=256``; unset fields keep the preset's value). The data
shapes (``state_dim``, ``action_dim``, ``image_keys``, ``image_size``) come from the
dataset's features; ``n_obs_steps`` is LeRobot's own field.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any

from lerobot.configs.policies import PreTrainedConfig
from lerobot.configs.types import FeatureType
from lerobot.optim.optimizers import AdamWConfig

from mode_policy.constants import IMAGES_PREFIX, STATE_KEY
from mode_policy.errors import ConfigError
from mode_policy.model.config import PRESETS, MoDEConfig

DERIVED_FIELDS = ("state_dim", "action_dim", "image_keys", "image_size", "n_obs_steps", "goal_encoder")
"""MoDEConfig fields set from the dataset features / LeRobot's config, not from the command line."""


def _override_fields() -> list[tuple[str, Any, dataclasses.Field]]:
    """Every other MoDEConfig field as ``<type> | None = None`` (None: the preset's value)."""
    hints = typing.get_type_hints(MoDEConfig)
    return [
        (f.name, hints[f.name] | None, dataclasses.field(default=None))
        for f in dataclasses.fields(MoDEConfig)
        if f.name not in DERIVED_FIELDS
    ]


_MoDEOverrides = dataclasses.make_dataclass("_MoDEOverrides", _override_fields())


@PreTrainedConfig.register_subclass("mode")
@dataclass
class ModeConfig(PreTrainedConfig, _MoDEOverrides):
    """MoDE inside LeRobot; :meth:`mode_config` is the policy's :class:`MoDEConfig`."""

    preset: str = "cpu"
    """mode-policy preset the overrides apply to: tiny, cpu, cpu-image, paper, paper-pretrain."""
    language_encoder: str = "minilm"
    """How the dataset's ``task`` strings become goals: 'minilm' (offline, 384-d) or 'clip' (hub download);
    'task' (a learned table) only in checkpoints imported from ``mode-policy train`` (see :mod:`.convert`)."""
    optimizer_lr: float = 1e-4
    optimizer_weight_decay: float = 0.05
    optimizer_betas: tuple[float, float] = (0.9, 0.95)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.preset not in PRESETS:
            raise ConfigError(f"unknown preset {self.preset!r}: choose from {', '.join(PRESETS)}")

    # ------------------------------------------------------------------ MoDE
    def overrides(self) -> dict[str, Any]:
        """The MoDEConfig fields given on the command line (not None)."""
        names = [f.name for f in dataclasses.fields(_MoDEOverrides)]
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}

    def _preset_value(self, name: str) -> Any:
        return self.overrides().get(name, PRESETS[self.preset].get(name, getattr(MoDEConfig, name, None)))

    def feature_shapes(self) -> dict[str, Any]:
        """state_dim, action_dim, image_keys, image_size and n_obs_steps of LeRobot's features."""
        state = self.robot_state_feature
        cameras = self.image_features
        sizes = {tuple(ft.shape[-2:]) for ft in cameras.values()}
        if len(sizes) > 1 or any(h != w for h, w in sizes):
            raise ConfigError(f"MoDE needs square cameras of one size, got {sorted(sizes)}")
        return dict(
            state_dim=int(state.shape[0]) if state is not None else 0,
            action_dim=int(self.action_feature.shape[0]),
            image_keys=list(cameras),
            image_size=int(next(iter(sizes))[0]) if sizes else 0,
            n_obs_steps=self.n_obs_steps,
        )

    def mode_config(self) -> MoDEConfig:
        """The MoDEConfig: preset, overrides, then the shapes of LeRobot's features."""
        values = {**PRESETS[self.preset], **self.overrides(), **self.feature_shapes()}
        values.update(
            goal_dim=self.overrides().get("goal_dim", 512 if self.language_encoder == "clip" else 384),
            goal_encoder={"type": self.language_encoder},
        )
        return MoDEConfig(**values)

    def check_saved(self, saved: MoDEConfig, source: str) -> MoDEConfig:
        """``saved`` (a checkpoint's own MoDEConfig) if it fits these features and windows;
        ConfigError naming ``source`` and every field that differs."""
        expected = {**self.feature_shapes(), "horizon": self.chunk_length()}
        diffs = [
            f"{k}: checkpoint {getattr(saved, k)!r} vs LeRobot config {v!r}"
            for k, v in expected.items()
            if getattr(saved, k) != v
        ]
        if diffs:
            raise ConfigError(f"{source} does not fit the LeRobot config: " + "; ".join(diffs))
        return saved

    def chunk_length(self) -> int:
        """The action chunk length (MoDEConfig.horizon of preset + overrides)."""
        return int(self._preset_value("horizon"))

    # ------------------------------------------------------------------ LeRobot
    @property
    def observation_delta_indices(self) -> list[int]:
        """Frames t - n_obs + 1 .. t (LeRobot clamps to the episode start, as our windows)."""
        return list(range(1 - self.n_obs_steps, 1))

    @property
    def action_delta_indices(self) -> list[int]:
        """Actions t .. t + horizon - 1 (past the episode end: padded, flagged in action_is_pad)."""
        return list(range(self.chunk_length()))

    @property
    def reward_delta_indices(self) -> None:
        return None

    def get_optimizer_preset(self) -> AdamWConfig:
        return AdamWConfig(lr=self.optimizer_lr, betas=self.optimizer_betas, weight_decay=self.optimizer_weight_decay)

    def get_scheduler_preset(self) -> None:
        return None

    def validate_features(self) -> None:
        if self.action_feature is None:
            raise ConfigError("MoDE needs an 'action' output feature")
        unknown = [
            k
            for k, ft in self.input_features.items()
            if ft.type is FeatureType.VISUAL and not k.startswith(IMAGES_PREFIX)
        ]
        if unknown:
            raise ConfigError(f"camera features must be named {IMAGES_PREFIX}<camera>, got {unknown}")
        if self.robot_state_feature is None and not self.image_features:
            raise ConfigError(f"MoDE needs {STATE_KEY!r} or at least one camera among the input features")
