"""Normalisation statistics that live inside the policy (and its checkpoint).

Actions are mapped min-max to [-1, 1]; states are standardised (mean / std).
A policy trained on one dataset has one :class:`Normalizer`; one trained on a
mixture keeps one per dataset (:class:`DatasetNormalizers`), keyed by name.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..constants import ACTION_KEY, STATE_KEY
from ..errors import DataError

STD_FLOOR = 1e-2  # states with a (near) constant dimension are not blown up
RANGE_FLOOR = 1e-4  # constant action dimensions map to 0


class Normalizer(nn.Module):
    """Buffers ``action_min/max`` (A,) and ``state_mean/std`` (S,); identity until set."""

    def __init__(self, action_dim: int, state_dim: int) -> None:
        super().__init__()
        self.register_buffer("action_min", -torch.ones(action_dim))
        self.register_buffer("action_max", torch.ones(action_dim))
        self.register_buffer("state_mean", torch.zeros(state_dim))
        self.register_buffer("state_std", torch.ones(state_dim))

    @torch.no_grad()
    def set_stats(self, stats: Mapping[str, Mapping[str, object]]) -> None:
        """Load statistics ``{"action": {"min", "max"}, "observation.state": {"mean", "std"}}``
        (array-likes). Raises DataError naming a missing or mis-shaped entry."""
        wanted = [(ACTION_KEY, "min", self.action_min), (ACTION_KEY, "max", self.action_max)]
        if self.state_mean.numel():
            wanted += [
                (STATE_KEY, "mean", self.state_mean),
                (STATE_KEY, "std", self.state_std),
            ]
        for key, stat, buf in wanted:
            if key not in stats or stat not in stats[key]:
                raise DataError(f"normalisation statistics lack {key}.{stat}")
            value = torch.as_tensor(stats[key][stat], dtype=buf.dtype).reshape(-1)
            if value.shape != buf.shape:
                raise DataError(
                    f"normalisation statistic {key}.{stat} has {value.numel()} values, the policy expects {buf.numel()}"
                )
            if not torch.isfinite(value).all():
                raise DataError(f"normalisation statistic {key}.{stat} contains NaN or inf")
            buf.copy_(value)

    def _center_scale(self) -> tuple[Tensor, Tensor]:
        center = (self.action_max + self.action_min) / 2
        half_range = ((self.action_max - self.action_min) / 2).clamp_min(RANGE_FLOOR)
        return center, half_range

    def normalize_action(self, action: Tensor) -> Tensor:
        center, half_range = self._center_scale()
        return (action - center) / half_range

    def unnormalize_action(self, action: Tensor) -> Tensor:
        center, half_range = self._center_scale()
        return action * half_range + center

    def normalize_state(self, state: Tensor) -> Tensor:
        return (state - self.state_mean) / self.state_std.clamp_min(STD_FLOOR)


DATASET_KEY = "dataset"
"""Batch key naming the dataset of each row (one name, or a list with one per row)."""
DATASET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]*$")
"""What a dataset name in a mixture may look like (it becomes part of state-dict keys)."""


class DatasetNormalizers(nn.Module):
    """Per-dataset statistics of a policy trained on a mixture: one :class:`Normalizer` per
    dataset name, at that dataset's own widths (at most the policy's ``action_dim`` and
    ``state_dim``). Narrower data are zero-padded to the policy's widths after normalisation,
    so padded dimensions are exactly 0. Empty (nothing in the state dict) for a policy trained
    on one dataset, which uses its plain :class:`Normalizer`.

    Members live under their names in the state dict (``<prefix><name>.action_min``, ...);
    loading a state dict creates the members it names (:meth:`adopt_layout`).
    """

    def __init__(self, action_dim: int, state_dim: int) -> None:
        super().__init__()
        self.action_dim, self.state_dim = action_dim, state_dim

    # ---------------------------------------------------------------- members
    @property
    def names(self) -> list[str]:
        return list(self._modules)

    def __len__(self) -> int:
        return len(self._modules)

    def clear(self) -> None:
        """Drop every member (back to single-dataset normalisation)."""
        self._modules.clear()

    def member(self, name: str) -> Normalizer:
        return self._modules[name]  # type: ignore[return-value]

    def _add(self, name: str, action_dim: int, state_dim: int) -> Normalizer:
        if not DATASET_NAME.match(name):
            raise DataError(f"dataset name {name!r}: use letters, digits, '_' and '-' (it keys the checkpoint)")
        if not (1 <= action_dim <= self.action_dim and 0 <= state_dim <= self.state_dim):
            raise DataError(
                f"dataset {name!r} has {action_dim}-d actions and {state_dim}-d states; the policy "
                f"holds at most {self.action_dim}-d actions and {self.state_dim}-d states"
            )
        normalizer = Normalizer(action_dim, state_dim).to(self._device())
        # straight into _modules: names such as "train" or "eval" would clash with nn.Module
        # attributes in add_module, and members are only ever looked up by name here
        self._modules[name] = normalizer
        return normalizer

    def _device(self) -> torch.device:
        return next(iter(self.buffers()), torch.empty(0)).device

    @torch.no_grad()
    def set_stats(self, per_dataset: Mapping[str, Mapping[str, Mapping[str, object]]]) -> None:
        """Replace every member by the statistics ``{name: stats}`` (each as
        :meth:`Normalizer.set_stats` takes them); widths come from the statistics."""
        if not per_dataset:
            raise DataError("per-dataset normalisation needs the statistics of at least one dataset")
        self.clear()
        for name, stats in per_dataset.items():
            if ACTION_KEY not in stats or "min" not in stats[ACTION_KEY]:
                raise DataError(f"normalisation statistics of dataset {name!r} lack {ACTION_KEY}.min")
            action_dim = len(torch.as_tensor(stats[ACTION_KEY]["min"]).reshape(-1))
            state_dim = 0
            if self.state_dim:
                if STATE_KEY not in stats or "mean" not in stats[STATE_KEY]:
                    raise DataError(f"normalisation statistics of dataset {name!r} lack {STATE_KEY}.mean")
                state_dim = len(torch.as_tensor(stats[STATE_KEY]["mean"]).reshape(-1))
            try:
                self._add(name, action_dim, state_dim).set_stats(stats)
            except DataError as err:
                raise DataError(f"dataset {name!r}: {err}") from None

    def adopt_layout(self, state_dict: Mapping[str, Tensor], prefix: str) -> None:
        """Create the members that ``state_dict`` holds under ``prefix`` and this module lacks,
        sized by their tensors (a checkpoint carries its datasets' names and widths)."""
        for key, value in state_dict.items():
            if key.startswith(prefix) and key.endswith(".action_min"):
                name = key[len(prefix) : -len(".action_min")]
                if name not in self._modules:
                    state = state_dict.get(f"{prefix}{name}.state_mean")
                    self._add(name, value.numel(), 0 if state is None else state.numel())

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: object, **kwargs: object) -> None:
        self.adopt_layout(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ------------------------------------------------------------------- rows
    def rows(self, names: Sequence[str]) -> Tensor:
        """Member index (B,) of each row's dataset name; DataError for an unknown name."""
        index = {n: i for i, n in enumerate(self._modules)}
        try:
            return torch.tensor([index[n] for n in names], dtype=torch.long, device=self._device())
        except KeyError as err:
            raise DataError(
                f"unknown dataset {err.args[0]!r}: this policy normalises {', '.join(self._modules)}"
            ) from None

    def _padded(self, rows: Tensor, width: int, kind: str) -> tuple[Tensor, Tensor, Tensor]:
        """Per row: the member's offset (B, P), scale (B, P) and valid-dimension mask (B, P),
        padded to the policy's width P (offset 0, scale 1, mask False)."""
        full = self.action_dim if kind == "action" else self.state_dim
        offsets, scales, masks = [], [], []
        for normalizer in self._modules.values():
            if kind == "action":
                offset, scale = normalizer._center_scale()
            else:
                offset, scale = normalizer.state_mean, normalizer.state_std.clamp_min(STD_FLOOR)
            n = offset.numel()
            pad = full - n
            offsets.append(F.pad(offset, (0, pad)))
            scales.append(F.pad(scale, (0, pad), value=1.0))
            masks.append(torch.arange(full, device=offset.device) < n)
        mask = torch.stack(masks)[rows]  # (B, P)
        if torch.compiler.is_exporting():  # the graph's input shape fixes the width (see _check_padding)
            return torch.stack(offsets)[rows], torch.stack(scales)[rows], mask
        need = int(mask.sum(-1).max()) if rows.numel() else 0
        if not need <= width <= full:
            expected = f"{need}" if need == full else f"{need} to {full} (the dataset's own, or padded)"
            raise DataError(f"{kind} has width {width}; expected {expected}")
        return torch.stack(offsets)[rows], torch.stack(scales)[rows], mask

    def normalize_action(self, action: Tensor, rows: Tensor) -> tuple[Tensor, Tensor]:
        """Actions (B, H, a) of the datasets ``rows`` (B,) -> normalised (B, H, A), 0 in the
        padding, and the mask (B, A) of each row's own dimensions. ``a`` may be anything from
        the widest row's width to the policy's A."""
        offset, scale, mask = self._padded(rows, action.shape[-1], "action")
        action = _check_padding(F.pad(action, (0, self.action_dim - action.shape[-1])), mask, "action")
        return (action - offset[:, None]) / scale[:, None] * mask[:, None], mask

    def normalize_state(self, state: Tensor, rows: Tensor) -> Tensor:
        """States (B, n_obs, s) of the datasets ``rows`` -> standardised (B, n_obs, S), 0 in the padding."""
        offset, scale, mask = self._padded(rows, state.shape[-1], "state")
        state = _check_padding(F.pad(state, (0, self.state_dim - state.shape[-1])), mask, "state")
        return (state - offset[:, None]) / scale[:, None] * mask[:, None]

    def unnormalize_action(self, action: Tensor, name: str) -> Tensor:
        """Normalised actions (B, H, A) -> dataset ``name``'s units and width (B, H, A_name)."""
        normalizer = self.member(name)
        return normalizer.unnormalize_action(action[..., : normalizer.action_min.numel()])


def _check_padding(values: Tensor, mask: Tensor, kind: str) -> Tensor:
    """``values`` (B, T, P); DataError when a row holds non-zero values beyond its dataset's
    width (mask (B, P)): wider input than the dataset has is padding, never data. Not checked
    while exporting (the exported graph takes states at the dataset's own width: the padding is
    its own zeros, and a graph cannot branch on values)."""
    if torch.compiler.is_exporting():
        return values
    if (values * ~mask[:, None]).any():
        raise DataError(
            f"{kind} holds values beyond its dataset's {kind} width (those columns must be 0 padding); "
            "give each row at its dataset's own width"
        )
    return values
