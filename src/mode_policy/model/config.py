"""The policy's configuration (:class:`MoDEConfig`) and its named presets.

Every field is documented where it is declared; the command line is generated
from these dataclasses (``--policy.d_model=128``), and ``--help`` shows the
docstrings. A preset is a plain dict of overrides on top of the defaults, so it
shows exactly what it changes.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

from ..constants import IMAGES_PREFIX
from ..errors import ConfigError
from ..validation import check_choice, check_field_types, check_range

ROUTING_MODES = ("noise", "token", "dense")
SAMPLERS = ("ddim", "euler", "heun", "dpmpp_2m")
SCHEDULES = ("exponential", "karras")
VISION_DEPTHS = (18, 34, 50)


@dataclass(frozen=True)
class MoDEConfig:
    """Everything needed to rebuild a MoDE policy (saved as ``config.json``)."""

    # --- data shapes -------------------------------------------------------
    state_dim: int = 39
    """Width of ``observation.state`` (0 for image-only policies)."""
    action_dim: int = 4
    """Width of one action."""
    goal_dim: int = 384
    """Width of the goal vector (language embedding or task embedding)."""
    n_obs_steps: int = 1
    """Observation history length; each step becomes observation tokens."""
    horizon: int = 10
    """Length of the predicted action chunk (action tokens)."""
    n_action_steps: int = 10
    """Actions of a chunk executed before re-planning (<= horizon)."""
    image_keys: list[str] = field(default_factory=list)
    """Camera keys (``observation.images.<name>``); each camera is one token per step."""
    image_size: int = 0
    """Side of the square camera images (informational; the encoder pools globally)."""
    vision_depth: int = 18
    """FiLM-ResNet depth per camera: 18, 34 or 50."""
    vision_width: int = 64
    """ResNet stem width (64 = standard; smaller for CPU presets)."""
    vision_pretrained: str = ""
    """Local torchvision/timm ResNet state-dict file to initialise every camera's backbone."""
    image_shift_pad: int = 4
    """Random-shift augmentation (pad, then random crop) in training; 0 disables it."""
    image_features: bool = False
    """Cameras arrive as precomputed pooled image features instead of images (``architecture=
    'official'`` only; what a converted denoiser-only checkpoint takes): ``observation.images.<camera>``
    holds a float (B, [n_obs,] F) vector, F the pooled width of the camera trunk named by
    ``vision_depth`` / ``vision_width`` (2048 for the official ResNet-50). No camera trunks are built."""

    # --- transformer -------------------------------------------------------
    architecture: str = "mode"
    """'mode' (this library's network) or 'official' (the exact network function of the official
    MoDE code, whose released checkpoints ``mode-policy convert official`` converts; see
    :mod:`mode_policy.official` for every difference). With 'official', ``resid_dropout`` is the
    dropout inside each expert, ``goal_dropout`` zeroes goal elements without rescaling (the FiLM
    cameras see the clean goal), and ``init_std`` is unused."""
    n_layers: int = 4
    """Number of transformer blocks (each block's MLP is a mixture of experts)."""
    d_model: int = 256
    """Token width d."""
    n_heads: int = 4
    """Attention heads (d_model must be divisible by it)."""
    causal: bool = True
    """Causal self-attention (paper). False lets every token see the whole sequence, so the
    actions of a chunk are denoised jointly."""
    attn_dropout: float = 0.3
    """Dropout on attention probabilities (paper: 0.3)."""
    resid_dropout: float = 0.1
    """Dropout on the attention and MLP outputs before the residual add."""
    init_std: float = 0.02
    """Std of the normal init of linear layers (residual outputs scaled by 1/sqrt(2L))."""

    # --- experts -----------------------------------------------------------
    routing: str = "noise"
    """'noise' (MoDE: router sees only the noise embedding), 'token' (per-token router), 'dense' (one MLP)."""
    num_experts: int = 4
    """Experts per MoE layer."""
    top_k: int = 2
    """Experts used per sample (noise routing) or per token (token routing)."""
    mlp_ratio: int = 4
    """Hidden width of each SwiGLU expert, as a multiple of d_model (paper: 4)."""
    dense_mlp_ratio: int = 4
    """Hidden width of the single MLP of the 'dense' variant, as a multiple of d_model."""
    shared_expert: bool = False
    """Add an always-on SwiGLU expert to every MoE layer."""
    balance_loss_weight: float = 0.01
    """Weight gamma of the Switch-style load-balancing loss (paper: 0.01)."""
    freeze_router: bool = False
    """Freeze routers and drop the balancing loss (fine-tuning a pretrained model)."""
    noise_token: bool = True
    """Put the noise embedding phi(sigma) into the sequence as its first token (paper). False drops
    that token (and its positional embedding): the sequence starts at the goal token."""
    noise_conditioning: str = "attention"
    """How phi(sigma) conditions every block: 'attention' (paper: added to the normalised input of
    every self-attention), 'film' (each block maps SiLU(phi) linearly to a scale and a shift of the
    normalised attention and MLP inputs, ``h * (1 + scale) + shift``, zero-initialised), or 'none'
    (the blocks see the noise level only through the noise token and the routers)."""

    # --- conditioning ------------------------------------------------------
    goal_encoder: dict[str, Any] = field(default_factory=dict)
    """How ``task`` strings become goal vectors: the ``config_dict()`` of a language
    encoder (e.g. ``{"type": "minilm"}``); empty = goals arrive as ``goal`` vectors."""
    goal_dropout: float = 0.1
    """Element-wise dropout on the goal embedding in training (paper: 0.1)."""
    state_encoder_hidden: int = 256
    """Hidden width of the MLP that turns a state vector into an observation token."""
    state_groups: list[int] = field(default_factory=list)
    """Split the state vector into consecutive slices of these widths (summing to ``state_dim``, which
    training takes from the data; checked when the policy is built),
    each its own MLP and token, e.g. ``[15, 6, 6, 6, 6]`` for CALVIN's robot, articulated parts and
    three blocks: the action tokens can then attend to the object an instruction names. Empty: the
    whole state is one token."""

    # --- diffusion (EDM) ---------------------------------------------------
    sigma_data: float = 0.5
    """EDM sigma_data of the normalised actions."""
    sigma_min: float = 0.001
    """Smallest noise level (training truncation and end of the sampling schedule)."""
    sigma_max: float = 80.0
    """Largest noise level (training truncation and start of the sampling schedule)."""
    train_sigma_loc: float = math.log(0.5)
    """Location of the log-logistic training noise distribution (of ln sigma)."""
    train_sigma_scale: float = 0.5
    """Scale of the log-logistic training noise distribution (of ln sigma)."""
    sampler: str = "ddim"
    """Sampler: 'ddim' (paper), 'euler', 'heun' or 'dpmpp_2m'."""
    schedule: str = "exponential"
    """Sigma schedule: 'exponential' (paper) or 'karras'."""
    num_inference_steps: int = 10
    """Sampling steps (paper: 10; 5 also used)."""
    karras_rho: float = 7.0
    """rho of the Karras schedule."""

    # ----------------------------------------------------------------------
    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError naming the first field of the wrong type, out of range, or inconsistent."""
        check_field_types(self)
        for name in (
            "action_dim",
            "goal_dim",
            "n_obs_steps",
            "horizon",
            "vision_width",
            "n_layers",
            "d_model",
            "n_heads",
            "num_experts",
            "mlp_ratio",
            "dense_mlp_ratio",
            "state_encoder_hidden",
            "num_inference_steps",
        ):
            check_range(self, name, 1)
        for name in ("state_dim", "image_size", "image_shift_pad", "balance_loss_weight"):
            check_range(self, name, 0)
        for name in ("attn_dropout", "resid_dropout", "goal_dropout"):
            check_range(self, name, 0, 1, high_open=True)
        for name in ("init_std", "sigma_data", "train_sigma_scale", "karras_rho"):
            check_range(self, name, 0, low_open=True)
        check_choice(self, "routing", ROUTING_MODES)
        check_choice(self, "architecture", ("mode", "official"))
        if self.image_features and self.architecture != "official":
            raise ConfigError("image_features=true needs architecture='official' (the default network encodes images)")
        if self.architecture == "official":
            from ..official.spec import check_official_config

            check_official_config(self)
        check_choice(self, "sampler", SAMPLERS)
        check_choice(self, "schedule", SCHEDULES)
        if self.vision_depth not in VISION_DEPTHS:
            raise ConfigError(f"vision_depth={self.vision_depth}: expected one of {VISION_DEPTHS}")
        if self.d_model % self.n_heads:
            raise ConfigError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if self.routing != "dense" and not 1 <= self.top_k <= self.num_experts:
            raise ConfigError(f"top_k={self.top_k} must be in [1, num_experts={self.num_experts}]")
        if not 1 <= self.n_action_steps <= self.horizon:
            raise ConfigError(f"n_action_steps={self.n_action_steps} must be in [1, horizon={self.horizon}]")
        if not 0 < self.sigma_min < self.sigma_max:
            raise ConfigError(f"need 0 < sigma_min ({self.sigma_min}) < sigma_max ({self.sigma_max})")
        if self.goal_encoder and "type" not in self.goal_encoder:
            raise ConfigError("goal_encoder must name its 'type' (minilm, clip or task)")
        bad_keys = [k for k in self.image_keys if not k.startswith(IMAGES_PREFIX) or k == IMAGES_PREFIX]
        if bad_keys:
            raise ConfigError(f"image_keys {bad_keys}: camera keys look like {IMAGES_PREFIX}<camera>")
        if len(set(self.image_keys)) != len(self.image_keys):
            raise ConfigError(f"image_keys {self.image_keys} names a camera twice")
        if self.state_groups and (min(self.state_groups) < 1 or len(self.state_groups) < 2):
            raise ConfigError(
                f"state_groups={self.state_groups}: need two or more positive widths "
                "(empty: the whole state is one token)"
            )
        if self.state_dim <= 0 and not self.image_keys:
            raise ConfigError("the policy needs observations: state_dim > 0 or image_keys")
        check_choice(self, "noise_conditioning", ("attention", "film", "none"))
        if not self.noise_token and self.noise_conditioning == "none" and self.routing != "noise":
            raise ConfigError(
                f"noise_token=false with noise_conditioning='none' and routing={self.routing!r} "
                "leaves the network blind to the noise level: keep one of them"
            )

    @property
    def n_obs_tokens_per_step(self) -> int:
        state_tokens = (len(self.state_groups) or 1) if self.state_dim > 0 else 0
        return state_tokens + len(self.image_keys)

    @property
    def n_tokens(self) -> int:
        """Sequence length: [noise +] goal + observation tokens + action tokens."""
        return (2 if self.noise_token else 1) + self.n_obs_steps * self.n_obs_tokens_per_step + self.horizon

    # --- (de)serialisation -------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MoDEConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown MoDEConfig field(s): {', '.join(unknown)}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


# Presets: overrides on top of the defaults above.
PRESETS: dict[str, dict[str, Any]] = {
    # Unit tests: a few hundred thousand parameters, no dropout.
    "tiny": dict(
        n_layers=2,
        d_model=64,
        n_heads=2,
        attn_dropout=0.0,
        resid_dropout=0.0,
        state_encoder_hidden=64,
        horizon=4,
        n_action_steps=4,
    ),
    # Trains in minutes on a 2-core CPU (docs/results/training-throughput.md). Re-plans every 5
    # of its 10 actions: on MT10 that scored 0.02-0.04 higher than executing all 10, on two models
    # x two noise seeds of the same 100 held-out episodes (docs/results/mt10.md).
    "cpu": dict(
        n_layers=4,
        d_model=128,
        n_heads=4,
        attn_dropout=0.1,
        resid_dropout=0.0,
        state_encoder_hidden=128,
        n_action_steps=5,
    ),
    # State + camera images on a 2-core CPU: the cpu transformer with narrow ResNet-18s
    # (stem width 16) on 64 px images. Training replaces these placeholder cameras with
    # the dataset's (e.g. `mode-policy demos --cameras corner,gripperPOV --image-size 64`).
    "cpu-image": dict(
        n_layers=4,
        d_model=128,
        n_heads=4,
        attn_dropout=0.1,
        resid_dropout=0.0,
        state_encoder_hidden=128,
        image_keys=["observation.images.corner", "observation.images.gripperPOV"],
        image_size=64,
        vision_depth=18,
        vision_width=16,
        image_shift_pad=4,
    ),
    # The paper's from-scratch model: 8 layers, d=1024, 8 heads, 4 experts, top-2.
    # Two ResNet-18 cameras (static + gripper), CLIP-sized (512-d) goals, images only.
    "paper": dict(
        n_layers=8,
        d_model=1024,
        n_heads=8,
        goal_dim=512,
        state_dim=0,
        image_size=128,
        image_keys=["observation.images.static", "observation.images.gripper"],
    ),
    # The paper's pretrained model: 12 layers (transformer sizes; add cameras with image_keys=...).
    "paper-pretrain": dict(n_layers=12, d_model=1024, n_heads=8, goal_dim=512),
    # The released pretrained MoDE (mbreuss/MoDE_Pretrained) as the official code builds it:
    # architecture="official", 12 layers, d=1024, two ResNet-50 FiLM cameras, CLIP-sized goals,
    # 7-d actions in chunks of 10 (`mode-policy convert official` writes this config).
    "paper-official": dict(
        architecture="official",
        n_layers=12,
        d_model=1024,
        n_heads=8,
        goal_dim=512,
        state_dim=0,
        action_dim=7,
        horizon=10,
        n_action_steps=10,
        image_size=224,
        vision_depth=50,
        vision_width=64,
        image_keys=["observation.images.static", "observation.images.gripper"],
        attn_dropout=0.3,
        resid_dropout=0.1,
        goal_dropout=0.1,
    ),
}


def get_preset(name: str, **overrides: Any) -> MoDEConfig:
    """Build the config of a named preset, with keyword overrides on top."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}: choose from {', '.join(PRESETS)}")
    return MoDEConfig(**{**PRESETS[name], **overrides})


def preset_overrides(preset: str, config: MoDEConfig) -> dict[str, Any]:
    """The fields of ``config`` whose value differs from preset ``preset``'s."""
    base = get_preset(preset).to_dict()
    return {k: v for k, v in config.to_dict().items() if base[k] != v}
