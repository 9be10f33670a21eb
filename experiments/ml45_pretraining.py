"""Does pretraining pay off? Meta-World ML45: pretrain on the 45 training tasks, fine-tune on the
5 held-out test tasks with few demonstrations, and compare with training from scratch on the same
demonstrations with the same budget (steps x batch).

Arms, per demonstration count N (``--demos 10,5``) and training seed (``--seeds 0,1,2``):

* ``finetune``: ``mode-policy finetune`` of the pretrained model (routers frozen, no balancing
  loss, the test data's normalisation), lr ``--finetune_lr``;
* ``scratch``: the same architecture and goal encoder from a random init, lr ``--scratch_lr``;

plus ``zero-shot``: the pretrained model itself on the test tasks (no test demonstrations).
Every arm is evaluated on the same held-out initial conditions (Meta-World evaluation seeds are
disjoint from the demonstration seeds), ``--eval_episodes`` per task.

Each arm's result is written to ``OUT/results/<arm>.json`` as soon as it finishes; a rerun skips
finished arms and resumes a killed training from its last checkpoint. ``OUT/table.md`` is
rewritten after every arm: success per arm with a seed-level 95% t-interval and a Wilson 95%
interval on the pooled episodes, per-task success, and wall times.

Data (``--data``): ``ml45-train`` and ``ml45-test-<N>`` made by
``mode-policy demos --tasks ml45-train|ml45-test``. Pretrained model (``--pretrained``): a finished
run directory or model folder; without it the script pretrains one into ``OUT/pretrain``.

    python experiments/ml45_pretraining.py --data /work/studies/ml45/data \\
        --pretrained /work/studies/ml45/pretrain --out /work/studies/ml45/study
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from mode_policy.data.reader import DatasetReader
from mode_policy.errors import ConfigError, ModePolicyError
from mode_policy.evaluation.metaworld import evaluate_metaworld
from mode_policy.evaluation.result import wilson_interval
from mode_policy.fileio import atomic_write_json, atomic_write_text
from mode_policy.policy import MoDEPolicy
from mode_policy.training.config import TrainConfig
from mode_policy.training.loop import train, weights_checksum
from mode_policy.training.run_dir import RunDir

T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}
"""Two-sided 95% Student-t quantiles by degrees of freedom (seed-level intervals)."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data", required=True, help="folder with ml45-train and ml45-test-<N>")
    p.add_argument("--out", required=True, help="study folder (results, runs, table.md)")
    p.add_argument("--pretrained", default="", help="finished pretrained run or model (default: train OUT/pretrain)")
    p.add_argument("--demos", default="10,5", help="demonstrations per test task, one arm set each")
    p.add_argument("--seeds", default="0,1,2", help="training seeds of the finetune and scratch arms")
    p.add_argument("--steps", type=int, default=1000, help="optimizer steps of every finetune / scratch arm")
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--warmup_steps", type=int, default=50)
    p.add_argument("--finetune_lr", type=float, default=1e-4)
    p.add_argument("--scratch_lr", type=float, default=3e-4)
    p.add_argument("--eval_episodes", type=int, default=10, help="held-out episodes per test task")
    p.add_argument("--eval_seed", type=int, default=0, help="the same held-out conditions for every arm")
    p.add_argument("--preset", default="cpu", help="pretraining preset (only without --pretrained)")
    p.add_argument("--pretrain_steps", type=int, default=2000)
    p.add_argument("--pretrain_lr", type=float, default=5e-4)
    p.add_argument("--pretrain_batch_size", type=int, default=256)
    p.add_argument("--language", default="minilm", help="goal encoder of the pretraining (minilm or clip)")
    return p.parse_args(argv)


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def dataset_tasks(path: Path) -> list[str]:
    names = {extra.get("env_name") for extra in DatasetReader(path).episode_extra}
    if None in names or not names:
        raise ConfigError(f"{path}: not a Meta-World dataset made by `mode-policy demos` (no env_name per episode)")
    return sorted(names)


# ------------------------------------------------------------------------- runs
def _train_run(cfg: TrainConfig) -> tuple[RunDir, float]:
    """Train ``cfg`` to the end (resume a killed run, reuse a finished one); the run and its
    training wall time (a reused run's own record of it)."""
    run = RunDir(cfg.output_dir)
    summary = run.read_summary()
    if (run.model / "config.json").is_file() and summary and summary.get("steps") == cfg.steps:
        return run, float(summary.get("wall_s", 0.0))
    start = time.perf_counter()
    train(cfg, resume=run.latest_pointer.is_file())
    return run, time.perf_counter() - start


def pretrained_model(args: argparse.Namespace, out: Path) -> Path:
    """The pretrained model folder: ``--pretrained`` (must be finished), or OUT/pretrain trained here."""
    if args.pretrained:
        path = Path(args.pretrained)
        model = RunDir.model_dir(path)
        if not (model / "model.safetensors").is_file():
            raise ConfigError(
                f"--pretrained {path} has no finished model yet (wait for the run, or leave "
                "--pretrained out to pretrain one into OUT/pretrain)"
            )
        return model
    cfg = TrainConfig(
        dataset=str(Path(args.data) / "ml45-train"),
        output_dir=str(out / "pretrain"),
        preset=args.preset,
        steps=args.pretrain_steps,
        lr=args.pretrain_lr,
        batch_size=args.pretrain_batch_size,
        language=args.language,
        checkpoint_every=max(1, args.pretrain_steps // 4),
        progress=False,
    )
    run, seconds = _train_run(cfg)
    print(f"pretrained {run.root} in {seconds:.0f} s", flush=True)
    return run.model


def arm_configs(args: argparse.Namespace, out: Path, pretrained: Path, demos: int, seed: int) -> dict[str, TrainConfig]:
    """The finetune and scratch configs of one (demos, seed): same data, steps, batch and warm-up."""
    data = Path(args.data) / f"ml45-test-{demos}"
    common = dict(
        dataset=str(data),
        steps=args.steps,
        batch_size=args.batch_size,
        warmup_steps=args.warmup_steps,
        seed=seed,
        checkpoint_every=max(1, args.steps // 4),
        keep_checkpoints=1,
        progress=False,
    )
    base = MoDEPolicy.from_pretrained(pretrained).config
    scratch_policy = dataclasses.replace(base, freeze_router=False)
    language = base.goal_encoder.get("type", "minilm")
    run_cfg = RunDir.of_model(pretrained)
    preset = TrainConfig.from_run_dict(run_cfg.read_config()).preset if run_cfg is not None else "cpu"
    return {
        "finetune": TrainConfig(
            output_dir=str(out / "runs" / f"finetune-{demos}demos-seed{seed}"),
            init_from=str(pretrained),
            lr=args.finetune_lr,
            **common,
        ),
        "scratch": TrainConfig(
            output_dir=str(out / "runs" / f"scratch-{demos}demos-seed{seed}"),
            preset=preset,
            policy=scratch_policy,
            language=language,
            lr=args.scratch_lr,
            **common,
        ),
    }


def evaluate(model: Path, tasks: list[str], args: argparse.Namespace) -> dict[str, Any]:
    start = time.perf_counter()
    result = evaluate_metaworld(
        MoDEPolicy.from_pretrained(model), tasks, args.eval_episodes, seed=args.eval_seed, progress=False
    )
    return {
        "per_task": {t: [r.successes, r.episodes] for t, r in result.per_task.items()},
        "successes": result.overall.successes,
        "episodes": result.overall.episodes,
        "eval_s": time.perf_counter() - start,
    }


# ------------------------------------------------------------------------ table
def _seed_interval(rates: list[float]) -> tuple[float, float]:
    mean = statistics.fmean(rates)
    if len(rates) < 2:
        return (math.nan, math.nan)
    half = T_975.get(len(rates) - 1, 1.96) * statistics.stdev(rates) / math.sqrt(len(rates))
    return (mean - half, mean + half)


def write_table(out: Path, results: dict[str, dict[str, Any]], tasks: list[str], settings: dict[str, Any]) -> str:
    """Markdown: one row per (arm, demos) over its seeds, then fine-tune minus scratch per demos."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in results.values():
        groups.setdefault((r["arm"], r["demos"]), []).append(r)
    short = [t.removesuffix("-v3") for t in tasks]
    lines = [
        "| arm | demos/task | seeds | success (mean) | seed 95% CI | Wilson 95% (pooled) | "
        + " | ".join(short)
        + " | train s/seed | eval s/seed |",
        "|---|---|---|---|---|---|" + "---|" * len(short) + "---|---|",
    ]
    order = {"zero-shot": 0, "scratch": 1, "finetune": 2}
    for (arm, demos), rs in sorted(groups.items(), key=lambda kv: (-kv[0][1], order.get(kv[0][0], 9))):
        rates = [r["successes"] / r["episodes"] for r in rs]
        lo, hi = _seed_interval(rates)
        succ, eps = sum(r["successes"] for r in rs), sum(r["episodes"] for r in rs)
        wlo, whi = wilson_interval(succ, eps)
        per_task = [sum(r["per_task"][t][0] for r in rs) / sum(r["per_task"][t][1] for r in rs) for t in tasks]
        seed_ci = "n/a" if math.isnan(lo) else f"[{lo:.2f}, {hi:.2f}]"
        lines.append(
            f"| {arm} | {demos} | {len(rs)} | {statistics.fmean(rates):.3f} | {seed_ci} | [{wlo:.2f}, {whi:.2f}] | "
            + " | ".join(f"{p:.2f}" for p in per_task)
            + f" | {statistics.fmean(r.get('train_s', 0.0) for r in rs):.0f} | "
            f"{statistics.fmean(r['eval_s'] for r in rs):.0f} |"
        )
    lines.append("")
    for demos in sorted({d for _, d in groups}, reverse=True):
        ft = {r["seed"]: r["successes"] / r["episodes"] for r in groups.get(("finetune", demos), [])}
        sc = {r["seed"]: r["successes"] / r["episodes"] for r in groups.get(("scratch", demos), [])}
        paired = [ft[s] - sc[s] for s in sorted(set(ft) & set(sc))]
        if paired:
            lo, hi = _seed_interval(paired)
            ci = "" if math.isnan(lo) else f", seed-paired 95% CI [{lo:+.3f}, {hi:+.3f}]"
            lines.append(
                f"- {demos} demos/task: fine-tune minus scratch = {statistics.fmean(paired):+.3f} "
                f"over {len(paired)} seed(s){ci}"
            )
    lines += ["", f"Settings: `{json.dumps(settings, sort_keys=True)}`", ""]
    text = "\n".join(lines)
    atomic_write_text(out / "table.md", text)
    return text


# ------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    demos_list, seeds = _ints(args.demos), _ints(args.seeds)
    tasks = dataset_tasks(Path(args.data) / f"ml45-test-{demos_list[0]}")
    pretrained = pretrained_model(args, out)
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "demos", "seeds")}
    settings.update(
        pretrained=str(pretrained),
        pretrained_checksum=weights_checksum(MoDEPolicy.from_pretrained(pretrained)),
        tasks=tasks,
    )
    saved = out / "settings.json"
    if saved.is_file() and json.loads(saved.read_text()) != settings:
        raise ConfigError(f"{saved} holds other settings (another pretrained model or budget): use another --out")
    atomic_write_json(saved, settings)
    results_dir = out / "results"
    results = {p.stem: json.loads(p.read_text()) for p in sorted(results_dir.glob("*.json"))}

    def finish(name: str, record: dict[str, Any]) -> None:
        results[name] = record
        atomic_write_json(results_dir / f"{name}.json", record)
        print(f"{name}: success {record['successes']}/{record['episodes']}", flush=True)
        write_table(out, results, tasks, settings)

    if "zero-shot" not in results:
        finish("zero-shot", {"arm": "zero-shot", "demos": 0, "seed": 0, **evaluate(pretrained, tasks, args)})
    for demos in demos_list:
        for seed in seeds:
            for arm, cfg in arm_configs(args, out, pretrained, demos, seed).items():
                name = f"{arm}-{demos}demos-seed{seed}"
                if name in results:
                    continue
                run, train_s = _train_run(cfg)
                finish(
                    name,
                    {
                        "arm": arm,
                        "demos": demos,
                        "seed": seed,
                        "train_s": train_s,
                        "steps": cfg.steps,
                        "batch_size": cfg.batch_size,
                        **evaluate(run.model, tasks, args),
                    },
                )
    print(write_table(out, results, tasks, settings))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ModePolicyError as err:
        print(f"ml45_pretraining: error: {err}", file=sys.stderr)
        sys.exit(2)
