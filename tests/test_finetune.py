"""Fine-tuning: the pretrained config carries over, the routers stay frozen and the balancing
loss is gone, the new data brings its normalisation, incompatible data is refused with what
differs and how to adapt, and a fine-tuning run resumes exactly."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from mode_policy.cli import main as cli
from mode_policy.cli.pipeline import FINETUNE_RECIPE
from mode_policy.data.windows import load_episodes
from mode_policy.data.writer import DatasetWriter
from mode_policy.envs.metaworld_demos import generate_demos
from mode_policy.policy import MoDEPolicy
from mode_policy.training.finetune import load_pretrained
from mode_policy.training.loop import weights_checksum

FLAGS = ["--batch_size", "8", "--log_every", "2", "--checkpoint_every", "4", "--warmup_steps", "1", "--progress=false"]


def router_tensors(policy: MoDEPolicy) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in policy.state_dict().items() if ".router." in k}


def write_dataset(root: Path, action_dim: int, state_dim: int, camera: int = 0) -> Path:
    """Two 6-frame episodes; ``camera``: the side of an ``observation.images.top`` video (0: none)."""
    features = {
        "observation.state": {"dtype": "float32", "shape": [state_dim], "names": None},
        "action": {"dtype": "float32", "shape": [action_dim], "names": None},
    }
    if camera:
        features["observation.images.top"] = {"dtype": "video", "shape": [camera, camera, 3], "names": None}
    rng = np.random.default_rng(0)
    with DatasetWriter(root, fps=10, features=features) as writer:
        for _ in range(2):
            frames = {
                "observation.state": rng.normal(size=(6, state_dim)).astype(np.float32),
                "action": rng.uniform(-1, 1, (6, action_dim)).astype(np.float32),
            }
            if camera:
                frames["observation.images.top"] = rng.integers(0, 255, (6, camera, camera, 3), dtype=np.uint8)
            writer.add_episode(frames, task="open the drawer")
    return root


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("finetune")
    generate_demos(root / "pre", ["reach-v3", "button-press-topdown-v3"], 2, progress=False)
    generate_demos(root / "new", ["drawer-close-v3"], 2, progress=False)
    pre = root / "pretrained"
    assert (
        cli(
            [
                "train",
                "--dataset",
                str(root / "pre"),
                "--out",
                str(pre),
                "--preset",
                "tiny",
                "--steps",
                "4",
                "--language",
                "minilm",
                "--policy.n_layers=3",
                *FLAGS,
            ]
        )
        == 0
    )
    return {"root": root, "pre": root / "pre", "new": root / "new", "pretrained": pre}


@pytest.fixture(scope="module")
def finetuned(world) -> Path:
    run = world["root"] / "ft"
    assert (
        cli(
            [
                "finetune",
                str(world["pretrained"]),
                "--dataset",
                str(world["new"]),
                "--out",
                str(run),
                "--steps",
                "8",
                "--lr",
                "1e-2",
                *FLAGS,
            ]
        )
        == 0
    )
    return run


def test_finetune_carries_the_pretrained_config_over(world, finetuned):
    pre = MoDEPolicy.from_pretrained(world["pretrained"] / "model").config
    ft = MoDEPolicy.from_pretrained(finetuned / "model").config
    assert ft.n_layers == 3 and ft.goal_encoder == {"type": "minilm"} and ft.horizon == pre.horizon
    assert ft.freeze_router and not pre.freeze_router
    for name in ("d_model", "num_experts", "top_k", "image_keys", "action_dim", "state_dim", "goal_dim"):
        assert getattr(ft, name) == getattr(pre, name)
    train_cfg = json.loads((finetuned / "config.json").read_text())["train"]
    assert train_cfg["init_from"] == str(world["pretrained"]) and train_cfg["language"] == "minilm"
    assert train_cfg["lr"] == 1e-2 and train_cfg["warmup_steps"] == 1  # flags win over the recipe


def test_routers_stay_frozen_and_the_balancing_loss_is_dropped(world, finetuned):
    pre = MoDEPolicy.from_pretrained(world["pretrained"] / "model")
    ft_raw = MoDEPolicy.from_pretrained(finetuned / "checkpoints" / "step_00000008")  # the trained, non-EMA weights
    assert router_tensors(pre) and all(
        torch.equal(v, router_tensors(ft_raw)[k]) for k, v in router_tensors(pre).items()
    )
    changed = [
        k
        for k, v in pre.state_dict().items()
        if ".router." not in k and "normalizer" not in k and not torch.equal(v, ft_raw.state_dict()[k])
    ]
    assert len(changed) > 10  # everything else trained (lr 1e-2)
    records = [json.loads(line) for line in (finetuned / "metrics.jsonl").read_text().splitlines()]
    assert records and all(r["loss"] == r["diffusion_loss"] and "balance_loss" in r for r in records)
    # the same batch through a router-trainable copy adds gamma * balance
    ft_raw.train()
    data = load_episodes(world["new"], progress=False)
    batch = {
        "observation.state": data.state[:8, None],
        "action": data.action[:8, None].expand(8, 4, 4),
        "task": [data.tasks[0]] * 8,
    }
    torch.manual_seed(0)
    loss, info = ft_raw(batch)
    assert torch.equal(loss.detach(), info["diffusion_loss"])
    assert not any(p.requires_grad for layer in ft_raw.denoiser.net.moe_layers() for p in layer.router.parameters())


def test_finetune_adopts_the_new_datasets_normalisation(world, finetuned):
    ft = MoDEPolicy.from_pretrained(finetuned / "model")
    new = load_episodes(world["new"], progress=False)
    torch.testing.assert_close(ft.normalizer.action_min, new.action.min(0).values)
    torch.testing.assert_close(ft.normalizer.state_mean, new.state.mean(0))
    assert json.loads((finetuned / "stats.json").read_text()) == new.stats()


def test_finetune_refuses_a_wider_action_and_says_how_to_adapt(world, tmp_path, capsys):
    wide = write_dataset(tmp_path / "seven", action_dim=7, state_dim=39)
    out = tmp_path / "ft7"
    assert cli(["finetune", str(world["pretrained"]), "--dataset", str(wide), "--out", str(out), *FLAGS]) == 2
    err = capsys.readouterr().err
    assert "has 7-d actions, the pretrained model" in err and "predicts 4-d actions" in err
    assert "pretrain on a mixture that includes 7-d actions" in err and "--mixture" in err
    assert not out.exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--language", "task"], "embeds instructions with 'minilm'"),
        (["--policy.d_model=32"], r"policy.d_model=32 \(pretrained: 64\)"),
        (["--policy.image_keys=[observation.images.top]"], "would need new, untrained encoders"),
    ],
)
def test_finetune_refuses_another_goal_encoder_architecture_or_camera(world, tmp_path, capsys, flags, message):
    data = write_dataset(tmp_path / "cam", action_dim=4, state_dim=39, camera=16)
    out = tmp_path / "ft"
    assert cli(["finetune", str(world["pretrained"]), "--dataset", str(data), "--out", str(out), *FLAGS, *flags]) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not out.exists()


@pytest.fixture(scope="module")
def image_run(world) -> Path:
    """A small image policy pretrained on 16 px ``observation.images.top`` frames."""
    cam = write_dataset(world["root"] / "cam16", action_dim=4, state_dim=39, camera=16)
    run = world["root"] / "image"
    assert (
        cli(
            [
                "train",
                "--dataset",
                str(cam),
                "--out",
                str(run),
                "--preset",
                "cpu-image",
                "--steps",
                "1",
                "--language",
                "minilm",
                "--policy.n_layers=1",
                "--policy.d_model=32",
                "--policy.n_heads=2",
                "--policy.vision_width=8",
                *FLAGS,
            ]
        )
        == 0
    )
    return run


def test_finetune_refuses_data_missing_a_pretrained_camera(world, image_run, tmp_path, capsys):
    out = tmp_path / "ft"
    assert cli(["finetune", str(image_run), "--dataset", str(world["new"]), "--out", str(out), *FLAGS]) == 2
    err = capsys.readouterr().err
    assert "lacks camera(s) ['observation.images.top'] that the pretrained model" in err and "cameras:" in err


def test_finetune_keeps_the_cameras_and_resizes_other_image_sizes(image_run, tmp_path, capsys, monkeypatch):
    import mode_policy.training.setup as train_module

    loaded = []
    original = train_module.load_dataset

    def recording(*args, **kwargs):
        data = original(*args, **kwargs)
        loaded.append(tuple(data.images["observation.images.top"].shape[1:3]))
        return data

    monkeypatch.setattr(train_module, "load_dataset", recording)
    big = write_dataset(tmp_path / "cam24", action_dim=4, state_dim=39, camera=24)
    out = tmp_path / "ft"
    assert cli(["finetune", str(image_run), "--dataset", str(big), "--out", str(out), "--steps", "1", *FLAGS]) == 0
    assert "resized to the model's 16 px" in capsys.readouterr().out and loaded == [(16, 16)]
    config = MoDEPolicy.from_pretrained(out / "model").config
    assert config.image_keys == ["observation.images.top"] and config.image_size == 16 and config.vision_width == 8


def test_finetune_run_resumes_exactly(world, finetuned, tmp_path):
    partial = tmp_path / "part"
    shutil.copytree(finetuned, partial)
    shutil.rmtree(partial / "model")
    shutil.rmtree(partial / "checkpoints" / "step_00000008")
    (partial / "checkpoints" / "LATEST").write_text("step_00000004\n")
    shutil.move(world["pretrained"], tmp_path / "moved")  # resuming needs no pretrained model any more
    try:
        assert cli(["finetune", "--out", str(partial), "--resume"]) == 0  # everything else from the run
    finally:
        shutil.move(tmp_path / "moved", world["pretrained"])
    assert weights_checksum(MoDEPolicy.from_pretrained(partial / "model")) == weights_checksum(
        MoDEPolicy.from_pretrained(finetuned / "model")
    )


def test_pretrained_run_without_final_model_uses_its_newest_ema(world, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(world["pretrained"], run)
    final = MoDEPolicy.from_pretrained(run / "model")
    shutil.rmtree(run / "model")
    policy, where = load_pretrained(run)
    assert "EMA weights of the run's newest checkpoint" in where
    assert weights_checksum(policy) == weights_checksum(final)  # the last checkpoint holds the final EMA


def test_the_recipe_is_the_finetune_commands_default(capsys):
    with pytest.raises(SystemExit):
        cli(["finetune", "--help"])
    assert "fine-tuning recipe" in " ".join(capsys.readouterr().out.split())
    assert FINETUNE_RECIPE["lr"] < 3e-4 and FINETUNE_RECIPE["warmup_steps"] < FINETUNE_RECIPE["steps"]
