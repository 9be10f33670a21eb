"""``make_mode_pre_post_processors``: batch dimension and device; normalisation stays in the policy.

MoDE normalises inside the policy (statistics in its checkpoint), so LeRobot's normaliser and
unnormaliser steps are here with IDENTITY for every feature type (``ModeConfig.normalization_mapping``):
they change nothing, and they take the overrides ``lerobot-train`` hands them when it fine-tunes or
resumes a checkpoint (the new dataset's statistics reach the policy through ``make_policy``).
"""

from __future__ import annotations

from typing import Any

from lerobot.lerobot_types import PolicyAction
from lerobot.processor import (
    AddBatchDimensionProcessorStep,
    DeviceProcessorStep,
    NormalizerProcessorStep,
    PolicyProcessorPipeline,
    RenameObservationsProcessorStep,
    UnnormalizerProcessorStep,
)
from lerobot.processor.converters import policy_action_to_transition, transition_to_policy_action
from lerobot.utils.constants import POLICY_POSTPROCESSOR_DEFAULT_NAME, POLICY_PREPROCESSOR_DEFAULT_NAME

from .configuration_mode import ModeConfig


def make_mode_pre_post_processors(
    config: ModeConfig, dataset_stats: dict[str, dict[str, Any]] | None = None
) -> tuple[
    PolicyProcessorPipeline[dict[str, Any], dict[str, Any]], PolicyProcessorPipeline[PolicyAction, PolicyAction]
]:
    """(preprocessor, postprocessor); ``dataset_stats`` go to the policy (make_policy), not here."""
    features = {**(config.input_features or {}), **(config.output_features or {})}
    pre = PolicyProcessorPipeline[dict[str, Any], dict[str, Any]](
        steps=[
            RenameObservationsProcessorStep(rename_map={}),
            AddBatchDimensionProcessorStep(),
            DeviceProcessorStep(device=config.device),
            NormalizerProcessorStep(features=features, norm_map=config.normalization_mapping),
        ],
        name=POLICY_PREPROCESSOR_DEFAULT_NAME,
    )
    post = PolicyProcessorPipeline[PolicyAction, PolicyAction](
        steps=[
            UnnormalizerProcessorStep(features=config.output_features or {}, norm_map=config.normalization_mapping),
            DeviceProcessorStep(device="cpu"),
        ],
        name=POLICY_POSTPROCESSOR_DEFAULT_NAME,
        to_transition=policy_action_to_transition,
        to_output=transition_to_policy_action,
    )
    return pre, post
