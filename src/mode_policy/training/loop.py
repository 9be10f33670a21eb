"""The training loop (nanoGPT-style: one readable function), single process or DDP.

Runs as a plain script on one device, and unchanged under ``torchrun`` (DDP; gloo on CPU, NCCL on
GPU). Everything before the first step (data, policy, fine-tuning, resuming, optimiser) is
:func:`mode_policy.training.setup.prepare_run`; only rank 0 writes, into the run directory
described in :mod:`mode_policy.training.run_dir`.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from ..errors import TrainingError
from ..policy import MoDEPolicy
from ..threads import ThreadGovernor, make_governor
from .config import TrainConfig
from .setup import Run, prepare_run

EvalFn = Callable[[MoDEPolicy, int], dict[str, Any]]
"""``eval_fn(ema_policy, step) -> metrics`` for periodic evaluation during training."""


def weights_checksum(model: torch.nn.Module) -> str:
    """A short hash of every weight: equal on every DDP rank of a consistent run."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def train(cfg: TrainConfig, resume: bool = False, eval_fn: EvalFn | None = None, given: set[str] | None = None) -> Path:
    """Train a MoDE policy on ``cfg.dataset`` or ``cfg.mixture`` (from scratch, or fine-tuning
    ``cfg.init_from``); ``resume`` continues ``cfg.output_dir`` (``given``: the fields the caller set,
    see :func:`~mode_policy.training.setup.resumed_config`). Returns the run directory."""
    run = prepare_run(cfg, resume, given)
    cfg, policy, rank, world = run.cfg, run.policy, run.rank, run.world
    if rank == 0 and run.notes:
        print("\n".join(run.notes))
    writer = None
    if rank == 0:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run.run_dir.tensorboard), purge_step=run.step if run.resumed else None)
    governor = make_governor(cfg.threads, run.threads, run.local_ranks) if run.threads else None
    if rank == 0 and cfg.progress and run.threads:
        following = "" if governor is None else " (the cores free now; following neighbours that start or stop)"
        print(f"training on the CPU with {run.threads} torch thread(s){following}")
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cfg.amp and run.device.type == "cuda")
    bar = None
    if rank == 0 and cfg.progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, initial=run.step, desc="training", unit="step", dynamic_ncols=True)
    start_time, window_time, window_steps = time.perf_counter(), time.perf_counter(), 0
    with run.batches() as batches:  # built ahead on a thread (cfg.prefetch); joined on leaving
        for batch in batches:
            try:
                with autocast:
                    loss, info = run.model(batch)
            except RuntimeError as err:  # e.g. the routers' sampling refuses non-finite probabilities
                diverged = "nan" in str(err).lower() or "inf" in str(err).lower()
                if not diverged and all(torch.isfinite(p).all() for p in policy.parameters()):
                    raise
                raise TrainingError(
                    f"training diverged before step {run.step + 1} (non-finite values with lr={cfg.lr:g}); "
                    "lower the lr or check the data"
                ) from err
            if not torch.isfinite(loss):
                raise TrainingError(f"loss became {loss.item()} at step {run.step + 1}; lower the lr or check the data")
            run.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.grad_clip)
            run.optimizer.step()
            run.scheduler.step()
            run.ema.update(policy)
            run.step += 1
            step = run.step
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
                    "lr": run.scheduler.get_last_lr()[0],
                    "grad_norm": float(grad_norm),
                    "samples_per_s": window_steps * cfg.batch_size / (now - window_time),
                    "wall_s": now - start_time,
                    **({"torch_threads": torch.get_num_threads()} if run.threads else {}),
                    **{k: float(v) for k, v in info.items() if v.dim() == 0},
                }
                if "expert_usage" in info:
                    record["expert_usage"] = info["expert_usage"].tolist()
                window_time, window_steps = now, 0
                if rank == 0:
                    run.run_dir.append_metrics(record)
                    for k, v in record.items():
                        if isinstance(v, float):
                            writer.add_scalar(f"train/{k}", v, step)
                    if bar is not None:
                        bar.set_postfix(
                            loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.1e}", sps=f"{record['samples_per_s']:.0f}"
                        )
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                run.checkpoint()
            if eval_fn is not None and cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.steps:
                if rank == 0:
                    result = eval_fn(run.ema.model, step)
                    run.run_dir.append_eval({"step": step, **result})
                    for k, v in result.items():
                        if isinstance(v, (int, float)):
                            writer.add_scalar(f"eval/{k}", v, step)
                if world > 1:
                    dist.barrier()
                if governor is not None:  # the evaluation's own load is not a neighbour's
                    governor.restart()
    if bar is not None:
        bar.close()
    _finish(run, governor, time.perf_counter() - start_time)
    if writer is not None:
        writer.close()
    return run.run_dir.root


def _finish(run: Run, governor: ThreadGovernor | None, wall_s: float) -> None:
    """Save the EMA model and the run's summary; check that every DDP rank holds the same weights."""
    checksums = [weights_checksum(run.policy)]
    if run.world > 1:
        mine, checksums = checksums[0], [None] * run.world
        dist.all_gather_object(checksums, mine)
    if run.rank == 0:
        run.ema.model.save_pretrained(run.run_dir.model)
        changes = [] if governor is None else governor.changes
        run.run_dir.write_summary(
            {
                "steps": run.step,
                "world_size": run.world,
                "torch_threads": run.threads,
                "wall_s": wall_s,
                "thread_changes": [{"step": s, "torch_threads": n, "others_busy_cores": o} for s, n, o in changes],
                "weights_checksum_per_rank": checksums,
                "ranks_consistent": len(set(checksums)) == 1,
            }
        )
    if run.world > 1:
        dist.barrier()
        if len(set(checksums)) != 1:
            raise RuntimeError(f"DDP ranks diverged: weight checksums {checksums}")
