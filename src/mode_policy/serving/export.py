"""Export the cached sampler as one stand-alone artefact (``mode-policy export``).

The artefact is the whole eval path of a chunk for a fixed batch size and
step count: state normalisation, the condition encoders, every sampling step
with that step's fused experts (the expert cache, see
:mod:`mode_policy.model.expert_cache`) and the un-normalisation of the actions.
The sampler's loop is unrolled at export time (the plan's step constants are
host floats), so the graph has no control flow. Where the lean sampler runs the
plan, the network is its folded form (:mod:`mode_policy.model.folded_sampler`: each
step's experts as one SwiGLU with constant 2-D weights, which ONNX Runtime
pre-packs); other configurations export the module path.

Inputs (all float32): ``observation.state`` (B, n_obs, S) in the robot's units
(when the policy has a state), ``goal`` (B, goal_dim) and ``noise`` (B, H, A),
a standard-normal draw. Output: ``action`` (B, H, A) in the original units.

Formats: ``onnx`` (runs with ONNX Runtime alone) and ``torch_export`` (a
``torch.export`` program, ``torch.export.load(path).module()(...)``). Next to
the artefact, ``<name>.json`` describes the inputs and, for known
instructions, their goal vectors, so a robot without this library can build
the ``goal`` input from an instruction.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..constants import ACTION_KEY, GOAL_KEY, STATE_KEY
from ..errors import ConfigError
from ..fileio import Outputs, atomic_write, atomic_write_json
from ..model.diffusion import SamplingSettings
from ..model.edm import NoiseLevel
from ..model.folded_sampler import FoldedSampler
from ..model.moe import FusedExperts, MoELayer
from ..model.normalize import DATASET_KEY
from ..policy import MoDEPolicy

FORMATS = ("onnx", "torch_export")
NOISE_NAME = "noise"
ONNX_OPSET = 23
"""Opset of the ONNX artefact: from 23 each RMSNorm is one RMSNormalization node, not six
(ONNX Runtime >= 1.23 runs it; `bench latency` times the artefact)."""
LEGACY_ONNX_OPSET = 18
"""The opset when the installed onnx or onnxruntime predates :data:`ONNX_OPSET`."""


class CachedSampler(nn.Module):
    """``(state, goal, noise) -> actions``: the policy's cached ``predict_action_chunk``
    with the initial noise as an input (eval mode, expert cache on), sampling with ``sampling``
    (None: the config's settings). A policy trained on a mixture is exported for one of its
    datasets (``dataset``): that dataset's normalisation, state width in and action width out
    (the noise keeps the policy's full action width)."""

    def __init__(self, policy: MoDEPolicy, dataset: str = "", sampling: SamplingSettings | None = None) -> None:
        super().__init__()
        cfg = policy.config
        if cfg.image_keys:
            raise ConfigError(f"export supports state-only policies; this one has cameras {list(cfg.image_keys)}")
        if cfg.routing == "token":
            raise ConfigError(
                "export runs the expert cache, which token routing has not (its experts depend on "
                "the data): use routing=noise (MoDE) or dense"
            )
        if cfg.architecture != "mode":
            raise ConfigError(
                f"export supports architecture='mode' only (its exported sampler is that network's), not {cfg.architecture!r}"
            )
        self.dataset = export_dataset(policy, dataset)
        self.policy = policy.eval()
        self.policy.denoiser.use_expert_cache = True
        self.sampling_config = cfg if sampling is None else sampling.resolve(cfg)  # steps, schedule, sigma_max
        self.plan = policy.denoiser.sampling_plan(sampling)  # built now: export cannot fingerprint weights
        # The samplers read the schedule as host floats (``tolist``); under export's fake
        # tensors that read would be data-dependent, so they get a numpy copy (same values).
        self.sigmas = self.plan.sigmas.numpy()
        self.has_state = cfg.state_dim > 0
        self.train(False)
        # Where the lean sampler runs this plan, the graph is its folded form (fewer operations,
        # constant 2-D weights); otherwise the module path, with per step phi and each layer's
        # (bank slice, fused experts, mixing weights), cloned so every constant owns its storage.
        self.folded = FoldedSampler(self.plan.lean) if self.plan.lean is not None else None
        layers = policy.denoiser.net.moe_layers()
        self.steps = (
            []
            if self.folded is not None
            else [
                (
                    level.noise_emb.clone(),
                    [(_bank_slice(f, layer), f, f.mix.clone()) for f, layer in zip(level.fused or (), layers)],
                )
                for level in self.plan.levels
            ]
        )

    def _level(self, j: int) -> NoiseLevel:
        """Plan level ``j`` with its fused experts sliced from the expert banks inside the
        graph, so the artefact holds each expert weight once (not once per step)."""
        noise_emb, per_layer = self.steps[j]
        fused = []
        for (sl, f, mix), layer in zip(per_layer, self.policy.denoiser.net.moe_layers()):
            bank = layer.experts
            fused.append(FusedExperts(f.w13, f.w2, mix) if sl is None else FusedExperts(bank.w13[sl], bank.w2[sl], mix))
        return dataclasses.replace(self.plan.levels[j], noise_emb=noise_emb, fused=fused or None)

    def forward(self, *inputs: Tensor) -> Tensor:
        """inputs: [state (B, n_obs, S),] goal (B, goal_dim), noise (B, H, A) -> actions (B, H, A)."""
        if self.has_state:
            state, goal, noise = inputs
            batch = {STATE_KEY: state, GOAL_KEY: goal}
        else:
            goal, noise = inputs
            batch = {GOAL_KEY: goal}
        if self.dataset:
            batch[DATASET_KEY] = self.dataset
        # MoDEPolicy.predict_action_chunk / EDMDenoiser.sample, with the plan fixed
        policy = self.policy
        cond = policy.encode_condition(batch)  # (B, n, d)
        x = noise * self.sampling_config.sigma_max
        if self.folded is not None:
            x = self.folded(cond, x, self.plan.sampler, self.sigmas)
        else:
            x = self.plan.sampler.run(lambda x, j: policy.denoiser(x, self._level(j), cond)[0], x, self.sigmas)
        if self.dataset:
            return policy.dataset_normalizers.unnormalize_action(x.clamp(-1.0, 1.0), self.dataset)
        return policy.normalizer.unnormalize_action(x.clamp(-1.0, 1.0))


def export_dataset(policy: MoDEPolicy, dataset: str = "") -> str:
    """The dataset an export of ``policy`` is for: ``dataset`` for a mixture policy (default:
    its only one), "" for a single-dataset policy; ConfigError naming the choices otherwise."""
    names = policy.dataset_names
    if not names:
        if dataset:
            raise ConfigError(f"dataset_name={dataset!r}: this policy was trained on one dataset; leave it out")
        return ""
    if not dataset and len(names) == 1:
        return names[0]
    if dataset not in names:
        given = f"dataset_name={dataset!r} is not one of its datasets" if dataset else "no dataset_name given"
        raise ConfigError(
            f"this policy was trained on a mixture of {names} ({given}): the exported sampler "
            "has one normalisation, so name the dataset to export it for (--dataset_name)"
        )
    return dataset


def _widths(policy: MoDEPolicy, dataset: str) -> tuple[int, int]:
    """(state_dim, action_dim) of the exported sampler's state input and action output."""
    if not dataset:
        return policy.config.state_dim, policy.config.action_dim
    member = policy.dataset_normalizers.member(dataset)
    return member.state_mean.numel(), member.action_min.numel()


def _bank_slice(fused: FusedExperts, layer: MoELayer) -> slice | None:
    """The slice of ``layer``'s expert bank that ``fused`` views (None for a copy, k >= 3)."""
    bank = layer.experts.w13
    if fused.w13.untyped_storage().data_ptr() != bank.untyped_storage().data_ptr():
        return None
    start, step = divmod(fused.w13.storage_offset() - bank.storage_offset(), bank.stride(0))[0], 1
    if fused.w13.shape[0] > 1:
        step = fused.w13.stride(0) // bank.stride(0)
    return slice(start, start + step * (fused.w13.shape[0] - 1) + 1, step)


def input_shapes(policy: MoDEPolicy, batch_size: int, dataset: str = "") -> dict[str, list[int]]:
    """Name -> fixed shape of each input of the exported sampler (for ``dataset`` of a mixture
    policy: its state width), in call order."""
    cfg = policy.config
    shapes: dict[str, list[int]] = {}
    if cfg.state_dim > 0:
        shapes[STATE_KEY] = [batch_size, cfg.n_obs_steps, _widths(policy, dataset)[0]]
    shapes[GOAL_KEY] = [batch_size, cfg.goal_dim]
    shapes[NOISE_NAME] = [batch_size, cfg.horizon, cfg.action_dim]
    return shapes


def example_inputs(policy: MoDEPolicy, batch_size: int, seed: int = 0, dataset: str = "") -> dict[str, Tensor]:
    """Random float32 inputs of the exported shapes (for tracing and parity checks)."""
    gen = torch.Generator().manual_seed(seed)
    shapes = input_shapes(policy, batch_size, dataset)
    return {name: torch.randn(*shape, generator=gen) for name, shape in shapes.items()}


def known_goals(policy: MoDEPolicy, tasks: Sequence[str] = ()) -> dict[str, list[float]]:
    """Goal vectors of ``tasks`` and of a learned task encoder's own instructions."""
    encoder = policy.goal_encoder
    if encoder is None:
        if tasks:
            raise ConfigError("--tasks needs a policy with a goal encoder (this one takes goal vectors)")
        return {}
    names = list(dict.fromkeys([*getattr(encoder, "tasks", []), *tasks]))
    if not names:
        return {}
    with torch.no_grad():
        vectors = encoder(names)  # (n, goal_dim)
    return {name: [float(v) for v in row] for name, row in zip(names, vectors.float().cpu())}


def onnx_opset() -> int:
    """:data:`ONNX_OPSET` where the installed onnx (and onnxruntime, if any) support it, else the legacy opset."""
    import onnx

    if onnx.defs.onnx_opset_version() < ONNX_OPSET:
        return LEGACY_ONNX_OPSET
    try:
        import onnxruntime
    except ImportError:
        return ONNX_OPSET
    major, minor = (int(v) for v in onnxruntime.__version__.split(".")[:2])
    return ONNX_OPSET if (major, minor) >= (1, 23) else LEGACY_ONNX_OPSET


def is_description(path: Path) -> bool:
    """Whether ``path`` is the ``.json`` description an export wrote beside its artefact."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(data, dict) and data.get("format") in FORMATS and {"inputs", "outputs"} <= set(data)


def is_artefact(path: Path) -> bool:
    """Whether ``path`` is an artefact an export wrote (its description lies beside it)."""
    return path.suffix in (".onnx", ".pt2") and is_description(path.with_suffix(".json"))


def plan_export(
    path: str | Path,
    overwrite: bool = False,
    inputs: Sequence[str | Path] = (),
    default: bool = False,
    size: int | None = None,
) -> Path:
    """Check, before any work, that an export can write ``path`` and its description beside it
    (:class:`~mode_policy.fileio.Outputs`): writable, not a folder, not one of ``inputs``, room for
    ``size`` bytes; an existing file only with ``overwrite``, or at the command's ``default``
    location when an earlier export wrote it; the description replaces only an earlier description."""
    outputs = Outputs(overwrite, inputs)
    path = outputs.file(path, what="the exported sampler", size=size, own=is_artefact, default=default)
    outputs.file(
        path.with_suffix(".json"),
        what="the export's description",
        own=is_description,
        default=default,
        sidecar_of=path,
    )
    return path


def export_sampler(
    policy: MoDEPolicy,
    path: str | Path,
    fmt: str = "onnx",
    batch_size: int = 1,
    tasks: Sequence[str] = (),
    opset: int | None = None,
    dataset: str = "",
    sampling: SamplingSettings | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the cached sampler of ``policy`` (moved to the CPU) for ``batch_size`` to ``path``
    (atomically), and its description to ``path`` with suffix ``.json``. Returns ``path``.
    ``opset``: the ONNX opset (default :func:`onnx_opset`); ``dataset``: for a mixture policy,
    the dataset whose normalisation and widths the sampler uses (:func:`export_dataset`);
    ``sampling``: sampling settings other than the config's (e.g. fewer steps). Both paths are
    checked first (:func:`plan_export`): an existing file is replaced only with ``overwrite``, and
    the description only replaces an earlier one."""
    if fmt not in FORMATS:
        raise ConfigError(f"format={fmt!r}: expected one of {FORMATS}")
    if batch_size < 1:
        raise ConfigError(f"batch_size={batch_size} must be >= 1")
    path = plan_export(path, overwrite)
    goals = known_goals(policy, tasks)
    sampler = CachedSampler(policy.cpu(), dataset, sampling)
    dataset = sampler.dataset
    inputs = example_inputs(policy, batch_size, dataset=dataset)
    args = tuple(inputs.values())
    if fmt == "onnx":
        opset = opset or onnx_opset()
        # optimize=False: ONNX Runtime optimises the graph when it loads it; onnxscript's
        # optimiser takes minutes here and moves the outputs away from eager's.
        program = torch.onnx.export(
            sampler,
            args,
            dynamo=True,
            input_names=list(inputs),
            output_names=[ACTION_KEY],
            opset_version=opset,
            optimize=False,
            verbose=False,
        )
        atomic_write(path, lambda tmp: program.save(tmp, external_data=False))
    else:
        program = torch.export.export(sampler, args, strict=False)
        atomic_write(path, lambda tmp: torch.export.save(program, tmp))
    cfg = policy.config
    atomic_write_json(
        path.with_suffix(".json"),
        {
            "format": fmt,
            **({"onnx_opset": opset} if fmt == "onnx" else {}),
            "inputs": input_shapes(policy, batch_size, dataset),
            "outputs": {ACTION_KEY: [batch_size, cfg.horizon, _widths(policy, dataset)[1]]},
            **({"dataset": dataset} if dataset else {}),
            "dtype": "float32",
            "noise": "standard normal (the sampler scales it by sigma_max)",
            "sampler": sampler.sampling_config.sampler,
            "schedule": sampler.sampling_config.schedule,
            "num_inference_steps": sampler.sampling_config.num_inference_steps,
            "n_action_steps": cfg.n_action_steps,
            "goals": goals,
        },
    )
    return path


class OrtChunk:
    """An exported ONNX sampler behind the policy's ``predict_action_chunk`` call
    (for side-by-side benchmarks and parity checks); ``threads`` 0 = ONNX Runtime's choice."""

    def __init__(self, path: str | Path, threads: int = 0) -> None:
        self._model = Path(path).read_bytes()  # kept: the file may be temporary; set_threads rebuilds from it
        self.set_threads(threads)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.noise_shape = next(i.shape for i in self.session.get_inputs() if i.name == NOISE_NAME)

    def set_threads(self, threads: int) -> None:
        """(Re)start the session on ``threads`` intra-op threads (0: ONNX Runtime's choice): its
        thread pool is fixed when it starts."""
        try:
            import onnxruntime as ort
        except ImportError:
            raise ConfigError("onnxruntime is not installed (pip install onnxruntime)") from None
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only: un-foldable CastLike nodes are harmless
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(self._model, options, providers=["CPUExecutionProvider"])
        self.threads = threads

    def predict_action_chunk(self, batch: dict[str, Any], noise: Tensor | None = None) -> Tensor:
        if noise is None:
            noise = torch.randn(*self.noise_shape)
        feeds = {name: _as_numpy(batch[name]) for name in self.input_names if name != NOISE_NAME}
        feeds[NOISE_NAME] = _as_numpy(noise)
        if STATE_KEY in feeds and feeds[STATE_KEY].ndim == 2:
            feeds[STATE_KEY] = feeds[STATE_KEY][:, None]  # (B, S) -> (B, 1, S)
        return torch.from_numpy(self.session.run([ACTION_KEY], feeds)[0])


def _as_numpy(value: Any):
    return value.detach().float().cpu().numpy() if isinstance(value, Tensor) else value


def onnx_runtime_available() -> bool:
    """Whether this environment can export to ONNX (onnxscript) and run it (onnxruntime)."""
    import importlib.util

    return all(importlib.util.find_spec(name) is not None for name in ("onnxruntime", "onnxscript", "onnx"))
