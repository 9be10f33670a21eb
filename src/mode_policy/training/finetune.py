"""Fine-tuning a pretrained MoDE policy on new data (``mode-policy finetune``, ``train --init_from``).

The pretrained policy (a run directory: its newest EMA weights; or a model folder with
``config.json`` and ``model.safetensors``) fixes everything about the network: the
architecture, the goal encoder, the cameras, the observation history and chunk
length. Fine-tuning keeps all of it, takes the new data's action and state
normalisation, freezes the routers and drops the load-balancing loss (as the
official MoDE code does when it fine-tunes). What cannot carry over is refused
before any data is decoded, with what differs and how to adapt:

* actions or states wider than the pretrained model's (narrower ones are zero-padded
  and masked out of the loss, as in a mixture);
* a camera the pretrained model sees that the data lacks (map one with a mixture
  file's ``cameras:``), or a camera it has no encoder for;
* another goal encoder, or new instructions for a learned task embedding;
* an architecture field (only :data:`ADJUSTABLE_FIELDS` may change).

Camera images of another size are resized to the pretrained model's ``image_size``.
The command's default recipe is :data:`mode_policy.cli.pipeline.FINETUNE_RECIPE`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from ..constants import ACTION_KEY, STATE_KEY
from ..data.mixture import Mixture
from ..data.reader import DatasetReader
from ..errors import CheckpointError, ConfigError, DataError, DataNotFoundError
from ..model.config import MoDEConfig
from ..policy import MoDEPolicy
from .config import TrainConfig
from .run_dir import CHECKPOINT_PREFIX, RunDir, load_training_state

ADJUSTABLE_FIELDS = (
    "attn_dropout",
    "resid_dropout",
    "goal_dropout",
    "image_shift_pad",
    "n_action_steps",
    "sampler",
    "schedule",
    "num_inference_steps",
    "karras_rho",
    "train_sigma_loc",
    "train_sigma_scale",
    "balance_loss_weight",
    "freeze_router",
)
"""Policy fields a fine-tune may set (none changes a parameter's shape or what the network computes
at a given input); every other field comes from the pretrained model."""

NORMALISATION_PREFIXES = ("normalizer.", "dataset_normalizers.")


# ------------------------------------------------------------------ loading
def load_pretrained(path: str | Path) -> tuple[MoDEPolicy, str]:
    """The pretrained policy with its EMA weights, and a description of where they came from.

    A run directory gives its final ``model/``, or the EMA weights of its newest checkpoint when
    that is newer (a run still going, or resumed and stopped); anything else must be a model
    folder (``config.json`` + ``model.safetensors``)."""
    path = Path(path)
    if not path.exists():
        raise DataNotFoundError(f"pretrained model not found: {path} (give a run directory or a model folder)")
    run = RunDir(path)
    if (path / "model.safetensors").is_file() or not run.config.is_file():  # a model folder
        return MoDEPolicy.from_pretrained(path), str(path)
    latest = run.latest_checkpoint()
    finished = (run.read_summary() or {}).get("steps", 0)
    if (run.model / "config.json").is_file() and (latest is None or _step(latest) <= finished):
        return MoDEPolicy.from_pretrained(run.model), f"{run.model} (the run's final EMA model)"
    if latest is None:
        raise CheckpointError(f"run {path} has neither a model nor a checkpoint yet: nothing to fine-tune from")
    policy = MoDEPolicy.from_pretrained(latest)
    policy.load_state_dict(load_training_state(latest)["ema"]["model"])
    return policy, f"{latest} (the EMA weights of the run's newest checkpoint)"


def _step(checkpoint: Path) -> int:
    return int(checkpoint.name[len(CHECKPOINT_PREFIX) :])


def transfer_weights(policy: MoDEPolicy, pretrained: MoDEPolicy, source: str) -> None:
    """Copy every pretrained tensor into ``policy`` except the normalisation (which the new data set)."""
    state = {k: v for k, v in pretrained.state_dict().items() if not k.startswith(NORMALISATION_PREFIXES)}
    missing, unexpected = policy.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(NORMALISATION_PREFIXES)]
    if missing or unexpected:
        raise CheckpointError(
            f"{source} does not fit the fine-tuned policy: missing {missing[:8]}, unexpected {unexpected[:8]}"
        )


# ------------------------------------------------------------------ planning
def plan_finetune(
    cfg: TrainConfig, base: MoDEConfig, mixture: Mixture, source: str
) -> tuple[MoDEConfig, str, list[str]]:
    """The fine-tuned policy's config (``base`` with the adjustable flags given, routers frozen),
    its goal-encoder type (for ``TrainConfig.language``) and notes for the user. Reads dataset
    metadata only; ConfigError / DataError saying what differs and how to adapt."""
    language = _language(cfg, base, source)
    changes: dict[str, Any] = {"freeze_router": True, "vision_pretrained": ""}  # weights come from the model
    refused = []
    for key, value in cfg.policy_overrides().items():
        if key in ADJUSTABLE_FIELDS:
            changes[key] = value
        elif key == "image_keys" and value != base.image_keys:
            new = [k for k in value if k not in base.image_keys]
            raise ConfigError(
                f"policy.image_keys={value}: the pretrained model {source} has camera encoders for "
                f"{base.image_keys or 'no cameras'} only"
                + (f"; {new} would need new, untrained encoders" if new else "")
                + ": fine-tune with its cameras (map the dataset's with a mixture file's 'cameras:'), or train from scratch"
            )
        elif getattr(base, key) != value and key not in ("goal_encoder", "goal_dim", "vision_pretrained"):
            refused.append(f"policy.{key}={value!r} (pretrained: {getattr(base, key)!r})")
    if refused:
        raise ConfigError(
            f"fine-tuning keeps the architecture of {source}; these flags change it: "
            + ", ".join(refused)
            + f". Only {', '.join(ADJUSTABLE_FIELDS)} may be set"
        )
    notes = _check_data(base, mixture, source)
    return dataclasses.replace(base, **changes), language, notes


def _language(cfg: TrainConfig, base: MoDEConfig, source: str) -> str:
    if not base.goal_encoder:
        raise ConfigError(
            f"the pretrained model {source} has no goal encoder (it was fed goal vectors); "
            "fine-tuning needs one that turns the dataset's instructions into goals"
        )
    kind = base.goal_encoder["type"]
    if cfg.language not in (kind, TrainConfig.language):
        raise ConfigError(
            f"--language={cfg.language}: the pretrained model {source} embeds instructions with "
            f"{kind!r}, and its goal projection and FiLM layers are trained on those vectors. Leave "
            f"--language out (fine-tuning keeps {kind!r}), or train from scratch with {cfg.language!r}"
        )
    return kind


def check_tasks(base: MoDEConfig, tasks: list[str], source: str) -> None:
    """A learned task embedding knows only its pretraining instructions: DataError for new ones."""
    if base.goal_encoder.get("type") != "task":
        return
    new = sorted(set(tasks) - set(base.goal_encoder.get("tasks", [])))
    if new:
        shown = ", ".join(repr(t) for t in new[:5]) + (" ..." if len(new) > 5 else "")
        raise DataError(
            f"the pretrained model {source} has a learned embedding of its {len(base.goal_encoder['tasks'])} "
            f"pretraining instructions and cannot embed {len(new)} new one(s) ({shown}); pretrain with "
            "--language minilm (or clip) to fine-tune on new instructions"
        )


def _widths(path: Path) -> tuple[int, int]:
    """(action, state) widths of a dataset from its metadata (0 for a missing feature)."""
    features = DatasetReader(path).features
    return tuple(int(np.prod(features[k]["shape"])) if k in features else 0 for k in (ACTION_KEY, STATE_KEY))


def _check_data(base: MoDEConfig, mixture: Mixture, source: str) -> list[str]:
    notes = []
    for member in mixture.members:
        where = f"dataset {member.path}" + (f" ({member.name!r} in {mixture.source})" if mixture.from_file else "")
        action_dim, state_dim = _widths(member.path)
        if action_dim > base.action_dim:
            raise DataError(
                f"{where} has {action_dim}-d actions, the pretrained model {source} predicts {base.action_dim}-d "
                f"actions: its action layers are {base.action_dim} wide and cannot be reused. Fine-tune on data with at "
                f"most {base.action_dim}-d actions (narrower ones are padded), or pretrain on a mixture that includes "
                f"{action_dim}-d actions (mode-policy train --mixture) so the model is built {action_dim} wide"
            )
        if base.state_dim and state_dim > base.state_dim:
            raise DataError(
                f"{where} has {state_dim}-d states, the pretrained model {source} reads {base.state_dim}-d states: "
                f"fine-tune on data with at most {base.state_dim}-d states (narrower ones are padded), or pretrain on a "
                f"mixture that includes {state_dim}-d states"
            )
        if action_dim < base.action_dim or (base.state_dim and state_dim < base.state_dim):
            notes.append(
                f"{member.name}: {action_dim}-d actions / {state_dim}-d states padded to the model's "
                f"{base.action_dim} / {base.state_dim} (padding masked out of the loss)"
            )
        cameras = member.policy_cameras()
        lacking = [k for k in base.image_keys if k not in cameras]
        if lacking:
            raise DataError(
                f"{where} lacks camera(s) {lacking} that the pretrained model {source} sees (the data has: "
                f"{', '.join(cameras) or 'no cameras'}). Map one of its cameras to each in a mixture file "
                f"(cameras: {{<dataset camera>: {lacking[0]}}}) and fine-tune with --mixture"
            )
        unused = [k for k in cameras if k not in base.image_keys]
        if unused:
            notes.append(f"{member.name}: camera(s) {unused} not used (the pretrained model has no encoder for them)")
        resized = [k for k in base.image_keys if base.image_size and cameras[k][:2] != (base.image_size,) * 2]
        if resized:
            notes.append(f"{member.name}: camera(s) {resized} resized to the model's {base.image_size} px")
    return notes
