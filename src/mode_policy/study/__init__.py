"""Studies: a grid of policy variants x seeds, trained and evaluated resumably, with a report.

* :mod:`.spec`: the study file (``load_study``), its variants and cells, dense matching, ``init_from``;
* :mod:`.stats`: the intervals (t over seed means, Welch for differences);
* :mod:`.result`: ``CellResult``, what a finished cell recorded;
* :mod:`.runner`: ``run_study`` (cells one after another, finished cells skipped);
* :mod:`.report`: ``write_study_report`` (markdown table and figure).
"""

from .report import write_study_report
from .runner import finished_results, run_study
from .spec import load_study

__all__ = ["finished_results", "load_study", "run_study", "write_study_report"]
