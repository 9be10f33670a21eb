"""Compare two evaluation results (``eval_info.json``) field by field, ignoring wall-clock times
and the model path: the check that a refactor left a seeded run's results unchanged.

    python scripts/checks/compare_eval_info.py BEFORE/eval_info.json AFTER/eval_info.json

Exits 0 when they are identical, 1 (printing the first differences) otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

IGNORED = ("wall_s", "policy")


def clean(value: Any) -> Any:
    """``value`` without the fields in :data:`IGNORED`, at any depth."""
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items() if k not in IGNORED}
    if isinstance(value, list):
        return [clean(v) for v in value]
    return value


def differences(a: Any, b: Any, where: str = "") -> list[str]:
    """Paths (``per_task.reach-v3.successes``) where ``a`` and ``b`` differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in differences(a.get(k), b.get(k), f"{where}.{k}".lstrip("."))]
    return [] if a == b else [f"{where or '<root>'}: {a!r} != {b!r}"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before")
    parser.add_argument("after")
    args = parser.parse_args()
    with open(args.before) as f, open(args.after) as g:
        found = differences(clean(json.load(f)), clean(json.load(g)))
    if found:
        print("\n".join(found[:20]))
        return 1
    print(f"identical (ignoring {', '.join(IGNORED)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
