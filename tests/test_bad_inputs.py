"""A catalogue of bad or unusual inputs, run through the real command line and the Python API.

Every CLI case must end with exit status 2 and ONE line on stderr naming the problem (no
traceback), and leave every pre-existing file of the dataset and the run byte-identical.
"""

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from mode_policy.cli import main as cli
from mode_policy.envs.metaworld_demos import generate_demos
from mode_policy.errors import ConfigError, DataError
from mode_policy.model.config import MoDEConfig, get_preset
from mode_policy.policy import MoDEPolicy
from mode_policy.training.config import TrainConfig
from mode_policy.training.loop import train


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny dataset, a tiny trained run, and a few broken copies of the run's model."""
    root = tmp_path_factory.mktemp("bad")
    data = root / "data"
    generate_demos(data, ["reach-v3"], 2, progress=False)
    run = root / "run"
    train(
        TrainConfig(
            dataset=str(data),
            output_dir=str(run),
            preset="tiny",
            steps=4,
            batch_size=8,
            log_every=2,
            checkpoint_every=2,
            warmup_steps=1,
            language="task",
            policy=get_preset("tiny", goal_dim=8),
            progress=False,
        )
    )
    models = {}
    for name, edit in {
        "truncated": lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:300]),
        "nan": None,
        "config_types": lambda d: _edit_config(d, n_layers="4"),
        "config_float": lambda d: _edit_config(d, horizon=10.5),
        "config_unknown": lambda d: _edit_config(d, d_modell=3),
        "config_garbage": lambda d: (d / "config.json").write_text("{not json"),
        "no_weights": lambda d: (d / "model.safetensors").unlink(),
        "standalone": lambda d: None,
    }.items():
        folder = root / "models" / name
        shutil.copytree(run / "model", folder)
        if name == "nan":
            policy = MoDEPolicy.from_pretrained(folder)
            with torch.no_grad():
                policy.goal_proj.weight[0, 0] = float("nan")
            policy.save_pretrained(folder)
        else:
            edit(folder)
        models[name] = folder
    a_file = root / "a_file"
    a_file.write_text("not a folder")
    old_eval = run.parent / "old_eval_run"
    shutil.copytree(run, old_eval)
    (old_eval / "eval_info.json").write_text(json.dumps({"env": "metaworld", "per_task": {}}))
    bad_eval = run.parent / "bad_eval_run"
    shutil.copytree(run, bad_eval)
    (bad_eval / "eval_info.json").write_text("{")
    cfg_list = root / "list.yaml"
    cfg_list.write_text("- 1\n- 2\n")
    return {
        "root": root,
        "data": data,
        "run": run,
        "models": models,
        "file": a_file,
        "old_eval": old_eval,
        "bad_eval": bad_eval,
        "cfg_list": cfg_list,
    }


def _edit_config(folder: Path, **changes) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    (folder / "config.json").write_text(json.dumps(cfg))


def T(*args, data=True, run=False):
    """A `train` command line on the fixture dataset (and, with run=True, resuming the fixture run)."""
    out = ["train", "--preset=tiny", "--language=task", "--policy.goal_dim=8", "--batch_size=8", "--progress=false"]
    if data:
        out.append("--dataset={data}")
    out.append("--output_dir={run}" if run else "--output_dir={root}/fresh_run")
    return out + list(args)


CASES = [
    # (argv, fragment of the one-line message)
    (T("--steps=0"), "steps=0: must be in [1, inf)"),
    (T("--steps=-5"), "steps=-5"),
    (T("--batch_size=0"), "batch_size=0"),
    (T("--batch_size=-4"), "batch_size=-4"),
    (T("--checkpoint_every=0"), "checkpoint_every=0"),
    (T("--log_every=0"), "log_every=0"),
    (T("--keep_checkpoints=0"), "keep_checkpoints=0"),
    (T("--warmup_steps=-1"), "warmup_steps=-1"),
    (T("--ema_decay=1.0"), "ema_decay=1.0"),
    (T("--lr=0"), "lr=0"),
    (T("--lr=-1e-3"), "lr=-0.001"),
    (T("--lr=.inf"), "expected a finite number"),
    (T("--lr=abc"), "Couldn't parse 'abc'"),
    (T("--grad_clip=0"), "grad_clip=0"),
    (T("--min_lr_ratio=2"), "min_lr_ratio=2"),
    (T("--betas=[0.9,1.5]"), "betas=(0.9, 1.5)"),
    (T("--eval_episodes=0"), "eval_episodes=0"),
    (T("--policy.n_layers=0"), "n_layers=0"),
    (T("--policy.d_model=-8"), "d_model=-8"),
    (T("--policy.attn_dropout=1.5"), "attn_dropout=1.5"),
    (T("--policy.goal_dropout=-0.1"), "goal_dropout=-0.1"),
    (T("--policy.n_obs_steps=0"), "n_obs_steps=0"),
    (T("--policy.horizon=0"), "horizon=0"),
    (T("--policy.n_action_steps=20"), "n_action_steps=20 must be in [1, horizon"),
    (T("--policy.num_experts=0"), "num_experts=0"),
    (T("--policy.top_k=9"), "top_k=9"),
    (T("--policy.n_heads=3"), "not divisible by n_heads=3"),
    (T("--policy.routing=foo"), "routing='foo'"),
    (T("--policy.sampler=foo"), "sampler='foo'"),
    (T("--policy.schedule=foo"), "schedule='foo'"),
    (T("--policy.sigma_min=100"), "sigma_min"),
    (T("--policy.vision_depth=7"), "vision_depth=7"),
    (T("--policy.num_inference_steps=0"), "num_inference_steps=0"),
    (T("--policy.image_keys=[cam]"), "camera keys look like"),
    (T("--policy.image_keys=[observation.images.nope]"), "not camera features"),
    (T("--policy.goal_encoder={{dim: 3}}"), "goal_encoder must name its 'type'"),
    (T("--policy.d_modl=3"), "did you mean --policy.d_model"),
    (T("--stepz=3"), "did you mean --steps"),
    (T("--policy.action_dim=7"), "policy.action_dim=7 does not match dataset"),
    (T("--policy.state_dim=20"), "set 0 for an image-only policy"),
    (T("--language=clip"), "--language_path=DIR, or allow a Hub download with --language_download=true"),
    (T("--device=cuda"), "no CUDA device"),
    (T("--device=tpu"), "device='tpu'"),
    (T("--language=klingon"), "language='klingon'"),
    (T("--preset=huge"), "unknown preset 'huge'"),
    (T("--config_path={root}/missing.yaml"), "cannot read it"),
    (T("--config_path={cfg_list}"), "expected a mapping"),
    (T(data=False), "train needs --dataset"),
    (["train", "--dataset={root}/missing", "--output_dir={root}/x"], "dataset folder not found"),
    (["train", "--dataset={data}", "--output_dir={file}"], "is a file, not a run directory"),
    (T("--output_dir={run}"), "is not empty (use --resume"),
    (["train", "--dataset={data}", "--output_dir={root}/nothing_here", "--resume"], "no checkpoint"),
    (T("--resume", "--steps=6", "--lr=0.1", run=True), "lr: the run has 0.0003, given 0.1"),
    (T("--resume", "--steps=6", "--policy.d_model=32", run=True), "policy.d_model: the run has 64, given 32"),
    (T("--resume", "--steps=6", "--batch_size=4", run=True), "batch_size: the run has 8, given 4"),
    (T("--resume", "--steps=3", run=True), "already at step 4"),
    # eval
    (["eval", "{root}/nowhere"], "checkpoint file missing"),
    (["eval"], "eval needs a run or model directory"),
    (["eval", "{run}", "--episodes=0"], "episodes=0"),
    (["eval", "{run}", "--steps=-1"], "steps=-1"),
    (["eval", "{run}", "--batch_size=0"], "batch_size=0"),
    (["eval", "{run}", "--videos=-1"], "videos=-1"),
    (["eval", "{run}", "--device=cuda"], "no CUDA device"),
    (["eval", "{run}", "--env=gym"], "--env='gym'"),
    (["eval", "{run}", "--env=libero", "--suite=libero_100"], "--suite='libero_100'"),
    (["eval", "{run}", "--out={file}/e.json"], "is not a folder"),
    (["eval", "{run}", "--tasks=not-a-task"], "not-a-task"),
    (["eval", "{models[truncated]}", "--tasks=reach-v3"], "corrupt or truncated"),
    (["eval", "{models[nan]}", "--tasks=reach-v3"], "NaN or inf weights"),
    (["eval", "{models[config_types]}", "--tasks=reach-v3"], "n_layers='4': expected an integer"),
    (["eval", "{models[config_float]}", "--tasks=reach-v3"], "horizon=10.5: expected an integer"),
    (["eval", "{models[config_unknown]}", "--tasks=reach-v3"], "unknown MoDEConfig field(s): d_modell"),
    (["eval", "{models[config_garbage]}", "--tasks=reach-v3"], "invalid config"),
    (["eval", "{models[no_weights]}", "--tasks=reach-v3"], "checkpoint file missing"),
    (["eval", "{models[standalone]}"], "say which tasks"),
    # demos
    (["demos", "--episodes=0", "--out={root}/d0"], "episodes=0"),
    (["demos", "--workers=0", "--out={root}/d0"], "workers=0"),
    (["demos", "--image_size=0", "--out={root}/d0"], "image_size=0"),
    (["demos", "--tasks=not-a-task", "--out={root}/d0"], "not-a-task"),
    (["demos", "--tasks=reach-v3", "--cameras=nope", "--out={root}/d0"], "nope"),
    (["demos", "--tasks=reach-v3", "--out={file}/d"], "is not a folder"),
    (["demos", "--tasks=reach-v3", "--out={data}"], "exists and is not empty"),
    # convert
    (["convert", "foo", "{root}"], "format 'foo'"),
    (["convert", "libero", "{root}/missing.hdf5", "--out={root}/c0"], "missing.hdf5"),
    (["convert", "calvin", "{root}/missing", "--out={root}/c0"], "missing"),
    (["convert", "libero", "{file}"], "needs a source and --out"),
    (["convert", "libero", "{file}", "--out={root}/c1"], "a_file"),
    (["convert", "calvin", "{data}", "--out={data}"], "exists and is not empty"),
    # inspect / report
    (["inspect", "{root}/missing"], "missing"),
    (["inspect", "{file}"], "a_file"),
    (["inspect", "{run}"], "info.json"),
    (["inspect"], "inspect needs a dataset folder"),
    (["report", "{root}/missing"], "missing"),
    (["report", "{old_eval}"], "not an evaluation result of schema version"),
    (["report", "{bad_eval}"], "not valid JSON"),
    (["report"], "report needs a run directory"),
    # info / bench / quickstart / toy / top level
    (["info", "--policy.n_layers=0"], "n_layers=0"),
    (["info", "--preset=x"], "unknown preset 'x'"),
    (["info", "--json=maybe"], "json"),
    (["bench", "foo"], "unknown benchmark 'foo'"),
    (["bench", "latency", "--preset=tiny", "--rounds_b1=1"], "need at least 2 timed rounds"),
    (["bench", "latency", "--preset=tiny", "--policy.routing=dense"], "use routing=noise"),
    (["bench", "latency", "--threads=-1"], "threads=-1"),
    (["quickstart", "--episodes=0", "--out={root}/q0"], "episodes=0"),
    (["quickstart", "--train.dataset=x", "--out={root}/q0"], "quickstart sets --train.dataset"),
    (["quickstart", "--out={run}"], "exists and is not empty"),
    (["quickstart", "--train.steps=0", "--out={root}/q0"], "steps=0"),
    (["toy", "--steps=abc"], "Couldn't parse 'abc'"),
]


@pytest.mark.parametrize("argv, fragment", CASES, ids=[" ".join(a)[:70] for a, _ in CASES])
def test_bad_command_line_input_is_one_clear_line_and_damages_nothing(world, argv, fragment, capsys):
    before = {name: _tree_digest(world[name]) for name in ("data", "run")}
    args = [a.format(**world) for a in argv]
    assert cli(args) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert "Traceback" not in captured.err and len(err.splitlines()) == 1, captured.err
    assert fragment in err, err
    assert {name: _tree_digest(world[name]) for name in ("data", "run")} == before


def test_unknown_command(capsys):
    assert cli(["trian"]) == 2
    assert "unknown command 'trian'" in capsys.readouterr().err


# --------------------------------------------------------------- Python API
@pytest.fixture(scope="module")
def policy():
    cfg = get_preset("tiny", state_dim=5, action_dim=3, goal_dim=8)
    p = MoDEPolicy(cfg).eval()
    return p


def _obs(b=2, **over):
    obs = {"observation.state": torch.zeros(b, 5), "goal": torch.zeros(b, 8)}
    obs.update(over)
    return obs


@pytest.mark.parametrize(
    "obs, fragment",
    [
        (
            _obs(**{"observation.state": torch.full((2, 5), float("nan"))}),
            "observation.state contains NaN (batch rows [0, 1])",
        ),
        (_obs(goal=torch.tensor([[float("inf")] * 8, [0.0] * 8])), "goal contains inf (batch rows [0])"),
        (
            _obs(**{"observation.state": torch.zeros(2, 4)}),
            "observation.state has shape (2, 4), expected (B, 5) or (B, 1, 5)",
        ),
        (_obs(**{"observation.state": torch.zeros(2, 3, 5)}), "observation.state has shape (2, 3, 5)"),
        (
            _obs(**{"observation.state": torch.zeros(2, 5, dtype=torch.bool)}),
            "observation.state has dtype torch.bool, expected a float array",
        ),
        (_obs(**{"observation.state": [[0.0] * 5] * 2}), "observation.state must be a tensor or numpy array, got list"),
        (_obs(goal=torch.zeros(3, 8)), "batch sizes differ between keys: observation.state: 2, goal: 3"),
        (_obs(goal=torch.zeros(2, 6)), "goal has width 6 (shape (2, 6)), expected (B, 8)"),
        ({"goal": torch.zeros(2, 8)}, "batch lacks 'observation.state' (B, 5)"),
        ({"observation.state": torch.zeros(2, 5)}, "batch needs a goal: 'goal' (B, 8)"),
        ("not a batch", "batch must be a map of feature names to arrays, got str"),
    ],
)
def test_bad_policy_inputs_raise_data_errors(policy, obs, fragment):
    with pytest.raises(DataError) as err:
        policy.predict_action_chunk(obs)
    assert fragment in str(err.value)


def test_numpy_inputs_give_the_same_actions_as_tensors(policy):
    noise = torch.randn(2, policy.config.horizon, 3)
    state = np.random.default_rng(0).normal(size=(2, 5)).astype(np.float32)
    as_numpy = policy.predict_action_chunk(_obs(**{"observation.state": state}), noise=noise)
    as_tensor = policy.predict_action_chunk(_obs(**{"observation.state": torch.from_numpy(state)}), noise=noise)
    torch.testing.assert_close(as_numpy, as_tensor, rtol=0, atol=0)


def test_task_list_must_match_the_batch(policy):
    cfg = get_preset(
        "tiny", state_dim=5, action_dim=3, goal_dim=4, goal_encoder={"type": "task", "tasks": ["a", "b"], "dim": 4}
    )
    p = MoDEPolicy(cfg).eval()
    with pytest.raises(DataError, match="batch sizes differ"):
        p.predict_action_chunk({"observation.state": torch.zeros(2, 5), "task": ["a"]})
    with pytest.raises(DataError, match="batch sizes differ"):  # a plain string is one row's instruction
        p.predict_action_chunk({"observation.state": torch.zeros(2, 5), "task": "a"})
    with pytest.raises(DataError, match="task must be a string or a non-empty list of strings"):
        p.predict_action_chunk({"observation.state": torch.zeros(2, 5), "task": ["a", 3]})
    with pytest.raises(DataError, match="task: unknown instruction 'c'; this policy knows 'a', 'b'"):
        p.predict_action_chunk({"observation.state": torch.zeros(1, 5), "task": ["c"]})
    noise = torch.randn(1, cfg.horizon, 3)
    one = p.predict_action_chunk({"observation.state": torch.zeros(1, 5), "task": "a"}, noise=noise)
    torch.testing.assert_close(
        one, p.predict_action_chunk({"observation.state": torch.zeros(1, 5), "task": ["a"]}, noise=noise)
    )


def test_select_action_refuses_a_batch_size_change_without_reset(policy):
    policy.reset()
    policy.select_action(_obs(2))
    with pytest.raises(DataError, match="batch size changed"):
        policy.select_action(_obs(3))
    policy.reset()
    assert policy.select_action(_obs(3)).shape == (3, 3)


@pytest.mark.parametrize(
    "changes, fragment",
    [
        ({"n_layers": "4"}, "n_layers='4': expected an integer"),
        ({"horizon": 10.5}, "horizon=10.5"),
        ({"causal": "yes"}, "causal='yes': expected true or false"),
        ({"image_keys": "observation.images.a"}, "expected a list"),
        ({"d_modell": 3}, "unknown MoDEConfig field"),
    ],
)
def test_config_json_fields_of_the_wrong_type(changes, fragment):
    data = {**get_preset("tiny").to_dict(), **changes}
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(").replace("[", r"\[")):
        MoDEConfig.from_dict(data)


def test_run_config_that_is_not_one():
    with pytest.raises(ConfigError, match="expected an object with 'train' and 'policy'"):
        TrainConfig.from_run_dict([1, 2])


def test_episodes_without_instructions_come_from_task_index_or_are_refused(world, monkeypatch):
    from mode_policy.data import windows
    from mode_policy.data.reader import DatasetReader

    real_init = DatasetReader.__init__

    def without_episode_tasks(self, root):  # episode metadata that lists no task (LeRobot allows it)
        real_init(self, root)
        self.episode_tasks = [""] * len(self.episode_tasks)

    monkeypatch.setattr(DatasetReader, "__init__", without_episode_tasks)
    data = windows.load_episodes(world["data"], progress=False)
    assert data.tasks == ["reach the goal position"]  # recovered from the frames' task_index

    def no_task_table(self, root):
        without_episode_tasks(self, root)
        self.tasks = []

    monkeypatch.setattr(DatasetReader, "__init__", no_task_table)
    with pytest.raises(DataError, match=r"episode\(s\) \[0, 1\] have no task instruction"):
        windows.load_episodes(world["data"], progress=False)


def test_diverging_training_is_one_line_and_leaves_a_restartable_stub(world, capsys):
    out = world["root"] / "diverged"
    base = [
        "train",
        f"--dataset={world['data']}",
        f"--output_dir={out}",
        "--preset=tiny",
        "--language=task",
        "--policy.goal_dim=8",
        "--batch_size=8",
        "--progress=false",
        "--warmup_steps=0",
    ]
    assert cli(base + ["--lr=1e8", "--steps=30", "--log_every=1"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "lower the lr" in err
    assert (out / "config.json").is_file()  # what it left is a stub of run files, no checkpoint
    assert cli(base + ["--resume", "--steps=2"]) == 2
    assert "stopped before its first checkpoint" in capsys.readouterr().err
    assert cli(base + ["--steps=2"]) == 0  # a normal start replaces the stub
    assert (out / "model" / "model.safetensors").is_file()
