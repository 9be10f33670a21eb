"""Where the server's forwards run, and on how many threads.

* :class:`TorchBackend`: every forward on the policy (``predict_action_chunk``);
* :class:`OnnxBackend`: forwards of one row (a robot's usual request) on the policy's cached
  sampler exported for batch 1 and run by ONNX Runtime (:class:`~mode_policy.serving.export.OrtChunk`,
  the fastest CPU path), larger ones and real-time chunking (guided) ones on the policy.

Threads: the forwards run on the server's model thread at the count chosen at start
(:func:`~mode_policy.threads.choose_threads`); a :class:`~mode_policy.threads.ThreadGovernor`
stepped there after each forward follows neighbours that start or stop later, through the
backend's :meth:`~TorchBackend.set_threads` (ONNX Runtime fixes a session's pool when it starts,
so the ONNX backend starts a new session).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..constants import GOAL_KEY, TASK_KEY
from ..dataset_view import DatasetPolicy
from ..errors import ConfigError
from ..policy import MoDEPolicy
from ..training.run_dir import RunDir
from .export import OrtChunk, export_sampler, onnx_runtime_available

BACKENDS = ("torch", "onnx")

Progress = Callable[[str], None]
"""Told one line before each slow step (the ONNX export)."""


def load_policy(path: str | Path, device: str = "cpu") -> MoDEPolicy:
    """The policy saved in ``path``: a run directory or a saved model directory (eval mode)."""
    if not str(path):
        raise ConfigError("give a run directory or a saved model directory as the first argument")
    return MoDEPolicy.from_pretrained(RunDir.model_dir(str(path)), map_location=device)


class TorchBackend:
    """Every forward on ``policy`` (a policy, or one dataset's view of a mixture policy)."""

    name = "torch"

    def __init__(self, policy: MoDEPolicy | DatasetPolicy) -> None:
        self.policy = policy

    def predict(self, batch: dict[str, Any], rows: int, **guided: Any) -> np.ndarray:
        """A stacked batch of ``rows`` rows (tensors on the policy's device, ``task`` strings) ->
        actions (rows, H, A) float32, on the model thread; ``guided``: a real-time chunking
        request's ``prefix`` and ``delay`` (see ``MoDEPolicy.predict_action_chunk``)."""
        return self.policy.predict_action_chunk(batch, **guided).float().cpu().numpy()

    def set_threads(self, threads: int) -> None:
        """Run later forwards on ``threads`` threads (called on the model thread, between forwards)."""
        torch.set_num_threads(threads)


class OnnxBackend(TorchBackend):
    """One-row forwards on ``chunk`` (the policy's cached sampler for batch 1 in ONNX Runtime),
    larger ones on the policy."""

    name = "onnx (one-row forwards), torch (larger)"

    def __init__(self, policy: MoDEPolicy | DatasetPolicy, chunk: OrtChunk) -> None:
        super().__init__(policy)
        self.chunk = chunk

    @classmethod
    def export(
        cls, policy: MoDEPolicy | DatasetPolicy, threads: int = 0, progress: Progress | None = None
    ) -> OnnxBackend:
        """Export ``policy``'s cached sampler for batch 1 (to a temporary file; for a dataset view,
        for its dataset) into a session on ``threads`` threads (0: ONNX Runtime's choice)."""
        base, dataset = (policy.policy, policy.dataset) if isinstance(policy, DatasetPolicy) else (policy, "")
        if not onnx_runtime_available():
            raise ConfigError("backend=onnx needs onnxruntime, onnx and onnxscript: pip install -e '.[onnx]'")
        if next(base.parameters()).device.type != "cpu":
            raise ConfigError("backend=onnx runs on the CPU: use --device cpu")
        if progress is not None:
            progress("exporting the cached sampler for batch 1 to ONNX...")
        with tempfile.TemporaryDirectory(prefix="mode-policy-serve-") as tmp:  # the session keeps the graph
            path = export_sampler(base, Path(tmp) / "sampler_b1.onnx", "onnx", batch_size=1, dataset=dataset)
            return cls(policy, OrtChunk(path, threads=threads))

    def predict(self, batch: dict[str, Any], rows: int, **guided: Any) -> np.ndarray:
        if rows != 1 or guided:  # the exported graph samples unguided: guided chunks run on the policy
            return super().predict(batch, rows, **guided)
        noise = torch.randn(*self.chunk.noise_shape)  # as predict_action_chunk draws it: the policy's width
        inputs = {key: value for key, value in batch.items() if key != TASK_KEY}
        inputs[GOAL_KEY] = self.policy.goal_vector(batch)  # (1, goal_dim): the graph takes goal vectors
        return self.chunk.predict_action_chunk(inputs, noise).numpy()

    def set_threads(self, threads: int) -> None:
        """torch's count, and a new ONNX Runtime session on ``threads`` (its pool is fixed per session)."""
        super().set_threads(threads)
        self.chunk.set_threads(threads)


def make_backend(
    name: str, policy: MoDEPolicy | DatasetPolicy, threads: int = 0, progress: Progress | None = None
) -> TorchBackend:
    """The backend called ``name`` ('torch' or 'onnx', see :data:`BACKENDS`) for ``policy``."""
    if name == "torch":
        return TorchBackend(policy)
    if name == "onnx":
        return OnnxBackend.export(policy, threads, progress)
    raise ConfigError(f"backend={name!r}: expected 'torch' or 'onnx'")
