"""Training loop (nanoGPT-style: one readable function), single process or DDP.

Runs as a plain script on one device, and unchanged under ``torchrun`` (DDP;
gloo on CPU, NCCL on GPU). Only rank 0 writes anything; what it writes is
described in :mod:`mode_policy.training.run_dir`. The data is one dataset (``dataset``) or a
weighted mixture (``mixture``, see :mod:`mode_policy.data.mixture`); ``init_from``
fine-tunes a pretrained policy (:mod:`mode_policy.training.finetune`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from ..data.mixture import Mixture, MixtureData, MixtureSampler, read_mixture
from ..data.windows import EpisodeData, dataset_cameras, load_episodes
from ..errors import CheckpointError, ConfigError, DataError, RunDirError, TrainingError
from ..policy import MoDEPolicy
from ..threads import apply_threads, make_governor
from .build import build_policy, finetune_policy, run_stats, select_image_keys
from .config import TrainConfig
from .ema import EMA
from .finetune import load_pretrained, plan_finetune, transfer_weights
from .run_dir import TRAINING_STATE, RunDir

EvalFn = Callable[[MoDEPolicy, int], dict[str, Any]]


# ------------------------------------------------------------------ helpers
def _distributed() -> tuple[int, int, int]:
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


#: TrainConfig fields a resumed run may change: they do not alter what is being optimised.
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
)


def resumed_config(saved: TrainConfig, given: TrainConfig, where: str) -> tuple[TrainConfig, list[str]]:
    """The config to continue a run with: ``saved``, with the fields of ``given`` that
    :data:`RESUMABLE_CHANGES` allows. RunDirError listing every other difference (a resumed run
    must optimise the same thing); also returns the changes, as lines to tell the user."""
    conflicts = []
    for f in dataclasses.fields(TrainConfig):
        if f.name in RESUMABLE_CHANGES or f.name in ("policy", "output_dir"):
            continue
        if getattr(given, f.name) != getattr(saved, f.name):
            conflicts.append(f"{f.name}: the run has {getattr(saved, f.name)!r}, given {getattr(given, f.name)!r}")
    saved_policy = saved.policy.to_dict()
    for key, value in given.policy_overrides().items():
        if saved_policy[key] != value and key not in ("goal_encoder",):
            conflicts.append(f"policy.{key}: the run has {saved_policy[key]!r}, given {value!r}")
    if conflicts:
        raise RunDirError(
            f"--resume of {where} with a different configuration (start a new run instead): " + "; ".join(conflicts)
        )
    changes = {name: getattr(given, name) for name in RESUMABLE_CHANGES if getattr(given, name) != getattr(saved, name)}
    notes = [f"{name}: {getattr(saved, name)!r} -> {value!r}" for name, value in changes.items() if name != "progress"]
    return dataclasses.replace(saved, **changes), notes


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to ``min_lr_ratio``."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices (dim >= 2), none on gains and biases."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def weights_checksum(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


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


# --------------------------------------------------------------- checkpoints
def save_checkpoint(run: RunDir, step: int, policy: MoDEPolicy, state: dict[str, Any], keep: int) -> Path:
    """Checkpoint ``step`` (policy + training state), written atomically; see :meth:`RunDir.save_checkpoint`."""

    def write(folder: Path) -> None:
        policy.save_pretrained(folder)
        torch.save(state, folder / TRAINING_STATE)

    return run.save_checkpoint(step, write, keep)


def _load_training_state(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path / TRAINING_STATE, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - any unreadable file is reported the same way
        raise CheckpointError(f"checkpoint {path / TRAINING_STATE} is corrupt or truncated: {err}") from None


# -------------------------------------------------------------------- train
def train(cfg: TrainConfig, resume: bool = False, eval_fn: EvalFn | None = None) -> Path:
    """Train a MoDE policy on ``cfg.dataset`` or ``cfg.mixture`` (from scratch, or fine-tuning
    ``cfg.init_from``); returns the run directory."""
    rank, local_rank, world = _distributed()
    device = resolve_device(cfg.device, local_rank)
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    threads = apply_threads(cfg.threads, local_ranks) if device.type == "cpu" else 0
    run = RunDir(cfg.output_dir)
    mixture = run_mixture(cfg)  # checks every dataset exists, before anything is written
    if run.root.exists() and not run.root.is_dir():
        raise RunDirError(f"output_dir {run.root} is a file, not a run directory")
    if cfg.batch_size % world:
        raise ConfigError(f"batch_size {cfg.batch_size} is not divisible by the {world} DDP ranks")
    latest = run.latest_checkpoint() if resume else None
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
    resume_notes: list[str] = []
    if latest is not None:
        saved = TrainConfig.from_run_dict(run.read_config(), str(run.config))
        cfg, resume_notes = resumed_config(saved, cfg, str(run.root))

    torch.manual_seed(cfg.seed + rank)
    progress = cfg.progress and rank == 0
    pretrained, notes, image_size = None, [], 0
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
        saved_policy = MoDEPolicy.from_pretrained(latest)
        for field_name in ("state_dim", "action_dim", "goal_dim"):
            have, want = getattr(policy.config, field_name), getattr(saved_policy.config, field_name)
            if have != want:
                raise DataError(
                    f"dataset {mixture.source} gives {field_name}={have}, checkpoint {latest} expects {want}"
                )
        if saved_policy.config != policy.config:
            raise DataError(
                f"checkpoint {latest} was trained with a different policy config than {mixture.source} gives"
            )
        policy.load_state_dict(saved_policy.state_dict())
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
    optimizer = torch.optim.AdamW(_param_groups(policy, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg))
    data_gen = torch.Generator().manual_seed(cfg.seed * 1000 + rank)
    step = 0
    if latest is not None:
        state = _load_training_state(latest)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        ema.load_state_dict(state["ema"])
        data_gen.set_state(state["data_rng"][rank] if rank < len(state["data_rng"]) else state["data_rng"][0])
        torch.set_rng_state(state["torch_rng"][rank] if rank < len(state["torch_rng"]) else state["torch_rng"][0])
        if "sampler" in state:  # runs before mixtures had one dataset: nothing to restore
            sampler.schedule.load_state_dict(state["sampler"])
        step = state["step"]
        if step >= cfg.steps:
            raise RunDirError(f"--resume: {run.root} is already at step {step}; give a larger steps (now {cfg.steps})")
        if run_stats(policy, data) != run.read_stats():
            raise RunDirError(
                f"--resume: dataset {mixture.source} has other normalisation statistics than "
                f"{run.stats} (a different dataset): start a new run instead"
            )
        if rank == 0:
            run.prepare_resume(step)
            print(f"resuming {run.root} at step {step}" + (": " + "; ".join(resume_notes) if resume_notes else ""))

    if rank == 0 and notes:
        print("\n".join(notes))
    writer = None
    if rank == 0:
        run.root.mkdir(parents=True, exist_ok=True)
        resolved = dataclasses.replace(cfg, policy=policy.config)  # with the fields the dataset gave
        run.write_config(resolved.to_run_dict(world))  # on resume: records the new step budget
        if latest is None:
            run.write_stats(run_stats(policy, data))
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run.tensorboard), purge_step=step if latest is not None else None)

    def gather_rng() -> tuple[list, list]:
        """Every rank's data and torch RNG states (rank 0 saves them all)."""
        mine = [data_gen.get_state(), torch.get_rng_state()]
        if world == 1:
            return [mine[0]], [mine[1]]
        everyone: list = [None] * world
        dist.all_gather_object(everyone, mine)
        return [e[0] for e in everyone], [e[1] for e in everyone]

    def checkpoint() -> None:
        data_rng, torch_rng = gather_rng()
        if rank == 0:
            save_checkpoint(
                run,
                step,
                policy,
                {
                    "step": step,
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "ema": ema.state_dict(),
                    "data_rng": data_rng,
                    "torch_rng": torch_rng,
                    "sampler": sampler.schedule.state_dict(),
                },
                cfg.keep_checkpoints,
            )

    governor = make_governor(cfg.threads, threads, local_ranks) if threads else None
    if rank == 0 and cfg.progress and threads:
        print(
            f"training on the CPU with {threads} torch thread(s)"
            + ("" if governor is None else " (the cores free now; following neighbours that start or stop)")
        )
    per_rank = cfg.batch_size // world
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cfg.amp and device.type == "cuda")
    bar = None
    if rank == 0 and cfg.progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, initial=step, desc="training", unit="step", dynamic_ncols=True)
    start_time, window_time, window_steps = time.perf_counter(), time.perf_counter(), 0
    while step < cfg.steps:
        batch = {
            k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v
            for k, v in sampler.sample(per_rank, data_gen).items()
        }
        try:
            with autocast:
                loss, info = model(batch)
        except RuntimeError as err:  # e.g. the routers' sampling refuses non-finite probabilities
            diverged = "nan" in str(err).lower() or "inf" in str(err).lower()
            if not diverged and all(torch.isfinite(p).all() for p in policy.parameters()):
                raise
            raise TrainingError(
                f"training diverged before step {step + 1} (non-finite values with lr={cfg.lr:g}); "
                "lower the lr or check the data"
            ) from err
        if not torch.isfinite(loss):
            raise TrainingError(f"loss became {loss.item()} at step {step + 1}; lower the lr or check the data")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        ema.update(policy)
        step += 1
        window_steps += 1
        if bar is not None:
            bar.update(1)
        if governor is not None and governor.step() is not None and bar is not None:
            _, now_threads, others = governor.changes[-1]
            bar.write(f"step {step}: {now_threads} torch thread(s) (other processes use {others:.1f} cores)")
        if step % cfg.log_every == 0 or step == cfg.steps:
            now = time.perf_counter()
            record = {
                "step": step,
                "lr": scheduler.get_last_lr()[0],
                "grad_norm": float(grad_norm),
                "samples_per_s": window_steps * cfg.batch_size / (now - window_time),
                "wall_s": now - start_time,
                **({"torch_threads": torch.get_num_threads()} if threads else {}),
                **{k: float(v) for k, v in info.items() if v.dim() == 0},
            }
            if "expert_usage" in info:
                record["expert_usage"] = info["expert_usage"].tolist()
            window_time, window_steps = now, 0
            if rank == 0:
                run.append_metrics(record)
                for k, v in record.items():
                    if isinstance(v, float):
                        writer.add_scalar(f"train/{k}", v, step)
                if bar is not None:
                    bar.set_postfix(
                        loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.1e}", sps=f"{record['samples_per_s']:.0f}"
                    )
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            checkpoint()
        if eval_fn is not None and cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.steps:
            if rank == 0:
                result = eval_fn(ema.model, step)
                run.append_eval({"step": step, **result})
                for k, v in result.items():
                    if isinstance(v, (int, float)):
                        writer.add_scalar(f"eval/{k}", v, step)
            if world > 1:
                dist.barrier()
            if governor is not None:  # the evaluation's own load is not a neighbour's
                governor.restart()
    if bar is not None:
        bar.close()

    checksum = weights_checksum(policy)
    checksums = [checksum]
    if world > 1:
        checksums = [None] * world
        dist.all_gather_object(checksums, checksum)
    if rank == 0:
        ema.model.save_pretrained(run.model)
        run.write_summary(
            {
                "steps": step,
                "world_size": world,
                "torch_threads": threads,
                "wall_s": time.perf_counter() - start_time,
                "thread_changes": []
                if governor is None
                else [{"step": s, "torch_threads": n, "others_busy_cores": o} for s, n, o in governor.changes],
                "weights_checksum_per_rank": checksums,
                "ranks_consistent": len(set(checksums)) == 1,
            }
        )
        writer.close()
    if world > 1:
        dist.barrier()
        if len(set(checksums)) != 1:
            raise RuntimeError(f"DDP ranks diverged: weight checksums {checksums}")
    return run.root
