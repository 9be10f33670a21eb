"""GPU benchmark (``mode-policy bench gpu``): the ``paper`` preset in bf16 on a CUDA device.

It prints, measured in one process:

* the latency of one action chunk (encoders, every sampling step, un-normalising) of three
  variants with the same random weights where they share a structure: ``cached`` (MoDE with the
  expert cache, the lean sampler), ``uncached`` (the same weights routed at every step) and
  ``dense`` (the dense transformer with the same *active* parameters, ``routing="dense"``,
  MLP hidden ``top_k * mlp_ratio * d``, as ``bench latency`` and ``bench train`` build it); at
  batch 1 and 64, each four ways:

  - ``eager``: the PyTorch code as it is;
  - ``graph``: captured once into a CUDA graph (:class:`torch.cuda.CUDAGraph`) and replayed: the
    inputs are copied into static buffers, the warm-up runs on a side stream before capture (as
    PyTorch's CUDA-graph notes ask), autocast runs with its cast cache off (cached casts would be
    freed outside the graph); a path that reads device values on the host (the routed dispatch's
    expert counts) cannot be captured and says so, found with the sync debug mode before trying;
  - ``compile``: ``torch.compile`` (Inductor, ``mode="default"``: fused kernels, no graphs);
  - ``compile_graph``: ``torch.compile(mode="reduce-overhead")``, Inductor with its own CUDA graphs
    (``torch.compiler.cudagraph_mark_step_begin`` before each call);

* a training step's samples/s (bf16 autocast, loss, backward, clipping, AdamW, EMA), with the data
  path's batches/s beside it, prefetch off and on, and a short loop of real steps each way
  (:func:`mode_policy.bench.data.bench_feed`).

What is timed is the device part of ``predict_action_chunk`` (:func:`chunk_fn`, checked equal to
it): its input checks read values on the host, which no CUDA graph can hold. Times are CUDA events
around each call, in interleaved rounds of every variant and mode in shuffled order; each call
starts on an idle device and ends when its last kernel does, so launch overheads count. Every
mode's actions are compared with eager's.

Without CUDA it falls back to the CPU with a tiny preset (two 32 px cameras) in fp32 (bf16
autocast on a CPU runs the sampler several times slower), says so, skips the CUDA-graph columns (nothing to capture on), and by default ``torch.compile`` too (Inductor takes
minutes per variant on a small CPU; ``compile="on"`` times it where it works), so that the whole
benchmark runs in CI and cannot rot; its figures check the benchmark, they are not GPU figures.
"""

from __future__ import annotations

import dataclasses
import gc
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..constants import ACTION_KEY
from ..errors import ConfigError
from ..model.config import PRESETS, MoDEConfig, get_preset
from ..policy import MoDEPolicy
from .data import bench_feed, feed_episodes, feed_stream
from .timing import bench_clock, time_side_by_side
from .training import TrainStep, make_train_batch

VARIANTS = ("cached", "uncached", "dense")
MODES = ("eager", "graph", "compile", "compile_graph")
MODE_TITLES = {"eager": "eager", "graph": "CUDA graph", "compile": "compile", "compile_graph": "compile+graph"}
BATCH_SIZES = (1, 64)
FALLBACK_PRESET = "tiny"
FALLBACK_OVERRIDES: dict[str, Any] = {
    "image_keys": list(PRESETS["paper"]["image_keys"]),
    "image_size": 32,
    "vision_width": 8,
    "state_dim": 0,
    "goal_dim": 64,
}
"""Without CUDA: the tiny transformer with the paper's two cameras, small (32 px, stem width 8)."""
COMPILE_CHOICES = ("auto", "on", "off")


# ------------------------------------------------------------------ what is timed
def bench_config(preset: str, cuda: bool) -> tuple[MoDEConfig, str]:
    """The benchmarked config and the preset's name as printed: ``preset`` on CUDA, else the fallback."""
    if cuda:
        return get_preset(preset), preset
    return get_preset(FALLBACK_PRESET, **FALLBACK_OVERRIDES), f"{FALLBACK_PRESET} (+2 cameras at 32 px)"


def build_policies(cfg: MoDEConfig, device: torch.device) -> dict[str, MoDEPolicy]:
    """``cached``, ``uncached`` (the same weights) and ``dense`` (equal active parameters), in eval mode."""
    if cfg.routing != "noise":
        raise ConfigError(f"bench gpu compares noise-routed MoDE with its dense variant; routing={cfg.routing!r}")
    dense = dataclasses.replace(cfg, routing="dense", dense_mlp_ratio=cfg.top_k * cfg.mlp_ratio)
    out = {}
    for name, config in (("cached", cfg), ("dense", dense)):
        torch.manual_seed(0)
        policy = MoDEPolicy(config)
        with torch.no_grad():  # a trained-looking output head (its init is zero)
            torch.nn.init.normal_(policy.denoiser.net.action_out.weight, std=0.02)
        out[name] = policy.to(device).eval()
    uncached = MoDEPolicy(cfg)
    uncached.load_state_dict(out["cached"].state_dict())
    uncached.denoiser.use_expert_cache = False
    out["uncached"] = uncached.to(device).eval()
    return {name: out[name] for name in VARIANTS}


def chunk_fn(policy: MoDEPolicy, amp: bool = True) -> Callable[[dict[str, Tensor], Tensor], Tensor]:
    """``fn(batch, noise) -> actions (B, H, A)``: what ``predict_action_chunk(batch, noise)`` runs on
    the device for a plain batch (goal vectors, no prefix), under bf16 autocast when ``amp``."""
    device = next(policy.parameters()).device.type

    def chunk(batch: dict[str, Tensor], noise: Tensor) -> Tensor:
        with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16, enabled=amp, cache_enabled=False):
            cond = policy.encode_condition(batch)  # (B, n, d)
            actions = policy.denoiser.sample(cond, noise).clamp(-1.0, 1.0)  # (B, H, A)
            return policy.normalizer.unnormalize_action(actions)

    return chunk


def inference_inputs(cfg: MoDEConfig, batch_size: int, device: torch.device, seed: int = 0) -> tuple[dict, Tensor]:
    """An observation batch (goal vectors, uint8 camera frames, states if any) and the initial noise."""
    batch = make_train_batch(cfg, batch_size, seed)
    batch.pop(ACTION_KEY)
    noise = torch.randn(batch_size, cfg.horizon, cfg.action_dim, generator=torch.Generator().manual_seed(seed + 1))
    return {k: v.to(device) for k, v in batch.items()}, noise.to(device)


# ------------------------------------------------------------------ the four ways
def host_sync_reason(fn: Callable[[], Any]) -> str | None:
    """Why ``fn`` cannot be captured in a CUDA graph: the first operation that makes the host wait
    for the device (a value read back), found with the sync debug mode; None if there is none."""
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        fn()
    except RuntimeError as err:
        return f"it waits for the device on the host ({_first_line(err)})"
    finally:
        torch.cuda.set_sync_debug_mode(previous)
    return None


def cuda_graphed(fn: Callable[[dict, Tensor], Tensor], batch: dict[str, Tensor], noise: Tensor, warmup: int = 3):
    """``fn`` captured in a CUDA graph for inputs shaped like ``batch`` and ``noise``: a function
    that copies its inputs into the graph's static buffers, replays it, and returns its static output
    (overwritten by the next replay)."""
    static_batch = {k: v.clone() for k, v in batch.items()}
    static_noise = noise.clone()
    stream = torch.cuda.current_stream(noise.device)
    side = torch.cuda.Stream(device=noise.device)
    side.wait_stream(stream)
    with torch.cuda.stream(side):  # warm-up off the capturing stream: lazy init, cache and plan built
        for _ in range(warmup):
            fn(static_batch, static_noise)
    stream.wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = fn(static_batch, static_noise)

    def replay(batch: dict[str, Tensor], noise: Tensor) -> Tensor:
        for key, buffer in static_batch.items():
            buffer.copy_(batch[key], non_blocking=True)
        static_noise.copy_(noise, non_blocking=True)
        graph.replay()
        return static_out

    replay.graph = graph  # keeps the graph (and its memory pool) alive with the function
    return replay


def compiled(fn: Callable[[dict, Tensor], Tensor], mode: str) -> Callable[[dict, Tensor], Tensor]:
    """``torch.compile(fn, mode=mode)``; with ``reduce-overhead`` each call starts a new CUDA-graph step."""
    import torch._dynamo

    config = torch._dynamo.config  # every variant and batch size is its own compilation of the same code
    for name, least in (("recompile_limit", 64), ("cache_size_limit", 64), ("accumulated_recompile_limit", 1024)):
        if hasattr(config, name):
            setattr(config, name, max(getattr(config, name), least))
    fast = torch.compile(fn, mode=mode, dynamic=False)
    if mode != "reduce-overhead":
        return fast

    def step(batch: dict[str, Tensor], noise: Tensor) -> Tensor:
        torch.compiler.cudagraph_mark_step_begin()
        return fast(batch, noise)

    return step


def _graph_breaks() -> int:
    try:
        from torch._dynamo.utils import counters
    except Exception:  # noqa: BLE001 - no dynamo, no breaks to count
        return 0
    return sum(counters["graph_break"].values())


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:160]


# ------------------------------------------------------------------ timing
def time_cuda(fns: dict[str, Callable[[], Any]], rounds: int, warmup: int = 1, seed: int = 0) -> dict[str, dict]:
    """Like :func:`~mode_policy.bench.timing.time_side_by_side`, timed by CUDA events: each call
    from an idle device to the end of its last kernel, in interleaved rounds of shuffled order."""
    rng = random.Random(seed)
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(rounds):
        rng.shuffle(names)
        for name in names:
            start.record()
            fns[name]()
            end.record()
            end.synchronize()
            times[name].append(start.elapsed_time(end))
    out = {}
    for name, values in times.items():
        q = statistics.quantiles(values, n=4)
        out[name] = {"median_ms": statistics.median(values), "iqr_ms": q[2] - q[0], "runs": len(values)}
        out[name]["samples_ms"] = values
    return out


# ------------------------------------------------------------------ the benchmark
def bench_gpu(
    preset: str = "paper",
    *,
    rounds: int = 20,
    batch_sizes: tuple[int, ...] = BATCH_SIZES,
    train_batch: int = 64,
    compile: str = "auto",
    prefetch: int = 2,
    feed_batches: int = 30,
    loop_steps: int = 10,
    device: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the benchmark (module docstring); returns every figure as a dict. ``compile``: 'auto'
    (on CUDA only), 'on' or 'off'; ``device``: None for CUDA when there is one, else the CPU."""
    if compile not in COMPILE_CHOICES:
        raise ConfigError(f"compile={compile!r}: choose from {', '.join(COMPILE_CHOICES)}")
    if rounds < 2:
        raise ConfigError(f"rounds={rounds}: need at least 2 timed rounds (the spread is an interquartile range)")
    if not batch_sizes or min(batch_sizes) < 1 or train_batch < 1:
        raise ConfigError(f"batch sizes {batch_sizes} and train_batch={train_batch} must be >= 1")
    get_preset(preset)  # ConfigError naming an unknown preset, on any machine
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={device!r}: this machine has no CUDA device")
    if dev.type not in ("cuda", "cpu"):
        raise ConfigError(f"device={device!r}: expected cuda, cuda:N or cpu")
    cuda = dev.type == "cuda"
    log = print if progress else (lambda *a, **k: None)
    cfg, shown = bench_config(preset, cuda)
    skipped: dict[str, str] = {}
    if not cuda:
        skipped["graph"] = skipped["compile_graph"] = "no CUDA device: CUDA graphs need one"
    if compile == "off" or (compile == "auto" and not cuda):
        why = (
            "--gpu_compile off"
            if compile == "off"
            else "the CPU fallback (Inductor builds for minutes here; --gpu_compile on)"
        )
        skipped["compile"] = f"not asked for: {why}"
        skipped.setdefault("compile_graph", skipped["compile"])
    modes = [m for m in MODES if m not in skipped]

    policies = build_policies(cfg, dev)
    fns: dict[str, Callable[[], Any]] = {}
    cells: dict[str, dict[str, Any]] = {}
    exact = True
    for batch_size in batch_sizes:
        batch, noise = inference_inputs(cfg, batch_size, dev)
        for variant, policy in policies.items():
            eager = chunk_fn(policy, amp=cuda)
            reference = eager(batch, noise).float()
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cuda, cache_enabled=False):
                exact = exact and torch.equal(policy.predict_action_chunk(batch, noise).float(), reference)
            for mode in modes:
                key = f"{variant}/b{batch_size}/{mode}"
                log(f"preparing {key} ...", flush=True)
                cell, fn = _prepare(mode, eager, batch, noise, reference, dev)
                cells[key] = cell
                if fn is not None:
                    fns[key] = lambda f=fn, b=batch, n=noise: f(b, n)
    log(f"timing {len(fns)} chunk functions, {rounds} interleaved rounds ...", flush=True)
    timings = time_cuda(fns, rounds) if cuda else time_side_by_side(fns, rounds, warmup=1)
    for key, timing in timings.items():
        cells[key].update(median_ms=timing["median_ms"], iqr_ms=timing["iqr_ms"])
    del fns, policies
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()

    log(f"training step and data path at batch {train_batch} ...", flush=True)
    data = feed_episodes(cfg, frames=max(1000, 2 * train_batch))
    torch.manual_seed(0)
    policy = MoDEPolicy(cfg)
    policy.set_normalization(data.stats())
    with feed_stream(data, cfg, train_batch, 1, 0, dev) as stream:
        first = stream.next()
    step = TrainStep(policy.to(dev), first, amp=cuda)
    feed = bench_feed(
        cfg,
        batch_size=train_batch,
        prefetch=prefetch,
        batches=feed_batches,
        device=dev,
        train_step=step,
        loop_steps=loop_steps,
        frames=max(1000, 2 * train_batch),
        progress=progress,
    )
    return {
        "preset": shown,
        "fallback": not cuda,
        "device": torch.cuda.get_device_name(dev) if cuda else "CPU",
        "precision": "bf16 autocast" if cuda else "fp32 (bf16 autocast is for the GPU; on this CPU it is slower)",
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "clock": "CUDA events" if cuda else bench_clock()[1],
        "rounds": rounds,
        "batch_sizes": list(batch_sizes),
        "config": {k: getattr(cfg, k) for k in ("n_layers", "d_model", "num_experts", "top_k", "horizon", "image_size")}
        | {"cameras": len(cfg.image_keys), "num_inference_steps": cfg.num_inference_steps},
        "modes": list(MODES),
        "skipped": skipped,
        "chunk_equals_predict_action_chunk": exact,
        "latency": cells,
        "train": {
            "batch_size": train_batch,
            "step_ms": feed["step_ms"],
            "samples_per_s": train_batch / feed["step_ms"] * 1e3,
        },
        "feed": feed,
    }


def _prepare(
    mode: str, eager: Callable, batch: dict, noise: Tensor, reference: Tensor, device: torch.device
) -> tuple[dict[str, Any], Callable | None]:
    """One mode of one chunk function: the callable to time (None where it cannot run, with the
    reason), how long it took to build, and its largest difference from eager's actions."""
    cell: dict[str, Any] = {}
    start = time.perf_counter()
    breaks = _graph_breaks()
    try:
        if mode == "eager":
            fn = eager
        elif mode == "graph":
            reason = host_sync_reason(lambda: eager(batch, noise))
            if reason is not None:
                return {"skipped": f"not capturable: {reason}"}, None
            fn = cuda_graphed(eager, batch, noise)
        else:
            fn = compiled(eager, "reduce-overhead" if mode == "compile_graph" else "default")
            for _ in range(3):  # compiles on the first call; reduce-overhead records its graph after a warm-up
                fn(batch, noise)
        out = fn(batch, noise).float()
    except Exception as err:  # noqa: BLE001 - a mode this path or machine cannot run is reported, not fatal
        if mode == "eager":
            raise
        return {"skipped": f"failed: {_first_line(err)}"}, None
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    cell["build_s"] = time.perf_counter() - start
    cell["max_abs_diff_vs_eager"] = (out - reference).abs().max().item()
    if mode.startswith("compile"):
        cell["graph_breaks"] = _graph_breaks() - breaks
    return cell, fn


def format_gpu(result: dict[str, Any]) -> str:
    """The benchmark as tables: chunk latency per variant and batch in each mode, ratios, the
    training step and the data path feeding it."""
    lines = []
    if result["fallback"]:
        lines.append(
            "bench gpu: no CUDA device here: CPU fallback with the tiny preset (figures check the benchmark; "
            "they are not GPU figures)"
        )
    lines.append(
        f"bench gpu: preset {result['preset']} on {result['device']}, {result['precision']}, torch {result['torch']}; "
        f"clock: {result['clock']}, medians of {result['rounds']} interleaved rounds"
    )
    cfg = result["config"]
    lines.append(
        f"  {cfg['n_layers']} layers, d={cfg['d_model']}, {cfg['num_experts']} experts top-{cfg['top_k']}, "
        f"{cfg['cameras']} cameras at {cfg['image_size']} px, horizon {cfg['horizon']}, "
        f"{cfg['num_inference_steps']} sampling steps; chunk == predict_action_chunk: "
        f"{result['chunk_equals_predict_action_chunk']}"
    )
    lines += ["", "chunk latency, ms (IQR)"]
    header = f"{'variant':<10}{'batch':>6}" + "".join(f"{MODE_TITLES[m]:>20}" for m in MODES)
    lines.append(header)
    cells = result["latency"]
    for batch_size in result["batch_sizes"]:
        for variant in VARIANTS:
            row = f"{variant:<10}{batch_size:>6}"
            for mode in MODES:
                cell = cells.get(f"{variant}/b{batch_size}/{mode}", {})
                text = f"{cell['median_ms']:.2f} ({cell['iqr_ms']:.2f})" if "median_ms" in cell else "-"
                row += f"{text:>20}"
            lines.append(row)
    notes = {f"{MODE_TITLES[m]}: {why}" for m, why in result["skipped"].items()}
    for key, cell in cells.items():
        if "skipped" in cell:
            variant, size, mode = key.split("/")
            notes.add(f"{MODE_TITLES[mode]}, {variant} {size}: {cell['skipped']}")
    lines += [f"  - {note}" for note in sorted(notes)]
    lines += ["", "ratios (of medians)"]
    for batch_size in result["batch_sizes"]:
        for mode in MODES:
            cached = cells.get(f"cached/b{batch_size}/{mode}", {}).get("median_ms")
            parts = []
            for other in ("uncached", "dense"):
                theirs = cells.get(f"{other}/b{batch_size}/{mode}", {}).get("median_ms")
                if cached and theirs:
                    parts.append(f"cached / {other} {cached / theirs:.3f}")
            if mode != "eager":
                eager = cells.get(f"cached/b{batch_size}/eager", {}).get("median_ms")
                if cached and eager:
                    parts.append(f"cached {MODE_TITLES[mode]} / eager {cached / eager:.3f}")
            if parts:
                lines.append(f"  b{batch_size:<3} {MODE_TITLES[mode]:<14} " + ", ".join(parts))
    checks = [
        f"{key} {cell['max_abs_diff_vs_eager']:.1e}"
        for key, cell in cells.items()
        if "max_abs_diff_vs_eager" in cell and not key.endswith("/eager")
    ]
    if checks:
        lines.append("  max |actions - eager's|: " + ", ".join(checks))
    builds = [f"{key} {cell['build_s']:.1f} s" for key, cell in cells.items() if "graph_breaks" in cell]
    if builds:
        breaks = ", ".join(f"{k} {c['graph_breaks']}" for k, c in cells.items() if "graph_breaks" in c)
        lines.append("  compile time: " + ", ".join(builds) + "; graph breaks: " + breaks)
    train, feed = result["train"], result["feed"]
    lines += [
        "",
        f"training step ({result['precision'].split(' (')[0]}, AdamW, EMA), batch {train['batch_size']}: {train['step_ms']:.1f} ms, "
        f"{train['samples_per_s']:,.1f} samples/s",
        f"data path, batch {feed['batch_size']}: inline {feed['path']['inline']['batches_per_s']:.1f} batches/s, "
        f"prefetch {feed['prefetch']} {feed['path']['prefetch']['batches_per_s']:.1f} batches/s; "
        f"the step takes {feed['step_batches_per_s']:.1f} batches/s",
    ]
    for key, row in feed["loop"].items():
        name = "inline" if key == "inline" else f"prefetch {feed['prefetch']}"
        lines.append(
            f"training loop, {name}: {row['steps_per_s']:.2f} steps/s, "
            f"{row['data_wait_share']:.1%} of the time waiting for data"
        )
    return "\n".join(lines)
