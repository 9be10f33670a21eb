"""LeRobot's real-time chunking contract, as ``lerobot-rollout --inference.type=rtc`` drives it:
LeRobot's ``supports_rtc_inference`` accepts the policy; with LeRobot's ``ActionQueue``, its
zero-padded ``prev_chunk_left_over`` and an inference delay, the next chunk starts with exactly the
actions executed meanwhile and follows the rest of the overlap more closely than an unguided chunk.

``python check_rtc.py PRETRAINED_MODEL_DIR DATASET_ROOT``; prints one JSON line.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lerobot_policy_mode  # noqa: F401  (registers --policy.type=mode)
import torch
from lerobot.configs.types import RTCAttentionSchedule
from lerobot.datasets.lerobot_dataset import LeRobotDataset
from lerobot.policies.factory import make_pre_post_processors
from lerobot.policies.rtc.action_queue import ActionQueue
from lerobot.policies.rtc.configuration_rtc import RTCConfig
from lerobot.rollout.inference.rtc import _normalize_prev_actions_length, supports_rtc_inference
from lerobot_policy_mode.modeling_mode import ModePolicy


def main(ckpt: str, root: str) -> int:
    ds = LeRobotDataset("local/" + Path(root).name, root=root)
    policy = ModePolicy.from_pretrained(ckpt)
    horizon = policy.model.config.horizon
    rtc = RTCConfig(execution_horizon=horizon, prefix_attention_schedule=RTCAttentionSchedule.EXP)
    policy.config.rtc_config = rtc  # what lerobot-rollout sets before it starts the RTC thread
    pre, post = make_pre_post_processors(policy.config, pretrained_path=ckpt)
    batch = pre({k: v for k, v in ds[0].items() if k.startswith("observation.") or k == "task"})
    report = {"supports_rtc_inference": supports_rtc_inference(policy)}

    queue = ActionQueue(rtc)
    torch.manual_seed(0)
    first = policy.predict_action_chunk(batch, inference_delay=0, prev_chunk_left_over=None)  # (1, H, A)
    queue.merge(first.squeeze(0), post(first).squeeze(0), 0, queue.get_action_index())
    queue.get()  # the robot executes one action before the next inference starts
    index_before = queue.get_action_index()
    left_over = _normalize_prev_actions_length(queue.get_left_over(), target_steps=rtc.execution_horizon)  # (H, A)
    delay, real = 1, horizon - 1  # one action executes during inference; LeRobot padded the last row
    noise = torch.randn(1, horizon, first.shape[-1], generator=torch.Generator().manual_seed(1))
    guided = policy.predict_action_chunk(batch, noise=noise, inference_delay=delay, prev_chunk_left_over=left_over)
    free = policy.predict_action_chunk(batch, noise=noise)
    report["frozen_max_abs_diff"] = float((guided[0, :delay] - left_over[:delay]).abs().max())
    soft = slice(delay, real)
    report["guided_soft_rows_mean_abs_diff"] = float((guided[0, soft] - left_over[soft]).abs().mean())
    report["unguided_soft_rows_mean_abs_diff"] = float((free[0, soft] - left_over[soft]).abs().mean())
    for _ in range(delay):
        queue.get()  # executed while the chunk was computed
    queue.merge(guided.squeeze(0), post(guided).squeeze(0), delay, index_before)
    report["queue_after_merge"] = queue.qsize()
    print(json.dumps(report))
    ok = (
        report["supports_rtc_inference"]
        and report["frozen_max_abs_diff"] == 0.0
        and report["guided_soft_rows_mean_abs_diff"] < report["unguided_soft_rows_mean_abs_diff"]
        and report["queue_after_merge"] == horizon - delay
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
