"""Frames of recorded LIBERO-Spatial failures side by side (docs/images/libero_spatial_failures.png).

    mode-policy eval models/libero_spatial --env libero --suite libero_spatial --episodes 4 \
        --libero_tasks 0,4,8 --workers 2 --videos 1 --out diag/eval.json
    python experiments/results/libero_spatial/failure_frames.py diag/videos docs/images/libero_spatial_failures.png
"""

from __future__ import annotations

import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
from PIL import Image

ROLLOUTS = ["task00_rollout02", "task04_rollout03", "task08_rollout02"]
STEPS = [0, 50, 100, 150, 220]


def main(videos: Path, out: Path) -> None:
    rows = []
    for name in ROLLOUTS:
        (path,) = videos.glob(f"libero_spatial_{name}_failure.mp4")
        frames = iio.imread(path)  # (T, 128, 128, 3) agentview, one frame per policy step
        rows.append(np.concatenate([frames[min(s, len(frames) - 1)][20:118, :] for s in STEPS], axis=1))
    image = Image.fromarray(np.concatenate(rows, axis=0))
    image.resize((image.width * 2, image.height * 2), Image.LANCZOS).save(out)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
