"""LeRobot plugin for MoDE: importing it registers ``--policy.type=mode``.

LeRobot imports every installed ``lerobot_policy_*`` distribution at start-up
(``register_third_party_plugins``); it then finds ``ModePolicy`` in
:mod:`.modeling_mode` and ``make_mode_pre_post_processors`` in :mod:`.processor_mode`
by naming convention from :class:`ModeConfig`'s module.
"""

from .configuration_mode import ModeConfig

__all__ = ["ModeConfig"]
