"""The ``realtime`` sub-command: Meta-World under a simulated inference delay (synchronous, naive
asynchronous and real-time chunking execution), a grid of delays x modes run resumably."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError
from ..validation import check_range
from .command import Command


@dataclass
class RealtimeOptions:
    """Evaluate a policy on Meta-World with chunks that take --delays env steps to compute, executed
    synchronously (the robot waits), naively asynchronously (the new chunk, planned from a stale
    observation, takes over when it arrives) or with real-time chunking (the new chunk starts with
    the actions executed meanwhile); one result file per (delay, mode) cell in OUT/cells/, a killed
    grid resumes, OUT/summary.md has the table."""

    path: str = ""
    """A run directory or a saved model directory (first positional argument)."""
    out: str = ""
    """Folder of the results: cells/d<delay>_<mode>.json, summary.md and trajectory.png."""
    tasks: str = "mt10"
    """Meta-World tasks: mt10, mt50 or comma-separated task names."""
    delays: str = "0,2,4"
    """Comma-separated inference delays, in env steps."""
    modes: str = "sync,naive,rtc"
    """Comma-separated execution modes: sync, naive, rtc."""
    episodes: int = 50
    """Held-out episodes per task (the seeds of `mode-policy eval`)."""
    seed: int = 0
    """Evaluation seed."""
    batch_size: int = 100
    """Environments rolled out in parallel."""
    steps: int = 0
    """Sampling steps (0: the policy's own)."""
    action_steps: int = 0
    """Actions of a chunk executed (counted from its observation) before the next is requested
    (0: the policy's n_action_steps); with a delay d it must leave d actions: action_steps + d <= horizon."""
    max_steps: int = 0
    """Steps per episode (0: Meta-World's 500)."""
    guidance: str = "replace"
    """rtc: 'replace' (the denoised estimate blended toward the prefix) or 'pigdm' (RTC's guidance,
    a vector-Jacobian product per network evaluation)."""
    schedule: str = "exp"
    """rtc: weights of the overlap after the frozen actions: exp, linear, ones or zeros."""
    max_weight: float = 5.0
    """rtc with pigdm: the clip of the guidance weight (beta)."""
    plot: bool = True
    """Also draw one episode's actions under the three modes at the largest delay (OUT/trajectory.png)."""
    plot_task: str = ""
    """Task of that episode (default: the first task)."""
    device: str = "cpu"
    """Device of the policy."""
    dataset_name: str = ""
    """A policy trained on a mixture: the dataset whose normalisation and action width to use."""
    threads: int = 0
    """Torch CPU threads (0: the cores other processes leave free, or OMP_NUM_THREADS when set)."""
    progress: bool = True
    """Show a progress bar per cell."""

    def __post_init__(self) -> None:
        for name in ("episodes", "batch_size"):
            check_range(self, name, 1)
        for name in ("seed", "steps", "action_steps", "max_steps", "threads"):
            check_range(self, name, 0)


def _ints(text: str, flag: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--{flag}={text!r}: expected comma-separated integers") from None
    if not values:
        raise ConfigError(f"--{flag} names nothing")
    return values


def run_realtime(opts: RealtimeOptions) -> int:
    from pathlib import Path

    from ..model.guidance import GuidanceSettings
    from ..serving.realtime import EXECUTION_MODES

    if not opts.path or not opts.out:
        raise ConfigError("realtime needs a run or model directory and --out: `mode-policy realtime RUN --out DIR`")
    delays = _ints(opts.delays, "delays")
    modes = [m.strip() for m in opts.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in EXECUTION_MODES]
    if unknown or not modes:
        raise ConfigError(f"--modes={opts.modes!r}: choose from {', '.join(EXECUTION_MODES)}")
    guidance = GuidanceSettings(opts.guidance, opts.schedule, opts.max_weight)  # ConfigError naming a bad value

    from ..dataset_view import for_dataset
    from ..evaluation.realtime import plot_switches, run_realtime_grid
    from ..evaluation.sampling import with_sampling_settings
    from ..fileio import Outputs
    from ..policy import MoDEPolicy
    from ..threads import apply_threads
    from ..training.run_dir import RunDir
    from ..training.setup import resolve_device

    device = resolve_device(opts.device)
    if device.type == "cpu":
        apply_threads(opts.threads)
    model_dir = RunDir.model_dir(opts.path)
    Outputs(inputs=RunDir.model_files(model_dir)).folder(  # before loading: nothing written over an input
        opts.out,
        what="the real-time results",
        names=("cells", "summary.md", "trajectory.png"),
        own=lambda folder: (folder / "cells").is_dir(),  # an earlier grid: resumed, not replaced
        default=True,
    )
    policy = for_dataset(MoDEPolicy.from_pretrained(model_dir, map_location=device), opts.dataset_name)
    policy = with_sampling_settings(policy, opts.action_steps, num_inference_steps=opts.steps or None)[0]
    out = Path(opts.out)
    max_steps = opts.max_steps or None
    tasks = opts.tasks
    run_realtime_grid(
        policy,
        out,
        tasks,
        delays,
        modes,
        opts.episodes,
        opts.seed,
        opts.batch_size,
        opts.action_steps,
        max_steps,
        guidance,
        policy_path=str(model_dir),
        progress=opts.progress,
    )
    if opts.plot:
        from ..envs.metaworld import resolve_tasks

        task = opts.plot_task or resolve_tasks(tasks)[0]
        path = plot_switches(
            policy,
            task,
            max(delays),
            out / "trajectory.png",
            seed=opts.seed,
            steps=min(max_steps or 80, 80),
            execute_horizon=opts.action_steps,
            guidance=guidance,
            modes=[m for m in EXECUTION_MODES if m in modes],
        )
        print(f"plot: {path}")
    print(f"summary: {out / 'summary.md'}")
    return 0


COMMANDS = {
    "realtime": Command(
        RealtimeOptions,
        run_realtime,
        "Meta-World under inference delay: sync, naive async and RTC execution (resumable grid)",
        positional=("path",),
    ),
}
