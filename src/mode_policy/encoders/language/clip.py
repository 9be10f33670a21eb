"""CLIP text encoder (the paper's), loaded from a local folder or a connected hub cache."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..resnet import WeightsNotFoundError
from .base import CachedLanguageEncoder, _as_text_list, _shared_model

#: Hub name of the CLIP model the paper uses. Only a name: it is never fetched
#: unless the user passes ``allow_download=True``.
DEFAULT_CLIP = "openai/clip-vit-base-patch32"

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
                f"CLIP model {self.path!r} is not a local directory and is not in the Hugging Face cache: "
                "point it at a folder with the model and tokenizer (save_pretrained output) with "
                "--language_path=DIR, or allow a Hub download with --language_download=true "
                "(Python: the encoder's 'path' and 'allow_download')"
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
        model = CLIPTextModelWithProjection.from_pretrained(self.path, local_files_only=local_only, dtype=torch.float32)
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
                    texts[i : i + self.batch_size],
                    padding=True,
                    truncation=True,
                    max_length=max_len,
                    return_tensors="pt",
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
