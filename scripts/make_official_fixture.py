"""Run the official MoDE code on random weights and save what tests/official/ compares against.

    python scripts/make_official_fixture.py OFFICIAL_SRC_DIR --out tests/fixtures/official
    python scripts/make_official_fixture.py OFFICIAL_SRC_DIR --size paper --out /tmp/official_paper

OFFICIAL_SRC_DIR is a checkout of intuitive-robots/MoDE_Diffusion_Policy (the fixture in the
repository was made from commit 72cf8a25eafa54316f0c6c961b620e4b6c9c3e6b). It needs torch,
einops, hydra-core, torchsde and torchdiffeq (install the last three with ``pip install
--no-deps`` so that the pinned torch stays). Only the official denoiser (``MoDeDiT`` inside
``GCDenoiser``) and sampler run here: the official cameras need timm, so the fixture feeds
pooled camera features directly.

For each variant (``experts``: 4 experts top-2; ``shared``: the shared expert, top-2) it
writes ``VARIANT/official.safetensors`` (the denoiser's weights under the ``MoDEAgent`` names
``model.inner_model.*``), ``VARIANT/reference.safetensors`` (inputs and outputs) and
``VARIANT/meta.json`` (sizes and seeds):

* ``denoised``: ``GCDenoiser(state, x, goal, sigma)`` in eval mode;
* ``sample``: the official 10-step DDIM from ``noise * 80`` on the exponential schedule;
* ``train_denoised`` and ``train_balance``: training mode with dropout 0 right after
  ``torch.manual_seed(train_seed)`` (per-token expert sampling) and each layer's balancing term;
* ``masked_goal``: the official goal dropout (p=0.1) of ``goal`` after ``torch.manual_seed(mask_seed)``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

SIZES = {
    "tiny": dict(embed_dim=16, n_layers=3, n_heads=2, goal_dim=12, obs_dim=64, action_dim=7, action_seq_len=5),
    "paper": dict(embed_dim=1024, n_layers=12, n_heads=8, goal_dim=512, obs_dim=2048, action_dim=7, action_seq_len=10),
}
VARIANTS = {"experts": False, "shared": True}
BATCH, CAMERAS, TRAIN_SEED, MASK_SEED = 3, 2, 1234, 99
SIGMAS = (0.05, 1.0, 30.0)


def official_kwargs(size: str, shared: bool, dropout: bool) -> dict:
    s = SIZES[size]
    return dict(
        _target_="mode.models.networks.modedit.MoDeDiT",
        obs_dim=s["obs_dim"],
        goal_dim=s["goal_dim"],
        device="cpu",
        goal_conditioned=True,
        action_dim=s["action_dim"],
        embed_dim=s["embed_dim"],
        embed_pdrob=0.0,
        attn_pdrop=0.3 if dropout else 0.0,
        n_layers=s["n_layers"],
        n_heads=s["n_heads"],
        goal_seq_len=1,
        obs_seq_len=1,
        action_seq_len=s["action_seq_len"],
        state_dim=7,
        mlp_pdrop=0.1 if dropout else 0.0,
        goal_drop=0.1 if dropout else 0.0,
        linear_output=True,
        use_proprio=False,
        cond_router=True,
        num_experts=4,
        top_k=2,
        router_normalize=True,
        use_goal_in_routing=False,
        use_argmax=False,
        causal=True,
        use_shared_expert=shared,
        use_noise_token_as_input=True,
        use_custom_attn_mask=False,
    )


@torch.no_grad()
def randomise(model: torch.nn.Module) -> None:
    """Non-trivial values where the official init is constant (positions, norms, biases, routers)."""
    for name, p in model.named_parameters():
        if name.endswith(".g"):
            p.copy_(1 + 0.1 * torch.randn_like(p))
        elif p.abs().max() == 0 or "router" in name or name.endswith(".bias"):
            p.copy_(0.1 * torch.randn_like(p))


def make_variant(size: str, shared: bool, out: Path) -> None:
    from mode.models.edm_diffusion.gc_sampling import get_sigmas_exponential, sample_ddim
    from mode.models.edm_diffusion.score_wrappers import GCDenoiser

    s = SIZES[size]
    torch.manual_seed(0)
    model = GCDenoiser(official_kwargs(size, shared, dropout=True), sigma_data=0.5)
    randomise(model)
    inner = model.inner_model
    state = {"state_images": torch.randn(BATCH, CAMERAS, s["obs_dim"])}
    goal = torch.randn(BATCH, 1, s["goal_dim"])
    x = torch.randn(BATCH, s["action_seq_len"], s["action_dim"])
    sigma = torch.tensor(SIGMAS)
    noise = torch.randn(BATCH, s["action_seq_len"], s["action_dim"])
    ref: dict[str, torch.Tensor] = {
        "state_images": state["state_images"],
        "goal": goal[:, 0],
        "x": x,
        "sigma": sigma,
        "noise": noise,
    }
    with torch.no_grad():
        model.eval()
        ref["denoised"] = model(state, x, goal, sigma)
        sigmas = get_sigmas_exponential(10, 0.001, 80.0)
        ref["sample"] = sample_ddim(model, state, noise * 80.0, goal, sigmas, disable=True)
        model.train()
        torch.manual_seed(MASK_SEED)
        ref["masked_goal"] = inner.mask_cond(goal)[:, 0]
        # training mode without dropout: only the per-token expert draws use the generator
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        inner.cond_mask_prob = 0.0
        torch.manual_seed(TRAIN_SEED)
        ref["train_denoised"] = model(state, x, goal, sigma)
        ref["train_balance"] = torch.stack([block.probs["load_balancing_term"] for block in inner.blocks])
    out.mkdir(parents=True, exist_ok=True)
    weights = {f"model.{k}": v.contiguous() for k, v in model.state_dict().items()}
    save_file(weights, str(out / "official.safetensors"))
    save_file({k: v.contiguous() for k, v in ref.items()}, str(out / "reference.safetensors"))
    meta = {
        "size": size,
        "shared_expert": shared,
        "official_kwargs": official_kwargs(size, shared, True),
        "train_seed": TRAIN_SEED,
        "mask_seed": MASK_SEED,
        "goal_dropout": 0.1,
        "sampling_steps": 10,
        "sigma_min": 0.001,
        "sigma_max": 80.0,
        "sigma_data": 0.5,
        "top_k": 2,
        "params": sum(p.numel() for p in model.parameters()),
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    print(f"wrote {out} ({meta['params']:,} official parameters)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("official_src", type=Path, help="checkout of intuitive-robots/MoDE_Diffusion_Policy")
    parser.add_argument("--out", type=Path, default=Path("tests/fixtures/official"))
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    args = parser.parse_args()
    if not (args.official_src / "mode" / "models" / "networks" / "modedit.py").is_file():
        parser.error(f"{args.official_src} is not a checkout of the official MoDE code")
    sys.path.insert(0, str(args.official_src.resolve()))
    torch.set_num_threads(1)
    for variant, shared in VARIANTS.items():
        make_variant(args.size, shared, args.out / variant)


if __name__ == "__main__":
    main()
