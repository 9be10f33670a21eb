"""Our ``architecture="official"`` policy against outputs of the official code (a fixture made by
tests/fixtures/official/make_fixture.py): convert the fixture's official weights, run the same inputs.

Two routes: :func:`parity` builds the policy in memory (cameras added, training mode included);
:func:`released_route` is what a user does with a denoiser-only file: ``convert_official`` to a
folder, ``MoDEPolicy.from_pretrained`` offline, the official inputs through ``official_batch`` /
``OfficialDenoiser``.

    python tests/official/official_parity.py [FIXTURE_DIR]    # prints the max abs differences
"""

from __future__ import annotations

import dataclasses
import json
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file

from mode_policy.model.moe import balancing_loss
from mode_policy.official import OfficialDenoiser, condition_tokens, official_batch
from mode_policy.official.convert import CAMERAS, canonical_names, convert_official, convert_state_dict, official_config
from mode_policy.official.network import mask_goal
from mode_policy.policy import MoDEPolicy

sys.path.insert(0, str(Path(__file__).parent))
from timm_layout import random_camera  # noqa: E402

FIXTURE = Path(__file__).parents[1] / "fixtures" / "official"
VARIANTS = ("experts", "shared")


def official_checkpoint(variant: Path, goal_dim: int | None = None) -> dict[str, torch.Tensor]:
    """The fixture's official denoiser weights plus random official-named cameras (ResNet-50 whose
    pooled width is the fixture's ``obs_dim``), i.e. a complete ``MoDEAgent`` state dict.
    ``goal_dim`` replaces the goal embedding (and the FiLM inputs) with random ones of that width."""
    meta = json.loads((variant / "meta.json").read_text())
    kw = meta["official_kwargs"]
    tensors = load_file(str(variant / "official.safetensors"))
    gen = torch.Generator().manual_seed(0)
    if goal_dim is not None:
        tensors["model.inner_model.goal_emb.weight"] = torch.randn(kw["embed_dim"], goal_dim, generator=gen) * 0.05
    for prefix in CAMERAS.values():
        tensors |= random_camera(prefix, 50, kw["obs_dim"] // 32, goal_dim or kw["goal_dim"], gen)
    return tensors


def converted_policy(variant: Path, **overrides) -> MoDEPolicy:
    meta = json.loads((variant / "meta.json").read_text())
    tensors = official_checkpoint(variant)
    cfg = official_config(canonical_names(tensors)[0], top_k=meta["top_k"])
    cfg = dataclasses.replace(cfg, **overrides)
    ours, _ = convert_state_dict(tensors, cfg)
    policy = MoDEPolicy(cfg)
    policy.load_weights(ours)
    return policy


def condition(policy: MoDEPolicy, ref: dict[str, torch.Tensor]) -> torch.Tensor:
    """[goal, cameras] tokens from the fixture's goal and pooled camera features: (B, 1 + n_cams, d)."""
    return condition_tokens(policy, ref["goal"], ref["state_images"])


@torch.no_grad()
def released_route(variant: Path, folder: Path, **convert_options) -> dict[str, float]:
    """Max abs difference to the official outputs along the user's route: the fixture's
    denoiser-only ``official.safetensors`` (made by the official code) converted into ``folder``,
    loaded with ``from_pretrained``, fed the official inputs: the denoiser in the official call
    order, and the sampled chunk of ``predict_action_chunk`` (official clipping: none)."""
    ref = load_file(str(variant / "reference.safetensors"))
    convert_official(variant / "official.safetensors", folder, **convert_options)
    policy = MoDEPolicy.from_pretrained(folder)
    goal = ref["goal"].unsqueeze(1)  # the official latent_goal: (B, 1, goal_dim)
    state = {"state_images": ref["state_images"]}  # the official perceptual_emb
    batch = official_batch(policy, goal, state_images=state)
    out = {
        "denoised": OfficialDenoiser(policy)(state, ref["x"], goal, ref["sigma"]),
        "sample": policy.predict_action_chunk(batch, noise=ref["noise"]),
    }
    return {k: (v.double() - ref[k].double()).abs().max().item() for k, v in out.items()}


@torch.no_grad()
def parity(variant: Path) -> dict[str, float]:
    """Max abs difference to the official outputs: eval denoiser, 10-step DDIM sample, training-mode
    denoiser (per-token draws under the same seed), balancing terms, goal dropout mask."""
    meta = json.loads((variant / "meta.json").read_text())
    ref = load_file(str(variant / "reference.safetensors"))
    out = {}
    policy = converted_policy(variant).eval()
    cond = condition(policy, ref)
    out["denoised"] = policy.denoiser(ref["x"], ref["sigma"], cond)[0]
    out["sample"] = policy.denoiser.sample(cond, ref["noise"])
    torch.manual_seed(meta["mask_seed"])
    out["masked_goal"] = mask_goal(ref["goal"], meta["goal_dropout"])
    del policy  # one paper-size policy in memory at a time
    train = converted_policy(variant, attn_dropout=0.0, resid_dropout=0.0).train()
    torch.manual_seed(meta["train_seed"])
    out["train_denoised"], routings = train.denoiser(ref["x"], ref["sigma"], cond)
    out["train_balance"] = torch.stack([balancing_loss(r.probs, r.index) for r in routings])
    return {k: (v.double() - ref[k].double()).abs().max().item() for k, v in out.items()}


def main() -> None:
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else FIXTURE
    torch.set_num_threads(1)
    for variant in VARIANTS:
        diffs = parity(root / variant)
        print(variant, "  ".join(f"{k}={v:.3g}" for k, v in diffs.items()))
        with tempfile.TemporaryDirectory() as tmp:
            diffs = released_route(root / variant, Path(tmp) / "model")
        print(variant, "converted folder:", "  ".join(f"{k}={v:.3g}" for k, v in diffs.items()))


if __name__ == "__main__":
    main()
