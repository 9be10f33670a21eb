"""The official camera encoders' state-dict layout, written out from the published architectures
independently of the code under test: timm's ``resnet34`` / ``resnet50`` with ``num_classes=0``
(the names are torchvision's, without ``fc``) under ``resnet.``, and the official FiLM layers
``film{1..4}.gamma`` / ``.beta`` (``Linear(cond_dim, C_i)`` each)."""

from __future__ import annotations

import torch

STAGE_BLOCKS = {34: (3, 4, 6, 3), 50: (3, 4, 6, 3)}
TIMM_RESNET50_PARAMS = 23_508_032  # timm/torchvision resnet50: 25,557,032 parameters, minus fc (2048*1000 + 1000)
TIMM_RESNET34_PARAMS = 21_284_672  # timm/torchvision resnet34: 21,797,672 parameters, minus fc (512*1000 + 1000)


def _bn(name: str, c: int) -> dict[str, tuple[int, ...]]:
    return {
        f"{name}.weight": (c,),
        f"{name}.bias": (c,),
        f"{name}.running_mean": (c,),
        f"{name}.running_var": (c,),
        f"{name}.num_batches_tracked": (),
    }


def resnet_shapes(depth: int = 50, width: int = 64) -> dict[str, tuple[int, ...]]:
    """name -> shape of a timm ResNet trunk (stem width ``width``; 64 is the published one)."""
    shapes = {"conv1.weight": (width, 3, 7, 7), **_bn("bn1", width)}
    bottleneck = depth >= 50
    in_ch = width
    for stage, n in enumerate(STAGE_BLOCKS[depth]):
        planes = width * 2**stage
        out_ch = planes * (4 if bottleneck else 1)
        for j in range(n):
            p = f"layer{stage + 1}.{j}."
            if bottleneck:
                shapes |= {
                    p + "conv1.weight": (planes, in_ch, 1, 1),
                    **_bn(p + "bn1", planes),
                    p + "conv2.weight": (planes, planes, 3, 3),
                    **_bn(p + "bn2", planes),
                    p + "conv3.weight": (out_ch, planes, 1, 1),
                    **_bn(p + "bn3", out_ch),
                }
            else:
                shapes |= {
                    p + "conv1.weight": (planes, in_ch, 3, 3),
                    **_bn(p + "bn1", planes),
                    p + "conv2.weight": (planes, planes, 3, 3),
                    **_bn(p + "bn2", planes),
                }
            if j == 0 and (stage > 0 or in_ch != out_ch):
                shapes |= {p + "downsample.0.weight": (out_ch, in_ch, 1, 1), **_bn(p + "downsample.1", out_ch)}
            in_ch = out_ch
    return shapes


def camera_shapes(depth: int = 50, width: int = 64, cond_dim: int = 512) -> dict[str, tuple[int, ...]]:
    """name -> shape of one official camera (``FiLMResNet50Policy`` / ``FiLMResNet34Policy``)."""
    shapes = {f"resnet.{k}": v for k, v in resnet_shapes(depth, width).items()}
    mult = 4 if depth >= 50 else 1
    for i in range(4):
        c = width * 2**i * mult
        for part in ("gamma", "beta"):
            shapes |= {f"film{i + 1}.{part}.weight": (c, cond_dim), f"film{i + 1}.{part}.bias": (c,)}
    return shapes


def random_camera(prefix: str, depth: int, width: int, cond_dim: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Random official-named tensors of one camera under ``prefix`` (finite, positive BN variances)."""
    out = {}
    for name, shape in camera_shapes(depth, width, cond_dim).items():
        if name.endswith("num_batches_tracked"):
            out[prefix + name] = torch.tensor(7)
        elif name.endswith("running_var"):
            out[prefix + name] = 0.5 + torch.rand(shape, generator=gen)
        else:
            fan_in = max(1, int(torch.tensor(shape[1:]).prod())) if len(shape) > 1 else 16
            out[prefix + name] = torch.randn(shape, generator=gen) / fan_in**0.5
    return out
