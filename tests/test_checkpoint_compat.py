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
