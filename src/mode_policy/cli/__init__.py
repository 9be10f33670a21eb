"""The ``mode-policy`` command line (see :mod:`mode_policy.cli.main`)."""

from .main import main

__all__ = ["main"]
