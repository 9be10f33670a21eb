"""After ``mode-policy train`` and ``python -m lerobot_policy_mode.convert``: load the converted
folder as ``lerobot-eval`` and the async server do (``ModePolicy.from_pretrained``, no dataset), with LeRobot's
processors, from ``config.json`` alone (``mode_config.json`` removed: a learned task vocabulary
travels in config.json), and compare it with ``MoDEPolicy.from_pretrained`` of the original model:
same config, same tensors, same action chunk for the same noise, same ``select_action`` for the
same seed (max abs diffs).

``python check_import.py CONVERTED_DIR MODEL_DIR DATASET_ROOT``; prints one JSON line.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import lerobot_policy_mode  # noqa: F401  (registers --policy.type=mode)
import torch
from lerobot.configs.types import NormalizationMode
from lerobot.datasets.lerobot_dataset import LeRobotDataset
from lerobot.policies.factory import make_pre_post_processors
from lerobot.processor import NormalizerProcessorStep
from lerobot_policy_mode.modeling_mode import MODE_CONFIG_NAME, ModePolicy

from mode_policy.policy import MoDEPolicy


def main(converted: str, model_dir: str, root: str) -> int:
    ds = LeRobotDataset("local/" + Path(root).name, root=root)
    alone = Path(converted).parent / (Path(converted).name + "_without_mode_config")
    shutil.rmtree(alone, ignore_errors=True)
    shutil.copytree(converted, alone)
    (alone / MODE_CONFIG_NAME).unlink()
    policy = ModePolicy.from_pretrained(alone)
    assert policy.config.type == "mode", policy.config.type
    pre, post = make_pre_post_processors(policy.config, pretrained_path=str(alone))
    normalizers = [s for s in pre.steps if isinstance(s, NormalizerProcessorStep)]
    assert all(set(s.norm_map.values()) == {NormalizationMode.IDENTITY} for s in normalizers), "normalised twice"
    ours = MoDEPolicy.from_pretrained(model_dir).eval()
    assert policy.model.config == ours.config, "LeRobot rebuilt a different MoDEConfig"
    assert policy.acting_model.denoiser.use_expert_cache and not policy.acting_model.training

    theirs_sd, ours_sd = policy.acting_model.state_dict(), ours.state_dict()
    assert theirs_sd.keys() == ours_sd.keys(), "tensor names differ"
    weights_diff = max(float((theirs_sd[k].float() - ours_sd[k].float()).abs().max()) for k in ours_sd)

    frame = {k: v for k, v in ds[0].items() if k.startswith("observation.") or k == "task"}
    batch = pre(frame)
    noise = torch.randn(1, ours.config.horizon, ours.config.action_dim, generator=torch.Generator().manual_seed(0))
    chunk_diff = float(
        (policy.acting_model.predict_action_chunk(batch, noise=noise) - ours.predict_action_chunk(batch, noise=noise))
        .abs()
        .max()
    )

    steps = ours.config.n_action_steps + 1  # re-plans once
    policy.reset()
    ours.reset()
    torch.manual_seed(0)
    theirs_actions = torch.stack([post(policy.select_action(pre(frame))) for _ in range(steps)])  # (steps, 1, A)
    torch.manual_seed(0)
    ours_actions = torch.stack([ours.select_action(pre(frame)) for _ in range(steps)])  # (steps, 1, A)
    assert theirs_actions.shape[-1] == ds.meta.features["action"]["shape"][0]
    assert torch.isfinite(theirs_actions).all()
    select_diff = float((theirs_actions - ours_actions).abs().max())

    report = {
        "converted": converted,
        "mode_config_fields_equal": True,
        "weights_max_abs_diff": weights_diff,
        "chunk_max_abs_diff": chunk_diff,
        "select_action_max_abs_diff": select_diff,
        "select_action_steps": steps,
    }
    print(json.dumps(report))
    return 0 if weights_diff == chunk_diff == select_diff == 0.0 else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
