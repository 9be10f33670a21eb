"""After ``lerobot-train --policy.path=PRETRAINED`` on another dataset: the fine-tuned policy
normalises with the new dataset's statistics (not the pretraining ones), its routers were frozen
and kept, the rest trained from the pretrained EMA weights, as ``mode-policy finetune`` does.

``python check_finetune.py PRETRAINED_DIR FINETUNED_DIR NEW_DATASET_ROOT``; prints one JSON line.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lerobot_policy_mode  # noqa: F401  (registers --policy.type=mode)
import numpy as np
from lerobot.datasets.lerobot_dataset import LeRobotDatasetMetadata
from lerobot_policy_mode.modeling_mode import ModePolicy
from safetensors.torch import load_file


def main(pretrained: str, finetuned: str, root: str) -> int:
    new = LeRobotDatasetMetadata("local/" + Path(root).name, root=root).stats
    before, after = ModePolicy.from_pretrained(pretrained), ModePolicy.from_pretrained(finetuned)
    config = json.loads((Path(finetuned) / "config.json").read_text())
    norm_new = after.model.normalizer
    norm_old = before.model.normalizer
    report = {
        "freeze_router": config["freeze_router"],
        "action_min_vs_new_dataset_max_abs_diff": float(
            np.abs(norm_new.action_min.numpy() - new["action"]["min"]).max()
        ),
        "action_max_vs_new_dataset_max_abs_diff": float(
            np.abs(norm_new.action_max.numpy() - new["action"]["max"]).max()
        ),
        "action_min_vs_pretraining_max_abs_diff": float((norm_new.action_min - norm_old.action_min).abs().max()),
    }
    w0, w1 = (
        load_file(str(Path(pretrained) / "model.safetensors")),
        load_file(str(Path(finetuned) / "model.safetensors")),
    )
    routers = [k for k in w0 if ".router." in k]
    trained = [k for k in w0 if k not in routers and not k.startswith(("normalizer.", "dataset_normalizers."))]
    report["router_tensors"] = len(routers)
    report["routers_max_abs_change"] = max(float((w1[k] - w0[k]).abs().max()) for k in routers)
    report["other_weights_max_abs_change"] = max(float((w1[k].float() - w0[k].float()).abs().max()) for k in trained)
    print(json.dumps(report))
    ok = (
        report["freeze_router"] is True
        and report["action_min_vs_new_dataset_max_abs_diff"] < 1e-6
        and report["action_max_vs_new_dataset_max_abs_diff"] < 1e-6
        and report["action_min_vs_pretraining_max_abs_diff"] > 0
        and len(routers) > 0
        and report["routers_max_abs_change"] == 0.0
        and report["other_weights_max_abs_change"] > 0
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
