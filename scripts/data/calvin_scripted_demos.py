"""Scripted CALVIN demonstrations in the real simulator (scene D), in CALVIN's own layout
(needs calvin_env: scripts/install/install_calvin.sh).

    python scripts/data/calvin_scripted_demos.py --out DIR [--episodes-per-task 20] [--seed 0]
        [--tasks scripted|t1,t2,...] [--cameras] [--convert DATASET [--scene-in-state]] [--overwrite]

Plays chains of 5 subtasks with the scripted expert (mode_policy.envs.calvin_scripted) until
every subtask has ``--episodes-per-task`` successful windows, and writes ``DIR/training`` as
a CALVIN split (mode_policy.envs.calvin_record): per-frame npz files, ep_start_end_ids.npy and
lang_annotations/auto_lang_ann.npy labelled with CALVIN's training annotations. Physics only
by default (about 50-75 frames/s on one core); ``--cameras`` also records the static and
gripper cameras (about 11 frames/s). ``--convert DATASET`` then converts it, as
``mode-policy convert calvin DIR/training --out DATASET`` does; ``--scene-in-state`` makes the
state robot_obs + scene_obs (39), for a state policy.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from mode_policy.envs.calvin import CAMERAS
from mode_policy.envs.calvin_scripted import SCRIPTED_TASKS


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder to write (DIR/training is the CALVIN split)")
    parser.add_argument("--episodes-per-task", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tasks", default="scripted", help="'scripted' (all the expert does) or a comma list")
    parser.add_argument("--cameras", action="store_true", help="also record the static and gripper cameras")
    parser.add_argument("--renderer", default="egl", choices=["egl", "tiny"])
    parser.add_argument("--max-chains", type=int, default=None)
    parser.add_argument("--convert", default=None, metavar="DATASET", help="convert the split to this dataset")
    parser.add_argument("--scene-in-state", action="store_true", help="converted state = robot_obs + scene_obs")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args()

    from mode_policy.data.convert_calvin import convert_calvin
    from mode_policy.envs.calvin_record import record_scripted_demos
    from mode_policy.fileio import replacing

    tasks = list(SCRIPTED_TASKS) if args.tasks == "scripted" else [t for t in args.tasks.split(",") if t]
    start = time.perf_counter()
    summary = record_scripted_demos(
        args.out,
        args.episodes_per_task,
        tasks,
        args.seed,
        image_keys=list(CAMERAS) if args.cameras else [],
        renderer=args.renderer,
        max_chains=args.max_chains,
        overwrite=args.overwrite,
    )
    elapsed = time.perf_counter() - start
    print(
        f"wrote {summary['windows']} windows ({summary['frames']} frames, {summary['chains']} chains) to "
        f"{args.out}/training in {elapsed:.0f} s ({summary['frames'] / elapsed:.0f} frames/s)"
    )
    print(json.dumps({t: f"{v['successes']}/{v['attempts']}" for t, v in summary["per_task"].items()}, indent=1))
    if summary["short"]:
        print(f"fewer than {args.episodes_per_task} windows for: {', '.join(summary['short'])}")
    if args.convert:
        with replacing(args.convert, args.overwrite) as target:
            convert_calvin(f"{args.out}/training", target, overwrite=True, scene_in_state=args.scene_in_state)
        print(f"converted to {args.convert}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
