"""The markdown report of a run directory: ``write_report(run_dir)``.

Reads what training and evaluation leave in a run directory (see
:class:`mode_policy.training.run_dir.RunDir`) and writes ``report/report.md`` next to
the figures of :mod:`mode_policy.report.figures`. Only ``model/`` is required;
a section whose input is missing says so.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..evaluation.result import EvalResult, wilson_interval
from ..fileio import atomic_write_text
from ..policy import MoDEPolicy
from ..training.run_dir import RunDir
from .analysis import expert_routing, load_run_policy, median_throughput, routing_changes
from .figures import (
    EVALS_PNG,
    EXPERTS_PNG,
    LOSS_PNG,
    SUCCESS_PNG,
    plot_eval_curve,
    plot_expert_routing,
    plot_loss,
    plot_success,
)

REPORT_NAME = "report.md"
METRICS_NAME = RunDir(".").metrics.name
EVAL_INFO_NAME = RunDir(".").eval_info.name


def _fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {seconds % 60:02.0f} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


def _fmt_count(n: int) -> str:
    if n >= 1e9:
        return f"{n / 1e9:.2f} B"
    if n >= 1e6:
        return f"{n / 1e6:.2f} M"
    if n >= 1e3:
        return f"{n / 1e3:.1f} k"
    return str(n)


def _md_cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _facts_section(
    run: RunDir,
    run_cfg: Mapping[str, Any] | None,
    summary: Mapping[str, Any] | None,
    records: Sequence[Mapping[str, Any]],
    policy: MoDEPolicy,
) -> list[str]:
    cfg = policy.config
    train_cfg = (run_cfg or {}).get("train", {})
    experts = "—" if cfg.routing == "dense" else f"{cfg.num_experts} (top-{cfg.top_k})"
    facts: list[tuple[str, str]] = [
        ("preset", str(train_cfg.get("preset", "n/a (no config.json)"))),
        ("architecture", f"{cfg.n_layers} layers, d_model {cfg.d_model}, {cfg.n_heads} heads"),
        ("routing", cfg.routing + (" (router sees only the noise level)" if cfg.routing == "noise" else "")),
        ("experts per layer", experts),
        ("action chunk", f"horizon {cfg.horizon}, {cfg.n_action_steps} executed, {cfg.n_obs_steps} obs step(s)"),
        (
            "sampler",
            f"{cfg.sampler}, {cfg.schedule} schedule, {cfg.num_inference_steps} steps, "
            f"σ {cfg.sigma_max:g} → {cfg.sigma_min:g}",
        ),
    ]
    if cfg.goal_encoder:
        facts.append(("goal encoder", str(cfg.goal_encoder.get("type"))))
    if train_cfg:
        if train_cfg.get("dataset"):
            facts.append(("dataset", f"`{train_cfg['dataset']}`"))
        facts.append(("batch / lr", f"{train_cfg.get('batch_size', '?')} / {train_cfg.get('lr', '?')}"))
    if summary is not None:
        facts.append(("steps", str(summary.get("steps", "n/a"))))
        facts.append(("wall time", _fmt_duration(summary.get("wall_s"))))
        world = summary.get("world_size", (run_cfg or {}).get("world_size"))
        if world is not None:
            facts.append(("processes (world size)", str(world)))
    elif records:
        facts.append(("steps (last logged)", str(records[-1].get("step", "n/a"))))
        facts.append(("wall time (last logged)", _fmt_duration(records[-1].get("wall_s"))))
    throughput = median_throughput(records)
    if throughput is not None:
        facts.append(("throughput", f"{throughput[0]:,.0f} samples/s (median of {throughput[1]} logged windows)"))
    if records:
        last = records[-1]
        final = f"{last['loss']:.4g} at step {last.get('step', '?')}" if "loss" in last else "n/a"
        if "diffusion_loss" in last:
            final += f" (diffusion {last['diffusion_loss']:.4g}"
            final += f", balance {last['balance_loss']:.3f})" if "balance_loss" in last else ")"
        facts.append(("final loss", final))
    lines = ["## Run", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {_md_cell(v)} |" for k, v in facts]
    missing = [
        path.name
        for path, present in (
            (run.config, run_cfg is not None),
            (run.summary, summary is not None),
            (run.metrics, bool(records)),
        )
        if not present
    ]
    if missing:
        lines += [
            "",
            f"_Not found in the run directory: {', '.join(missing)}; the facts above come from what is there._",
        ]
    counts = policy.parameter_counts()
    lines += [
        "",
        "### Parameters",
        "",
        "| | total | active per forward pass |",
        "|---|---:|---:|",
        f"| policy | {counts['total_params']:,} ({_fmt_count(counts['total_params'])}) "
        f"| {counts['active_params']:,} ({_fmt_count(counts['active_params'])}) |",
        f"| transformer | {counts['transformer']['total']:,} ({_fmt_count(counts['transformer']['total'])}) "
        f"| {counts['transformer']['active']:,} ({_fmt_count(counts['transformer']['active'])}) |",
    ]
    if cfg.routing != "dense":
        unit = "sample (all its tokens)" if cfg.routing == "noise" else "token"
        lines += [
            "",
            f"Active parameters count the top-{cfg.top_k} experts per layer that one {unit} "
            f"runs through, leaving out the other {cfg.num_experts - cfg.top_k} of {cfg.num_experts}.",
        ]
    return lines


def _success_section(result: EvalResult | None, out_dir: Path) -> list[str]:
    lines = ["## Evaluation", ""]
    if result is None:
        return lines + [
            f"_No evaluation: `{EVAL_INFO_NAME}` is not in the run directory "
            "(evaluate the model to add success rates to this report)._"
        ]
    if not result.per_task:
        return lines + [f"_`{EVAL_INFO_NAME}` lists no tasks._"]
    extra = [f"environment: {result.env}"] if result.env else []
    extra += [f"seed {result.seed}", f"wall time {_fmt_duration(result.wall_s)}"]
    extra += [f"{k} {_md_cell(v)}" for k, v in result.settings.items()]
    lines += ["; ".join(extra) + ".", ""]
    lines += ["| task | instruction | success | 95% CI | episodes |", "|---|---|---:|---|---:|"]
    for name, r in result.per_task.items():
        lines.append(
            f"| {_md_cell(name)} | {_md_cell(r.instruction)} | {r.success_rate:.2f} "
            f"| [{r.ci95[0]:.2f}, {r.ci95[1]:.2f}] | {r.episodes} |"
        )
    o = result.overall
    lines.append(f"| **overall** | | **{o.success_rate:.3f}** | [{o.ci95[0]:.2f}, {o.ci95[1]:.2f}] | {o.episodes} |")
    if result.metrics:
        lines += ["", "| metric | value |", "|---|---:|"]
        lines += [
            f"| {_md_cell(k)} | {_md_cell(f'{v:.3f}' if isinstance(v, float) else v)} |"
            for k, v in result.metrics.items()
        ]
    plot_success(result, out_dir / SUCCESS_PNG)
    lines += ["", f"![Success rate per task with 95% Wilson intervals]({SUCCESS_PNG})"]
    return lines


def _loss_section(records: Sequence[Mapping[str, Any]], out_dir: Path) -> list[str]:
    lines = ["## Training curves", ""]
    if not any("loss" in r for r in records):
        return lines + [f"_No training curves: `{METRICS_NAME}` is missing or has no loss records._"]
    plot_loss(records, out_dir / LOSS_PNG)
    lines.append(f"![Training loss and learning rate against the step]({LOSS_PNG})")
    if any("balance_loss" in r for r in records):
        lines += [
            "",
            "The balancing loss is `E * sum_i f_i * P_i` (1.0 for perfectly uniform expert use); "
            "it is logged unweighted.",
        ]
    usage = [r["expert_usage"] for r in records if "expert_usage" in r]
    if usage:
        last = usage[-1]
        lines += [
            "",
            "Share of routing assignments per expert in the last logged training batch:",
            "",
            "| layer | " + " | ".join(f"E{e}" for e in range(len(last[0]))) + " |",
            "|---|" + "---:|" * len(last[0]),
        ]
        lines += [f"| {i} | " + " | ".join(f"{u:.2f}" for u in row) + " |" for i, row in enumerate(last)]
    return lines


def _eval_counts(record: Mapping[str, Any], episodes_per_task: int) -> tuple[int, int]:
    """(successes, episodes) of a periodic evaluation record; records written before they carried
    counts hold a rate per task, from ``episodes_per_task`` episodes each."""
    if "successes" in record and "episodes" in record:
        return int(record["successes"]), int(record["episodes"])
    episodes = episodes_per_task * len(record.get("per_task") or {}) or episodes_per_task
    return round(record["success_rate"] * episodes), episodes


def _evals_section(
    evals: Sequence[Mapping[str, Any]],
    run_cfg: Mapping[str, Any] | None,
    summary: Mapping[str, Any] | None,
    result: EvalResult | None,
    out_dir: Path,
) -> list[str]:
    """The periodic evaluations (``--eval_every``) as a table and a success-versus-steps figure;
    nothing for a run without them."""
    evals = [r for r in evals if "step" in r and "success_rate" in r]
    if not evals:
        return []
    train_cfg = (run_cfg or {}).get("train", {})
    points = [(int(r["step"]), *_eval_counts(r, int(train_cfg.get("eval_episodes", 1)))) for r in evals]
    final_step = (summary or {}).get("steps") or train_cfg.get("steps")
    final = None
    if result is not None and final_step:
        final = (int(final_step), result.overall.successes, result.overall.episodes)
    lines = ["## Success during training", "", "| step | success | 95% CI | episodes |", "|---:|---:|---|---:|"]
    rows = [(p, "") for p in points] + ([(final, " (final evaluation)")] if final else [])
    for (step, successes, episodes), tag in rows:
        lo, hi = wilson_interval(successes, episodes)
        lines.append(f"| {step}{tag} | {successes / episodes:.3f} | [{lo:.2f}, {hi:.2f}] | {episodes} |")
    plot_eval_curve(points, out_dir / EVALS_PNG, final)
    return lines + ["", f"![Success of the periodic evaluations against the step]({EVALS_PNG})"]


def _experts_section(routing: Mapping[str, Any], out_dir: Path) -> list[str]:
    lines = ["## Experts per noise level", ""]
    if not routing["layers"]:
        return lines + [f"_No expert figure: {routing.get('note', 'the model has no MoE layers')}._"]
    plot_expert_routing(routing, out_dir / EXPERTS_PNG)
    m, k, e = len(routing["sigmas"]), routing["top_k"], routing["num_experts"]
    n_sets, switches = routing_changes(routing)
    lines += [
        f"![Router probability per expert and noise level, chosen experts marked]({EXPERTS_PNG})",
        "",
        f"MoDE's router sees only the noise level, never the observations, so the experts each layer "
        f"uses at each of the {m} network evaluations of the `{routing['sampler']}` sampler are fixed "
        f"before sampling starts (and are fused into one MLP per layer and step by the expert cache). "
        f"Each panel is one transformer layer: columns are the evaluations from the noisiest "
        f"(σ = {routing['sigmas'][0]:g}, left) to the cleanest (σ = {routing['sigmas'][-1]:g}, right), "
        f"rows are the {e} experts, the colour is the router's softmax probability and the dots mark "
        f"the top-{k} experts used at inference (their probabilities, renormalised, are the mixing weights). "
        f"Different dots at high and low noise mean the layer has specialised experts to noise levels; "
        f"a flat, uniform colour means the router is not (yet) using the noise level.",
        "",
        f"Across all layers the model uses {n_sets} distinct expert set(s), and a layer changes "
        f"its experts between consecutive evaluations {switches} time(s) in total.",
    ]
    return lines


def write_report(run_dir: str | Path, out_dir: str | Path | None = None) -> Path:
    """Write ``report.md`` and its figures for a run directory; returns the report path.

    ``out_dir`` defaults to ``run_dir/report``. Needs ``run_dir/model``; every
    other input (config.json, metrics.jsonl, train_summary.json, eval_info.json)
    may be missing, and the report says which.
    """
    run = RunDir(run_dir)
    policy = load_run_policy(run)
    policy.eval()
    out_dir = Path(out_dir) if out_dir is not None else run.report
    out_dir.mkdir(parents=True, exist_ok=True)
    run_cfg = run.read_config()
    summary = run.read_summary()
    result = run.read_eval_info()
    records = run.read_metrics()
    routing = expert_routing(policy)

    preset = (run_cfg or {}).get("train", {}).get("preset")
    title = f"# MoDE run report: `{run.root.resolve().name}`"
    lines = [title, "", f"Run directory: `{run.root}`" + (f" · preset `{preset}`" if preset else ""), ""]
    if result is not None:
        o = result.overall
        lines += [
            f"**Overall success: {o.success_rate:.3f}** "
            f"(95% CI [{o.ci95[0]:.2f}, {o.ci95[1]:.2f}], {o.episodes} episodes)",
            "",
        ]
    for section in (
        _facts_section(run, run_cfg, summary, records, policy),
        _success_section(result, out_dir),
        _evals_section(run.read_evals(), run_cfg, summary, result, out_dir),
        _loss_section(records, out_dir),
        _experts_section(routing, out_dir),
    ):
        if section:
            lines += section + [""]
    return atomic_write_text(out_dir / REPORT_NAME, "\n".join(lines).rstrip() + "\n")
