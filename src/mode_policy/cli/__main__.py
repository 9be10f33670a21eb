"""``python -m mode_policy.cli``: the same as the ``mode-policy`` command."""

import sys

from .main import main

sys.exit(main())
