"""Sub-commands of the training pipeline: train, eval, and quickstart (demos -> train -> eval -> report)."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import TrainConfig
from ..errors import ConfigError
from ..fileio import check_writable, moved_aside
from ..run_dir import RunDir
from ..validation import check_range
from .main import Command


# --------------------------------------------------------------------- train
@dataclass
class TrainOptions(TrainConfig):
    """Train a MoDE policy on a LeRobot-format dataset (every TrainConfig and policy field is a flag)."""

    resume: bool = False
    """Continue the run in ``output_dir`` from its last checkpoint (its saved config wins,
    except ``dataset`` and ``steps``)."""


def _dataset_metaworld_tasks(dataset: str) -> list[str]:
    """Meta-World env names recorded in a dataset made by ``mode-policy demos`` (empty otherwise)."""
    from ..data.reader import DatasetReader

    names = [extra.get("env_name") for extra in DatasetReader(dataset).episode_extra]
    return sorted({n for n in names if n}) if all(names) else []


def _periodic_metaworld_eval(tasks: list[str], episodes: int, seed: int):
    from ..evaluation.metaworld import evaluate_metaworld

    def run(policy, step: int) -> dict[str, Any]:
        result = evaluate_metaworld(policy, tasks, episodes, seed=seed, progress=False)
        return {"success_rate": result.overall.success_rate,
                "per_task": {t: r.success_rate for t, r in result.per_task.items()}}

    return run


def _saved_with_given_flags(cfg: TrainConfig) -> TrainConfig:
    """For ``--resume``: the run's saved config with only the flags the user gave (those that differ
    from the defaults) applied; :func:`mode_policy.train.resumed_config` then refuses the ones a
    resumed run may not change."""
    run = RunDir(cfg.output_dir)
    saved = TrainConfig.from_run_dict(run.read_config(), str(run.config))
    defaults = TrainConfig(preset=cfg.preset)
    given = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(TrainConfig)
             if f.name not in ("policy", "preset") and getattr(cfg, f.name) != getattr(defaults, f.name)}
    if cfg.preset != TrainConfig.preset:
        given["preset"] = cfg.preset
    policy = dataclasses.replace(saved.policy, **cfg.policy_overrides())
    return dataclasses.replace(saved, **given, policy=policy)


def run_train(opts: TrainOptions) -> int:
    from ..train import train

    if not opts.dataset:
        raise ConfigError("train needs --dataset=PATH (a LeRobot-format dataset folder)")
    cfg = TrainConfig(**{f.name: getattr(opts, f.name) for f in dataclasses.fields(TrainConfig)})
    if opts.resume and RunDir(cfg.output_dir).config.is_file():
        cfg = _saved_with_given_flags(cfg)
    eval_fn = None
    if cfg.eval_every:
        tasks = _dataset_metaworld_tasks(cfg.dataset)
        if not tasks:
            raise ConfigError("--eval_every needs a Meta-World dataset made by `mode-policy demos`")
        eval_fn = _periodic_metaworld_eval(tasks, cfg.eval_episodes, cfg.seed)
    run_dir = train(cfg, resume=opts.resume, eval_fn=eval_fn)
    print(f"training finished: {RunDir(run_dir).model}")
    return 0


# ---------------------------------------------------------------------- eval
@dataclass
class EvalOptions:
    """Evaluate a trained policy in simulation, on episodes it never saw."""

    path: str = ""
    """A run directory or a saved model directory (first positional argument)."""
    env: str = "metaworld"
    """'metaworld', 'libero' or 'calvin'."""
    tasks: str | None = None
    """Meta-World: mt10, mt50 or comma-separated task names (default: the training data's tasks)."""
    suite: str = "libero_10"
    """LIBERO suite: libero_10, libero_90, libero_goal, libero_spatial or libero_object."""
    calvin_dataset: str | None = None
    """CALVIN: a dataset root or its validation/ folder, whose config builds the env; default:
    calvin_env's own configs (see --calvin_scene)."""
    calvin_scene: str = "D"
    """CALVIN: calvin_env scene A-D, used without --calvin_dataset (D: the evaluation scene of ABC->D)."""
    calvin_renderer: str = "egl"
    """CALVIN: camera renderer, 'egl' (headless OpenGL) or 'tiny' (pybullet's software renderer)."""
    episodes: int = 50
    """Meta-World: held-out episodes per task; LIBERO: rollouts per task; CALVIN: instruction chains."""
    seed: int = 0
    """Evaluation seed (Meta-World seeds are disjoint from the demonstration seeds)."""
    batch_size: int = 100
    """Meta-World environments rolled out in parallel."""
    steps: int = 0
    """Sampling steps (0: the policy's own)."""
    videos: int = 0
    """Record this many episodes per task as mp4 (into a videos/ folder beside ``out``)."""
    device: str = "cpu"
    """Device of the policy."""
    workers: int = 1
    """CALVIN: processes playing chains in parallel, each with its own simulator."""
    threads: int = 0
    """Torch CPU threads (0: the cores other processes leave free, or OMP_NUM_THREADS when set)."""
    resume: bool = True
    """CALVIN: continue from the chains already in the results log beside ``out`` (false: start over)."""
    out: str | None = None
    """Result file (default: RUN_DIR/eval_info.json for a run directory, else ./eval_info.json)."""

    def __post_init__(self) -> None:
        for name in ("episodes", "batch_size", "workers"):
            check_range(self, name, 1)
        for name in ("steps", "videos", "seed", "threads"):
            check_range(self, name, 0)


LIBERO_SUITES = ("libero_10", "libero_90", "libero_goal", "libero_spatial", "libero_object")


def _calvin_log(opts: EvalOptions, model_dir: Path, out: Path):
    """The resumable log of finished chains beside ``out`` (``eval_info.chains/``), for this
    policy's weights and these settings."""
    import hashlib
    import shutil

    from ..evaluation.unit_log import UnitLog

    weights = hashlib.sha256((model_dir / "model.safetensors").read_bytes()).hexdigest()[:16]
    settings = {"env": "calvin", "weights_sha256": weights, "chains": opts.episodes, "seed": opts.seed,
                "scene": opts.calvin_scene, "dataset": opts.calvin_dataset, "steps": opts.steps}
    folder = out.with_name(out.stem + ".chains")
    if not opts.resume and folder.exists():
        shutil.rmtree(folder)
    return UnitLog(folder, settings)


def run_eval(opts: EvalOptions) -> int:
    from ..policy import MoDEPolicy

    if not opts.path:
        raise ConfigError("eval needs a run or model directory: `mode-policy eval RUN_DIR`")
    if opts.env not in ("metaworld", "libero", "calvin"):
        raise ConfigError(f"--env={opts.env!r}: expected metaworld, libero or calvin")
    if opts.env == "libero" and opts.suite not in LIBERO_SUITES:
        raise ConfigError(f"--suite={opts.suite!r}: expected one of {', '.join(LIBERO_SUITES)}")
    model_dir = RunDir.model_dir(opts.path)
    run = RunDir.of_model(model_dir)
    out = Path(opts.out) if opts.out else (run.eval_info if run is not None else Path("eval_info.json"))
    check_writable(out)
    video_dir = out.parent / "videos" if opts.videos else None
    from ..threads import apply_threads
    from ..train import resolve_device

    device = resolve_device(opts.device)
    if device.type == "cpu":
        apply_threads(opts.threads)
    policy = MoDEPolicy.from_pretrained(model_dir, map_location=device)
    if opts.steps:
        policy.config.num_inference_steps = opts.steps
    headline = ""
    if opts.env == "libero":
        from ..evaluation.libero import evaluate_libero

        result = evaluate_libero(policy, opts.suite, n_rollouts_per_task=opts.episodes, seed=opts.seed,
                                 video_dir=video_dir)
    elif opts.env == "calvin":
        from ..evaluation.calvin import evaluate_calvin

        from ..evaluation.calvin import format_chain_success
        from ..evaluation.parallel import evaluate_calvin_in_workers

        log = _calvin_log(opts, model_dir, out)
        kwargs = dict(dataset_path=opts.calvin_dataset, num_sequences=opts.episodes, seed=opts.seed,
                      scene=opts.calvin_scene, renderer=opts.calvin_renderer)
        if opts.workers > 1:
            result = evaluate_calvin_in_workers(policy, model_dir, log, opts.workers, range(opts.episodes),
                                                device=opts.device, **kwargs)
        else:
            result = evaluate_calvin(policy, log=log, **kwargs)
        headline = f"{format_chain_success(result)}   (chains in {log.folder})\n"
    else:
        from ..evaluation.metaworld import evaluate_metaworld

        tasks = opts.tasks
        if tasks is None and run is not None:
            tasks = _dataset_metaworld_tasks(TrainConfig.from_run_dict(run.read_config(), str(run.config)).dataset)
        if not tasks:
            raise ConfigError("say which tasks to evaluate with --tasks (e.g. mt10)")
        result = evaluate_metaworld(policy, tasks, opts.episodes, seed=opts.seed, batch_size=opts.batch_size,
                                    video_dir=video_dir, videos_per_task=opts.videos)
    result.policy = str(model_dir)
    print(headline + result.format_table())  # printed first: a failed write does not lose the results
    result.save(out)
    print(f"wrote {out} ({result.wall_s:.0f} s)")
    return 0


# ---------------------------------------------------------------- quickstart
@dataclass
class QuickstartOptions:
    """The main job: demonstrations -> training -> held-out evaluation -> report, on this machine."""

    out: str = "runs/quickstart"
    """Folder for the dataset (out/data) and the run (out/run)."""
    tasks: str = "mt10"
    """mt10, mt50, or comma-separated Meta-World task names."""
    episodes: int = 50
    """Demonstrations per task."""
    eval_episodes: int = 10
    """Held-out evaluation episodes per task."""
    workers: int = 2
    """Processes generating demonstrations."""
    overwrite: bool = False
    """Replace an existing ``out`` folder."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Training settings (``--train.steps=...``, ``--train.policy.d_model=...``); dataset and
    output_dir are set by the quickstart."""

    def __post_init__(self) -> None:
        for name in ("episodes", "eval_episodes", "workers"):
            check_range(self, name, 1)


QUICKSTART_TRAIN_DEFAULTS = {"steps": 2000, "lr": 5e-4, "batch_size": 256, "checkpoint_every": 500}


def run_quickstart(opts: QuickstartOptions) -> int:
    out = Path(opts.out)
    check_writable(out)
    if opts.train.dataset or opts.train.output_dir != TrainConfig.output_dir:
        raise ConfigError("quickstart sets --train.dataset and --train.output_dir itself (under --out)")
    with moved_aside(out, opts.overwrite):
        return _quickstart(opts, out)


def _quickstart(opts: QuickstartOptions, out: Path) -> int:
    from ..demos import generate_demos
    from ..envs.metaworld import resolve_tasks
    from ..evaluation.metaworld import evaluate_metaworld
    from ..policy import MoDEPolicy
    from ..report import write_report
    from ..train import train

    tasks = resolve_tasks(opts.tasks)
    timings = {}
    start = time.perf_counter()
    print(f"[1/4] {len(tasks)} tasks x {opts.episodes} scripted demonstrations")
    generate_demos(out / "data", tasks, opts.episodes, seed=opts.train.seed, workers=opts.workers)
    timings["demos_s"] = time.perf_counter() - start

    cfg = dataclasses.replace(opts.train, dataset=str(out / "data"), output_dir=str(out / "run"))
    print(f"[2/4] training the {cfg.preset} preset for {cfg.steps} steps")
    t = time.perf_counter()
    run = RunDir(train(cfg))
    timings["train_s"] = time.perf_counter() - t

    print(f"[3/4] evaluating on {opts.eval_episodes} held-out episodes per task")
    t = time.perf_counter()
    result = evaluate_metaworld(MoDEPolicy.from_pretrained(run.model), tasks, opts.eval_episodes, seed=cfg.seed)
    timings["eval_s"] = time.perf_counter() - t
    result.policy = str(run.model)
    result.save(run.eval_info)

    print("[4/4] writing the report")
    report = write_report(run.root)
    timings["total_s"] = time.perf_counter() - start
    print()
    print(result.format_table())
    print()
    print("time: " + ", ".join(f"{k[:-2]} {v / 60:.1f} min" for k, v in timings.items()))
    print(f"report: {report}")
    return 0


COMMANDS = {
    "train": Command(TrainOptions, run_train, "train a MoDE policy on a LeRobot-format dataset",
                     aliases={"out": "output_dir"}),
    "eval": Command(EvalOptions, run_eval, "evaluate a trained policy in simulation", positional=("path",)),
    "quickstart": Command(QuickstartOptions, run_quickstart,
                          "the main job: demos, training, evaluation and report on MT10",
                          defaults={"train": QUICKSTART_TRAIN_DEFAULTS}),
}
