"""The official camera encoder: a ResNet with FiLM after every stage, one per camera, and one
projection of the pooled features shared by all cameras.

Per camera (the official ``FiLMResNet50Policy`` / ``FiLMResNet34Policy``)::

    x = maxpool(relu(bn1(conv1(image))))
    x = FiLM_i(layer_i(x), goal)  for i = 1..4      # (1 + gamma(goal)) * x + beta(goal), zero-init
    feature = mean_hw(x)                            # (B, 2048) for ResNet-50

Parameter names are the official ones below each camera: the trunk under ``resnet.`` with
timm's (= torchvision's) ResNet names, ``film{1..4}.gamma`` / ``.beta``. Images are uint8
[0, 255] or float [0, 1] and are normalised here with CLIP's pixel statistics (the
official data transforms); random-shift augmentation runs first, in training only.

With ``config.image_features`` the policy holds no camera trunks: each camera arrives as its
pooled feature vector (B, F), what ``FiLMResNet50Policy`` returns in the official code (the
``state_images`` of ``MoDEAgent.embed_visual_obs``, one row per camera), and only the shared
projection runs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from ..encoders.resnet import RESNET_LAYOUTS, BasicBlock, Bottleneck, RandomShift, read_state_dict, to_channels_first
from ..errors import CheckpointError, DataError
from ..model.config import MoDEConfig
from .spec import vision_feature_dim

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_WRAPPER_PREFIXES = ("module.", "model.", "resnet.")


class ResNetTrunk(nn.Module):
    """A ResNet without its classifier (timm ``num_classes=0``): stem and four stages, timm names."""

    def __init__(self, depth: int, width: int = 64) -> None:
        super().__init__()
        kind, blocks = RESNET_LAYOUTS[depth]
        block = BasicBlock if kind == "basic" else Bottleneck
        self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        in_ch, channels = width, []
        for i, n in enumerate(blocks):
            planes, stride = width * 2**i, 1 if i == 0 else 2
            stage = []
            for j in range(n):
                stage.append(block(in_ch, planes, stride if j == 0 else 1))
                in_ch = planes * block.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*stage))
            channels.append(in_ch)
        self.stage_channels = tuple(channels)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    @property
    def stages(self) -> tuple[nn.Sequential, ...]:
        return (self.layer1, self.layer2, self.layer3, self.layer4)

    def stem(self, x: Tensor) -> Tensor:
        return self.maxpool(torch.relu(self.bn1(self.conv1(x))))  # (B, width, H/4, W/4)

    def load_imagenet(self, path: str | os.PathLike) -> None:
        """Copy a timm/torchvision ResNet file (``fc.*`` ignored) into this trunk; CheckpointError
        naming missing or unexpected keys (a missing ``num_batches_tracked`` is fine)."""
        state = dict(read_state_dict(path))
        for prefix in _WRAPPER_PREFIXES:
            if state and all(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items()}
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        own = self.state_dict()
        missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
        unexpected = [k for k in state if k not in own]
        shapes = [
            f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
            for k, v in own.items()
            if k in state and state[k].shape != v.shape
        ]
        if missing or unexpected or shapes:
            raise CheckpointError(
                f"{path} does not fit this ResNet: missing {missing[:8]}, "
                f"unexpected {unexpected[:8]}, shapes {shapes[:8]}"
            )
        self.load_state_dict(state, strict=False)


class FiLMLayer(nn.Module):
    """``(1 + gamma(c)) * x + beta(c)`` per channel; zero-initialised (the identity)."""

    def __init__(self, channels: int, cond_dim: int) -> None:
        super().__init__()
        self.gamma = nn.Linear(cond_dim, channels)
        self.beta = nn.Linear(cond_dim, channels)
        for linear in (self.gamma, self.beta):
            nn.init.zeros_(linear.weight)
            nn.init.zeros_(linear.bias)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        """x: (B, C, H, W); cond: (B, cond_dim)."""
        return (1 + self.gamma(cond)[:, :, None, None]) * x + self.beta(cond)[:, :, None, None]


class OfficialFiLMResNet(nn.Module):
    """One camera: normalised images (B, 3, H, W) and goals (B, cond_dim) -> pooled features (B, C)."""

    def __init__(self, depth: int, cond_dim: int, width: int = 64) -> None:
        super().__init__()
        self.resnet = ResNetTrunk(depth, width)
        for i, channels in enumerate(self.resnet.stage_channels):
            self.add_module(f"film{i + 1}", FiLMLayer(channels, cond_dim))

    @property
    def films(self) -> tuple[FiLMLayer, ...]:
        return (self.film1, self.film2, self.film3, self.film4)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        x = self.resnet.stem(x)
        for stage, film in zip(self.resnet.stages, self.films):
            x = film(stage(x), cond)  # (B, C_i, H_i, W_i)
        return x.mean(dim=(2, 3))  # (B, C)


class OfficialImageEncoder(nn.Module):
    """One :class:`OfficialFiLMResNet` per camera and the shared ``proj`` (the official ``tok_emb``).

    forward(images: {camera: (B, 3, H, W) or (B, H, W, 3)}, goal: (B, goal_dim)) -> (B, n_cameras, d),
    cameras in ``config.image_keys`` order (the official order is static, then gripper). With
    ``config.image_features`` the cameras' values are pooled features (B, F) and no trunk runs.
    """

    def __init__(self, config: MoDEConfig) -> None:
        super().__init__()
        self.camera_keys = list(config.image_keys)
        self.takes_features = config.image_features
        self.feature_dim = vision_feature_dim(config.vision_depth, config.vision_width)
        self.aug = RandomShift(config.image_shift_pad)
        names = [] if self.takes_features else [key.replace(".", "_") for key in self.camera_keys]
        self.cameras = nn.ModuleDict(
            {name: OfficialFiLMResNet(config.vision_depth, config.goal_dim, config.vision_width) for name in names}
        )
        self.proj = nn.Linear(self.feature_dim, config.d_model, bias=False)
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)
        if config.vision_pretrained:
            for camera in self.cameras.values():
                camera.resnet.load_imagenet(config.vision_pretrained)

    def normalize(self, images: Tensor) -> Tensor:
        """uint8 [0, 255] or float [0, 1] (B, 3, H, W) -> CLIP-normalised float."""
        if not images.is_floating_point():
            images = images.float() / 255.0
        return (images.to(self.mean.dtype) - self.mean) / self.std

    def features(self, images: Mapping[str, Tensor], goal: Tensor) -> Tensor:
        """Pooled features of every camera: (B, n_cameras, C)."""
        out = []
        for key in self.camera_keys:
            if key not in images:
                raise DataError(f"missing camera {key!r}; got {sorted(images)}, expected {self.camera_keys}")
            if self.takes_features:
                feature = images[key]
                if feature.dim() != 2 or feature.shape[-1] != self.feature_dim or not feature.is_floating_point():
                    raise DataError(
                        f"{key}: image features of shape {tuple(feature.shape)} ({feature.dtype}), "
                        f"expected float (B, {self.feature_dim})"
                    )
                out.append(feature.to(self.proj.weight.dtype))  # (B, C)
                continue
            x = self.normalize(self.aug(to_channels_first(images[key])))  # (B, 3, H, W)
            out.append(self.cameras[key.replace(".", "_")](x, goal))  # (B, C)
        return torch.stack(out, dim=1)

    def forward(self, images: Mapping[str, Tensor], goal: Tensor) -> Tensor:
        return self.proj(self.features(images, goal))  # (B, n_cameras, d)
