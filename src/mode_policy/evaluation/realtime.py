"""Meta-World under a simulated inference delay: synchronous, naive asynchronous and RTC execution.

Every env runs the control loop of :class:`~mode_policy.serving.realtime.ChunkExecutor`. A chunk is
requested when ``execute_horizon`` actions of the current one have run (counted from the step its
observation was taken) and computed at once, while simulated time stands still; what differs is
when it takes over:

* ``sync``: at once (the robot waits for the policy: no env step passes during inference);
* ``naive``: ``delay`` env steps later, the env having executed the current chunk's next
  ``delay`` actions meanwhile; the new chunk, planned from the observation ``delay`` steps old,
  is entered at its action ``delay``;
* ``rtc``: as naive, with the new chunk sampled to start with the ``delay`` actions executed
  meanwhile and guided toward the rest of the current chunk (:mod:`mode_policy.model.guidance`).
  The delay the requests assume is measured (the largest of the recent ones), as on a robot.

Per task: success, and the action discontinuity: the mean over action dimensions of
``|a_t - a_{t-1}|``, averaged over the steps where a new chunk takes over (``switch_jump``) and
over the other steps (``inside_jump``). :func:`run_realtime_grid` runs delays x modes, one result
file per cell, resumably; :func:`plot_switches` draws one episode's actions under the three modes.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..constants import STATE_KEY, TASK_KEY
from ..errors import ConfigError
from ..model.guidance import GuidanceSettings
from ..serving.realtime import EXECUTION_MODES, ChunkExecutor, DelayEstimate
from .metaworld import _check_policy_dims, _metaworld, policy_cameras
from .protocol import Policy, eval_mode, policy_device
from .result import EvalResult, TaskResult

__all__ = [
    "SimulatedDelay",
    "action_jumps",
    "evaluate_delayed",
    "plot_switches",
    "rollout_delayed",
    "run_realtime_grid",
]


class SimulatedDelay:
    """A :class:`~mode_policy.serving.realtime.ChunkSource` in simulated time: ``predict(batch, prefix,
    delay)`` computes the chunk when it is submitted, and it is ready ``delay`` steps later."""

    def __init__(self, predict: Callable[[Mapping[str, Any], Any, int], np.ndarray], delay: int) -> None:
        self.predict, self.delay = predict, delay
        self._chunk: np.ndarray | None = None

    def submit(self, batch: Mapping[str, Any], prefix: Any | None, delay: int) -> None:
        self._chunk = self.predict(batch, prefix, delay)

    def poll(self, elapsed: int) -> np.ndarray | None:
        return self._chunk if elapsed >= self.delay else None

    def wait(self) -> np.ndarray:
        return self._chunk


def _execute_horizon(policy: Policy, execute_horizon: int) -> int:
    return execute_horizon or policy.config.n_action_steps


def check_timing(policy: Policy, delay: int, mode: str, execute_horizon: int = 0) -> int:
    """The execute horizon (0: the policy's ``n_action_steps``); ConfigError for a delay or mode
    the chunks cannot serve (the current chunk must last until the next arrives:
    ``execute_horizon + delay <= horizon``, and one request at a time: ``delay <= execute_horizon``)."""
    if mode not in EXECUTION_MODES:
        raise ConfigError(f"execution mode {mode!r}: choose from {', '.join(EXECUTION_MODES)}")
    s, horizon = _execute_horizon(policy, execute_horizon), policy.config.horizon
    if delay < 0:
        raise ConfigError(f"delay={delay} must be >= 0")
    if mode != "sync" and (s + delay > horizon or delay > s):
        raise ConfigError(
            f"delay={delay} with {s} executed actions of {horizon}-action chunks: asynchronous execution needs "
            f"execute_horizon + delay <= horizon and delay <= execute_horizon"
        )
    return s


@torch.no_grad()
def rollout_delayed(
    policy: Policy,
    tasks: Sequence[str],
    seeds: Sequence[int],
    delay: int,
    mode: str,
    execute_horizon: int = 0,
    max_steps: int | None = None,
    guidance: GuidanceSettings | None = None,
) -> dict[str, Any]:
    """One episode per (task, seed), all in lockstep, with chunks that take ``delay`` env steps to
    compute, executed the ``mode`` way. Returns ``success`` (N,) bool, ``steps`` (N,), the executed
    ``actions`` (N, T, A) (valid up to each env's ``steps``), the ``switches`` (steps whose action
    is a new chunk's first executed one) and the measured ``delays``."""
    mw = _metaworld()
    max_steps = mw.MAX_EPISODE_STEPS if max_steps is None else max_steps
    s = check_timing(policy, delay, mode, execute_horizon)
    cfg, device = policy.config, policy_device(policy)
    cameras = policy_cameras(policy)
    envs = mw.MetaWorldBatch(list(tasks), list(seeds), max_steps=max_steps)
    obs = envs.reset()
    n = len(envs)
    guided = {} if guidance is None else {"guidance": guidance}

    def predict(batch: Mapping[str, Any], prefix: Any | None, frozen: int) -> np.ndarray:
        active = np.flatnonzero(~envs.done)
        inputs: dict[str, Any] = {TASK_KEY: [batch[TASK_KEY][i] for i in active]}
        for key, value in batch.items():
            if key != TASK_KEY:
                inputs[key] = torch.as_tensor(value[active], device=device)
        kwargs = {} if prefix is None else {"prefix": torch.as_tensor(prefix[active]), "delay": frozen, **guided}
        chunk = np.zeros((n, cfg.horizon, cfg.action_dim), dtype=np.float32)
        chunk[active] = policy.predict_action_chunk(inputs, **kwargs).float().cpu().numpy()
        return chunk

    executor = ChunkExecutor(
        SimulatedDelay(predict, delay), cfg.horizon, s, mode, DelayEstimate(delay), cfg.n_obs_steps
    )
    executed = np.zeros((n, max_steps, cfg.action_dim), dtype=np.float32)
    t = 0
    while not envs.all_done and t < max_steps:
        frame: dict[str, Any] = {TASK_KEY: envs.instructions}
        if cfg.state_dim > 0:
            frame[STATE_KEY] = obs
        for key, camera in cameras.items():  # every step: the executor keeps the history
            frame[key] = np.stack([envs.envs[i].render(camera, cfg.image_size) for i in range(n)])
        executed[:, t] = executor.step(frame)
        obs, _, _ = envs.step(executed[:, t])
        t += 1
    result = {
        "success": envs.success.copy(),
        "steps": envs.steps.copy(),
        "actions": executed[:, :t],
        "switches": list(executor.stats.switches),
        "delays": list(executor.stats.delays),
    }
    envs.close()
    return result


def action_jumps(actions: np.ndarray, steps: int, switches: Sequence[int]) -> tuple[list[float], list[float]]:
    """The mean over action dimensions of ``|a_t - a_{t-1}|`` of one episode's executed
    ``actions`` (T, A) (its first ``steps``), at the ``switches`` and at the other steps."""
    jumps = np.abs(np.diff(actions[:steps], axis=0)).mean(-1)  # (steps - 1,): step t at t - 1
    at = {t for t in switches if 1 <= t < steps}
    switch = [float(jumps[t - 1]) for t in sorted(at)]
    inside = [float(j) for t, j in enumerate(jumps, start=1) if t not in at]
    return switch, inside


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if len(values) else None


def evaluate_delayed(
    policy: Policy,
    tasks: str | Sequence[str],
    delay: int,
    mode: str,
    episodes_per_task: int = 50,
    seed: int = 0,
    batch_size: int = 100,
    execute_horizon: int = 0,
    max_steps: int | None = None,
    guidance: GuidanceSettings | None = None,
    progress: bool = True,
) -> EvalResult:
    """Success and action discontinuity per task on held-out seeds (as
    :func:`~mode_policy.evaluation.metaworld.evaluate_metaworld`: same seeds, same batching, the
    same torch seed per batch) under an inference delay of ``delay`` env steps, executed the
    ``mode`` way ('sync', 'naive' or 'rtc'). Each task's ``extra`` holds ``mean_steps`` (env
    steps), ``mean_ticks`` (control ticks: env steps plus the ticks the robot stood still waiting
    for a chunk, ``delay`` per wait: the first chunk's, and every chunk's under sync),
    ``switch_jump`` and ``inside_jump`` (means over all its episodes' steps), ``switches`` and
    ``mean_delay`` (measured, in steps); the result's ``metrics`` the jumps and lengths over all
    tasks."""
    start = time.perf_counter()
    if episodes_per_task < 1:
        raise ConfigError(f"episodes_per_task must be >= 1, got {episodes_per_task}")
    mw = _metaworld()
    task_list = mw.resolve_tasks(tasks)
    max_steps = mw.MAX_EPISODE_STEPS if max_steps is None else max_steps
    _check_policy_dims(policy, mw.OBS_DIM, mw.ACTION_DIM)
    s = check_timing(policy, delay, mode, execute_horizon)
    if mode == "rtc":
        guidance = guidance or GuidanceSettings()
    jobs = [(t, mw.eval_seed(t, i, seed)) for t in task_list for i in range(episodes_per_task)]
    per: dict[str, dict[str, Any]] = {
        t: {"ok": 0, "steps": [], "ticks": [], "switch": [], "inside": [], "delays": [], "wall": 0.0} for t in task_list
    }
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), desc=f"{mode}, delay {delay}", unit="episode", dynamic_ncols=True)
    with eval_mode(policy):
        for lo in range(0, len(jobs), batch_size):
            batch_start = time.perf_counter()
            part = jobs[lo : lo + batch_size]
            torch.manual_seed(seed * 1_000_003 + lo)
            out = rollout_delayed(
                policy, [p[0] for p in part], [p[1] for p in part], delay, mode, s, max_steps, guidance
            )
            share = (time.perf_counter() - batch_start) / len(part)
            for i, (task, _) in enumerate(part):
                n = int(out["steps"][i])
                switch, inside = action_jumps(out["actions"][i], n, out["switches"])
                acc = per[task]
                acc["ok"] += int(out["success"][i])
                acc["steps"].append(n)
                waits = 1 + (len(switch) if mode == "sync" else 0)  # the first chunk, and sync's every chunk
                acc["ticks"].append(n + delay * waits)
                acc["switch"] += switch
                acc["inside"] += inside
                acc["delays"] += out["delays"][: len(switch)]  # the switches this episode saw
                acc["wall"] += share
            if bar is not None:
                bar.update(len(part))
    if bar is not None:
        bar.close()
    per_task = {}
    for task, acc in per.items():
        extra = {
            "mean_steps": float(np.mean(acc["steps"])),
            "mean_ticks": float(np.mean(acc["ticks"])),
            "switch_jump": _mean(acc["switch"]),
            "inside_jump": _mean(acc["inside"]),
            "switches": len(acc["switch"]),
            "mean_delay": _mean(acc["delays"]),
        }
        per_task[task] = TaskResult(acc["ok"], episodes_per_task, acc["wall"], mw.INSTRUCTIONS[task], extra)
    every = {k: [v for acc in per.values() for v in acc[k]] for k in ("switch", "inside")}
    metrics = {
        "switch_jump": _mean(every["switch"]),
        "inside_jump": _mean(every["inside"]),
        "mean_steps": float(np.mean([n for acc in per.values() for n in acc["steps"]])),
        "mean_ticks": float(np.mean([n for acc in per.values() for n in acc["ticks"]])),
    }
    settings = {
        "episodes_per_task": episodes_per_task,
        "batch_size": batch_size,
        "max_steps": max_steps,
        "n_action_steps": s,
        "horizon": policy.config.horizon,
        "num_inference_steps": getattr(policy.config, "num_inference_steps", None),
        "delay": delay,
        "mode": mode,
        "guidance": None if guidance is None or mode != "rtc" else dataclasses.asdict(guidance),
    }
    return EvalResult("metaworld", per_task, time.perf_counter() - start, seed, settings=settings, metrics=metrics)


# ------------------------------------------------------------------ the grid
def cell_name(delay: int, mode: str, guidance: GuidanceSettings | None = None) -> str:
    """``d<delay>_<mode>``, and ``_pigdm`` for RTC with PiGDM guidance (so both fit one folder)."""
    pigdm = mode == "rtc" and guidance is not None and guidance.method == "pigdm"
    return f"d{delay}_{mode}{'_pigdm' if pigdm else ''}"


def run_realtime_grid(
    policy: Policy,
    out: str | Path,
    tasks: str | Sequence[str] = "mt10",
    delays: Sequence[int] = (0, 2, 4),
    modes: Sequence[str] = EXECUTION_MODES,
    episodes_per_task: int = 50,
    seed: int = 0,
    batch_size: int = 100,
    execute_horizon: int = 0,
    max_steps: int | None = None,
    guidance: GuidanceSettings | None = None,
    policy_path: str = "",
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, EvalResult]:
    """Every (delay, mode) cell, each saved to ``out/cells/d<delay>_<mode>.json`` as soon as it
    finishes, and ``out/summary.md`` (the table, rewritten after each cell). A cell whose file
    exists is read back, not run again (a killed grid resumes); ConfigError when it was run with
    other settings."""
    out = Path(out)
    for delay in delays:
        for mode in modes:
            check_timing(policy, delay, mode, execute_horizon)  # every cell is possible, before any runs
    results: dict[str, EvalResult] = {}
    for delay in delays:
        for mode in modes:
            name = cell_name(delay, mode, guidance)
            path = out / "cells" / f"{name}.json"
            if path.exists():
                result = EvalResult.load(path)
                wanted = _cell_settings(
                    policy, tasks, mode, episodes_per_task, seed, execute_horizon, max_steps, guidance
                )
                ran = {**{k: result.settings.get(k) for k in wanted}, "seed": result.seed}
                if ran != wanted:
                    raise ConfigError(f"{path} was run with {ran}, this grid asks for {wanted}: use another --out")
                log(f"{name}: done before ({result.overall.success_rate:.3f} success)")
            else:
                result = evaluate_delayed(
                    policy,
                    tasks,
                    delay,
                    mode,
                    episodes_per_task,
                    seed,
                    batch_size,
                    execute_horizon,
                    max_steps,
                    guidance,
                    progress,
                )
                result.policy = policy_path
                result.settings["tasks"] = _jsonable(tasks)
                result.save(path)
                log(
                    f"{name}: success {result.overall.success_rate:.3f}, switch jump "
                    f"{_fmt(result.metrics['switch_jump'])}, inside {_fmt(result.metrics['inside_jump'])} -> {path}"
                )
            results[name] = result
            write_summary(out)
    return results


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value if isinstance(value, str) else list(value)))


def _cell_settings(
    policy: Policy,
    tasks: str | Sequence[str],
    mode: str,
    episodes_per_task: int,
    seed: int,
    execute_horizon: int,
    max_steps: int | None,
    guidance: GuidanceSettings | None,
) -> dict[str, Any]:
    """The settings a finished cell must have been run with to be reused (as its file holds them)."""
    if mode == "rtc":
        guidance = guidance or GuidanceSettings()
    return {
        "tasks": _jsonable(tasks),
        "episodes_per_task": episodes_per_task,
        "seed": seed,
        "n_action_steps": _execute_horizon(policy, execute_horizon),
        "max_steps": _metaworld().MAX_EPISODE_STEPS if max_steps is None else max_steps,
        "num_inference_steps": getattr(policy.config, "num_inference_steps", None),
        "guidance": dataclasses.asdict(guidance) if mode == "rtc" else None,
    }


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _row_label(result: EvalResult) -> str:
    guidance = result.settings.get("guidance") or {}
    return result.settings["mode"] + (f" ({guidance['method']})" if guidance.get("method") == "pigdm" else "")


def write_summary(out: str | Path) -> Path:
    """``out/summary.md`` from every cell in ``out/cells/``: success and discontinuity per cell,
    then success per task and cell (by delay, then mode)."""
    from ..fileio import atomic_write_text

    out = Path(out)
    order = {mode: i for i, mode in enumerate(EXECUTION_MODES)}
    cells = [EvalResult.load(path) for path in sorted((out / "cells").glob("*.json"))]
    cells.sort(key=lambda r: (r.settings["delay"], order.get(r.settings["mode"], 9), _row_label(r)))
    lines = [
        "# Meta-World under inference delay",
        "",
        "| delay | mode | success | 95% CI | switch jump | inside jump | switch / inside | mean steps | mean ticks "
        "(waits included) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in cells:
        o = r.overall
        sj, ij = r.metrics.get("switch_jump"), r.metrics.get("inside_jump")
        ratio = sj / ij if sj is not None and ij else None
        lines.append(
            f"| {r.settings['delay']} | {_row_label(r)} | {o.success_rate:.3f} | "
            f"[{o.ci95[0]:.2f}, {o.ci95[1]:.2f}] | {_fmt(sj, 4)} | {_fmt(ij, 4)} | {_fmt(ratio, 2)} | "
            f"{_fmt(r.metrics.get('mean_steps'), 1)} | {_fmt(r.metrics.get('mean_ticks'), 1)} |"
        )
    tasks = list(cells[0].per_task) if cells else []
    names = [f"d{r.settings['delay']} {_row_label(r)}" for r in cells]
    lines += ["", "Success per task:", "", "| task | " + " | ".join(names) + " |"]
    lines.append("|---|" + "---|" * len(cells))
    for task in tasks:
        row = [f"{r.per_task[task].success_rate:.2f}" if task in r.per_task else "-" for r in cells]
        lines.append(f"| {task} | " + " | ".join(row) + " |")
    return atomic_write_text(out / "summary.md", "\n".join(lines) + "\n")


# ------------------------------------------------------------------ the plot
def plot_switches(
    policy: Policy,
    task: str,
    delay: int,
    path: str | Path,
    episode: int = 0,
    seed: int = 0,
    steps: int = 60,
    execute_horizon: int = 0,
    guidance: GuidanceSettings | None = None,
    modes: Sequence[str] = EXECUTION_MODES,
) -> Path:
    """Draw one held-out episode's executed actions (the first ``steps`` steps, one panel per
    action dimension) under each mode, with the steps where a new chunk takes over marked, and
    save it as a PNG at ``path``. The same episode seed and noise seed for every mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mw = _metaworld()
    env_seed = mw.eval_seed(mw.resolve_tasks([task])[0], episode, seed)
    runs = {}
    with eval_mode(policy):
        for mode in modes:
            torch.manual_seed(seed * 1_000_003)
            runs[mode] = rollout_delayed(policy, [task], [env_seed], delay, mode, execute_horizon, steps, guidance)
    dims = policy.config.action_dim
    fig, axes = plt.subplots(dims, 1, figsize=(9, 1.9 * dims + 0.6), sharex=True, squeeze=False)
    colours = {"sync": "tab:blue", "naive": "tab:red", "rtc": "tab:green"}
    for mode, run in runs.items():
        n = int(run["steps"][0])
        actions = run["actions"][0, :n]
        switches = [t for t in run["switches"] if t < n]
        for k, ax in enumerate(axes[:, 0]):
            ax.plot(range(n), actions[:, k], color=colours.get(mode), lw=1.2, label=mode)
            ax.plot(switches, actions[switches, k], "o", color=colours.get(mode), ms=3.5)
    for k, ax in enumerate(axes[:, 0]):
        ax.set_ylabel(f"a[{k}]")
        ax.grid(alpha=0.3)
    axes[0, 0].legend(loc="upper right", ncol=len(runs), fontsize=8)
    axes[-1, 0].set_xlabel("env step (dots: a new chunk's first executed action; sync stands still before each)")
    fig.suptitle(f"{task}, episode {episode}: inference delay {delay} steps", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
