"""Markdown report with figures for a training run directory (``mode-policy report``).

* :mod:`.analysis`: the numbers (experts per noise level, run summary figures);
* :mod:`.figures`: the PNG figures;
* :mod:`.markdown`: ``write_report(run_dir)``, the report itself.
"""

from .analysis import expert_routing
from .figures import EVALS_PNG, EXPERTS_PNG, LOSS_PNG, SUCCESS_PNG
from .markdown import write_report

__all__ = ["EVALS_PNG", "EXPERTS_PNG", "LOSS_PNG", "SUCCESS_PNG", "expert_routing", "write_report"]
