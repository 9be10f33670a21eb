"""The command line: flags generated from the configs, presets, errors, and one tiny real run of every command."""

import dataclasses
import importlib.util
import json
import typing
from pathlib import Path

import pytest

from mode_policy.cli import main as cli
from mode_policy.cli.main import all_commands
from mode_policy.cli.parsing import parse_command
from mode_policy.cli.pipeline import QUICKSTART_TRAIN_DEFAULTS, TrainOptions
from mode_policy.errors import ConfigError
from mode_policy.model.config import MoDEConfig, get_preset
from mode_policy.training.config import TrainConfig
from mode_policy.training.run_dir import RunDir


def _field_docs(cls) -> dict[str, str]:
    """Field name -> first line of the docstring written under it (as draccus reads it)."""
    import ast
    import inspect
    import textwrap

    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    docs = {}
    for node, following in zip(body, body[1:]):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
        ):
            docs[node.target.id] = following.value.value.strip().splitlines()[0]
    return docs


def test_train_help_shows_every_train_and_policy_field_with_its_docstring(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli(["train", "--help"])
    assert exit_info.value.code == 0
    text = "".join(capsys.readouterr().out.split())  # undo the help formatter's line wrapping
    for cls, prefix in ((TrainConfig, ""), (MoDEConfig, "policy.")):
        docs = _field_docs(cls)
        for f in dataclasses.fields(cls):
            if f.name == "policy":
                continue
            assert f"--{prefix}{f.name}" in text, f.name
            assert f.name in docs, f"{cls.__name__}.{f.name} has no docstring"
            assert "".join(docs[f.name].split()) in text, f.name


@pytest.mark.parametrize("name", sorted(all_commands()))
def test_every_command_has_help(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli([name, "--help"])
    assert exit_info.value.code == 0
    assert f"mode-policy {name}" in capsys.readouterr().out


def test_top_level_usage_listsall_commands(capsys):
    assert cli(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in all_commands())
    assert cli([]) == 2
    assert cli(["nope"]) == 2 and "unknown command 'nope'" in capsys.readouterr().err


def test_preset_then_flags_and_flag_spellings():
    opts = parse_command(
        TrainOptions,
        ["--preset=tiny", "--policy.d_model=32", "--batch-size", "8", "--betas=[0.8,0.9]", "--resume", "--dataset=d"],
        "t",
    )
    tiny = get_preset("tiny")
    assert opts.policy == dataclasses.replace(tiny, d_model=32)  # the rest is the preset's
    assert opts.batch_size == 8 and opts.betas == (0.8, 0.9) and opts.resume is True
    assert opts.policy_overrides() == {"d_model": 32}
    default = parse_command(TrainOptions, [], "t")
    assert default.policy == get_preset("cpu") and default.resume is False


def test_config_file_sits_under_the_flags(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("preset: tiny\nlr: 0.001\nsteps: 7\npolicy:\n  routing: dense\n")
    opts = parse_command(TrainOptions, [f"--config_path={path}", "--steps=9"], "t")
    assert opts.preset == "tiny" and opts.lr == 0.001 and opts.steps == 9
    assert opts.policy == dataclasses.replace(get_preset("tiny"), routing="dense")


def test_train_out_is_an_alias_of_output_dir():
    cmd = all_commands()["train"]
    opts = parse_command(cmd.options, ["--out", "r1"], "t", aliases=cmd.aliases)
    assert opts.output_dir == "r1"
    assert parse_command(cmd.options, ["--out=r2"], "t", aliases=cmd.aliases).output_dir == "r2"
    assert parse_command(cmd.options, ["--output_dir=r3"], "t", aliases=cmd.aliases).output_dir == "r3"


def test_positional_arguments_map_to_fields():
    cmd = all_commands()["eval"]
    opts = parse_command(cmd.options, ["runs/x", "--episodes=3"], "t", positional=cmd.positional)
    assert opts.path == "runs/x" and opts.episodes == 3


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--policy.d_modl=3"], "did you mean --policy.d_model"),
        (["--policy.d_model=abc"], "Couldn't parse 'abc' into an int"),
        (["--policy.routing=foo"], "routing='foo': expected one of"),
        (["--preset=huge"], "unknown preset 'huge'"),
        (["--language=klingon"], "language='klingon'"),
    ],
)
def test_bad_flags_raise_config_errors_naming_the_problem(argv, message):
    with pytest.raises(ConfigError, match=message):
        parse_command(TrainOptions, argv, "t")


def test_user_errors_are_one_line_and_bugs_keep_their_traceback(monkeypatch, capsys):
    assert cli(["info", "--policy.n_heads=3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not divisible by n_heads=3" in err

    from mode_policy.cli import commands

    def broken(opts):
        raise KeyError("a bug inside the library")

    monkeypatch.setitem(commands.COMMANDS, "info", dataclasses.replace(commands.COMMANDS["info"], run=broken))
    with pytest.raises(KeyError, match="a bug inside the library"):
        cli(["info"])


def test_run_config_round_trips_exactly():
    cfg = TrainConfig(
        dataset="d",
        preset="tiny",
        policy=get_preset("tiny", image_keys=["observation.images.a"]),
        betas=(0.8, 0.99),
        language="task",
    )
    data = json.loads(json.dumps(cfg.to_run_dict(world_size=2)))
    assert TrainConfig.from_run_dict(data) == cfg
    assert TrainConfig.from_run_dict(data).to_run_dict(2) == data
    with pytest.raises(ConfigError, match="unknown TrainConfig field"):
        TrainConfig.from_run_dict({**data, "train": {**data["train"], "lrr": 1.0}})


def test_every_field_type_is_parseable_from_a_flag():
    """Each TrainConfig / MoDEConfig field, set to a non-default value through its flag, arrives typed."""
    values = {"str": "x", "int": "3", "float": "0.5", "bool": "false"}
    for name, annotation in typing.get_type_hints(TrainOptions).items():
        if annotation in (str, int, float, bool) and name not in ("preset", "language"):  # those two are validated
            opts = parse_command(TrainOptions, [f"--{name}={values[annotation.__name__]}"], "t")
            assert isinstance(getattr(opts, name), annotation), name
    for name, annotation in typing.get_type_hints(MoDEConfig).items():
        if annotation in (int, float, bool):
            try:
                opts = parse_command(TrainOptions, [f"--policy.{name}={values[annotation.__name__]}"], "t")
            except ConfigError:
                continue  # a value that fails validation (e.g. top_k=3 with 4 experts is fine, n_heads=3 is not)
            assert isinstance(getattr(opts.policy, name), annotation), name
    opts = parse_command(TrainOptions, ["--policy.goal_encoder={type: task, dim: 8}", "--policy.image_keys=[]"], "t")
    assert opts.policy.goal_encoder == {"type": "task", "dim": 8} and opts.policy.image_keys == []


# ------------------------------------------------------------ tiny real runs
@pytest.fixture(scope="module")
def quickstart(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("qs") / "quick"
    assert (
        cli(
            [
                "quickstart",
                f"--out={out}",
                "--tasks=reach-v3",
                "--episodes=2",
                "--eval_episodes=1",
                "--workers=1",
                "--train.preset=tiny",
                "--train.steps=4",
                "--train.batch_size=8",
                "--train.language=task",
                "--train.policy.goal_dim=8",
                "--train.log_every=2",
                "--train.progress=false",
            ]
        )
        == 0
    )
    return out


def test_quickstart_leaves_data_run_eval_and_report(quickstart):
    run = RunDir(quickstart / "run")
    assert (run.model / "model.safetensors").is_file() and run.report.joinpath("report.md").is_file()
    result = run.read_eval_info()
    assert list(result.per_task) == ["reach-v3"] and result.overall.episodes == 1
    saved = TrainConfig.from_run_dict(run.read_config())
    assert saved.steps == 4 and saved.policy.goal_dim == 8 and saved.policy.goal_encoder["type"] == "task"
    # the quickstart's own recipe fills what the command line left (steps and batch were given)
    assert (saved.lr, saved.warmup_steps) == (
        QUICKSTART_TRAIN_DEFAULTS["lr"],
        QUICKSTART_TRAIN_DEFAULTS["warmup_steps"],
    )


def test_inspect_eval_report_on_the_quickstart_output(quickstart, capsys, tmp_path):
    assert cli(["inspect", str(quickstart / "data"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["episodes"] == 2 and info["tasks"] == ["reach the goal position"]
    out = tmp_path / "e.json"
    assert cli(["eval", str(quickstart / "run"), "--episodes=1", f"--out={out}", "--steps=3", "--action_steps=2"]) == 0
    saved = json.loads(out.read_text())
    assert saved["per_task"]["reach-v3"]["episodes"] == 1
    assert saved["settings"]["n_action_steps"] == 2  # the override, not the policy's own 4
    capsys.readouterr()
    assert (
        cli(["eval", str(quickstart / "run"), "--episodes=1", f"--out={tmp_path / 'x.json'}", "--action_steps=9"]) == 2
    )
    assert "action_steps=9: the policy predicts chunks of 4 actions" in capsys.readouterr().err
    assert cli(["report", str(quickstart / "run"), f"--out={tmp_path / 'rep'}"]) == 0
    assert (tmp_path / "rep" / "report.md").is_file()


def test_eval_fails_early_on_an_unwritable_output(quickstart, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    assert cli(["eval", str(quickstart / "run"), f"--out={blocker / 'sub' / 'e.json'}"]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_info_toy_demos_bench_convert_run(tmp_path, capsys):
    assert cli(["info", "--preset=tiny", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["transformer"]["total"] > 0
    assert cli(["toy", "--steps=2"]) == 1  # far too short to separate the modes: the check says FAIL
    assert "FAIL" in capsys.readouterr().out
    assert cli(["demos", "--tasks=reach-v3", "--episodes=1", f"--out={tmp_path / 'd'}", "--workers=1"]) == 0
    assert (tmp_path / "d" / "meta" / "info.json").is_file()
    assert cli(["bench", "latency", "--preset=tiny", "--rounds_b1=1"]) == 2
    assert "need at least 2 timed rounds" in capsys.readouterr().err
    assert (
        cli(
            [
                "bench",
                "latency",
                "--preset=tiny",
                "--rounds_b1=2",
                "--rounds_b64=2",
                "--profile=false",
                "--onnx=false",
                "--json",
            ]
        )
        == 0
    )
    bench = json.loads(capsys.readouterr().out)
    assert bench["preset"] == "tiny" and bench["exact_max_abs_diff"] < 1e-5
    spec = importlib.util.spec_from_file_location(
        "calvin_fixture", Path(__file__).parent / "data" / "test_convert_calvin.py"
    )
    fixture = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fixture)
    fixture.write_calvin_split(tmp_path / "calvin" / "training")
    assert cli(["convert", "calvin", str(tmp_path / "calvin" / "training"), f"--out={tmp_path / 'c'}"]) == 0
    assert (tmp_path / "c" / "meta" / "info.json").is_file()
