"""The ``mode-policy`` command line. Each sub-command is a thin wrapper over a
library function; errors a user can fix are printed as one line, not a traceback."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Callable

import torch

from .config import PRESETS, get_preset, parse_overrides

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


class UserError(Exception):
    """An error caused by the user's input; printed without a traceback."""


def command(name: str):
    def register(fn):
        COMMANDS[name] = fn
        return fn

    return register


# ---------------------------------------------------------------------- info
@command("info")
def cmd_info(args: argparse.Namespace) -> int:
    from .policy import MoDEPolicy

    cfg = get_preset(args.preset, **parse_overrides(args.set))
    with torch.device("meta"):  # count parameters without allocating them
        policy = MoDEPolicy(cfg)
    counts = policy.parameter_counts()
    if args.json:
        print(json.dumps({"preset": args.preset, **counts}, indent=2))
    else:
        t = counts["transformer"]
        print(f"preset {args.preset}: {cfg.n_layers} layers, d={cfg.d_model}, {cfg.n_heads} heads, "
              f"routing={cfg.routing}, {cfg.num_experts} experts, top-{cfg.top_k}")
        print(f"  policy       total {counts['total_params']:>14,}  active {counts['active_params']:>14,}")
        print(f"  transformer  total {t['total']:>14,}  active {t['active']:>14,}")
    return 0


# ----------------------------------------------------------------------- toy
@command("toy")
def cmd_toy(args: argparse.Namespace) -> int:
    from .toy import train_toy

    result = train_toy(steps=args.steps, seed=args.seed, progress=True)
    print(f"trained {result.steps} steps in {result.seconds:.1f} s (final loss {result.final_loss:.3f})")
    for g, (plus, minus) in enumerate(result.mode_fractions):
        print(f"  goal {g}: {plus:6.1%} of samples at mode +m, {minus:6.1%} at mode -m")
    print(f"  in between the modes: {result.between_fraction:.1%}")
    print("PASS: both modes kept, none averaged" if result.passed() else "FAIL: modes not separated")
    return 0 if result.passed() else 1


# ------------------------------------------------------------------- parsing
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mode-policy", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="parameter counts of a preset")
    p.add_argument("--preset", default="cpu", choices=sorted(PRESETS))
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser("toy", help="train on the bimodal toy task and check both modes are kept")
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (UserError, ValueError, FileNotFoundError, FileExistsError, KeyError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"mode-policy {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
