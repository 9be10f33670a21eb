"""CALVIN chains played by several processes at once, each with its own simulator.

The chains still to play are dealt round-robin to ``workers`` processes (spawned, one torch
thread each); every process appends its finished chains to the shared
:class:`~mode_policy.evaluation.unit_log.UnitLog`, and the result is then read back from the
log, so it is the same for any number of workers and survives a kill (rerun to continue).
"""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path
from typing import Any, Sequence

from .result import EvalResult
from .unit_log import UnitLog


def _play_shard(job: tuple[str, str, list[int], str, dict, dict, int]) -> None:
    model_dir, device, shard, folder, settings, kwargs, k = job
    import torch

    from ..envs.rendering import setup_headless_rendering

    setup_headless_rendering()
    torch.set_num_threads(1)
    from ..policy import MoDEPolicy
    from .calvin import evaluate_calvin

    policy = MoDEPolicy.from_pretrained(model_dir, map_location=device)
    evaluate_calvin(policy, chain_ids=shard, log=UnitLog(folder, settings), log_writer=f"worker{k}",
                    progress=k == 0, **kwargs)


def evaluate_calvin_in_workers(
    policy: Any, model_dir: str | Path, log: UnitLog, workers: int, chain_ids: Sequence[int],
    device: str = "cpu", **kwargs: Any,
) -> EvalResult:
    """:func:`~mode_policy.evaluation.calvin.evaluate_calvin` of ``chain_ids`` over ``workers``
    processes (each loads the policy saved in ``model_dir``); ``policy`` (the same, loaded
    here) only assembles the result from the log. ``kwargs`` go to ``evaluate_calvin``."""
    import time

    from .calvin import evaluate_calvin

    start = time.perf_counter()
    done = log.records()
    todo = [i for i in chain_ids if i not in done]
    shards = [todo[k::workers] for k in range(workers) if todo[k::workers]]
    if shards:
        jobs = [(str(model_dir), device, shard, str(log.folder), log.settings, kwargs, k)
                for k, shard in enumerate(shards)]
        with mp.get_context("spawn").Pool(len(jobs)) as pool:
            pool.map(_play_shard, jobs)
    result = evaluate_calvin(policy, chain_ids=list(chain_ids), log=log, progress=False, **kwargs)
    result.settings.update(chains_played_now=len(todo), workers=len(shards))
    result.wall_s = time.perf_counter() - start
    return result
