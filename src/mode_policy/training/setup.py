"""Everything before the first training step: a :class:`TrainConfig` turned into a ready :class:`Run`.

:func:`prepare_run` is the one place that decides what a run trains: the process group and
device, the run directory (new, or resumed with :func:`resumed_config`'s merge of the saved and
the given settings), the data (one dataset or a mixture), the policy (built for the data,
fine-tuned from ``init_from``, or restored from the newest checkpoint), the EMA, the optimiser
and its schedule, and the RNG states. :func:`mode_policy.training.loop.train` then only loops.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from ..data.mixture import Mixture, MixtureData, MixtureSampler, read_mixture
from ..data.prefetch import BatchStream
from ..data.windows import EpisodeData, dataset_cameras, load_episodes
from ..errors import ConfigError, DataError, RunDirError
from ..fileio import Outputs
from ..policy import MoDEPolicy
from ..threads import apply_threads
from .build import build_policy, finetune_policy, run_stats, select_image_keys
from .config import TrainConfig
from .ema import EMA
from .finetune import load_pretrained, plan_finetune, transfer_weights
from .run_dir import TRAINING_STATE, RunDir, load_training_state

__all__ = [
    "RESUMABLE_CHANGES",
    "Run",
    "load_dataset",
    "lr_factor",
    "param_groups",
    "prepare_run",
    "resolve_device",
    "resumed_config",
    "run_mixture",
]


# ------------------------------------------------------------------ processes and devices
def distributed() -> tuple[int, int, int]:
    """(rank, local_rank, world_size); initialises the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 0, 1
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    return dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0")), world


def resolve_device(spec: str, local_rank: int = 0) -> torch.device:
    """'auto' (cuda if available), 'cpu', 'cuda', 'cuda:N'; ConfigError for anything this machine lacks."""
    if spec == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise ConfigError(f"device={spec!r}: expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device={spec!r}: this machine has no CUDA device (use device=cpu or auto)")
        if device.index is None:
            device = torch.device(f"cuda:{local_rank}")
        if device.index >= torch.cuda.device_count():
            raise ConfigError(f"device={spec!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif device.type != "cpu":
        raise ConfigError(f"device={spec!r}: expected auto, cpu, cuda or cuda:N")
    return device


# ------------------------------------------------------------------ resuming
RESUMABLE_CHANGES = (
    "steps",
    "dataset",
    "mixture",
    "progress",
    "device",
    "threads",
    "log_every",
    "checkpoint_every",
    "keep_checkpoints",
    "eval_every",
    "eval_episodes",
    "frame_cache_dir",
    "memory_budget_mb",
    "prefetch",
)
"""TrainConfig fields a resumed run may change: they do not alter what is being optimised."""


def resumed_config(
    saved: TrainConfig, given: TrainConfig, where: str, fields: set[str] | None = None
) -> tuple[TrainConfig, list[str]]:
    """The config to continue a run with: ``saved``, with the fields of ``given`` that
    :data:`RESUMABLE_CHANGES` allows.

    ``fields`` names the TrainConfig fields the caller set (a command line's flags, ``policy.FIELD``
    for a policy field, ``policy`` for the whole policy); only those are compared with the saved
    run (default: every field, and the policy fields that differ from ``given``'s preset).
    RunDirError listing every other difference with both values (a resumed run must optimise the
    same thing); also returns the changes, as lines to tell the user."""
    names = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in ("policy", "output_dir")]
    policy_fields: set[str] | None = None
    if fields is not None:
        names = [name for name in names if name in fields]
        policy_fields = {name.split(".", 1)[1] for name in fields if name.startswith("policy.")}
        if "policy" in fields:
            policy_fields |= set(given.policy_overrides())
    conflicts, changes = [], {}
    for name in names:
        have, want = getattr(saved, name), getattr(given, name)
        if have == want:
            continue
        if name in RESUMABLE_CHANGES:
            changes[name] = want
        else:
            conflicts.append(f"{name}: the run has {have!r}, given {want!r}")
    saved_policy, given_policy = saved.policy.to_dict(), given.policy.to_dict()
    wanted = (
        given.policy_overrides()
        if policy_fields is None
        else {key: given_policy[key] for key in sorted(policy_fields) if key in given_policy}
    )
    for key, value in wanted.items():
        if saved_policy.get(key) != value and key != "goal_encoder":
            conflicts.append(f"policy.{key}: the run has {saved_policy.get(key)!r}, given {value!r}")
    if conflicts:
        raise RunDirError(
            f"--resume of {where} with a different configuration (start a new run instead): " + "; ".join(conflicts)
        )
    notes = [f"{name}: {getattr(saved, name)!r} -> {value!r}" for name, value in changes.items() if name != "progress"]
    return dataclasses.replace(saved, **changes), notes


# ------------------------------------------------------------------ optimisation
def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to ``min_lr_ratio``."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices (dim >= 2), none on gains and biases."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# ------------------------------------------------------------------ data
def load_dataset(
    cfg: TrainConfig, path: Path, image_keys: list[str], image_size: int = 0, progress: bool = True, n_datasets: int = 1
) -> EpisodeData:
    """Every dataset a run reads is loaded here, with the run's loading options; the memory budget
    is the run's, so each of ``n_datasets`` mixture members gets an equal share of it."""
    budget = cfg.memory_budget_mb / n_datasets if cfg.memory_budget_mb else None
    return load_episodes(
        path,
        image_keys=image_keys,
        progress=progress,
        cache_dir=cfg.frame_cache_dir or None,
        memory_budget_mb=budget,
        image_size=image_size or None,
    )


def run_mixture(cfg: TrainConfig) -> Mixture:
    """The run's data: ``cfg.mixture`` (a mixture file) or the one dataset ``cfg.dataset``."""
    if cfg.mixture:
        return read_mixture(cfg.mixture)
    if not cfg.dataset:
        raise ConfigError("training needs data: dataset=PATH (a LeRobot dataset) or mixture=FILE")
    return Mixture.single(cfg.dataset)


# ------------------------------------------------------------------ the run
DataPosition = tuple[torch.Tensor, dict[str, Any]]
"""Where a rank's data stream stands: its batch generator's state and its sampler's."""


@dataclass
class Run:
    """A run ready for its first (or next) step: what :func:`mode_policy.training.loop.train` loops over."""

    cfg: TrainConfig
    """The config being trained (the saved one with the allowed changes, when resuming)."""
    run_dir: RunDir
    rank: int
    world: int
    local_ranks: int
    device: torch.device
    threads: int
    """Torch CPU threads chosen at the start (0 on a GPU)."""
    policy: MoDEPolicy
    model: torch.nn.Module
    """``policy``, wrapped in DistributedDataParallel under torchrun."""
    sampler: MixtureSampler
    ema: EMA
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    data_gen: torch.Generator
    step: int = 0
    resumed: bool = False
    notes: list[str] = field(default_factory=list)
    """Lines to tell the user (what is fine-tuned, what a resume changed)."""
    stream: BatchStream | None = None
    """The training batches while :meth:`batches` is open."""

    def data_position(self) -> DataPosition:
        """The data stream's position after the batches trained on so far (not those a prefetching
        thread built ahead): what a checkpoint saves."""
        return self.stream.position if self.stream is not None else self._live_position()

    def _live_position(self) -> DataPosition:
        return self.data_gen.get_state(), self.sampler.schedule.state_dict()

    def _rewind_data(self, position: DataPosition) -> None:
        self.data_gen.set_state(position[0])
        self.sampler.schedule.load_state_dict(position[1])

    @contextmanager
    def batches(self) -> Iterator[BatchStream]:
        """This rank's training batches from the current step to ``cfg.steps``, on the run's
        device, built ``cfg.prefetch`` ahead on a background thread (0: inline); on leaving, the
        thread is joined and the data stream rewound to the last batch handed out
        (:class:`~mode_policy.data.prefetch.BatchStream`)."""
        per_rank = self.cfg.batch_size // self.world
        self.stream = BatchStream(
            lambda: self.sampler.sample(per_rank, self.data_gen),
            self.cfg.steps - self.step,
            position=self._live_position,
            rewind=self._rewind_data,
            depth=self.cfg.prefetch,
            device=self.device,
        )
        try:
            with self.stream as stream:
                yield stream
        finally:
            self.stream = None

    def gather_rng(self) -> tuple[list, list]:
        """Every rank's data and torch RNG states (rank 0 saves them all)."""
        mine = [self.data_position()[0], torch.get_rng_state()]
        if self.world == 1:
            return [mine[0]], [mine[1]]
        everyone: list = [None] * self.world
        dist.all_gather_object(everyone, mine)
        return [e[0] for e in everyone], [e[1] for e in everyone]

    def checkpoint(self) -> None:
        """Save a resumable checkpoint of the current step (rank 0 writes; every rank sends its RNG)."""
        data_rng, torch_rng = self.gather_rng()
        if self.rank != 0:
            return
        state = {
            "step": self.step,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "ema": self.ema.state_dict(),
            "data_rng": data_rng,
            "torch_rng": torch_rng,
            "sampler": self.data_position()[1],
        }

        def write(folder: Path) -> None:
            self.policy.save_pretrained(folder)
            torch.save(state, folder / TRAINING_STATE)

        self.run_dir.save_checkpoint(self.step, write, self.cfg.keep_checkpoints)

    def restore(self, checkpoint: Path) -> None:
        """Continue from ``checkpoint``'s optimiser, schedule, EMA, RNG and sampler states."""
        state = load_training_state(checkpoint)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.ema.load_state_dict(state["ema"])
        rank = self.rank
        self.data_gen.set_state(state["data_rng"][rank] if rank < len(state["data_rng"]) else state["data_rng"][0])
        torch.set_rng_state(state["torch_rng"][rank] if rank < len(state["torch_rng"]) else state["torch_rng"][0])
        if "sampler" in state:  # runs before mixtures had one dataset: nothing to restore
            self.sampler.schedule.load_state_dict(state["sampler"])
        self.step = state["step"]
        self.resumed = True


def _check_run_dir(run: RunDir, resume: bool, rank: int, notes: list[str]) -> Path | None:
    """The checkpoint to resume from (None for a new run): the one ``LATEST`` names, or without
    ``LATEST`` the newest intact one (said in ``notes``); RunDirError for a run directory that
    cannot be used as asked."""
    if run.root.exists() and not run.root.is_dir():
        raise RunDirError(f"output_dir {run.root} is a file, not a run directory")
    latest = run.latest_checkpoint() if resume else None
    if resume and latest is None:
        latest = run.newest_intact_checkpoint()
        if latest is not None:
            notes.append(f"{run.latest_pointer} is missing: resuming from the newest intact checkpoint, {latest.name}")
    if resume and latest is None:
        hint = (
            " (the run stopped before its first checkpoint: start it again without --resume)" if run.is_stub() else ""
        )
        raise RunDirError(f"--resume: no checkpoint in {run.checkpoints}{hint}")
    if not resume and not run.is_empty():
        if not run.is_stub():
            raise RunDirError(f"run directory {run.root} is not empty (use --resume to continue it)")
        if rank == 0:
            run.clear_stub()  # a run that failed before its first checkpoint left only its run files
    return latest


def _restore_weights(policy: MoDEPolicy, latest: Path, source: str) -> None:
    """Load the checkpoint's weights into the policy built for the data, refusing other data."""
    saved_policy = MoDEPolicy.from_pretrained(latest)
    for field_name in ("state_dim", "action_dim", "goal_dim"):
        have, want = getattr(policy.config, field_name), getattr(saved_policy.config, field_name)
        if have != want:
            raise DataError(f"dataset {source} gives {field_name}={have}, checkpoint {latest} expects {want}")
    if saved_policy.config != policy.config:
        raise DataError(f"checkpoint {latest} was trained with a different policy config than {source} gives")
    policy.load_state_dict(saved_policy.state_dict())


def prepare_run(cfg: TrainConfig, resume: bool = False, given: set[str] | None = None) -> Run:
    """Turn ``cfg`` into a run ready to train: new, fine-tuned from ``cfg.init_from``, or resumed from
    the newest checkpoint of ``cfg.output_dir`` (``given``: the fields the caller set, see
    :func:`resumed_config`). Rank 0 writes the run's config and statistics."""
    rank, local_rank, world = distributed()
    device = resolve_device(cfg.device, local_rank)
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    threads = apply_threads(cfg.threads, local_ranks) if device.type == "cpu" else 0
    run_dir = RunDir(cfg.output_dir)
    notes: list[str] = []
    latest = _check_run_dir(run_dir, resume, rank, notes)
    inputs = [p for p in (cfg.dataset, cfg.mixture, cfg.init_from) if p]  # a run never goes inside its data
    Outputs(inputs=inputs).location(run_dir.root, "the run directory", folder=True, holds=True)
    if latest is not None:
        saved = TrainConfig.from_run_dict(run_dir.read_config(), str(run_dir.config))
        cfg, resume_notes = resumed_config(saved, cfg, str(run_dir.root), given)
    mixture = run_mixture(cfg)  # checks every dataset exists, before anything is written
    if cfg.batch_size % world:
        raise ConfigError(f"batch_size {cfg.batch_size} is not divisible by the {world} DDP ranks")

    torch.manual_seed(cfg.seed + rank)
    progress = cfg.progress and rank == 0
    pretrained, image_size = None, 0
    if cfg.init_from:  # fine-tuning: the pretrained model (or, resuming, the run's own config) fixes the network
        if latest is None:
            pretrained, where = load_pretrained(cfg.init_from)
            notes.append(f"fine-tuning {where}")
        base = pretrained.config if pretrained is not None else cfg.policy
        finetuned, language, data_notes = plan_finetune(cfg, base, mixture, cfg.init_from)
        cfg, image_keys, image_size = dataclasses.replace(cfg, language=language), finetuned.image_keys, base.image_size
        notes += data_notes
    else:
        image_keys = select_image_keys(cfg, list(mixture.cameras()), mixture.source)

    def load(path: Path, keys: list[str]) -> EpisodeData:
        resize = image_size and any(dataset_cameras(path)[k][:2] != (image_size, image_size) for k in keys)
        return load_dataset(cfg, path, keys, image_size if resize else 0, progress, len(mixture.members))

    data = MixtureData.load(mixture, image_keys, load)
    if cfg.init_from:
        policy, goals = finetune_policy(cfg, data, finetuned)
        if pretrained is not None:
            transfer_weights(policy, pretrained, cfg.init_from)
    else:
        policy, goals = build_policy(cfg, data)
    if latest is not None:
        _restore_weights(policy, latest, mixture.source)
    policy.to(device).train()
    sampler = MixtureSampler(
        data, policy.config.n_obs_steps, policy.config.horizon, goals, tag_rows=bool(policy.dataset_names)
    )
    ema = EMA(policy, cfg.ema_decay)
    model: torch.nn.Module = policy
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            policy,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=policy.config.routing != "dense",
        )
    # fused: one kernel over all tensors (CPU and CUDA), same update as the per-tensor loop
    fused = device.type in ("cpu", "cuda")
    optimizer = torch.optim.AdamW(param_groups(policy, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas, fused=fused)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg))
    data_gen = torch.Generator().manual_seed(cfg.seed * 1000 + rank)
    run = Run(cfg, run_dir, rank, world, local_ranks, device, threads, policy, model, sampler, ema, optimizer,
              scheduler, data_gen, notes=notes)  # fmt: skip
    if latest is not None:
        run.restore(latest)
        if run.step >= cfg.steps:
            raise RunDirError(
                f"--resume: {run_dir.root} is already at step {run.step}; give a larger steps (now {cfg.steps})"
            )
        if run_stats(policy, data) != run_dir.read_stats():
            trained = saved.mixture or saved.dataset
            raise RunDirError(
                f"--resume: the run was trained on {trained}, given {mixture.source}, whose normalisation "
                f"statistics differ from {run_dir.stats} (a different dataset): start a new run instead"
            )
        if rank == 0:
            run_dir.prepare_resume(run.step)
        changes = ": " + "; ".join(resume_notes) if resume_notes else ""
        notes.insert(0, f"resuming {run_dir.root} at step {run.step}{changes}")
    if rank == 0:
        run_dir.root.mkdir(parents=True, exist_ok=True)
        resolved = dataclasses.replace(cfg, policy=policy.config)  # with the fields the dataset gave
        run_dir.write_config(resolved.to_run_dict(world))  # on resume: records the new step budget
        if latest is None:
            run_dir.write_stats(run_stats(policy, data))
    return run
