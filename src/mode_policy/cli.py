"""The ``mode-policy`` command line. Each sub-command is a thin wrapper over a
library function; errors a user can fix are printed as one line, not a traceback."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Callable

import torch

from .config import PRESETS, get_preset, parse_overrides

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


class UserError(Exception):
    """An error caused by the user's input; printed without a traceback."""


def command(name: str):
    def register(fn):
        COMMANDS[name] = fn
        return fn

    return register


# ---------------------------------------------------------------------- info
@command("info")
def cmd_info(args: argparse.Namespace) -> int:
    from .policy import MoDEPolicy

    cfg = get_preset(args.preset, **parse_overrides(args.set))
    with torch.device("meta"):  # count parameters without allocating them
        policy = MoDEPolicy(cfg)
    counts = policy.parameter_counts()
    if args.json:
        print(json.dumps({"preset": args.preset, **counts}, indent=2))
    else:
        t = counts["transformer"]
        print(f"preset {args.preset}: {cfg.n_layers} layers, d={cfg.d_model}, {cfg.n_heads} heads, "
              f"routing={cfg.routing}, {cfg.num_experts} experts, top-{cfg.top_k}")
        print(f"  policy       total {counts['total_params']:>14,}  active {counts['active_params']:>14,}")
        print(f"  transformer  total {t['total']:>14,}  active {t['active']:>14,}")
    return 0


# ----------------------------------------------------------------------- toy
@command("toy")
def cmd_toy(args: argparse.Namespace) -> int:
    from .toy import train_toy

    result = train_toy(steps=args.steps, seed=args.seed, progress=True)
    print(f"trained {result.steps} steps in {result.seconds:.1f} s (final loss {result.final_loss:.3f})")
    for g, (plus, minus) in enumerate(result.mode_fractions):
        print(f"  goal {g}: {plus:6.1%} of samples at mode +m, {minus:6.1%} at mode -m")
    print(f"  in between the modes: {result.between_fraction:.1%}")
    print("PASS: both modes kept, none averaged" if result.passed() else "FAIL: modes not separated")
    return 0 if result.passed() else 1


# --------------------------------------------------------------------- demos
@command("demos")
def cmd_demos(args: argparse.Namespace) -> int:
    from .demos import generate_demos
    from .envs.metaworld_env import resolve_tasks

    tasks = resolve_tasks(args.tasks)
    cameras = [c.strip() for c in args.cameras.split(",") if c.strip()]
    out = generate_demos(args.out, tasks, args.episodes, seed=args.seed, workers=args.workers,
                         overwrite=args.overwrite, progress=True, cameras=cameras, image_size=args.image_size)
    images = f" with {args.image_size} px images from {', '.join(cameras)}" if cameras else ""
    print(f"wrote {len(tasks)} tasks x {args.episodes} successful expert episodes{images} to {out}")
    return 0


# --------------------------------------------------------------------- train
def _train_config(args: argparse.Namespace):
    from .train import TrainConfig

    return TrainConfig(
        dataset=args.dataset, output_dir=args.out, preset=args.preset, overrides=args.set,
        language=args.language, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
        warmup_steps=args.warmup_steps, ema_decay=args.ema_decay, log_every=args.log_every,
        checkpoint_every=args.checkpoint_every, eval_every=args.eval_every, seed=args.seed,
        device=args.device,
    )


def _metaworld_eval_fn(tasks: list[str], episodes: int, seed: int):
    from .evaluate import evaluate_metaworld

    def run(policy, step: int) -> dict:
        result = evaluate_metaworld(policy, tasks, episodes, seed=seed, progress=False)
        return {"success_rate": result["overall"]["success_rate"],
                "per_task": {t: r["success_rate"] for t, r in result["per_task"].items()}}

    return run


def _dataset_metaworld_tasks(dataset: str) -> list[str]:
    """Meta-World env names recorded in a dataset we generated (empty otherwise)."""
    from .data.lerobot_format import LeRobotDataset

    names = [extra.get("env_name") for extra in LeRobotDataset(dataset).episode_extra]
    return sorted({n for n in names if n}) if all(names) else []


@command("train")
def cmd_train(args: argparse.Namespace) -> int:
    from .train import train

    cfg = _train_config(args)
    eval_fn = None
    if args.eval_every:
        tasks = _dataset_metaworld_tasks(args.dataset)
        if not tasks:
            raise UserError("--eval-every needs a Meta-World dataset made by `mode-policy demos`")
        eval_fn = _metaworld_eval_fn(tasks, args.eval_episodes, args.seed)
    run_dir = train(cfg, resume=args.resume, eval_fn=eval_fn)
    print(f"training finished: {run_dir}/model")
    return 0


# ---------------------------------------------------------------------- eval
@command("eval")
def cmd_eval(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from .evaluate import evaluate_metaworld, format_success_table, save_eval
    from .policy import MoDEPolicy

    model_dir = Path(args.policy)
    if (model_dir / "model" / "config.json").is_file():  # a run directory was given
        model_dir = model_dir / "model"
    policy = MoDEPolicy.from_pretrained(model_dir, map_location=args.device)
    if args.steps:
        policy.config.num_inference_steps = args.steps
    if args.env in ("libero", "calvin"):
        return _eval_libero_calvin(args, policy, model_dir)
    tasks = args.tasks
    if tasks is None:
        run_cfg = model_dir.parent / "config.json"
        if run_cfg.is_file():
            tasks = _dataset_metaworld_tasks(json.loads(run_cfg.read_text())["train"]["dataset"])
        if not tasks:
            raise UserError("say which tasks to evaluate with --tasks (e.g. mt10)")
    start = time.perf_counter()
    video_dir = Path(args.out).parent / "videos" if args.videos else None
    result = evaluate_metaworld(policy, tasks, args.episodes, seed=args.seed, batch_size=args.batch_size,
                                video_dir=video_dir, videos_per_task=args.videos)
    result["wall_s"] = time.perf_counter() - start
    result["policy"] = str(model_dir)
    save_eval(result, args.out)
    print(format_success_table(result))
    print(f"wrote {args.out} ({result['wall_s']:.0f} s)")
    return 0


def _eval_libero_calvin(args: argparse.Namespace, policy, model_dir) -> int:
    import time

    from .fileio import atomic_write_json

    start = time.perf_counter()
    if args.env == "libero":
        from .envs.libero_env import evaluate_libero, format_libero_results

        result = evaluate_libero(policy, args.suite, n_rollouts_per_task=args.episodes, seed=args.seed,
                                 video_dir=(args.out + ".videos") if args.videos else None)
        text = format_libero_results(result)
    else:
        from .envs.calvin_env import evaluate_calvin, format_calvin_results

        result = evaluate_calvin(policy, dataset_path=args.calvin_dataset, num_sequences=args.episodes,
                                 seed=args.seed)
        text = format_calvin_results(result)
    result["wall_s"] = time.perf_counter() - start
    result["policy"] = str(model_dir)
    atomic_write_json(args.out, result)
    print(text)
    print(f"wrote {args.out} ({result['wall_s']:.0f} s)")
    return 0


# ------------------------------------------------------------------- convert
@command("convert")
def cmd_convert(args: argparse.Namespace) -> int:
    if args.format == "libero":
        from .data.convert_libero import convert_libero

        out = convert_libero(args.source, args.out, overwrite=args.overwrite, image_size=args.image_size)
    else:
        from .data.convert_calvin import convert_calvin

        out = convert_calvin(args.source, args.out, overwrite=args.overwrite)
    print(f"wrote {out}")
    return 0


# -------------------------------------------------------------------- report
@command("report")
def cmd_report(args: argparse.Namespace) -> int:
    from .report import write_report

    path = write_report(args.run_dir, args.out)
    print(f"wrote {path}")
    return 0


# ------------------------------------------------------------------- inspect
@command("inspect")
def cmd_inspect(args: argparse.Namespace) -> int:
    from .data.inspect import format_inspection, inspect_dataset

    info = inspect_dataset(args.path)
    print(json.dumps(info, indent=2) if args.json else format_inspection(info))
    return 0


# ---------------------------------------------------------------- quickstart
@command("quickstart")
def cmd_quickstart(args: argparse.Namespace) -> int:
    """Demonstrations -> training -> held-out evaluation -> report, on this machine."""
    import time
    from pathlib import Path

    from .demos import generate_demos
    from .envs.metaworld_env import resolve_tasks
    from .evaluate import evaluate_metaworld, format_success_table, save_eval
    from .policy import MoDEPolicy
    from .report import write_report
    from .train import TrainConfig, train

    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise UserError(f"{out} is not empty (pass --overwrite to replace it)")
    if out.exists() and args.overwrite:
        import shutil

        shutil.rmtree(out)
    tasks = resolve_tasks(args.tasks)
    timings = {}
    start = time.perf_counter()
    print(f"[1/4] {len(tasks)} tasks x {args.episodes} scripted demonstrations")
    generate_demos(out / "data", tasks, args.episodes, seed=args.seed, workers=args.workers)
    timings["demos_s"] = time.perf_counter() - start

    print(f"[2/4] training the {args.preset} preset for {args.steps} steps")
    t = time.perf_counter()
    run = out / "run"
    train(TrainConfig(dataset=str(out / "data"), output_dir=str(run), preset=args.preset, steps=args.steps,
                      batch_size=args.batch_size, lr=args.lr, checkpoint_every=max(args.steps // 4, 1),
                      seed=args.seed, overrides=args.set))
    timings["train_s"] = time.perf_counter() - t

    print(f"[3/4] evaluating on {args.eval_episodes} held-out episodes per task")
    t = time.perf_counter()
    policy = MoDEPolicy.from_pretrained(run / "model")
    result = evaluate_metaworld(policy, tasks, args.eval_episodes, seed=args.seed)
    timings["eval_s"] = time.perf_counter() - t
    result["wall_s"] = timings["eval_s"]
    save_eval(result, run / "eval_info.json")

    print("[4/4] writing the report")
    report = write_report(run)
    timings["total_s"] = time.perf_counter() - start
    print()
    print(format_success_table(result))
    print()
    print("time: " + ", ".join(f"{k[:-2]} {v / 60:.1f} min" for k, v in timings.items()))
    print(f"report: {report}")
    return 0


# --------------------------------------------------------------------- bench
@command("bench")
def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import bench_latency, format_latency

    if args.threads:
        torch.set_num_threads(args.threads)
    result = bench_latency(args.preset, rounds_b1=args.rounds_b1, rounds_b64=args.rounds_b64,
                           overrides=parse_overrides(args.set), profile=not args.no_profile,
                           progress=not args.json)
    print(json.dumps(result, indent=2) if args.json else format_latency(result))
    return 0


# ------------------------------------------------------------------- parsing
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mode-policy", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="parameter counts of a preset")
    p.add_argument("--preset", default="cpu", choices=sorted(PRESETS))
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser("demos", help="generate scripted Meta-World demonstrations (LeRobot format)")
    p.add_argument("--tasks", default="mt10", help="mt10, mt50, or comma-separated task names")
    p.add_argument("--episodes", type=int, default=50, help="successful episodes per task")
    p.add_argument("--out", default="data/mt10")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--cameras", default="", metavar="CAM,CAM",
                   help="also record these Meta-World cameras as videos, e.g. corner,gripperPOV "
                        "(corner, corner2, corner3, corner4, topview, behindGripper, gripperPOV)")
    p.add_argument("--image-size", type=int, default=64, help="side of the square camera images in pixels")

    p = sub.add_parser("train", help="train a MoDE policy on a LeRobot-format dataset")
    _add_train_args(p)
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--eval-every", type=int, default=0, help="evaluate in Meta-World every N steps")
    p.add_argument("--eval-episodes", type=int, default=5, help="episodes per task for periodic evaluation")

    p = sub.add_parser("eval", help="evaluate a trained policy in simulation")
    p.add_argument("policy", help="a run directory or a saved model directory")
    p.add_argument("--env", default="metaworld", choices=["metaworld", "libero", "calvin"])
    p.add_argument("--tasks", default=None, help="Meta-World task set; default: the tasks of the training data")
    p.add_argument("--suite", default="libero_10",
                   choices=["libero_10", "libero_90", "libero_goal", "libero_spatial", "libero_object"])
    p.add_argument("--calvin-dataset", default=None, help="CALVIN split folder (validation) for its scene")
    p.add_argument("--episodes", type=int, default=50,
                   help="Meta-World: held-out episodes per task; LIBERO: rollouts per task; CALVIN: chains")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=100, help="environments rolled out in parallel")
    p.add_argument("--steps", type=int, default=0, help="sampling steps (default: the policy's)")
    p.add_argument("--videos", type=int, default=0, help="record this many episodes per task as mp4")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="eval_info.json")

    p = sub.add_parser("convert", help="convert LIBERO HDF5 or CALVIN npz data to a LeRobot dataset")
    p.add_argument("format", choices=["libero", "calvin"])
    p.add_argument("source", help="LIBERO: an .hdf5 file or a folder of them; CALVIN: a split folder")
    p.add_argument("--out", required=True)
    p.add_argument("--image-size", type=int, default=None, help="LIBERO: resize images to this side")
    p.add_argument("--overwrite", action="store_true")

    p = sub.add_parser("report", help="markdown report with pictures for a run directory")
    p.add_argument("run_dir")
    p.add_argument("--out", default=None, help="output folder (default RUN_DIR/report)")

    p = sub.add_parser("inspect", help="show what a LeRobot-format dataset holds")
    p.add_argument("path")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("quickstart", help="the main job: demos, training, evaluation and report on MT10")
    p.add_argument("--out", default="runs/quickstart")
    p.add_argument("--tasks", default="mt10")
    p.add_argument("--episodes", type=int, default=50, help="demonstrations per task")
    p.add_argument("--preset", default="cpu", choices=sorted(PRESETS))
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="policy config overrides")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--eval-episodes", type=int, default=10, help="held-out episodes per task")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")

    p = sub.add_parser("bench", help="inference benchmarks (ratios measured side by side)")
    p.add_argument("what", choices=["latency"])
    p.add_argument("--preset", default="cpu", choices=sorted(PRESETS))
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    p.add_argument("--rounds-b1", type=int, default=40)
    p.add_argument("--rounds-b64", type=int, default=10)
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    p.add_argument("--no-profile", action="store_true")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("toy", help="train on the bimodal toy task and check both modes are kept")
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--seed", type=int, default=0)
    return parser


def _add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", required=True, help="LeRobot-format dataset folder")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--preset", default="cpu", choices=sorted(PRESETS))
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="policy config overrides")
    p.add_argument("--language", default="minilm", choices=["minilm", "task", "clip"])
    p.add_argument("--steps", type=int, default=5000)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--warmup-steps", type=int, default=200)
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--checkpoint-every", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (UserError, ValueError, FileNotFoundError, FileExistsError, KeyError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"mode-policy {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
