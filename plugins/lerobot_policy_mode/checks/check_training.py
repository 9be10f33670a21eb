"""After ``lerobot-train --policy.type=mode``: the checkpoint is self-describing, loads and acts in
LeRobot (also copied without ``mode_config.json``), takes inference settings at load time, refuses
network changes, and matches ``MoDEPolicy.from_pretrained`` of its export.

``python check_training.py PRETRAINED_MODEL_DIR DATASET_ROOT WORK_DIR``; prints one JSON line,
exits non-zero on any mismatch.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import lerobot_policy_mode  # noqa: F401  (registers --policy.type=mode, as lerobot-train does)
import numpy as np
import torch
from lerobot.configs.policies import PreTrainedConfig
from lerobot.configs.types import NormalizationMode
from lerobot.datasets.lerobot_dataset import LeRobotDataset
from lerobot.policies.factory import make_pre_post_processors
from lerobot.processor import NormalizerProcessorStep, UnnormalizerProcessorStep
from lerobot_policy_mode.configuration_mode import MODE_FIELDS
from lerobot_policy_mode.modeling_mode import MODE_CONFIG_NAME, ModePolicy, export_mode_checkpoint

from mode_policy.errors import ConfigError
from mode_policy.model.config import MoDEConfig
from mode_policy.model.diffusion import SamplingSettings
from mode_policy.policy import MoDEPolicy


def _frame(ds: LeRobotDataset) -> dict:
    return {k: v for k, v in ds[0].items() if k.startswith("observation.") or k == "task"}


def _chunk(policy: ModePolicy, batch: dict, **sampling: object) -> torch.Tensor:
    model = policy.acting_model
    noise = torch.randn(1, model.config.horizon, model.config.action_dim, generator=torch.Generator().manual_seed(0))
    settings = SamplingSettings(**sampling) if sampling else None
    return model.predict_action_chunk(batch, noise=noise, sampling=settings)  # (1, H, A)


def _actions(policy: ModePolicy, pre, post, frame: dict, steps: int) -> torch.Tensor:
    """``steps`` select_action calls from one frame under seed 0: (steps, 1, A)."""
    policy.reset()
    torch.manual_seed(0)
    return torch.stack([post(policy.select_action(pre(frame))) for _ in range(steps)])


def main(ckpt: str, root: str, work: str) -> int:
    ckpt_dir, work_dir = Path(ckpt), Path(work)
    ds = LeRobotDataset("local/" + Path(root).name, root=root)
    report: dict[str, object] = {"checkpoint": ckpt}

    # 1. config.json holds every field: nothing is left to a preset
    saved = json.loads((ckpt_dir / "config.json").read_text())
    unset = [n for n in MODE_FIELDS if saved.get(n) is None]
    assert not unset, f"config.json leaves {unset} to the preset"
    assert saved["goal_encoder"]["type"] == saved["language_encoder"]
    report["config_fields"] = len(saved)

    # 2. loads through LeRobot (as lerobot-eval does: no dataset) and acts; processors do no normalising
    policy = ModePolicy.from_pretrained(ckpt_dir)
    pre, post = make_pre_post_processors(policy.config, pretrained_path=ckpt)
    for step in [*pre.steps, *post.steps]:
        if isinstance(step, NormalizerProcessorStep | UnnormalizerProcessorStep):
            assert set(step.norm_map.values()) == {NormalizationMode.IDENTITY}, "normalised twice"
    stats = ds.meta.stats["action"]
    np.testing.assert_allclose(policy.model.normalizer.action_min.numpy(), stats["min"], rtol=1e-6)
    assert policy.acting_model.denoiser.use_expert_cache and not policy.acting_model.training
    frame = _frame(ds)
    n_steps = policy.model.config.n_action_steps + 1  # re-plans once
    actions = _actions(policy, pre, post, frame, n_steps)
    assert actions.shape[-1] == ds.meta.features["action"]["shape"][0] and torch.isfinite(actions).all()
    report["select_action"] = actions[:, 0].tolist()

    # 3. copied without mode_config.json: the same network, the same actions
    copy_dir = work_dir / "copy_without_mode_config"
    shutil.rmtree(copy_dir, ignore_errors=True)
    shutil.copytree(ckpt_dir, copy_dir)
    (copy_dir / MODE_CONFIG_NAME).unlink()
    copied = ModePolicy.from_pretrained(copy_dir)
    assert (
        copied.model.config
        == policy.model.config
        == MoDEConfig.from_dict(json.loads((ckpt_dir / MODE_CONFIG_NAME).read_text()))
    ), "config.json alone rebuilds another MoDEConfig"
    a, b = policy.state_dict(), copied.state_dict()
    report["copy_weights_max_abs_diff"] = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    batch = pre(frame)
    report["copy_chunk_max_abs_diff"] = float((_chunk(policy, batch) - _chunk(copied, batch)).abs().max())
    report["copy_select_action_max_abs_diff"] = float(
        (_actions(copied, pre, post, frame, n_steps) - actions).abs().max()
    )

    # 4. inference settings at load time apply, as lerobot-eval passes them (--policy.n_action_steps=2 ...)
    overrides = ["--n_action_steps=2", "--num_inference_steps=3", "--sampler=euler"]
    tuned = ModePolicy.from_pretrained(
        ckpt_dir, config=PreTrainedConfig.from_pretrained(ckpt_dir, cli_overrides=overrides)
    )
    cfg = tuned.acting_model.config
    assert (cfg.n_action_steps, cfg.num_inference_steps, cfg.sampler) == (2, 3, "euler"), cfg
    replans = []
    original = tuned.acting_model.predict_action_chunk
    tuned.acting_model.predict_action_chunk = lambda *a, **k: replans.append(1) or original(*a, **k)
    tuned.reset()
    for _ in range(6):
        tuned.select_action(pre(frame))
    assert len(replans) == 3, f"n_action_steps=2 re-planned {len(replans)} times in 6 steps"
    tuned.acting_model.predict_action_chunk = original
    same_as_call = _chunk(policy, batch, num_inference_steps=3, sampler="euler")
    report["override_chunk_vs_call_settings_max_abs_diff"] = float((_chunk(tuned, batch) - same_as_call).abs().max())
    report["override_vs_default_chunk_max_abs_diff"] = float((_chunk(tuned, batch) - _chunk(policy, batch)).abs().max())

    # 5. settings that would change the network are refused with the field named
    refused = {}
    for arg in ("--d_model=32", "--num_experts=2", "--preset=paper", "--language_encoder=clip"):
        try:
            ModePolicy.from_pretrained(ckpt_dir, config=PreTrainedConfig.from_pretrained(ckpt_dir, cli_overrides=[arg]))
        except ConfigError as err:
            refused[arg] = arg[2:].split("=")[0] in str(err)
        else:
            refused[arg] = False
    report["refused"] = refused

    # 6. mode-policy reads the same model (export from config.json alone)
    mode_dir = export_mode_checkpoint(copy_dir, work_dir / "mode_checkpoint")
    ours = MoDEPolicy.from_pretrained(mode_dir).eval()
    noise = torch.randn(1, ours.config.horizon, ours.config.action_dim, generator=torch.Generator().manual_seed(0))
    report["lerobot_vs_mode_policy_chunk_max_abs_diff"] = float(
        (policy.acting_model.predict_action_chunk(batch, noise=noise) - ours.predict_action_chunk(batch, noise=noise))
        .abs()
        .max()
    )
    print(json.dumps(report))
    exact = [k for k in report if k.endswith("max_abs_diff") and not k.startswith("override_vs")]
    ok = all(report[k] == 0.0 for k in exact) and report["override_vs_default_chunk_max_abs_diff"] > 0
    ok = ok and all(refused.values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
