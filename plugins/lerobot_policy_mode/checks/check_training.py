"""After ``lerobot-train --policy.type=mode``: load the checkpoint in LeRobot, call select_action,
convert it for ``MoDEPolicy.from_pretrained`` and compare the two policies' action chunks.

``python check_training.py PRETRAINED_MODEL_DIR DATASET_ROOT WORK_DIR``; prints one JSON line.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from lerobot.configs.policies import PreTrainedConfig
from lerobot.datasets.lerobot_dataset import LeRobotDataset
from lerobot.policies.factory import make_policy, make_pre_post_processors
from lerobot.processor import NormalizerProcessorStep
from lerobot_policy_mode.modeling_mode import export_mode_checkpoint

from mode_policy.policy import MoDEPolicy


def main(ckpt: str, root: str, work: str) -> int:
    ds = LeRobotDataset("local/" + Path(root).name, root=root)
    cfg = PreTrainedConfig.from_pretrained(ckpt)
    cfg.pretrained_path = Path(ckpt)
    policy = make_policy(cfg, ds_meta=ds.meta)
    pre, post = make_pre_post_processors(cfg, pretrained_path=ckpt)
    assert not any(isinstance(s, NormalizerProcessorStep) for s in pre.steps), "normalised twice"
    stats = ds.meta.stats["action"]
    np.testing.assert_allclose(policy.model.normalizer.action_min.numpy(), stats["min"], rtol=1e-6)
    policy.eval()
    policy.reset()
    assert policy.model.denoiser.use_expert_cache and not policy.model.training
    frame = {k: v for k, v in ds[0].items() if k.startswith("observation.") or k == "task"}
    actions = [post(policy.select_action(pre(frame))) for _ in range(3)]
    action = torch.stack(actions)  # (3, 1, A)
    assert action.shape[-1] == ds.meta.features["action"]["shape"][0] and torch.isfinite(action).all()

    mode_dir = export_mode_checkpoint(ckpt, Path(work) / "mode_checkpoint")
    ours = MoDEPolicy.from_pretrained(mode_dir).eval()
    batch = pre(frame)
    noise = torch.randn(1, ours.config.horizon, ours.config.action_dim, generator=torch.Generator().manual_seed(0))
    a = policy.model.predict_action_chunk(batch, noise=noise)
    b = ours.predict_action_chunk(batch, noise=noise)
    report = {
        "checkpoint": ckpt,
        "select_action": action[:, 0].tolist(),
        "lerobot_vs_mode_policy_chunk_max_abs_diff": float((a - b).abs().max()),
    }
    print(json.dumps(report))
    return 0 if report["lerobot_vs_mode_policy_chunk_max_abs_diff"] == 0.0 else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
