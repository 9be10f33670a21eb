"""Guided chunk sampling (real-time chunking, mode_policy.model.guidance): the frozen prefix is
matched exactly, zero weights are the unguided sampler bit for bit, every sampler, both methods,
the expert cache on (and exact), the lean and module paths, normalised and action units."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mode_policy.errors import ConfigError, DataError
from mode_policy.model.config import get_preset
from mode_policy.model.guidance import GuidanceSettings, InpaintPrefix, overlap_weights, pigdm_weight
from mode_policy.policy import MoDEPolicy

ACTION_MIN, ACTION_MAX = [-2.0, 0.0, -1.0], [2.0, 1.0, 3.0]
SAMPLERS = {
    "ddim": {},
    "euler": {"sampler": "euler", "num_inference_steps": 5},
    "heun-karras": {"sampler": "heun", "schedule": "karras", "num_inference_steps": 8},  # PiGDM is weak at 4
    "dpmpp_2m": {"sampler": "dpmpp_2m"},
}
METHODS = ("replace", "pigdm")


def make_policy(action_min=ACTION_MIN, action_max=ACTION_MAX, **kw) -> MoDEPolicy:
    torch.manual_seed(0)
    policy = MoDEPolicy(get_preset("tiny", state_dim=5, action_dim=3, goal_dim=8, horizon=6, **kw))
    with torch.no_grad():  # non-trivial weights everywhere (the output head starts at zero)
        for p in policy.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    policy.set_normalization(
        {
            "action": {"min": action_min, "max": action_max},
            "observation.state": {"mean": [0.1] * 5, "std": [2.0] * 5},
        }
    )
    return policy.eval()


def inputs(b: int = 3, seed: int = 1) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """An observation batch, an initial noise (B, 6, 3) and a prefix (B, 4, 3) in action units."""
    g = torch.Generator().manual_seed(seed)
    batch = {"observation.state": torch.randn(b, 5, generator=g), "goal": torch.randn(b, 8, generator=g)}
    noise = torch.randn(b, 6, 3, generator=g)
    low, high = torch.tensor(ACTION_MIN), torch.tensor(ACTION_MAX)
    prefix = low + (high - low) * torch.rand(b, 4, 3, generator=g)
    return batch, noise, prefix


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_zero_weights_and_no_delay_are_the_unguided_sampler_bit_for_bit(name, method):
    policy = make_policy(**SAMPLERS[name])
    batch, noise, prefix = inputs()
    unguided = policy.predict_action_chunk(batch, noise=noise)
    guided = policy.predict_action_chunk(
        batch, noise=noise, prefix=prefix, delay=0, guidance=GuidanceSettings(method, schedule="zeros")
    )
    assert policy.denoiser.sampling_plan().lean is not None and policy.denoiser.sampling_plan().cached
    assert torch.equal(guided, unguided)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_the_frozen_prefix_is_matched_exactly_and_the_overlap_pulled_toward_it(name, method):
    policy = make_policy(**SAMPLERS[name])
    batch, noise, prefix = inputs()
    delay = [2, 1, 0]  # one per row
    unguided = policy.predict_action_chunk(batch, noise=noise)
    guided = policy.predict_action_chunk(
        batch, noise=noise, prefix=prefix, delay=delay, guidance=GuidanceSettings(method, schedule="ones")
    )
    for row, d in enumerate(delay):
        assert torch.equal(guided[row, :d], prefix[row, :d])  # exactly, in action units
    overlap = slice(2, 4)  # guided with weight 1 in every row, frozen in none
    before = (unguided[:, overlap] - prefix[:, overlap]).abs().mean()
    after = (guided[:, overlap] - prefix[:, overlap]).abs().mean()
    assert after < 0.8 * before, (before, after)


@pytest.mark.parametrize("method", METHODS)
def test_a_frozen_chunk_keeps_the_sampler_on_the_noised_prefix(method):
    """The normalised sample, before the policy overwrites anything, already ends on the prefix."""
    policy = make_policy()
    batch, noise, prefix = inputs()
    cond = policy.encode_condition(policy.check_inputs(batch))
    target = policy.normalizer.normalize_action(prefix)
    inpaint = InpaintPrefix.build(target, torch.tensor([4, 3, 4]), 6, GuidanceSettings(method))
    sample = policy.denoiser.sample(cond, noise, inpaint=inpaint)
    assert (sample[0, :4] - target[0, :4]).abs().max() < 1e-5
    assert (sample[1, :3] - target[1, :3]).abs().max() < 1e-5


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", ["ddim", "heun-karras"])
def test_guided_sampling_is_the_same_cached_or_routed_lean_or_module(name, method):
    policy = make_policy(**SAMPLERS[name])
    batch, noise, prefix = inputs()
    kwargs = dict(noise=noise, prefix=prefix, delay=2, guidance=GuidanceSettings(method))
    lean = policy.predict_action_chunk(batch, **kwargs)
    plan = policy.denoiser.sampling_plan()
    assert plan.cached and plan.lean is not None
    policy.denoiser.use_lean_sampler = False  # the module path, expert cache on
    modules = policy.predict_action_chunk(batch, **kwargs)
    assert policy.denoiser.sampling_plan().cached and policy.denoiser.sampling_plan().lean is None
    policy.denoiser.use_lean_sampler = True
    policy.denoiser.use_expert_cache = False  # routers every step
    routed = policy.predict_action_chunk(batch, **kwargs)
    assert not policy.denoiser.sampling_plan().cached
    assert torch.equal(lean, modules)
    tolerance = 1e-4 if name == "heun-karras" else 1e-5  # Heun's last correction amplifies rounding
    assert (lean - routed).abs().max().item() < tolerance


@pytest.mark.parametrize("method", METHODS)
def test_guided_sampling_works_in_inference_mode(method):
    """The server's forwards run under torch.inference_mode; PiGDM's vector-Jacobian product still runs."""
    policy = make_policy()
    batch, noise, prefix = inputs()
    kwargs = dict(noise=noise, prefix=prefix, delay=1, guidance=GuidanceSettings(method))
    expected = policy.predict_action_chunk(batch, **kwargs)
    policy.denoiser._plan = None  # the plan built inside inference mode this time
    with torch.inference_mode():
        actions = policy.predict_action_chunk(batch, **kwargs)
    assert torch.equal(actions, expected)


@pytest.mark.parametrize("method", METHODS)
def test_action_units_and_normalised_space_agree(method):
    """Two policies that differ only in their action statistics (an affine map of the actions)
    give the same chunk up to that map, for prefixes related by it; and the policy's call is the
    denoiser's on the normalised prefix."""
    a = make_policy()
    scale, shift = torch.tensor([3.0, 0.5, 2.0]), torch.tensor([1.0, -4.0, 0.25])
    b = make_policy(
        (torch.tensor(ACTION_MIN) * scale + shift).tolist(), (torch.tensor(ACTION_MAX) * scale + shift).tolist()
    )
    batch, noise, prefix = inputs()
    settings = GuidanceSettings(method)
    chunk_a = a.predict_action_chunk(batch, noise=noise, prefix=prefix, delay=2, guidance=settings)
    chunk_b = b.predict_action_chunk(batch, noise=noise, prefix=prefix * scale + shift, delay=2, guidance=settings)
    assert torch.allclose(chunk_a * scale + shift, chunk_b, atol=1e-5)
    cond = a.encode_condition(a.check_inputs(batch))
    inpaint = InpaintPrefix.build(a.normalizer.normalize_action(prefix), torch.tensor([2, 2, 2]), 6, settings)
    by_hand = a.normalizer.unnormalize_action(a.denoiser.sample(cond, noise, inpaint=inpaint).clamp(-1, 1))
    assert torch.allclose(chunk_a[:, 2:], by_hand[:, 2:], atol=1e-6)


def test_a_mixture_policy_takes_the_prefix_at_its_datasets_width():
    policy = MoDEPolicy(get_preset("tiny", state_dim=5, action_dim=3, goal_dim=8)).eval()
    stats = {"observation.state": {"mean": [0.0] * 5, "std": [1.0] * 5}}
    policy.set_dataset_normalization(
        {
            "wide": {**stats, "action": {"min": [-1.0, -1.0, -1.0], "max": [1.0, 1.0, 1.0]}},
            "narrow": {**stats, "action": {"min": [0.0, 0.0], "max": [4.0, 2.0]}},
        }
    )
    batch = {"observation.state": torch.randn(2, 5), "goal": torch.randn(2, 8)}
    prefix = torch.tensor([[[1.0, 0.5], [3.0, 1.5]], [[2.0, 2.0], [0.0, 0.0]]])
    chunk = policy.predict_action_chunk(batch, dataset="narrow", prefix=prefix, delay=2)
    assert chunk.shape == (2, 4, 2) and torch.equal(chunk[:, :2], prefix)
    with pytest.raises(DataError, match="prefix has shape"):
        policy.predict_action_chunk(batch, dataset="wide", prefix=prefix, delay=1)


def test_overlap_weights_follow_rtc():
    w = overlap_weights(10, 5, torch.tensor([2, 0]), "exp")  # H = 10, 5 actions overlap, delays 2 and 0
    assert w.shape == (2, 10)
    assert w[0, :2].tolist() == [1.0, 1.0] and (w[:, 5:] == 0).all()
    c = 3 / 4  # row 2 of the first: c_i = (P - i) / (P - d + 1)
    assert w[0, 2].item() == pytest.approx(c * math.expm1(c) / math.expm1(1))
    assert (w[0, 2:5].diff() < 0).all() and (w[1, :5].diff() < 0).all() and w[1, 0] < 1  # decaying, soft
    assert overlap_weights(6, 4, torch.tensor([1]), "linear")[0].tolist() == pytest.approx([1, 0.75, 0.5, 0.25, 0, 0])
    assert overlap_weights(6, 4, torch.tensor([1]), "ones")[0].tolist() == [1, 1, 1, 1, 0, 0]
    assert overlap_weights(6, 4, torch.tensor([1]), "zeros")[0].tolist() == [1, 0, 0, 0, 0, 0]
    # PiGDM's weight is RTC's for sigma_data = 1: sigma * min(beta, (1 + sigma^2) / sigma)
    assert pigdm_weight(80.0, 1.0, 5.0) == pytest.approx(80 * 5)
    assert pigdm_weight(0.1, 1.0, 5.0) == pytest.approx(0.1 * 5)
    assert pigdm_weight(0.5, 1.0, 5.0) == pytest.approx(0.5 * (1 + 0.25) / 0.5)


def test_bad_prefixes_and_settings_are_named():
    policy = make_policy()
    batch, noise, prefix = inputs()
    cases = [
        (dict(prefix=prefix[:, :, :2]), "prefix has shape"),
        (dict(prefix=torch.zeros(3, 7, 3)), "1 <= P <= horizon=6"),
        (dict(prefix=prefix[:2]), "prefix has shape"),
        (dict(prefix=prefix, delay=5), r"delay \[5, 5, 5\] must be in \[0, P=4\]"),
        (dict(prefix=prefix, delay=[1, 2]), "one per row"),
        (dict(prefix=prefix, delay=1.5), "integer"),
        (dict(prefix=prefix, delay=True), "integer"),
        (dict(prefix=prefix.int()), "float"),
        (dict(prefix=torch.full((3, 2, 3), float("nan"))), "NaN"),
        (dict(prefix=[[1.0]]), "tensor or numpy array"),
        (dict(delay=2), "needs the prefix"),
    ]
    for kwargs, message in cases:
        with pytest.raises(DataError, match=message):
            policy.predict_action_chunk(batch, noise=noise, **kwargs)
    chunk = policy.predict_action_chunk(batch, noise=noise, prefix=prefix.numpy().astype(np.float64), delay=np.int64(1))
    assert torch.equal(chunk[:, :1], prefix[:, :1])  # numpy prefixes of any float type, numpy ints
    for bad in (dict(method="dps"), dict(schedule="cosine"), dict(max_weight=-1.0), dict(max_weight=float("inf"))):
        with pytest.raises(ConfigError):
            GuidanceSettings(**bad)
