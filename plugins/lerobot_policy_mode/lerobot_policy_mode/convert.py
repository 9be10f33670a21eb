"""Import a ``mode-policy train`` model into a LeRobot ``pretrained_model`` folder.

::

    python -m lerobot_policy_mode.convert RUN_OR_MODEL_DIR OUT_DIR [--preset NAME] [--device cpu]

``RUN_OR_MODEL_DIR`` is a run directory or its ``model/`` folder (our ``config.json`` =
MoDEConfig, ``model.safetensors``). ``OUT_DIR`` gets LeRobot's ``config.json``
(``"type": "mode"``, the features derived from the MoDEConfig), ``mode_config.json``, the
unchanged weights and the processors' files, so it loads with ``make_policy``,
``make_pre_post_processors(cfg, pretrained_path=OUT_DIR)``, ``lerobot-eval --policy.path``
and ``lerobot-train --policy.path`` (fine-tuning).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
from pathlib import Path

from lerobot.configs.types import FeatureType, PolicyFeature
from lerobot.utils.constants import ACTION

from mode_policy.constants import STATE_KEY
from mode_policy.errors import CheckpointError, ConfigError, ModePolicyError
from mode_policy.fileio import replacing
from mode_policy.model.config import PRESETS, MoDEConfig, preset_overrides
from mode_policy.policy import CONFIG_NAME, WEIGHTS_NAME
from mode_policy.training.run_dir import RunDir

from .configuration_mode import DERIVED_FIELDS, MODE_FIELDS, SHADOWED_FIELDS, ModeConfig
from .modeling_mode import MODE_CONFIG_NAME, read_mode_config
from .processor_mode import make_mode_pre_post_processors


def model_folder(path: str | Path) -> Path:
    """The model folder of a run directory, or ``path`` itself; CheckpointError if it holds no model."""
    path = Path(path)
    folder = RunDir(path).model if (RunDir(path).model / WEIGHTS_NAME).is_file() else path
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (folder / name).is_file():
            raise CheckpointError(f"not a mode-policy model folder (no {name}): {folder}")
    return folder


def lerobot_features(mode: MoDEConfig) -> tuple[dict[str, PolicyFeature], dict[str, PolicyFeature]]:
    """LeRobot's (input_features, output_features) of a MoDEConfig: state (S,), cameras (3, H, W), action (A,)."""
    if mode.image_keys and mode.image_size <= 0:
        raise ConfigError(
            "LeRobot's ModeConfig needs square cameras of one size; "
            f"this policy's cameras {mode.image_keys} have image_size={mode.image_size}"
        )
    inputs = {}
    if mode.state_dim:
        inputs[STATE_KEY] = PolicyFeature(type=FeatureType.STATE, shape=(mode.state_dim,))
    for key in mode.image_keys:
        inputs[key] = PolicyFeature(type=FeatureType.VISUAL, shape=(3, mode.image_size, mode.image_size))
    return inputs, {ACTION: PolicyFeature(type=FeatureType.ACTION, shape=(mode.action_dim,))}


def closest_preset(mode: MoDEConfig) -> str:
    """The preset that differs from ``mode`` in the fewest fields (informational once resolved)."""
    return min(PRESETS, key=lambda name: len(preset_overrides(name, mode)))


def lerobot_config(mode: MoDEConfig, preset: str | None = None, device: str = "cpu") -> ModeConfig:
    """The resolved ModeConfig of ``mode``: every MoDE field set to ``mode``'s value (the goal encoder
    and a learned task vocabulary included), the features from its shapes; ``preset`` (default: the
    closest) is only a record. ConfigError for what LeRobot's config cannot express."""
    if not mode.goal_encoder:
        raise ConfigError(
            "this policy takes goal vectors, but LeRobot hands it task strings: "
            "train it with --language minilm, clip or task"
        )
    shadowed = [n for n in SHADOWED_FIELDS if n not in DERIVED_FIELDS and getattr(mode, n) != _default(n)]
    if shadowed:
        raise ConfigError(f"LeRobot's ModeConfig cannot express the policy's {', '.join(shadowed)}")
    inputs, outputs = lerobot_features(mode)
    config = ModeConfig(
        preset=preset or closest_preset(mode),
        language_encoder=mode.goal_encoder["type"],
        n_obs_steps=mode.n_obs_steps,
        input_features=inputs,
        output_features=outputs,
        device=device,
        push_to_hub=False,
        **{name: getattr(mode, name) for name in MODE_FIELDS},
    )
    rebuilt = config.mode_config().to_dict()
    differ = sorted(k for k, v in mode.to_dict().items() if rebuilt[k] != v)
    if differ:
        raise ConfigError(f"LeRobot's ModeConfig cannot express the policy's {', '.join(differ)}")
    return config


def _default(name: str) -> object:
    field = MoDEConfig.__dataclass_fields__[name]
    return field.default if field.default is not dataclasses.MISSING else field.default_factory()


def import_mode_checkpoint(
    model_dir: str | Path, out_dir: str | Path, preset: str | None = None, device: str = "cpu", overwrite: bool = False
) -> Path:
    """Write ``out_dir`` (atomically) as a LeRobot pretrained_model folder of the mode-policy
    model in ``model_dir`` (a run directory or its ``model/``); returns ``out_dir``."""
    src = model_folder(model_dir)
    mode = read_mode_config(src / CONFIG_NAME)
    config = lerobot_config(mode, preset, device)
    pre, post = make_mode_pre_post_processors(config)
    with replacing(out_dir, overwrite) as tmp:
        tmp.mkdir(parents=True)
        config._save_pretrained(tmp)
        (tmp / MODE_CONFIG_NAME).write_text(mode.to_json() + "\n", encoding="utf-8")
        shutil.copyfile(src / WEIGHTS_NAME, tmp / WEIGHTS_NAME)
        pre.save_pretrained(tmp)
        post.save_pretrained(tmp)
    return Path(out_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lerobot_policy_mode.convert", description=__doc__.split("\n")[0])
    parser.add_argument("model_dir", help="mode-policy run directory or its model/ folder")
    parser.add_argument("out_dir", help="LeRobot pretrained_model folder to write")
    parser.add_argument("--preset", choices=list(PRESETS), help="preset recorded in config.json (default: closest)")
    parser.add_argument("--device", default="cpu", help="LeRobot's policy.device (default: cpu)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT_DIR")
    args = parser.parse_args(argv)
    try:
        out = import_mode_checkpoint(args.model_dir, args.out_dir, args.preset, args.device, args.overwrite)
    except ModePolicyError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(
        json.dumps(
            {"lerobot_pretrained_model": str(out), "preset": json.loads((out / CONFIG_NAME).read_text())["preset"]}
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
