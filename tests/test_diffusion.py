import math

import pytest
import torch

from mode_policy.model.diffusion import (
    edm_scalings,
    exponential_schedule,
    karras_schedule,
    make_sampler,
    sample_log_logistic_sigma,
    training_target,
)


def test_edm_coefficients_closed_form():
    sd = 0.5
    for s in [0.001, 0.1, 0.5, 1.0, 80.0]:
        c_skip, c_out, c_in, c_noise = edm_scalings(torch.tensor(s, dtype=torch.float64), sd)
        assert c_skip.item() == pytest.approx(sd**2 / (s**2 + sd**2), rel=1e-12)
        assert c_out.item() == pytest.approx(s * sd / math.sqrt(s**2 + sd**2), rel=1e-12)
        assert c_in.item() == pytest.approx(1 / math.sqrt(s**2 + sd**2), rel=1e-12)
        assert c_noise.item() == pytest.approx(math.log(s) / 4, rel=1e-12)


def test_training_target_reconstructs_clean_sample():
    x0 = torch.randn(8, 10, 4, dtype=torch.float64)
    sigma = torch.rand(8, 1, 1, dtype=torch.float64) * 5 + 0.01
    noisy = x0 + sigma * torch.randn_like(x0)
    target = training_target(x0, noisy, sigma, 0.5)
    c_skip, c_out, _, _ = edm_scalings(sigma, 0.5)
    assert torch.allclose(c_skip * noisy + c_out * target, x0, atol=1e-10)
    # Closed form: F* = (x0 - c_skip x) / c_out
    expected = (x0 - 0.25 / (sigma**2 + 0.25) * noisy) / (sigma * 0.5 / (sigma**2 + 0.25).sqrt())
    assert torch.allclose(target, expected, atol=1e-10)


def test_log_logistic_sigma_distribution():
    loc, scale = math.log(0.5), 0.5
    gen = torch.Generator().manual_seed(0)
    s = sample_log_logistic_sigma(200_000, loc, scale, 0.001, 80.0, generator=gen)
    assert s.min() >= 0.001 and s.max() <= 80.0
    # ln(sigma) is logistic(loc, scale): median loc, std scale * pi / sqrt(3) (truncation negligible)
    assert s.log().median().item() == pytest.approx(loc, abs=0.01)
    assert s.log().std().item() == pytest.approx(scale * math.pi / math.sqrt(3), rel=0.02)
    # Truncation works when it bites
    t = sample_log_logistic_sigma(10_000, loc, scale, 0.4, 0.6, generator=gen)
    assert t.min() >= 0.4 and t.max() <= 0.6


def test_schedules():
    e = exponential_schedule(10, 0.001, 80.0)
    assert len(e) == 11 and e[-1] == 0
    assert e[0].item() == pytest.approx(80.0) and e[-2].item() == pytest.approx(0.001)
    ratios = e[1:-1] / e[:-2]
    assert torch.allclose(ratios, ratios[0].expand_as(ratios), rtol=1e-4)  # geometric
    k = karras_schedule(10, 0.001, 80.0, 7.0)
    assert k[0].item() == pytest.approx(80.0) and k[-2].item() == pytest.approx(0.001, rel=1e-4)
    assert (k[1:] < k[:-1]).all()


# --- samplers against the exact denoiser of a 1-D Gaussian mixture ----------
WEIGHTS = torch.tensor([0.3, 0.7], dtype=torch.float64)
MEANS = torch.tensor([-1.0, 1.5], dtype=torch.float64)
STDS = torch.tensor([0.2, 0.3], dtype=torch.float64)


def exact_denoiser(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """E[x0 | x0 + sigma n = x] for the mixture (closed form)."""
    var = STDS**2 + sigma**2  # (K,)
    log_resp = WEIGHTS.log() - 0.5 * (x[:, None] - MEANS) ** 2 / var - 0.5 * var.log()
    resp = log_resp.softmax(-1)  # (N, K)
    post_mean = (MEANS * sigma**2 + x[:, None] * STDS**2) / var
    return (resp * post_mean).sum(-1)


def mixture_moments():
    mean = (WEIGHTS * MEANS).sum()
    var = (WEIGHTS * (STDS**2 + MEANS**2)).sum() - mean**2
    return mean.item(), var.item()


@pytest.mark.parametrize(
    "sampler_name,schedule,steps",
    [("ddim", "exponential", 100), ("euler", "karras", 100), ("heun", "karras", 20), ("dpmpp_2m", "karras", 25)],
)
def test_sampler_reproduces_gaussian_mixture(sampler_name, schedule, steps):
    from mode_policy.model.diffusion import make_schedule

    sampler = make_sampler(sampler_name)
    sigmas = make_schedule(schedule, steps, 0.002, 80.0).double()
    eval_sigmas = sampler.eval_sigmas(sigmas).tolist()
    calls = []

    def denoise(x, j):
        calls.append(j)
        return exact_denoiser(x, eval_sigmas[j])

    gen = torch.Generator().manual_seed(1)
    x = torch.randn(40_000, generator=gen, dtype=torch.float64) * 80.0
    samples = sampler.run(denoise, x, sigmas)
    assert calls == list(range(len(eval_sigmas)))  # evaluation indices in order, each once
    mean, var = mixture_moments()
    assert samples.mean().item() == pytest.approx(mean, abs=0.05)
    assert samples.var().item() == pytest.approx(var, rel=0.05)
    low_mode = (samples < 0.25).double().mean().item()  # the split point between the modes
    assert low_mode == pytest.approx(0.3, abs=0.02)
    # Samples are near a mode, not in between
    assert ((samples > -0.2) & (samples < 0.7)).double().mean().item() < 0.01


def test_ddim_with_paper_defaults_reproduces_mixture():
    """The paper's setting: 10 DDIM steps on the exponential schedule 80 -> 0.001."""
    sampler = make_sampler("ddim")
    sigmas = exponential_schedule(10, 0.001, 80.0).double()
    ev = sampler.eval_sigmas(sigmas).tolist()
    x = torch.randn(40_000, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 80.0
    samples = sampler.run(lambda x, j: exact_denoiser(x, ev[j]), x, sigmas)
    # 10 first-order steps carry a visible discretisation bias, hence the looser tolerance
    assert (samples < 0.25).double().mean().item() == pytest.approx(0.3, abs=0.07)
    assert samples.mean().item() == pytest.approx(mixture_moments()[0], abs=0.1)


def test_unknown_sampler_and_schedule():
    from mode_policy.model.diffusion import make_schedule

    with pytest.raises(ValueError, match="unknown sampler"):
        make_sampler("nope")
    with pytest.raises(ValueError, match="unknown sigma schedule"):
        make_schedule("nope", 10, 0.001, 80)


# --- the EDM denoiser module ---------------------------------------------------
def tiny_denoiser(**kw):
    from mode_policy.model.config import get_preset
    from mode_policy.model.edm import EDMDenoiser

    denoiser = EDMDenoiser(get_preset("tiny", state_dim=5, action_dim=3, goal_dim=8, **kw))
    with torch.no_grad():  # non-trivial weights (the output head starts at zero)
        for p in denoiser.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return denoiser


@pytest.mark.parametrize("cached", [False, True])
def test_planned_noise_levels_give_the_same_denoiser(cached):
    """Sampling's precomputed levels (host floats, fused experts) = D at those sigmas."""
    denoiser = tiny_denoiser(sampler="heun", schedule="karras", num_inference_steps=4).eval()
    denoiser.use_expert_cache = cached
    plan = denoiser.sampling_plan()
    assert plan.cached == cached and len(plan.levels) == len(plan.eval_sigmas) == 7
    x, cond = torch.randn(3, 4, 3), torch.randn(3, 2, 64)
    with torch.no_grad():
        for level, sigma in zip(plan.levels, plan.eval_sigmas.tolist()):
            planned, _ = denoiser(x * sigma, level, cond)
            direct, routings = denoiser(x * sigma, torch.full((3,), sigma), cond)
            assert len(routings) == 2
            assert torch.allclose(planned, direct, atol=1e-5)


def test_denoiser_is_the_edm_preconditioned_network():
    denoiser = tiny_denoiser().eval()
    sigma = torch.tensor([0.01, 0.5, 20.0])
    x, cond = torch.randn(3, 4, 3) * sigma.view(3, 1, 1), torch.randn(3, 2, 64)
    c_skip, c_out, c_in, c_noise = (c.view(3, 1, 1) for c in edm_scalings(sigma, 0.5))
    with torch.no_grad():
        d, _ = denoiser(x, sigma, cond)
        f, _ = denoiser.net(x * c_in, denoiser.net.sigma_embed(c_noise.view(3, 1)), cond)
    assert torch.allclose(d, c_skip * x + c_out * f, atol=1e-6)


def test_training_loss_is_the_weighted_denoising_error():
    """loss = ||D(x0 + sigma n) - x0||^2 / c_out^2 with sigma from the training distribution."""
    denoiser = tiny_denoiser(routing="dense")
    cfg = denoiser.config
    x0, cond = torch.rand(5, 4, 3) * 2 - 1, torch.randn(5, 2, 64)
    torch.manual_seed(4)
    err, routings = denoiser.loss(x0, cond)
    assert err.shape == (5, 4) and routings == []
    torch.manual_seed(4)
    sigma = sample_log_logistic_sigma(5, cfg.train_sigma_loc, cfg.train_sigma_scale, cfg.sigma_min, cfg.sigma_max)
    noisy = x0 + torch.randn_like(x0) * sigma.view(5, 1, 1)
    d, _ = denoiser(noisy, sigma, cond)
    c_out = edm_scalings(sigma, cfg.sigma_data)[1].view(5, 1, 1)
    expected = ((d - x0) / c_out).pow(2).mean(-1)
    assert torch.allclose(err, expected, rtol=1e-3, atol=1e-5)
