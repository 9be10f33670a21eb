"""A training run's configuration (:class:`TrainConfig`): data, optimisation, checkpoints, and the policy.

The command line is generated from this dataclass (``--steps=2000``, ``--policy.d_model=128``);
``--help`` shows the docstrings.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from ..model.config import PRESETS, MoDEConfig, get_preset, preset_overrides
from ..validation import check_choice, check_field_types, check_range

LANGUAGE_ENCODERS = ("minilm", "task", "clip")


@dataclass
class TrainConfig:
    """A training run: data, optimisation, checkpoints, and the policy to train.

    ``policy`` defaults to the ``preset``'s config. Fields that training derives from the
    dataset (``state_dim``, ``action_dim``, ``goal_dim``, cameras, goal encoder) are filled in
    then, unless set explicitly to a value other than the preset's (e.g. ``state_dim=0`` for an
    image-only policy, ``image_keys=[]`` for a state-only policy on a dataset with cameras).
    """

    dataset: str = ""
    """Path of a LeRobot-format dataset (v3.0 or v2.1)."""
    mixture: str = ""
    """Instead of ``dataset``: a mixture file (YAML or JSON) of datasets with sampling weights,
    each keeping its own normalisation (see :mod:`mode_policy.data.mixture`)."""
    init_from: str = ""
    """Fine-tune this pretrained policy (a run directory or a model folder) instead of starting
    from scratch: its architecture, goal encoder and cameras carry over, its routers are frozen
    (see :mod:`mode_policy.training.finetune`)."""
    output_dir: str = "runs/mode"
    """Run directory (created; must be empty unless resuming)."""
    preset: str = "cpu"
    """Policy preset (tiny, cpu, cpu-image, paper, paper-pretrain, paper-official). An image preset (one with
    ``image_keys``) uses the dataset's cameras; a state-only preset ignores them."""
    policy: MoDEConfig | None = None
    """The policy's configuration; default: the preset's (see ``mode-policy info --preset``)."""
    language: str = "minilm"
    """Goal encoder: 'minilm' (offline sentence model), 'task' (learned embedding) or 'clip'."""
    language_path: str = ""
    """CLIP: a local folder with the model and tokenizer, or a Hub name (empty: the paper's ViT-B/32)."""
    language_download: bool = False
    """CLIP: allow downloading the model from the Hugging Face Hub (needs internet; off by default)."""
    steps: int = 5000
    """Optimizer steps in total (on resume: the new total)."""
    batch_size: int = 256
    """Global batch size (split across DDP ranks)."""
    lr: float = 3e-4
    """Peak learning rate of AdamW."""
    warmup_steps: int = 200
    """Steps of linear learning-rate warm-up."""
    min_lr_ratio: float = 0.1
    """Cosine decay ends at lr * min_lr_ratio."""
    weight_decay: float = 0.05
    """AdamW weight decay of matrices (none on gains and biases)."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW betas."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value."""
    ema_decay: float = 0.999
    """Decay of the weights' exponential moving average (the saved model is the EMA)."""
    log_every: int = 50
    """Log metrics every N steps."""
    checkpoint_every: int = 1000
    """Save a resumable checkpoint every N steps (and at the end)."""
    keep_checkpoints: int = 2
    """Number of newest checkpoints kept."""
    eval_every: int = 0
    """Evaluate the EMA policy in simulation every N steps (0: never during training)."""
    eval_episodes: int = 5
    """Episodes per task of each periodic evaluation."""
    seed: int = 0
    """Seed of the model initialisation, the batches and the diffusion noise."""
    device: str = "auto"
    """'auto' (cuda if available), 'cpu', 'cuda', 'cuda:1', ..."""
    threads: int = 0
    """Torch CPU threads; 0: the cores other processes leave free when training starts
    (or OMP_NUM_THREADS when set)."""
    amp: bool = True
    """bf16 autocast on CUDA (ignored on CPU)."""
    prefetch: int = 2
    """Batches a background thread builds ahead of the step (pinned memory on CUDA); 0: build each
    batch on the main thread when the step needs it. The batches are the same either way."""
    progress: bool = True
    """Show a progress bar."""
    frame_cache_dir: str = ""
    """Folder of the decoded-frame cache: cameras are decoded once into uint8 files there and later
    runs reuse them (rebuilt when the dataset or image size changes). Empty: no cache unless
    memory_budget_mb is set, which then uses ~/.cache/mode_policy/frames."""
    memory_budget_mb: float = 0.0
    """Most MB of decoded camera frames held in memory: cameras that do not fit are read from the
    frame cache batch by batch. 0: no budget (every camera in memory, as without a cache). A mixture's
    members share it equally."""

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ConfigError(f"unknown preset {self.preset!r}: choose from {', '.join(PRESETS)}")
        if self.policy is None:
            self.policy = get_preset(self.preset)
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError naming the first field of the wrong type or out of range."""
        check_field_types(self)
        self.policy.validate()
        check_choice(self, "language", LANGUAGE_ENCODERS)
        if self.dataset and self.mixture:
            raise ConfigError(f"give dataset ({self.dataset}) or mixture ({self.mixture}), not both")
        for name in ("steps", "batch_size", "log_every", "checkpoint_every", "keep_checkpoints", "eval_episodes"):
            check_range(self, name, 1)
        for name in ("warmup_steps", "eval_every", "seed", "weight_decay", "threads", "prefetch"):
            check_range(self, name, 0)
        check_range(self, "lr", 0, low_open=True)
        check_range(self, "grad_clip", 0, low_open=True)
        check_range(self, "min_lr_ratio", 0, 1)
        check_range(self, "ema_decay", 0, 1, high_open=True)
        if not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"betas={self.betas}: each must be in [0, 1)")
        check_range(self, "memory_budget_mb", 0)

    def policy_overrides(self) -> dict[str, Any]:
        """The policy fields whose value differs from the preset's (what the user chose)."""
        return preset_overrides(self.preset, self.policy)

    # --- (de)serialisation: config.json of a run ------------------------------
    def to_run_dict(self, world_size: int = 1) -> dict[str, Any]:
        """``{"train": ..., "policy": ..., "world_size": ...}``, as a run's config.json holds it."""
        train = dataclasses.asdict(self)
        train.pop("policy")
        train["betas"] = list(self.betas)
        return {"train": train, "policy": self.policy.to_dict(), "world_size": world_size}

    @classmethod
    def from_run_dict(cls, data: dict[str, Any], where: str = "config.json") -> TrainConfig:
        """Inverse of :meth:`to_run_dict`; ConfigError naming ``where`` for anything that does not fit."""
        if not isinstance(data, dict) or not isinstance(data.get("train"), dict) or "policy" not in data:
            raise ConfigError(f"{where}: expected an object with 'train' and 'policy' (a run's config.json)")
        train = dict(data["train"])
        train.pop("overrides", None)  # runs before 0.2 kept `key=value` strings; "policy" holds their result
        known = {f.name for f in dataclasses.fields(cls)} - {"policy"}
        unknown = sorted(set(train) - known)
        if unknown:
            raise ConfigError(f"{where}: unknown TrainConfig field(s): {', '.join(unknown)}")
        if "betas" in train:
            train["betas"] = tuple(train["betas"])
        try:
            return cls(**train, policy=MoDEConfig.from_dict(dict(data["policy"])))
        except TypeError as err:
            raise ConfigError(f"{where}: {err}") from None
