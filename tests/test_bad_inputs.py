"""A catalogue of bad or unusual inputs, run through the real command line and the Python API.

Every CLI case must end with exit status 2 and ONE line on stderr naming the problem (no
traceback), and leave the whole fixture tree as it was: every pre-existing file byte-identical,
and no file added (a failed command leaves nothing behind). The rows are grouped by class
(`ROW_CLASSES` counts them); a fault row runs with the fault it names (a full disk).
"""

import hashlib
import importlib.util
import json
import shutil
import socket
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
    data2 = root / "data2"  # the same task, other episodes: other normalisation statistics
    generate_demos(data2, ["reach-v3"], 1, seed=7, progress=False)
    (root / "a_folder").mkdir()
    (root / "existing.json").write_text('{"mine": true}\n')
    (root / "existing.onnx").write_bytes(b"not a graph")
    (root / "foreign.json").write_text('{"not": "an export description"}\n')
    (root / "foreign_out").mkdir()
    (root / "foreign_out" / "report.md").write_text("# my own notes\n")
    texts = {
        "cfg_big": "lr: 1e-3\nsteps: 99999999999999999999\n",
        "cfg_tiny": "lr: 1e-400\n",
        "cfg_preset": "preset: cpu\n",
        "mix_sum": f"datasets:\n  - {{path: {data}, weight: 1e308, name: a}}\n  - {{path: {data}, weight: 1e308, name: b}}\n",
        "mix_inf": f"datasets:\n  - {{path: {data}, weight: 1e999}}\n",
        "mix_tiny": f"datasets:\n  - {{path: {data}, weight: 1e-400}}\n",
        "mix_vanish": f"datasets:\n  - {{path: {data}, weight: 1e-300, name: a}}\n  - {{path: {data}, weight: 1e300, name: b}}\n",
        "study_ok": _study(data),
        "study_big": _study(data, "seeds: [99999999999999999999]\n"),
        "study_inf": _study(data, "eval_seed: 1e999\n"),
    }
    files = {}
    for name, text in texts.items():
        files[name] = root / f"{name}.yaml"
        files[name].write_text(text)
    big = root / "models" / "config_int64"
    shutil.copytree(run / "model", big)
    _edit_config(big, n_layers=99999999999999999999)
    models["config_int64"] = big
    busy = socket.socket()  # a port another server holds
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    yield {
        "root": root,
        "data": data,
        "data2": data2,
        "run": run,
        "models": models,
        "file": a_file,
        "dir": root / "a_folder",
        "old_eval": old_eval,
        "bad_eval": bad_eval,
        "cfg_list": cfg_list,
        "busy_port": busy.getsockname()[1],
        "official": Path(__file__).parent / "fixtures" / "official" / "experts" / "official.safetensors",
        **files,
    }
    busy.close()


def _study(data: Path, extra: str = "") -> str:
    return (
        f"dataset: {data}\ntasks: reach-v3\neval_episodes: 1\n"
        "train: {preset: tiny, steps: 2, batch_size: 8, language: task}\npolicy: {goal_dim: 8}\n"
        f"variants:\n  - name: default\n{extra}"
    )


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


def R(*args):
    """A `train --resume` of the fixture run to step 6, with nothing else but ``args``."""
    return ["train", "--output_dir={run}", "--resume", "--steps=6", *args]


# without calvin_env the import fails; with it, the Meta-World policy's instructions are not CALVIN's
# (refused before any simulator is built)
CALVIN_EVAL_ERROR = (
    "cannot import calvin_env"
    if importlib.util.find_spec("calvin_env") is None
    else "does not know CALVIN's instruction"
)

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
    (["eval", "{run}", "--env=libero", "--suite=libero_object", "--libero_tasks=0,x"], "expected LIBERO task indices"),
    (["eval", "{run}", "--env=libero", "--suite=libero_object", "--libero_tasks=3,10"], "has tasks 0-9"),
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
    (["demos", "--env=libero", "--episodes=50", "--max_attempts=20", "--out={root}/d0"], "--max_attempts 20 is below"),
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
    (["convert", "calvin", "{data}", "--out={data}"], "is an input of this command"),
    (["convert", "calvin", "{data}", "--out={data}", "--overwrite"], "is an input of this command"),
    (["convert", "calvin", "{data}", "--out={root}", "--overwrite"], "holds {data}, an input of this command"),
    (["convert", "calvin", "{data}", "--out={data}/converted"], "is inside {data}, an input"),
    (["convert", "libero", "{file}", "--out={file}/c"], "is not a folder"),
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
    # --- issue 29 -----------------------------------------------------------------------------
    # numbers: one parser (YAML files read 1e-3 as the command line does), overflow and underflow
    (T("--lr=1e999"), "--lr=1e999: 1e999 overflows a 64-bit float"),
    (T("--lr=1e-400"), "--lr=1e-400: 1e-400 underflows to 0"),
    (T("--weight_decay=4e-320"), "below the smallest normal 64-bit float"),
    (T("--betas=[0.9,1e-999]"), "1e-999 underflows to 0"),
    (T("--steps=99999999999999999999"), "does not fit a 64-bit integer"),
    (T("--seed=9223372036854775808"), "does not fit a 64-bit integer"),
    (T("--policy.d_model=1e999"), "overflows a 64-bit float"),
    (T("--config_path={cfg_big}"), "cfg_big.yaml, line 2: 99999999999999999999 does not fit a 64-bit integer"),
    (T("--config_path={cfg_tiny}"), "cfg_tiny.yaml: 1e-400 underflows to 0"),
    (["info", "--policy.sigma_max=1e400"], "overflows a 64-bit float"),
    (["eval", "{run}", "--episodes=99999999999999999999"], "does not fit a 64-bit integer"),
    (["eval", "{models[config_int64]}", "--tasks=reach-v3"], "n_layers=99999999999999999999: does not fit a 64-bit"),
    (["study", "{study_big}", "--out={root}/s0"], "study_big.yaml, line 8: 99999999999999999999 does not fit"),
    (["study", "{study_inf}", "--out={root}/s0"], "1e999 overflows a 64-bit float"),
    # mixtures
    (T("--mixture={mix_sum}", data=False), "sum beyond a 64-bit float"),
    (T("--mixture={mix_inf}", data=False), "1e999 overflows a 64-bit float"),
    (T("--mixture={mix_tiny}", data=False), "1e-400 underflows to 0"),
    (T("--mixture={mix_vanish}", data=False), "the weight of a is 0 next to the sum"),
    # resume says what it does: every flag the run cannot honour, with both values
    (R("--preset=cpu"), "preset: the run has 'tiny', given 'cpu'"),
    (R("--config_path={cfg_preset}"), "preset: the run has 'tiny'"),
    (R("--policy.d_model=128"), "d_model: the run has 64, given 128"),
    (R("--seed=1"), "seed: the run has 0, given 1"),
    (R("--dataset={data2}"), "the run was trained on"),
    # train: where the run goes
    (T("--output_dir={file}/run"), "is not a folder"),
    (T("--output_dir={data}/run"), "is inside {data}, an input of this command"),
    # eval: its output, and no evaluation log before the first unit has finished
    (["eval", "{run}", "--tasks=reach-v3", "--out={root}/existing.json"], "existing.json exists (pass --overwrite"),
    (["eval", "{run}", "--tasks=reach-v3", "--out={run}/config.json", "--overwrite"], "is an input of this command"),
    (["eval", "{run}", "--tasks=reach-v3", "--out={dir}"], "is a folder"),
    (["eval", "{run}", "--env=calvin", "--episodes=1"], CALVIN_EVAL_ERROR),
    (["eval", "{run}", "--env=libero", "--episodes=1", "--suite=libero_10"], "observation.state has shape"),
    # export: every output checked before any work
    (["export", "{run}", "--out={run}/model/model.safetensors"], "model.safetensors is an input of this command"),
    (["export", "{run}", "--out={run}/model/model.safetensors", "--overwrite"], "is an input of this command"),
    (["export", "{run}", "--out={run}/config.onnx"], "config.json is an input of this command"),
    (["export", "{run}", "--out={run}/config.onnx", "--overwrite"], "config.json is an input of this command"),
    (["export", "{run}", "--out={root}/existing.onnx"], "existing.onnx exists (pass --overwrite"),
    (["export", "{run}", "--out={root}/foreign.onnx", "--overwrite"], "foreign.json exists and is not the export's"),
    (["export", "{run}", "--out={root}/x.json"], "would be both the exported sampler and the export's description"),
    (["export", "{run}", "--out={dir}"], "a_folder is a folder"),
    (["export", "{run}", "--out={file}/x.onnx"], "a_file is not a folder"),
    (["export", "{run}", "--out=/sys/mode_policy_x.onnx"], "is not writable"),
    (["export", "{run}", "--format=tflite"], "format='tflite'"),
    (["export", "{run}", "--steps=-1"], "steps=-1"),
    (["export", "{run}", "--batch_size=0"], "batch_size=0"),
    (["export", "{root}/missing"], "missing"),
    (["export"], "give a run directory"),
    # realtime: its results folder, before the policy loads
    (["realtime", "{run}", "--out={root}/rt", "--delays=two"], "delays"),
    (["realtime", "{run}", "--out={file}"], "a_file is a file, not a folder"),
    (["realtime", "{run}", "--out={root}/rt", "--modes=teleport"], "--modes='teleport'"),
    # serve: the address, before the policy loads
    (["serve", "{run}", "--port=70000"], "port=70000: must be in [0, 65535]"),
    (["serve", "{run}", "--port=-1"], "port=-1: must be in [0, 65535]"),
    (["serve", "{run}", "--port={busy_port}"], "is in use"),
    (["serve", "{run}", "--host=192.0.2.1"], "is not an address of this machine"),
    (["serve", "{run}", "--host=no-such-host.invalid"], "host='no-such-host.invalid': no such address"),
    (["serve", "{run}", "--max_batch=0"], "max_batch=0"),
    (["serve", "{run}", "--backend=tflite"], "backend='tflite'"),
    (["serve", "{root}/missing"], "missing"),
    (["serve"], "give a run directory"),
    # study, report, demos, quickstart: folders
    (["study", "{study_ok}", "--out={file}"], "is a file, not a folder"),
    (["study", "{study_ok}", "--out={data}"], "is an input of this command"),
    (["study", "{study_ok}", "--out={root}/foreign_out"], "already holds report.md"),
    (["study", "{root}/missing.yaml", "--out={root}/s0"], "study file not found"),
    (["study", "{study_ok}"], "study needs a study file and --out"),
    (["report", "{run}", "--out={file}"], "is a file, not a folder"),
    (["report", "{run}", "--out={run}/model"], "is an input of this command"),
    (["report", "{run}", "--out={root}/foreign_out"], "already holds report.md"),
    (["demos", "--tasks=reach-v3", "--out={file}"], "is a file, not a folder"),
    (["quickstart", "--out={file}"], "is a file, not a folder"),
    # --- issue 27: convert official (a denoiser-only file made by the official code, 12-d goals) -----
    (["convert", "official", "{official}", "--out={root}/o", "--language=clip"], "gives 512-d goals"),
    (
        ["convert", "official", "{official}", "--out={root}/o", "--language=clip", "--language_path={dir}"],
        "no config.json",
    ),
    (["convert", "official", "{official}", "--out={root}/o", "--language_path={dir}"], "names the CLIP model of"),
    (["convert", "official", "{official}", "--out={root}/o", "--cameras=a,a"], "names a camera twice"),
    (["convert", "official", "{official}", "--out={root}/o", "--language=bert"], "language='bert'"),
    (["convert", "official", "{file}", "--out={root}/o"], "unknown checkpoint format"),
    (["convert", "official", "{dir}", "--out={root}/o"], "holds none of model_cleaned.safetensors"),
]

FAULT_CASES = [
    # (argv, fragment, fault)
    (["export", "{run}", "--out={root}/new.onnx"], "has 0 bytes free", "full_disk"),
    (["export", "{run}"], "has 0 bytes free", "full_disk"),
]


def _row_class(argv: list[str]) -> str:
    """A row's class: its command, with train's mixtures and resumes apart."""
    if not argv:
        return "train"
    if argv[0] == "train" and any(a.startswith("--mixture") for a in argv):
        return "train --mixture"
    if argv[0] == "train" and "--resume" in argv:
        return "train --resume"
    return argv[0]


def row_classes() -> dict[str, int]:
    """Rows of the catalogue by class (the closing note of a round reports them)."""
    counts: dict[str, int] = {}
    for argv, *_ in CASES + FAULT_CASES:
        counts[_row_class(argv)] = counts.get(_row_class(argv), 0) + 1
    return counts


def _check_row(world, argv, fragment, capsys) -> None:
    before = _tree_digest(world["root"])
    args = [a.format(**world) for a in argv]
    assert cli(args) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    if "--env=libero" in argv:  # LIBERO's own import warnings and the progress bar come first
        lines = [line for line in lines if line.strip() and not any(n in line for n in ("robosuite", "rollout/s]"))]
    assert "Traceback" not in captured.err and len(lines) == 1, captured.err
    err = lines[0]
    assert err.startswith(f"mode-policy {argv[0] if argv else ''}: error: "), err
    assert fragment.format(**world) in err, err
    assert _tree_digest(world["root"]) == before  # nothing changed, nothing added


@pytest.mark.parametrize("argv, fragment", CASES, ids=[" ".join(a)[:70] for a, _ in CASES])
def test_bad_command_line_input_is_one_clear_line_and_damages_nothing(world, argv, fragment, capsys):
    if "--env=libero" in argv and importlib.util.find_spec("libero") is None:
        fragment = "LIBERO"  # not installed: the simulator error instead of the policy's
    _check_row(world, argv, fragment, capsys)


@pytest.mark.parametrize("argv, fragment, fault", FAULT_CASES, ids=[" ".join(a)[:70] for a, *_ in FAULT_CASES])
def test_a_fault_is_one_clear_line_and_damages_nothing(world, argv, fragment, fault, capsys, monkeypatch):
    from mode_policy import fileio

    if fault == "full_disk":
        monkeypatch.setattr(fileio, "free_bytes", lambda folder: 0)
    _check_row(world, argv, fragment, capsys)


def test_the_catalogue_grows():
    counts = row_classes()
    assert sum(counts.values()) == len(CASES) + len(FAULT_CASES)
    assert {"export", "serve", "study", "train --mixture", "train --resume"} <= set(counts)


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


# ------------------------------------------------------------------ issue 29: what works
def test_yaml_files_read_numbers_as_the_command_line_does(world, tmp_path):
    from mode_policy.cli.parsing import parse_command
    from mode_policy.cli.pipeline import TrainOptions
    from mode_policy.data.mixture import read_mixture
    from mode_policy.study import load_study

    mixture = tmp_path / "mixture.yaml"
    mixture.write_text(f"datasets:\n  - {{path: {world['data']}, weight: 1e-3}}\n")
    assert read_mixture(mixture).members[0].weight == 0.001
    study = tmp_path / "study.yaml"
    study.write_text(_study(world["data"]).replace("language: task", "language: task, lr: 1e-3"))
    assert load_study(study).train["lr"] == 0.001
    config = tmp_path / "config.yaml"
    config.write_text("lr: 1e-3\nmin_lr_ratio: 5E-2\nbetas: [0.9, 1e-1]\n")
    from_file = parse_command(TrainOptions, [f"--config_path={config}"], "train")
    from_flags = parse_command(TrainOptions, ["--lr=1e-3", "--min_lr_ratio=5E-2", "--betas=[0.9,1e-1]"], "train")
    assert (from_file.lr, from_file.min_lr_ratio, from_file.betas) == (0.001, 0.05, (0.9, 0.1))
    assert (from_flags.lr, from_flags.min_lr_ratio, from_flags.betas) == (0.001, 0.05, (0.9, 0.1))


def test_a_run_without_latest_resumes_from_its_newest_intact_checkpoint_and_says_so(world, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(world["run"], run)
    (run / "checkpoints" / "LATEST").unlink()
    (run / "checkpoints" / "step_00000009").mkdir()  # a stray folder with no checkpoint in it
    assert cli(["train", f"--output_dir={run}", "--resume", "--steps=6", "--progress=false"]) == 0
    out = capsys.readouterr().out
    assert "resuming" in out and "at step 4" in out
    assert "LATEST is missing: resuming from the newest intact checkpoint, step_00000004" in out
    assert json.loads((run / "train_summary.json").read_text())["steps"] == 6


def test_resume_with_the_runs_own_values_given_again_is_no_conflict(world, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(world["run"], run)
    argv = ["train", f"--output_dir={run}", "--resume", "--steps=5", "--preset=tiny", "--policy.d_model=64"]
    assert cli(argv + ["--progress=false", "--lr=3e-4"]) == 0, capsys.readouterr().err


def test_export_api_refuses_an_existing_file_before_any_work(world, policy):
    from mode_policy.serving.export import export_sampler

    with pytest.raises(ConfigError, match=r"existing.onnx exists \(pass --overwrite"):
        export_sampler(policy, world["root"] / "existing.onnx")
    with pytest.raises(ConfigError, match="foreign.json exists and is not the export's description"):
        export_sampler(policy, world["root"] / "foreign.onnx", overwrite=True)


def test_a_server_whose_port_is_taken_says_so_in_one_line(world, policy):
    import asyncio

    from mode_policy.serving import PolicyServer

    server = PolicyServer(policy, port=world["busy_port"])  # built without the check from_path makes
    with pytest.raises(ConfigError, match=f"port {world['busy_port']} on 127.0.0.1 is in use"):
        asyncio.run(server.serve(asyncio.Event()))
    with pytest.raises(ConfigError, match="port=65536: must be in"):
        PolicyServer(policy, port=65536)
