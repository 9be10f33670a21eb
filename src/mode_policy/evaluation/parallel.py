"""Evaluations split over processes, each with its own simulator: CALVIN chains and LIBERO
waves (:func:`~mode_policy.evaluation.libero.libero_waves`) are the units they share.

* ``--workers N`` on one machine: the groups of units still to play are dealt round-robin
  to N spawned processes (one torch thread each), :func:`play_in_workers`;
* torchrun ranks (``RANK`` / ``WORLD_SIZE``, :func:`distributed_rank`) across GPUs or nodes:
  rank r plays :func:`shard` ``(groups, r, world_size)`` (with its own workers, if any);
  rank 0 then waits for the others' units (:func:`wait_for_units`) and returns the result
  (:func:`evaluate_sharded` does all of it).

Every process appends its finished units to the shared
:class:`~mode_policy.evaluation.unit_log.UnitLog` (its own file in the log's folder, which
must be on a filesystem all ranks see), and the result is then read back from the log, so it
is the same for any number of processes and survives a kill (rerun to continue).
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .result import EvalResult
from .unit_log import UnitLog
from .workers import WorkerGroup

__all__ = [
    "distributed_rank",
    "evaluate_calvin_in_workers",
    "evaluate_sharded",
    "libero_groups",
    "load_saved_policy",
    "play_in_workers",
    "shard",
    "wait_for_units",
]


def distributed_rank() -> tuple[int, int]:
    """``(RANK, WORLD_SIZE)`` as torchrun sets them; ``(0, 1)`` outside torchrun."""
    try:
        rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise ConfigError(
            f"RANK={os.environ.get('RANK')!r} / WORLD_SIZE={os.environ.get('WORLD_SIZE')!r} are not integers"
        ) from None
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(f"RANK={rank} must be in [0, WORLD_SIZE={world})")
    return rank, world


def shard(groups: Sequence[Sequence[int]], index: int, count: int) -> list[int]:
    """The units of every ``count``-th group from group ``index`` (a round-robin deal)."""
    return [int(u) for group in groups[index::count] for u in group]


def with_sampling(policy: Any, steps: int = 0, action_steps: int = 0) -> Any:
    """``policy`` sampling with ``steps`` steps and executing ``action_steps`` actions per chunk,
    each where > 0 (else its own), passed with every call (its config is not edited); ConfigError
    if ``action_steps`` exceeds its horizon."""
    from .sampling import with_sampling_settings

    return with_sampling_settings(policy, action_steps, num_inference_steps=steps or None)[0]


def load_saved_policy(model_dir: str, device: str = "cpu", steps: int = 0, action_steps: int = 0) -> Any:
    """A saved MoDE policy with :func:`with_sampling`'s overrides (what a worker plays)."""
    from ..policy import MoDEPolicy

    return with_sampling(MoDEPolicy.from_pretrained(model_dir, map_location=device), steps, action_steps)


def _play_shard(
    job: tuple[Callable[..., EvalResult], str, Callable[[], Any], list[int], str, dict, dict, str, bool],
) -> None:
    evaluate, units_arg, load_policy, units, folder, settings, kwargs, writer, progress = job
    import torch

    from ..envs.rendering import setup_headless_rendering

    setup_headless_rendering()
    torch.set_num_threads(1)
    evaluate(
        load_policy(),
        log=UnitLog(folder, settings),
        log_writer=writer,
        progress=progress,
        **{units_arg: units},
        **kwargs,
    )


def play_in_workers(
    evaluate: Callable[..., EvalResult],
    units_arg: str,
    load_policy: Callable[[], Any],
    log: UnitLog,
    workers: int,
    groups: Sequence[Sequence[int]],
    writer: str = "worker",
    progress: bool = True,
    **kwargs: Any,
) -> int:
    """Play the groups of units ``log`` does not hold yet in ``workers`` spawned processes:
    each calls ``evaluate(load_policy(), <units_arg>=its units, log=log, ...)`` with ``kwargs``
    (``evaluate`` and ``load_policy`` must be picklable: module-level functions or partials of
    them). A worker's error, or its death, stops the others and is raised here. Returns the
    number of units played."""
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    done = log.records()
    todo = [list(g) for g in groups if any(int(u) not in done for u in g)]
    shards = [shard(todo, k, workers) for k in range(workers)]
    jobs = [
        (
            evaluate,
            units_arg,
            load_policy,
            units,
            str(log.folder),
            log.settings,
            kwargs,
            f"{writer}{k}",
            False,  # one bar for all workers, here
        )
        for k, units in enumerate(shards)
        if units
    ]
    if jobs:
        group = WorkerGroup(
            _play_shard,
            jobs,
            "evaluation worker",
            "The units finished so far are in the log: run the same command again to continue.",
        )
        try:
            wanted = {int(u) for units in shards for u in units} - set(done)  # this process's units only
            unit = "chain" if units_arg == "chain_ids" else "rollout"
            if progress:
                follow_log(group, log, wanted, f"{len(jobs)} workers", unit)
            group.get()  # a worker's error is raised here
        finally:
            group.stop()
    return sum(map(len, shards))


def follow_log(pending: Any, log: UnitLog, wanted: set[int], desc: str, unit: str, poll_s: float = 2.0) -> None:
    """Show one progress bar of the units of ``wanted`` that the workers have added to ``log``
    until ``pending`` (a :class:`~mode_policy.evaluation.workers.WorkerGroup`, or anything with its ``ready`` and ``wait``) is ready."""
    from tqdm.auto import tqdm

    with tqdm(total=len(wanted), desc=desc, unit=unit) as bar:
        while True:
            ready = pending.ready()
            bar.n = len(wanted & log.records().keys())
            bar.refresh()
            if ready:
                return
            pending.wait(poll_s)


def wait_for_units(
    log: UnitLog, units: Sequence[int], poll_s: float = 10.0, on_wait: Callable[[int], None] | None = None
) -> None:
    """Return once ``log`` holds every unit of ``units`` (other ranks are still playing);
    ``on_wait(missing)`` is called before each wait."""
    wanted = {int(u) for u in units}
    while True:
        missing = len(wanted - set(log.records()))
        if not missing:
            return
        if on_wait is not None:
            on_wait(missing)
        time.sleep(poll_s)


def evaluate_sharded(
    evaluate: Callable[..., EvalResult],
    units_arg: str,
    policy: Any,
    load_policy: Callable[[], Any],
    log: UnitLog,
    groups: Sequence[Sequence[int]],
    workers: int = 1,
    progress: bool = True,
    on_wait: Callable[[int], None] | None = None,
    **kwargs: Any,
) -> EvalResult | None:
    """This process's part of an evaluation over the units of ``groups``, split over torchrun
    ranks (:func:`distributed_rank`: rank r takes groups r, r + world_size, ...) and, within a
    rank, over ``workers`` processes (``load_policy`` builds each one's policy). Rank 0 then
    waits for the other ranks' units and returns the merged result from ``log``; other ranks
    return None. ``evaluate`` is ``evaluate_calvin`` (``units_arg="chain_ids"``) or
    ``evaluate_libero`` (``"units"``); ``kwargs`` go to it."""
    start = time.perf_counter()
    rank, world = distributed_rank()
    everything = [int(u) for group in groups for u in group]
    before = set(log.records())
    mine = [list(g) for g in groups[rank::world]]
    writer = f"rank{rank}-" if world > 1 else ""
    if workers > 1:
        play_in_workers(evaluate, units_arg, load_policy, log, workers, mine, f"{writer}worker", progress, **kwargs)
    elif mine:
        result = evaluate(
            policy, **{units_arg: shard(mine, 0, 1)}, log=log, log_writer=f"{writer}main", progress=progress, **kwargs
        )
        if world == 1:
            return result
    if rank != 0:
        return None
    if world > 1:
        wait_for_units(log, everything, on_wait=on_wait)
    result = evaluate(policy, **{units_arg: everything}, log=log, progress=False, **kwargs)
    played = len(set(log.records()) - before)  # by every process of this run
    for key in ("chains_played_now", "rollouts_played_now"):
        if key in result.settings:
            result.settings[key] = played
    result.settings.update(workers=workers, ranks=world)
    result.wall_s = time.perf_counter() - start
    return result


def evaluate_calvin_in_workers(
    policy: Any,
    model_dir: str | Path,
    log: UnitLog,
    workers: int,
    chain_ids: Sequence[int],
    device: str = "cpu",
    steps: int = 0,
    action_steps: int = 0,
    **kwargs: Any,
) -> EvalResult:
    """:func:`~mode_policy.evaluation.calvin.evaluate_calvin` of ``chain_ids`` over ``workers``
    processes (each loads the policy saved in ``model_dir``, with ``steps`` sampling steps and
    ``action_steps`` executed actions per chunk when > 0); ``policy`` (the same, loaded here) only assembles the result from the log.
    ``kwargs`` go to ``evaluate_calvin``."""
    from ..envs.calvin import get_sequences
    from .calvin import evaluate_calvin

    if "sequences" not in kwargs:  # computed once here, not again in every worker
        kwargs["sequences"] = get_sequences(kwargs.get("num_sequences", 1000), kwargs.get("tasks"))
    loader = functools.partial(load_saved_policy, str(model_dir), device, steps, action_steps)
    result = evaluate_sharded(
        evaluate_calvin, "chain_ids", policy, loader, log, [[int(i)] for i in chain_ids], workers, **kwargs
    )
    assert result is not None  # rank 0 (or no torchrun)
    return result


def libero_groups(
    policy: Any,
    suite: str,
    n_rollouts_per_task: int,
    tasks: Sequence[int] | None = None,
    num_envs: int | None = None,
    image_keys: Sequence[str] | None = None,
    video_dir: Any = None,
    **_: Any,
) -> list[list[int]]:
    """The LIBERO waves an ``evaluate_libero`` call with these arguments plays, as unit ids."""
    from ..envs.libero import CAMERAS
    from .libero import libero_num_envs, libero_suite_size, libero_waves

    keys = list(policy.config.image_keys if image_keys is None else image_keys)
    cameras = any(k in CAMERAS for k in keys) or video_dir is not None
    task_ids = list(range(libero_suite_size(suite))) if tasks is None else [int(t) for t in tasks]
    return libero_waves(task_ids, n_rollouts_per_task, libero_num_envs(n_rollouts_per_task, num_envs, cameras))
