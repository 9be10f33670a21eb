"""architecture="official" computes what the official code computes, on the committed fixture
(tests/fixtures/official, made by tests/fixtures/official/make_fixture.py from the official source)."""

import json

import pytest
import torch
from official_parity import FIXTURE, VARIANTS, parity
from safetensors.torch import load_file

TOLERANCE = 1e-5


@pytest.mark.parametrize("variant", VARIANTS)
def test_converted_policy_matches_official_outputs(variant):
    diffs = parity(FIXTURE / variant)
    assert diffs["masked_goal"] == 0.0  # same Bernoulli draws, zeroing without rescale
    for key in ("denoised", "sample", "train_denoised", "train_balance"):
        assert diffs[key] < TOLERANCE, (key, diffs)


@pytest.mark.parametrize("variant", VARIANTS)
def test_fixture_checks_something(variant):
    """The references are not trivial: training mode (per-token draws) differs from evaluation,
    the balancing term is near k at balance (2, or 1 routed expert with the shared one)."""
    ref = load_file(str(FIXTURE / variant / "reference.safetensors"))
    meta = json.loads((FIXTURE / variant / "meta.json").read_text())
    assert (ref["train_denoised"] - ref["denoised"]).abs().max() > 1e-2
    assert ref["sample"].abs().max() > 0.1
    assert (ref["masked_goal"] == 0).any() and not torch.equal(ref["masked_goal"], ref["goal"])
    routed_k = meta["top_k"] - int(meta["shared_expert"])
    assert torch.allclose(ref["train_balance"], torch.full_like(ref["train_balance"], float(routed_k)), atol=0.3)


def test_fixture_is_commit_sized():
    assert sum(p.stat().st_size for p in FIXTURE.rglob("*") if p.is_file()) < 1_000_000
