"""Camera-image processing shared by the dataset converters and the evaluation envs, so that
training and evaluation images are oriented and resized identically."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import DataError


def libero_image_transform(images: np.ndarray, convention: str = "opengl") -> np.ndarray:
    """LIBERO camera images (..., H, W, 3) -> the orientation used by our datasets and envs.

    ``convention`` is robosuite's ``IMAGE_CONVENTION`` the images were produced under:
    ``"opengl"`` images (LIBERO's default, upside down) are rotated by 180 degrees;
    ``"opencv"`` images (already flipped vertically by robosuite) are mirrored left-right,
    which gives the same final orientation."""
    if convention == "opengl":
        out = images[..., ::-1, ::-1, :]
    elif convention == "opencv":
        out = images[..., :, ::-1, :]
    else:
        raise DataError(f"unknown image convention {convention!r} (expected 'opengl' or 'opencv')")
    return np.ascontiguousarray(out)


def resize_images(images: np.ndarray, size: int | tuple[int, int], chunk: int = 64) -> np.ndarray:
    """Resize uint8 images (T, H, W, 3) to (T, h, w, 3) with antialiased bilinear filtering.

    ``size`` is an int (square) or ``(h, w)``."""
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise DataError(f"expected images (T, H, W, 3), got shape {images.shape}")
    if images.shape[1:3] == (h, w):
        return images
    out = np.empty((images.shape[0], h, w, 3), dtype=np.uint8)
    for start in range(0, images.shape[0], chunk):
        x = torch.from_numpy(np.ascontiguousarray(images[start : start + chunk])).permute(0, 3, 1, 2).float()
        y = F.interpolate(x, size=(h, w), mode="bilinear", antialias=True, align_corners=False)  # (t, 3, h, w)
        out[start : start + chunk] = y.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return out
