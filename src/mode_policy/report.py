"""A markdown report with pictures for a training run directory.

``write_report(run_dir)`` reads what training and evaluation leave in a run
directory (see :mod:`mode_policy.train`)::

    config.json  metrics.jsonl  train_summary.json  eval_info.json  model/

and writes ``report/report.md`` next to three PNG figures:

* ``success_per_task.png``: success rate per task with 95% intervals;
* ``loss_curve.png``: training losses (and learning rate) against the step;
* ``expert_usage.png``: the router's expert probabilities at every noise level
  of the sampling schedule, i.e. which experts MoDE uses at which step.

Only ``model/`` is required; a section whose input is missing says so.
:func:`expert_routing` gives the numbers behind the expert figure.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from .diffusion import edm_scalings, make_schedule
from .fileio import atomic_write, atomic_write_text
from .nn.moe import choose_experts
from .confidence import wilson_interval
from .policy import MoDEPolicy

REPORT_DIR = "report"
REPORT_NAME = "report.md"
SUCCESS_PNG = "success_per_task.png"
LOSS_PNG = "loss_curve.png"
EXPERTS_PNG = "expert_usage.png"
DPI = 120


# ---------------------------------------------------------------- routing
@torch.no_grad()
def expert_routing(policy: MoDEPolicy) -> dict[str, Any]:
    """Router decisions at every network evaluation of the configured sampler.

    Noise levels are built exactly as :meth:`MoDEPolicy.sampling_plan` builds
    them (schedule, then ``sampler.eval_sigmas``), and each MoE layer's router
    is applied to their noise embeddings with the evaluation rule
    (deterministic top-k, renormalised weights). Returns plain lists::

        {"routing": "noise", "sampler": ..., "schedule": ..., "top_k": k, "num_experts": E,
         "sigmas": [M floats, high noise first],
         "layers": [{"probs": (M, E), "chosen": (M, k), "weights": (M, k)}, ...]}

    ``chosen`` lists expert indices in decreasing probability. For
    ``routing="dense"`` ``layers`` is empty; for ``routing="token"`` it is empty
    too and ``note`` explains why (the choice depends on the tokens).
    """
    cfg = policy.config
    transformer = policy.transformer
    sigmas = make_schedule(cfg.schedule, cfg.num_inference_steps, cfg.sigma_min, cfg.sigma_max, cfg.karras_rho)
    eval_sigmas = policy.sampler.eval_sigmas(sigmas)  # (M,)
    out: dict[str, Any] = {
        "routing": cfg.routing,
        "sampler": cfg.sampler,
        "schedule": cfg.schedule,
        "num_inference_steps": cfg.num_inference_steps,
        "top_k": cfg.top_k,
        "num_experts": cfg.num_experts,
        "sigmas": [float(s) for s in eval_sigmas.tolist()],
        "layers": [],
    }
    if cfg.routing == "dense":
        out["note"] = "dense variant: every block has one MLP, there is no routing"
        return out
    if cfg.routing == "token":
        out["note"] = (
            "token routing: each token picks its own experts, so the choice depends on the "
            "observations and actions, not on the noise level alone"
        )
        return out
    device = transformer.sigma_embed.weight.device
    c_noise = edm_scalings(eval_sigmas.double(), cfg.sigma_data)[3]
    noise_emb = transformer.embed_noise(c_noise.float().to(device))  # (M, d), as in sampling_plan
    for layer in transformer.moe_layers():
        probs = layer.router(noise_emb)  # (M, E), float32 softmax
        index, weights = choose_experts(probs, layer.top_k, sample=False)  # eval rule: top-k
        out["layers"].append({
            "probs": probs.cpu().tolist(),
            "chosen": index.cpu().tolist(),
            "weights": weights.float().cpu().tolist(),
        })
    return out


# ------------------------------------------------------------ run inputs
def _read_json(path: Path) -> Any | None:
    """Parsed JSON, or None if the file is missing (a corrupt file is an error naming it)."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Records of ``metrics.jsonl`` (empty if missing); a torn last line is skipped."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            if i == len(lines) - 1:  # a run killed mid-write leaves a partial last line
                continue
            raise ValueError(f"{path}, line {i + 1}: not valid JSON ({err})") from None
    return records


def success_rows(eval_info: Mapping[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Per-task rows and the overall row of an evaluation result.

    Accepts :func:`mode_policy.evaluate.evaluate_metaworld`'s dict (``per_task``
    a mapping task -> result, ``overall``) and LIBERO's (``per_task`` a list of
    dicts with ``name``/``n_rollouts``, top-level ``success_rate``). Each row has
    ``task``, ``instruction``, ``success_rate``, ``successes``, ``episodes``, ``ci95``.
    """
    per_task = eval_info.get("per_task")
    if per_task is None:
        raise ValueError("evaluation result has no 'per_task' entry")
    items = per_task.items() if isinstance(per_task, Mapping) else (
        (r.get("name", f"task {r.get('task_id', i)}"), r) for i, r in enumerate(per_task)
    )
    rows = []
    for task, r in items:
        episodes = int(r.get("episodes", r.get("n_rollouts", 0)))
        rate = float(r["success_rate"])
        successes = int(r.get("successes", r.get("n_successes", round(rate * episodes))))
        rows.append({
            "task": str(task), "instruction": str(r.get("instruction", "")), "success_rate": rate,
            "successes": successes, "episodes": episodes,
            "ci95": [float(c) for c in r["ci95"]] if "ci95" in r else list(wilson_interval(successes, episodes)),
        })
    o = eval_info.get("overall")
    if o is None:  # LIBERO: totals at the top level
        n = int(eval_info.get("n_rollouts", sum(r["episodes"] for r in rows)))
        s = int(eval_info.get("n_successes", sum(r["successes"] for r in rows)))
        o = {"success_rate": eval_info.get("success_rate", s / max(n, 1)), "successes": s, "episodes": n}
    successes, episodes = int(o.get("successes", 0)), int(o.get("episodes", 0))
    overall = {
        "task": "overall", "success_rate": float(o["success_rate"]), "successes": successes, "episodes": episodes,
        "ci95": [float(c) for c in o["ci95"]] if "ci95" in o else list(wilson_interval(successes, episodes)),
    }
    return rows, overall


# ---------------------------------------------------------------- figures
def _new_figure(width: float, height: float):
    from matplotlib.figure import Figure  # no pyplot: no global state, Agg canvas for PNG

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _save_png(fig, path: Path) -> Path:
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI, facecolor="white"))


def _short_task(task: str, width: int = 32) -> str:
    return task if len(task) <= width else task[: width - 1] + "…"


def plot_success(eval_info: Mapping[str, Any], path: str | Path) -> Path:
    """Horizontal bars of success per task with 95% intervals and the overall rate."""
    from matplotlib import colormaps

    rows, overall = success_rows(eval_info)
    n = len(rows)
    fig = _new_figure(8.0, 1.6 + 0.34 * max(n, 2))
    ax = fig.add_subplot()
    y = list(range(n))
    rates = [r["success_rate"] for r in rows]
    err = [[r["success_rate"] - r["ci95"][0] for r in rows], [r["ci95"][1] - r["success_rate"] for r in rows]]
    err = [[max(0.0, e) for e in side] for side in err]
    cmap = colormaps["RdYlGn"]
    ax.barh(y, rates, height=0.7, color=[cmap(0.15 + 0.7 * r) for r in rates], edgecolor="0.3", linewidth=0.5,
            xerr=err, error_kw={"ecolor": "0.2", "elinewidth": 1.0, "capsize": 3}, label="success rate (95% CI)")
    for yi, r in zip(y, rows):
        ax.text(min(r["ci95"][1], 1.0) + 0.015, yi, f"{r['success_rate']:.2f}  ({r['successes']}/{r['episodes']})",
                va="center", fontsize=8, color="0.15", zorder=4,
                bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.85, "pad": 0.6})
    mean = overall["success_rate"]
    ax.axvline(mean, color="tab:blue", linestyle="--", linewidth=1.5, label=f"overall {mean:.3f}")
    ax.set_yticks(y, [_short_task(r["task"]) for r in rows], fontsize=9)
    ax.set_ylim(n - 0.5, -0.5)  # first task on top
    ax.set_xlim(0.0, 1.22)
    ax.set_xticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.set_xlabel("success rate")
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)
    ax.spines[["top", "right"]].set_visible(False)
    ax.spines["bottom"].set_bounds(0.0, 1.0)  # the room right of 1.0 holds the value labels
    episodes = {r["episodes"] for r in rows}
    per = f"{episodes.pop()} episodes per task" if len(episodes) == 1 else "episodes vary per task"
    ax.set_title(f"Success per task ({n} tasks, {per})")
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncols=2, fontsize=8, frameon=False)
    return _save_png(fig, Path(path))


def _smooth(values: Sequence[float], window: int) -> list[float]:
    out, acc = [], []
    for v in values:
        acc.append(v)
        if len(acc) > window:
            acc.pop(0)
        out.append(sum(acc) / len(acc))
    return out


def plot_loss(records: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Training loss, diffusion loss (log y when they span a decade) and the
    learning rate on a twin axis; the balancing loss in a panel below if logged."""
    records = [r for r in records if "step" in r and "loss" in r]
    if not records:
        raise ValueError("no metrics records with 'step' and 'loss' to plot")
    steps = [r["step"] for r in records]
    has_balance = any("balance_loss" in r for r in records)
    fig = _new_figure(8.0, 5.6 if has_balance else 4.0)
    if has_balance:
        ax, ax_bal = fig.subplots(2, 1, sharex=True, height_ratios=[2.2, 1])
    else:
        ax, ax_bal = fig.add_subplot(), None
    smooth = len(records) >= 30
    window = max(3, len(records) // 25)
    curves = [("loss", "total loss", "tab:blue"), ("diffusion_loss", "diffusion loss", "tab:orange")]
    positive = []
    for key, label, color in curves:
        pts = [(r["step"], r[key]) for r in records if key in r and r[key] is not None and math.isfinite(r[key])]
        if not pts:
            continue
        xs, vs = zip(*pts)
        positive += [v > 0 for v in vs]
        if smooth:
            ax.plot(xs, vs, color=color, alpha=0.25, linewidth=0.8)
            ax.plot(xs, _smooth(vs, window), color=color, linewidth=1.8, label=f"{label} (moving avg {window})")
        else:
            ax.plot(xs, vs, color=color, linewidth=1.6, marker="o", markersize=2.5, label=label)
    values = [r["loss"] for r in records if math.isfinite(r["loss"])]
    if values and all(positive) and max(values) > 10 * min(values) > 0:
        ax.set_yscale("log")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3, which="both")
    handles, labels = ax.get_legend_handles_labels()
    if any("lr" in r for r in records):
        ax_lr = ax.twinx()
        lr_pts = [(r["step"], r["lr"]) for r in records if "lr" in r]
        ax_lr.plot(*zip(*lr_pts), color="0.45", linestyle=":", linewidth=1.4, label="learning rate")
        ax_lr.set_ylabel("learning rate", color="0.35")
        ax_lr.tick_params(axis="y", colors="0.35")
        ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
        ax_lr.set_ylim(bottom=0)
        h, l = ax_lr.get_legend_handles_labels()
        handles, labels = handles + h, labels + l
    ax.legend(handles, labels, loc="upper right", fontsize=8, framealpha=0.9)
    ax.set_title(f"Training loss ({steps[-1]} steps, final loss {records[-1]['loss']:.4g})")
    if ax_bal is not None:
        pts = [(r["step"], r["balance_loss"]) for r in records if "balance_loss" in r]
        xs, vs = zip(*pts)
        ax_bal.plot(xs, vs, color="tab:green", linewidth=1.4, marker="o" if not smooth else None, markersize=2.5,
                    label="balance loss")
        ax_bal.axhline(1.0, color="0.4", linestyle="--", linewidth=1.0, label="uniform routing (1.0)")
        ax_bal.set_ylabel("balance loss")
        ax_bal.grid(alpha=0.3)
        ax_bal.legend(loc="upper right", fontsize=8, framealpha=0.9)
        ax_bal.set_xlabel("step")
    else:
        ax.set_xlabel("step")
    return _save_png(fig, Path(path))


def _sigma_label(s: float) -> str:
    if s >= 10:
        return f"{s:.0f}"
    if s >= 0.1:
        return f"{s:.2g}" if s < 1 else f"{s:.1f}"
    return f"{s:.1e}".replace("e-0", "e-")


def plot_expert_routing(routing: Mapping[str, Any], path: str | Path) -> Path:
    """One heatmap per MoE layer: x = sampling step (sigma, high noise left),
    y = expert, colour = router probability, dots on the chosen top-k."""
    layers = routing["layers"]
    if not layers:
        raise ValueError(routing.get("note", "no MoE layers to plot"))
    sigmas = routing["sigmas"]
    m, n_exp = len(sigmas), len(layers[0]["probs"][0])
    n_layers = len(layers)
    ncols = min(n_layers, 4 if m <= 12 else 2)
    nrows = math.ceil(n_layers / ncols)
    cell_w = max(0.28, min(0.45, 4.0 / m))
    width = min(18.0, ncols * (m * cell_w + 0.9) + 1.2)
    height = nrows * (n_exp * 0.32 + 1.3) + 0.8
    fig = _new_figure(width, height)
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey=True)
    step_labels = [_sigma_label(s) for s in sigmas]
    # Colour range: 0 to the largest probability (at least twice uniform), so that a
    # router that barely departs from uniform still shows its structure.
    top = max(max(max(row) for row in layer["probs"]) for layer in layers)
    vmax = min(1.0, max(2.0 / n_exp, math.ceil(top * 10) / 10))
    image = None
    for i, layer in enumerate(layers):
        ax = axes[i // ncols][i % ncols]
        probs = torch.tensor(layer["probs"]).T.numpy()  # (E, M)
        image = ax.imshow(probs, aspect="auto", cmap="magma", vmin=0.0, vmax=vmax, interpolation="nearest")
        xs = [j for j, chosen in enumerate(layer["chosen"]) for _ in chosen]
        ys = [e for chosen in layer["chosen"] for e in chosen]
        ax.scatter(xs, ys, s=22, facecolor="white", edgecolor="black", linewidth=0.8, zorder=3,
                   label=f"chosen (top-{len(layer['chosen'][0])})")
        ax.set_xticks(range(m), step_labels, rotation=90, fontsize=7)
        ax.set_xticks([j - 0.5 for j in range(1, m)], minor=True)
        ax.set_yticks(range(n_exp), [f"E{e}" for e in range(n_exp)], fontsize=8)
        ax.set_yticks([e - 0.5 for e in range(1, n_exp)], minor=True)
        ax.grid(which="minor", color="0.5", linewidth=0.4, alpha=0.6)
        ax.tick_params(which="minor", length=0)
        ax.set_title(f"layer {i}", fontsize=9)
        if i // ncols == nrows - 1 or i + ncols >= n_layers:
            ax.set_xlabel("noise level σ (sampling step →)", fontsize=8)
        if i % ncols == 0:
            ax.set_ylabel("expert", fontsize=8)
    for j in range(n_layers, nrows * ncols):
        axes[j // ncols][j % ncols].set_visible(False)
    cbar = fig.colorbar(image, ax=axes, shrink=0.9, pad=0.01, fraction=0.05)
    cbar.set_label(f"router probability (white line: uniform, 1/{n_exp})", fontsize=8)
    cbar.ax.axhline(1.0 / n_exp, color="white", linewidth=1.5)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower right", fontsize=8, frameon=False)
    fig.suptitle(
        f"Experts chosen per noise level  ({routing.get('sampler', '?')}, {m} network evaluations)",
        fontsize=11,
    )
    return _save_png(fig, Path(path))


# ----------------------------------------------------------------- report
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


def _median(values: Sequence[float]) -> float:
    s = sorted(values)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else 0.5 * (s[mid - 1] + s[mid])


def _facts_section(run_cfg: Mapping[str, Any] | None, summary: Mapping[str, Any] | None,
                   records: Sequence[Mapping[str, Any]], policy: MoDEPolicy) -> list[str]:
    cfg = policy.config
    train_cfg = (run_cfg or {}).get("train", {})
    experts = "—" if cfg.routing == "dense" else f"{cfg.num_experts} (top-{cfg.top_k})"
    facts: list[tuple[str, str]] = [
        ("preset", str(train_cfg.get("preset", "n/a (no config.json)"))),
        ("architecture", f"{cfg.n_layers} layers, d_model {cfg.d_model}, {cfg.n_heads} heads"),
        ("routing", cfg.routing + (" (router sees only the noise level)" if cfg.routing == "noise" else "")),
        ("experts per layer", experts),
        ("action chunk", f"horizon {cfg.horizon}, {cfg.n_action_steps} executed, {cfg.n_obs_steps} obs step(s)"),
        ("sampler", f"{cfg.sampler}, {cfg.schedule} schedule, {cfg.num_inference_steps} steps, "
                    f"σ {cfg.sigma_max:g} → {cfg.sigma_min:g}"),
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
    sps = [float(r["samples_per_s"]) for r in records if "samples_per_s" in r]
    if sps:
        facts.append(("throughput", f"{_median(sps):,.0f} samples/s (median of {len(sps)} logged windows)"))
    if records:
        last = records[-1]
        final = f"{last['loss']:.4g} at step {last.get('step', '?')}" if "loss" in last else "n/a"
        if "diffusion_loss" in last:
            final += f" (diffusion {last['diffusion_loss']:.4g}"
            final += f", balance {last['balance_loss']:.3f})" if "balance_loss" in last else ")"
        facts.append(("final loss", final))
    lines = ["## Run", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {_md_cell(v)} |" for k, v in facts]
    missing = [name for name, present in (("config.json", run_cfg is not None),
                                          ("train_summary.json", summary is not None),
                                          ("metrics.jsonl", bool(records))) if not present]
    if missing:
        lines += ["", f"_Not found in the run directory: {', '.join(missing)}; "
                      "the facts above come from what is there._"]
    counts = policy.parameter_counts()
    lines += [
        "", "### Parameters", "",
        "| | total | active per forward pass |", "|---|---:|---:|",
        f"| policy | {counts['total_params']:,} ({_fmt_count(counts['total_params'])}) "
        f"| {counts['active_params']:,} ({_fmt_count(counts['active_params'])}) |",
        f"| transformer | {counts['transformer']['total']:,} ({_fmt_count(counts['transformer']['total'])}) "
        f"| {counts['transformer']['active']:,} ({_fmt_count(counts['transformer']['active'])}) |",
    ]
    if cfg.routing != "dense":
        unit = "sample (all its tokens)" if cfg.routing == "noise" else "token"
        lines += ["", f"Active parameters count the top-{cfg.top_k} experts per layer that one {unit} "
                      f"runs through, leaving out the other {cfg.num_experts - cfg.top_k} of {cfg.num_experts}."]
    return lines


def _success_section(eval_info: Mapping[str, Any] | None, out_dir: Path) -> list[str]:
    lines = ["## Evaluation", ""]
    if eval_info is None:
        return lines + ["_No evaluation: `eval_info.json` is not in the run directory "
                        "(evaluate the model to add success rates to this report)._"]
    rows, overall = success_rows(eval_info)
    if not rows:
        return lines + ["_`eval_info.json` lists no tasks._"]
    where = eval_info.get("env") or eval_info.get("suite")
    extra = []
    if where:
        extra.append(f"environment: {where}")
    if "seed" in eval_info:
        extra.append(f"seed {eval_info['seed']}")
    wall = eval_info.get("wall_s", eval_info.get("wall_time_s"))
    if wall is not None:
        extra.append(f"wall time {_fmt_duration(wall)}")
    if extra:
        lines += ["; ".join(extra) + ".", ""]
    lines += ["| task | instruction | success | 95% CI | episodes |", "|---|---|---:|---|---:|"]
    for r in rows:
        lines.append(f"| {_md_cell(r['task'])} | {_md_cell(r['instruction'])} | {r['success_rate']:.2f} "
                     f"| [{r['ci95'][0]:.2f}, {r['ci95'][1]:.2f}] | {r['episodes']} |")
    lines.append(f"| **overall** | | **{overall['success_rate']:.3f}** "
                 f"| [{overall['ci95'][0]:.2f}, {overall['ci95'][1]:.2f}] | {overall['episodes']} |")
    plot_success(eval_info, out_dir / SUCCESS_PNG)
    lines += ["", f"![Success rate per task with 95% Wilson intervals]({SUCCESS_PNG})"]
    return lines


def _loss_section(records: Sequence[Mapping[str, Any]], out_dir: Path) -> list[str]:
    lines = ["## Training curves", ""]
    if not any("loss" in r for r in records):
        return lines + ["_No training curves: `metrics.jsonl` is missing or has no loss records._"]
    plot_loss(records, out_dir / LOSS_PNG)
    lines.append(f"![Training loss and learning rate against the step]({LOSS_PNG})")
    if any("balance_loss" in r for r in records):
        lines += ["", "The balancing loss is `E * sum_i f_i * P_i` (1.0 for perfectly uniform expert use); "
                      "it is logged unweighted."]
    usage = [r["expert_usage"] for r in records if "expert_usage" in r]
    if usage:
        last = usage[-1]
        lines += ["", "Share of routing assignments per expert in the last logged training batch:", "",
                  "| layer | " + " | ".join(f"E{e}" for e in range(len(last[0]))) + " |",
                  "|---|" + "---:|" * len(last[0])]
        lines += [f"| {i} | " + " | ".join(f"{u:.2f}" for u in row) + " |" for i, row in enumerate(last)]
    return lines


def _experts_section(routing: Mapping[str, Any], out_dir: Path) -> list[str]:
    lines = ["## Experts per noise level", ""]
    if not routing["layers"]:
        return lines + [f"_No expert figure: {routing.get('note', 'the model has no MoE layers')}._"]
    plot_expert_routing(routing, out_dir / EXPERTS_PNG)
    m, k, e = len(routing["sigmas"]), routing["top_k"], routing["num_experts"]
    chosen_sets = {tuple(sorted(c)) for layer in routing["layers"] for c in layer["chosen"]}
    switches = sum(
        sum(sorted(a) != sorted(b) for a, b in zip(layer["chosen"], layer["chosen"][1:]))
        for layer in routing["layers"]
    )
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
        f"Across all layers the model uses {len(chosen_sets)} distinct expert set(s), and a layer changes "
        f"its experts between consecutive evaluations {switches} time(s) in total.",
    ]
    return lines


def load_run_policy(run_dir: str | Path) -> MoDEPolicy:
    """The final EMA policy of a run directory, with an error naming what is missing."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory not found: {run_dir}")
    model_dir = run_dir / "model"
    if not model_dir.is_dir():
        raise FileNotFoundError(
            f"model directory not found: {model_dir} (training writes the final EMA policy there when it finishes)"
        )
    return MoDEPolicy.from_pretrained(model_dir)  # CheckpointError names a missing or corrupt file


def write_report(run_dir: str | Path, out_dir: str | Path | None = None) -> Path:
    """Write ``report.md`` and its figures for a run directory; returns the report path.

    ``out_dir`` defaults to ``run_dir/report``. Needs ``run_dir/model``; every
    other input (config.json, metrics.jsonl, train_summary.json, eval_info.json)
    may be missing, and the report says which.
    """
    run_dir = Path(run_dir)
    policy = load_run_policy(run_dir)
    policy.eval()
    out_dir = Path(out_dir) if out_dir is not None else run_dir / REPORT_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    run_cfg = _read_json(run_dir / "config.json")
    summary = _read_json(run_dir / "train_summary.json")
    eval_info = _read_json(run_dir / "eval_info.json")
    records = read_metrics(run_dir / "metrics.jsonl")
    routing = expert_routing(policy)

    preset = (run_cfg or {}).get("train", {}).get("preset")
    title = f"# MoDE run report: `{run_dir.resolve().name}`"
    lines = [title, "", f"Run directory: `{run_dir}`" + (f" · preset `{preset}`" if preset else ""), ""]
    if eval_info is not None:
        _, overall = success_rows(eval_info)
        lines += [f"**Overall success: {overall['success_rate']:.3f}** "
                  f"(95% CI [{overall['ci95'][0]:.2f}, {overall['ci95'][1]:.2f}], {overall['episodes']} episodes)", ""]
    for section in (
        _facts_section(run_cfg, summary, records, policy),
        _success_section(eval_info, out_dir),
        _loss_section(records, out_dir),
        _experts_section(routing, out_dir),
    ):
        lines += section + [""]
    return atomic_write_text(out_dir / REPORT_NAME, "\n".join(lines).rstrip() + "\n")
