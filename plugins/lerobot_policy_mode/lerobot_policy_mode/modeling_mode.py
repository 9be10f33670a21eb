"""``ModePolicy``: LeRobot's ``PreTrainedPolicy`` around :class:`mode_policy.policy.MoDEPolicy`.

Normalisation lives in one place, inside the MoDE policy (its ``Normalizer`` buffers,
set from the dataset statistics LeRobot passes in); the pre/post-processors do no
normalisation (see :mod:`.processor_mode`). Goals come from the batch's ``task``
strings through the MoDE policy's language encoder. Checkpoints keep the MoDE policy's
own tensor names (``model.safetensors`` is exactly what ``MoDEPolicy.save_pretrained``
writes) and carry its config as ``mode_config.json``, from which a local checkpoint is
rebuilt (the exact config, goal encoder included); :func:`export_mode_checkpoint` turns
one into a folder ``MoDEPolicy.from_pretrained`` reads, :mod:`.convert` goes the other way.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from lerobot.configs.policies import PreTrainedConfig
from lerobot.policies.pretrained import PreTrainedPolicy
from lerobot.utils.constants import ACTION
from safetensors.torch import load_file, save_file
from torch import Tensor

from mode_policy.constants import ACTION_IS_PAD_KEY, TASK_KEY
from mode_policy.errors import CheckpointError
from mode_policy.model.config import MoDEConfig
from mode_policy.policy import CONFIG_NAME, WEIGHTS_NAME, MoDEPolicy

from .configuration_mode import ModeConfig

MODE_CONFIG_NAME = "mode_config.json"
"""The MoDEConfig inside a LeRobot checkpoint folder (LeRobot's own config is config.json)."""


class ModePolicy(PreTrainedPolicy):
    """MoDE diffusion policy for LeRobot (``--policy.type=mode``)."""

    config_class = ModeConfig
    name = "mode"

    def __init__(
        self,
        config: ModeConfig,
        dataset_stats: dict[str, dict[str, Any]] | None = None,
        saved_mode_config: MoDEConfig | None = None,
        **kwargs: Any,
    ) -> None:
        """``saved_mode_config``: a checkpoint's own MoDEConfig (else preset + overrides + features)."""
        super().__init__(config)
        config.validate_features()
        self.config = config
        self.model = MoDEPolicy(config.mode_config() if saved_mode_config is None else saved_mode_config)
        self.model.denoiser.use_expert_cache = True  # fused experts when sampling in eval mode
        if dataset_stats is not None:
            self.model.set_normalization(dataset_stats)
        self.reset()

    # ------------------------------------------------------------------ training
    def get_optim_params(self) -> Any:
        return [p for p in self.model.parameters() if p.requires_grad]

    def forward(self, batch: dict[str, Any]) -> tuple[Tensor, dict[str, float]]:
        """Diffusion + balancing loss on a LeRobot batch: state/cameras (B, n_obs, ...),
        action (B, horizon, A), action_is_pad (B, horizon), task (B strings)."""
        mode_batch = dict(batch)
        if ACTION_IS_PAD_KEY not in mode_batch and f"{ACTION}_is_pad" in batch:
            mode_batch[ACTION_IS_PAD_KEY] = batch[f"{ACTION}_is_pad"]
        loss, info = self.model(mode_batch)
        return loss, {k: float(v.mean()) for k, v in info.items() if k != "expert_usage"}

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def predict_action_chunk(self, batch: dict[str, Any], **kwargs: Any) -> Tensor:
        """Action chunk (B, horizon, A) in the dataset's units (LeRobot frames (B, ...) or (B, n_obs, ...))."""
        return self.model.predict_action_chunk(_with_tasks(batch))

    @torch.no_grad()
    def select_action(self, batch: dict[str, Any], **kwargs: Any) -> Tensor:
        """One action (B, A); re-plans a chunk every ``n_action_steps`` calls."""
        return self.model.select_action(_with_tasks(batch))

    def reset(self) -> None:
        self.model.reset()

    # ------------------------------------------------------------------ save / load
    def _save_pretrained(self, save_directory: Path, state_dict: dict[str, Tensor] | None = None) -> None:
        self.config._save_pretrained(save_directory)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        save_file(tensors, str(save_directory / WEIGHTS_NAME))
        (save_directory / MODE_CONFIG_NAME).write_text(self.model.config.to_json() + "\n")

    @classmethod
    def from_pretrained(
        cls, pretrained_name_or_path: str | Path, *, config: PreTrainedConfig | None = None, **kwargs: Any
    ) -> ModePolicy:
        """LeRobot's loader; a local folder with ``mode_config.json`` is built from that config
        (checked against LeRobot's features and windows), as it was trained."""
        mode_json = Path(pretrained_name_or_path) / MODE_CONFIG_NAME
        if mode_json.is_file():
            if config is None:
                config = PreTrainedConfig.from_pretrained(pretrained_name_or_path)
            kwargs["saved_mode_config"] = config.check_saved(read_mode_config(mode_json), str(mode_json))
        return super().from_pretrained(pretrained_name_or_path, config=config, **kwargs)

    @classmethod
    def _load_as_safetensor(cls, model: ModePolicy, model_file: str, map_location: str, strict: bool) -> ModePolicy:
        model.model.load_weights(load_file(model_file, device=str(map_location)), source=model_file)
        return model


def read_mode_config(path: Path) -> MoDEConfig:
    """The MoDEConfig in a JSON file; CheckpointError naming it if invalid."""
    try:
        return MoDEConfig.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, ValueError, TypeError) as err:
        raise CheckpointError(f"{path}: invalid MoDE config: {err}") from None


def _with_tasks(batch: dict[str, Any]) -> dict[str, Any]:
    """LeRobot hands ``task`` as a list of strings (or one string for a single frame)."""
    tasks = batch.get(TASK_KEY)
    if isinstance(tasks, str):
        batch = {**batch, TASK_KEY: [tasks]}
    return batch


def export_mode_checkpoint(lerobot_dir: str | Path, out_dir: str | Path) -> Path:
    """Copy a ``lerobot-train`` checkpoint (``.../pretrained_model``) into a folder that
    ``mode_policy.policy.MoDEPolicy.from_pretrained`` loads (config.json + model.safetensors)."""
    src, out = Path(lerobot_dir), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src / MODE_CONFIG_NAME, out / CONFIG_NAME)
    shutil.copyfile(src / WEIGHTS_NAME, out / WEIGHTS_NAME)
    return out
