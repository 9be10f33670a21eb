"""Sub-commands that put a trained policy on a robot: serve (websocket server) and export (ONNX / torch.export)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from ..training.run_dir import RunDir
from .command import Command


# --------------------------------------------------------------------- serve
@dataclass
class ServeOptions:
    """Serve a policy over a websocket (msgpack messages with numpy arrays)."""

    path: str = ""
    """A run directory or a saved model directory (first positional argument)."""
    host: str = "127.0.0.1"
    """Address to listen on (0.0.0.0: every interface)."""
    port: int = 8000
    """Port to listen on (0: an ephemeral port, printed at start)."""
    batch_window_ms: float = 2.0
    """How long the first waiting request waits for others to share its forward."""
    max_batch: int = 64
    """Most observation rows in one forward (and in one request)."""
    device: str = "cpu"
    """Device of the policy: 'cpu', 'cuda', 'cuda:1', ..."""
    threads: int = 0
    """Torch threads for the forward (0: the cores other processes leave free, or OMP_NUM_THREADS when set)."""
    backend: str = "torch"
    """'torch', or 'onnx': one-row forwards run the cached sampler exported for batch 1 on ONNX Runtime
    (the fastest CPU path; needs the onnx extra, a state-only policy and device cpu; exported at start)."""
    dataset_name: str = ""
    """A policy trained on a mixture: the dataset whose normalisation, state and action widths to serve."""


def run_serve(opts: ServeOptions) -> int:
    from ..serving import PolicyServer, run_server

    server = PolicyServer.from_path(
        opts.path,
        backend=opts.backend,
        threads=opts.threads,
        device=opts.device,
        dataset=opts.dataset_name,
        host=opts.host,
        port=opts.port,
        batch_window_ms=opts.batch_window_ms,
        max_batch=opts.max_batch,
        progress=lambda line: print(line, flush=True),
    )

    def ready(port: int) -> None:
        dataset = f" (dataset {opts.dataset_name})" if opts.dataset_name else ""
        print(
            f"serving {opts.path}{dataset} on ws://{opts.host}:{port} (health: http://{opts.host}:{port}/healthz)",
            flush=True,
        )

    run_server(server, ready)
    print(f"stopped after {server.counts['requests']} requests ({server.counts['errors']} errors)", flush=True)
    return 0


# -------------------------------------------------------------------- export
@dataclass
class ExportOptions:
    """Export the cached sampler (normalisation and fused experts inside) for a fixed batch size."""

    path: str = ""
    """A run directory or a saved model directory (first positional argument)."""
    format: str = "onnx"
    """'onnx' (runs with ONNX Runtime alone) or 'torch_export' (a torch.export program, .pt2)."""
    out: str = ""
    """File to write (default: MODEL_DIR/export/sampler_b{batch_size}_s{steps}[_{dataset_name}].onnx or .pt2)."""
    batch_size: int = 1
    """The artefact's fixed batch size."""
    steps: int = 0
    """Sampling steps (0: the policy's num_inference_steps)."""
    tasks: str = ""
    """Comma-separated instructions whose goal vectors go into the artefact's .json description."""
    dataset_name: str = ""
    """A policy trained on a mixture: the dataset whose normalisation, state and action widths the artefact uses."""
    overwrite: bool = False
    """Replace an existing file at ``out`` (and an earlier export's description beside it; never
    another file, nor the model the export reads)."""


def run_export(opts: ExportOptions) -> int:
    from ..model.diffusion import SamplingSettings
    from ..serving.backends import load_policy
    from ..serving.export import export_sampler, plan_export

    if opts.steps < 0:
        raise ConfigError(f"steps={opts.steps} must be >= 1 (or 0 for the policy's own)")
    if opts.batch_size < 1:
        raise ConfigError(f"batch_size={opts.batch_size} must be >= 1")
    suffix = {"onnx": ".onnx", "torch_export": ".pt2"}.get(opts.format)
    if suffix is None:
        raise ConfigError(f"format={opts.format!r}: expected 'onnx' or 'torch_export'")
    model_dir = RunDir.model_dir(opts.path)
    weights = model_dir / "model.safetensors"
    size = weights.stat().st_size if weights.is_file() else None  # the artefact holds every weight once
    if opts.out:  # checked before loading: the user's path is known now
        plan_export(opts.out, opts.overwrite, RunDir.model_files(model_dir), size=size)
    policy = load_policy(opts.path)
    sampling = SamplingSettings(num_inference_steps=opts.steps) if opts.steps else None
    steps = opts.steps or policy.config.num_inference_steps
    name = f"sampler_b{opts.batch_size}_s{steps}{'_' + opts.dataset_name if opts.dataset_name else ''}{suffix}"
    out = Path(opts.out) if opts.out else model_dir / "export" / name
    plan_export(out, opts.overwrite, RunDir.model_files(model_dir), default=not opts.out, size=size)
    tasks = [t.strip() for t in opts.tasks.split(",") if t.strip()]
    export_sampler(
        policy, out, opts.format, opts.batch_size, tasks, dataset=opts.dataset_name, sampling=sampling, overwrite=True
    )
    print(f"wrote {out} and {out.with_suffix('.json')}")
    return 0


COMMANDS = {
    "serve": Command(
        ServeOptions, run_serve, "serve a policy over a websocket (msgpack, numpy arrays)", positional=("path",)
    ),
    "export": Command(
        ExportOptions, run_export, "export the cached sampler as ONNX or a torch.export program", positional=("path",)
    ),
}
