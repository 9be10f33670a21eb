"""The report package: expert routing numbers, figures and the markdown report of a
run directory built in tmp_path (a real saved policy, synthetic metrics and eval)."""

import json
import math
import re

import pytest
import torch

from mode_policy.errors import CheckpointError, RunDirError
from mode_policy.evaluation.result import EvalResult, TaskResult
from mode_policy.model.config import get_preset
from mode_policy.policy import MoDEPolicy
from mode_policy.report import EVALS_PNG, EXPERTS_PNG, LOSS_PNG, SUCCESS_PNG, expert_routing, write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TASKS = {"reach-v3": 0.9, "push-v3": 0.42, "pick-place-v3": 0.16}


def tiny_policy(**kw):
    return MoDEPolicy(get_preset("tiny", state_dim=5, action_dim=3, goal_dim=8, **kw))


def make_run(root, policy, eval_info=True, n_records=20, metrics=None):
    """A run directory as train.py and the CLI leave it, without training."""
    run = root / "run"
    policy.save_pretrained(run / "model")
    cfg = policy.config
    (run / "config.json").write_text(
        json.dumps(
            {
                "train": {
                    "preset": "tiny",
                    "dataset": "data/mt3",
                    "steps": 50 * n_records,
                    "batch_size": 64,
                    "lr": 3e-4,
                },
                "policy": cfg.to_dict(),
                "world_size": 1,
            }
        )
    )
    with open(run / "metrics.jsonl", "w") as f:
        for i in range(n_records):
            step = 50 * (i + 1)
            d = 1.5 * math.exp(-step / 250) + 0.05
            usage = [[0.4, 0.3, 0.2, 0.1] for _ in range(cfg.n_layers)]
            f.write(
                json.dumps(
                    {
                        "step": step,
                        "loss": d + 0.011,
                        "diffusion_loss": d,
                        "balance_loss": 1.1 - 0.004 * i,
                        "lr": 3e-4 * min(1.0, step / 200),
                        "grad_norm": 0.7,
                        "samples_per_s": 1000.0 + i,
                        "wall_s": 0.2 * step,
                        "expert_usage": usage,
                    }
                )
                + "\n"
            )
    (run / "train_summary.json").write_text(json.dumps({"steps": 50 * n_records, "wall_s": 200.0, "world_size": 1}))
    if eval_info:
        per_task = {
            task: TaskResult(
                round(rate * 50),
                50,
                4.0,
                f"{task.removesuffix('-v3').replace('-', ' ')} the object",
                {"mean_steps": 210.0},
            )
            for task, rate in TASKS.items()
        }
        EvalResult(
            "metaworld", per_task, wall_s=12.5, seed=0, settings={"episodes_per_task": 50}, metrics=metrics or {}
        ).save(run / "eval_info.json")
    return run


def check_png(path):
    import matplotlib.image

    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, path
    assert len(data) > 10_000, f"{path} is suspiciously small ({len(data)} bytes)"
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[2] in (3, 4)
    assert image.shape[0] >= 200 and image.shape[1] >= 400
    assert image[..., :3].std() > 0.05  # not a blank canvas


# ------------------------------------------------------------ expert_routing
@pytest.mark.parametrize("sampler, steps, expected", [("ddim", 10, 10), ("heun", 5, 9), ("dpmpp_2m", 4, 4)])
def test_expert_routing_one_entry_per_network_evaluation(sampler, steps, expected):
    policy = tiny_policy(sampler=sampler, num_inference_steps=steps)
    routing = expert_routing(policy)
    assert len(routing["sigmas"]) == expected
    assert routing["sigmas"][0] == pytest.approx(policy.config.sigma_max)
    assert routing["sigmas"] == sorted(routing["sigmas"], reverse=True)  # high noise first
    assert len(routing["layers"]) == policy.config.n_layers
    k = policy.config.top_k
    for layer in routing["layers"]:
        probs = torch.tensor(layer["probs"])
        chosen = torch.tensor(layer["chosen"])
        weights = torch.tensor(layer["weights"])
        assert probs.shape == (expected, policy.config.num_experts)
        assert chosen.shape == weights.shape == (expected, k)
        assert torch.allclose(probs.sum(-1), torch.ones(expected), atol=1e-5)
        assert torch.allclose(weights.sum(-1), torch.ones(expected), atol=1e-5)
        for p, c, w in zip(probs, chosen, weights):
            rest = [e for e in range(p.numel()) if e not in c.tolist()]
            assert len(set(c.tolist())) == k
            assert p[c].min() >= p[rest].max()  # the top-k of the probabilities
            assert torch.allclose(w, p[c] / p[c].sum())


def test_expert_routing_matches_the_sampling_plan_cache():
    """The figure shows exactly the experts the expert cache fuses for sampling."""
    policy = tiny_policy()
    with torch.no_grad():  # give the routers some structure so the choice varies with sigma
        for layer in policy.denoiser.net.moe_layers():
            layer.router.net[2].weight.mul_(50)
    was_training = policy.training
    routing = expert_routing(policy)
    assert policy.training == was_training  # no mode change
    policy.eval()
    plan = policy.denoiser.sampling_plan()
    assert routing["sigmas"] == pytest.approx(plan.sampler.eval_sigmas(plan.sigmas).tolist())
    assert len({tuple(sorted(c)) for layer in routing["layers"] for c in layer["chosen"]}) > 1
    for li, layer in enumerate(routing["layers"]):
        for m, (chosen, weights) in enumerate(zip(layer["chosen"], layer["weights"])):
            order = sorted(range(len(chosen)), key=lambda i: chosen[i])  # the cache stores ascending experts
            mix = plan.levels[m].fused[li].mix.flatten().tolist()
            assert mix == pytest.approx([weights[i] for i in order], abs=1e-6)


@pytest.mark.parametrize("routing_mode", ["dense", "token"])
def test_expert_routing_without_noise_routing(routing_mode):
    routing = expert_routing(tiny_policy(routing=routing_mode))
    assert routing["layers"] == []
    assert len(routing["sigmas"]) == 10
    assert routing_mode in routing["note"]


# ------------------------------------------------------------------ report
def test_write_report_with_all_inputs(tmp_path):
    run = make_run(tmp_path, tiny_policy(), metrics={"avg_len": 2.345, "chain_success": [0.9, 0.6]})
    path = write_report(run)
    assert path == run / "report" / "report.md"
    text = path.read_text()
    for png in (SUCCESS_PNG, LOSS_PNG, EXPERTS_PNG):
        assert f"]({png})" in text  # relative link next to report.md
        check_png(path.parent / png)
    # key facts and parameter counts
    assert "| preset | tiny |" in text
    assert "2 layers, d_model 64" in text and "4 (top-2)" in text and "noise" in text
    assert "| steps | 1000 |" in text
    counts = MoDEPolicy.from_pretrained(run / "model").parameter_counts()
    assert f"{counts['total_params']:,}" in text and f"{counts['active_params']:,}" in text
    # success table: one row per task with its rate, and the overall line
    for task, rate in TASKS.items():
        row = next(line for line in text.splitlines() if line.startswith(f"| {task} |"))
        assert f"| {rate:.2f} |" in row and "| 50 |" in row
    assert re.search(r"\| \*\*overall\*\* \| .*\| 150 \|", text)
    assert "environment: metaworld; seed 0; wall time 12.5 s; episodes_per_task 50." in text
    assert "| avg_len | 2.345 |" in text and "| chain_success | [0.9, 0.6] |" in text
    assert "Experts per noise level" in text and "No evaluation" not in text
    assert "Success during training" not in text and not (path.parent / EVALS_PNG).exists()  # no --eval_every


def test_periodic_evaluations_become_a_success_versus_steps_section(tmp_path):
    run = make_run(tmp_path, tiny_policy())
    config = json.loads((run / "config.json").read_text())
    config["train"]["eval_episodes"] = 4
    (run / "config.json").write_text(json.dumps(config))
    per_task = dict.fromkeys(TASKS, 0.5)
    records = [
        {"step": 250, "success_rate": 0.25, "per_task": per_task},  # written before records had counts
        {"step": 500, "success_rate": 7 / 12, "successes": 7, "episodes": 12, "per_task": per_task},
    ]
    (run / "evals.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    text = write_report(run).read_text()
    rows = text.split("## Success during training", 1)[1].split("![")[0]
    assert "| 250 | 0.250 | [0.09, 0.53] | 12 |" in rows  # 3 of 3 tasks x 4 episodes
    assert "| 500 | 0.583 | [0.32, 0.81] | 12 |" in rows
    assert "| 1000 (final evaluation) | 0.493 |" in rows and "| 150 |" in rows  # eval_info.json, 74/150
    check_png(run / "report" / EVALS_PNG)


def test_report_without_eval_info_or_moe_says_so(tmp_path):
    run = make_run(tmp_path, tiny_policy(routing="token"), eval_info=False)
    (run / "train_summary.json").unlink()
    path = write_report(run, tmp_path / "elsewhere")
    assert path == tmp_path / "elsewhere" / "report.md"
    text = path.read_text()
    assert "eval_info.json" in text and "No evaluation" in text
    assert SUCCESS_PNG not in text and not (path.parent / SUCCESS_PNG).exists()
    assert "token routing" in text and EXPERTS_PNG not in text
    assert "train_summary.json" in text  # named as missing
    check_png(path.parent / LOSS_PNG)


def test_missing_run_or_model_is_a_clear_error(tmp_path):
    with pytest.raises(RunDirError, match="run directory not found"):
        write_report(tmp_path / "nope")
    run = make_run(tmp_path, tiny_policy())
    (run / "model" / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model.safetensors"):
        write_report(run)
    for f in (run / "model").iterdir():
        f.unlink()
    (run / "model").rmdir()
    with pytest.raises(RunDirError, match=re.escape(str(run / "model"))):
        write_report(run)
