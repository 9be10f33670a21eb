"""Checkpoints saved by mode-policy 0.1.0 load and sample exactly what 0.1.0 sampled
(fixture written by tests/fixtures/make_checkpoint_v0_1.py)."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mode_policy import MoDEPolicy

FIXTURES = Path(__file__).parent / "fixtures" / "checkpoint_v0_1"


@pytest.mark.parametrize("routing", ["noise", "token", "dense"])
def test_v0_1_checkpoint_loads_and_samples_the_same_actions(routing):
    policy = MoDEPolicy.from_pretrained(FIXTURES / routing)
    policy.eval()
    ref = load_file(str(FIXTURES / routing / "reference.safetensors"))
    batch = {"observation.state": ref["state"], "goal": ref["goal"]}
    actions = policy.predict_action_chunk(batch, noise=ref["noise"])
    torch.testing.assert_close(actions, ref["actions"], rtol=0, atol=1e-6)
    assert policy.config.routing == routing


def test_a_lerobot_plugin_checkpoint_loads_directly(tmp_path):
    """A lerobot-train checkpoint of the plugin: LeRobot's config.json, our config as mode_config.json."""
    import json
    import shutil

    shutil.copyfile(FIXTURES / "noise" / "model.safetensors", tmp_path / "model.safetensors")
    shutil.copyfile(FIXTURES / "noise" / "config.json", tmp_path / "mode_config.json")
    (tmp_path / "config.json").write_text(json.dumps({"type": "mode", "preset": "tiny", "device": "cpu"}))
    policy = MoDEPolicy.from_pretrained(tmp_path).eval()
    ref = load_file(str(FIXTURES / "noise" / "reference.safetensors"))
    actions = policy.predict_action_chunk({"observation.state": ref["state"], "goal": ref["goal"]}, noise=ref["noise"])
    torch.testing.assert_close(actions, ref["actions"], rtol=0, atol=1e-6)
