"""CLIP text encoder (the paper's), loaded from a local folder or a connected hub cache."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..resnet import WeightsNotFoundError
from .base import CachedLanguageEncoder, MissingPackageError, _as_text_list, _shared_model

#: Hub name of the CLIP model the paper uses. Only a name: it is never fetched
#: unless the user passes ``allow_download=True``.
DEFAULT_CLIP = "openai/clip-vit-base-patch32"
DEFAULT_CLIP_DIM = 512
"""Width of :data:`DEFAULT_CLIP`'s text embeddings (its ``projection_dim``), known without loading it."""

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

    def available(self) -> bool:
        """Whether the model can be loaded without a download: a local folder, or a Hub name in the
        local Hugging Face cache (or a download is allowed). Reads no weights."""
        return self.allow_download or (Path(self.path) / "config.json").is_file() or _in_hf_cache(self.path)

    def _check_source(self) -> None:
        if not self.available():
            if Path(self.path).is_dir():
                why = "the folder holds no config.json (not a saved CLIP model)"
            elif _looks_like_hub_name(self.path):
                why = f"not in the Hugging Face cache ({_hf_cache_dir()})"
            else:
                why = "no such folder"
            raise self._missing(why)

    def _missing(self, why: str) -> WeightsNotFoundError:
        """The one-line error for a CLIP model that cannot be loaded, saying where to put it."""
        fetch = f"fetch it (huggingface-cli download {self.path}), or " if _looks_like_hub_name(self.path) else ""
        return WeightsNotFoundError(
            f"CLIP text model {self.path!r}: {why}. Text goals need it: {fetch}save CLIPTextModelWithProjection "
            "and its tokenizer (save_pretrained) to a folder and name it with --language_path=DIR, or allow a Hub "
            "download with --language_download=true (a model folder: goal_encoder 'path' / 'allow_download' in "
            "its config.json; Python: the encoder's 'path' and 'allow_download'). Goal vectors ('goal') need no CLIP"
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
        transformers = _transformers()
        local_only = not self.allow_download
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(self.path, local_files_only=local_only)
            model = transformers.CLIPTextModelWithProjection.from_pretrained(
                self.path, local_files_only=local_only, dtype=torch.float32
            )
        except (OSError, ValueError) as err:  # a folder or cache entry without (all of) the model's files
            raise self._missing(f"it cannot be loaded ({_one_line(err)})") from None
        return tokenizer, model.to("cpu").eval().requires_grad_(False)

    @property
    def dim(self) -> int:
        if self._dim is None:
            if self._model is None:
                self._check_source()
                try:
                    cfg = _transformers().CLIPTextConfig.from_pretrained(
                        self.path, local_files_only=not self.allow_download
                    )
                except (OSError, ValueError) as err:  # no config.json there, or not a CLIP config
                    raise self._missing(f"its config cannot be read ({_one_line(err)})") from None
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


def _transformers() -> Any:
    """The ``transformers`` module; MissingPackageError naming the extra that installs it."""
    try:
        import transformers
    except ImportError:
        raise MissingPackageError(
            "the CLIP goal encoder needs 'transformers': pip install 'mode-policy[clip]'"
        ) from None
    return transformers


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())[:300]


def _looks_like_hub_name(name: str) -> bool:
    """``owner/name`` and not a path (``./x``, ``/x``, ``~/x``, an existing folder)."""
    return name.count("/") == 1 and not name.startswith((".", "/", "~")) and not Path(name).exists()


def _hf_cache_dir() -> str:
    """Where the Hugging Face cache lives on this machine (``HF_HUB_CACHE`` / ``HF_HOME``)."""
    try:
        from huggingface_hub import constants
    except ImportError:
        return "~/.cache/huggingface/hub"
    return str(constants.HF_HUB_CACHE)


def _in_hf_cache(name: str) -> bool:
    """Whether a Hub repo's config is in the local cache (no network)."""
    if not _looks_like_hub_name(name):
        return False
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    found = try_to_load_from_cache(name, "config.json")
    return isinstance(found, str)
