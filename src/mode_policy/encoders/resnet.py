"""FiLM-conditioned ResNet image encoder, random-shift augmentation, multi-camera encoder.

The backbone's parameter names match torchvision's ``resnet18/34/50`` (and timm's plain
``resnet*`` models, which use the same names), so an ImageNet state dict saved locally
loads with :meth:`FiLMResNet.load_backbone`. FiLM layers (``film.*``) and the output
projection (``proj.*``) are extra names that such files never contain.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import CheckpointError, ConfigError, DataError


class WeightsNotFoundError(CheckpointError, FileNotFoundError):
    """A pretrained weights file (or model folder) named in the config does not exist."""


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# depth -> (block kind, number of blocks in each of the 4 stages)
RESNET_LAYOUTS: dict[int, tuple[str, tuple[int, int, int, int]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}

_WRAPPER_PREFIXES = ("module.", "model.")  # DataParallel / DDP, Lightning and timm wrappers


def _downsample(in_ch: int, out_ch: int, stride: int) -> nn.Sequential:
    """1x1 projection of the skip path: ``downsample.0`` conv, ``downsample.1`` BN."""
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch))


class BasicBlock(nn.Module):
    """Two 3x3 convs (ResNet-18/34)."""

    expansion = 1

    def __init__(self, in_ch: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_ch = planes * self.expansion
        self.conv1 = nn.Conv2d(in_ch, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, out_ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.downsample = _downsample(in_ch, out_ch, stride) if stride != 1 or in_ch != out_ch else None

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        skip = x if self.downsample is None else self.downsample(x)
        return F.relu(out + skip)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carries the stride, "ResNet v1.5"), 1x1 expand (ResNet-50+)."""

    expansion = 4

    def __init__(self, in_ch: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_ch = planes * self.expansion
        self.conv1 = nn.Conv2d(in_ch, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.downsample = _downsample(in_ch, out_ch, stride) if stride != 1 or in_ch != out_ch else None

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        skip = x if self.downsample is None else self.downsample(x)
        return F.relu(out + skip)


def film(x: Tensor, params: Tensor) -> Tensor:
    """Feature-wise affine modulation. x: (B, C, H, W); params: (B, 2C) = [gamma | beta]."""
    gamma, beta = params[:, :, None, None].chunk(2, dim=1)  # (B, C, 1, 1) each
    return x * (1 + gamma) + beta


class FiLMResNet(nn.Module):
    """ResNet backbone with a zero-initialised FiLM layer after each stage, then global
    average pooling and a linear projection: (B, 3, H, W) images, (B, cond_dim) -> (B, out_dim).

    ``width`` is the stem width (64 = standard); stage widths are ``width * (1, 2, 4, 8)``
    (times 4 for bottleneck outputs). Images are uint8 in [0, 255] or float in [0, 1];
    ImageNet normalisation happens inside.
    """

    def __init__(
        self,
        depth: int = 18,
        cond_dim: int = 512,
        out_dim: int = 256,
        width: int = 64,
        pretrained: str | os.PathLike | None = None,
    ) -> None:
        super().__init__()
        if depth not in RESNET_LAYOUTS:
            raise ConfigError(f"unsupported ResNet depth {depth}; choose one of {sorted(RESNET_LAYOUTS)}")
        if width < 1:
            raise ConfigError(f"width must be a positive integer, got {width}")
        kind, blocks = RESNET_LAYOUTS[depth]
        block = BasicBlock if kind == "basic" else Bottleneck
        self.depth, self.width, self.cond_dim, self.out_dim = depth, width, cond_dim, out_dim

        # stem: names as in torchvision
        self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)

        in_ch, stage_channels = width, []
        for i, n in enumerate(blocks):
            planes = width * 2**i
            stride = 1 if i == 0 else 2
            layers = []
            for j in range(n):
                layers.append(block(in_ch, planes, stride if j == 0 else 1))
                in_ch = planes * block.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*layers))
            stage_channels.append(in_ch)
        self.stage_channels: tuple[int, ...] = tuple(stage_channels)
        self.out_channels = in_ch  # pooled feature size before `proj`

        self.film = nn.ModuleList(nn.Linear(cond_dim, 2 * c) for c in stage_channels)
        self.proj = nn.Linear(in_ch, out_dim)

        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)

        self._init_weights()
        if pretrained is not None:
            self.load_backbone(pretrained)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for lin in self.film:  # untrained FiLM is exactly the identity
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    @property
    def stages(self) -> tuple[nn.Sequential, ...]:
        return (self.layer1, self.layer2, self.layer3, self.layer4)

    def normalize(self, images: Tensor) -> Tensor:
        """uint8 [0, 255] or float [0, 1] (B, 3, H, W) -> ImageNet-normalised float."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise DataError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
        if not images.is_floating_point():
            images = images.float() / 255.0
        return (images - self.mean) / self.std

    def forward_features(self, images: Tensor, cond: Tensor) -> Tensor:
        """(B, 3, H, W), (B, cond_dim) -> pooled features (B, out_channels)."""
        if cond.ndim != 2 or cond.shape != (images.shape[0], self.cond_dim):
            raise DataError(f"expected cond of shape ({images.shape[0]}, {self.cond_dim}), got {tuple(cond.shape)}")
        x = self.normalize(images)
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))  # (B, width, H/4, W/4)
        for stage, lin in zip(self.stages, self.film):
            x = film(stage(x), lin(cond))  # (B, C_i, H_i, W_i)
        return x.mean(dim=(2, 3))  # (B, C)

    def forward(self, images: Tensor, cond: Tensor) -> Tensor:
        return self.proj(self.forward_features(images, cond))  # (B, out_dim)

    def backbone_state_dict(self) -> dict[str, Tensor]:
        """The entries a torchvision/timm ResNet file provides (no FiLM, no proj)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith(("film.", "proj."))}

    def load_backbone(self, path: str | os.PathLike) -> None:
        """Load ImageNet ResNet weights (torchvision or timm layout) from a ``.pt/.pth`` or
        ``.safetensors`` file. ``fc.*`` is ignored; FiLM and proj are left untouched."""
        self.load_backbone_state(read_state_dict(path), source=str(path))

    def load_backbone_state(self, state: Mapping[str, Tensor], source: str = "<state dict>") -> None:
        """Validate ``state`` against this backbone, then copy it in. Raises CheckpointError naming
        missing / unexpected keys and shape mismatches."""
        state = _clean_keys(state)
        own = self.backbone_state_dict()
        # old checkpoints lack BN's num_batches_tracked; it does not affect the forward pass
        missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
        unexpected = [k for k in state if k not in own]
        mismatched = [
            f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
            for k, v in own.items()
            if k in state and state[k].shape != v.shape
        ]
        if missing or unexpected or mismatched:
            lines = [
                f"cannot load ResNet weights from {source} into FiLMResNet(depth={self.depth}, width={self.width}):",
                f"  file looks like: {_guess_layout(state)}",
            ]
            for title, items in (
                ("missing keys", missing),
                ("unexpected keys", unexpected),
                ("shape mismatches", mismatched),
            ):
                if items:
                    lines.append(f"  {title} ({len(items)}):")
                    lines += [f"    {item}" for item in items[:8]]
                    if len(items) > 8:
                        lines.append(f"    ... and {len(items) - 8} more")
            raise CheckpointError("\n".join(lines))
        with torch.no_grad():
            for k, v in own.items():
                if k in state:
                    v.copy_(state[k])


def read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read a flat name -> tensor dict from ``.safetensors`` or a torch file (weights only).
    A checkpoint nesting it under ``"state_dict"`` or ``"model"`` is unwrapped."""
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"ResNet weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt file, pickled objects, ...
        raise CheckpointError(f"could not read ResNet weights from {path}: {e}") from e
    for key in ("state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return dict(state)


def _clean_keys(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Strip wrapper prefixes shared by every key, drop the classifier ``fc.*``."""
    state = dict(state)
    stripped = True
    while stripped and state:
        stripped = False
        for prefix in _WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items()}
                stripped = True
    return {k: v for k, v in state.items() if not k.startswith("fc.")}


def _guess_layout(state: Mapping[str, Tensor]) -> str:
    """Best-effort description of the ResNet in a state dict, for error messages."""
    blocks = [0, 0, 0, 0]
    for k in state:
        m = re.match(r"layer([1-4])\.(\d+)\.", k)
        if m:
            i = int(m.group(1)) - 1
            blocks[i] = max(blocks[i], int(m.group(2)) + 1)
    kind = "bottleneck" if any(".conv3." in k for k in state) else "basic"
    depth = next((d for d, layout in RESNET_LAYOUTS.items() if layout == (kind, tuple(blocks))), None)
    stem = state.get("conv1.weight")
    width = stem.shape[0] if isinstance(stem, Tensor) and stem.ndim == 4 else "?"
    name = f"resnet{depth}" if depth else f"unknown ResNet ({kind} blocks {tuple(blocks)})"
    return f"{name}, width {width}"


class RandomShift(nn.Module):
    """Random-shift augmentation: pad by ``pad`` pixels (edge replication) and crop back to
    the original size at a random offset, independently per sample. Identity in eval mode.

    Works on any dtype (uint8 included): the crop is an integer gather with clamped indices,
    which equals replication padding followed by cropping.
    """

    def __init__(self, pad: int = 4) -> None:
        super().__init__()
        if pad < 0:
            raise ConfigError(f"pad must be >= 0, got {pad}")
        self.pad = pad

    def forward(self, images: Tensor) -> Tensor:
        if not self.training or self.pad == 0:
            return images
        B, C, H, W = images.shape
        shift = torch.randint(-self.pad, self.pad + 1, (B, 2), device=images.device)  # (B, [dy, dx])
        rows = (torch.arange(H, device=images.device) + shift[:, :1]).clamp(0, H - 1)  # (B, H)
        cols = (torch.arange(W, device=images.device) + shift[:, 1:]).clamp(0, W - 1)  # (B, W)
        out = images.gather(2, rows[:, None, :, None].expand(B, C, H, W))
        return out.gather(3, cols[:, None, None, :].expand(B, C, H, W))

    def extra_repr(self) -> str:
        return f"pad={self.pad}"


def _module_key(camera: str) -> str:
    """ModuleDict keys may not contain '.'; e.g. 'observation.images.top' -> 'observation_images_top'."""
    return camera.replace(".", "_")


def to_channels_first(images: Tensor) -> Tensor:
    """(B, H, W, 3) -> (B, 3, H, W); (B, 3, H, W) is returned unchanged."""
    if images.ndim != 4:
        raise DataError(f"expected a batch of images (B, 3, H, W) or (B, H, W, 3), got {tuple(images.shape)}")
    if images.shape[1] != 3 and images.shape[-1] == 3:
        images = images.permute(0, 3, 1, 2)
    return images


class ImageEncoder(nn.Module):
    """One FiLM-ResNet per camera, each yielding one token.

    forward(images: {camera: (B, 3, H, W) or (B, H, W, 3)}, cond: (B, cond_dim))
    -> (B, n_cameras, out_dim), cameras in ``camera_keys`` order.
    """

    def __init__(
        self,
        camera_keys: list[str],
        depth: int = 18,
        cond_dim: int = 512,
        out_dim: int = 256,
        width: int = 64,
        pretrained: str | os.PathLike | None = None,
        shift_pad: int = 4,
    ) -> None:
        super().__init__()
        if not camera_keys:
            raise ConfigError("ImageEncoder needs at least one camera key")
        names = [_module_key(k) for k in camera_keys]
        if len(set(names)) != len(names):
            raise ConfigError(f"camera keys collide after replacing '.' with '_': {list(camera_keys)}")
        self.camera_keys = list(camera_keys)
        self.aug = RandomShift(shift_pad)
        self.cameras = nn.ModuleDict({n: FiLMResNet(depth, cond_dim, out_dim, width) for n in names})
        if pretrained is not None:
            state = read_state_dict(pretrained)  # read once, load into every camera
            for net in self.cameras.values():
                net.load_backbone_state(state, source=str(pretrained))

    def forward(self, images: Mapping[str, Tensor], cond: Tensor) -> Tensor:
        tokens = []
        for key in self.camera_keys:
            if key not in images:
                raise DataError(f"missing camera {key!r}; got {sorted(images)}, expected {self.camera_keys}")
            x = self.aug(to_channels_first(images[key]))  # (B, 3, H, W)
            tokens.append(self.cameras[_module_key(key)](x, cond))  # (B, out_dim)
        return torch.stack(tokens, dim=1)  # (B, n_cameras, out_dim)
