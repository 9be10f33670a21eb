"""Tests for the FiLM-ResNet image encoder, its weight loading and the shift augmentation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from mode_policy.encoders.resnet import FiLMResNet, ImageEncoder, RandomShift
from mode_policy.errors import DataError

# ---------------------------------------------------------------------------
# torchvision's naming pattern, written out independently of the module under test


def _bn(shapes: dict, name: str, c: int) -> None:
    for p in ("weight", "bias", "running_mean", "running_var"):
        shapes[f"{name}.{p}"] = (c,)
    shapes[f"{name}.num_batches_tracked"] = ()


def torchvision_resnet18_shapes() -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {"conv1.weight": (64, 3, 7, 7)}
    _bn(shapes, "bn1", 64)
    in_ch = 64
    for stage, planes in zip((1, 2, 3, 4), (64, 128, 256, 512)):
        for block in (0, 1):
            p = f"layer{stage}.{block}"
            cin = in_ch if block == 0 else planes
            shapes[f"{p}.conv1.weight"] = (planes, cin, 3, 3)
            _bn(shapes, f"{p}.bn1", planes)
            shapes[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
            _bn(shapes, f"{p}.bn2", planes)
            if block == 0 and stage > 1:
                shapes[f"{p}.downsample.0.weight"] = (planes, cin, 1, 1)
                _bn(shapes, f"{p}.downsample.1", planes)
        in_ch = planes
    shapes["fc.weight"], shapes["fc.bias"] = (1000, 512), (1000,)
    return shapes


def torchvision_resnet50_shapes() -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {"conv1.weight": (64, 3, 7, 7)}
    _bn(shapes, "bn1", 64)
    in_ch = 64
    for stage, planes, n in zip((1, 2, 3, 4), (64, 128, 256, 512), (3, 4, 6, 3)):
        for block in range(n):
            p = f"layer{stage}.{block}"
            cin = in_ch if block == 0 else 4 * planes
            shapes[f"{p}.conv1.weight"] = (planes, cin, 1, 1)
            _bn(shapes, f"{p}.bn1", planes)
            shapes[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
            _bn(shapes, f"{p}.bn2", planes)
            shapes[f"{p}.conv3.weight"] = (4 * planes, planes, 1, 1)
            _bn(shapes, f"{p}.bn3", 4 * planes)
            if block == 0:
                shapes[f"{p}.downsample.0.weight"] = (4 * planes, cin, 1, 1)
                _bn(shapes, f"{p}.downsample.1", 4 * planes)
        in_ch = 4 * planes
    shapes["fc.weight"], shapes["fc.bias"] = (1000, 2048), (1000,)
    return shapes


def _n_params(shapes: dict[str, tuple[int, ...]]) -> int:
    learnable = [s for k, s in shapes.items() if k.endswith(("weight", "bias"))]
    return sum(torch.Size(s).numel() for s in learnable)


def random_state(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = {}
    for k, s in shapes.items():
        if k.endswith("num_batches_tracked"):
            state[k] = torch.tensor(1234)
        elif k.endswith("running_var"):
            state[k] = torch.rand(s, generator=g) + 0.5
        else:
            state[k] = torch.randn(s, generator=g) * 0.05
    return state


def test_reference_patterns_match_torchvision_counts():
    # torchvision: resnet18 has 122 state-dict entries / 11,689,512 params; resnet50 320 / 25,557,032
    r18, r50 = torchvision_resnet18_shapes(), torchvision_resnet50_shapes()
    assert (len(r18), _n_params(r18)) == (122, 11_689_512)
    assert (len(r50), _n_params(r50)) == (320, 25_557_032)


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory):
    """A torchvision-layout resnet18 file, wrapped in a DDP 'module.' prefix, with fc."""
    state = random_state(torchvision_resnet18_shapes())
    path = tmp_path_factory.mktemp("weights") / "resnet18-random.pth"
    torch.save({f"module.{k}": v for k, v in state.items()}, path)
    return path, state


# ---------------------------------------------------------------------------
# FiLM


def _forward_without_film(model: FiLMResNet, images: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    x = (images - mean) / std
    x = model.maxpool(F.relu(model.bn1(model.conv1(x))))
    for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
        x = layer(x)
    return model.proj(x.mean(dim=(2, 3)))


@pytest.mark.parametrize("depth", [18, 50])
def test_film_is_identity_at_init(depth):
    torch.manual_seed(0)
    model = FiLMResNet(depth=depth, cond_dim=6, out_dim=10, width=8).eval()
    images, cond = torch.rand(2, 3, 32, 32), torch.randn(2, 6)
    with torch.no_grad():
        out = model(images, cond)
        ref = _forward_without_film(model, images)
    assert out.shape == (2, 10)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)


def test_goal_changes_features_only_when_film_is_nonzero():
    torch.manual_seed(0)
    model = FiLMResNet(depth=18, cond_dim=6, out_dim=10, width=8).eval()
    images, cond_a, cond_b = torch.rand(2, 3, 32, 32), torch.randn(2, 6), torch.randn(2, 6)
    with torch.no_grad():
        assert torch.equal(model(images, cond_a), model(images, cond_b))
        for lin in model.film:
            torch.nn.init.normal_(lin.weight, std=0.2)
        assert not torch.allclose(model(images, cond_a), model(images, cond_b), atol=1e-4)


def test_zero_film_still_receives_gradients():
    model = FiLMResNet(depth=18, cond_dim=6, out_dim=10, width=8)
    model(torch.rand(2, 3, 32, 32), torch.randn(2, 6)).square().sum().backward()
    assert all(lin.weight.grad.abs().sum() > 0 for lin in model.film)


def test_uint8_and_float_inputs_agree():
    model = FiLMResNet(depth=18, cond_dim=6, out_dim=10, width=8).eval()
    u8 = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    cond = torch.randn(2, 6)
    with torch.no_grad():
        torch.testing.assert_close(model(u8, cond), model(u8.float() / 255, cond))


def test_normalisation_buffers_are_not_saved():
    sd = FiLMResNet(depth=18, cond_dim=6, out_dim=10, width=8).state_dict()
    assert "mean" not in sd and "std" not in sd
    assert {"film.0.weight", "film.3.bias", "proj.weight"} <= set(sd)


# ---------------------------------------------------------------------------
# weight loading


def test_standard_resnet18_param_count():
    model = FiLMResNet(depth=18, cond_dim=512, out_dim=1024, width=64)
    backbone = sum(p.numel() for k, p in model.named_parameters() if not k.startswith(("film.", "proj.")))
    assert backbone == 11_176_512  # torchvision resnet18 (11,689,512) minus fc (513,000)


def test_load_torchvision_resnet18(resnet18_file):
    path, state = resnet18_file
    model = FiLMResNet(depth=18, cond_dim=6, out_dim=10, width=64, pretrained=path)
    own = model.state_dict()
    expected = {k: v for k, v in torchvision_resnet18_shapes().items() if not k.startswith("fc.")}
    assert {k: tuple(v.shape) for k, v in model.backbone_state_dict().items()} == expected
    for k in (
        "conv1.weight",
        "layer4.1.conv2.weight",
        "layer2.0.downsample.1.running_var",
        "layer3.0.bn1.num_batches_tracked",
    ):
        assert torch.equal(own[k], state[k]), k
    assert all(torch.count_nonzero(lin.weight) == 0 for lin in model.film)  # FiLM untouched
    with torch.no_grad():
        assert model.eval()(torch.rand(1, 3, 32, 32), torch.randn(1, 6)).shape == (1, 10)


def test_load_resnet50_safetensors_without_num_batches_tracked(tmp_path):
    state = random_state(torchvision_resnet50_shapes())
    # timm-style file: same names, no BN counters, no prefix
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "resnet50.safetensors"
    save_file(state, str(path))
    model = FiLMResNet(depth=50, cond_dim=6, out_dim=10, width=64, pretrained=path)
    backbone = sum(p.numel() for k, p in model.named_parameters() if not k.startswith(("film.", "proj.")))
    assert backbone == 23_508_032  # torchvision resnet50 (25,557,032) minus fc (2,049,000)
    own = model.state_dict()
    for k in ("layer1.0.downsample.0.weight", "layer3.5.conv3.weight", "layer4.2.bn3.running_mean"):
        assert torch.equal(own[k], state[k]), k


def test_wrong_depth_raises_with_keys_and_file(resnet18_file, tmp_path):
    path, _ = resnet18_file
    with pytest.raises(ValueError) as err:
        FiLMResNet(depth=34, cond_dim=6, out_dim=10, width=64, pretrained=path)
    msg = str(err.value)
    assert str(path) in msg and "missing keys" in msg and "layer1.2.conv1.weight" in msg
    assert "resnet18, width 64" in msg

    # a bottleneck file into a basic-block model
    r50 = {k: torch.zeros(s) for k, s in torchvision_resnet50_shapes().items() if k.startswith(("conv1", "layer1.0"))}
    small = tmp_path / "r50-partial.pt"
    torch.save(r50, small)
    with pytest.raises(ValueError, match=r"unexpected keys \(\d+\):\n.*layer1\.0\.conv3\.weight"):
        FiLMResNet(depth=18, cond_dim=6, out_dim=10, width=8).load_backbone(small)


def test_wrong_width_raises_with_shapes(resnet18_file):
    path, _ = resnet18_file
    with pytest.raises(ValueError) as err:
        FiLMResNet(depth=18, cond_dim=6, out_dim=10, width=32, pretrained=path)
    msg = str(err.value)
    assert str(path) in msg and "shape mismatches" in msg
    assert "conv1.weight: file (64, 3, 7, 7) vs model (32, 3, 7, 7)" in msg


def test_not_a_state_dict(tmp_path):
    path = tmp_path / "bad.pt"
    torch.save({"epoch": 3}, path)
    with pytest.raises(ValueError, match="state dict"):
        FiLMResNet(depth=18, width=8).load_backbone(path)


# ---------------------------------------------------------------------------
# augmentation


def test_random_shift_identity_in_eval_and_shifts_in_train():
    torch.manual_seed(0)
    pad, images = 2, torch.randint(0, 256, (8, 3, 12, 10), dtype=torch.uint8)
    aug = RandomShift(pad).eval()
    assert aug(images) is images

    out = aug.train()(images)
    assert out.shape == images.shape and out.dtype == torch.uint8
    # every sample is some crop of its replication-padded self, and the shifts differ per sample
    padded = F.pad(images.float(), (pad,) * 4, mode="replicate")
    offsets = []
    for b in range(len(images)):
        hits = [
            (dy, dx)
            for dy in range(2 * pad + 1)
            for dx in range(2 * pad + 1)
            if torch.equal(padded[b, :, dy : dy + 12, dx : dx + 10], out[b].float())
        ]
        assert hits, f"sample {b} is not a shifted crop"
        offsets.append(hits[0])
    assert len(set(offsets)) > 1
    assert not torch.equal(out, images)


# ---------------------------------------------------------------------------
# multi-camera encoder


def test_image_encoder_tokens_and_channel_last_uint8():
    torch.manual_seed(0)
    enc = ImageEncoder(["observation.images.top", "wrist"], depth=18, cond_dim=6, out_dim=16, width=8, shift_pad=2)
    assert set(enc.cameras) == {"observation_images_top", "wrist"}
    images = {
        "observation.images.top": torch.randint(0, 256, (2, 24, 32, 3), dtype=torch.uint8),  # (B, H, W, 3)
        "wrist": torch.rand(2, 3, 32, 32),
    }
    cond = torch.randn(2, 6)
    assert enc.train()(images, cond).shape == (2, 2, 16)
    enc.eval()
    with torch.no_grad():
        tokens = enc(images, cond)
        top = enc.cameras["observation_images_top"](images["observation.images.top"].permute(0, 3, 1, 2), cond)
    assert tokens.shape == (2, 2, 16)
    torch.testing.assert_close(tokens[:, 0], top)

    with pytest.raises(DataError, match="wrist"):
        enc({"observation.images.top": images["observation.images.top"]}, cond)


def test_image_encoder_rejects_colliding_keys():
    with pytest.raises(ValueError, match="collide"):
        ImageEncoder(["a.b", "a_b"], width=8)
