"""Dataset mixtures: a Meta-World dataset (4-d actions, 39-d states) and a LIBERO-format dataset
(7-d actions, 8-d states, converted with `mode-policy convert libero`) train together, each with
its own normalisation; sampling follows the weights exactly; bad mixture files stop cleanly."""

import hashlib
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from mode_policy.cli import main as cli
from mode_policy.data.mixture import (
    Mixture,
    MixtureData,
    MixtureSampler,
    WeightSchedule,
    read_mixture,
)
from mode_policy.data.windows import WindowSampler, load_episodes
from mode_policy.envs.metaworld_demos import generate_demos
from mode_policy.errors import ConfigError, DataError, DataNotFoundError
from mode_policy.model.config import get_preset
from mode_policy.model.diffusion import SamplingSettings
from mode_policy.policy import MoDEPolicy
from mode_policy.training.config import TrainConfig
from mode_policy.training.loop import train, weights_checksum

LIBERO_SIZE = 16


def write_libero_hdf5(path: Path, lengths: list[int], seed: int = 0) -> None:
    """A LIBERO demo file in LIBERO's layout (the keys `convert libero` reads), small images."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        grp = f.create_group("data")
        for i, length in enumerate(lengths):
            ep = grp.create_group(f"demo_{i}")
            ep.create_dataset("actions", data=rng.uniform(-1, 1, (length, 7)) * [0.9, 0.9, 0.9, 0.3, 0.3, 0.3, 1])
            images = rng.integers(0, 255, (length, LIBERO_SIZE, LIBERO_SIZE, 3), dtype=np.uint8)
            ep.create_dataset("obs/agentview_rgb", data=images)
            ep.create_dataset("obs/eye_in_hand_rgb", data=images[:, ::-1])
            ep.create_dataset("obs/ee_pos", data=rng.normal(0.5, 0.1, (length, 3)))
            ep.create_dataset("obs/ee_ori", data=rng.normal(0, 1, (length, 3)))
            ep.create_dataset("obs/gripper_states", data=rng.uniform(-0.04, 0.04, (length, 2)))
            ep.attrs["num_samples"] = length
        grp.attrs["num_demos"] = len(lengths)


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("mixture")
    generate_demos(root / "metaworld", ["reach-v3", "button-press-topdown-v3"], 2, progress=False)
    raw = root / "raw" / "KITCHEN_SCENE1_open_the_top_drawer_of_the_cabinet_demo.hdf5"
    write_libero_hdf5(raw, [12, 9, 15])
    assert cli(["convert", "libero", str(raw), "--out", str(root / "libero")]) == 0
    mix = root / "mix.yaml"
    mix.write_text(
        "datasets:\n  - {path: metaworld, weight: 3, name: metaworld}\n  - {path: libero, weight: 1, name: libero}\n"
    )
    return {"root": root, "metaworld": root / "metaworld", "libero": root / "libero", "mix": mix}


def tiny(out: Path, **kw) -> TrainConfig:
    defaults = dict(
        output_dir=str(out),
        preset="tiny",
        steps=8,
        batch_size=16,
        log_every=4,
        checkpoint_every=4,
        warmup_steps=2,
        progress=False,
        language="task",
        policy=get_preset("tiny", goal_dim=16),
    )
    return TrainConfig(**{**defaults, **kw})


@pytest.fixture(scope="module")
def mixture_run(world) -> Path:
    run = world["root"] / "run"
    assert (
        cli(
            [
                "train",
                "--mixture",
                str(world["mix"]),
                "--out",
                str(run),
                "--preset",
                "tiny",
                "--steps",
                "8",
                "--batch_size",
                "16",
                "--log_every",
                "4",
                "--checkpoint_every",
                "4",
                "--warmup_steps",
                "2",
                "--language",
                "task",
                "--policy.goal_dim=16",
                "--progress=false",
            ]
        )
        == 0
    )
    return run


# ------------------------------------------------------------------------------ acceptance
def test_metaworld_and_libero_train_save_load_and_predict_each_with_its_own_normalisation(world, mixture_run):
    stats = json.loads((mixture_run / "stats.json").read_text())
    assert set(stats) == {"metaworld", "libero"}
    assert len(stats["metaworld"]["action"]["min"]) == 4 and len(stats["libero"]["action"]["min"]) == 7
    policy = MoDEPolicy.from_pretrained(mixture_run / "model").eval()
    assert (policy.config.action_dim, policy.config.state_dim) == (7, 39)  # padded to the widest
    assert sorted(policy.dataset_names) == ["libero", "metaworld"]
    for name, (actions, _states) in {"metaworld": (4, 39), "libero": (7, 8)}.items():
        data = load_episodes(world[name], progress=False)
        member = policy.dataset_normalizers.member(name)
        torch.testing.assert_close(member.action_min, data.action.min(0).values)
        torch.testing.assert_close(member.state_mean, data.state.mean(0))
        batch = {"observation.state": data.state[:5], "task": [data.tasks[0]] * 5}
        chunk = policy.predict_action_chunk(batch, dataset=name)
        assert chunk.shape == (5, policy.config.horizon, actions)
        # un-normalised with this dataset's own range (the sampler clamps to [-1, 1] first)
        assert (chunk >= data.action.min(0).values - 1e-5).all() and (chunk <= data.action.max(0).values + 1e-5).all()
        same = policy.predict_action_chunk({**batch, "dataset": name}, noise=torch.zeros(5, 4, 7))
        again = policy.predict_action_chunk(batch, noise=torch.zeros(5, 4, 7), dataset=name)
        torch.testing.assert_close(same, again)  # the batch key and the argument agree
        policy.reset()
        assert policy.select_action(
            {"observation.state": data.state[:2], "task": [data.tasks[0]] * 2}, dataset=name
        ).shape == (2, actions)
        policy.reset()


def test_inference_must_name_a_known_dataset_at_its_width(mixture_run):
    policy = MoDEPolicy.from_pretrained(mixture_run / "model").eval()
    batch = {"observation.state": torch.zeros(2, 8), "task": ["open the top drawer of the cabinet"] * 2}
    with pytest.raises(DataError, match="name one"):
        policy.predict_action_chunk(batch)
    with pytest.raises(DataError, match="unknown dataset 'calvin'"):
        policy.predict_action_chunk(batch, dataset="calvin")
    with pytest.raises(DataError, match="state holds values beyond"):  # a 9-d state for an 8-d dataset
        policy.predict_action_chunk({**batch, "observation.state": torch.ones(2, 9)}, dataset="libero")
    with pytest.raises(DataError, match="same dataset"):
        policy.predict_action_chunk({**batch, "dataset": ["libero", "metaworld"]})


def test_eval_plays_one_member_of_a_mixture_policy_at_its_width(mixture_run, tmp_path, capsys):
    from mode_policy.dataset_view import for_dataset

    policy = MoDEPolicy.from_pretrained(mixture_run / "model").eval()
    view = for_dataset(policy, "metaworld")
    assert (view.config.action_dim, view.config.state_dim, view.config.horizon) == (4, 39, policy.config.horizon)
    with pytest.raises(ConfigError, match="fixed once built"):  # a read-only view: settings go with each call
        view.config.num_inference_steps = 3
    chunk = view.predict_action_chunk(
        {"observation.state": torch.zeros(1, 39), "task": ["reach the goal position"]},
        sampling=SamplingSettings(num_inference_steps=3),
    )
    assert chunk.shape == (1, policy.config.horizon, 4) and policy.config.num_inference_steps != 3
    with pytest.raises(ConfigError, match="--dataset_name"):
        for_dataset(policy)
    with pytest.raises(ConfigError, match="not one of the policy's datasets"):
        for_dataset(policy, "calvin")
    out = tmp_path / "eval_info.json"
    assert cli(["eval", str(mixture_run), "--tasks", "reach-v3", "--episodes", "1", "--out", str(out)]) == 2
    assert "--dataset_name" in capsys.readouterr().err
    assert (
        cli(
            [
                "eval",
                str(mixture_run),
                "--tasks",
                "reach-v3",
                "--episodes",
                "1",
                "--out",
                str(out),
                "--dataset_name",
                "metaworld",
            ]
        )
        == 0
    )
    assert json.loads(out.read_text())["overall"]["episodes"] == 1


def test_padded_action_dimensions_are_masked_out_of_the_loss(mixture_run):
    policy = MoDEPolicy.from_pretrained(mixture_run / "model").train()
    x0 = torch.randn(3, 4, 7)
    cond = torch.randn(3, 2, policy.config.d_model)  # goal + state token

    def loss(dims):
        torch.manual_seed(1)
        return policy.denoiser.loss(x0, cond, dims)[0]

    torch.manual_seed(1)
    reference = policy.denoiser.loss(x0, cond)[0]
    torch.testing.assert_close(loss(torch.ones(3, 7, dtype=torch.bool)), reference)  # all dims: the EDM loss
    per_dim = torch.stack([loss(torch.eye(7, dtype=torch.bool)[d].expand(3, 7)) for d in range(7)], -1)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0, 0], [1] * 7, [1, 1, 1, 1, 0, 0, 0]], dtype=torch.bool)
    torch.testing.assert_close(loss(mask), (per_dim * mask[:, None]).sum(-1) / mask.sum(-1, keepdim=True))


# ------------------------------------------------------------------------------ sampling
@pytest.mark.parametrize("weights", [[3, 1], [0.5, 0.3, 0.2], [1, 0, 2], [1, 1, 1, 1, 5, 0.01]])
def test_schedule_follows_the_weights_within_one_sample_at_every_prefix(weights):
    schedule = WeightSchedule(weights)
    w = np.asarray(weights) / sum(weights)
    picks = np.asarray(schedule.take(4000))
    counts = np.cumsum(np.eye(len(weights))[picks], axis=0)  # (n, D): counts after each prefix
    n = np.arange(1, len(picks) + 1)[:, None]
    assert np.abs(counts - w * n).max() < 1
    assert (counts[:, np.asarray(weights) == 0] == 0).all()


def test_sampler_follows_the_weights_per_rank_and_resumes(world):
    mixture = read_mixture(world["mix"])
    data = MixtureData.load(mixture, [], lambda path, keys: load_episodes(path, keys, progress=False))
    ranks = [MixtureSampler(data, 1, 4, tag_rows=True) for _ in range(2)]
    gens = [torch.Generator().manual_seed(1000 * 0 + r) for r in range(2)]
    seen = [[], []]
    for _ in range(7):
        for r in range(2):
            batch = ranks[r].sample(13, gens[r])  # an odd per-rank batch
            seen[r] += batch["dataset"]
            is_mw = torch.tensor([d == "metaworld" for d in batch["dataset"]])
            # padding: the LIBERO rows' actions beyond 7 and states beyond 8 are zero
            assert batch["action"].shape[-1] == 7 and (batch["action"][is_mw][..., 4:] == 0).all()
            assert (batch["observation.state"][~is_mw][..., 8:] == 0).all()
    for r in range(2):  # 91 samples per rank at 3:1
        assert abs(seen[r].count("metaworld") - 0.75 * 91) < 1 and abs(seen[r].count("libero") - 0.25 * 91) < 1
    assert seen[0] == seen[1]  # every rank's stream follows the weights; the frames differ (own generator)
    resumed = MixtureSampler(data, 1, 4, tag_rows=True)
    resumed.schedule.load_state_dict(ranks[0].schedule.state_dict())
    assert resumed.sample(13, torch.Generator())["dataset"] == ranks[0].sample(13, torch.Generator())["dataset"]


def test_a_single_dataset_samples_exactly_as_before(world):
    data = load_episodes(world["metaworld"], progress=False)
    mixed = MixtureSampler(MixtureData(Mixture.single(world["metaworld"]), [data], []), 1, 4)
    old = WindowSampler(data, 1, 4)
    a, b = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    for _ in range(3):
        new_batch = mixed.sample(16, a)
        old_batch = old.batch(torch.randint(0, len(old), (16,), generator=b))
        assert new_batch.keys() == old_batch.keys()
        for key, value in old_batch.items():
            assert torch.equal(new_batch[key], value) if torch.is_tensor(value) else new_batch[key] == value


def test_mixture_run_resumes_to_the_same_weights(world, mixture_run, tmp_path):
    """A run stopped after its step-4 checkpoint continues exactly (sampler counts included)."""
    partial = tmp_path / "part"
    shutil.copytree(mixture_run, partial)
    shutil.rmtree(partial / "model")
    shutil.rmtree(partial / "checkpoints" / "step_00000008")
    (partial / "checkpoints" / "LATEST").write_text("step_00000004\n")
    resumed = train(tiny(partial, mixture=str(world["mix"]), steps=8), resume=True)
    reference = mixture_run
    assert weights_checksum(MoDEPolicy.from_pretrained(resumed / "model")) == weights_checksum(
        MoDEPolicy.from_pretrained(reference / "model")
    )


def test_cameras_map_onto_the_policy_cameras(world, tmp_path):
    """An image policy on two datasets whose cameras have other names: each maps its own camera."""
    root = tmp_path / "img"
    generate_demos(
        root / "mw", ["reach-v3"], 1, max_steps=40, progress=False, cameras=["corner"], image_size=LIBERO_SIZE
    )
    mix = root / "mix.json"
    mix.write_text(
        json.dumps(
            {
                "datasets": [
                    {
                        "path": "mw",
                        "weight": 1,
                        "name": "mw",
                        "cameras": {"observation.images.corner": "observation.images.static"},
                    },
                    {
                        "path": str(world["libero"]),
                        "weight": 1,
                        "name": "libero",
                        "cameras": {"observation.images.agentview": "observation.images.static"},
                    },
                ]
            }
        )
    )
    policy_cfg = get_preset(
        "cpu-image",
        goal_dim=8,
        n_layers=1,
        d_model=32,
        n_heads=2,
        vision_width=8,
        state_encoder_hidden=32,
        horizon=4,
        n_action_steps=4,
    )
    run = train(tiny(root / "run", mixture=str(mix), preset="cpu-image", policy=policy_cfg, steps=2, batch_size=6))
    policy = MoDEPolicy.from_pretrained(run / "model")
    assert policy.config.image_keys == ["observation.images.static"] and policy.config.image_size == LIBERO_SIZE


# ------------------------------------------------------------------------------ bad input
def _bad(world, name: str, text: str) -> Path:
    path = world["root"] / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "text, error, message",
    [
        (
            "datasets:\n  - {path: metaworld}\n  - {path: nowhere, weight: 1}\n",
            DataNotFoundError,
            "dataset folder not found",
        ),
        ("datasets:\n  - {path: metaworld, weight: -1}\n", ConfigError, "weight -1 must be a finite number >= 0"),
        (
            "datasets:\n  - {path: metaworld, weight: 0}\n  - {path: libero, weight: 0}\n",
            ConfigError,
            "every weight is 0",
        ),
        ("datasets:\n  - {path: metaworld, wieght: 2}\n", ConfigError, r"unknown key\(s\) wieght"),
        ("dataset:\n  - {path: metaworld}\n", ConfigError, r"unknown key\(s\) dataset"),
        ("datasets: []\n", ConfigError, "non-empty list"),
        ("datasets:\n  - {path: metaworld, weight: true}\n", ConfigError, "weight True"),
        ("datasets:\n  - {path: metaworld, name: a}\n  - {path: libero, name: a}\n", ConfigError, "used twice"),
        (
            "datasets:\n  - {path: libero, cameras: {observation.images.top: observation.images.static}}\n",
            DataError,
            r"has no camera\(s\) \['observation.images.top'\]",
        ),
        (
            "datasets:\n  - {path: libero, cameras: {observation.images.wrist: wrist}}\n",
            ConfigError,
            "must look like observation.images.",
        ),
        ("datasets: [oops\n", ConfigError, "cannot read it"),
    ],
)
def test_bad_mixture_files_name_the_file_and_the_problem(world, text, error, message):
    path = _bad(world, "bad.yaml", text)
    with pytest.raises(error, match=message) as info:
        read_mixture(path)
    assert str(path) in str(info.value)


def test_features_that_cannot_be_mapped_stop_before_anything_is_written(world, tmp_path, capsys):
    # an image policy needs the camera in every dataset; Meta-World's state-only demos have none
    mix = _bad(world, "nocam.yaml", "datasets:\n  - {path: metaworld, name: mw}\n  - {path: libero, name: lib}\n")
    before = {name: tree_digest(world[name]) for name in ("metaworld", "libero")}
    out = tmp_path / "run"
    assert (
        cli(
            [
                "train",
                "--mixture",
                str(mix),
                "--out",
                str(out),
                "--preset",
                "cpu-image",
                "--steps",
                "2",
                "--policy.image_keys=[observation.images.agentview]",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "nocam.yaml" in err and "'mw' has no camera for policy camera(s) ['observation.images.agentview']" in err
    assert not out.exists()
    assert cli(["train", "--mixture", str(world["root"] / "absent.yaml"), "--out", str(out)]) == 2
    assert "mixture file not found" in capsys.readouterr().err and not out.exists()
    assert cli(["train", "--mixture", str(mix), "--dataset", str(world["metaworld"]), "--out", str(out)]) == 2
    assert "not both" in capsys.readouterr().err
    assert {name: tree_digest(world[name]) for name in ("metaworld", "libero")} == before


def test_a_bad_mixture_leaves_an_existing_run_untouched(world, mixture_run, capsys):
    before = tree_digest(mixture_run)
    bad = _bad(world, "neg.yaml", "datasets:\n  - {path: metaworld, weight: -2}\n")
    assert cli(["train", "--mixture", str(bad), "--out", str(mixture_run), "--resume", "--steps", "12"]) == 2
    assert "weight -2" in capsys.readouterr().err
    assert tree_digest(mixture_run) == before


def test_finetuning_the_mixture_model_on_one_narrower_dataset(world, mixture_run, tmp_path):
    """The mixture model is 7 wide: a 4-d Meta-World fine-tune is padded, and needs no dataset name."""
    run = tmp_path / "ft"
    assert (
        cli(
            [
                "finetune",
                str(mixture_run),
                "--dataset",
                str(world["metaworld"]),
                "--out",
                str(run),
                "--steps",
                "2",
                "--batch_size",
                "8",
                "--progress=false",
            ]
        )
        == 0
    )
    policy = MoDEPolicy.from_pretrained(run / "model").eval()
    assert policy.dataset_names == ["metaworld"] and policy.config.freeze_router
    data = load_episodes(world["metaworld"], progress=False)
    chunk = policy.predict_action_chunk({"observation.state": data.state[:3], "task": [data.tasks[0]] * 3})
    assert chunk.shape == (3, 4, 4)


@pytest.mark.slow
def test_ddp_ranks_each_follow_the_weights(world, tmp_path):
    """Two CPU processes under torchrun: one model, and each rank's 6 x 8 rows split exactly 3:1."""
    import os
    import subprocess
    import sys

    run = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_port=29547",
        "-m",
        "mode_policy.cli",
        "train",
        "--mixture",
        str(world["mix"]),
        "--out",
        str(run),
        "--preset",
        "tiny",
        "--steps",
        "6",
        "--batch_size",
        "16",
        "--checkpoint_every",
        "6",
        "--language",
        "task",
        "--policy.goal_dim=16",
        "--device",
        "cpu",
        "--progress=false",
    ]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((run / "train_summary.json").read_text())["ranks_consistent"]
    state = torch.load(run / "checkpoints" / "step_00000006" / "training_state.pt", weights_only=False)
    assert state["sampler"]["counts"] == [36, 12]  # the schedule is the same on every rank


def test_state_groups_refuse_a_member_with_a_narrower_state(world, tmp_path, capsys):
    """Meta-World's 39 state values split in groups; LIBERO's 8, zero-padded to 39, cannot be."""
    out = tmp_path / "run"
    args = ["train", "--mixture", str(world["mix"]), "--out", str(out), "--preset", "tiny", "--steps", "2"]
    assert cli([*args, "--language", "task", "--policy.state_groups=[18,21]", "--progress=false"]) == 2
    err = capsys.readouterr().err
    assert "state_groups=[18, 21]" in err and "['libero'] have narrower states" in err
