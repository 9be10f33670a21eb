"""The ablation switches of MoDEConfig (noise token, noise conditioning, experts, top-k):
each changes what it claims (parameters, what the attention sees) and nothing else, and
the expert cache stays exact for every variant."""

import pytest
import torch

from mode_policy.errors import ConfigError
from mode_policy.model.config import MoDEConfig, get_preset
from mode_policy.model.layers import modulate
from mode_policy.policy import MoDEPolicy

D, LAYERS = 64, 2  # the tiny preset


def make_policy(**kw) -> MoDEPolicy:
    policy = MoDEPolicy(get_preset("tiny", state_dim=5, action_dim=3, goal_dim=8, **kw))
    with torch.no_grad():  # non-trivial weights everywhere (output head and FiLM maps start at zero)
        for p in policy.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return policy


def obs_batch(b: int) -> dict:
    return {"observation.state": torch.randn(b, 5), "goal": torch.randn(b, 8)}


def shapes(policy: MoDEPolicy) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in policy.state_dict().items()}


def count(policy: MoDEPolicy) -> tuple[int, int]:
    c = policy.parameter_counts()
    return c["total_params"], c["active_params"]


def test_defaults_are_the_paper_model():
    cfg = MoDEConfig()
    assert cfg.noise_token and cfg.noise_conditioning == "attention"
    # a config.json written before the switches existed loads with today's behaviour
    old = cfg.to_dict()
    del old["noise_token"], old["noise_conditioning"]
    assert MoDEConfig.from_dict(old) == cfg


def test_noise_token_off_drops_one_token_and_its_position():
    base, off = make_policy(), make_policy(noise_token=False)
    diff = {k: (shapes(base)[k], s) for k, s in shapes(off).items() if shapes(base)[k] != s}
    assert set(shapes(base)) == set(shapes(off))
    n = base.config.n_tokens
    assert off.config.n_tokens == n - 1
    assert diff == {"denoiser.net.pos_emb": ((1, n, D), (1, n - 1, D))}
    assert count(base)[0] - count(off)[0] == D


def test_noise_conditioning_none_keeps_every_parameter():
    assert shapes(make_policy()) == shapes(make_policy(noise_conditioning="none"))


def test_film_adds_one_modulation_map_per_block():
    base, film = shapes(make_policy()), shapes(make_policy(noise_conditioning="film"))
    extra = {k: v for k, v in film.items() if k not in base}
    assert set(base) <= set(film)
    assert all(film[k] == base[k] for k in base)
    assert extra == {
        **{f"denoiser.net.blocks.{i}.film.proj.weight": (4 * D, D) for i in range(LAYERS)},
        **{f"denoiser.net.blocks.{i}.film.proj.bias": (4 * D,) for i in range(LAYERS)},
    }


def test_film_starts_as_the_identity_and_learns():
    film = MoDEPolicy(get_preset("tiny", state_dim=5, action_dim=3, goal_dim=8, noise_conditioning="film"))
    for block in film.denoiser.net.blocks:
        assert not block.film.proj.weight.any() and not block.film.proj.bias.any()
    # at init a FiLM model computes exactly what the unconditioned blocks compute with the same weights
    none = make_policy(noise_conditioning="none")
    film.load_state_dict({**film.state_dict(), **none.state_dict()})
    film.eval(), none.eval()
    none.denoiser.use_lean_sampler = False  # the same (module) path for both
    batch, noise = obs_batch(3), torch.randn(3, 4, 3)
    assert torch.equal(film.predict_action_chunk(batch, noise=noise), none.predict_action_chunk(batch, noise=noise))
    # ... and the zero maps get gradients
    film.train()
    loss, _ = film({**batch, "action": torch.randn(3, 4, 3).clamp(-1, 1)})
    loss.backward()
    assert all(b.film.proj.weight.grad.abs().sum() > 0 for b in film.denoiser.net.blocks)


def attention_inputs(policy: MoDEPolicy, sigma: float, module: str = "attn") -> list[torch.Tensor]:
    """What each block's attention (or MLP) receives for fixed tokens at noise level ``sigma``."""
    net, seen = policy.denoiser.net, []
    hooks = [
        getattr(b, module).register_forward_pre_hook(lambda m, args: seen.append(args[0].clone())) for b in net.blocks
    ]
    torch.manual_seed(0)
    x, cond = torch.randn(2, 4, 3), torch.randn(2, 2, D)
    with torch.no_grad():
        policy.denoiser(x, torch.full((2,), sigma), cond)
    for h in hooks:
        h.remove()
    return seen


def test_noise_conditioned_attention_adds_phi_to_every_token():
    policy = make_policy().eval()
    net = policy.denoiser.net
    low, high = attention_inputs(policy, 0.01), attention_inputs(policy, 10.0)
    assert low[0].shape[1] == policy.config.n_tokens
    assert (low[0] - high[0]).abs().amax(-1).min() > 0  # every token's attention input moves with sigma
    # exactly RMSNorm(x) + phi: recompute block 0's input from the sequence
    phi = policy.denoiser.noise_level(torch.full((2,), 0.01)).noise_emb
    torch.manual_seed(0)
    x, cond = torch.randn(2, 4, 3), torch.randn(2, 2, D)
    c_in = policy.denoiser.noise_level(torch.full((2,), 0.01)).c_in
    seq = torch.cat([phi.unsqueeze(1), cond, net.action_in(x * c_in)], 1) + net.pos_emb
    torch.testing.assert_close(low[0], net.blocks[0].norm1(seq) + phi.unsqueeze(1))


@pytest.mark.parametrize("noise_token", [True, False])
def test_without_noise_conditioning_attention_sees_phi_only_as_a_token(noise_token):
    policy = make_policy(noise_conditioning="none", noise_token=noise_token).eval()
    low, high = attention_inputs(policy, 0.01), attention_inputs(policy, 10.0)
    assert low[0].shape[1] == policy.config.n_tokens  # counts the noise token only when there is one
    first = 1 if noise_token else 0
    # block 0: goal, observation and action tokens are the same at both noise levels (the action
    # tokens only through c_in, so compare goal and observation tokens) ...
    torch.testing.assert_close(low[0][:, first : first + 2], high[0][:, first : first + 2], rtol=0, atol=0)
    if noise_token:  # ... and the noise token is what differs
        assert (low[0][:, 0] - high[0][:, 0]).abs().max() > 0


def test_film_modulates_attention_and_mlp_inputs():
    policy = make_policy(noise_conditioning="film").eval()
    net = policy.denoiser.net
    low, high = attention_inputs(policy, 0.01), attention_inputs(policy, 10.0)
    first = 1  # goal and observation tokens: their sequence entries do not depend on sigma
    assert (low[0][:, first : first + 2] - high[0][:, first : first + 2]).abs().max() > 0
    # exactly FiLM(RMSNorm(x)) with nothing added
    phi = policy.denoiser.noise_level(torch.full((2,), 0.01)).noise_emb
    torch.manual_seed(0)
    x, cond = torch.randn(2, 4, 3), torch.randn(2, 2, D)
    c_in = policy.denoiser.noise_level(torch.full((2,), 0.01)).c_in
    seq = torch.cat([phi.unsqueeze(1), cond, net.action_in(x * c_in)], 1) + net.pos_emb
    (scale, shift), _ = net.blocks[0].film(phi)
    torch.testing.assert_close(low[0], modulate(net.blocks[0].norm1(seq), scale, shift))
    mlp_low, mlp_high = attention_inputs(policy, 0.01, "mlp"), attention_inputs(policy, 10.0, "mlp")
    assert len(mlp_low) == LAYERS and (mlp_low[0] - mlp_high[0]).abs().max() > 0


def test_num_experts_changes_the_bank_and_the_router_only():
    four, eight = make_policy(), make_policy(num_experts=8)
    a, b = shapes(four), shapes(eight)
    changed = {k for k in a if a[k] != b[k]}
    assert set(a) == set(b)
    assert changed == {
        f"denoiser.net.blocks.{i}.mlp.{name}"
        for i in range(LAYERS)
        for name in ("experts.w13", "experts.w2", "router.net.2.weight", "router.net.2.bias")
    }
    per_expert = 3 * D * 4 * D
    router_out = 2 * D + 1  # one more output row of the router per expert
    total_gap = count(eight)[0] - count(four)[0]
    assert total_gap == LAYERS * 4 * (per_expert + router_out)
    # top-2 of either: the same experts' worth of active parameters (plus the router rows)
    assert count(eight)[1] - count(four)[1] == LAYERS * 4 * router_out


@pytest.mark.parametrize("top_k", [1, 2, 3, 4])
def test_top_k_changes_active_parameters_and_experts_used(top_k):
    policy = make_policy(top_k=top_k)
    reference = make_policy(top_k=2)
    assert shapes(policy) == shapes(reference)
    per_expert = 3 * D * 4 * D
    assert count(policy)[0] == count(reference)[0]
    assert count(policy)[1] - count(reference)[1] == LAYERS * (top_k - 2) * per_expert
    batch = {**obs_batch(6), "action": torch.randn(6, 4, 3).clamp(-1, 1)}
    _, info = policy(batch)  # training: k experts sampled without replacement per sample
    assert info["expert_usage"].shape == (LAYERS, 4)
    cond = policy.encode_condition(batch)
    _, routings = policy.denoiser(torch.randn(6, 4, 3), torch.full((6,), 0.5), cond)
    for r in routings:
        assert r.index.shape == (6, top_k)
        assert all(len(set(row)) == top_k for row in r.index.tolist())


CACHED_VARIANTS = {
    "default": {},
    "no-noise-token": {"noise_token": False},
    "no-noise-attention": {"noise_conditioning": "none"},
    "no-conditioning-no-token": {"noise_conditioning": "none", "noise_token": False},
    "film": {"noise_conditioning": "film"},
    "film-no-token": {"noise_conditioning": "film", "noise_token": False},
    "top-1": {"top_k": 1},
    "top-3": {"top_k": 3},
    "8-experts": {"num_experts": 8},
    "8-experts-top-3": {"num_experts": 8, "top_k": 3},
    "shared-expert": {"shared_expert": True},
    "state-groups": {"state_groups": [3, 2]},
}


@pytest.mark.parametrize("name", sorted(CACHED_VARIANTS))
def test_expert_cache_is_exact_for_every_variant(name):
    policy = make_policy(**CACHED_VARIANTS[name]).eval()
    denoiser = policy.denoiser
    batch, noise = obs_batch(5), torch.randn(5, 4, 3)
    cached = policy.predict_action_chunk(batch, noise=noise)  # the default eval path
    denoiser.use_lean_sampler = False  # the module path, with the fused experts of nn/expert_cache
    cached_modules = policy.predict_action_chunk(batch, noise=noise)
    plan = denoiser.sampling_plan()
    assert plan.cached and len(plan.levels[0].fused) == LAYERS
    assert all(f.w13.shape[0] == policy.config.top_k for f in plan.levels[0].fused)
    denoiser.use_expert_cache = False
    routed = policy.predict_action_chunk(batch, noise=noise)
    assert not denoiser.sampling_plan().cached
    assert (cached_modules - routed).abs().max().item() < 1e-5
    assert (cached - routed).abs().max().item() < 1e-5


@pytest.mark.parametrize("routing", ["token", "dense"])
def test_switches_work_without_the_cache(routing):
    policy = make_policy(routing=routing, noise_conditioning="film", noise_token=False).eval()
    actions = policy.predict_action_chunk(obs_batch(2), noise=torch.randn(2, 4, 3))
    assert actions.shape == (2, 4, 3) and torch.isfinite(actions).all()
    assert not policy.denoiser.sampling_plan().cached


def test_bad_switch_values_are_refused():
    with pytest.raises(ConfigError, match="noise_conditioning='adaln'"):
        MoDEConfig(noise_conditioning="adaln")
    with pytest.raises(ConfigError, match="blind to the noise level"):
        MoDEConfig(noise_token=False, noise_conditioning="none", routing="dense")
    with pytest.raises(ConfigError, match="noise_token"):
        MoDEConfig(noise_token="no")
    MoDEConfig(noise_token=False, noise_conditioning="none")  # noise routing still sees sigma


def test_state_groups_give_each_slice_its_own_token():
    base, grouped = make_policy(), make_policy(state_groups=[3, 2]).eval()
    assert grouped.config.n_tokens == base.config.n_tokens + 1
    batch = obs_batch(4)
    with torch.no_grad():
        tokens = grouped.encode_condition(batch)  # (B, goal + 2 state tokens, d)
        moved = dict(batch, **{"observation.state": batch["observation.state"].clone()})
        moved["observation.state"][:, 3:] += 1.0  # only the second slice changes
        changed = (grouped.encode_condition(moved) - tokens).abs().amax(dim=(0, 2))
    assert tokens.shape == (4, 3, D)
    assert changed[0] == 0 and changed[1] == 0 and changed[2] > 0  # goal, first slice: untouched
    assert {k for k in shapes(grouped) if k.startswith("state_encoder")} == {
        f"state_encoder.groups.{i}.net.{j}.{p}" for i in (0, 1) for j in (0, 2) for p in ("weight", "bias")
    }


@pytest.mark.parametrize("groups", [[5, 0], [5]])
def test_state_groups_must_be_two_or_more_widths(groups):
    with pytest.raises(ConfigError, match="state_groups="):
        MoDEConfig(state_dim=5, state_groups=groups)


def test_state_groups_must_sum_to_the_state_when_the_policy_is_built():
    config = MoDEConfig(state_dim=5, state_groups=[3, 3])  # training sets state_dim from the data later
    with pytest.raises(ConfigError, match=r"sum to 6, the state has 5 values"):
        MoDEPolicy(config)
