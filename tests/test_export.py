"""Export of the cached sampler: ONNX (run with ONNX Runtime alone) and torch.export, in parity with eager."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from mode_policy import MoDEPolicy, get_preset
from mode_policy.bench.latency import bench_latency, format_latency
from mode_policy.cli.parsing import parse_command
from mode_policy.cli.serve import COMMANDS
from mode_policy.errors import ConfigError
from mode_policy.model.diffusion import SamplingSettings
from mode_policy.model.folded_sampler import FoldedSampler
from mode_policy.serving.export import (
    LEGACY_ONNX_OPSET,
    ONNX_OPSET,
    CachedSampler,
    example_inputs,
    export_sampler,
    onnx_opset,
    onnx_runtime_available,
)

TASKS = ["open the drawer", "press the button"]
PARITY = 1e-5


def make_policy(**overrides) -> MoDEPolicy:
    torch.manual_seed(0)
    # 4 sampling steps: the sampler is unrolled into the graph, so fewer steps export faster
    cfg = get_preset("tiny", state_dim=6, action_dim=3, goal_dim=8, num_inference_steps=4, **overrides)
    policy = MoDEPolicy(cfg)
    with torch.no_grad():  # a non-zero output head, so actions depend on every input
        torch.nn.init.normal_(policy.denoiser.net.action_out.weight, std=0.5)
    policy.set_normalization(
        {
            "action": {"min": [-2.0, 0.0, 5.0], "max": [2.0, 0.5, 6.0]},
            "observation.state": {"mean": [0.3] * 6, "std": [2.0] * 6},
        }
    )
    return policy.eval()


def eager(policy: MoDEPolicy, inputs: dict[str, torch.Tensor], sampling: SamplingSettings | None = None) -> np.ndarray:
    batch = {"observation.state": inputs["observation.state"], "goal": inputs["goal"]}
    return policy.predict_action_chunk(batch, inputs["noise"], sampling=sampling).numpy()


# Runs in a fresh interpreter where importing mode_policy fails: the artefact needs ONNX Runtime only.
ORT_ONLY = """
import sys, json, numpy as np
sys.modules["mode_policy"] = None
import onnxruntime as ort
session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
feeds = {k: np.asarray(v, dtype=np.float32) for k, v in json.loads(sys.stdin.read()).items()}
print(json.dumps(session.run(["action"], feeds)[0].tolist()))
"""


@pytest.mark.skipif(not onnx_runtime_available(), reason="needs onnxruntime, onnx and onnxscript")
def test_onnx_sampler_matches_the_eager_cached_sampler(tmp_path):
    import onnxruntime as ort

    policy = make_policy(goal_encoder={"type": "task", "tasks": TASKS, "dim": 8})
    path = export_sampler(policy, tmp_path / "sampler.onnx", "onnx", batch_size=2, tasks=[TASKS[1]])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["observation.state", "goal", "noise"]
    for seed in (1, 2):
        inputs = example_inputs(policy, 2, seed=seed)
        inputs["observation.state"] = inputs["observation.state"] * 3 + 1  # robot units, far from the mean
        got = session.run(["action"], {k: v.numpy() for k, v in inputs.items()})[0]
        want = eager(policy, inputs)
        assert got.shape == (2, 4, 3) and np.abs(got - want).max() <= PARITY
    assert np.abs(got[0] - got[1]).max() > 1e-3  # the rows differ: the check is not vacuous

    described = json.loads(path.with_suffix(".json").read_text())
    assert described["inputs"] == {"observation.state": [2, 1, 6], "goal": [2, 8], "noise": [2, 4, 3]}
    import onnx

    opsets = {o.domain: o.version for o in onnx.load(str(path)).opset_import}
    assert described["onnx_opset"] == onnx_opset() == opsets[""]
    assert list(described["goals"]) == TASKS
    goal = policy.goal_encoder([TASKS[1]])[0].detach().numpy()
    np.testing.assert_allclose(described["goals"][TASKS[1]], goal, rtol=1e-6)

    alone = subprocess.run(
        [sys.executable, "-c", ORT_ONLY, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        input=json.dumps({k: v.tolist() for k, v in inputs.items()}),
    )
    assert alone.returncode == 0, alone.stderr
    assert np.abs(np.array(json.loads(alone.stdout)) - want).max() <= PARITY


@pytest.mark.skipif(not onnx_runtime_available(), reason="needs onnxruntime, onnx and onnxscript")
def test_an_ort_chunk_restarts_on_another_thread_count_after_its_file_is_gone(tmp_path):
    from mode_policy.serving.export import OrtChunk

    policy = make_policy()
    path = export_sampler(policy, tmp_path / "sampler.onnx", "onnx", batch_size=1)
    chunk = OrtChunk(path, threads=1)
    path.unlink()  # the server exports to a temporary folder
    inputs = example_inputs(policy, 1, seed=3)
    batch = {k: v for k, v in inputs.items() if k != "noise"}
    one = chunk.predict_action_chunk(batch, inputs["noise"])
    session = chunk.session
    chunk.set_threads(2)
    assert chunk.session is not session and chunk.threads == 2
    assert chunk.session.get_session_options().intra_op_num_threads == 2
    torch.testing.assert_close(chunk.predict_action_chunk(batch, inputs["noise"]), one, atol=1e-6, rtol=0)
    np.testing.assert_allclose(one.numpy(), eager(policy, inputs), atol=PARITY)
    # what the server's thread governor calls with `backend="onnx"`: torch's count and a new session
    from mode_policy.serving.backends import OnnxBackend

    before = torch.get_num_threads()
    try:
        OnnxBackend(policy, chunk).set_threads(1)
        assert torch.get_num_threads() == 1 and chunk.threads == 1
        assert chunk.session.get_session_options().intra_op_num_threads == 1
    finally:
        torch.set_num_threads(before)


def mixture_policy() -> MoDEPolicy:
    """make_policy's network normalising two datasets: 'wide' (3-d actions, 6-d states), 'narrow' (2-d, 4-d)."""
    policy = make_policy()
    policy.set_dataset_normalization(
        {
            "wide": {
                "action": {"min": [-1.0] * 3, "max": [1.0] * 3},
                "observation.state": {"mean": [0.0] * 6, "std": [1.0] * 6},
            },
            "narrow": {
                "action": {"min": [-2.0, 5.0], "max": [2.0, 6.0]},
                "observation.state": {"mean": [0.3, -0.2, 0.1, 0.0], "std": [2.0, 0.5, 1.0, 3.0]},
            },
        }
    )
    return policy.eval()


@pytest.mark.skipif(not onnx_runtime_available(), reason="needs onnxruntime, onnx and onnxscript")
def test_a_mixture_policy_exports_for_one_dataset_at_its_widths(tmp_path):
    import onnxruntime as ort

    policy = mixture_policy()
    with pytest.raises(ConfigError, match="mixture of .*no dataset_name given"):
        export_sampler(policy, tmp_path / "none.onnx", "onnx")
    with pytest.raises(ConfigError, match="'calvin' is not one of its datasets"):
        export_sampler(policy, tmp_path / "bad.onnx", "onnx", dataset="calvin")
    path = export_sampler(policy, tmp_path / "narrow.onnx", "onnx", batch_size=2, dataset="narrow")
    described = json.loads(path.with_suffix(".json").read_text())
    assert described["dataset"] == "narrow" and described["outputs"]["action"] == [2, 4, 2]
    assert described["inputs"] == {"observation.state": [2, 1, 4], "goal": [2, 8], "noise": [2, 4, 3]}
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inputs = example_inputs(policy, 2, seed=5, dataset="narrow")
    got = session.run(["action"], {k: v.numpy() for k, v in inputs.items()})[0]
    want = policy.predict_action_chunk(
        {"observation.state": inputs["observation.state"], "goal": inputs["goal"]}, inputs["noise"], dataset="narrow"
    ).numpy()
    assert got.shape == (2, 4, 2) and np.abs(got - want).max() <= PARITY
    assert (got[..., 1] >= 5.0 - 1e-5).all()  # the narrow dataset's own action range
    with pytest.raises(ConfigError, match="trained on one dataset"):
        export_sampler(make_policy(), tmp_path / "single.onnx", "onnx", dataset="narrow")


@pytest.mark.skipif(not onnx_runtime_available(), reason="needs onnxruntime, onnx and onnxscript")
def test_the_opset_follows_what_the_installed_runtime_runs(monkeypatch):
    import onnx
    import onnxruntime

    assert onnx_opset() == (ONNX_OPSET if onnx.defs.onnx_opset_version() >= ONNX_OPSET else LEGACY_ONNX_OPSET)
    monkeypatch.setattr(onnxruntime, "__version__", "1.18.1")  # before RMSNormalization-23
    assert onnx_opset() == LEGACY_ONNX_OPSET


@pytest.mark.parametrize(
    "overrides",
    [{}, {"routing": "dense"}, {"state_groups": [2, 4]}, {"shared_expert": True}],
    ids=["folded", "dense-folded", "state-groups", "module-path"],
)
def test_torch_export_program_matches_eager(tmp_path, overrides):
    policy = make_policy(**overrides)
    # the lean sampler's configurations export its folded form, the others the module path
    assert (CachedSampler(policy).folded is None) == bool(overrides.get("shared_expert"))
    path = export_sampler(policy, tmp_path / "sampler.pt2", "torch_export", batch_size=1)
    program = torch.export.load(str(path)).module()
    inputs = example_inputs(policy, 1, seed=3)
    got = program(*inputs.values()).detach().numpy()
    assert np.abs(got - eager(policy, inputs)).max() <= PARITY


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"noise_token": False},
        {"noise_conditioning": "none"},
        {"routing": "dense"},
        {"top_k": 1},
        {"top_k": 3, "num_experts": 4},  # combinations that are weight copies, not views
    ],
)
def test_folded_sampler_is_the_lean_sampler_up_to_rounding(overrides):
    policy = make_policy(**overrides)
    plan = policy.denoiser.sampling_plan()
    folded = FoldedSampler(plan.lean)
    cond = torch.randn(3, 2, policy.config.d_model)
    x = torch.randn(3, policy.config.horizon, policy.config.action_dim) * policy.config.sigma_max
    with torch.no_grad():
        want = plan.lean.sample(cond, x, plan.sampler, plan.sigmas)
        got = folded(cond, x, plan.sampler, plan.sigmas)
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5) and want.abs().max() > 1e-2
    # one concatenated MLP per layer and distinct expert combination, shared by the steps using it
    pairs = {name for row in folded.mlp for name, _ in row}
    layers = policy.denoiser.net.moe_layers()
    with torch.no_grad():
        combos = {
            (i, tuple(sorted(layer.router(level.noise_emb[None]).topk(layer.top_k).indices[0].tolist())))
            for level in plan.levels
            for i, layer in enumerate(layers)
        }
    assert len(pairs) == (len(combos) if layers else policy.config.n_layers)


def test_export_refuses_what_it_cannot_run(tmp_path):
    with pytest.raises(ConfigError, match="state-only"):
        export_sampler(make_policy(image_keys=["observation.images.top"]), tmp_path / "a.onnx")
    with pytest.raises(ConfigError, match="token routing"):
        export_sampler(make_policy(routing="token"), tmp_path / "a.onnx")
    with pytest.raises(ConfigError, match="format='tflite'"):
        export_sampler(make_policy(), tmp_path / "a.onnx", "tflite")
    with pytest.raises(ConfigError, match="--tasks needs a policy with a goal encoder"):
        export_sampler(make_policy(), tmp_path / "a.onnx", tasks=["x"])
    mixture = make_policy()
    stats = {
        "action": {"min": [-1.0] * 3, "max": [1.0] * 3},
        "observation.state": {"mean": [0.0] * 6, "std": [1.0] * 6},
    }
    mixture.set_dataset_normalization({"a": stats, "b": stats})
    with pytest.raises(ConfigError, match="mixture of .* name the dataset"):
        export_sampler(mixture, tmp_path / "a.onnx")


def test_export_command_writes_to_the_model_folder(tmp_path):
    policy = make_policy()
    policy.save_pretrained(tmp_path / "run" / "model")
    cmd = COMMANDS["export"]
    opts = parse_command(
        cmd.options, [str(tmp_path / "run"), "--format", "torch_export", "--steps", "2"], "export", None, cmd.positional
    )
    assert cmd.run(opts) == 0
    path = tmp_path / "run" / "model" / "export" / "sampler_b1_s2.pt2"
    assert json.loads(path.with_suffix(".json").read_text())["num_inference_steps"] == 2
    inputs = example_inputs(policy, 1, seed=4)
    got = torch.export.load(str(path)).module()(*inputs.values()).detach().numpy()
    assert np.abs(got - eager(policy, inputs, SamplingSettings(num_inference_steps=2))).max() <= PARITY
    assert policy.config.num_inference_steps == 4  # the steps travelled as a value
    with pytest.raises(ConfigError, match="format='tflite'"):
        cmd.run(
            parse_command(cmd.options, [str(tmp_path / "run"), "--format", "tflite"], "export", None, cmd.positional)
        )


@pytest.mark.skipif(not onnx_runtime_available(), reason="needs onnxruntime, onnx and onnxscript")
def test_bench_latency_times_the_onnx_sampler_beside_eager():
    result = bench_latency(
        "tiny",
        rounds_b1=2,
        rounds_b64=2,
        overrides={"num_inference_steps": 3},
        profile=False,
        progress=False,
        onnx=True,
    )
    assert result["latency_b1"]["onnx_cached"]["runs"] == 2 and "onnx_cached" not in result["latency_b64"]
    assert result["onnx_max_abs_diff"] <= PARITY and result["ratios"]["onnx_over_cached_b1"] > 0
    assert result["ratios"]["onnx_cached_over_onnx_dense_active_b1"] > 0
    assert result["bounds"]["b1"]["onnx_dense_active"]["bound_ms"] == result["bounds"]["b1"]["dense_active"]["bound_ms"]
    assert "onnx_cached" in format_latency(result)
