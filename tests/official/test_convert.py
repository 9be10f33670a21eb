"""`mode-policy convert official`: official names in, a loadable model folder out; every tensor
accounted for; renamed or missing tensors and pickle files refused, naming the problem."""

import json

import pytest
import torch
from official_parity import FIXTURE, official_checkpoint
from safetensors.torch import save_file

from mode_policy.cli import main as cli
from mode_policy.errors import CheckpointError
from mode_policy.official.convert import REPORT_NAME, convert_official, read_official_checkpoint
from mode_policy.policy import MoDEPolicy

VARIANT = FIXTURE / "experts"


class Hyperparameters:
    """A non-tensor object in a Lightning checkpoint (as OmegaConf configs are)."""

    lr = 1e-4


@pytest.fixture
def official():
    """A complete checkpoint with official MoDEAgent names (random weights, official layout)."""
    return official_checkpoint(VARIANT)


@pytest.fixture
def official_file(tmp_path, official):
    path = tmp_path / "model_cleaned.safetensors"
    save_file(official, str(path))
    return path


def test_converts_every_tensor_and_loads(tmp_path, official, official_file):
    report = convert_official(official_file, tmp_path / "model")
    policy = MoDEPolicy.from_pretrained(tmp_path / "model")
    ours = policy.state_dict()
    assert policy.config.architecture == "official" and policy.config.top_k == 2
    assert report.ignored == {}  # zero unused official tensors
    assert report.mapped + len(report.set_by_converter) == len(ours)  # zero unfilled tensors of ours
    assert report.set_by_converter == sorted(k for k in ours if k.startswith("normalizer."))
    # spot checks of the mapping
    net = "denoiser.net.blocks.1."
    assert torch.equal(ours[net + "attn.query.bias"], official["model.inner_model.blocks.1.attn.query.bias"])
    assert torch.equal(
        ours[net + "mlp.experts.w_in"][2], official["model.inner_model.blocks.1.experts.expert_2.mlp.0.project.weight"]
    )
    camera = "image_encoder.cameras.observation_images_gripper."
    assert torch.equal(ours[camera + "film3.beta.weight"], official["gripper_resnet.film3.beta.weight"])
    written = json.loads((tmp_path / "model" / REPORT_NAME).read_text())
    assert written["mapped_tensors"] == report.mapped


def test_language_weights_are_ignored_and_named(tmp_path):
    official = official_checkpoint(VARIANT, goal_dim=512)  # CLIP ViT-B/32's width
    official["language_goal.clip_rn50.token_embedding.weight"] = torch.zeros(4, 3)
    save_file(official, str(tmp_path / "m.safetensors"))
    report = convert_official(tmp_path / "m.safetensors", tmp_path / "model", goal_encoder={"type": "clip"})
    assert list(report.ignored) == ["language_goal.clip_rn50.token_embedding.weight"]
    assert json.loads((tmp_path / "model" / "config.json").read_text())["goal_encoder"] == {"type": "clip"}


def test_pretraining_aliases_convert_like_the_official_loader(tmp_path, official, official_file):
    aliased = {}
    renames = (("static_resnet.", "img_encoder_image_primary."), ("gripper_resnet.", "img_encoder_image_wrist."))
    for name, value in official.items():
        for old, new in renames:
            if name.startswith(old):
                name = new + name[len(old) :]
        aliased[name] = value
    save_file(aliased, str(tmp_path / "aliased.safetensors"))
    convert_official(official_file, tmp_path / "a")
    convert_official(tmp_path / "aliased.safetensors", tmp_path / "b")
    a = MoDEPolicy.from_pretrained(tmp_path / "a").state_dict()
    b = MoDEPolicy.from_pretrained(tmp_path / "b").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_renamed_tensor_fails_naming_both_names(tmp_path, official):
    official["model.inner_model.blocks.0.attn.kee.weight"] = official.pop("model.inner_model.blocks.0.attn.key.weight")
    save_file(official, str(tmp_path / "m.safetensors"))
    with pytest.raises(CheckpointError) as err:
        convert_official(tmp_path / "m.safetensors", tmp_path / "model")
    assert "model.inner_model.blocks.0.attn.key.weight" in str(err.value)  # missing
    assert "model.inner_model.blocks.0.attn.kee.weight" in str(err.value)  # unused
    assert not (tmp_path / "model").exists()


def test_missing_tensor_fails_naming_it(tmp_path, official):
    del official["static_resnet.resnet.layer2.1.bn2.running_var"]
    save_file(official, str(tmp_path / "m.safetensors"))
    with pytest.raises(CheckpointError, match=r"static_resnet\.resnet\.layer2\.1\.bn2\.running_var"):
        convert_official(tmp_path / "m.safetensors", tmp_path / "model")


def test_wrong_shape_fails_naming_it(tmp_path, official):
    official["model.inner_model.blocks.2.ln_2.g"] = torch.ones(5)
    save_file(official, str(tmp_path / "m.safetensors"))
    with pytest.raises(CheckpointError, match=r"blocks\.2\.norm2\.weight"):
        convert_official(tmp_path / "m.safetensors", tmp_path / "model")


@pytest.mark.parametrize("suffix", [".pt", ".ckpt"])
def test_pickle_refused_by_default_and_read_when_allowed(tmp_path, official, suffix):
    path = tmp_path / f"model{suffix}"
    torch.save({"state_dict": official, "hyper_parameters": Hyperparameters()}, path)
    with pytest.raises(CheckpointError, match="pickle.*--allow-pickle"):
        read_official_checkpoint(path)
    tensors, _ = read_official_checkpoint(path, allow_pickle=True)
    assert tensors.keys() == official.keys()


def test_folder_with_model_cleaned_safetensors(tmp_path, official_file):
    tensors, path = read_official_checkpoint(official_file.parent)
    assert path == official_file and tensors


def test_cli_convert_official(tmp_path, official, official_file, capsys):
    out = tmp_path / "model"
    assert (
        cli(
            [
                "convert",
                "official",
                str(official_file),
                f"--out={out}",
                "--language=none",
                "--cameras=image,wrist_image",
            ]
        )
        == 0
    )
    assert "set by the converter" in capsys.readouterr().out
    policy = MoDEPolicy.from_pretrained(out)
    assert policy.config.image_keys == ["observation.images.image", "observation.images.wrist_image"]
    pt = tmp_path / "model_cleaned.pt"
    torch.save({"state_dict": official}, pt)
    assert cli(["convert", "official", str(pt), f"--out={tmp_path / 'p'}"]) == 2
    assert "--allow-pickle" in capsys.readouterr().err
    assert cli(["convert", "official", str(pt), f"--out={tmp_path / 'p'}", "--allow-pickle", "--language=none"]) == 0
