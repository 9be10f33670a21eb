"""The trained models shipped in models/ load offline and act as models/README.md says."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mode_policy import MoDEPolicy

MODELS = Path(__file__).resolve().parents[1] / "models"
SHIPPED = sorted(p for p in MODELS.iterdir() if (p / "config.json").is_file())


def test_every_shipped_model_is_listed_in_the_models_readme():
    readme = (MODELS / "README.md").read_text(encoding="utf-8")
    assert SHIPPED, "no model folder under models/"
    for folder in SHIPPED:
        assert f"`{folder.name}/`" in readme, f"models/{folder.name} has no row in models/README.md"


@pytest.mark.parametrize("folder", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_model_loads_and_predicts_a_finite_chunk(folder):
    policy = MoDEPolicy.from_pretrained(folder)
    cfg = policy.config
    torch.manual_seed(0)
    batch = {
        "observation.state": torch.zeros(2, cfg.n_obs_steps, cfg.state_dim),
        "task": ["reach the goal position"] * 2,
    }
    for key in cfg.image_keys:  # image models: one uint8 frame per camera
        batch[key] = torch.zeros(2, cfg.n_obs_steps, cfg.image_size, cfg.image_size, 3, dtype=torch.uint8)
    chunk = policy.predict_action_chunk(batch)
    assert chunk.shape == (2, cfg.horizon, cfg.action_dim)
    assert torch.isfinite(chunk).all()


def test_mt50_model_re_plans_every_two_actions_as_scored():
    # docs/results/mt50.md scores it with --action_steps 2; the shipped config must say the same
    assert MoDEPolicy.from_pretrained(MODELS / "mt50").config.n_action_steps == 2


@pytest.mark.parametrize("name", ["libero_object", "libero_spatial"])
def test_libero_models_re_plan_every_five_actions_as_scored(name):
    # docs/results/libero.md scores both with --action_steps 5
    assert MoDEPolicy.from_pretrained(MODELS / name).config.n_action_steps == 5
