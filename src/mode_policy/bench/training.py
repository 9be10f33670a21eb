"""Training throughput (``mode-policy bench train``): samples/s of a training step and the
fraction of this machine's matmul peak it reaches, MoDE beside the dense variant with the
same active parameters.

A step is what :func:`mode_policy.training.loop.train` runs per batch: loss, backward, gradient
clipping, AdamW, EMA update, on a fixed synthetic batch. Its FLOPs (forward and backward
matmuls, convolutions and attention) are counted once by torch's FLOP counter; the peak
is the 1024^3 matmul probe of :mod:`mode_policy.bench`, timed in the same interleaved
rounds as the steps, so a busy neighbour slows both alike. MoDE and dense run in the
same rounds where their training state fits in memory together (``cpu``); larger pairs
(``paper``) one after the other, and then the fraction of peak, each against its own
probes, is what to compare.
"""

from __future__ import annotations

import dataclasses
import gc
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..constants import ACTION_KEY, GOAL_KEY, STATE_KEY
from ..errors import ConfigError
from ..model.config import MoDEConfig, get_preset
from ..policy import MoDEPolicy
from ..training.ema import EMA
from ..training.setup import param_groups
from .timing import bench_clock, machine_probes, probe_throughputs, time_side_by_side

DEFAULT_BATCH = {"tiny": 32, "cpu": 256, "cpu-image": 64, "paper": 8, "paper-pretrain": 8}
"""Batch size per preset (the paper models at a small batch, to keep the run short)."""


def train_config(preset: str, images: bool = False, **overrides: Any) -> MoDEConfig:
    """The benchmarked MoDE config: the preset with 39-d states and 4-d actions; without
    ``images`` the cameras are dropped (a state-only model: the transformer's cost alone)."""
    cfg = get_preset(preset, **overrides)
    changes: dict[str, Any] = {"action_dim": 4}
    if not images or not cfg.image_keys:
        changes.update(image_keys=[], state_dim=39)
    elif cfg.image_size <= 0:
        raise ConfigError(f"preset {preset!r}: bench train with images needs image_size > 0")
    return dataclasses.replace(cfg, **changes)


def make_train_batch(cfg: MoDEConfig, batch_size: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A synthetic training batch: standard-normal states and goals, actions in [-1, 1],
    uint8 camera frames (B, n_obs, H, W, 3) when the config has cameras."""
    gen = torch.Generator().manual_seed(seed)
    batch = {
        GOAL_KEY: torch.randn(batch_size, cfg.goal_dim, generator=gen),
        ACTION_KEY: torch.rand(batch_size, cfg.horizon, cfg.action_dim, generator=gen) * 2 - 1,
    }
    if cfg.state_dim > 0:
        batch[STATE_KEY] = torch.randn(batch_size, cfg.n_obs_steps, cfg.state_dim, generator=gen)
    for key in cfg.image_keys:
        shape = (batch_size, cfg.n_obs_steps, cfg.image_size, cfg.image_size, 3)
        batch[key] = torch.randint(0, 256, shape, generator=gen, dtype=torch.uint8)
    return batch


class TrainStep:
    """One training step of ``policy`` on ``batch`` (see module docstring); call it, with another
    batch of the same shapes if wanted. ``amp``: bf16 autocast, as training runs on CUDA."""

    def __init__(self, policy: MoDEPolicy, batch: dict[str, torch.Tensor], lr: float = 1e-4, amp: bool = False) -> None:
        self.policy = policy.train()
        self.batch = batch
        self.optimizer = torch.optim.AdamW(param_groups(policy, 0.05), lr=lr, betas=(0.9, 0.95))
        self.ema = EMA(policy, 0.999)
        device = next(policy.parameters()).device.type
        self.autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=amp)

    def __call__(self, batch: dict[str, torch.Tensor] | None = None) -> float:
        with self.autocast:
            loss, _ = self.policy(self.batch if batch is None else batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.policy.parameters(), 1.0)
        self.optimizer.step()
        self.ema.update(self.policy)
        return float(loss.detach())

    def flops(self) -> int:
        """FLOPs of one step's forward and backward pass (runs one step)."""
        counter = FlopCounterMode(display=False)
        with counter:
            self()
        return counter.get_total_flops()


PROBE_REPEATS = 4
"""Matmul probes per round: the probe is short beside a step, so it runs a few times for a steadier median."""
TOGETHER_BYTES = 2 * 2**30
"""Variants whose training state (weights, gradients, AdamW moments, EMA: 20 bytes a parameter)
fits in this many bytes together are timed in the same rounds; larger ones one after the other."""


def _row(step: TrainStep, flops: int, timings: dict[str, dict[str, float]], name: str) -> dict[str, Any]:
    gflops_peak, _ = probe_throughputs(timings, PROBE_REPEATS)
    step_s = timings[name]["median_ms"] / 1e3
    batch_size = next(iter(step.batch.values())).shape[0]
    counts = step.policy.parameter_counts()
    return {
        "batch_size": batch_size,
        "step_ms": timings[name]["median_ms"],
        "step_iqr_ms": timings[name]["iqr_ms"],
        "samples_per_s": batch_size / step_s,
        "gflop_per_step": flops / 1e9,
        "achieved_gflops": flops / step_s / 1e9,
        "matmul_peak_gflops": gflops_peak,
        "fraction_of_peak": flops / step_s / 1e9 / gflops_peak,
        "total_params": counts["total_params"],
        "active_params": counts["active_params"],
    }


def _time_steps(configs: dict[str, MoDEConfig], batch_size: int, steps: int) -> dict[str, dict[str, Any]]:
    """Build, count and time the configs' steps in the same interleaved rounds (with the probes)."""
    built = {}
    for name, cfg in configs.items():
        torch.manual_seed(0)
        step = TrainStep(MoDEPolicy(cfg), make_train_batch(cfg, batch_size))
        built[name] = (step, step.flops())  # the warm-up step (AdamW state allocated) counts the FLOPs
    timings = time_side_by_side(
        {**{n: s for n, (s, _) in built.items()}, **machine_probes(PROBE_REPEATS)}, rounds=steps, warmup=0
    )
    rows = {name: _row(step, flops, timings, name) for name, (step, flops) in built.items()}
    del built
    gc.collect()
    return rows


def bench_train(
    presets: tuple[str, ...] = ("cpu", "paper"),
    batch_sizes: dict[str, int] | None = None,
    steps: int = 2,
    images: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """For each preset: MoDE (``mode``) and the dense variant with equal active parameters
    (``dense_active``); returns per-variant figures and the MoDE / dense ratios."""
    if steps < 2:
        raise ConfigError(f"steps={steps}: need at least 2 timed steps (the spread is an interquartile range)")
    log = print if progress else (lambda *a, **k: None)
    out: dict[str, Any] = {
        "torch_threads": torch.get_num_threads(),
        "clock": bench_clock()[1],
        "images": images,
        "presets": {},
    }
    for preset in presets:
        cfg = train_config(preset, images)
        if cfg.routing != "noise":
            raise ConfigError(
                f"bench train compares noise-routed MoDE with its dense variant; {preset!r} has routing={cfg.routing!r}"
            )
        size = (batch_sizes or {}).get(preset, DEFAULT_BATCH.get(preset, 32))
        configs = {
            "mode": cfg,
            "dense_active": dataclasses.replace(cfg, routing="dense", dense_mlp_ratio=cfg.top_k * cfg.mlp_ratio),
        }
        together = 20 * sum(_param_count(c) for c in configs.values()) <= TOGETHER_BYTES
        log(
            f"bench train: {preset}, batch {size}, {steps} timed steps"
            + (" (variants side by side)..." if together else " (one variant after the other)...")
        )
        if together:
            rows = _time_steps(configs, size, steps)
        else:
            rows = {name: _time_steps({name: c}, size, steps)[name] for name, c in configs.items()}
        out["presets"][preset] = {
            "variants": rows,
            "side_by_side": together,
            "mode_over_dense_samples_per_s": rows["mode"]["samples_per_s"] / rows["dense_active"]["samples_per_s"],
            "mode_over_dense_fraction_of_peak": rows["mode"]["fraction_of_peak"]
            / rows["dense_active"]["fraction_of_peak"],
        }
    return out


def _param_count(cfg: MoDEConfig) -> int:
    with torch.device("meta"):  # counted without allocating
        return MoDEPolicy(cfg).parameter_counts()["total_params"]


def format_train(result: dict[str, Any]) -> str:
    """Human-readable table of a ``bench_train`` result."""
    lines = [
        f"bench train (torch threads: {result['torch_threads']}; clock: {result['clock']}; "
        f"{'with' if result['images'] else 'without'} cameras)",
        "",
        f"{'preset':<8} {'variant':<13} {'batch':>5} {'step ms':>9} {'IQR':>7} {'samples/s':>10} "
        f"{'GFLOP/step':>11} {'GFLOP/s':>8} {'peak':>6} {'of peak':>8} {'active params':>14}",
    ]
    for preset, entry in result["presets"].items():
        for name, r in entry["variants"].items():
            lines.append(
                f"{preset:<8} {name:<13} {r['batch_size']:>5} {r['step_ms']:>9.1f} {r['step_iqr_ms']:>7.1f} "
                f"{r['samples_per_s']:>10.1f} {r['gflop_per_step']:>11.2f} {r['achieved_gflops']:>8.1f} "
                f"{r['matmul_peak_gflops']:>6.1f} {r['fraction_of_peak']:>8.1%} {r['active_params']:>14,}"
            )
        how = "side by side" if entry["side_by_side"] else "one after the other"
        lines.append(
            f"{preset:<8} mode / dense_active ({how}): samples/s {entry['mode_over_dense_samples_per_s']:.3f}, "
            f"fraction of peak {entry['mode_over_dense_fraction_of_peak']:.3f}"
        )
    lines.append("\npeak: the 1024^3 fp32 matmul probe, median of the rounds interleaved with each variant's steps")
    return "\n".join(lines)
