"""Sub-commands that wrap one library function each: info, toy, demos, convert, inspect, report, bench."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from ..fileio import Outputs, replacing
from ..model.config import MoDEConfig, get_preset, preset_overrides
from ..validation import check_range
from .command import Command


@dataclass
class InfoOptions:
    """Parameter counts of a policy configuration."""

    preset: str = "cpu"
    """Policy preset (tiny, cpu, cpu-image, paper, paper-pretrain, paper-official)."""
    policy: MoDEConfig | None = None
    """Policy config; default: the preset's (``--policy.FIELD=value`` changes one field)."""
    json: bool = False
    """Print JSON."""


def run_info(opts: InfoOptions) -> int:
    import torch

    from ..policy import MoDEPolicy

    cfg = opts.policy or get_preset(opts.preset)
    with torch.device("meta"):  # count parameters without allocating them
        policy = MoDEPolicy(cfg)
    counts = policy.parameter_counts()
    if opts.json:
        print(json.dumps({"preset": opts.preset, **counts}, indent=2))
    else:
        t = counts["transformer"]
        print(
            f"preset {opts.preset}: {cfg.n_layers} layers, d={cfg.d_model}, {cfg.n_heads} heads, "
            f"routing={cfg.routing}, {cfg.num_experts} experts, top-{cfg.top_k}"
        )
        print(f"  policy       total {counts['total_params']:>14,}  active {counts['active_params']:>14,}")
        print(f"  transformer  total {t['total']:>14,}  active {t['active']:>14,}")
    return 0


@dataclass
class ToyOptions:
    """Train on the bimodal toy task and check that both modes are kept."""

    steps: int = 800
    """Training steps."""
    seed: int = 0
    """Seed of the model and the data."""


def run_toy(opts: ToyOptions) -> int:
    from ..envs.toy import train_toy

    result = train_toy(steps=opts.steps, seed=opts.seed, progress=True)
    print(f"trained {result.steps} steps in {result.seconds:.1f} s (final loss {result.final_loss:.3f})")
    for g, (plus, minus) in enumerate(result.mode_fractions):
        print(f"  goal {g}: {plus:6.1%} of samples at mode +m, {minus:6.1%} at mode -m")
    print(f"  in between the modes: {result.between_fraction:.1%}")
    print("PASS: both modes kept, none averaged" if result.passed() else "FAIL: modes not separated")
    return 0 if result.passed() else 1


@dataclass
class DemosOptions:
    """Generate scripted Meta-World, LIBERO or CALVIN demonstrations as a LeRobot v3.0 dataset."""

    env: str = "metaworld"
    """metaworld, libero (scripted LIBERO experts in the real simulator; resumable) or calvin
    (chains of scene D's subtasks played by the scripted CALVIN expert)."""
    suite: str = "libero_object"
    """LIBERO suite (--env libero): libero_object, libero_spatial, libero_goal, libero_10."""
    libero_tasks: str = ""
    """LIBERO task indices, comma-separated (--env libero; default: every task of the suite)."""
    fast_render: bool = True
    """LIBERO: render with the fast settings the evaluation uses by default (false: LIBERO's own)."""
    max_attempts: int = 0
    """LIBERO: expert attempts per task before giving up on it (0: 2 x --episodes + 10)."""
    tasks: str = "mt10"
    """mt10, mt50, or comma-separated Meta-World task names."""
    episodes: int = 50
    """Successful expert episodes per task."""
    out: str = "data/mt10"
    """Dataset folder to write."""
    seed: int = 0
    """First demonstration seed (evaluation seeds never overlap these)."""
    workers: int = 2
    """Processes generating episodes in parallel."""
    overwrite: bool = False
    """Replace an existing dataset at ``out``."""
    cameras: str = ""
    """Comma-separated Meta-World cameras to record as videos, e.g. corner,gripperPOV
    (corner, corner2, corner3, corner4, topview, behindGripper, gripperPOV)."""
    image_size: int = 64
    """Side of the square Meta-World camera images in pixels."""
    libero_image_size: int = 128
    """Side of the LIBERO camera images in pixels (LIBERO's datasets use 128)."""
    calvin_tasks: str = "scripted"
    """CALVIN subtasks (--env calvin): 'scripted' (every one the expert does) or comma-separated
    names; --episodes successful windows of each are recorded."""
    calvin_split: str = ""
    """Where --env calvin writes the recording in CALVIN's own layout (<dir>/training) before
    converting it (default: .<out name>.calvin beside --out; kept)."""
    calvin_scene_in_state: bool = True
    """CALVIN: the dataset's state is robot_obs + scene_obs (39 values, for a state policy);
    false: robot_obs only (15)."""

    def __post_init__(self) -> None:
        for name in ("episodes", "workers", "image_size", "libero_image_size"):
            check_range(self, name, 1)
        check_range(self, "seed", 0)
        check_range(self, "max_attempts", 0)
        if self.max_attempts and self.max_attempts < self.episodes:
            raise ConfigError(f"demos: --max_attempts {self.max_attempts} is below --episodes {self.episodes}")
        if self.env not in ("metaworld", "libero", "calvin"):
            raise ConfigError(f"demos: --env {self.env!r}: expected 'metaworld', 'libero' or 'calvin'")


def run_demos(opts: DemosOptions) -> int:
    if opts.env == "libero":
        return _run_libero_demos(opts)
    if opts.env == "calvin":
        return _run_calvin_demos(opts)
    from ..envs.metaworld import resolve_tasks
    from ..envs.metaworld_demos import generate_demos

    Outputs(opts.overwrite).folder(opts.out, what="the dataset", whole=True)
    tasks = resolve_tasks(opts.tasks)
    cameras = [c.strip() for c in opts.cameras.split(",") if c.strip()]
    with replacing(opts.out, opts.overwrite) as target:
        generate_demos(
            target,
            tasks,
            opts.episodes,
            seed=opts.seed,
            workers=opts.workers,
            overwrite=True,
            progress=True,
            cameras=cameras,
            image_size=opts.image_size,
        )
    out = opts.out
    images = f" with {opts.image_size} px images from {', '.join(cameras)}" if cameras else ""
    print(f"wrote {len(tasks)} tasks x {opts.episodes} successful expert episodes{images} to {out}")
    return 0


def _run_libero_demos(opts: DemosOptions) -> int:
    """``demos --env libero``: resumable; a killed run continues when started again."""
    from ..envs.libero_demos import generate_libero_demos, work_folder

    Outputs(opts.overwrite).folder(opts.out, what="the dataset", whole=True)
    try:
        task_ids = [int(t) for t in opts.libero_tasks.split(",") if t.strip()] or None
    except ValueError:
        raise ConfigError(f"demos: --libero_tasks {opts.libero_tasks!r}: expected task indices like 0,1,2") from None
    with replacing(opts.out, opts.overwrite) as target:
        generate_libero_demos(
            target,
            opts.suite,
            opts.episodes,
            tasks=task_ids,
            seed=opts.seed,
            workers=opts.workers,
            image_size=opts.libero_image_size,
            fast_render=opts.fast_render,
            max_attempts_per_task=opts.max_attempts or None,
            work_dir=work_folder(opts.out),
            overwrite=True,  # the fresh folder `replacing` made
        )
    print(f"wrote {opts.suite}: {opts.episodes} successful scripted episodes per task to {opts.out}")
    return 0


def _run_calvin_demos(opts: DemosOptions) -> int:
    """``demos --env calvin``: record chains in CALVIN's layout, then convert them to ``--out``."""
    from ..constants import IMAGES_PREFIX
    from ..data.convert_calvin import convert_calvin
    from ..envs.calvin import CAMERAS
    from ..envs.calvin_record import record_scripted_demos
    from ..envs.calvin_scripted import SCRIPTED_TASKS

    Outputs(opts.overwrite).folder(opts.out, what="the dataset", whole=True)
    split = Path(opts.calvin_split) if opts.calvin_split else Path(opts.out).with_name(f".{Path(opts.out).name}.calvin")
    tasks = (
        list(SCRIPTED_TASKS)
        if opts.calvin_tasks.strip() == "scripted"
        else [t.strip() for t in opts.calvin_tasks.split(",") if t.strip()]
    )
    cameras = [c.strip() for c in opts.cameras.split(",") if c.strip()]
    image_keys = [f"{IMAGES_PREFIX}{c}" for c in cameras]
    unknown = [c for c, k in zip(cameras, image_keys) if k not in CAMERAS]
    if unknown:
        names = ", ".join(k.removeprefix(IMAGES_PREFIX) for k in CAMERAS)
        raise ConfigError(f"demos --env calvin: unknown camera(s) {unknown} (CALVIN's: {names})")
    summary = _recorded_calvin_split(split, opts.episodes, tasks, opts.seed, cameras, opts.overwrite)
    if summary is None:
        summary = record_scripted_demos(split, opts.episodes, tasks, opts.seed, image_keys=image_keys, overwrite=True)
    if summary["short"]:
        print(f"fewer than {opts.episodes} successful windows for: {', '.join(summary['short'])}")
    with replacing(opts.out, opts.overwrite) as target:
        convert_calvin(split / "training", target, overwrite=True, scene_in_state=opts.calvin_scene_in_state)
    print(
        f"wrote {summary['windows']} CALVIN subtask windows ({summary['frames']} frames, {summary['chains']} chains) "
        f"to {opts.out} (CALVIN layout: {split})"
    )
    return 0


def _recorded_calvin_split(
    split: Path, episodes: int, tasks: list[str], seed: int, cameras: list[str], overwrite: bool
) -> dict | None:
    """The summary of a finished recording in ``split`` made with these settings (reused: only the
    conversion is redone), None when there is none to reuse; ConfigError for a folder that is
    something else, unless ``overwrite``."""
    if not split.exists() or overwrite:
        return None
    try:
        summary = json.loads((split / "training" / "scripted_demos.json").read_text())
    except (OSError, ValueError):
        summary = None
    wanted = {"seed": seed, "episodes_per_task": episodes, "tasks": tasks, "cameras": cameras}
    if summary is None or any(summary.get(k) != v for k, v in wanted.items()):
        raise ConfigError(
            f"demos --env calvin: {split} holds another recording (or none finished); "
            "pass --overwrite to record again, or --calvin_split for another folder"
        )
    print(f"reusing the CALVIN recording in {split} (same seed, episodes, subtasks and cameras)")
    return summary


@dataclass
class ConvertOptions:
    """Convert LIBERO HDF5 or CALVIN npz data to a LeRobot v3.0 dataset, or an official MoDE
    checkpoint (full, or denoiser-only) to a model folder. Usage: mode-policy convert FORMAT SOURCE
    --out DIR, e.g. mode-policy convert official MoDE_Pretrained --out models/mode_pretrained."""

    format: str = ""
    """'libero', 'calvin' or 'official' (first positional argument)."""
    source: str = ""
    """LIBERO: an .hdf5 file or a folder of them; CALVIN: a split folder; official: a checkpoint
    (model_cleaned.safetensors or a folder holding it; .pt/.ckpt with --allow-pickle) (second positional argument)."""
    out: str = ""
    """Dataset folder (official: model folder) to write."""
    image_size: int | None = None
    """LIBERO: resize images to this side (default: keep their size)."""
    overwrite: bool = False
    """Replace an existing dataset at ``out``."""
    scene_in_state: bool = False
    """CALVIN: observation.state = robot_obs + scene_obs (39 values) instead of robot_obs (15)."""
    allow_pickle: bool = False
    """official: read a pickle-based checkpoint (.pt, .ckpt). Unpickling runs code the file contains:
    only for files you trust (the released model_cleaned.safetensors needs no pickle)."""
    top_k: int = 2
    """official: experts per token (a checkpoint does not store it; the official configs use 2)."""
    cameras: str = ""
    """official: names of the cameras in the official order (static, then gripper), comma-separated,
    e.g. image,wrist_image to match a dataset's observation.images.* keys (default: static,gripper)."""
    language: str = "none"
    """official: goal encoder written into the config: 'none' (goals given as vectors, e.g. the
    official 512-d CLIP embeddings; loads offline) or 'clip' (text goals through the official frozen
    CLIP text model, needed on the machine only when text goals are used)."""
    language_path: str = ""
    """official: the CLIP model for 'clip': a local folder or a Hub name (default: the official ViT-B/32)."""
    image_features: bool = False
    """official: the model takes each camera's pooled image features (B, F) instead of images, and the
    checkpoint's camera encoders are left out. Automatic for a denoiser-only checkpoint (no camera
    encoders), whose feature width F is read from it."""


def run_convert(opts: ConvertOptions) -> int:
    if opts.format not in ("libero", "calvin", "official"):
        raise ConfigError(f"convert: format {opts.format!r}: expected 'libero', 'calvin' or 'official'")
    if not opts.source or not opts.out:
        raise ConfigError("convert needs a source and --out, e.g. `mode-policy convert libero data.hdf5 --out ds`")
    outputs = Outputs(opts.overwrite, inputs=[opts.source])
    outputs.folder(opts.out, what="the model folder" if opts.format == "official" else "the dataset", whole=True)
    if opts.format == "official":
        return _convert_official(opts)
    with replacing(opts.out, opts.overwrite) as target:
        if opts.format == "libero":
            from ..data.convert_libero import convert_libero

            convert_libero(opts.source, target, overwrite=True, image_size=opts.image_size)
        else:
            from ..data.convert_calvin import convert_calvin

            convert_calvin(opts.source, target, overwrite=True, scene_in_state=opts.scene_in_state)
    print(f"wrote {opts.out}")
    return 0


def _convert_official(opts: ConvertOptions) -> int:
    from ..encoders.language import DEFAULT_CLIP
    from ..official.convert import convert_official

    if opts.language not in ("clip", "none"):
        raise ConfigError(f"convert official: language={opts.language!r}: expected 'clip' or 'none'")
    if opts.language_path and opts.language != "clip":
        raise ConfigError("convert official: --language_path names the CLIP model of --language=clip")
    goal_encoder = {"type": "clip", "path": opts.language_path or DEFAULT_CLIP} if opts.language == "clip" else None
    cameras = [c.strip() for c in opts.cameras.split(",") if c.strip()] or None
    report = convert_official(
        opts.source,
        opts.out,
        allow_pickle=opts.allow_pickle,
        top_k=opts.top_k,
        camera_names=cameras,
        goal_encoder=goal_encoder,
        overwrite=opts.overwrite,
        image_features=opts.image_features,
    )
    cfg = report.config
    features = f" as {report.image_feature_dim}-d image features" if cfg.image_features else ""
    print(
        f"wrote {opts.out}: {report.mapped} tensors from {report.source} "
        f"({cfg.n_layers} layers, d={cfg.d_model}, {cfg.num_experts} experts top-{cfg.top_k}"
        f"{', shared expert' if cfg.shared_expert else ''}, cameras {', '.join(cfg.image_keys)}{features})"
    )
    reasons: dict[str, int] = {}
    for reason in report.ignored.values():
        reasons[reason] = reasons.get(reason, 0) + 1
    for reason, count in reasons.items():
        print(f"  ignored {count} official tensors: {reason} (all named in conversion.json)")
    print(f"  set by the converter: {', '.join(report.set_by_converter)}")
    for note in report.notes:
        print(f"  {note}")
    return 0


@dataclass
class InspectOptions:
    """Show what a LeRobot-format dataset holds."""

    path: str = ""
    """Dataset folder (first positional argument)."""
    json: bool = False
    """Print JSON."""


def run_inspect(opts: InspectOptions) -> int:
    from ..data.inspect import format_inspection, inspect_dataset

    if not opts.path:
        raise ConfigError("inspect needs a dataset folder: `mode-policy inspect PATH`")
    info = inspect_dataset(opts.path)
    print(json.dumps(info, indent=2) if opts.json else format_inspection(info))
    return 0


@dataclass
class ReportOptions:
    """Write a markdown report with pictures for a run directory."""

    run_dir: str = ""
    """Run directory (first positional argument)."""
    out: str | None = None
    """Output folder (default: RUN_DIR/report)."""
    overwrite: bool = False
    """Replace report.md and its figures in an ``out`` folder that already holds them (the default
    folder, RUN_DIR/report, is the report's own and is always rewritten)."""


def run_report(opts: ReportOptions) -> int:
    from ..report import write_report
    from ..report.figures import EXPERTS_PNG, LOSS_PNG, SUCCESS_PNG
    from ..report.markdown import REPORT_NAME
    from ..training.run_dir import RunDir

    if not opts.run_dir:
        raise ConfigError("report needs a run directory: `mode-policy report RUN_DIR`")
    run = RunDir(opts.run_dir)
    inputs = [run.config, run.metrics, run.summary, run.eval_info, run.stats, run.model, run.checkpoints]
    out = Path(opts.out) if opts.out else run.report
    Outputs(opts.overwrite, inputs).folder(
        out,
        what="the report",
        names=(REPORT_NAME, SUCCESS_PNG, LOSS_PNG, EXPERTS_PNG),
        own=lambda folder: True,  # RUN_DIR/report is the report's own folder
        default=opts.out is None,
    )
    print(f"wrote {write_report(opts.run_dir, out)}")
    return 0


@dataclass
class BenchOptions:
    """Benchmarks: ratios measured side by side in one process."""

    what: str = "latency"
    """Benchmark to run: 'latency' (inference), 'train' (training throughput), 'data' (in-memory vs
    bounded data loading, and the data path feeding a training step) or 'gpu' (the paper preset in
    bf16 on CUDA: latency with and without CUDA graphs and torch.compile, training, data; without
    CUDA a tiny CPU fallback) (first positional argument)."""
    preset: str = "cpu"
    """Policy preset (latency)."""
    policy: MoDEConfig | None = None
    """Policy config; default: the preset's."""
    rounds_b1: int = 40
    """Timed rounds at batch size 1."""
    rounds_b64: int = 10
    """Timed rounds at batch size 64."""
    repeat_b1: int = 3
    """Calls of each variant in a row per batch-1 round: the first is timed *cold* (the other
    variants just ran), the rest *warm* (the chunk's weights in cache, as in a control loop);
    1: every call cold."""
    threads: int = 0
    """Torch threads (0: torch's choice)."""
    profile: bool = True
    """Also profile the operators of one chunk."""
    onnx: bool = True
    """Also time the exported ONNX sampler at batch 1 (needs the onnx extra; skipped without it)."""
    precision: str = "fp32"
    """Latency: 'bf16' also times the cached sampler with ``precision='bf16'`` (bfloat16 weights
    and activations, float32 sampler state) and reports its action error against float32."""
    train_presets: str = "cpu,paper"
    """Train: comma-separated presets, each beside its dense variant with equal active parameters."""
    train_steps: int = 2
    """Train: timed steps per variant (after one warm-up step, which also counts the FLOPs)."""
    batch_size: int = 0
    """Train: batch size (0: per preset, cpu 256, paper 8)."""
    images: bool = False
    """Train: keep the presets' cameras (default: state-only, the transformer's cost)."""
    dataset: str = ""
    """Data: a LeRobot image dataset to load (empty: a synthetic one about 4.5x the budget)."""
    memory_budget_mb: float = 32.0
    """Data: the bounded path's memory budget for decoded frames, in MB."""
    prefetch: int = 2
    """Data, gpu: batches built ahead on a thread, compared with building them inline."""
    step_ms: float = 0.0
    """Data: the training step to feed, in ms, modelled as a wait that leaves the CPU free (0: the
    paper preset's real step on CUDA; none on the CPU)."""
    gpu_preset: str = "paper"
    """Gpu: the preset timed on a CUDA device (without CUDA: a tiny preset on the CPU)."""
    gpu_rounds: int = 20
    """Gpu: timed rounds of every variant and mode."""
    gpu_compile: str = "auto"
    """Gpu: time torch.compile: 'auto' (on CUDA only), 'on' or 'off'."""
    json: bool = False
    """Print JSON."""


def run_bench(opts: BenchOptions) -> int:
    import torch

    from ..bench.latency import bench_latency, format_latency

    check_range(opts, "threads", 0)
    check_range(opts, "batch_size", 0)
    if opts.what not in ("latency", "train", "data", "gpu"):
        raise ConfigError(f"bench: unknown benchmark {opts.what!r} (available: latency, train, data, gpu)")
    check_range(opts, "prefetch", 1)
    check_range(opts, "step_ms", 0)
    if opts.what == "data":
        from ..bench.data import bench_data, bench_feed, format_data, format_feed

        check_range(opts, "memory_budget_mb", 0, low_open=True)
        result = bench_data(
            opts.dataset or None,
            memory_budget_mb=opts.memory_budget_mb,
            batch_size=opts.batch_size or 256,
            threads=opts.threads or 1,
            progress=not opts.json,
        )
        if opts.threads:
            torch.set_num_threads(opts.threads)
        result["feed"] = bench_feed(
            batch_size=opts.batch_size or 64,
            prefetch=opts.prefetch,
            step_ms=opts.step_ms or None,
            progress=not opts.json,
        )
        print(json.dumps(result, indent=2) if opts.json else format_data(result) + "\n\n" + format_feed(result["feed"]))
        return 0
    if opts.threads:
        torch.set_num_threads(opts.threads)
    if opts.what == "gpu":
        from ..bench.gpu import bench_gpu, format_gpu

        check_range(opts, "gpu_rounds", 2)
        result = bench_gpu(
            opts.gpu_preset,
            rounds=opts.gpu_rounds,
            train_batch=opts.batch_size or 64,
            compile=opts.gpu_compile,
            prefetch=opts.prefetch,
            progress=not opts.json,
        )
        print(json.dumps(result, indent=2) if opts.json else format_gpu(result))
        return 0
    if opts.what == "train":
        from ..bench.training import bench_train, format_train

        presets = tuple(p.strip() for p in opts.train_presets.split(",") if p.strip())
        if not presets:
            raise ConfigError("bench train: --train-presets names no preset")
        for preset in presets:
            get_preset(preset)  # ConfigError naming an unknown one, before any work
        sizes = {p: opts.batch_size for p in presets} if opts.batch_size else None
        result = bench_train(presets, sizes, steps=opts.train_steps, images=opts.images, progress=not opts.json)
        print(json.dumps(result, indent=2) if opts.json else format_train(result))
        return 0
    overrides = preset_overrides(opts.preset, opts.policy) if opts.policy else {}
    result = bench_latency(
        opts.preset,
        rounds_b1=opts.rounds_b1,
        rounds_b64=opts.rounds_b64,
        overrides=overrides,
        profile=opts.profile,
        progress=not opts.json,
        onnx=opts.onnx,
        repeat_b1=opts.repeat_b1,
        precision=opts.precision,
    )
    print(json.dumps(result, indent=2) if opts.json else format_latency(result))
    return 0


COMMANDS = {
    "info": Command(InfoOptions, run_info, "parameter counts of a preset"),
    "demos": Command(
        DemosOptions, run_demos, "generate scripted Meta-World, LIBERO or CALVIN demonstrations (LeRobot format)"
    ),
    "convert": Command(
        ConvertOptions,
        run_convert,
        "convert LIBERO/CALVIN data to a LeRobot dataset, or an official MoDE checkpoint to a model",
        positional=("format", "source"),
    ),
    "inspect": Command(InspectOptions, run_inspect, "show what a LeRobot-format dataset holds", positional=("path",)),
    "report": Command(
        ReportOptions, run_report, "markdown report with pictures for a run directory", positional=("run_dir",)
    ),
    "bench": Command(
        BenchOptions,
        run_bench,
        "benchmarks of inference, training, data loading and a GPU (measured side by side)",
        positional=("what",),
    ),
    "toy": Command(ToyOptions, run_toy, "train on the bimodal toy task and check both modes are kept"),
}
