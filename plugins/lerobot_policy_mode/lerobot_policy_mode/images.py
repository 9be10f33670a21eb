"""Camera images at the policy's size: the observation mapping between LeRobot's cameras and MoDE's.

A policy trained at ``image_size`` px sees every camera at that size: LeRobot's Meta-World env
renders 480 x 480 frames, :mod:`.metaworld_data` stores its demonstrations at the policy's size with
this same function, and :class:`~lerobot_policy_mode.modeling_mode.ModePolicy` applies it to any
camera of another size (training batches and observations alike), so both see the same pixels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def resize_square(images: Tensor, size: int) -> Tensor:
    """Images (..., 3, H, W) or (..., H, W, 3), uint8 or float, resized to (size, size) with an
    antialiased bilinear filter; same layout and dtype (uint8 rounded). Unchanged if already that size."""
    channels_last = images.shape[-1] == 3 and images.shape[-3] != 3
    h, w = (images.shape[-3], images.shape[-2]) if channels_last else (images.shape[-2], images.shape[-1])
    if (h, w) == (size, size):
        return images
    x = images.movedim(-1, -3) if channels_last else images  # (..., 3, H, W)
    lead = x.shape[:-3]
    flat = x.reshape(-1, *x.shape[-3:]).float()  # (N, 3, H, W)
    out = F.interpolate(flat, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    if images.dtype == torch.uint8:
        out = out.round().clamp_(0, 255).to(torch.uint8)
    else:
        out = out.to(images.dtype)
    out = out.reshape(*lead, 3, size, size)
    return out.movedim(-3, -1) if channels_last else out
