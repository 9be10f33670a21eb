"""The policy a training run builds for its data: cameras, widths, goal encoder and normalisation.

From scratch (:func:`build_policy`) the data decide the shapes (a mixture: its widest
dataset) and the preset the rest; fine-tuning (:func:`finetune_policy`) takes the
pretrained config that :func:`mode_policy.training.finetune.plan_finetune` adapted. Either way the
policy normalises with the data's statistics: per dataset name for a mixture file or data
narrower than the policy, else the one dataset's.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..data.mixture import Mixture, MixtureData, MixtureMember
from ..data.windows import EpisodeData
from ..errors import ConfigError, DataError
from ..model.config import PRESETS, MoDEConfig, get_preset
from ..policy import MoDEPolicy
from .config import TrainConfig
from .finetune import check_tasks


def select_image_keys(cfg: TrainConfig, cameras: Sequence[str], source: str | None = None) -> list[str]:
    """The camera features the policy will see, given the dataset's ``cameras`` (those of every
    dataset of a mixture, under their policy names; ``source`` names the data in messages).

    * ``image_keys=...`` in the overrides: exactly those (each must be a camera of the dataset);
      ``image_keys=`` (empty) forces a state-only policy.
    * an image preset (non-empty ``image_keys``, e.g. ``cpu-image``): every camera of the
      dataset, in ``info.json`` order (the preset's own keys are placeholders).
    * a state-only preset: none (the videos are not decoded).
    """
    overrides = cfg.policy_overrides()
    cameras = list(cameras)
    source = cfg.dataset if source is None else source
    if "image_keys" in overrides:
        keys = list(overrides["image_keys"])
        missing = [k for k in keys if k not in cameras]
        if missing:
            raise DataError(
                f"image_keys {missing} are not camera features of dataset {source} "
                f"(it has: {', '.join(cameras) or 'no cameras'})"
            )
        return keys
    if PRESETS[cfg.preset].get("image_keys"):
        if not cameras:
            raise DataError(
                f"preset {cfg.preset!r} trains on camera images, but dataset {source} has no video or image "
                "features (generate them with `mode-policy demos --cameras corner,gripperPOV`)"
            )
        return cameras
    return []


def build_policy(cfg: TrainConfig, data: MixtureData | EpisodeData) -> tuple[MoDEPolicy, torch.Tensor | None]:
    """Policy sized for the data (the widest dataset of a mixture), with its goal encoder and
    normalisation; and the goal table (num_tasks, goal_dim) of a frozen encoder, computed once.

    Cameras follow :func:`select_image_keys`; their images must have been loaded
    (:meth:`MixtureData.load`, or ``load_episodes(root, image_keys=...)`` for one
    :class:`EpisodeData`), and ``image_size`` is set from them."""
    from ..encoders.language import make_language_encoder

    if isinstance(data, EpisodeData):
        data = _one_dataset(cfg, data)
    source = data.mixture.source
    spec: dict[str, Any] = {"type": cfg.language}
    overrides = cfg.policy_overrides()
    for name, have in (("action_dim", data.action_dim), ("state_dim", data.state_dim)):
        if name in overrides and overrides[name] not in (have, 0 if name == "state_dim" else have):
            raise DataError(
                f"policy.{name}={overrides[name]} does not match dataset {source}, whose "
                f"{name} is {have}; leave it out (training takes it from the data)"
                + (" or set 0 for an image-only policy" if name == "state_dim" else "")
            )
    if cfg.language == "task":
        spec.update(tasks=data.tasks, dim=overrides.get("goal_dim", 64))
    elif cfg.language == "clip":
        spec.update(allow_download=cfg.language_download, **({"path": cfg.language_path} if cfg.language_path else {}))
    image_keys = data.image_keys
    vision: dict[str, Any] = {}
    if image_keys:
        sizes = set().union(*(data.camera_sizes(k) for k in image_keys))
        (height, width), *others = sorted(sizes)
        image_size = height if not others and height == width else 0  # 0: mixed or non-square cameras
        if overrides.get("image_size", image_size) != image_size:
            raise DataError(
                f"image_size={overrides['image_size']} does not match the dataset's camera images "
                f"({', '.join(f'{h}x{w}' for h, w in sorted(sizes))})"
            )
        vision = {"image_keys": image_keys, "image_size": image_size}
    elif PRESETS[cfg.preset].get("image_keys"):
        vision = {"image_keys": [], "image_size": 0}  # image_keys= override: state only
    encoder = make_language_encoder(spec)
    policy_cfg = get_preset(
        cfg.preset,
        **{
            "state_dim": data.state_dim,
            "action_dim": data.action_dim,
            "goal_dim": encoder.dim,
            **overrides,
            **vision,
            "goal_encoder": encoder.config_dict(),
        },
    )
    policy = MoDEPolicy(policy_cfg)
    set_data_normalization(policy, data)
    return policy, goal_table(policy, data.tasks)


def _one_dataset(cfg: TrainConfig, data: EpisodeData) -> MixtureData:
    """``data`` (loaded from ``cfg.dataset``) as the one-member mixture of a ``--dataset`` run."""
    image_keys = select_image_keys(cfg, list(data.camera_shapes))
    not_loaded = [k for k in image_keys if k not in data.images]
    if not_loaded:
        raise DataError(f"camera(s) {not_loaded} were not loaded: use load_episodes(root, image_keys=...)")
    mixture = Mixture(
        (MixtureMember(Path(cfg.dataset).name or "dataset", Path(cfg.dataset), 1.0),), cfg.dataset, from_file=False
    )
    return MixtureData(mixture, [data], image_keys)


def per_dataset_normalization(config: MoDEConfig, data: MixtureData) -> bool:
    """Whether the policy keeps statistics per dataset name: for a mixture file, and for data
    narrower than the policy (fine-tuning a wider model), whose rows are padded."""
    member = data.members[0]
    narrower = member.action_dim != config.action_dim or (config.state_dim and member.state_dim != config.state_dim)
    return data.mixture.from_file or bool(narrower)


def set_data_normalization(policy: MoDEPolicy, data: MixtureData) -> None:
    """The data's action and state statistics: per dataset name, or the one dataset's (ConfigError
    if ``state_groups`` would split a dataset's zero-padded, narrower state)."""
    groups = policy.config.state_groups
    narrower = [n for n, m in zip(data.names, data.members) if groups and m.state_dim != policy.config.state_dim]
    if narrower:
        raise ConfigError(
            f"state_groups={groups} splits a {policy.config.state_dim}-value state, but dataset(s) "
            f"{narrower} have narrower states (padded with zeros): train them without state_groups"
        )
    if per_dataset_normalization(policy.config, data):
        policy.set_dataset_normalization(data.dataset_stats())
    else:
        policy.set_normalization(data.members[0].stats())


def run_stats(policy: MoDEPolicy, data: MixtureData) -> dict[str, Any]:
    """What a run's stats.json holds: the one dataset's statistics, or ``{name: statistics}``."""
    return data.dataset_stats() if policy.dataset_names else data.members[0].stats()


def goal_table(policy: MoDEPolicy, tasks: list[str]) -> torch.Tensor | None:
    """(num_tasks, goal_dim) goals of a frozen encoder, embedded once; None for a trainable one."""
    if isinstance(policy.goal_encoder, torch.nn.Module):
        return None
    return policy.goal_encoder(tasks).float().cpu()


def finetune_policy(cfg: TrainConfig, data: MixtureData, config: MoDEConfig) -> tuple[MoDEPolicy, torch.Tensor | None]:
    """The fine-tuned policy (``config`` from :func:`mode_policy.training.finetune.plan_finetune`), with the
    data's normalisation; its weights are loaded by the caller (pretrained or checkpoint)."""
    check_tasks(config, data.tasks, cfg.init_from)
    policy = MoDEPolicy(config)
    set_data_normalization(policy, data)
    return policy, goal_table(policy, data.tasks)
