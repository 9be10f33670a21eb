"""Both command lines on the same data: ``mode-policy train`` and ``lerobot-train --policy.type=mode``
with the same preset, batch size, steps and default recipe. They build the same MoDEConfig (the
preset means one model), have the same learning rate at every logged step, the same optimiser
(AdamW, weight decay on the same tensors, clip, EMA), and reach the same loss curve (each logs
the loss of its own batches: windows are compared).

``python compare_recipes.py DATASET_ROOT WORK_DIR [--preset cpu] [--steps 400] [--batch_size 64]
[--warmup 40] [--window 50]``; prints a Markdown table and one JSON line; exits non-zero if the
configs, learning rates or weight-decay groups differ.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from safetensors.torch import load_file

from mode_policy.model.config import MoDEConfig
from mode_policy.training.run_dir import RunDir


def _run(cmd: list[str], log: Path) -> None:
    with log.open("w") as out:
        code = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=os.environ).returncode
    if code:
        sys.stderr.write(log.read_text()[-3000:])
        raise SystemExit(f"failed ({code}): {' '.join(cmd)}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("dataset")
    p.add_argument("work")
    p.add_argument("--preset", default="cpu")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--warmup", type=int, default=40)
    p.add_argument("--window", type=int, default=50)
    args = p.parse_args(argv)
    work, bindir = Path(args.work), Path(sys.executable).parent
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    ours, theirs = work / "mode_policy_train", work / "lerobot_train"
    _run(
        [str(bindir / "mode-policy"), "train", "--dataset", args.dataset, "--preset", args.preset,
         "--steps", str(args.steps), "--batch_size", str(args.batch_size), "--warmup_steps", str(args.warmup),
         "--log_every", "1", "--checkpoint_every", str(args.steps), "--device", "cpu", "--progress", "false",
         "--output_dir", str(ours)],
        work / "mode_policy_train.log",
    )  # fmt: skip
    _run(
        [str(bindir / "lerobot-train"), f"--dataset.repo_id=local/{Path(args.dataset).name}",
         f"--dataset.root={args.dataset}", "--policy.type=mode", f"--policy.preset={args.preset}",
         f"--policy.scheduler_warmup_steps={args.warmup}", "--policy.device=cpu", "--policy.push_to_hub=false",
         f"--steps={args.steps}", f"--batch_size={args.batch_size}", "--num_workers=0", f"--save_freq={args.steps}",
         f"--log_freq={args.window}", "--wandb.enable=false", f"--output_dir={theirs}"],
        work / "lerobot_train.log",
    )  # fmt: skip
    ckpt = theirs / "checkpoints" / "last" / "pretrained_model"

    run = RunDir(ours)
    metrics = {int(m["step"]): m for m in run.read_metrics()}
    lerobot = {
        int(m[1]): (float(m[2]), float(m[3]))
        for m in re.finditer(r"step:(\d+) .*? loss:(\S+) .*? lr:(\S+)", (work / "lerobot_train.log").read_text())
    }
    rows, lr_equal = [], True
    for step, (loss, lr) in sorted(lerobot.items()):
        window = [metrics[s] for s in range(step - args.window + 1, step + 1)]
        ours_loss = float(np.mean([m["loss"] for m in window]))
        ours_lr = float(np.mean([m["lr"] for m in window]))  # LeRobot logs the window's mean lr
        lr_equal &= f"{ours_lr:0.1e}" == f"{lr:0.1e}"
        rows.append({"step": step, "mode_policy_loss": round(ours_loss, 4), "lerobot_loss": round(loss, 4), "lr": lr})

    mode_cfg = MoDEConfig.from_dict(json.loads((run.model / "config.json").read_text()))
    lerobot_cfg = MoDEConfig.from_dict(json.loads((ckpt / "mode_config.json").read_text()))
    groups = json.loads((ckpt.parent / "training_state" / "optimizer_param_groups.json").read_text())
    weights = load_file(str(ckpt / "model.safetensors"))
    names = [k for k in _parameter_names(lerobot_cfg) if k in weights]
    decayed = sum(1 for k in names if weights[k].dim() >= 2)
    late = rows[len(rows) // 2 :]
    report = {
        "preset": args.preset,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "same_mode_config": mode_cfg == lerobot_cfg,
        "lr_equal_every_window": lr_equal,
        "weight_decay_groups": [(g["weight_decay"], len(g["params"])) for g in groups],
        "matrices": decayed,
        "late_windows_mean_abs_loss_diff": round(
            float(np.mean([abs(r["mode_policy_loss"] - r["lerobot_loss"]) for r in late])), 4
        ),
        "late_windows_mean_loss": round(float(np.mean([r["mode_policy_loss"] for r in late])), 4),
        "rows": rows,
    }
    print("| step | lr | mode-policy train loss | lerobot-train loss |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['step']} | {r['lr']:.1e} | {r['mode_policy_loss']:.3f} | {r['lerobot_loss']:.3f} |")
    print(json.dumps(report))
    ok = report["same_mode_config"] and lr_equal
    ok = (
        ok
        and [wd for wd, _ in report["weight_decay_groups"]] == [0.05, 0.0]
        and groups[0]["params"]
        and decayed == len(groups[0]["params"])
    )
    return 0 if ok else 1


def _parameter_names(config: MoDEConfig) -> list[str]:
    """The trainable parameter names of a policy of ``config`` (buffers excluded), in order."""
    from mode_policy.policy import MoDEPolicy

    return [n for n, p in MoDEPolicy(config).named_parameters() if p.requires_grad]


if __name__ == "__main__":
    sys.exit(main())
