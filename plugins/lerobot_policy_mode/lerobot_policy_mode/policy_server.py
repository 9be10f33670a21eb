"""LeRobot's async-inference policy server, with ``mode`` among the policies it serves.

::

    python -m lerobot_policy_mode.policy_server --host=127.0.0.1 --port=8080

The same flags as ``python -m lerobot.async_inference.policy_server`` (LeRobot's module does not
import third-party policies, so it refuses ``mode``); LeRobot's ``robot_client`` then connects with
``--policy_type=mode --pretrained_name_or_path=<checkpoint>``. Needs ``lerobot[async]``.
"""

from __future__ import annotations

import sys

from . import register_async_inference


def main() -> int:
    if not register_async_inference():
        print("error: LeRobot's async inference needs grpcio: pip install 'lerobot[async]==0.6.1'", file=sys.stderr)
        return 2
    from lerobot.async_inference.policy_server import serve

    serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
