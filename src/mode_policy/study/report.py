"""A study's markdown report (``OUT/report.md``) and its figure (``OUT/study.png``).

One row per variant: mean success over the finished seeds with its 95% interval, the difference
to its reference variant with its interval, the paper's numbers and whether ours agree, the
parameter counts and the compute per cell. Then how the dense variant was matched, the cells,
and the success per task.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..fileio import atomic_write, atomic_write_text
from .power import render_power, variance_components
from .result import CellResult
from .spec import Study, Variant
from .stats import Interval, difference_interval, seed_interval, verdict

REPORT_NAME = "report.md"
FIGURE_NAME = "study.png"
DPI = 120
OURS_LABEL = "ours (95% CI)"
PAPER_LABEL = "paper's difference (on its benchmark)"


@dataclass(frozen=True)
class VariantSummary:
    variant: Variant
    results: list[CellResult]
    """Finished cells of this variant, in seed order."""
    interval: Interval | None
    delta: Interval | None
    """Difference of the mean success to the variant's reference (None: it has none, or fewer than 2
    seeds on a side)."""

    @property
    def seed_means(self) -> list[float]:
        return [r.success_rate for r in self.results]

    @property
    def verdict(self) -> str:
        return verdict(self.delta, self.variant.paper_delta)


def summarize(study: Study, results: dict[str, CellResult]) -> list[VariantSummary]:
    """Per variant: its finished cells, the interval of its mean and of its difference to its reference."""
    per_variant = {
        v.name: [results[c.key] for c in study.cells() if c.variant == v.name and c.key in results]
        for v in study.variants
    }
    summaries = []
    for v in study.variants:
        cells = per_variant[v.name]
        means = [r.success_rate for r in cells]
        interval = (
            seed_interval(means, sum(r.successes for r in cells), sum(r.episodes for r in cells)) if cells else None
        )
        ref = [r.success_rate for r in per_variant[v.reference]] if v.reference else None
        delta = difference_interval(means, ref) if ref is not None else None
        summaries.append(VariantSummary(v, cells, interval, delta))
    return summaries


def describe(study: Study, v: Variant) -> str:
    """What a variant changes: its description, its policy and training fields, its data, seeds
    and the model it fine-tunes."""
    fields = ", ".join([f"{k}={val}" for k, val in v.policy.items()] + [f"{k}={val}" for k, val in v.train.items()])
    setup = []
    if v.init_from_variant or v.init_from:
        setup.append(f"fine-tunes `{v.init_from_variant or v.init_from}`")
    if v.dataset:
        setup.append(f"data `{v.dataset}`")
    if v.seeds != study.seeds:
        setup.append(f"seeds {v.seeds}")
    extra = "; ".join(setup)
    if v.description:
        text = v.description + (f" (`{fields}`)" if fields else "")
    elif fields:
        text = f"`{fields}`"
    elif extra:
        return extra
    else:
        return "the study's base policy" if v.name == study.reference else "(nothing)"
    return text + (f"; {extra}" if extra else "")


def _num(x: float | None, fmt: str = ".3f", signed: bool = False) -> str:
    if x is None:
        return "—"
    return f"{x:+{fmt}}" if signed else f"{x:{fmt}}"


def _ci(i: Interval | None, signed: bool = False) -> str:
    return "—" if i is None else f"[{_num(i.low, signed=signed)}, {_num(i.high, signed=signed)}]"


def _params(results: Sequence[CellResult]) -> str:
    if not results:
        return "—"
    c = results[0].params
    return f"{c['active_params'] / 1e6:.2f}M / {c['total_params'] / 1e6:.2f}M"


def _minutes(results: Sequence[CellResult]) -> str:
    if not results:
        return "—"
    train = sum(r.train_s for r in results) / len(results) / 60
    ev = sum(r.eval_s for r in results) / len(results) / 60
    return f"{train:.1f} + {ev:.1f}"


def render_markdown(study: Study, results: dict[str, CellResult], figure: str | None) -> str:
    summaries = summarize(study, results)
    cells = study.cells()
    ref = study.reference
    own_refs = any(v.reference not in ("", ref) for v in study.variants)
    train = ", ".join(f"{k}={v}" for k, v in study.train.items()) or "TrainConfig defaults"
    base = ", ".join(f"{k}={v}" for k, v in study.policy.items())
    grid = (
        f"{len(study.variants)} variants x {len(study.seeds)} seeds {study.seeds}"
        if all(v.seeds == study.seeds for v in study.variants)
        else f"{len(study.variants)} variants over seeds {study.seeds}, some at fewer"
    )
    own_data = " (or the variant's own, where it names one)" if any(v.dataset for v in study.variants) else ""
    own_train = ", with the variant's own fields on top" if any(v.train for v in study.variants) else ""
    lines = [
        f"# {study.name}",
        "",
        f"{len(results)} of {len(cells)} cells finished ({grid}). Study file: `{study.path}`.",
        "",
        f"- data: `{study.dataset}`{own_data}; evaluated on {len(study.tasks)} Meta-World task(s), "
        f"{study.eval_episodes} held-out episode(s) per task and cell (evaluation seed {study.eval_seed}, "
        "the same episodes for every cell)",
        f"- training (every cell{own_train}): {train}" + (f"; policy: {base}" if base else ""),
        "- success: mean over seeds of each seed's success rate over all its episodes. **95% interval**: "
        "Student-t over the seed means (df = seeds - 1), so it carries both the training-seed and the episode "
        "variation; with one finished seed, the Wilson interval of its episodes. **Δ**: difference of the mean "
        f"to the reference variant `{ref}`"
        + (" (or the one named beside it)" if own_refs else "")
        + ", with a Welch t-interval over the two sets of seed means.",
        "- verdict: by sign — *agrees* when our Δ interval excludes 0 on the paper's side, *disagrees* when it "
        "excludes 0 on the other side, *cannot tell* when it holds 0; and by size — whether the paper's Δ "
        "lies in our interval, or outside it (the effect smaller or larger here than in the paper).",
        "- params: active / total of the whole policy (active = total minus the experts a forward pass skips; "
        "routers count as active); minutes per cell: training + evaluation, mean over seeds.",
    ]
    if study.paper_source:
        lines.append(f"- paper numbers: {study.paper_source}")
    lines += [
        "",
        "| variant | changes | success | 95% CI | Δ vs " + ref + " | 95% CI of Δ | paper | paper Δ "
        "| verdict | seeds | params active / total | min per cell |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        v = s.variant
        paper = _num(v.paper) + (f" ({v.paper_note})" if v.paper_note else "")
        is_ref = not v.reference
        against = f" (vs {v.reference})" if v.reference not in ("", ref) else ""
        lines.append(
            f"| {v.name} | {describe(study, v)} | {_num(s.interval.mean if s.interval else None)} | {_ci(s.interval)} "
            f"| {'reference' if is_ref else _num(s.delta.mean if s.delta else None, signed=True) + against} "
            f"| {'' if is_ref else _ci(s.delta, signed=True)} | {paper} "
            f"| {'' if is_ref else _num(v.paper_delta, signed=True)} | {'' if is_ref else s.verdict} "
            f"| {len(s.results)} | {_params(s.results)} | {_minutes(s.results)} |"
        )
    methods = sorted({s.interval.method for s in summaries if s.interval})
    if methods:
        lines += ["", "Intervals used: " + "; ".join(methods) + "."]
    matched = [v for v in study.variants if v.matching]
    if matched:
        lines += ["", "## Equal active parameters", ""]
        for v in matched:
            m = v.matching
            lines.append(
                f"- `{v.name}`: dense_mlp_ratio={m.dense_mlp_ratio}, the integer ratio whose dense transformer has "
                f"the active parameter count closest to `{m.reference}`'s: {m.active:,} vs {m.reference_active:,} "
                f"({m.gap:+.1%}). Counted on the denoising transformer (encoders are identical); the reference's "
                "active count is its routers, its top-k experts and everything else."
            )
    if figure:
        lines += ["", f"![mean success and difference to {ref} per variant]({figure})"]
    if any(len(s.results) >= 2 for s in summaries):
        lines += ["", *render_power(variance_components(list(results.values())))]
    lines += ["", "## Cells", "", "| cell | success | episodes | train s | eval s |", "|---|---|---|---|---|"]
    for cell in cells:
        r = results.get(cell.key)
        lines.append(
            f"| {cell.key} | "
            + (
                f"{r.success_rate:.3f} | {r.episodes} | {r.train_s:.0f} | {r.eval_s:.0f} |"
                if r
                else "not run yet | | | |"
            )
        )
    if results:
        lines += _per_task(study, summaries)
    return "\n".join(lines) + "\n"


def _per_task(study: Study, summaries: list[VariantSummary]) -> list[str]:
    shown = [s for s in summaries if s.results]
    lines = [
        "",
        "## Success per task (mean over finished seeds)",
        "",
        "| task | " + " | ".join(s.variant.name for s in shown) + " |",
        "|---" * (len(shown) + 1) + "|",
    ]
    for task in study.tasks:
        row = []
        for s in shown:
            hits = sum(r.per_task[task][0] for r in s.results)
            total = sum(r.per_task[task][1] for r in s.results)
            row.append(f"{hits / total:.2f}" if total else "—")
        lines.append(f"| {task} | " + " | ".join(row) + " |")
    return lines


def plot_study(study: Study, results: dict[str, CellResult], path: Path) -> Path:
    """Left: mean success per variant (95% interval, each seed a dot). Right: difference to the
    reference (95% interval) beside the paper's difference (diamonds)."""
    from matplotlib.figure import Figure

    summaries = summarize(study, results)
    n = len(summaries)
    fig = Figure(figsize=(10.0, 1.4 + 0.45 * n), dpi=DPI, layout="constrained")
    left, right = fig.subplots(1, 2, sharey=True)
    ys = list(range(n))
    for y, s in zip(ys, summaries):
        if s.interval is None:
            continue
        i = s.interval
        left.barh(
            y, i.mean, height=0.6, color="tab:blue" if s.variant.name != study.reference else "tab:gray", alpha=0.6
        )
        left.errorbar(i.mean, y, xerr=[[i.mean - i.low], [i.high - i.mean]], color="0.1", capsize=3, lw=1)
        left.scatter(s.seed_means, [y] * len(s.seed_means), color="0.1", s=10, zorder=3)
        if s.delta is not None:
            d = s.delta
            right.errorbar(
                d.mean,
                y,
                xerr=[[d.mean - d.low], [d.high - d.mean]],
                fmt="o",
                color="tab:blue",
                capsize=3,
                label=OURS_LABEL if OURS_LABEL not in _labels(right) else None,
            )
        if s.variant.paper_delta is not None and s.variant.reference:
            right.scatter(
                s.variant.paper_delta,
                y,
                marker="D",
                color="tab:red",
                zorder=4,
                label=PAPER_LABEL if PAPER_LABEL not in _labels(right) else None,
            )
    left.set_yticks(ys, [s.variant.name for s in summaries])
    left.set_ylim(n - 0.5, -0.5)
    left.set_xlim(0, 1)
    left.set_xlabel("success rate (mean over seeds, 95% CI; dots: seeds)")
    right.axvline(0, color="0.4", lw=1)
    own_refs = any(v.reference not in ("", study.reference) for v in study.variants)
    right.set_xlabel(f"difference to {study.reference}" + (" (or the variant's own reference)" if own_refs else ""))
    if _labels(right):
        fig.legend(*right.get_legend_handles_labels(), loc="outside lower right", ncols=2, fontsize=8, frameon=False)
    for ax in (left, right):
        ax.grid(axis="x", alpha=0.3)
        ax.set_axisbelow(True)
    fig.suptitle(f"{study.name} ({len(results)} of {len(study.cells())} cells)", fontsize=10)
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI, facecolor="white"))


def _labels(ax) -> list[str]:
    return ax.get_legend_handles_labels()[1]


def write_study_report(study: Study, out: str | Path, results: dict[str, CellResult]) -> Path:
    """Write ``report.md`` (and ``study.png`` once a cell is finished) into ``out``."""
    out = Path(out)
    figure = None
    if results:
        plot_study(study, results, out / FIGURE_NAME)
        figure = FIGURE_NAME
    return atomic_write_text(out / REPORT_NAME, render_markdown(study, results, figure))
