"""LIBERO env steps/s with both 128 px cameras (agentview + wrist): LIBERO's own render settings
against libero_render_settings, side by side in one process (interleaved rounds), and one frame
of each camera from each (as the policy sees them: rotated like the converted datasets).

    OMP_NUM_THREADS=1 python experiments/results/libero_expert/bench_render.py libero_object 3 docs/images

writes experiments/results/libero_expert/render_<suite>.json and <out>/libero_{agentview,wrist}_{default,fast}.png.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from mode_policy.data.images import libero_image_transform
from mode_policy.envs.libero import (
    CAMERAS,
    DUMMY_ACTION,
    image_convention,
    import_libero,
    load_init_states,
    load_suite,
    make_libero_env,
)
from mode_policy.fileio import atomic_write_json


def main() -> None:
    suite_name, rounds, out = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    lib = import_libero()
    suite = load_suite(lib, suite_name)
    task = suite.get_task(0)
    bddl = Path(lib.get_libero_path("bddl_files")) / task.problem_folder / task.bddl_file
    init = load_init_states(lib, suite, 0)[0]
    cameras = list(CAMERAS.values())
    envs = {
        name: make_libero_env(lib, bddl, cameras, 128, 2000, fast_render=fast)
        for name, fast in (("default", False), ("fast", True))
    }
    runs: dict[str, dict[str, list[float]]] = {n: {"steps_per_s": [], "reset_s": []} for n in envs}
    frames: dict[str, dict[str, np.ndarray]] = {}
    action = np.array([0.3, 0.2, -0.3, 0.0, 0.0, 0.0, -1.0])
    for r in range(rounds):
        for name, env in envs.items():
            t0 = time.perf_counter()
            env.reset()
            obs = env.set_init_state(init)
            t1 = time.perf_counter()
            for _ in range(5):
                obs, *_ = env.step(DUMMY_ACTION)
            if r == 0:
                frames[name] = {c: libero_image_transform(obs[f"{c}_image"], image_convention()) for c in cameras}
            t2 = time.perf_counter()
            for _ in range(20):
                env.step(action)
            runs[name]["steps_per_s"].append(20 / (time.perf_counter() - t2))
            runs[name]["reset_s"].append(t1 - t0)
    summary: dict = {n: {"steps_per_s_median": statistics.median(v["steps_per_s"]), **v} for n, v in runs.items()}
    summary["speedup"] = summary["fast"]["steps_per_s_median"] / summary["default"]["steps_per_s_median"]
    summary["mean_abs_pixel_diff"] = {
        c: float(np.abs(frames["fast"][c].astype(int) - frames["default"][c].astype(int)).mean()) for c in cameras
    }
    summary["mesh_triangles"] = {n: int(e.sim.model._model.mesh_facenum.sum()) for n, e in envs.items()}
    print(json.dumps(summary, indent=1))
    out.mkdir(parents=True, exist_ok=True)
    for name in frames:
        for camera in cameras:
            short = "agentview" if camera == "agentview" else "wrist"
            Image.fromarray(frames[name][camera]).save(out / f"libero_{short}_{name}.png")
    atomic_write_json(Path(__file__).with_name(f"render_{suite_name}.json"), summary)


if __name__ == "__main__":
    main()
