"""The language-encoder interface and the per-instruction cache of the frozen encoders."""

from __future__ import annotations

import copy
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from ...errors import ConfigError
from ..resnet import WeightsNotFoundError


class MissingPackageError(ConfigError, ImportError):
    """The configured encoder needs an optional package that is not installed."""


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

    def known_dim(self) -> int | None:
        """``dim``, or None when the encoder's model files are not on this machine (or its package
        is missing): a policy still loads and takes goal vectors; text goals then raise the error."""
        try:
            return self.dim
        except (WeightsNotFoundError, MissingPackageError):
            return None

    @property
    @abstractmethod
    def device(self) -> torch.device:
        """Where returned tensors land."""

    @abstractmethod
    def to(self, device: str | torch.device) -> LanguageEncoder:
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

    def to(self, device: str | torch.device) -> CachedLanguageEncoder:
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

    def precompute(self, texts: Iterable[str] | None = None) -> CachedLanguageEncoder:
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
            raise RuntimeError(
                f"{type(self).__name__}.encode returned shape {tuple(new.shape)} for {len(missing)} texts"
            )
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

    def __deepcopy__(self, memo: dict) -> CachedLanguageEncoder:
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


def _set_offline_env() -> None:
    # Set before sentence_transformers / transformers / huggingface_hub are
    # imported; huggingface_hub reads them once, at import.
    for var in _OFFLINE_ENV:
        os.environ.setdefault(var, "1")
