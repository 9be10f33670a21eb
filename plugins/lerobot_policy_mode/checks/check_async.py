"""A round trip through LeRobot's async-inference server serving ``mode``: starts
``python -m lerobot_policy_mode.policy_server`` and talks to it over gRPC as LeRobot's
``robot_client`` does (Ready, SendPolicyInstructions, SendObservations, GetActions).

``python check_async.py PRETRAINED_MODEL_DIR DATASET_ROOT [PORT]``; prints one JSON line.
"""

from __future__ import annotations

import json
import pickle  # nosec: LeRobot's async-inference protocol is pickled messages
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import torch
from lerobot.async_inference.helpers import RemotePolicyConfig, TimedObservation
from lerobot.datasets.lerobot_dataset import LeRobotDataset
from lerobot.transport import services_pb2, services_pb2_grpc
from lerobot.transport.utils import send_bytes_in_chunks

from mode_policy.model.normalize import RANGE_FLOOR


def main(ckpt: str, root: str, port: str = "18080") -> int:
    ds = LeRobotDataset("local/" + Path(root).name, root=root)
    config = json.loads((Path(ckpt) / "config.json").read_text())
    horizon = config["horizon"]
    state_names = ds.meta.features["observation.state"]["names"] or [f"s{i}" for i in range(4)]
    features = {"observation.state": {"dtype": "float32", "shape": (len(state_names),), "names": state_names}}
    frame = ds[0]
    raw = {name: float(v) for name, v in zip(state_names, frame["observation.state"])}
    for key in config["image_keys"]:
        camera = key.removeprefix("observation.images.")
        image = (frame[key].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()  # (H, W, 3) as a robot sends it
        features[key] = {"dtype": "image", "shape": image.shape, "names": ["height", "width", "channels"]}
        raw[camera] = image
    raw["task"] = frame["task"]

    server = subprocess.Popen(
        [sys.executable, "-m", "lerobot_policy_mode.policy_server", "--host=127.0.0.1", f"--port={port}",
         "--inference_latency=0", "--obs_queue_timeout=30"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        cwd=Path(root).resolve().parent,  # LeRobot's server writes logs/ into its working directory
    )  # fmt: skip
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        grpc.channel_ready_future(channel).result(timeout=120)
        stub = services_pb2_grpc.AsyncInferenceStub(channel)
        stub.Ready(services_pb2.Empty())
        spec = RemotePolicyConfig("mode", str(Path(ckpt).resolve()), features, actions_per_chunk=horizon, device="cpu")
        stub.SendPolicyInstructions(services_pb2.PolicySetup(data=pickle.dumps(spec)))
        start = time.perf_counter()
        observation = TimedObservation(timestamp=time.time(), timestep=0, observation=raw, must_go=True)
        stub.SendObservations(send_bytes_in_chunks(pickle.dumps(observation), services_pb2.Observation))
        reply = stub.GetActions(services_pb2.Empty())
        round_trip = time.perf_counter() - start
        actions = pickle.loads(reply.data) if reply.data else []  # nosec: list[TimedAction] from our own server
        channel.close()
    finally:
        server.terminate()
        _, err = server.communicate(timeout=30)
    chunk = np.stack([a.get_action().numpy() for a in actions]) if actions else np.zeros((0, 0))
    stats, tol = ds.meta.stats["action"], RANGE_FLOOR + 1e-5
    report = {
        "actions": len(actions),
        "timesteps": [a.get_timestep() for a in actions],
        "chunk_shape": list(chunk.shape),
        "within_dataset_action_range": bool(  # MoDE clamps to the range (a constant dimension: +- RANGE_FLOOR)
            chunk.size and (chunk >= stats["min"] - tol).all() and (chunk <= stats["max"] + tol).all()
        ),
        "round_trip_s": round(round_trip, 3),
    }
    print(json.dumps(report))
    if not actions:
        print(err[-3000:], file=sys.stderr)
    ok = report["chunk_shape"] == [horizon, len(stats["min"])] and report["timesteps"] == list(range(horizon))
    return 0 if ok and report["within_dataset_action_range"] else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
