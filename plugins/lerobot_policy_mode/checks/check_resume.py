"""``lerobot-train --resume=true`` continues a MoDE run: the policy it builds holds the checkpoint's
trained weights (not the EMA it acts with), the EMA and its step count, and the resumed run logs the
same learning rates as an uninterrupted one.

``python check_resume.py CHECKPOINT_PRETRAINED_DIR DATASET_ROOT RESUMED_LOG UNINTERRUPTED_LOG``;
prints one JSON line. (The losses differ after a resume: LeRobot's data loader draws its seed from
the restored RNG, so the diffusion noise differs; that is LeRobot's resume, for every policy.)
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import lerobot_policy_mode  # noqa: F401  (registers --policy.type=mode)
from lerobot.configs.policies import PreTrainedConfig
from lerobot.datasets.lerobot_dataset import LeRobotDatasetMetadata
from lerobot.policies.factory import make_policy
from lerobot_policy_mode.modeling_mode import TRAINING_WEIGHTS_NAME
from safetensors import safe_open
from safetensors.torch import load_file


def _lrs(log: str) -> dict[int, str]:
    return {int(m[1]): m[2] for m in re.finditer(r"step:(\d+) .*? lr:(\S+)", Path(log).read_text())}


def _max_diff(model, tensors) -> float:
    state = model.state_dict()
    assert state.keys() == tensors.keys()
    return max(float((state[k].float() - tensors[k].float()).abs().max()) for k in tensors)


def main(ckpt: str, root: str, resumed_log: str, straight_log: str) -> int:
    ckpt_dir = Path(ckpt)
    meta = LeRobotDatasetMetadata("local/" + Path(root).name, root=root)
    sys.argv = [sys.argv[0], "--resume=true"]  # what lerobot-train --resume=true sees when it builds the policy
    cfg = PreTrainedConfig.from_pretrained(ckpt_dir)
    cfg.pretrained_path = ckpt_dir
    policy = make_policy(cfg, ds_meta=meta)
    trained_file = ckpt_dir.parent / "training_state" / TRAINING_WEIGHTS_NAME
    with safe_open(str(trained_file), framework="pt") as f:
        updates = int(f.metadata()["ema_updates"])
    report = {
        "trained_weights_max_abs_diff": _max_diff(policy.model, load_file(str(trained_file))),
        "ema_weights_max_abs_diff": _max_diff(policy.acting_model, load_file(str(ckpt_dir / "model.safetensors"))),
        "trained_vs_ema_max_abs_diff": _max_diff(policy.model, load_file(str(ckpt_dir / "model.safetensors"))),
        "ema_updates": policy.ema.num_updates,
        "ema_updates_saved": updates,
    }
    resumed, straight = _lrs(resumed_log), _lrs(straight_log)
    report["resumed_steps"] = sorted(resumed)
    report["lr_equal_to_uninterrupted"] = bool(resumed) and all(straight.get(s) == lr for s, lr in resumed.items())
    print(json.dumps(report))
    ok = (
        report["trained_weights_max_abs_diff"] == 0.0
        and report["ema_weights_max_abs_diff"] == 0.0
        and report["trained_vs_ema_max_abs_diff"] > 0
        and report["ema_updates"] == updates > 0
        and report["lr_equal_to_uninterrupted"]
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:5]))
