"""LeRobot plugin for MoDE: importing it registers ``--policy.type=mode``.

LeRobot's scripts import every installed ``lerobot_policy_*`` distribution at start-up
(``register_third_party_plugins``); it then finds ``ModePolicy`` in :mod:`.modeling_mode` and
``make_mode_pre_post_processors`` in :mod:`.processor_mode` by naming convention from
:class:`ModeConfig`'s module. A plain Python script imports this package before ``make_policy``.
Importing it also adds ``mode`` to the policies LeRobot's async-inference server serves (when
``lerobot[async]`` is installed; start the server with ``python -m lerobot_policy_mode.policy_server``).
"""

from __future__ import annotations

import importlib.util

from .configuration_mode import ModeConfig
from .recipe import ModeSchedulerConfig

__all__ = ["ModeConfig", "ModeSchedulerConfig", "register_async_inference"]


def register_async_inference() -> bool:
    """Add ``mode`` to LeRobot's async-inference policies; False when ``lerobot[async]`` (grpcio) is missing."""
    if importlib.util.find_spec("grpc") is None:
        return False
    from lerobot.async_inference import constants

    if "mode" not in constants.SUPPORTED_POLICIES:
        constants.SUPPORTED_POLICIES.append("mode")  # the server checks this very list object
    return True


register_async_inference()
