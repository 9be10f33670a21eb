"""``ModeConfig``: LeRobot's config for ``--policy.type=mode``, a self-describing MoDE config.

On the command line a policy is a mode-policy preset (``--policy.preset=cpu``) plus any
:class:`MoDEConfig` field as an override (``--policy.d_model=256``). When the policy is built,
:meth:`ModeConfig.resolve` fills in every field left unset: the preset's value, the cameras by
mode-policy's rule (:func:`mode_policy.training.build.select_image_keys`: an image preset sees
every camera of the dataset, a state-only preset none, ``--policy.image_keys`` exactly those) and
the goal encoder (a learned task embedding holds the dataset's instructions). LeRobot then saves
the resolved config as ``config.json``: a checkpoint states every value it was built with, and no
later change of a preset changes what it means.

The training recipe defaults are ``mode-policy train``'s (:class:`TrainConfig`): AdamW with weight
decay on matrices only, linear warm-up then cosine decay, gradient clipping and an EMA of the
weights, which is what the policy evaluates and saves (see :mod:`.recipe`).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any

from lerobot.configs.policies import PreTrainedConfig
from lerobot.configs.types import FeatureType, NormalizationMode
from lerobot.optim.optimizers import AdamWConfig
from lerobot.policies.rtc.configuration_rtc import RTCConfig

from mode_policy.constants import IMAGES_PREFIX, STATE_KEY
from mode_policy.errors import ConfigError
from mode_policy.model.config import PRESETS, MoDEConfig, get_preset
from mode_policy.model.guidance import GUIDANCE_METHODS
from mode_policy.training.config import LANGUAGE_ENCODERS, TrainConfig

from .recipe import ModeSchedulerConfig

DERIVED_FIELDS = ("state_dim", "action_dim", "image_size", "n_obs_steps")
"""MoDEConfig fields that LeRobot's features (state, camera and action shapes) or LeRobot's own
``n_obs_steps`` give; every other MoDEConfig field is a ModeConfig field of the same name."""

BUILT_FIELDS = ("image_keys", "goal_encoder", "goal_dim")
"""Fields resolved from the dataset when the policy is built (cameras, instructions), not from the preset."""

TASK_GOAL_DIM = 64
"""Width of a learned task embedding unless ``--policy.goal_dim`` says otherwise (as ``mode-policy train``)."""

_TRAIN = {f.name: f for f in dataclasses.fields(TrainConfig)}


def _train_default(name: str) -> Any:
    """``mode-policy train``'s default of a recipe field: one source for both command lines."""
    f = _TRAIN[name]
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


SHADOWED_FIELDS = tuple(f.name for f in dataclasses.fields(MoDEConfig) if hasattr(PreTrainedConfig, f.name))
"""MoDEConfig fields named like an attribute of LeRobot's config (``image_features``, its camera
features): they keep MoDEConfig's default inside LeRobot."""


def _override_fields() -> list[tuple[str, Any, dataclasses.Field]]:
    """Every MoDEConfig field but the derived and shadowed ones, as ``<type> | None = None``
    (None: not resolved yet)."""
    hints = typing.get_type_hints(MoDEConfig)
    return [
        (f.name, hints[f.name] | None, dataclasses.field(default=None))
        for f in dataclasses.fields(MoDEConfig)
        if f.name not in DERIVED_FIELDS and f.name not in SHADOWED_FIELDS
    ]


_MoDEOverrides = dataclasses.make_dataclass("_MoDEOverrides", _override_fields())
MODE_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(_MoDEOverrides))
"""The MoDEConfig fields a ModeConfig holds (all but :data:`DERIVED_FIELDS`)."""


def _identity_normalization() -> dict[str, NormalizationMode]:
    return {t.value: NormalizationMode.IDENTITY for t in FeatureType}


@PreTrainedConfig.register_subclass("mode")
@dataclass
class ModeConfig(PreTrainedConfig, _MoDEOverrides):
    """MoDE inside LeRobot; :meth:`mode_config` is the policy's :class:`MoDEConfig` once resolved."""

    preset: str = "cpu"
    """mode-policy preset of the fields left unset: tiny, cpu, cpu-image, paper, paper-pretrain, ..."""
    language_encoder: str = "minilm"
    """How the dataset's ``task`` strings become goals: 'minilm' (offline, 384-d), 'task' (a learned
    embedding of the dataset's instructions, saved in the checkpoint) or 'clip' (hub download)."""

    # --- training recipe: mode-policy train's defaults ------------------------------------------
    optimizer_lr: float = _train_default("lr")
    optimizer_betas: tuple[float, float] = _train_default("betas")
    optimizer_eps: float = 1e-8
    optimizer_weight_decay: float = _train_default("weight_decay")
    """AdamW weight decay of matrices; gains and biases get none (as mode-policy train)."""
    optimizer_grad_clip_norm: float = _train_default("grad_clip")
    scheduler_warmup_steps: int = _train_default("warmup_steps")
    scheduler_min_lr_ratio: float = _train_default("min_lr_ratio")
    """Cosine decay from the peak lr to lr * min_lr_ratio at the last step."""
    ema_decay: float = _train_default("ema_decay")
    """Decay of the EMA of the weights; the EMA is what the policy evaluates and saves (0: no EMA)."""

    # --- inference ------------------------------------------------------------------------------
    rtc_config: RTCConfig | None = None
    """LeRobot's real-time chunking settings (set by ``lerobot-rollout --inference.type=rtc``)."""
    rtc_guidance: str = "replace"
    """How a chunk is guided toward the previous chunk's remainder under RTC: 'replace' or 'pigdm'
    (see :mod:`mode_policy.model.guidance`)."""

    normalization_mapping: dict[str, NormalizationMode] = field(default_factory=_identity_normalization)
    """IDENTITY for every feature: MoDE normalises inside the policy (its statistics are in the checkpoint)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.preset not in PRESETS:
            raise ConfigError(f"unknown preset {self.preset!r}: choose from {', '.join(PRESETS)}")
        if self.language_encoder not in LANGUAGE_ENCODERS:
            raise ConfigError(f"language_encoder={self.language_encoder!r}: choose from {', '.join(LANGUAGE_ENCODERS)}")
        if self.rtc_guidance not in GUIDANCE_METHODS:
            raise ConfigError(f"rtc_guidance={self.rtc_guidance!r}: choose from {', '.join(GUIDANCE_METHODS)}")

    # ------------------------------------------------------------------ MoDE
    @property
    def resolved(self) -> bool:
        """Whether every MoDE field has its value (after :meth:`resolve`, or read from a checkpoint)."""
        return all(getattr(self, n) is not None for n in MODE_FIELDS)

    def given_fields(self) -> dict[str, Any]:
        """The MoDE fields that have a value (before :meth:`resolve`: the command line's overrides)."""
        return {n: getattr(self, n) for n in MODE_FIELDS if getattr(self, n) is not None}

    def chunk_length(self) -> int:
        """The action chunk length (``horizon``: given, else the preset's)."""
        return int(self.horizon if self.horizon is not None else get_preset(self.preset).horizon)

    def cameras(self) -> dict[str, tuple[int, ...]]:
        """LeRobot's camera input features: ``{key: (3, H, W)}``."""
        return {k: tuple(ft.shape) for k, ft in self.image_features.items()}

    def resolve(self, tasks: list[str] | None = None, base: MoDEConfig | None = None) -> None:
        """Give every unset MoDE field its value, in place: ``base``'s (a checkpoint's own MoDEConfig)
        or the preset's; the cameras by mode-policy's rule; the goal encoder of ``language_encoder``
        (``tasks``: the dataset's instructions, for a learned task embedding). Keeps only the used
        state and cameras in ``input_features``. ConfigError for features MoDE cannot use."""
        if self.action_feature is None:
            raise ConfigError("MoDE needs an 'action' output feature")
        preset = base.to_dict() if base is not None else get_preset(self.preset).to_dict()
        for name in MODE_FIELDS:
            if getattr(self, name) is None and name not in BUILT_FIELDS:
                setattr(self, name, preset[name])
        if self.image_keys is None:
            self.image_keys = list(base.image_keys) if base is not None else self._select_cameras()
        unknown = [k for k in self.image_keys if k not in self.cameras()]
        if unknown:
            raise ConfigError(
                f"image_keys {unknown} are not camera features here (LeRobot's features have: "
                f"{', '.join(self.cameras()) or 'no cameras'})"
            )
        if self.goal_encoder is None:
            self.goal_encoder, goal_dim = self._goal_encoder(tasks, base)
            self.goal_dim = goal_dim if self.goal_dim is None else self.goal_dim
        elif self.goal_dim is None:
            self.goal_dim = base.goal_dim if base is not None else preset["goal_dim"]
        keep = {STATE_KEY, *self.image_keys}
        self.input_features = {k: ft for k, ft in self.input_features.items() if k in keep}
        if self.robot_state_feature is None and not self.image_keys:
            raise ConfigError(
                f"preset {self.preset!r} uses no cameras and the data has no {STATE_KEY!r}: "
                "use an image preset (cpu-image) or --policy.image_keys='[...]'"
            )

    def _select_cameras(self) -> list[str]:
        """mode-policy's camera rule on LeRobot's camera features (one implementation for both CLIs)."""
        from mode_policy.training.build import select_image_keys

        cameras = list(self.cameras())
        keys = select_image_keys(TrainConfig(preset=self.preset, dataset="LeRobot's dataset"), cameras)
        misnamed = [k for k in keys if not k.startswith(IMAGES_PREFIX)]
        if misnamed:
            raise ConfigError(
                f"camera features {misnamed} are not named {IMAGES_PREFIX}<camera>: rename them in the dataset, "
                "or train a state-only preset"
            )
        return keys

    def _goal_encoder(self, tasks: list[str] | None, base: MoDEConfig | None) -> tuple[dict[str, Any], int]:
        """(goal_encoder spec, goal width) of ``language_encoder`` (a checkpoint's ``base`` wins)."""
        if base is not None:
            return dict(base.goal_encoder), base.goal_dim
        from mode_policy.encoders.language import make_language_encoder

        spec: dict[str, Any] = {"type": self.language_encoder}
        if self.language_encoder == "task":
            if not tasks:
                raise ConfigError("language_encoder='task' learns one vector per instruction: it needs the dataset's")
            spec.update(tasks=list(tasks), dim=self.goal_dim or TASK_GOAL_DIM)
        encoder = make_language_encoder(spec)
        return encoder.config_dict(), encoder.dim

    def feature_shapes(self) -> dict[str, Any]:
        """state_dim, action_dim, image_size and n_obs_steps from LeRobot's features (used cameras only)."""
        state = self.robot_state_feature
        sizes = {tuple(self.cameras()[k][-2:]) for k in self.image_keys or []}
        if len(sizes) > 1 or any(h != w for h, w in sizes):
            raise ConfigError(f"MoDE needs square cameras of one size, got {sorted(sizes)}")
        return dict(
            state_dim=int(state.shape[0]) if state is not None else 0,
            action_dim=int(self.action_feature.shape[0]),
            image_size=int(next(iter(sizes))[0]) if sizes else 0,
            n_obs_steps=self.n_obs_steps,
        )

    def mode_config(self) -> MoDEConfig:
        """The policy's MoDEConfig: the resolved fields and the shapes of LeRobot's features."""
        if not self.resolved:
            missing = [n for n in MODE_FIELDS if getattr(self, n) is None]
            raise ConfigError(f"ModeConfig is not resolved (unset: {', '.join(missing)}); call resolve() first")
        return MoDEConfig(**{n: getattr(self, n) for n in MODE_FIELDS}, **self.feature_shapes())

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
        """AdamW with mode-policy train's settings (the weight-decay groups: ModePolicy.get_optim_params)."""
        return AdamWConfig(
            lr=self.optimizer_lr,
            betas=tuple(self.optimizer_betas),
            eps=self.optimizer_eps,
            weight_decay=self.optimizer_weight_decay,
            grad_clip_norm=self.optimizer_grad_clip_norm,
        )

    def get_scheduler_preset(self) -> ModeSchedulerConfig:
        """mode-policy train's schedule: linear warm-up, then cosine decay to lr * min_lr_ratio."""
        return ModeSchedulerConfig(
            num_warmup_steps=self.scheduler_warmup_steps, min_lr_ratio=self.scheduler_min_lr_ratio
        )

    def validate_features(self) -> None:
        """What LeRobot's features must offer MoDE: an action, and a state or a camera."""
        if self.action_feature is None:
            raise ConfigError("MoDE needs an 'action' output feature")
        if self.robot_state_feature is None and not self.image_features:
            raise ConfigError(f"MoDE needs {STATE_KEY!r} or at least one camera among the input features")
