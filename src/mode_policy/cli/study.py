"""The ``study`` sub-command: train and evaluate a grid of variants x seeds, resumably."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError
from ..fileio import check_writable
from .command import Command


@dataclass
class StudyOptions:
    """Train and evaluate every variant x seed of a study file, one cell after another; a killed
    study resumes (finished cells are skipped, a half-finished one is redone)."""

    study: str = ""
    """The study file (YAML; first positional argument). See mode_policy.study.spec for its keys."""
    out: str = ""
    """Folder of the study: cells/, study.json, report.md and study.png."""
    report_only: bool = False
    """Only rewrite report.md and study.png from the cells finished so far."""
    progress: bool = True
    """Show training and evaluation progress bars."""


def run_study_command(opts: StudyOptions) -> int:
    from pathlib import Path

    from ..study import finished_results, load_study, run_study, write_study_report

    if not opts.study or not opts.out:
        raise ConfigError("study needs a study file and --out: `mode-policy study STUDY.yaml --out DIR`")
    study = load_study(opts.study)
    out = Path(opts.out)
    if opts.report_only:
        report = write_study_report(study, out, finished_results(study, out))
    else:
        check_writable(out)
        run_study(study, out, progress=opts.progress)
        report = out / "report.md"
    print(f"report: {report}")
    return 0


COMMANDS = {
    "study": Command(
        StudyOptions,
        run_study_command,
        "train and evaluate a grid of variants x seeds (resumable)",
        positional=("study",),
    ),
}
