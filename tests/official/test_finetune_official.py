"""The tiny demonstration of fine-tuning from converted official weights on this CPU:
`mode-policy convert official` then `mode-policy finetune` on a LeRobot dataset with two cameras."""

import json

import numpy as np
import pytest
import torch
from official_parity import FIXTURE, official_checkpoint
from safetensors.torch import save_file

from mode_policy.cli import main as cli
from mode_policy.data.writer import DatasetWriter
from mode_policy.policy import MoDEPolicy


def camera_dataset(root, cameras, action_dim=7):
    features = {
        "action": {"dtype": "float32", "shape": [action_dim], "names": None},
        "observation.state": {"dtype": "float32", "shape": [2], "names": None},
    }
    features |= {f"observation.images.{c}": {"dtype": "video", "shape": [16, 16, 3], "names": None} for c in cameras}
    rng = np.random.default_rng(0)
    with DatasetWriter(root, fps=10, features=features) as writer:
        for task in ("open the drawer", "push the button"):
            frames = {
                "action": rng.uniform(-1, 1, (6, action_dim)).astype(np.float32),
                "observation.state": rng.normal(size=(6, 2)).astype(np.float32),
            }  # unused by the model
            frames |= {f"observation.images.{c}": rng.integers(0, 255, (6, 16, 16, 3), dtype=np.uint8) for c in cameras}
            writer.add_episode(frames, task=task)
    return root


# ~30 s; the fast version is test_official_policy.py::test_converted_folder_fine_tunes_with_frozen_routers
@pytest.mark.slow
def test_convert_then_finetune_with_frozen_routers(tmp_path):
    # official names, MiniLM-sized goals so the offline sentence model can embed the instructions
    source = tmp_path / "official"  # the converted folder must not sit inside its own source
    source.mkdir()
    save_file(official_checkpoint(FIXTURE / "experts", goal_dim=384), str(source / "model_cleaned.safetensors"))
    model = tmp_path / "converted"
    assert (
        cli(["convert", "official", str(source), f"--out={model}", "--cameras=agentview,wrist", "--language=none"]) == 0
    )
    config = json.loads((model / "config.json").read_text())
    config["goal_encoder"] = {"type": "minilm"}  # in place of CLIP, which this machine does not have
    config["image_size"] = 16  # the data's size: no resizing to the official 224 px on this CPU
    (model / "config.json").write_text(json.dumps(config))
    data = camera_dataset(tmp_path / "data", ["agentview", "wrist"])
    run = tmp_path / "run"
    assert (
        cli(
            [
                "finetune",
                str(model),
                "--dataset",
                str(data),
                "--out",
                str(run),
                "--steps",
                "3",
                "--batch_size",
                "4",
                "--warmup_steps",
                "1",
                "--log_every",
                "1",
                "--checkpoint_every",
                "3",
                "--progress=false",
                "--lr",
                "1e-2",
            ]
        )
        == 0
    )
    before = MoDEPolicy.from_pretrained(model).state_dict()
    after = MoDEPolicy.from_pretrained(run / "checkpoints" / "step_00000003").state_dict()  # trained, not EMA
    routers = [k for k in before if ".router." in k]
    assert routers and all(torch.equal(before[k], after[k]) for k in routers)
    experts = "denoiser.net.blocks.0.mlp.experts.w_in"
    assert not torch.equal(before[experts], after[experts])
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert records and all(r["loss"] == r["diffusion_loss"] for r in records)
