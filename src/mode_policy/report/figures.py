"""The report's figures, as PNG files (matplotlib, no pyplot state).

* :func:`plot_success`: success rate per task with 95% intervals;
* :func:`plot_loss`: training losses (and learning rate) against the step;
* :func:`plot_eval_curve`: success of the periodic evaluations (``--eval_every``) against the step;
* :func:`plot_expert_routing`: the router's expert probabilities at every noise
  level of the sampling schedule (from :func:`~mode_policy.report.analysis.expert_routing`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ..errors import DataError
from ..evaluation.result import EvalResult, wilson_interval
from ..fileio import atomic_write

SUCCESS_PNG = "success_per_task.png"
LOSS_PNG = "loss_curve.png"
EXPERTS_PNG = "expert_usage.png"
EVALS_PNG = "success_during_training.png"
DPI = 120


def _new_figure(width: float, height: float):
    from matplotlib.figure import Figure  # no pyplot: no global state, Agg canvas for PNG

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _save_png(fig, path: Path) -> Path:
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI, facecolor="white"))


def _short_task(task: str, width: int = 32) -> str:
    return task if len(task) <= width else task[: width - 1] + "…"


def plot_success(result: EvalResult, path: str | Path) -> Path:
    """Horizontal bars of success per task with 95% intervals and the overall rate."""
    from matplotlib import colormaps

    names, rows = list(result.per_task), list(result.per_task.values())
    n = len(rows)
    fig = _new_figure(8.0, 1.6 + 0.34 * max(n, 2))
    ax = fig.add_subplot()
    y = list(range(n))
    rates = [r.success_rate for r in rows]
    err = [[r.success_rate - r.ci95[0] for r in rows], [r.ci95[1] - r.success_rate for r in rows]]
    err = [[max(0.0, e) for e in side] for side in err]
    cmap = colormaps["RdYlGn"]
    ax.barh(
        y,
        rates,
        height=0.7,
        color=[cmap(0.15 + 0.7 * r) for r in rates],
        edgecolor="0.3",
        linewidth=0.5,
        xerr=err,
        error_kw={"ecolor": "0.2", "elinewidth": 1.0, "capsize": 3},
        label="success rate (95% CI)",
    )
    for yi, r in zip(y, rows):
        ax.text(
            min(r.ci95[1], 1.0) + 0.015,
            yi,
            f"{r.success_rate:.2f}  ({r.successes}/{r.episodes})",
            va="center",
            fontsize=8,
            color="0.15",
            zorder=4,
            bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.85, "pad": 0.6},
        )
    mean = result.overall.success_rate
    ax.axvline(mean, color="tab:blue", linestyle="--", linewidth=1.5, label=f"overall {mean:.3f}")
    ax.set_yticks(y, [_short_task(name) for name in names], fontsize=9)
    ax.set_ylim(n - 0.5, -0.5)  # first task on top
    ax.set_xlim(0.0, 1.22)
    ax.set_xticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.set_xlabel("success rate")
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)
    ax.spines[["top", "right"]].set_visible(False)
    ax.spines["bottom"].set_bounds(0.0, 1.0)  # the room right of 1.0 holds the value labels
    episodes = {r.episodes for r in rows}
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
        raise DataError("no metrics records with 'step' and 'loss' to plot")
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
        lr_handles, lr_labels = ax_lr.get_legend_handles_labels()
        handles, labels = handles + lr_handles, labels + lr_labels
    ax.legend(handles, labels, loc="upper right", fontsize=8, framealpha=0.9)
    ax.set_title(f"Training loss ({steps[-1]} steps, final loss {records[-1]['loss']:.4g})")
    if ax_bal is not None:
        pts = [(r["step"], r["balance_loss"]) for r in records if "balance_loss" in r]
        xs, vs = zip(*pts)
        ax_bal.plot(
            xs,
            vs,
            color="tab:green",
            linewidth=1.4,
            marker="o" if not smooth else None,
            markersize=2.5,
            label="balance loss",
        )
        ax_bal.axhline(1.0, color="0.4", linestyle="--", linewidth=1.0, label="uniform routing (1.0)")
        ax_bal.set_ylabel("balance loss")
        ax_bal.grid(alpha=0.3)
        ax_bal.legend(loc="upper right", fontsize=8, framealpha=0.9)
        ax_bal.set_xlabel("step")
    else:
        ax.set_xlabel("step")
    return _save_png(fig, Path(path))


def plot_eval_curve(
    points: Sequence[tuple[int, int, int]], path: str | Path, final: tuple[int, int, int] | None = None
) -> Path:
    """Success of the periodic evaluations, ``(step, successes, episodes)`` each, against the step
    with 95% Wilson intervals; ``final``: the run's own evaluation after training, drawn apart."""
    if not points:
        raise DataError("no periodic evaluations to plot")
    fig = _new_figure(7.0, 3.8)
    ax = fig.add_subplot()
    for pts, color, marker, label in (
        (points, "tab:blue", "o", f"periodic evaluation ({points[-1][2]} episodes)"),
        ([final] if final else [], "tab:red", "s", f"final evaluation ({final[2]} episodes)" if final else ""),
    ):
        if not pts:
            continue
        steps = [p[0] for p in pts]
        rates = [p[1] / p[2] for p in pts]
        ci = [wilson_interval(p[1], p[2]) for p in pts]
        err = [[r - lo for r, (lo, _) in zip(rates, ci)], [hi - r for r, (_, hi) in zip(rates, ci)]]
        ax.errorbar(steps, rates, yerr=err, color=color, marker=marker, markersize=4, capsize=3, label=label)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("step")
    ax.set_ylabel("success rate")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8, framealpha=0.9)
    ax.set_title("Success during training (95% Wilson intervals)")
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
        ax.scatter(
            xs,
            ys,
            s=22,
            facecolor="white",
            edgecolor="black",
            linewidth=0.8,
            zorder=3,
            label=f"chosen (top-{len(layer['chosen'][0])})",
        )
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
