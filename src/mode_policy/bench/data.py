"""Data-loading benchmark (``mode-policy bench data``): the in-memory and the bounded path side by side.

On one image dataset (a synthetic one by default, whose decoded frames are several times the
memory budget), each variant runs in a fresh process so that its peak resident memory
(``VmHWM`` of ``/proc/self/status``) is its own:

* ``in_memory``       every camera decoded into RAM (``load_episodes`` without a cache), then a
                      few training steps of a tiny image policy
* ``bounded_cold``    the frame cache built from the videos, then batches read from it
* ``bounded_reused``  a later run: the cache reused, batches read from it, then the same training steps
* ``memmap``          reference: the same cache files memory-mapped and gathered by indexing
* ``decode_on_demand``  reference: each sample's frames decoded from the video when asked for

Samples/s counts gathered training windows (``WindowSampler.batch``), not optimizer steps.

Then, in this process, :func:`bench_feed`: whether the data path keeps a training step fed, for a
preset's shapes (``paper``: two 128 px cameras, its horizon and history). It times the batches/s the
path delivers to the training device with batches built inline and built ahead on a thread
(:mod:`mode_policy.data.prefetch`), beside the training step it must feed: the preset's real step
on the device (bf16 autocast on CUDA), or a given step time, which the loop then models as a wait
that leaves the CPU free (as a GPU step does). A short training loop with that step, prefetch off
and on, shows the steps/s and the share of time the step waited for data.
"""

from __future__ import annotations

import json
import math
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

VARIANTS = ("in_memory", "bounded_cold", "bounded_reused", "memmap", "decode_on_demand")


def _status_mb(field: str) -> float:
    """A ``/proc/self/status`` memory figure (VmRSS, VmHWM) in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def write_synthetic_dataset(
    root: str | Path,
    episodes: int,
    length: int = 100,
    image_size: int = 96,
    cameras: Sequence[str] = ("corner", "gripperPOV"),
    seed: int = 0,
) -> Path:
    """A LeRobot dataset of ``episodes`` x ``length`` frames: random 8-d states and 4-d actions,
    and per camera a video of smooth moving colour gradients (which a codec keeps well)."""
    from ..data.writer import DatasetWriter

    keys = [f"observation.images.{c}" for c in cameras]
    features = {
        "observation.state": {"dtype": "float32", "shape": [8], "names": None},
        "action": {"dtype": "float32", "shape": [4], "names": None},
        **{k: {"dtype": "video", "shape": [image_size, image_size, 3], "names": None} for k in keys},
    }
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:image_size, 0:image_size] * (128 // image_size or 1)
    t = np.arange(length)[:, None, None]
    with DatasetWriter(root, fps=10, features=features, overwrite=True) as writer:
        for e in range(episodes):
            frames = {
                "observation.state": rng.normal(size=(length, 8)).astype(np.float32),
                "action": rng.uniform(-1, 1, size=(length, 4)).astype(np.float32),
            }
            for c, key in enumerate(keys):
                r = (40 + xx + 3 * t + 11 * e) % 256
                g = (40 + yy + 0 * t + 29 * c) % 256
                b = np.broadcast_to((60 + 7 * e + 50 * c) % 256 + 0 * xx, r.shape)
                frames[key] = np.stack([r, g, b], axis=-1).astype(np.uint8)  # (T, S, S, 3)
            writer.add_episode(frames, task=f"task {e % 3}")
        writer.finalize()
    return Path(root)


def _memmap_images(data: Any) -> None:
    """Replace every on-disk camera of ``data`` by a memory map of the same cache file."""
    import torch

    from ..data.frame_cache import DiskFrames

    for key, frames in data.images.items():
        if isinstance(frames, DiskFrames):
            array = np.memmap(frames.path, dtype=np.uint8, mode="c", shape=tuple(frames.shape))
            data.images[key] = torch.from_numpy(array)


def _decode_on_demand(dataset: str, n_obs: int, samples: int) -> float | None:
    """Samples/s when each window's frames are decoded from the videos on request (None: no video camera)."""
    from ..data.metadata import load_metadata
    from ..data.video import decode_video_segment

    meta = load_metadata(dataset)
    if not meta.video_keys:
        return None
    rng = random.Random(0)
    start = time.perf_counter()
    for _ in range(samples):
        ep = rng.choice(meta.episodes)
        t = rng.randrange(ep.stop - ep.start)
        times = np.arange(max(0, t - n_obs + 1), t + 1) / meta.fps  # (n_obs,) seconds into the episode
        for key in meta.video_keys:
            ref = ep.videos[key]
            decode_video_segment(ref.path, ref.from_ts + times, meta.fps)
    return samples / (time.perf_counter() - start)


def measure(task: dict[str, Any]) -> dict[str, Any]:
    """One variant, in this process: load, gather ``batches`` batches, then train ``train_steps``
    steps (tiny image policy); times and this process's memory figures (MB)."""
    import torch

    from ..data.windows import WindowSampler, dataset_cameras, load_episodes

    torch.set_num_threads(task["threads"])
    out: dict[str, Any] = {"rss_start_mb": _status_mb("VmRSS")}
    keys = list(dataset_cameras(task["dataset"]))
    options = (
        {}
        if task["variant"] == "in_memory"
        else {"cache_dir": task["cache_dir"], "memory_budget_mb": task["memory_budget_mb"]}
    )
    start = time.perf_counter()
    data = load_episodes(task["dataset"], keys, progress=False, **options)
    out["load_s"] = time.perf_counter() - start
    out["on_disk"] = sorted(k for k, v in data.images.items() if not torch.is_tensor(v))
    if task["variant"] == "memmap":
        _memmap_images(data)
    sampler = WindowSampler(data, task["n_obs_steps"], horizon=10)
    gen = torch.Generator().manual_seed(0)
    sampler.batch(torch.randint(0, len(sampler), (task["batch_size"],), generator=gen))
    start = time.perf_counter()
    for _ in range(task["batches"]):
        sampler.batch(torch.randint(0, len(sampler), (task["batch_size"],), generator=gen))
    out["samples_per_s"] = task["batches"] * task["batch_size"] / (time.perf_counter() - start)
    out["peak_rss_mb"] = _status_mb("VmHWM")
    if task["variant"] == "memmap":
        out["decode_on_demand_samples_per_s"] = _decode_on_demand(task["dataset"], task["n_obs_steps"], 16)
    if task["train_steps"]:
        out.update(_train_steps(data, task, keys))
    return out


def _train_steps(data: Any, task: dict[str, Any], keys: list[str]) -> dict[str, float]:
    """A tiny image policy's forward/backward/AdamW steps on windows of ``data``."""
    import torch

    from ..data.windows import WindowSampler
    from ..model.config import get_preset
    from ..policy import MoDEPolicy

    height, width = data.images[keys[0]].shape[1:3]
    cfg = get_preset(
        "tiny",
        state_dim=data.state_dim,
        action_dim=data.action_dim,
        goal_dim=16,
        image_keys=keys,
        image_size=height if height == width else 0,
        vision_width=8,
        n_obs_steps=task["n_obs_steps"],
    )
    torch.manual_seed(0)
    policy = MoDEPolicy(cfg).train()
    policy.set_normalization(data.stats())
    goal_table = torch.randn(len(data.tasks), cfg.goal_dim)  # (num_tasks, goal_dim)
    sampler = WindowSampler(data, cfg.n_obs_steps, cfg.horizon, goal_table)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(1)
    start = time.perf_counter()
    for _ in range(task["train_steps"]):
        loss, _ = policy(sampler.batch(torch.randint(0, len(sampler), (task["train_batch_size"],), generator=gen)))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return {
        "train_step_s": (time.perf_counter() - start) / task["train_steps"],
        "train_peak_rss_mb": _status_mb("VmHWM"),
    }


_CHILD = """
import json, sys
from mode_policy import errors
from mode_policy.bench.data import measure
try:
    print(json.dumps({"result": measure(json.loads(sys.argv[1]))}))
except errors.ModePolicyError as err:
    print(json.dumps({"error": str(err), "type": type(err).__name__}))
"""


def _in_fresh_process(task: dict[str, Any]) -> dict[str, Any]:
    """:func:`measure` in a new interpreter (its own peak RSS); errors the user can fix come back as themselves."""
    from .. import errors

    proc = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(task)], capture_output=True, text=True, check=False)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode or not lines:
        raise RuntimeError(f"benchmark variant {task['variant']} failed:\n{proc.stderr[-3000:]}")
    reply = json.loads(lines[-1])
    if "error" in reply:
        raise getattr(errors, reply["type"], errors.ModePolicyError)(reply["error"])
    return reply["result"]


def bench_data(
    dataset: str | None = None,
    *,
    memory_budget_mb: float = 32.0,
    workdir: str | None = None,
    image_size: int = 96,
    batch_size: int = 256,
    n_obs_steps: int = 2,
    batches: int = 40,
    train_steps: int = 5,
    train_batch_size: int = 32,
    threads: int = 1,
    progress: bool = True,
) -> dict[str, Any]:
    """Run every variant (module docstring) on ``dataset`` (None: a synthetic 2-camera dataset of
    ``image_size`` px whose decoded frames are ~4.5x ``memory_budget_mb``, written under
    ``workdir``); the frame cache is built afresh in ``workdir`` (default: a temporary folder)."""
    from ..data.frame_cache import cache_entry
    from ..data.reader import DatasetReader
    from ..data.windows import dataset_cameras
    from ..errors import DataError

    with tempfile.TemporaryDirectory(prefix="mode-bench-data-", dir=workdir) as tmp:
        if dataset is None:
            frame_mb = 2 * image_size * image_size * 3 / 2**20
            episodes = math.ceil(4.5 * memory_budget_mb / frame_mb / 100)
            if progress:
                print(f"writing a synthetic dataset: {episodes} episodes x 100 frames, 2 cameras at {image_size} px")
            dataset = str(write_synthetic_dataset(Path(tmp) / "dataset", episodes, image_size=image_size))
        ds = DatasetReader(dataset)
        cameras = dataset_cameras(dataset)
        if not cameras:
            raise DataError(f"bench data: dataset {dataset} has no camera features (nothing to cache)")
        decoded = sum(cache_entry(ds, k, None, tmp).total_bytes for k in cameras) / 2**20
        base = {
            "dataset": dataset,
            "cache_dir": str(Path(tmp) / "cache"),
            "memory_budget_mb": memory_budget_mb,
            "batch_size": batch_size,
            "n_obs_steps": n_obs_steps,
            "batches": batches,
            "threads": threads,
            "train_batch_size": train_batch_size,
        }
        plan = [("bounded_cold", 0), ("bounded_reused", train_steps), ("in_memory", train_steps), ("memmap", 0)]
        results: dict[str, Any] = {}
        for variant, steps in plan:
            if progress:
                print(f"measuring {variant} ...", flush=True)
            results[variant] = _in_fresh_process({**base, "variant": variant, "train_steps": steps})
        on_demand = results["memmap"].pop("decode_on_demand_samples_per_s")
        if on_demand is not None:
            results["decode_on_demand"] = {"samples_per_s": on_demand}
    return {
        "dataset": dataset,
        "num_frames": ds.num_frames,
        "cameras": {k: list(s) for k, s in cameras.items()},
        "decoded_mb": decoded,
        "memory_budget_mb": memory_budget_mb,
        "batch_size": batch_size,
        "n_obs_steps": n_obs_steps,
        "train_batch_size": train_batch_size,
        "threads": threads,
        "results": results,
    }


def format_data(result: dict[str, Any]) -> str:
    """The benchmark as a table (one row per variant)."""
    cams = ", ".join(f"{k.rsplit('.', 1)[-1]} {s[0]}x{s[1]}" for k, s in result["cameras"].items())
    setup = (
        f"  {result['num_frames']} frames, cameras {cams}: {result['decoded_mb']:.0f} MB decoded = "
        f"{result['decoded_mb'] / result['memory_budget_mb']:.1f} x the memory budget of "
        f"{result['memory_budget_mb']:g} MB; batches of {result['batch_size']} windows x "
        f"{result['n_obs_steps']} frames, training batches of {result['train_batch_size']}, "
        f"{result['threads']} thread(s)"
    )
    header = (
        f"{'variant':<18}{'load s':>8}{'samples/s':>11}{'RSS start':>11}{'peak RSS':>10}"
        f"{'train peak RSS':>16}{'train step s':>14}"
    )
    lines = [f"data loading: {result['dataset']}", setup, "", header]

    def cell(row: dict, key: str, fmt: str) -> str:
        return format(row[key], fmt) if key in row else "-"

    for name in VARIANTS:
        row = result["results"].get(name)
        if row is None:
            continue
        lines.append(
            f"{name:<18}{cell(row, 'load_s', '.1f'):>8}{cell(row, 'samples_per_s', ',.0f'):>11}"
            f"{cell(row, 'rss_start_mb', ',.0f'):>11}{cell(row, 'peak_rss_mb', ',.0f'):>10}"
            f"{cell(row, 'train_peak_rss_mb', ',.0f'):>16}{cell(row, 'train_step_s', '.2f'):>14}"
        )
    lines += ["", "RSS in MB (VmHWM of each variant's own process); 'RSS start': after imports, before loading."]
    return "\n".join(lines)


# ------------------------------------------------------------------ feeding a training step
FEED_PRESET = "paper"


def feed_episodes(cfg: Any, frames: int = 1000, episode_length: int = 100, seed: int = 0) -> Any:
    """In-memory episodes with ``cfg``'s shapes (what ``load_episodes`` holds after decoding):
    random uint8 frames (frames, S, S, 3) per camera, states (8-d for an image-only policy, which
    a dataset still has), actions in [-1, 1], 3 tasks."""
    import torch

    from ..data.windows import EpisodeData

    gen = torch.Generator().manual_seed(seed)
    starts = torch.arange(frames) // episode_length * episode_length
    episodes = math.ceil(frames / episode_length)
    side = cfg.image_size
    return EpisodeData(
        state=torch.randn(frames, cfg.state_dim or 8, generator=gen),
        action=torch.rand(frames, cfg.action_dim, generator=gen) * 2 - 1,
        episode_start=starts,
        episode_end=torch.clamp(starts + episode_length, max=frames),
        task_index=torch.arange(frames) // episode_length % 3,
        tasks=["task 0", "task 1", "task 2"],
        episode_bounds=np.array([[e * episode_length, min(frames, (e + 1) * episode_length)] for e in range(episodes)]),
        images={
            k: torch.randint(0, 256, (frames, side, side, 3), dtype=torch.uint8, generator=gen) for k in cfg.image_keys
        },
    )


def feed_stream(data: Any, cfg: Any, batch_size: int, count: int, depth: int, device: Any, seed: int = 0) -> Any:
    """The training batches of ``data`` as a run draws them (one generator; goal vectors from a
    fixed table), ``count`` of them on ``device``, built ``depth`` ahead on a thread (0: inline)."""
    import torch

    from ..data.prefetch import BatchStream
    from ..data.windows import WindowSampler

    goals = torch.randn(len(data.tasks), cfg.goal_dim, generator=torch.Generator().manual_seed(seed))
    sampler = WindowSampler(data, cfg.n_obs_steps, cfg.horizon, goals)
    gen = torch.Generator().manual_seed(seed)

    def build() -> dict[str, Any]:
        return sampler.batch(torch.randint(0, len(sampler), (batch_size,), generator=gen))

    return BatchStream(build, count, position=gen.get_state, rewind=gen.set_state, depth=depth, device=device)


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _delivery_rate(data: Any, cfg: Any, batch_size: int, batches: int, depth: int, device: Any) -> float:
    """Batches/s a stream delivers to ``device`` when nothing else runs (the transfer included)."""
    with feed_stream(data, cfg, batch_size, batches, depth, device) as stream:
        start = time.perf_counter()
        for _ in stream:
            _sync(device)
        return batches / (time.perf_counter() - start)


def _feed_loop(
    data: Any, cfg: Any, batch_size: int, steps: int, depth: int, device: Any, step: Any
) -> dict[str, float]:
    """A training loop of ``steps`` steps of ``step(batch)``: steps/s and the share of the time
    spent waiting for the next batch (the first step, a warm-up, not counted)."""
    with feed_stream(data, cfg, batch_size, steps + 1, depth, device) as stream:
        step(stream.next())
        _sync(device)
        waited, start = 0.0, time.perf_counter()
        for _ in range(steps):
            asked = time.perf_counter()
            batch = stream.next()
            waited += time.perf_counter() - asked
            step(batch)
            _sync(device)
        wall = time.perf_counter() - start
    return {"steps_per_s": steps / wall, "data_wait_share": waited / wall}


def feed_config(preset: str = FEED_PRESET, **overrides: Any) -> Any:
    """The config whose shapes the feed benchmark uses: the preset's cameras, image size,
    history and horizon (a preset without cameras gets the paper's two)."""
    from ..model.config import PRESETS, get_preset

    cfg = get_preset(preset, **overrides)
    if not cfg.image_keys:
        paper = PRESETS["paper"]
        cfg = get_preset(preset, **{"image_keys": paper["image_keys"], "image_size": paper["image_size"], **overrides})
    return cfg


def bench_feed(
    cfg: Any = None,
    *,
    batch_size: int = 64,
    prefetch: int = 2,
    batches: int = 30,
    rounds: int = 3,
    device: Any = None,
    step_ms: float | None = None,
    train_step: Any = None,
    loop_steps: int = 10,
    frames: int = 1000,
    progress: bool = True,
) -> dict[str, Any]:
    """The data path's batches/s for ``cfg``'s shapes (default: :data:`FEED_PRESET`), inline and
    built ``prefetch`` ahead, beside the training step it must feed: ``train_step`` (a
    :class:`~mode_policy.bench.training.TrainStep`, called on each batch), else on CUDA the
    preset's real step (bf16 autocast), else ``step_ms`` (modelled as a wait that leaves the CPU
    free), else none (the loop is then skipped). ``device``: default CUDA when present."""
    import torch

    from ..errors import ConfigError

    if prefetch < 1:
        raise ConfigError(f"prefetch={prefetch}: the feed benchmark compares inline with >= 1 batch built ahead")
    for name, value in (
        ("batch_size", batch_size),
        ("batches", batches),
        ("rounds", rounds),
        ("loop_steps", loop_steps),
    ):
        if value < 1:
            raise ConfigError(f"{name}={value}: must be >= 1")
    if step_ms is not None and not step_ms > 0:
        raise ConfigError(f"step_ms={step_ms}: must be > 0")
    log = print if progress else (lambda *a, **k: None)
    cfg = cfg if cfg is not None else feed_config()
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    log(
        f"feed: {frames} frames of {len(cfg.image_keys)} camera(s) at {cfg.image_size} px in memory, batch {batch_size}"
    )
    data = feed_episodes(cfg, frames)
    rates: dict[str, list[float]] = {"inline": [], "prefetch": []}
    _delivery_rate(data, cfg, batch_size, 2, 0, device)  # warm-up (first pinned allocations, CUDA context)
    for _ in range(rounds):  # alternating, so a busy neighbour hits both alike
        rates["inline"].append(_delivery_rate(data, cfg, batch_size, batches, 0, device))
        rates["prefetch"].append(_delivery_rate(data, cfg, batch_size, batches, prefetch, device))
    path = {
        name: {"batches_per_s": statistics.median(r), "samples_per_s": statistics.median(r) * batch_size}
        for name, r in rates.items()
    }
    step_source = "given"
    if train_step is None and step_ms is None and device.type == "cuda":
        train_step = _real_step(cfg, batch_size, device, data)
    if train_step is not None:
        step_source = "measured"
        with feed_stream(data, cfg, batch_size, 1, 0, device) as stream:
            batch = stream.next()
        train_step(batch)  # warm-up
        times = []
        for _ in range(3):
            _sync(device)
            start = time.perf_counter()
            train_step(batch)
            _sync(device)
            times.append(time.perf_counter() - start)
        step_ms = statistics.median(times) * 1e3
        step_fn = train_step
    elif step_ms is not None:
        wait_s = step_ms / 1e3

        def step_fn(batch: Any) -> None:
            time.sleep(wait_s)

    result: dict[str, Any] = {
        "cameras": list(cfg.image_keys),
        "image_size": cfg.image_size,
        "n_obs_steps": cfg.n_obs_steps,
        "horizon": cfg.horizon,
        "batch_size": batch_size,
        "prefetch": prefetch,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "path": path,
        "step_ms": step_ms,
        "step_source": step_source if step_ms is not None else None,
    }
    if step_ms is not None:
        log(f"feed: a training loop of {loop_steps} steps, prefetch off and on ...")
        result["step_batches_per_s"] = 1e3 / step_ms
        result["loop"] = {
            "inline": _feed_loop(data, cfg, batch_size, loop_steps, 0, device, step_fn),
            "prefetch": _feed_loop(data, cfg, batch_size, loop_steps, prefetch, device, step_fn),
        }
    return result


def _real_step(cfg: Any, batch_size: int, device: Any, data: Any) -> Any:
    """The preset's training step on ``device`` (bf16 autocast on CUDA), normalised for ``data``."""
    import torch

    from ..policy import MoDEPolicy
    from .training import TrainStep

    torch.manual_seed(0)
    policy = MoDEPolicy(cfg)
    policy.set_normalization(data.stats())
    with feed_stream(data, cfg, batch_size, 1, 0, device) as stream:
        batch = stream.next()
    return TrainStep(policy.to(device), batch, amp=device.type == "cuda")


def format_feed(result: dict[str, Any]) -> str:
    """The feed benchmark as lines: the path's rates, the step, the loop prefetch off and on."""
    cams = ", ".join(k.rsplit(".", 1)[-1] for k in result["cameras"])
    lines = [
        f"feeding a training step on {result['device']}: {len(result['cameras'])} camera(s) ({cams}) at "
        f"{result['image_size']}x{result['image_size']}, {result['n_obs_steps']} observation step(s), horizon "
        f"{result['horizon']}; batches of {result['batch_size']} ({result['torch_threads']} torch thread(s))",
        "",
        f"{'data path':<24}{'batches/s':>11}{'samples/s':>11}",
    ]
    names = {"inline": "inline (prefetch 0)", "prefetch": f"prefetch {result['prefetch']}"}
    for key, row in result["path"].items():
        lines.append(f"{names[key]:<24}{row['batches_per_s']:>11.1f}{row['samples_per_s']:>11,.0f}")
    if result["step_ms"] is None:
        lines.append(
            "training step: not measured on the CPU (the paper step needs a GPU); --step_ms N models a step of "
            "N ms, e.g. the one `mode-policy bench gpu` measures"
        )
        return "\n".join(lines)
    how = (
        "measured here" if result["step_source"] == "measured" else "given, modelled as a wait that leaves the CPU free"
    )
    lines.append(
        f"training step to feed: {result['step_ms']:.1f} ms ({how}) = {result['step_batches_per_s']:.1f} batches/s; "
        f"the path delivers {result['path']['prefetch']['batches_per_s'] / result['step_batches_per_s']:.1f}x that"
    )
    lines += ["", f"{'training loop':<24}{'steps/s':>11}{'waiting for data':>18}"]
    for key, row in result["loop"].items():
        lines.append(f"{names[key]:<24}{row['steps_per_s']:>11.2f}{row['data_wait_share']:>18.1%}")
    return "\n".join(lines)
