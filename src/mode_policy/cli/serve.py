"""Sub-commands that put a trained policy on a robot: serve (websocket server) and export (ONNX / torch.export)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from ..training.run_dir import RunDir
from .main import Command


def _load_policy(path: str, device: str = "cpu"):
    from ..policy import MoDEPolicy

    if not path:
        raise ConfigError("give a run directory or a saved model directory as the first argument")
    return MoDEPolicy.from_pretrained(RunDir.model_dir(path), map_location=device)


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
    import torch

    from ..serving import PolicyServer, run_server
    from ..threads import choose_threads, make_governor

    threads = choose_threads(opts.threads)  # for the forwards, which run on the model thread
    # This thread only loads (and exports): on one torch thread, before any torch work. Once it has
    # run a parallel region on two threads, two-thread forwards on the model thread take ~4x as long
    # (measured: 50 ms against 12 ms a cpu-preset chunk), their OpenMP team beside this thread's.
    torch.set_num_threads(1)
    if opts.max_batch < 1 or opts.batch_window_ms < 0:
        raise ConfigError(f"max_batch={opts.max_batch} must be >= 1 and batch_window_ms={opts.batch_window_ms} >= 0")
    if opts.backend not in ("torch", "onnx"):
        raise ConfigError(f"backend={opts.backend!r}: expected 'torch' or 'onnx'")
    from ..dataset_view import for_dataset

    policy = _load_policy(opts.path, opts.device)
    served = for_dataset(policy, opts.dataset_name)  # ConfigError naming the datasets when one must be chosen
    single_row = _onnx_single_row(policy, threads, opts.dataset_name) if opts.backend == "onnx" else None
    governor = None
    if opts.device == "cpu":
        governor = make_governor(opts.threads, threads, set_threads=thread_setter(single_row))
    server = PolicyServer(
        served,
        opts.host,
        opts.port,
        opts.batch_window_ms,
        opts.max_batch,
        single_row=single_row,
        threads=threads,
        governor=governor,
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


def thread_setter(single_row=None):
    """What the server's thread governor calls, on the model thread between forwards, with a new
    count: torch's, and a new ONNX Runtime session for ``single_row`` (its pool is fixed per session)."""
    import torch

    def set_threads(n: int) -> None:
        torch.set_num_threads(n)
        if single_row is not None:
            single_row.set_threads(n)

    return set_threads


def _onnx_single_row(policy, threads: int, dataset: str = ""):
    """The policy's cached sampler exported for batch 1 (to a temporary file) in an ONNX Runtime
    session; for a mixture policy, for ``dataset``."""
    import tempfile

    from ..serving.export import OrtChunk, export_sampler, onnx_runtime_available

    if not onnx_runtime_available():
        raise ConfigError("backend=onnx needs onnxruntime, onnx and onnxscript: pip install -e '.[onnx]'")
    if next(policy.parameters()).device.type != "cpu":
        raise ConfigError("backend=onnx runs on the CPU: use --device cpu")
    print("exporting the cached sampler for batch 1 to ONNX...", flush=True)
    with tempfile.TemporaryDirectory(prefix="mode-policy-serve-") as tmp:  # the session keeps the graph
        path = export_sampler(policy, Path(tmp) / "sampler_b1.onnx", "onnx", batch_size=1, dataset=dataset)
        return OrtChunk(path, threads=threads)


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


def run_export(opts: ExportOptions) -> int:
    from ..serving.export import export_sampler

    if opts.steps < 0:
        raise ConfigError(f"steps={opts.steps} must be >= 1 (or 0 for the policy's own)")
    policy = _load_policy(opts.path)
    if opts.steps:
        policy.config.num_inference_steps = opts.steps
    suffix = {"onnx": ".onnx", "torch_export": ".pt2"}.get(opts.format)
    if suffix is None:
        raise ConfigError(f"format={opts.format!r}: expected 'onnx' or 'torch_export'")
    steps = policy.config.num_inference_steps
    name = f"sampler_b{opts.batch_size}_s{steps}{'_' + opts.dataset_name if opts.dataset_name else ''}{suffix}"
    out = Path(opts.out) if opts.out else RunDir.model_dir(opts.path) / "export" / name
    tasks = [t.strip() for t in opts.tasks.split(",") if t.strip()]
    export_sampler(policy, out, opts.format, opts.batch_size, tasks, dataset=opts.dataset_name)
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
