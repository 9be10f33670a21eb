"""``EDMDenoiser.precision = "bf16"`` on the default architecture's lean sampler: close to float32,
exact in its own precision (each step = the bfloat16 network routed every step), one cast per
expert bank shared by every step, and float32 untouched when switched back."""

import pytest
import torch

from mode_policy.errors import ConfigError
from mode_policy.model.config import get_preset
from mode_policy.model.edm import EDMDenoiser, cpu_has_bf16
from mode_policy.policy import MoDEPolicy

pytestmark = pytest.mark.filterwarnings("ignore:precision='bf16' on a CPU without")


def make_policy(**kw) -> MoDEPolicy:
    torch.manual_seed(0)
    policy = MoDEPolicy(get_preset("tiny", state_dim=5, action_dim=3, goal_dim=8, **kw))
    with torch.no_grad():  # non-trivial weights everywhere (the output head starts at zero)
        for p in policy.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return policy.eval()


def batch(b: int) -> dict:
    gen = torch.Generator().manual_seed(1)
    return {"observation.state": torch.randn(b, 1, 5, generator=gen), "goal": torch.randn(b, 8, generator=gen)}


@pytest.mark.parametrize("kw", [{}, {"num_experts": 6, "top_k": 3}, {"routing": "dense"}])
def test_bf16_actions_are_close_to_fp32_and_fp32_comes_back_bitwise(kw):
    policy = make_policy(**kw)
    obs, noise = batch(4), torch.randn(4, 4, 3)
    fp32 = policy.predict_action_chunk(obs, noise=noise)
    policy.denoiser.precision = "bf16"
    bf16 = policy.predict_action_chunk(obs, noise=noise)
    lean = policy.denoiser.sampling_plan().lean
    assert lean.dtype == torch.bfloat16 and lean.layers[0].qkv.dtype == torch.bfloat16
    err = (bf16 - fp32).abs().max().item()
    assert 1e-6 < err < 0.02 * fp32.abs().max().item()  # really bfloat16, and close
    for back in ("fp32", None):  # float32 explicitly, or the weights' own dtype: the float32 path, bitwise
        policy.denoiser.precision = back
        assert torch.equal(policy.predict_action_chunk(obs, noise=noise), fp32)


def test_a_bfloat16_model_samples_in_its_own_dtype_by_default():
    """precision None reads a bfloat16 model's weights as they are (views, no float32 copies);
    precision="bf16" on it is the same plan."""
    policy = make_policy().to(torch.bfloat16)
    obs, noise = batch(2), torch.randn(2, 4, 3)
    actions = policy.predict_action_chunk(obs, noise=noise)
    lean = policy.denoiser.sampling_plan().lean
    params = {p.untyped_storage().data_ptr() for p in policy.denoiser.parameters()}
    assert lean.dtype == torch.bfloat16 and lean.layers[0].qkv.untyped_storage().data_ptr() in params
    policy.denoiser.precision = "bf16"
    assert torch.equal(policy.predict_action_chunk(obs, noise=noise), actions)


def test_bf16_steps_equal_the_bf16_network_routed_every_step():
    policy = make_policy()
    denoiser = policy.denoiser
    denoiser.precision = "bf16"
    plan = denoiser.sampling_plan()
    reference = EDMDenoiser(denoiser.config)
    reference.load_state_dict(denoiser.state_dict())
    reference = reference.to(torch.bfloat16).eval()
    reference.use_expert_cache = False
    cond = torch.randn(3, 2, denoiser.config.d_model)
    x = torch.randn(3, 4, 3)
    prefix, action_pos = plan.lean.chunk_rows(cond, 4)
    with torch.no_grad():
        for j, sigma in enumerate(plan.eval_sigmas.tolist()):
            lean = plan.lean.denoise(x * sigma, j, prefix, action_pos)
            level = reference.noise_level(torch.full((3,), sigma))
            out, routings = reference.net((x * sigma * level.c_in).to(torch.bfloat16), level.noise_emb, cond.bfloat16())
            routed = x * sigma * level.c_skip + out.float() * level.c_out
            assert routings  # the reference routes
            assert (lean - routed).abs().max() <= 0.02 * routed.abs().max(), j


def test_one_cast_per_expert_bank_shared_by_every_step():
    """Each float32 source of the fused experts (a bank, or for k=3 a copied combination) is cast
    once, and every step that uses it reads that one bfloat16 copy."""
    policy = make_policy(num_experts=6, top_k=3)
    denoiser = policy.denoiser
    denoiser.precision = "bf16"
    plan = denoiser.sampling_plan()
    for w in ("w13", "w2"):
        fp32 = {getattr(f, w).untyped_storage().data_ptr() for level in plan.levels for f in level.fused}
        bf16 = {getattr(f, w).untyped_storage().data_ptr() for step in plan.lean.steps for f in step.experts}
        assert len(bf16) == len(fp32)
        assert bf16.isdisjoint({p.untyped_storage().data_ptr() for p in denoiser.parameters()})
        assert all(getattr(f, w).dtype == torch.bfloat16 for step in plan.lean.steps for f in step.experts)


def test_bf16_needs_the_lean_sampler_and_says_so():
    policy = make_policy(shared_expert=True)  # a configuration the default lean sampler does not run
    policy.denoiser.precision = "bf16"
    with pytest.raises(ConfigError, match="precision='bf16' runs on the lean sampler.*shared_expert=True"):
        policy.predict_action_chunk(batch(1))


@pytest.mark.skipif(cpu_has_bf16(), reason="this CPU has bfloat16 hardware")
def test_bf16_without_hardware_warns():
    policy = make_policy()
    policy.denoiser.precision = "bf16"
    with pytest.warns(UserWarning, match="without AVX512-BF16 or AMX"):
        policy.denoiser.sampling_plan()


def test_bench_latency_precision_option():
    from mode_policy.bench.latency import bench_latency, build_variants

    variants = build_variants(get_preset("tiny", state_dim=5, action_dim=3), expert_counts=(), precision="bf16")
    assert variants["mode_cached_bf16"].denoiser.precision == "bf16"
    assert variants["mode_cached"].denoiser.precision is None  # the weights' own dtype
    with pytest.raises(ConfigError, match="precision='fp8'"):
        bench_latency("tiny", precision="fp8")
