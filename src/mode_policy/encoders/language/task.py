"""A learned embedding per known instruction (trains with the policy)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ...errors import ConfigError, DataError
from .base import LanguageEncoder, _as_text_list, _unique

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
