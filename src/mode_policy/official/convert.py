"""Official MoDE checkpoint -> this library's model folder (``config.json`` + ``model.safetensors``).

Reads the released weights (``model_cleaned.safetensors`` of ``mbreuss/MoDE_Pretrained``, or
a folder holding it) and, only when the user allows it, pickle-based files (a ``.pt`` state
dict, a Lightning ``.ckpt`` with ``state_dict``). The tensors use the official ``MoDEAgent``
names: ``model.inner_model.*`` (the transformer), ``static_resnet.*`` and
``gripper_resnet.*`` (the cameras); the prefixes of the authors' pretraining code that the
official loader renames (``img_encoder_image_primary.`` / ``_secondary.`` -> static,
``img_encoder_image_wrist.`` -> gripper, ``net.`` -> the gripper trunk) are renamed the same
way. The language model (frozen CLIP ViT-B/32) is not converted: the folder's config names it
when asked (``goal_encoder``); by default goals are vectors and the folder loads offline.

A denoiser-only checkpoint (``model.inner_model.*`` and no camera encoder, e.g. what
``GCDenoiser.state_dict()`` holds) converts into a policy that takes the cameras' pooled
features instead of images (``MoDEConfig.image_features``): their width is the input width of the
official ``tok_emb``, read from the file; the cameras are named by ``camera_names`` (default the
official two, static and gripper). ``image_features=True`` does the same with a full checkpoint,
leaving its camera encoders out.

Every official tensor is either mapped, or ignored for a stated reason (language-model
weights; an alias the official loader overwrites); any other tensor, a missing one, or a
shape that does not fit raises :class:`~mode_policy.errors.CheckpointError` naming it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..encoders.resnet import RESNET_LAYOUTS
from ..errors import CheckpointError, ConfigError
from ..fileio import atomic_write, atomic_write_json, atomic_write_text, replacing
from ..model.config import MoDEConfig
from .spec import trunk_for_features, vision_feature_dim

NET = "model.inner_model."
CAMERAS = {"static": "static_resnet.", "gripper": "gripper_resnet."}
"""Official camera prefixes, in the official token order."""
ALIASES = (
    ("img_encoder_image_primary.", "static_resnet."),
    ("img_encoder_image_secondary.", "static_resnet."),
    ("img_encoder_image_wrist.", "gripper_resnet."),
    ("net.", "gripper_resnet.resnet."),
)
"""Prefixes of the authors' pretraining code, renamed as ``MoDEAgent.load_pretrained_parameters`` does."""
LANGUAGE_PREFIX = "language_goal."
LANGUAGE_MARKERS = ("visual", "clip")
"""Names the official loader skips as language-model weights (lower-cased substrings)."""
SAFE_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")
FOLDER_FILES = ("model_cleaned.safetensors", "model.safetensors", "model_cleaned.pt")
REPORT_NAME = "conversion.json"
CAMERA_FEATURES_REASON = "camera encoder (image_features: the policy takes the cameras' pooled features)"

Rule = tuple[tuple[str, ...], Callable[..., Tensor]]


@dataclass
class ConversionReport:
    """What a conversion did: the file read, the config written, and every tensor's fate."""

    source: str
    config: MoDEConfig
    mapped: int = 0
    ignored: dict[str, str] = field(default_factory=dict)  # official name -> reason
    set_by_converter: list[str] = field(default_factory=list)  # ours, not in the official file
    notes: list[str] = field(default_factory=list)  # what the user should know (e.g. CLIP not found)

    @property
    def image_feature_dim(self) -> int:
        """Width of the pooled camera features the policy takes (0: it takes images)."""
        cfg = self.config
        return vision_feature_dim(cfg.vision_depth, cfg.vision_width) if cfg.image_features else 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "mapped_tensors": self.mapped,
            "ignored": self.ignored,
            "set_by_converter": self.set_by_converter,
            "notes": self.notes,
        }


# ------------------------------------------------------------------ reading
def read_official_checkpoint(path: str | Path, allow_pickle: bool = False) -> tuple[dict[str, Tensor], Path]:
    """The flat name -> tensor dict of an official checkpoint file (or of the folder holding
    one), and the file read. Pickle-based files are refused unless ``allow_pickle``."""
    path = Path(path)
    if path.is_dir():
        found = next((path / name for name in FOLDER_FILES if (path / name).is_file()), None)
        if found is None:
            raise CheckpointError(f"{path} holds none of {', '.join(FOLDER_FILES)}")
        path = found
    if not path.is_file():
        raise CheckpointError(f"official checkpoint not found: {path}")
    if path.suffix in SAFE_SUFFIXES:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path)), path
        except (SafetensorError, OSError) as err:
            raise CheckpointError(f"{path}: corrupt or truncated safetensors file ({err})") from None
    if path.suffix not in PICKLE_SUFFIXES:
        raise CheckpointError(f"{path}: unknown checkpoint format (expected {SAFE_SUFFIXES + PICKLE_SUFFIXES})")
    if not allow_pickle:
        raise CheckpointError(
            f"{path} is a pickle file ({path.suffix}): unpickling can run any code the file contains, "
            "so it is refused by default. Convert the released model_cleaned.safetensors instead, or pass "
            "--allow-pickle if you trust where this file comes from."
        )
    return _unpickle(path), path


def _unpickle(path: Path) -> dict[str, Tensor]:
    """A torch file's state dict: tensors-only unpickling first; a Lightning checkpoint holding
    other objects (its hyper-parameters) is unpickled in full, as the user allowed."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - non-tensor objects in the pickle (OmegaConf hyper-parameters, ...)
        try:
            data = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as err:  # noqa: BLE001 - any unreadable file is reported the same way
            raise CheckpointError(f"{path}: cannot read it as a torch checkpoint ({err})") from None
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict) or not all(isinstance(v, Tensor) for v in data.values()):
        raise CheckpointError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return dict(data)


def canonical_names(tensors: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """The tensors under official ``MoDEAgent`` names, and the ignored ones with their reason."""
    ignored: dict[str, str] = {}
    canonical: dict[str, Tensor] = {}
    aliased: dict[str, str] = {}  # canonical name -> the alias it came from
    for name in sorted(tensors):  # sorted: a later alias overwrites an earlier one, as when loading safetensors
        if name.startswith(LANGUAGE_PREFIX) or any(m in name.lower() for m in LANGUAGE_MARKERS):
            ignored[name] = "language model (frozen CLIP: configured, not converted)"
            continue
        target = name
        if not name.startswith((NET, *CAMERAS.values())):
            old = next((a for a in ALIASES if name.startswith(a[0])), None)
            if old is not None:
                target = old[1] + name[len(old[0]) :]
        if target in canonical:
            if target in aliased:  # two aliases for one tensor: the official loader keeps the later one
                ignored[aliased[target]] = f"overwritten by {name} (as in the official loader)"
            else:  # the official name wins over an alias
                ignored[name] = f"alias of {target}, which the file also holds"
                continue
        canonical[target] = tensors[name]
        if target != name:
            aliased[target] = name
    return canonical, ignored


# ------------------------------------------------------------------ config
def official_config(
    tensors: dict[str, Tensor],
    top_k: int = 2,
    camera_names: list[str] | None = None,
    goal_encoder: dict[str, Any] | None = None,
    image_features: bool = False,
) -> MoDEConfig:
    """The ``architecture="official"`` config whose shapes these official tensors have.
    ``top_k`` is not stored in a checkpoint (the official configs use 2); ``camera_names``
    name our cameras in the official order (static, gripper). Without camera encoders in the
    tensors (a denoiser-only checkpoint), or with ``image_features``, the policy takes pooled
    camera features of the width ``tok_emb`` reads."""

    def get(name: str) -> Tensor:
        if name not in tensors:
            raise CheckpointError(f"official checkpoint lacks {name} (is it an official MoDE checkpoint?)")
        return tensors[name]

    d = get(NET + "sigma_linear.weight").shape[0]
    layers = {int(m.group(1)) for k in tensors for m in [re.match(re.escape(NET) + r"blocks\.(\d+)\.", k)] if m}
    shared = any(k.startswith(NET + "blocks.0.shared_mlp.") for k in tensors)
    present = [cam for cam, prefix in CAMERAS.items() if any(k.startswith(prefix) for k in tensors)]
    features = image_features or not present
    if features:  # the cameras' pooled features come in: their width is tok_emb's input width
        names = camera_names or present or list(CAMERAS)
        feature_dim = get(NET + "tok_emb.weight").shape[1]
        try:
            depth, width = trunk_for_features(feature_dim)
        except ConfigError as err:
            raise CheckpointError(f"{NET}tok_emb.weight: {err}") from None
    else:
        names = camera_names or present
        if len(names) != len(present):
            raise ConfigError(
                f"cameras {names}: the checkpoint has {len(present)} camera encoders ({', '.join(present)})"
            )
        trunk = CAMERAS[present[0]] + "resnet."
        depth = _resnet_depth(tensors, trunk)
        width = get(trunk + "conv1.weight").shape[0]
    try:
        return MoDEConfig(
            architecture="official",
            routing="noise",
            state_dim=0,
            n_obs_steps=1,
            d_model=d,
            n_layers=len(layers),
            n_heads=d // get(NET + "blocks.0.attn.q_norm.g").shape[0],
            num_experts=get(NET + "blocks.0.router.router.mlp.3.weight").shape[0] + int(shared),
            top_k=top_k,
            shared_expert=shared,
            action_dim=get(NET + "out.weight").shape[0],
            horizon=get(NET + "pos_emb").shape[1] - 1,
            n_action_steps=get(NET + "pos_emb").shape[1] - 1,
            goal_dim=get(NET + "goal_emb.weight").shape[1],
            image_keys=[n if n.startswith("observation.images.") else f"observation.images.{n}" for n in names],
            image_size=224,
            image_features=features,
            vision_depth=depth,
            vision_width=width,
            attn_dropout=0.3,
            resid_dropout=0.1,
            goal_dropout=0.1,
            goal_encoder=dict(goal_encoder or {}),
        )
    except ConfigError as err:
        raise CheckpointError(f"the official tensors give an unusable config: {err}") from None


def _resnet_depth(tensors: dict[str, Tensor], trunk: str) -> int:
    """ResNet depth from the block counts of the four stages under ``trunk`` (0 if unknown)."""
    blocks = tuple(
        len({m.group(1) for k in tensors for m in [re.match(re.escape(f"{trunk}layer{i}.") + r"(\d+)\.", k)] if m})
        for i in (1, 2, 3, 4)
    )
    kind = "bottleneck" if any(k.startswith(trunk + "layer1.0.conv3.") for k in tensors) else "basic"
    return next((d for d, layout in RESNET_LAYOUTS.items() if layout == (kind, blocks)), 0)


# ------------------------------------------------------------------ mapping
def _same(t: Tensor) -> Tensor:
    return t


def _stack(*ts: Tensor) -> Tensor:
    return torch.stack(ts)


def tensor_rules(cfg: MoDEConfig, ours: dict[str, Tensor]) -> dict[str, Rule]:
    """For each of our tensors (``ours``: name -> tensor, e.g. a meta state dict), the official
    tensors it is made of and how."""
    n = "denoiser.net."
    rules: dict[str, Rule] = {
        n + "sigma_embed.linear1.weight": ((NET + "sigma_emb.weight",), _same),
        n + "sigma_embed.linear1.bias": ((NET + "sigma_emb.bias",), _same),
        n + "sigma_embed.linear2.weight": ((NET + "sigma_linear.weight",), _same),
        n + "action_in.weight": ((NET + "action_emb.weight",), _same),
        n + "pos_emb": ((NET + "pos_emb",), _same),
        n + "gripper_embed": ((NET + "gripper_embed.weight",), _same),
        n + "norm_out.weight": ((NET + "ln.g",), _same),
        n + "action_out.weight": ((NET + "out.weight",), _same),
        n + "action_out.bias": ((NET + "out.bias",), _same),
        "goal_proj.weight": ((NET + "goal_emb.weight",), _same),
        "image_encoder.proj.weight": ((NET + "tok_emb.weight",), _same),
    }
    routed = cfg.num_experts - int(cfg.shared_expert)
    for i in range(cfg.n_layers):
        b, o = f"{n}blocks.{i}.", f"{NET}blocks.{i}."
        rules[b + "norm1.weight"] = ((o + "ln_1.g",), _same)
        rules[b + "norm2.weight"] = ((o + "ln_2.g",), _same)
        for part in ("query", "key", "value"):
            for kind in ("weight", "bias"):
                rules[f"{b}attn.{part}.{kind}"] = ((f"{o}attn.{part}.{kind}",), _same)
        rules[b + "attn.proj.weight"] = ((o + "attn.c_proj.weight",), _same)
        rules[b + "attn.q_norm.weight"] = ((o + "attn.q_norm.g",), _same)
        rules[b + "attn.k_norm.weight"] = ((o + "attn.k_norm.g",), _same)
        for ours_i, theirs_i in ((0, 0), (2, 3)):
            for kind in ("weight", "bias"):
                rules[f"{b}mlp.router.net.{ours_i}.{kind}"] = ((f"{o}router.router.mlp.{theirs_i}.{kind}",), _same)
        banks = [("experts", [f"{o}experts.expert_{e}." for e in range(routed)])]
        if cfg.shared_expert:
            banks.append(("shared", [o + "shared_mlp."]))
        for bank, sources in banks:
            rules[f"{b}mlp.{bank}.w_in"] = (tuple(s + "mlp.0.project.weight" for s in sources), _stack)
            rules[f"{b}mlp.{bank}.b_in"] = (tuple(s + "mlp.0.project.bias" for s in sources), _stack)
            rules[f"{b}mlp.{bank}.w_out"] = (tuple(s + "mlp.2.weight" for s in sources), _stack)
    for key, official in zip([] if cfg.image_features else cfg.image_keys, CAMERAS.values()):
        ours_prefix = f"image_encoder.cameras.{key.replace('.', '_')}."
        for name in ours:
            if name.startswith(ours_prefix):
                rules[name] = ((official + name[len(ours_prefix) :],), _same)
    return rules


def converter_set(cfg: MoDEConfig) -> dict[str, Tensor]:
    """Our tensors the official checkpoint has no counterpart of: identity normalisation
    (the official policy predicts actions in their own units; set real statistics when fine-tuning)."""
    return {
        "normalizer.action_min": -torch.ones(cfg.action_dim),
        "normalizer.action_max": torch.ones(cfg.action_dim),
        "normalizer.state_mean": torch.zeros(0),
        "normalizer.state_std": torch.ones(0),
    }


def convert_state_dict(
    tensors: dict[str, Tensor], cfg: MoDEConfig, source: str = "official checkpoint"
) -> tuple[dict[str, Tensor], ConversionReport]:
    """Our state dict for ``cfg`` from official tensors (raw file names; renamed and filtered
    here). CheckpointError naming every missing, unused or mis-shaped tensor."""
    canonical, ignored = canonical_names(tensors)
    if cfg.image_features:  # the policy takes the cameras' features: their encoders stay behind
        for name in [k for k in canonical if k.startswith(tuple(CAMERAS.values()))]:
            del canonical[name]
            ignored[name] = CAMERA_FEATURES_REASON
    from ..policy import MoDEPolicy

    with torch.device("meta"):
        expected = MoDEPolicy(_without_language(cfg)).state_dict()
    rules = tensor_rules(cfg, expected)
    fixed = converter_set(cfg)
    missing, shapes, used, out = [], [], set(), {}
    for name, (sources, build) in rules.items():
        absent = [s for s in sources if s not in canonical]
        if absent and name.endswith("num_batches_tracked"):  # older files lack it; it does not affect outputs
            fixed[name] = torch.zeros((), dtype=torch.long)
            continue
        if absent:
            missing += [f"{s} (for {name})" for s in absent]
            continue
        used.update(sources)
        value = build(*(canonical[s] for s in sources))
        if name in expected and value.shape != expected[name].shape:
            shapes.append(
                f"{name}: from {', '.join(sources[:2])} {tuple(value.shape)}, expected {tuple(expected[name].shape)}"
            )
        out[name] = value.detach().to(torch.float32 if value.is_floating_point() else value.dtype).contiguous()
    unused = sorted(set(canonical) - used)
    unfilled = sorted(set(expected) - set(rules) - set(fixed))
    problems = []
    for title, items in (
        ("missing official tensors", missing),
        ("official tensors this layout does not use", unused),
        ("shape mismatches", shapes),
        ("tensors of ours nothing fills", unfilled),
    ):
        if items:
            problems.append(f"{title} ({len(items)}): " + "; ".join(items[:12]) + (" ..." if len(items) > 12 else ""))
    if problems:
        raise CheckpointError(f"{source} does not convert: " + " | ".join(problems))
    report = ConversionReport(source, cfg, len(out), ignored, sorted(fixed))
    out.update(fixed)
    return out, report


def _without_language(cfg: MoDEConfig) -> MoDEConfig:
    """``cfg`` without its goal encoder (listing tensors needs no CLIP model)."""
    return MoDEConfig.from_dict({**cfg.to_dict(), "goal_encoder": {}})


# ------------------------------------------------------------------ the command
def convert_official(
    checkpoint: str | Path,
    out: str | Path,
    allow_pickle: bool = False,
    top_k: int = 2,
    camera_names: list[str] | None = None,
    goal_encoder: dict[str, Any] | None = None,
    overwrite: bool = False,
    image_features: bool = False,
) -> ConversionReport:
    """Write a model folder (``MoDEPolicy.from_pretrained`` loads it) converted from an official
    checkpoint, full or denoiser-only; ``goal_encoder`` is written into its config (e.g.
    ``{"type": "clip", "path": ...}``; None, the default: goals arrive as vectors and nothing
    else is needed to load it); ``image_features``: take pooled camera features instead of images
    (automatic for a denoiser-only file). ``conversion.json`` beside the weights lists ignored tensors."""
    from safetensors.torch import save_file

    from ..policy import CONFIG_NAME, WEIGHTS_NAME

    tensors, path = read_official_checkpoint(checkpoint, allow_pickle)
    canonical, _ = canonical_names(tensors)
    cfg = official_config(canonical, top_k, camera_names, goal_encoder, image_features)
    notes = goal_encoder_notes(cfg)
    ours, report = convert_state_dict(tensors, cfg, source=str(path))
    report.notes += notes
    with replacing(out, overwrite) as target:
        target.mkdir(parents=True)
        atomic_write(target / WEIGHTS_NAME, lambda tmp: save_file(ours, tmp))
        atomic_write_text(target / CONFIG_NAME, cfg.to_json() + "\n")
        atomic_write_json(target / REPORT_NAME, report.to_dict())
    return report


def goal_encoder_notes(cfg: MoDEConfig) -> list[str]:
    """What loading ``cfg``'s goal encoder will need, checked without loading a language model:
    a CLIP model not on this machine is a note (the folder still loads; goal vectors work); a
    folder that is not a CLIP model, or one whose goals have another width than the checkpoint's,
    is an error."""
    if not cfg.goal_encoder:
        return [f"goals are vectors: 'goal' (B, {cfg.goal_dim}); no language model is needed to load the folder"]
    from ..encoders.language import make_language_encoder
    from ..encoders.language.clip import DEFAULT_CLIP, DEFAULT_CLIP_DIM

    encoder = make_language_encoder(dict(cfg.goal_encoder))
    if getattr(encoder, "path", None) == DEFAULT_CLIP and cfg.goal_dim != DEFAULT_CLIP_DIM:
        raise ConfigError(
            f"goal encoder {DEFAULT_CLIP} gives {DEFAULT_CLIP_DIM}-d goals, the checkpoint's goal embedding "
            f"takes {cfg.goal_dim}-d ones (convert with --language=none and feed goal vectors)"
        )
    path = getattr(encoder, "path", None)
    name = f"{cfg.goal_encoder['type']} {path or ''}".strip()
    if not getattr(encoder, "available", lambda: True)() and not (path and Path(path).is_dir()):
        return [
            f"text goals use {name}, which is not on this machine: the folder loads and takes 'goal' vectors "
            f"(B, {cfg.goal_dim}); text goals will say where to put the model"
        ]
    if encoder.dim != cfg.goal_dim:
        raise ConfigError(
            f"goal encoder {cfg.goal_encoder}: gives {encoder.dim}-d goals, the checkpoint's goal embedding "
            f"takes {cfg.goal_dim}-d ones"
        )
    return [f"text goals use {name} (found on this machine)"]
