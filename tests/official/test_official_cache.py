"""The expert cache of the official architecture (biased experts, the always-on shared expert):
cached sampling equals routed sampling and the official code's outputs (tests/fixtures/official,
made by the official code), the cache is really used, holds no weight copies, and the bf16
precision stays close to float32 and exact in its own precision."""

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F
from official_parity import FIXTURE, VARIANTS
from safetensors.torch import load_file

from mode_policy.errors import ConfigError
from mode_policy.model.config import MoDEConfig
from mode_policy.model.edm import EDMDenoiser
from mode_policy.model.guidance import GuidanceSettings, InpaintPrefix
from mode_policy.official import network
from mode_policy.official.convert import canonical_names, tensor_rules
from mode_policy.official.lean_sampler import OfficialLeanSampler

TOLERANCE = 1e-5
NET = "denoiser."
pytestmark = pytest.mark.filterwarnings("ignore:precision='bf16' on a CPU without")


def fixture_config(meta: dict) -> MoDEConfig:
    kw = meta["official_kwargs"]
    return MoDEConfig(
        architecture="official",
        state_dim=0,
        image_keys=["observation.images.static", "observation.images.gripper"],
        vision_depth=50,
        vision_width=kw["obs_dim"] // 32,
        d_model=kw["embed_dim"],
        n_layers=kw["n_layers"],
        n_heads=kw["n_heads"],
        num_experts=kw["num_experts"],
        top_k=meta["top_k"],
        shared_expert=meta["shared_expert"],
        goal_dim=kw["goal_dim"],
        action_dim=kw["action_dim"],
        horizon=kw["action_seq_len"],
        n_action_steps=kw["action_seq_len"],
    )


def fixture_denoiser(variant: str) -> tuple[EDMDenoiser, torch.Tensor, dict]:
    """The fixture's official weights in our denoiser (the converter's tensor rules), the
    [goal, cameras] tokens of its inputs (official projections), and its reference outputs."""
    meta = json.loads((FIXTURE / variant / "meta.json").read_text())
    tensors, _ = canonical_names(load_file(str(FIXTURE / variant / "official.safetensors")))
    cfg = fixture_config(meta)
    denoiser = EDMDenoiser(cfg)
    state = {
        name[len(NET) :]: build(*(tensors[s] for s in sources))
        for name, (sources, build) in tensor_rules(cfg, {}).items()
        if name.startswith(NET)
    }
    denoiser.load_state_dict(state)
    ref = load_file(str(FIXTURE / variant / "reference.safetensors"))
    goal_emb, tok_emb = (tensors[f"model.inner_model.{n}.weight"] for n in ("goal_emb", "tok_emb"))
    cond = torch.cat([F.linear(ref["goal"], goal_emb).unsqueeze(1), F.linear(ref["state_images"], tok_emb)], 1)
    return denoiser.eval(), cond, ref


CACHED_PATHS = ((True, True), (True, False), (False, False))  # (cache, lean sampler): lean, modules, routed


def sample(
    denoiser: EDMDenoiser, cond: torch.Tensor, noise: torch.Tensor, cached: bool, lean: bool, inpaint=None
) -> torch.Tensor:
    denoiser.use_expert_cache, denoiser.use_lean_sampler = cached, lean
    out = denoiser.sample(cond, noise, inpaint=inpaint)
    assert denoiser.sampling_plan().cached == cached
    assert isinstance(denoiser.sampling_plan().lean, OfficialLeanSampler) == (cached and lean)
    return out


@pytest.mark.parametrize("variant", VARIANTS)
def test_cached_sampling_equals_routed_and_the_official_code(variant):
    denoiser, cond, ref = fixture_denoiser(variant)
    assert denoiser.use_expert_cache  # on by default for the official architecture too
    routed = sample(denoiser, cond, ref["noise"], cached=False, lean=False)
    for lean in (True, False):
        cached = sample(denoiser, cond, ref["noise"], cached=True, lean=lean)
        assert (cached - routed).abs().max() < TOLERANCE
        assert (cached - ref["sample"]).abs().max() < TOLERANCE  # the official code's 10-step DDIM
    assert (routed - ref["sample"]).abs().max() < TOLERANCE
    assert ref["sample"].abs().max() > 0.5


@pytest.mark.parametrize("variant", VARIANTS)
def test_planned_levels_give_the_routed_denoiser(variant):
    """Every planned step's fused experts (shared expert folded in) = the routed network there."""
    denoiser, cond, ref = fixture_denoiser(variant)
    plan = denoiser.sampling_plan()
    x = ref["x"]
    with torch.no_grad():
        for level, sigma in zip(plan.levels, plan.eval_sigmas.tolist()):
            cached, none = denoiser(x * sigma, level, cond)
            routed, routings = denoiser(x * sigma, torch.full((x.shape[0],), sigma), cond)
            assert none == [] and len(routings) == denoiser.config.n_layers
            assert (cached - routed).abs().max() < TOLERANCE
    shared = denoiser.config.shared_expert
    assert all(len(f.experts) == 2 for f in plan.levels[0].fused)  # top-2, or top-1 routed + shared
    assert all((f.experts[-1].weight == 1.0) == shared for f in plan.levels[0].fused)


@pytest.mark.parametrize("method", ["replace", "pigdm"])
def test_guided_sampling_runs_the_cache_exactly(method):
    """Real-time chunking on the cached official path (PiGDM differentiates through the lean
    sampler): the same chunk as the module path and as routing every step."""
    denoiser, cond, ref = fixture_denoiser("shared")
    prefix = torch.randn(3, 2, denoiser.config.action_dim) * 0.5
    settings = GuidanceSettings(method=method)
    inpaint = InpaintPrefix.build(prefix, torch.tensor([1, 2, 1]), denoiser.config.horizon, settings)
    chunks = [sample(denoiser, cond, ref["noise"], cached, lean, inpaint) for cached, lean in CACHED_PATHS]
    for chunk in chunks[1:]:
        assert (chunk - chunks[0]).abs().max() < TOLERANCE
    assert torch.equal(chunks[0][0, :1], prefix[0, :1])  # the frozen action is kept


def test_the_cache_is_really_used(monkeypatch):
    """Once planned, cached sampling calls neither a router nor the routed dispatch, on the lean and
    the module path; with the cache off the same patches fire (they would catch a silent fallback)."""
    denoiser, cond, ref = fixture_denoiser("shared")
    for lean in (True, False):
        denoiser.use_lean_sampler = lean
        denoiser.sampling_plan()  # built before the patches (the build reads the routers)

        def refuse(*args, **kwargs):
            raise AssertionError("routed path called during cached sampling")

        with monkeypatch.context() as m:
            m.setattr(network.OfficialRouter, "forward", refuse)
            m.setattr(network.OfficialExperts, "dispatch", refuse)
            m.setattr(network.OfficialMoE, "forward", refuse)
            denoiser.sample(cond, ref["noise"])
            denoiser.use_expert_cache = False
            with pytest.raises(AssertionError, match="routed path"):
                denoiser.sample(cond, ref["noise"])
        denoiser.use_expert_cache = True


def expert_bytes(denoiser: EDMDenoiser) -> int:
    return sum(
        p.numel() * p.element_size()
        for layer in denoiser.net.moe_layers()
        for bank in (layer.experts, layer.shared)
        if bank is not None
        for p in bank.parameters()
    )


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_cache_holds_views_not_copies(variant):
    """Every fused expert is a view of its bank (the official code copies two experts per step and
    layer); the plan owns only the noise token's keys and values and the phi-folded q/k/v biases:
    5 vectors of d floats per layer and step."""
    denoiser, cond, ref = fixture_denoiser(variant)
    plan = denoiser.sampling_plan()
    cfg = denoiser.config
    banks = [(layer.experts, layer.shared) for layer in denoiser.net.moe_layers()]
    assert plan.cache_bytes == 0
    assert plan.lean.owned_bytes() == 5 * cfg.d_model * cfg.n_layers * len(plan.levels) * 4
    for level in plan.levels:
        for fused, (experts, shared) in zip(level.fused, banks):
            storages = {b.w_in.untyped_storage().data_ptr() for b in (experts, shared) if b is not None}
            assert all(e.w_in.untyped_storage().data_ptr() in storages for e in fused.experts)


def test_cache_memory_over_expert_weights_at_the_harness_width():
    """d=256, 4 layers, 4 experts (the speed harness): cache memory / expert weights <= 1.05
    counting the experts themselves, i.e. what the plan owns is under 5 % of them (0.4 %)."""
    denoiser = randomised(paper_layout(n_layers=4, d_model=256, n_heads=4))
    plan = denoiser.sampling_plan()
    ratio = (expert_bytes(denoiser) + plan.cache_bytes + plan.lean.owned_bytes()) / expert_bytes(denoiser)
    assert ratio < 1.005


def test_bf16_is_close_to_fp32_and_shares_one_cast_per_bank():
    denoiser, cond, ref = fixture_denoiser("experts")
    fp32 = denoiser.sample(cond, ref["noise"])
    denoiser.precision = "bf16"
    bf16 = denoiser.sample(cond, ref["noise"])
    assert bf16.dtype == torch.float32
    err = (bf16 - fp32).abs().max().item()
    assert 1e-5 < err < 0.05 * fp32.abs().max().item()  # really bfloat16, and close
    lean = denoiser.sampling_plan().lean
    assert lean.layers[0].wq.dtype == torch.bfloat16
    # steps that route the same experts share them: each bank is cast once (half its float32 bytes)
    plan = denoiser.sampling_plan()
    cast_banks = {e.w_in.untyped_storage().data_ptr() for level in plan.levels for f in level.fused for e in f.experts}
    assert len(cast_banks) == denoiser.config.n_layers  # one cast bank per layer, whatever the steps route
    assert lean.owned_bytes() < 0.51 * sum(p.numel() * 4 for p in denoiser.net.parameters())


def test_bf16_is_exact_in_its_own_precision():
    """Each bf16 step = the network with bfloat16 weights and activations routed every step
    (module path), to bfloat16 rounding: the cache adds no error of its own."""
    denoiser, cond, ref = fixture_denoiser("shared")
    denoiser.precision = "bf16"
    plan = denoiser.sampling_plan()
    reference = EDMDenoiser(denoiser.config)
    reference.load_state_dict(denoiser.state_dict())
    reference = reference.to(torch.bfloat16).eval()
    reference.use_expert_cache = False
    x = ref["x"]
    prefix = plan.lean.prefix_rows(cond)
    with torch.no_grad():
        for j, sigma in enumerate(plan.eval_sigmas.tolist()):
            lean = plan.lean.denoise(x * sigma, j, prefix)
            level = reference.noise_level(torch.full((x.shape[0],), sigma))
            scaled = (x * sigma * level.c_in).to(torch.bfloat16)
            out, _ = reference.net(scaled, level.noise_emb, cond.to(torch.bfloat16))
            routed = x * sigma * level.c_skip + out.float() * level.c_out
            scale = routed.abs().max()
            assert (lean - routed).abs().max() < 0.03 * scale, j


def test_what_cannot_be_cached_says_so():
    denoiser, cond, ref = fixture_denoiser("experts")
    denoiser.use_lean_sampler = False
    denoiser.precision = "bf16"
    with pytest.raises(ConfigError, match="precision='bf16' runs on the lean sampler.*use_lean_sampler=False"):
        denoiser.sample(cond, ref["noise"])
    with pytest.raises(ConfigError, match="precision='fp16'"):
        denoiser.precision = "fp16"
    token = EDMDenoiser(dataclasses.replace(MoDEConfig(), routing="token"))
    assert not token.use_expert_cache
    with pytest.raises(ConfigError, match="use_expert_cache=True: routing='token'"):
        token.use_expert_cache = True


def randomised(cfg: MoDEConfig, seed: int = 0) -> EDMDenoiser:
    """An official-layout denoiser with random weights where the official init is constant
    (norm gains, biases, positions) and routers that switch experts along the schedule."""
    torch.manual_seed(seed)
    denoiser = EDMDenoiser(cfg).eval()
    with torch.no_grad():
        for name, p in denoiser.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.1 * torch.randn_like(p))
            elif "router" in name:
                p.copy_(0.3 * torch.randn_like(p))
            elif name.endswith(("bias", "b_in", "pos_emb")):
                p.copy_(0.1 * torch.randn_like(p))
    return denoiser


def paper_layout(**overrides) -> MoDEConfig:
    base = dict(fixture_config(json.loads((FIXTURE / "experts" / "meta.json").read_text())).__dict__)
    base.update(n_layers=12, d_model=1024, n_heads=8, goal_dim=512, action_dim=7, horizon=10, n_action_steps=10)
    base.update(vision_width=64, **overrides)
    return MoDEConfig(**base)


def check_cached_equals_routed(cfg: MoDEConfig, batch: int) -> None:
    denoiser = randomised(cfg)
    cond = torch.randn(batch, 3, cfg.d_model)
    noise = torch.randn(batch, cfg.horizon, cfg.action_dim)
    with torch.no_grad():
        routed = sample(denoiser, cond, noise, cached=False, lean=False)
        lean = sample(denoiser, cond, noise, cached=True, lean=True)
        modules = sample(denoiser, cond, noise, cached=True, lean=False)
    scale = routed.abs().max()
    assert scale > 0.1
    assert (lean - routed).abs().max() < TOLERANCE * max(1.0, scale)
    assert (modules - routed).abs().max() < TOLERANCE * max(1.0, scale)


@pytest.mark.parametrize("shared", [False, True])
def test_twelve_layers_cached_equals_routed(shared):
    """The paper's depth (12 layers), narrow: what the slow test checks at d=1024."""
    check_cached_equals_routed(paper_layout(d_model=64, n_heads=4, shared_expert=shared), batch=3)


@pytest.mark.slow
@pytest.mark.parametrize("shared", [False, True])
def test_paper_size_cached_equals_routed(shared):
    """12 layers, d=1024 (the released model's transformer, 685M official parameters)."""
    check_cached_equals_routed(paper_layout(shared_expert=shared), batch=2)
