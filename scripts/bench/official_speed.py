"""Our sampler and training step beside the official MoDE code, side by side in one process.

    python scripts/bench/official_speed.py --official-src /work/official_src [--threads 1] [--rounds 9] \
        [--bf16] [--profile] [--paper] [--shared] [--skip-train]

``--official-src`` is a checkout of intuitive-robots/MoDE_Diffusion_Policy kept *outside* this
repository (``git archive`` of it; it needs einops, hydra-core and, installed with ``--no-deps``,
torchsde, torchdiffeq and trampoline). The official ``MoDeDiT`` is built at the harness shape
(d=256, 4 layers, 4 heads, 4 experts top-2, two camera tokens, goal width 512, 10 actions of 7)
with random weights whose routers switch experts along the schedule (:func:`randomise`), and
converted to ``architecture="official"`` through the converter's tensor rules: the same function.
Both run on the same inputs and noise:

* sampling, batch 1 and 64: 10 DDIM steps on the exponential schedule (sigma 80 -> 0.001). The
  official side is its evaluation path: ``precompute_experts_for_inference`` for the schedule's
  levels, then ``sample_ddim``. Ours is ``EDMDenoiser.sample`` with the expert cache on the
  official lean sampler, in float32 and (``--bf16``) ``precision="bf16"``; ``ours_default_arch``
  is this library's default network at the same shape (random weights, another function);
* training, batch 256: the EDM loss at log-logistic noise levels plus 0.01 x the balancing term,
  backward and an AdamW step, dropout as in the official configs (fused AdamW on our side);
* ``--paper``: 12 layers, d=1024 at batch 1, ours cached beside the official routed path (its
  cache would need 11.5 GB at that size);
* cache memory: (expert weights + what each cache holds) / expert weights.

Every round runs every variant once, in a shuffled order; with one torch thread the clock is the
thread's CPU time (:mod:`mode_policy.bench.timing`). Ratios are medians of per-round ratios with
a bootstrap interval; actions are compared for the same noise.
"""

from __future__ import annotations

import argparse
import math
import platform
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from mode_policy.bench.timing import bench_clock, paired_ratio, time_side_by_side
from mode_policy.model.config import MoDEConfig
from mode_policy.model.edm import EDMDenoiser
from mode_policy.model.moe import balancing_loss
from mode_policy.official.convert import canonical_names, tensor_rules
from mode_policy.official.network import mask_goal

SHAPE = dict(d=256, layers=4, heads=4, experts=4, top_k=2, cameras=2, obs_dim=512, goal_dim=512, actions=7, horizon=10)
STEPS, SIGMA_MIN, SIGMA_MAX = 10, 0.001, 80.0
BALANCE_WEIGHT = 0.01


def official_kwargs(shared: bool, **sizes: Any) -> dict[str, Any]:
    """``MoDeDiT`` arguments of the harness shape (``sizes``: embed_dim, n_layers, n_heads
    instead), dropout as in the official configs."""
    s = SHAPE
    return {
        **dict(
            _target_="mode.models.networks.modedit.MoDeDiT",
            obs_dim=s["obs_dim"],
            goal_dim=s["goal_dim"],
            device="cpu",
            goal_conditioned=True,
            action_dim=s["actions"],
            embed_dim=s["d"],
            embed_pdrob=0.0,
            attn_pdrop=0.3,
            n_layers=s["layers"],
            n_heads=s["heads"],
            goal_seq_len=1,
            obs_seq_len=1,
            action_seq_len=s["horizon"],
            state_dim=7,
            mlp_pdrop=0.1,
            goal_drop=0.1,
            linear_output=True,
            use_proprio=False,
            cond_router=True,
            num_experts=s["experts"],
            top_k=s["top_k"],
            router_normalize=True,
            use_goal_in_routing=False,
            use_argmax=False,
            causal=True,
            use_shared_expert=shared,
            use_noise_token_as_input=True,
            use_custom_attn_mask=False,
        ),
        **sizes,
    }


@torch.no_grad()
def randomise(model: torch.nn.Module) -> None:
    """Values the official init leaves constant (norm gains, zero biases and positions, routers
    whose zero-mean N(0, 0.02) weights pick almost the same experts at every step) made random,
    so that the routers switch experts along the schedule as a trained model's do."""
    for name, p in model.named_parameters():
        if name.endswith(".g"):
            p.copy_(1 + 0.1 * torch.randn_like(p))
        elif "router" in name:
            p.copy_(0.3 * torch.randn_like(p))
        elif p.abs().max() == 0 or name.endswith(".bias"):
            p.copy_(0.1 * torch.randn_like(p))


class Ours(torch.nn.Module):
    """Our side: goal and camera projections (as the official ``goal_emb`` / ``tok_emb``, no bias)
    and the denoiser; ``MoDEPolicy`` without encoders (its sampling and training loss)."""

    def __init__(self, cfg: MoDEConfig) -> None:
        super().__init__()
        self.goal_proj = torch.nn.Linear(cfg.goal_dim, cfg.d_model, bias=False)
        self.image_proj = torch.nn.Linear(SHAPE["obs_dim"], cfg.d_model, bias=False)
        self.denoiser = EDMDenoiser(cfg)

    def condition(self, goal: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """[goal, cameras] tokens (B, 1 + n_cams, d) from goals (B, G) and camera features (B, n_cams, F)."""
        return torch.cat([self.goal_proj(goal).unsqueeze(1), self.image_proj(images)], dim=1)

    @torch.no_grad()
    def sample(self, goal: torch.Tensor, images: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self.denoiser.sample(self.condition(goal, images), noise)

    def loss(self, goal: torch.Tensor, images: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """What ``MoDEPolicy.forward`` computes: the goal dropout of the architecture, the EDM loss,
        plus 0.01 x the mean balancing term."""
        cfg = self.denoiser.config
        if self.training and cfg.architecture == "official":
            goal = mask_goal(goal, cfg.goal_dropout)
        elif self.training:
            goal = F.dropout(goal, cfg.goal_dropout)
        err, routings = self.denoiser.loss(actions, self.condition(goal, images))
        balance = torch.stack([balancing_loss(r.probs, r.index) for r in routings]).mean()
        return err.mean() + BALANCE_WEIGHT * balance


def our_config(shared: bool, architecture: str = "official", **overrides: Any) -> MoDEConfig:
    """The harness shape as our config: ``official`` (the official network, for converted weights)
    or ``mode`` (this library's default network at the same size, two camera tokens)."""
    s = SHAPE
    common = dict(
        state_dim=0,
        image_keys=[f"observation.images.cam{i}" for i in range(s["cameras"])],
        d_model=s["d"],
        n_layers=s["layers"],
        n_heads=s["heads"],
        num_experts=s["experts"],
        top_k=s["top_k"],
        shared_expert=shared,
        goal_dim=s["goal_dim"],
        action_dim=s["actions"],
        horizon=s["horizon"],
        n_action_steps=s["horizon"],
        attn_dropout=0.3,
        resid_dropout=0.1,
        goal_dropout=0.1,
        num_inference_steps=STEPS,
        sigma_min=SIGMA_MIN,
        sigma_max=SIGMA_MAX,
    )
    if architecture == "official":
        common.update(architecture="official", vision_depth=50, vision_width=s["obs_dim"] // 32)
    return MoDEConfig(**{**common, **overrides})


def convert(official: torch.nn.Module, cfg: MoDEConfig) -> Ours:
    """Ours with the official model's weights, through the converter's tensor rules."""
    canonical, _ = canonical_names({f"model.{k}": v for k, v in official.state_dict().items()})
    ours = Ours(cfg)
    state = {}
    for name, (sources, build) in tensor_rules(cfg, {}).items():  # no camera trunks: only the projection
        target = name.replace("image_encoder.proj.", "image_proj.")
        state[target] = build(*(canonical[s] for s in sources)).clone()
    ours.load_state_dict(state)  # strict: every tensor of ours filled, nothing left over
    return ours


def build_pair(official_src: Path, shared: bool, seed: int = 0, **sizes: Any) -> tuple[torch.nn.Module, Ours]:
    """The official ``GCDenoiser`` with random weights and ours converted from it."""
    sys.path.insert(0, str(official_src.resolve()))
    from mode.models.edm_diffusion.score_wrappers import GCDenoiser

    torch.manual_seed(seed)
    official = GCDenoiser(official_kwargs(shared, **sizes), sigma_data=0.5)
    randomise(official)
    ours = convert(official, our_config(shared, **_our_sizes(sizes)))
    return official, ours


def default_architecture(shared: bool, seed: int = 0) -> Ours:
    """This library's default network at the harness shape, random weights (not the same function)."""
    torch.manual_seed(seed)
    ours = Ours(our_config(shared, architecture="mode"))
    with torch.no_grad():  # a trained-looking output head (its init is zero)
        torch.nn.init.normal_(ours.denoiser.net.action_out.weight, std=0.02)
    return ours


def _our_sizes(sizes: dict[str, Any]) -> dict[str, Any]:
    names = {"embed_dim": "d_model", "n_layers": "n_layers", "n_heads": "n_heads"}
    return {names[k]: v for k, v in sizes.items()}


def official_cached_sampler(official: torch.nn.Module) -> Callable[..., torch.Tensor]:
    """The official evaluation path: experts precomputed for the schedule's levels, then DDIM."""
    from mode.models.edm_diffusion.gc_sampling import get_sigmas_exponential, sample_ddim

    official.eval()
    sigmas = get_sigmas_exponential(STEPS, SIGMA_MIN, SIGMA_MAX)
    inner = official.inner_model
    inner.reset_all_caches()
    with torch.no_grad():
        for sigma in sigmas[:-1]:
            inner.precompute_experts_for_inference(sigma)

    @torch.no_grad()
    def sample(goal: torch.Tensor, images: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return sample_ddim(
            official, {"state_images": images}, noise * SIGMA_MAX, goal.unsqueeze(1), sigmas, disable=True
        )

    return sample


def official_train_step(official: torch.nn.Module, batch: dict[str, torch.Tensor]) -> Callable[[], float]:
    """``MoDEAgent.training_step``'s denoiser part: diffusion loss + 0.01 x balancing, backward, AdamW."""
    from mode.models.edm_diffusion.utils import rand_log_logistic

    official.train()
    opt = torch.optim.AdamW(official.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05)
    density = dict(loc=math.log(0.5), scale=0.5, min_value=SIGMA_MIN, max_value=SIGMA_MAX)

    def step() -> float:
        actions = batch["actions"]
        sigma = rand_log_logistic((len(actions),), **density)
        noise = torch.randn_like(actions)
        state = {"state_images": batch["images"]}
        loss, _ = official.loss(state, actions, batch["goal"].unsqueeze(1), noise, sigma)
        loss = loss + BALANCE_WEIGHT * official.inner_model.load_balancing_loss()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss.detach())

    return step


def our_train_step(ours: Ours, batch: dict[str, torch.Tensor], fused_adamw: bool) -> Callable[[], float]:
    ours.train()
    opt = torch.optim.AdamW(ours.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05, fused=fused_adamw)

    def step() -> float:
        loss = ours.loss(batch["goal"], batch["images"], batch["actions"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss.detach())

    return step


def inputs(batch_size: int, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    s = SHAPE
    return {
        "goal": torch.randn(batch_size, s["goal_dim"], generator=gen),
        "images": torch.randn(batch_size, s["cameras"], s["obs_dim"], generator=gen),
        "noise": torch.randn(batch_size, s["horizon"], s["actions"], generator=gen),
        "actions": torch.rand(batch_size, s["horizon"], s["actions"], generator=gen) * 2 - 1,
    }


def commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def expert_bytes(ours: Ours) -> int:
    return sum(
        p.numel() * p.element_size()
        for layer in ours.denoiser.net.moe_layers()
        for bank in (layer.experts, getattr(layer, "shared", None))
        if bank is not None
        for p in bank.parameters()
    )


def cache_memory(official: torch.nn.Module, ours: Ours) -> dict[str, float]:
    """(expert weights + what each cache holds) / expert weights, ours and the official code's
    (its fused copies of two experts per noise level and layer)."""
    plan = ours.denoiser.sampling_plan()
    experts = expert_bytes(ours)
    held = {
        id(t): t.numel() * t.element_size()
        for block in official.inner_model.blocks
        for fused in block.fused_experts.values()
        for t in (fused.w1.weight, fused.w1.bias, fused.w2.weight)
    }
    return {
        "ours": (experts + plan.cache_bytes + plan.lean.owned_bytes()) / experts,
        "official": (experts + sum(held.values())) / experts,
    }


def chunk_flops(fn: Callable[[], Any]) -> int:
    """Matrix-multiply FLOPs of one call of ``fn``, counted by torch."""
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


def top_ops(fn: Callable[[], Any], n: int = 8) -> list[tuple[str, float, int]]:
    """(op, share of self CPU time, calls) of one call of ``fn``."""
    fn()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1
    return [(e.key, e.self_cpu_time_total / total, e.count) for e in events[:n]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official-src", type=Path, required=True, help="the official code, outside this repository")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for both sides")
    parser.add_argument("--rounds", type=int, default=9, help="timed rounds per batch size")
    parser.add_argument("--train-rounds", type=int, default=5)
    parser.add_argument("--train-batch", type=int, default=256)
    parser.add_argument("--bf16", action="store_true", help="also time precision='bf16' and its action error")
    parser.add_argument("--shared", action="store_true", help="the shared-expert variant (top-1 routed + shared)")
    parser.add_argument("--profile", action="store_true", help="top operators of one b64 chunk, both sides")
    parser.add_argument("--paper", action="store_true", help="also the paper size (12 layers, d=1024) at batch 1")
    parser.add_argument("--skip-train", action="store_true")
    args = parser.parse_args()
    if not (args.official_src / "mode" / "models" / "networks" / "modedit.py").is_file():
        parser.error(f"{args.official_src} is not a checkout of the official MoDE code")
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="precision='bf16' on a CPU without")  # reported below instead
    official, ours = build_pair(args.official_src, args.shared)
    official_sample = official_cached_sampler(official)
    ours.eval()
    mode = default_architecture(args.shared).eval()
    bf16 = None
    if args.bf16:
        _, bf16 = build_pair(args.official_src, args.shared)
        bf16.eval()
        bf16.denoiser.precision = "bf16"
    _, clock = bench_clock()
    print(
        f"official_speed: commit {commit()}, CPU {cpu_name()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s), clock: {clock}, medians of interleaved rounds; "
        f"bfloat16 hardware: avx512_bf16={torch.cpu._is_avx512_bf16_supported()} "
        f"amx={torch.cpu._is_amx_tile_supported()}"
    )
    rows: list[tuple[str, str, float, dict, float | None]] = []
    profiles, flops = {}, {}
    for b in (1, 64):
        x = inputs(b, seed=b)
        a = (x["goal"], x["images"], x["noise"])
        theirs, mine = official_sample(*a), ours.sample(*a)
        fns = {
            "official_cached": lambda a=a: official_sample(*a),
            "ours_cached_fp32": lambda a=a: ours.sample(*a),
            "ours_default_arch_fp32": lambda a=a: mode.sample(*a),
        }
        errors = {"ours_cached_fp32": (mine - theirs).abs().max().item()}
        if bf16 is not None:
            fns["ours_cached_bf16"] = lambda a=a: bf16.sample(*a)
            errors["ours_cached_bf16"] = (bf16.sample(*a) - mine).abs().max().item()
        t = time_side_by_side(fns, args.rounds, warmup=1)
        for name in fns:
            rows.append(
                (f"b{b}", name, t[name]["median_ms"], paired_ratio(t, name, "official_cached"), errors.get(name))
            )
        if args.profile and b == 64:
            profiles = {name: top_ops(fns[name]) for name in ("official_cached", "ours_cached_fp32")}
        flops[f"b{b}"] = {name: chunk_flops(fns[name]) for name in ("official_cached", "ours_cached_fp32")}
    memory = cache_memory(official, ours)
    if not args.skip_train:
        x = inputs(args.train_batch, seed=7)
        official_t, ours_t = build_pair(args.official_src, args.shared, seed=1)
        fns = {
            "official_train_step": official_train_step(official_t, x),
            "ours_train_step": our_train_step(ours_t, x, fused_adamw=True),
            "ours_default_arch_train": our_train_step(default_architecture(args.shared, seed=1), x, fused_adamw=True),
        }
        t = time_side_by_side(fns, args.train_rounds, warmup=1)
        for name in fns:
            ratio = paired_ratio(t, name, "official_train_step")
            rows.append((f"b{args.train_batch}", name, t[name]["median_ms"], ratio, None))
    paper_memory = None
    if args.paper:
        del official, ours, mode, bf16
        paper, paper_memory = paper_rows(args.official_src, args.shared, max(2, args.rounds // 3))
        rows += paper
    print(f"\n{'batch':>6} {'variant':<32} {'median ms':>10} {'/ official [95% CI]':>22} {'max |action diff|':>18}")
    for batch, name, ms, ratio, err in rows:
        diff = f"{err:>18.2e}" if err is not None else ""
        lo, hi = ratio["ci95"]
        print(f"{batch:>6} {name:<32} {ms:>10.2f} {ratio['median']:>7.3f} [{lo:.3f}, {hi:.3f}] {diff}")
    print(
        "(/ official: median over rounds of the per-round ratio, bootstrap interval; action diff: ours fp32 "
        "against the official code, bf16 against ours fp32, same noise)"
    )
    print(
        f"\ncache memory, (expert weights + cache) / expert weights: ours {memory['ours']:.4f}, "
        f"official {memory['official']:.2f}"
        + ("" if paper_memory is None else f"; ours at the paper size {paper_memory:.4f}")
    )
    for size, counts in flops.items():
        theirs, mine = counts["official_cached"], counts["ours_cached_fp32"]
        print(f"GFLOP per chunk at {size} (torch's counter): official {theirs / 1e9:.2f}, ours {mine / 1e9:.2f} "
              f"({mine / theirs:.3f}x)")  # fmt: skip
    for name, ops in profiles.items():
        print(f"\n{name}, b64, top operators (profiler self CPU time):")
        for op, share, calls in ops:
            print(f"  {op:<50} {share:6.1%}  x{calls}")


def paper_rows(official_src: Path, shared: bool, rounds: int) -> tuple[list, float]:
    """The paper size at batch 1: our cached sampler beside the official code's routed path (its
    cache, two experts copied per step and layer, would need 11.5 GB more at this size), and our
    cache memory there."""
    official, ours = build_pair(official_src, shared, embed_dim=1024, n_layers=12, n_heads=8)
    official.eval()
    ours.eval()
    from mode.models.edm_diffusion.gc_sampling import get_sigmas_exponential, sample_ddim

    sigmas = get_sigmas_exponential(STEPS, SIGMA_MIN, SIGMA_MAX)
    x = inputs(1, seed=1)
    a = (x["goal"], x["images"], x["noise"])

    @torch.no_grad()
    def routed() -> torch.Tensor:
        return sample_ddim(official, {"state_images": a[1]}, a[2] * SIGMA_MAX, a[0].unsqueeze(1), sigmas, disable=True)

    err = (ours.sample(*a) - routed()).abs().max().item()
    t = time_side_by_side({"official_routed": routed, "ours_cached_fp32": lambda: ours.sample(*a)}, rounds, warmup=1)
    plan = ours.denoiser.sampling_plan()
    memory = (expert_bytes(ours) + plan.cache_bytes + plan.lean.owned_bytes()) / expert_bytes(ours)
    rows = [
        (
            "paper b1",
            name,
            t[name]["median_ms"],
            paired_ratio(t, name, "official_routed"),
            err if "ours" in name else None,
        )
        for name in ("official_routed", "ours_cached_fp32")
    ]
    return rows, memory


if __name__ == "__main__":
    main()
