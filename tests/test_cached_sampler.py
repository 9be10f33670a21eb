"""The lean sampler (mode_policy.model.lean_sampler): the eval path, bitwise equal to the module path
for every configuration it runs, the module path for every configuration it does not."""

import pytest
import torch
from torch import nn

from mode_policy.model.config import get_preset
from mode_policy.model.lean_sampler import build_lean_sampler, unsupported_reason
from mode_policy.policy import MoDEPolicy


def make_policy(**kw) -> MoDEPolicy:
    policy = MoDEPolicy(get_preset("tiny", state_dim=5, action_dim=3, goal_dim=8, **kw))
    with torch.no_grad():  # non-trivial weights everywhere (the output head starts at zero)
        for p in policy.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    policy.set_normalization(
        {
            "action": {"min": [-2.0, 0.0, -1.0], "max": [2.0, 1.0, 3.0]},
            "observation.state": {"mean": [0.1] * 5, "std": [2.0] * 5},
        }
    )
    return policy.eval()


def obs_batch(b: int, n_obs: int = 1) -> dict:
    return {"observation.state": torch.randn(b, n_obs, 5), "goal": torch.randn(b, 8)}


def lean_and_modules(policy: MoDEPolicy, batch: dict, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Actions from the lean sampler and from the module path, for the same noise."""
    lean = policy.predict_action_chunk(batch, noise=noise)
    assert policy.denoiser.sampling_plan().lean is not None
    policy.denoiser.use_lean_sampler = False
    modules = policy.predict_action_chunk(batch, noise=noise)
    assert policy.denoiser.sampling_plan().lean is None
    policy.denoiser.use_lean_sampler = True
    return lean, modules


LEAN_CONFIGS = {
    "default": {},
    "dense": {"routing": "dense"},
    "heun-karras": {"sampler": "heun", "schedule": "karras", "num_inference_steps": 4},
    "dpmpp_2m": {"sampler": "dpmpp_2m"},
    "euler-5-steps": {"sampler": "euler", "num_inference_steps": 5},
    "top-3-of-6": {"num_experts": 6, "top_k": 3},
    "top-1": {"top_k": 1},
    "no-noise-token": {"noise_token": False},
    "no-noise-conditioning": {"noise_conditioning": "none"},
    "bidirectional": {"causal": False},
    "two-obs-steps": {"n_obs_steps": 2},
    "state-groups": {"state_groups": [2, 3]},
}


@pytest.mark.parametrize("name", sorted(LEAN_CONFIGS))
def test_lean_sampler_is_bitwise_the_module_path(name):
    kw = LEAN_CONFIGS[name]
    policy = make_policy(**kw)
    batch, noise = obs_batch(3, kw.get("n_obs_steps", 1)), torch.randn(3, 4, 3)
    lean, modules = lean_and_modules(policy, batch, noise)
    assert torch.equal(lean, modules)
    assert lean.abs().max() > 0.1  # not a trivial chunk


@pytest.mark.parametrize("batch_size", [1, 64])
def test_lean_sampler_matches_the_routed_sampler(batch_size):
    policy = make_policy()
    batch, noise = obs_batch(batch_size), torch.randn(batch_size, 4, 3)
    lean = policy.predict_action_chunk(batch, noise=noise)
    policy.denoiser.use_expert_cache = False  # routers every step, module path
    routed = policy.predict_action_chunk(batch, noise=noise)
    assert policy.denoiser.sampling_plan().lean is None
    assert (lean - routed).abs().max().item() < 1e-5


def test_lean_sampler_follows_the_weights_and_the_mode():
    policy = make_policy()
    batch, noise = obs_batch(2), torch.randn(2, 4, 3)
    plan = policy.denoiser.sampling_plan()
    assert plan.lean is not None and policy.denoiser.sampling_plan() is plan
    before = policy.predict_action_chunk(batch, noise=noise)
    with torch.no_grad():  # weights the expert cache alone would not fingerprint: positions, output head
        policy.denoiser.net.pos_emb.add_(0.1)
        policy.denoiser.net.action_out.weight.mul_(2.0)
    assert policy.denoiser.sampling_plan() is not plan
    lean, modules = lean_and_modules(policy, batch, noise)
    assert torch.equal(lean, modules) and not torch.equal(lean, before)
    policy.train()
    assert policy.denoiser.sampling_plan().lean is None
    assert unsupported_reason(policy.denoiser, policy.denoiser.sampling_plan()) == "training mode"
    policy.eval()
    assert policy.denoiser.sampling_plan().lean is not None


FALLBACKS = {
    "film": ({"noise_conditioning": "film"}, "noise_conditioning='film'"),
    "token routing": ({"routing": "token"}, "token routing"),
    "shared expert": ({"shared_expert": True}, "shared_expert=True"),
}


@pytest.mark.parametrize("name", sorted(FALLBACKS))
def test_configurations_it_does_not_handle_run_the_module_path(name):
    kw, reason = FALLBACKS[name]
    policy = make_policy(**kw)
    batch, noise = obs_batch(2), torch.randn(2, 4, 3)
    actions = policy.predict_action_chunk(batch, noise=noise)
    plan = policy.denoiser.sampling_plan()
    assert plan.lean is None and reason in unsupported_reason(policy.denoiser, plan)
    policy.denoiser.use_lean_sampler = False
    assert torch.equal(actions, policy.predict_action_chunk(batch, noise=noise))


def test_a_setting_it_does_not_know_falls_back_unless_at_its_default(monkeypatch):
    import mode_policy.model.lean_sampler as cs

    monkeypatch.setattr(cs, "HANDLED_FIELDS", cs.HANDLED_FIELDS - {"noise_token"})  # as if the switch were new
    assert make_policy().denoiser.sampling_plan().lean is not None  # at its default: today's network
    policy = make_policy(noise_token=False)
    plan = policy.denoiser.sampling_plan()
    assert plan.lean is None and "noise_token=False" in unsupported_reason(policy.denoiser, plan)


def test_cache_off_and_unknown_parameters_fall_back():
    policy = make_policy()
    policy.denoiser.use_expert_cache = False
    assert "expert cache is off" in unsupported_reason(policy.denoiser, policy.denoiser.sampling_plan())
    policy.denoiser.use_expert_cache = True
    policy.denoiser.net.blocks[1].gate = nn.Parameter(torch.ones(64))  # a module the lean sampler would not run
    plan = policy.denoiser.sampling_plan()
    assert build_lean_sampler(policy.denoiser, plan) is None and plan.lean is None
    assert "blocks.1.gate" in unsupported_reason(policy.denoiser, plan)
