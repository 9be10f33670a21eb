"""CALVIN long-horizon evaluation (Mees et al. 2022), the official protocol:

* the chains of :func:`~mode_policy.envs.calvin.get_sequences` (1000 of 5 instructions);
* ``env.reset(robot_obs=..., scene_obs=...)`` once per chain, from its initial scene; for
  each instruction the policy is reset and gets at most :data:`EP_LEN` = 360 steps; after
  every step the task oracle (``calvin_env.envs.tasks.Tasks`` with
  :data:`~mode_policy.envs.calvin.TASK_ORACLE_SPEC`) checks ``get_task_info_for_set(start_info,
  current_info, {subtask})``; the next instruction is given only after a success, and a
  chain ends at its first failure;
* score: the average number of completed instructions per chain (0..5, "avg. len"), and
  the fraction of chains completing at least 1, 2, ..., 5 instructions.

:data:`CALVIN_OFFICIAL` holds the official settings (1000 chains, 360 steps per instruction,
5 sampling steps with sigma_min = 1.0, from the MoDE repository's ``conf/mode_evaluate.yaml``);
they are :func:`evaluate_calvin`'s defaults.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..envs.calvin import (
    CALVIN_TASKS,
    CAMERAS,
    CHAIN_LENGTH,
    NUM_SEQUENCES,
    TASK_ORACLE_SPEC,
    VAL_INSTRUCTIONS,
    calvin_observation,
    check_task_subset,
    get_env_state_for_initial_condition,
    get_sequences,
    to_env_action,
)
from ..envs.calvin_sim import import_calvin_env, make_calvin_env
from ..errors import ConfigError, DataError
from .protocol import Policy, eval_mode, policy_device
from .result import EvalResult, TaskResult
from .sampling import with_sampling_settings
from .unit_log import UnitLog

EP_LEN = 360
"""Policy steps per instruction."""
ROBOT_OBS_DIM, SCENE_OBS_DIM = 15, 24


@dataclass(frozen=True)
class CalvinSettings:
    """The settings of a CALVIN evaluation that decide its score."""

    num_sequences: int = NUM_SEQUENCES
    """Instruction chains (the first ``num_sequences`` of the official list)."""
    ep_len: int = EP_LEN
    """Policy steps per instruction."""
    num_inference_steps: int | None = 5
    """Diffusion sampling steps (None: the policy's own)."""
    sigma_min: float | None = 1.0
    """Smallest noise level of the sampling schedule (None: the policy's own)."""


CALVIN_OFFICIAL = CalvinSettings()
"""The official protocol: 1000 chains, 360 steps each, 5 sampling steps, sigma_min = 1.0."""


def count_success(chain_lengths: Sequence[int]) -> list[float]:
    """Fraction of chains that completed at least 1, 2, ..., 5 instructions."""
    if not len(chain_lengths):
        raise ValueError("no chains to score")
    counts = Counter(int(n) for n in chain_lengths)
    return [sum(counts[j] for j in range(i, CHAIN_LENGTH + 1)) / len(chain_lengths) for i in range(1, CHAIN_LENGTH + 1)]


def average_chain_length(chain_lengths: Sequence[int]) -> float:
    """CALVIN's score: the mean number of completed instructions per chain (0..5)."""
    if not len(chain_lengths):
        raise ValueError("no chains to score")
    return float(np.mean(chain_lengths))


def run_chains(
    sequences: Sequence[tuple[Mapping[str, Any], Sequence[str]]],
    reset: Callable[[int, Mapping[str, Any]], None],
    attempt: Callable[[int, str], bool],
    progress: bool = False,
    on_chain_done: Callable[[int, int], None] | None = None,
) -> list[int]:
    """The chain protocol: for chain ``c``, ``reset(c, initial_condition)``, then
    ``attempt(c, task)`` for its tasks in order until one returns False; then
    ``on_chain_done(c, completed)``. Returns the number of completed tasks per chain."""
    from tqdm.auto import tqdm

    lengths: list[int] = []
    bar = tqdm(total=len(sequences), desc="CALVIN chains", unit="chain", disable=not progress)
    try:
        for c, (condition, chain) in enumerate(sequences):
            reset(c, condition)
            done = 0
            for task in chain:
                if not attempt(c, task):
                    break
                done += 1
            lengths.append(done)
            if on_chain_done is not None:
                on_chain_done(c, done)
            bar.update(1)
            rates = count_success(lengths)
            text = " ".join(f"{i + 1}:{r:.0%}" for i, r in enumerate(rates))
            bar.set_postfix_str(f"{text} avg {np.mean(lengths):.2f}")
    finally:
        bar.close()
    return lengths


def _check_instructions(policy: Policy, sequences: Sequence[tuple[Mapping[str, Any], Sequence[str]]]) -> None:
    """Before any simulator is built: a policy with a fixed set of instructions (a learned task
    embedding) must know every validation instruction of the chains it will play."""
    known = getattr(getattr(policy, "goal_encoder", None), "tasks", None)
    if known is None:
        return
    needed = {VAL_INSTRUCTIONS[t] for _, chain in sequences for t in chain}
    missing = sorted(needed - set(known))
    if missing:
        raise DataError(
            f"the policy does not know CALVIN's instruction {missing[0]!r} ({len(missing)} of the "
            f"{len(needed)} the chains use are unknown to it; it was trained on {len(known)} other instruction(s))"
        )


def evaluate_calvin(
    policy: Policy,
    dataset_path: str | Path | None = None,
    num_sequences: int = CALVIN_OFFICIAL.num_sequences,
    ep_len: int = CALVIN_OFFICIAL.ep_len,
    progress: bool = True,
    seed: int = 0,
    *,
    scene: str = "D",
    renderer: str = "egl",
    env: Any = None,
    image_keys: Sequence[str] | None = None,
    image_sizes: Mapping[str, int] | None = None,
    include_scene_obs: bool = False,
    num_inference_steps: int | None = CALVIN_OFFICIAL.num_inference_steps,
    sigma_min: float | None = CALVIN_OFFICIAL.sigma_min,
    chain_ids: Sequence[int] | None = None,
    log: UnitLog | None = None,
    log_writer: str = "main",
    tasks: Sequence[str] | None = None,
    sequences: Sequence[tuple[Mapping[str, Any], Sequence[str]]] | None = None,
    scene_in_state: bool | None = None,
) -> EvalResult:
    """Run the CALVIN long-horizon protocol (defaults: :data:`CALVIN_OFFICIAL`).

    ``env`` is a calvin_env ``PlayTableSimEnv``; without it one is built by
    :func:`~mode_policy.envs.calvin_sim.make_calvin_env` with the cameras of ``image_keys``
    only: from calvin_env's own configs for ``scene`` (A-D), or from ``dataset_path`` (a
    CALVIN dataset or its validation folder) when given; ``renderer`` is "egl" or "tiny".
    ``image_keys`` default to ``policy.config.image_keys``; ``image_sizes`` optionally resize
    a camera (match the converter's static_size/gripper_size). ``num_inference_steps`` and
    ``sigma_min`` replace the policy's sampling settings during the run (None: keep them).
    ``chain_ids`` runs only those chains of the official list of ``num_sequences`` (in the
    given order); chain ``i`` is seeded by ``i``, so it plays the same whichever others run.
    ``tasks`` restricts the chains to those subtasks by the official generator's rules
    (:func:`~mode_policy.envs.calvin.get_sequences`); ``sequences`` is that list when the
    caller already has it (``get_sequences(num_sequences, tasks)``: worker processes get the
    parent's instead of sampling it again). ``scene_in_state`` appends ``scene_obs`` to the
    state (a policy trained on a dataset converted with ``scene_in_state``); None: when the
    policy's ``state_dim`` is 39 (15 + 24).

    ``per_task`` holds the subtasks that were attempted (in CALVIN's task order): successes
    out of attempts, and the time spent in their attempts as ``wall_s`` (chain resets count
    only in the overall ``wall_s``). ``metrics``: ``avg_len``, ``chain_success`` (fraction of
    chains completing at least 1..5 instructions) and ``chain_length_counts`` (chains that
    completed 0, 1, ..., 5 instructions).

    ``log`` (a :class:`~mode_policy.evaluation.unit_log.UnitLog`) makes the run resumable and
    shardable: every finished chain is appended to it (as ``log_writer``), chains it already
    holds are not played again, and the result covers ``chain_ids`` from the log's records, so
    it is the same however the chains were split over processes or interrupted."""
    start_time = time.perf_counter()
    keys = list(policy.config.image_keys if image_keys is None else image_keys)
    unknown = [k for k in keys if k not in CAMERAS]
    if unknown:
        raise ConfigError(f"unknown CALVIN camera key(s) {unknown}; available: {list(CAMERAS)}")
    if ep_len < 1:
        raise ConfigError(f"ep_len must be >= 1, got {ep_len}")
    calvin = import_calvin_env()
    oracle = calvin.Tasks(TASK_ORACLE_SPEC)
    state_dim = int(getattr(policy.config, "state_dim", ROBOT_OBS_DIM))
    if scene_in_state is None:
        scene_in_state = state_dim == ROBOT_OBS_DIM + SCENE_OBS_DIM
    if state_dim not in (0, ROBOT_OBS_DIM + SCENE_OBS_DIM * scene_in_state):
        raise ConfigError(
            f"the policy reads a state of {state_dim} values; CALVIN gives robot_obs "
            f"({ROBOT_OBS_DIM}), or robot_obs + scene_obs ({ROBOT_OBS_DIM + SCENE_OBS_DIM})"
        )
    if sequences is None:
        sequences = get_sequences(num_sequences, tasks)
    elif len(sequences) != num_sequences:
        raise ConfigError(f"sequences holds {len(sequences)} chains, num_sequences is {num_sequences}")
    ids = list(range(num_sequences)) if chain_ids is None else [int(i) for i in chain_ids]
    if not ids or not all(0 <= i < num_sequences for i in ids):
        raise ConfigError(f"chain_ids must be a non-empty list of indices in [0, {num_sequences}), got {chain_ids}")
    _check_instructions(policy, [sequences[i] for i in ids])
    records: dict[int, dict[str, Any]] = log.records() if log is not None else {}
    todo = [i for i in ids if i not in records]
    sequences = [sequences[i] for i in todo]
    env_source = "given"
    if env is None:
        env_source = f"dataset {dataset_path}" if dataset_path is not None else f"calvin_env scene {scene}"
        if todo:  # nothing to build when the log already holds every chain
            env = make_calvin_env(keys, scene=scene, dataset_path=dataset_path, renderer=renderer)
    device = policy_device(policy)
    attempts: Counter[str] = Counter()  # of the chain being played
    successes: Counter[str] = Counter()
    wall: Counter[str] = Counter()

    def reset(c: int, condition: Mapping[str, Any]) -> None:
        for counter in (attempts, successes, wall):
            counter.clear()
        robot_obs, scene_obs = get_env_state_for_initial_condition(condition)
        env.reset(robot_obs=robot_obs, scene_obs=scene_obs)
        torch.manual_seed(seed * 1_000_003 + todo[c])

    def chain_done(c: int, completed: int) -> None:
        record = {
            "unit": todo[c],
            "completed": completed,
            "attempts": dict(attempts),
            "successes": dict(successes),
            "wall_s": dict(wall),
        }
        records[todo[c]] = record
        if log is not None:
            log.append(log_writer, record)

    def attempt(c: int, task: str) -> bool:
        t0 = time.perf_counter()
        try:
            return solve(task)
        finally:
            wall[task] += time.perf_counter() - t0

    def solve(task: str) -> bool:
        attempts[task] += 1
        obs = env.get_obs()
        instruction = VAL_INSTRUCTIONS[task]
        policy.reset()
        start_info = env.get_info()
        for _ in range(ep_len):
            batch = calvin_observation(obs, instruction, keys, image_sizes, include_scene_obs, device, scene_in_state)
            obs, _, _, info = env.step(to_env_action(policy.select_action(batch)))
            if oracle.get_task_info_for_set(start_info, info, {task}):
                successes[task] += 1
                return True
        return False

    policy, sampling = with_sampling_settings(policy, num_inference_steps=num_inference_steps, sigma_min=sigma_min)
    with eval_mode(policy), torch.random.fork_rng(devices=[]):
        if sequences:
            run_chains(sequences, reset, attempt, progress, chain_done)
    lengths = [records[i]["completed"] for i in ids]
    total = {key: Counter() for key in ("attempts", "successes", "wall_s")}
    for i in ids:
        for key, counter in total.items():
            counter.update(records[i][key])
    per_task = {
        t: TaskResult(total["successes"][t], total["attempts"][t], total["wall_s"][t], VAL_INSTRUCTIONS[t])
        for t in CALVIN_TASKS
        if total["attempts"][t]
    }
    counts = Counter(lengths)
    metrics = {
        "avg_len": average_chain_length(lengths),
        "chain_success": count_success(lengths),
        "chain_length_counts": [counts[n] for n in range(CHAIN_LENGTH + 1)],
    }
    settings = {
        "num_sequences": num_sequences,
        "chain_ids": None if chain_ids is None else ids,
        "ep_len": ep_len,
        "tasks": None if tasks is None else list(check_task_subset(tasks)),
        "scene_in_state": scene_in_state,
        "image_keys": keys,
        "image_sizes": dict(image_sizes or {}),
        "include_scene_obs": include_scene_obs,
        "sampling": sampling,
        "env": env_source,
        "chains_played_now": len(todo),
    }
    return EvalResult("calvin", per_task, time.perf_counter() - start_time, seed, settings=settings, metrics=metrics)


def format_chain_success(result: EvalResult) -> str:
    """CALVIN's headline line: ``avg. len 2.100   success at 1: 83.3% | ... | 5: 33.3%``."""
    rates = " | ".join(f"{i + 1}: {r * 100:.1f}%" for i, r in enumerate(result.metrics["chain_success"]))
    return f"avg. len {result.metrics['avg_len']:.3f}   success at {rates}"
