"""mkdocs hook: Sphinx cross-reference roles in docstrings read as plain code.

The package's docstrings use Sphinx roles (``:class:`~mode_policy.x.Y```); mkdocstrings renders
them as the role's name followed by inline code. This hook drops the role and Sphinx's ``~`` /
leading ``.`` markers, leaving the code: ``:class:`~mode_policy.x.Y``` reads ``Y``.
"""

from __future__ import annotations

import re
from typing import Any

_ROLE = re.compile(r":(?:py:)?(?:class|meth|func|mod|data|attr|obj|exc|const):<code>([~.]*)([^<]*)</code>")


def _plain(match: re.Match[str]) -> str:
    markers, target = match.groups()
    if "~" in markers:  # ~a.b.C shows only C
        target = target.rsplit(".", 1)[-1]
    return f"<code>{target}</code>"


def on_page_content(html: str, page: Any, config: Any, files: Any) -> str:
    return _ROLE.sub(_plain, html)
