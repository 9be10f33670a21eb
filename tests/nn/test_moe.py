import math

import pytest
import torch

from mode_policy.model.config import get_preset
from mode_policy.model.layers import swiglu
from mode_policy.model.moe import ExpertBank, MoELayer, balancing_loss, choose_experts
from mode_policy.policy import MoDEPolicy


def chosen_experts(policy, sigma, cond, noisy):
    """Expert index per MoE layer (L, B, k) for a forward at noise level sigma (B,)."""
    _, routings = policy.denoiser(noisy, sigma, cond)
    return torch.stack([r.index.sort(-1).values for r in routings])


def tiny_policy(routing="noise", **kw):
    cfg = get_preset("tiny", state_dim=5, action_dim=3, goal_dim=8, routing=routing, **kw)
    return MoDEPolicy(cfg).eval()


def test_expert_choice_depends_only_on_sigma():
    policy = tiny_policy()
    b, h = 4, policy.config.horizon
    sigma = torch.full((b,), 0.7)
    cond_a, cond_b = torch.randn(b, 2, 64), torch.randn(b, 2, 64) * 3
    x_a, x_b = torch.randn(b, h, 3), torch.randn(b, h, 3) * 5
    with torch.no_grad():
        first = chosen_experts(policy, sigma, cond_a, x_a)
        second = chosen_experts(policy, sigma, cond_b, x_b)
        assert torch.equal(first, second)
        # ... and every sample with the same sigma uses the same experts
        assert (first == first[:, :1]).all()
        # Changing sigma changes the choice somewhere in [0.001, 80]
        sweep = torch.logspace(math.log10(0.001), math.log10(80.0), 64)
        choices = chosen_experts(policy, sweep, cond_a[:1].expand(64, -1, -1), x_a[:1].expand(64, -1, -1))
        assert len({tuple(c.flatten().tolist()) for c in choices.transpose(0, 1)}) > 1


def test_token_routing_depends_on_tokens():
    policy = tiny_policy("token")
    b, h = 4, policy.config.horizon
    sigma = torch.full((b,), 0.7)
    with torch.no_grad():
        first = chosen_experts(policy, sigma, torch.randn(b, 2, 64), torch.randn(b, h, 3))
        second = chosen_experts(policy, sigma, torch.randn(b, 2, 64), torch.randn(b, h, 3))
    assert not torch.equal(first, second)


def test_choose_experts_weights_and_sampling():
    probs = torch.softmax(torch.randn(1000, 6), -1)
    for sample in (False, True):
        index, weights = choose_experts(probs, 3, sample=sample)
        assert index.shape == (1000, 3) and weights.shape == (1000, 3)
        assert torch.allclose(weights.sum(-1), torch.ones(1000), atol=1e-6)
        assert all(len(set(row)) == 3 for row in index.tolist())  # without replacement
    top = choose_experts(probs, 2, sample=False)[0]
    assert torch.equal(top.sort(-1).values, probs.topk(2).indices.sort(-1).values)
    # Sampling follows the probabilities: with k=1 the frequency matches p
    p = torch.tensor([[0.7, 0.2, 0.1]]).expand(20_000, -1)
    idx, _ = choose_experts(p, 1, sample=True)
    freq = torch.bincount(idx.flatten(), minlength=3).float() / 20_000
    assert torch.allclose(freq, torch.tensor([0.7, 0.2, 0.1]), atol=0.02)


def test_balancing_loss_formula_and_uniform_value():
    probs = torch.softmax(torch.randn(64, 4), -1)
    index = torch.randint(0, 4, (64, 2))
    f = torch.stack([(index == i).sum() for i in range(4)]).float() / index.numel()
    expected = 4 * (f * probs.mean(0)).sum()
    assert balancing_loss(probs, index).item() == pytest.approx(expected.item(), rel=1e-6)
    uniform = torch.full((8, 4), 0.25)
    balanced_index = torch.tensor([[0, 1], [2, 3]] * 4)
    assert balancing_loss(uniform, balanced_index).item() == pytest.approx(1.0)
    # Collapsed routing costs more than uniform
    collapsed = torch.tensor([[0.9, 0.1 / 3, 0.1 / 3, 0.1 / 3]]).expand(8, -1)
    assert balancing_loss(collapsed, torch.tensor([[0, 1]] * 8)).item() > 1.5


def test_dispatch_matches_per_unit_loop():
    bank = ExpertBank(16, 32, 4)
    torch.nn.init.normal_(bank.w13, std=0.3)
    torch.nn.init.normal_(bank.w2, std=0.3)
    x = torch.randn(7, 5, 16)  # 7 samples of 5 tokens
    index = torch.stack([torch.randperm(4)[:2] for _ in range(7)])
    weights = torch.softmax(torch.randn(7, 2), -1)
    out = bank.dispatch(x, index, weights)
    for u in range(7):
        ref = sum(weights[u, j] * swiglu(x[u], bank.w13[index[u, j]], bank.w2[index[u, j]]) for j in range(2))
        assert torch.allclose(out[u], ref, atol=1e-5)


def test_gradients_reach_router_and_chosen_experts_only():
    layer = MoELayer(16, 32, 4, 2, "noise")
    for p in layer.parameters():
        torch.nn.init.normal_(p, std=0.2)
    layer.eval()  # deterministic top-k so the chosen experts are known
    x, noise_emb = torch.randn(3, 5, 16), torch.randn(1, 16).expand(3, -1)
    y, routing = layer(x, noise_emb)
    (y.square().sum() + balancing_loss(routing.probs, routing.index)).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.router.parameters())
    used = set(routing.index.flatten().tolist())
    assert len(used) == 2
    for e in range(4):
        got_grad = layer.experts.w13.grad[e].abs().sum().item() > 0
        assert got_grad == (e in used)


def test_shared_expert_and_variants_build():
    for routing, shared in [("noise", True), ("token", False), ("dense", False)]:
        policy = tiny_policy(routing, shared_expert=shared).train()
        batch = {
            "observation.state": torch.randn(4, 5),
            "goal": torch.randn(4, 8),
            "action": torch.randn(4, policy.config.horizon, 3),
        }
        loss, info = policy(batch)
        loss.backward()
        assert torch.isfinite(loss)
        if routing == "dense":
            assert "expert_usage" not in info
        else:
            usage = info["expert_usage"]
            assert usage.shape == (2, 4) and torch.allclose(usage.sum(-1), torch.ones(2))
