"""A study file: a base training recipe, policy variants and seeds (``mode-policy study``).

A study is YAML (or JSON)::

    name: MoDE ablations on MT50          # title of the report
    dataset: data/mt50-10                 # a dataset made by `mode-policy demos` (required)
    tasks: mt50                           # evaluation tasks (default: the dataset's tasks)
    eval_episodes: 3                      # held-out episodes per task and cell
    eval_seed: 0                          # the same held-out episodes for every cell
    seeds: [0, 1, 2]                      # training seeds (TrainConfig.seed)
    train: {preset: cpu, steps: 1500}     # TrainConfig fields shared by every cell
    policy: {}                            # MoDEConfig fields shared by every variant
    reference: default                    # the variant differences are taken against (default: the first)
    paper_source: "MoDE paper, LIBERO-10" # where the paper's numbers come from
    variants:
      - name: default
        paper: 0.92
      - name: dense
        policy: {routing: dense}
        match_active_params: true         # dense_mlp_ratio chosen to match the reference's active parameters
        paper: 0.839
        paper_reference: 0.851            # the paper's reference on the same scale (default: the reference's paper)
        paper_note: "normalised over 5 benchmarks"

A variant may also change what it trains on and how, and start from a trained model::

      - name: pretrained
        dataset: data/ml45-train          # its training data (default: the study's)
        seeds: [0]                        # its seeds, a subset of the study's (default: all)
        train: {steps: 1000, lr: 0.0005}  # TrainConfig fields on top of the study's train
      - name: scratch
      - name: finetuned
        init_from: pretrained             # fine-tune (training/finetune.py) a variant listed above:
                                          # its model at the same seed, or at its only seed
        reference: scratch                # its difference is taken against this variant
                                          # (default: the study's reference)

``init_from`` names a variant of the study, or else a finished run directory or model folder
(relative to the working directory, like ``dataset``; ``./name`` for a folder named like a variant). A fine-tuning variant's ``policy`` may set only
the fields a fine-tune may change (:data:`mode_policy.training.finetune.ADJUSTABLE_FIELDS`).

Everything is checked when the file is loaded, so a typo fails before the first cell trains.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError, DataNotFoundError
from ..model.config import MoDEConfig, get_preset
from ..training.config import TrainConfig

STUDY_KEYS = (
    "name",
    "dataset",
    "tasks",
    "eval_episodes",
    "eval_seed",
    "eval_batch_size",
    "seeds",
    "train",
    "policy",
    "reference",
    "paper_source",
    "variants",
)
VARIANT_KEYS = (
    "name",
    "description",
    "policy",
    "match_active_params",
    "dataset",
    "train",
    "seeds",
    "init_from",
    "reference",
    "paper",
    "paper_reference",
    "paper_note",
)
TRAIN_SET_BY_STUDY = {
    "dataset": "give it as dataset: of the study or of a variant",
    "output_dir": "the study puts every run under --out",
    "seed": "list the training seeds under seeds: (the study's or a variant's)",
    "policy": "give policy fields under policy: (all variants) or a variant's policy:",
    "init_from": "give it as a variant's init_from:",
}
SPEC_IGNORES = ("output_dir", "progress", "threads", "device", "log_every", "checkpoint_every", "keep_checkpoints")
"""TrainConfig fields that do not change what a cell computes (a finished cell stays valid if they change)."""
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class Matching:
    """How a dense variant was sized to the reference's active parameters (transformer only)."""

    reference: str
    dense_mlp_ratio: int
    active: int
    reference_active: int

    @property
    def gap(self) -> float:
        """Relative difference of the active counts (dense - reference) / reference."""
        return (self.active - self.reference_active) / self.reference_active


@dataclass(frozen=True)
class Variant:
    name: str
    policy: dict[str, Any]
    """Policy fields of this variant (after matching), on top of the study's policy."""
    description: str = ""
    paper: float | None = None
    paper_reference: float | None = None
    paper_note: str = ""
    matching: Matching | None = None
    dataset: str = ""
    """Its training data ("": the study's)."""
    train: dict[str, Any] = field(default_factory=dict)
    """TrainConfig fields of this variant, on top of the study's train."""
    seeds: list[int] = field(default_factory=list)
    """Its training seeds (after loading: the study's unless it gave fewer)."""
    init_from: str = ""
    """A pretrained run directory or model folder this variant fine-tunes."""
    init_from_variant: str = ""
    """The variant of the study whose trained model this variant fine-tunes."""
    reference: str = ""
    """The variant its difference is taken against ("": none, it is the study's reference)."""

    @property
    def paper_delta(self) -> float | None:
        if self.paper is None or self.paper_reference is None:
            return None
        return self.paper - self.paper_reference


@dataclass(frozen=True)
class Cell:
    """One training run and its evaluation: a variant at a seed."""

    variant: str
    seed: int

    @property
    def key(self) -> str:
        return f"{self.variant}/seed{self.seed}"


@dataclass(frozen=True)
class Study:
    path: Path
    name: str
    dataset: str
    tasks: list[str]
    eval_episodes: int
    eval_seed: int
    eval_batch_size: int
    seeds: list[int]
    train: dict[str, Any]
    policy: dict[str, Any]
    reference: str
    paper_source: str
    variants: list[Variant]

    def variant(self, name: str) -> Variant:
        return next(v for v in self.variants if v.name == name)

    def cells(self) -> list[Cell]:
        """Every cell, seed by seed (a killed study has whole seeds of every variant first), each
        after the cell whose model it fine-tunes."""
        ordered: dict[str, Cell] = {}

        def place(cell: Cell) -> None:
            if cell.key not in ordered:
                source = self.source_cell(cell)
                if source is not None:
                    place(source)
                ordered[cell.key] = cell

        for seed in self.seeds:
            for v in self.variants:
                if seed in v.seeds:
                    place(Cell(v.name, seed))
        return list(ordered.values())

    def source_cell(self, cell: Cell) -> Cell | None:
        """The cell whose trained model ``cell`` fine-tunes (None unless its init_from names a variant):
        the same seed, or the source variant's only seed."""
        name = self.variant(cell.variant).init_from_variant
        if not name:
            return None
        seeds = self.variant(name).seeds
        return Cell(name, cell.seed if cell.seed in seeds else seeds[0])

    def train_fields(self, variant: str) -> dict[str, Any]:
        """The TrainConfig fields a variant sets: the study's train, then its own."""
        return {**self.train, **self.variant(variant).train}

    def policy_config(self, variant: str) -> MoDEConfig:
        return get_preset(
            self.train_fields(variant).get("preset", TrainConfig.preset),
            **{**self.policy, **self.variant(variant).policy},
        )

    def train_config(self, cell: Cell, output_dir: str | Path, source_run: str | Path = "") -> TrainConfig:
        """The cell's training run; ``source_run``: the run of :meth:`source_cell`, for a variant
        that fine-tunes another."""
        v = self.variant(cell.variant)
        return TrainConfig(
            **self.train_fields(v.name),
            dataset=v.dataset or self.dataset,
            output_dir=str(output_dir),
            seed=cell.seed,
            policy=self.policy_config(v.name),
            init_from=str(source_run) if v.init_from_variant else v.init_from,
        )

    def cell_spec(self, cell: Cell) -> dict[str, Any]:
        """What a cell computes (a finished cell is reused only while this stays the same); a cell
        that fine-tunes another's model holds that cell's spec under ``init_from``."""
        run = self.train_config(cell, "").to_run_dict()
        for name in SPEC_IGNORES:
            run["train"].pop(name)
        spec = {
            "train": run["train"],
            "policy": run["policy"],
            "tasks": self.tasks,
            "eval_episodes": self.eval_episodes,
            "eval_seed": self.eval_seed,
        }
        source = self.source_cell(cell)
        if source is not None:
            spec["train"]["init_from"] = source.key
            spec["init_from"] = self.cell_spec(source)
        return spec


# ------------------------------------------------------------------ loading
def load_study(path: str | Path) -> Study:
    """Read and check a study file; ConfigError naming the file and the key for anything wrong,
    DataNotFoundError when the dataset is missing."""
    import yaml

    from ..validation import load_yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"study file not found: {path}")
    try:
        data = load_yaml(path.read_text(encoding="utf-8"), str(path))
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read it ({err})") from None
    return parse_study(data, path)


def parse_study(data: Any, path: Path) -> Study:
    where = str(path)
    data = _mapping(data, where)
    _no_unknown(data, STUDY_KEYS, where)
    if not data.get("dataset"):
        raise ConfigError(f"{where}: 'dataset' is missing (the path of a dataset made by `mode-policy demos`)")
    dataset = str(data["dataset"])
    if not Path(dataset).exists():
        raise DataNotFoundError(f"{where}: dataset folder not found: {dataset}")
    train = _train(data, where)
    seeds = _seeds(data.get("seeds", [0]), where)
    eval_episodes = _int(data, "eval_episodes", 5, where, low=1)
    eval_seed = _int(data, "eval_seed", 0, where, low=0)
    eval_batch_size = _int(data, "eval_batch_size", 100, where, low=1)
    base_policy = dict(_mapping(data.get("policy", {}), f"{where}: policy"))
    _check_policy_fields(base_policy, f"{where}: policy")
    raw_variants = data.get("variants")
    if not isinstance(raw_variants, list) or not raw_variants:
        raise ConfigError(f"{where}: 'variants' must be a non-empty list of variants (each with a name)")
    variants = [_variant(v, i, where, seeds) for i, v in enumerate(raw_variants)]
    names = [v.name for v in variants]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"{where}: variant name(s) used twice: {', '.join(duplicates)}")
    reference = str(data.get("reference", names[0]))
    if reference not in names:
        raise ConfigError(f"{where}: reference {reference!r} is not a variant (variants: {', '.join(names)})")
    study = Study(
        path,
        str(data.get("name", path.stem)),
        dataset,
        _tasks(data.get("tasks"), dataset, where),
        eval_episodes,
        eval_seed,
        eval_batch_size,
        seeds,
        train,
        base_policy,
        reference,
        str(data.get("paper_source", "")),
        variants,
    )
    study = _resolve(study, raw_variants, where)
    for variant in study.variants:  # every cell's configuration is valid (types, ranges, consistency)
        try:
            study.train_config(Cell(variant.name, variant.seeds[0]), "")
        except ConfigError as err:
            raise ConfigError(f"{where}: variant {variant.name!r}: {err}") from None
    return study


def _variant(raw: Any, index: int, where: str, study_seeds: list[int]) -> Variant:
    raw = _mapping(raw, f"{where}: variants[{index}]")
    name = raw.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ConfigError(
            f"{where}: variants[{index}] needs a name of letters, digits, '.', '_' or '-' "
            f"(it names the cell folders), got {name!r}"
        )
    at = f"{where}: variant {name!r}"
    _no_unknown(raw, VARIANT_KEYS, at)
    policy = dict(_mapping(raw.get("policy", {}), f"{at}: policy"))
    _check_policy_fields(policy, f"{at}: policy")
    paper, paper_reference = _number(raw, "paper", at), _number(raw, "paper_reference", at)
    dataset = raw.get("dataset", "")
    if dataset:
        dataset = str(dataset)
        if not Path(dataset).exists():
            raise DataNotFoundError(f"{at}: dataset folder not found: {dataset}")
    seeds = _seeds(raw["seeds"], at) if "seeds" in raw else list(study_seeds)
    others = [s for s in seeds if s not in study_seeds]
    if others:
        raise ConfigError(f"{at}: seeds {others} are not among the study's seeds {study_seeds}")
    init_from = raw.get("init_from", "")
    if not isinstance(init_from, str):
        raise ConfigError(f"{at}: init_from must be a variant's name or a path, got {init_from!r}")
    return Variant(
        name,
        policy,
        str(raw.get("description", "")),
        paper,
        paper_reference,
        str(raw.get("paper_note", "")),
        dataset=dataset,
        train=_train(raw, at),
        seeds=seeds,
        init_from=init_from,
    )


def _resolve(study: Study, raw_variants: list[dict], where: str) -> Study:
    """Resolve each variant's reference and init_from, fill paper references from the reference
    variant and size matched dense variants."""
    names = [v.name for v in study.variants]
    linked = []
    for variant, raw in zip(study.variants, raw_variants):
        at = f"{where}: variant {variant.name!r}"
        changes: dict[str, Any] = {"reference": _reference(study, variant, raw, at)}
        if variant.init_from:
            changes.update(_init_from(study, variant, at))
        linked.append(dataclasses.replace(variant, **changes))
    study = dataclasses.replace(study, variants=linked)
    resolved = []
    for variant, raw in zip(study.variants, raw_variants):
        changes = {}
        if not variant.reference:
            changes["paper_reference"] = variant.paper
        elif variant.paper is not None and variant.paper_reference is None:
            changes["paper_reference"] = study.variant(variant.reference).paper
        match = raw.get("match_active_params", False)
        if match is not False:
            target = study.reference if match is True else match
            at = f"{where}: variant {variant.name!r}: match_active_params"
            if not isinstance(target, str) or target not in names:
                raise ConfigError(f"{at}: expected true or the name of a variant, got {match!r}")
            matching = match_dense(study, variant, target, at)
            changes["matching"] = matching
            changes["policy"] = {**variant.policy, "dense_mlp_ratio": matching.dense_mlp_ratio}
        resolved.append(dataclasses.replace(variant, **changes))
    return dataclasses.replace(study, variants=resolved)


def _reference(study: Study, variant: Variant, raw: dict, at: str) -> str:
    """The variant whose difference ``variant`` is taken against ("" for the study's reference)."""
    if "reference" not in raw:
        return "" if variant.name == study.reference else study.reference
    name = raw["reference"]
    if not isinstance(name, str) or name == variant.name or name not in [v.name for v in study.variants]:
        others = ", ".join(v.name for v in study.variants if v.name != variant.name)
        raise ConfigError(f"{at}: reference {name!r} is not another variant (variants: {others})")
    return name


def _init_from(study: Study, variant: Variant, at: str) -> dict[str, str]:
    """``variant.init_from`` as a variant listed before it (whose seeds it can pair with) or a
    finished model; ConfigError for anything else, or for a policy field a fine-tune cannot change."""
    from ..training.finetune import ADJUSTABLE_FIELDS
    from ..training.run_dir import RunDir

    value = variant.init_from
    names = [v.name for v in study.variants]
    fixed = sorted(k for k in variant.policy if k not in ADJUSTABLE_FIELDS)
    if fixed:
        raise ConfigError(
            f"{at}: policy: {', '.join(fixed)} would change the architecture, which a fine-tune takes from "
            f"init_from {value!r}; a fine-tuning variant may set only {', '.join(ADJUSTABLE_FIELDS)}"
        )
    if value in names:
        if value == variant.name:
            raise ConfigError(f"{at}: init_from {value!r} is the variant itself (name the variant it fine-tunes)")
        if names.index(value) > names.index(variant.name):
            raise ConfigError(
                f"{at}: init_from {value!r} is listed after {variant.name!r}: list the variant to fine-tune from first"
            )
        source = study.variant(value).seeds
        unpaired = [s for s in variant.seeds if s not in source]
        if unpaired and len(source) > 1:
            raise ConfigError(
                f"{at}: init_from {value!r} trains seeds {source}, not {unpaired}: give {value!r} every seed "
                f"of {variant.name!r} (seed k fine-tunes seed k) or a single seed (every seed fine-tunes it)"
            )
        return {"init_from": "", "init_from_variant": value}
    path = Path(value)
    if not path.exists():
        raise ConfigError(
            f"{at}: init_from {value!r} is neither a variant of the study ({', '.join(names)}) "
            "nor a run directory or model folder"
        )
    if not (RunDir.model_dir(path) / "model.safetensors").is_file():
        raise ConfigError(
            f"{at}: init_from {value!r} holds no finished model (a run directory with model/, or a model "
            "folder with config.json and model.safetensors)"
        )
    return {}


def transformer_active_params(config: MoDEConfig) -> int:
    """Active parameters of the denoising transformer of ``config`` (counted without allocating)."""
    from ..model.transformer import MoDETransformer

    with torch.device("meta"):
        net = MoDETransformer(config)
    return sum(p.numel() for p in net.parameters()) - net.inactive_params()


def match_dense(study: Study, variant: Variant, target: str, at: str) -> Matching:
    """The integer ``dense_mlp_ratio`` whose dense transformer has the active parameter count closest
    to that of variant ``target`` (an MoE variant). Dense counts grow linearly in the ratio
    (``3 d^2`` per layer and unit), so two counts give the line and the best ratio."""
    if study.policy_config(target).routing == "dense":
        raise ConfigError(f"{at}: the variant to match, {target!r}, is dense itself")
    merged = {**study.policy, **variant.policy}
    if merged.get("routing") != "dense":
        raise ConfigError(f"{at}: only dense variants are matched (set policy: {{routing: dense}})")
    if "dense_mlp_ratio" in variant.policy:
        raise ConfigError(f"{at}: matching chooses dense_mlp_ratio itself; do not set it too")
    reference_active = transformer_active_params(study.policy_config(target))
    base = study.policy_config(variant.name)
    one, two = (transformer_active_params(dataclasses.replace(base, dense_mlp_ratio=r)) for r in (1, 2))
    ratio = max(1, 1 + round((reference_active - one) / (two - one)))
    active = transformer_active_params(dataclasses.replace(base, dense_mlp_ratio=ratio))
    return Matching(target, ratio, active, reference_active)


# ------------------------------------------------------------------ checks
def _mapping(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping of keys to values, got {type(value).__name__}")
    return value


def _no_unknown(data: dict, known, where: str) -> None:
    unknown = sorted(str(k) for k in data if k not in known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(known)})")


def _check_policy_fields(policy: dict, where: str) -> None:
    _no_unknown(policy, [f.name for f in dataclasses.fields(MoDEConfig)], where)


def _train(data: dict, where: str) -> dict[str, Any]:
    """The TrainConfig fields under ``train:`` of the study or of a variant (``where``)."""
    train = dict(_mapping(data.get("train", {}), f"{where}: train"))
    for key, why in TRAIN_SET_BY_STUDY.items():
        if key in train:
            raise ConfigError(f"{where}: train.{key} is set by the study ({why})")
    _no_unknown(train, [f.name for f in dataclasses.fields(TrainConfig)], f"{where}: train")
    return train


def _seeds(seeds: Any, where: str) -> list[int]:
    if (
        not isinstance(seeds, list)
        or not seeds
        or len(set(seeds)) != len(seeds)
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)
    ):
        raise ConfigError(f"{where}: seeds must be a list of distinct integers >= 0, got {seeds!r}")
    return seeds


def _int(data: dict, key: str, default: int, where: str, low: int) -> int:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{where}: {key} must be an integer >= {low}, got {value!r}")
    return value


def _number(data: dict, key: str, where: str) -> float | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{where}: {key} must be a number, got {value!r}")
    return float(value)


def _tasks(spec: Any, dataset: str, where: str) -> list[str]:
    """The evaluation tasks: ``spec`` (a task set, names, or a list), else the dataset's Meta-World tasks."""
    from ..envs.rendering import setup_headless_rendering

    setup_headless_rendering()
    from ..envs.metaworld import resolve_tasks

    if spec is None:
        from ..data.reader import DatasetReader

        names = [extra.get("env_name") for extra in DatasetReader(dataset).episode_extra]
        if not names or not all(names):
            raise ConfigError(f"{where}: 'tasks' is missing and {dataset} does not record its Meta-World tasks")
        return sorted(set(names))
    try:
        return resolve_tasks(spec)
    except ConfigError as err:
        raise ConfigError(f"{where}: tasks: {err}") from None
