"""architecture="official" as a policy: parameter counts of the official code, the official camera
layout, goal-dropout placement, config checks, and fine-tuning a converted folder with frozen routers."""

import dataclasses
import json

import pytest
import torch
from official_parity import FIXTURE, official_checkpoint
from safetensors.torch import save_file
from timm_layout import TIMM_RESNET34_PARAMS, TIMM_RESNET50_PARAMS, camera_shapes

from mode_policy.cli import main as cli
from mode_policy.encoders.resnet import FiLMResNet
from mode_policy.errors import ConfigError
from mode_policy.model.config import MoDEConfig, get_preset
from mode_policy.official.convert import convert_official
from mode_policy.official.vision import OfficialFiLMResNet, OfficialImageEncoder
from mode_policy.policy import MoDEPolicy

# Counted with the official code (intuitive-robots/MoDE_Diffusion_Policy @ 72cf8a2) at the
# paper-official configuration (obs_dim=2048, goal_dim=512, action_dim=7, embed_dim=1024,
# n_layers=12, n_heads=8, action_seq_len=10, 4 experts, top-2):
#   sum(p.numel() for p in MoDeDiT(...).parameters())          = 685,853,751 (shared expert: 685,829,163)
#   of which tok_emb + goal_emb (our image/goal projections)   =   2,621,440
#   one routed expert: sum(p.numel() for p in blocks[0].experts["expert_0"].parameters()) = 12,591,104
#   FiLMLayer(C, 512) for C in (256, 512, 1024, 2048), summed  =   3,939,840 per camera
#   timm resnet50(num_classes=0) (timm needs torchvision, absent here: its published count) = 23,508,032
# Policy total = MoDeDiT + 2 cameras * (23,508,032 + 3,939,840); active = total - 12 layers * 2 idle experts.
OFFICIAL_MODEDIT = {False: 685_853_751, True: 685_829_163}
OFFICIAL_INPUT_PROJECTIONS = 2_621_440
OFFICIAL_EXPERT = 12_591_104
OFFICIAL_FILM = 3_939_840


def official_counts(shared: bool) -> dict:
    total = OFFICIAL_MODEDIT[shared] + 2 * (TIMM_RESNET50_PARAMS + OFFICIAL_FILM)
    idle = 12 * 2 * OFFICIAL_EXPERT
    transformer = OFFICIAL_MODEDIT[shared] - OFFICIAL_INPUT_PROJECTIONS
    return {
        "total_params": total,
        "active_params": total - idle,
        "transformer": {"total": transformer, "active": transformer - idle},
    }


def test_info_paper_official_matches_the_official_counts(capsys):
    assert cli(["info", "--preset", "paper-official", "--json"]) == 0
    counts = json.loads(capsys.readouterr().out)
    assert counts == {"preset": "paper-official", **official_counts(shared=False)}
    assert counts["total_params"] == 740_749_495 and counts["active_params"] == 438_562_999


def test_shared_expert_counts_match_the_official_counts():
    with torch.device("meta"):
        policy = MoDEPolicy(get_preset("paper-official", shared_expert=True))
    assert policy.parameter_counts() == official_counts(shared=True)


@pytest.mark.parametrize("depth, params", [(50, TIMM_RESNET50_PARAMS), (34, TIMM_RESNET34_PARAMS)])
def test_camera_has_the_official_names_and_shapes(depth, params):
    with torch.device("meta"):
        camera = OfficialFiLMResNet(depth, cond_dim=512)
    ours = {k: tuple(v.shape) for k, v in camera.state_dict().items()}
    assert ours == camera_shapes(depth, 64, 512)
    assert sum(p.numel() for p in camera.resnet.parameters()) == params


def test_camera_trunk_and_film_compute_the_published_resnet():
    """Same weights as the library's FiLM-ResNet-50 (torchvision layout): same features, FiLM included."""
    torch.manual_seed(0)
    reference = FiLMResNet(depth=50, cond_dim=6, out_dim=8, width=4).eval()
    with torch.no_grad():
        for lin in reference.film:
            lin.weight.normal_(std=0.1)
            lin.bias.normal_(std=0.1)
    camera = OfficialFiLMResNet(50, cond_dim=6, width=4).eval()
    camera.resnet.load_state_dict(reference.backbone_state_dict())
    with torch.no_grad():
        for ours, theirs, c in zip(camera.films, reference.film, reference.stage_channels):
            ours.gamma.weight.copy_(theirs.weight[:c]), ours.gamma.bias.copy_(theirs.bias[:c])
            ours.beta.weight.copy_(theirs.weight[c:]), ours.beta.bias.copy_(theirs.bias[c:])
    images, goal = torch.rand(2, 3, 40, 40), torch.randn(2, 6)
    with torch.no_grad():
        expected = reference.forward_features(images, goal)
        got = camera(reference.normalize(images), goal)
    assert got.shape == (2, 4 * 32)
    torch.testing.assert_close(got, expected)


def tiny_official(**overrides) -> MoDEConfig:
    return get_preset(
        "paper-official",
        n_layers=2,
        d_model=16,
        n_heads=2,
        goal_dim=8,
        vision_width=2,
        horizon=4,
        n_action_steps=4,
        image_shift_pad=0,
        **overrides,
    )


def image_batch(cfg: MoDEConfig, b: int = 3) -> dict:
    batch = {key: torch.randint(0, 256, (b, 24, 24, 3), dtype=torch.uint8) for key in cfg.image_keys}
    return batch | {"goal": torch.randn(b, cfg.goal_dim), "action": torch.rand(b, cfg.horizon, cfg.action_dim) * 2 - 1}


def test_goal_dropout_zeroes_the_goal_token_only():
    policy = MoDEPolicy(tiny_official(goal_dropout=0.5)).train()
    batch = image_batch(policy.config)
    with torch.no_grad():
        for camera in policy.image_encoder.cameras.values():
            for film in camera.films:
                film.gamma.weight.normal_()  # the goal now changes the camera tokens
        torch.manual_seed(5)
        dropped = policy.encode_condition(batch)
        torch.manual_seed(5)
        keep = 1 - torch.bernoulli(torch.full_like(batch["goal"], 0.5))  # the official mask's draws
        twin = MoDEPolicy(dataclasses.replace(policy.config, goal_dropout=0.0)).train()
        twin.load_state_dict(policy.state_dict())
        clean = twin.encode_condition(batch)
        torch.testing.assert_close(dropped[:, 0], policy.goal_proj(batch["goal"] * keep))  # zeroed, not rescaled
    assert 0 < keep.mean() < 1
    torch.testing.assert_close(dropped[:, 1:], clean[:, 1:])  # FiLM saw the clean goal


def test_training_routes_every_token_and_sampling_runs():
    cfg = tiny_official()
    policy = MoDEPolicy(cfg)
    batch = image_batch(cfg)
    loss, info = policy(batch)
    loss.backward()
    assert info["expert_usage"].shape == (cfg.n_layers, cfg.num_experts)
    _, routings = policy.denoiser.loss(batch["action"], policy.encode_condition(batch))
    n_tokens = 2 + len(cfg.image_keys) + cfg.horizon  # noise, goal, cameras, actions
    assert [r.index.shape for r in routings] == [(3 * n_tokens, cfg.top_k)] * cfg.n_layers  # one draw per token
    assert policy.denoiser.net.gripper_embed.grad is None  # declared by the official network, never used
    policy.eval()
    actions = policy.predict_action_chunk({k: v for k, v in batch.items() if k != "action"})
    assert actions.shape == (3, cfg.horizon, cfg.action_dim) and torch.isfinite(actions).all()


@pytest.mark.parametrize(
    "field, value",
    [
        ("routing", "token"),
        ("state_dim", 4),
        ("image_keys", []),
        ("n_obs_steps", 2),
        ("causal", False),
        ("vision_depth", 18),
        ("mlp_ratio", 2),
    ],
)
def test_official_config_rejects_what_the_official_network_cannot_do(field, value):
    with pytest.raises(ConfigError, match=f"architecture='official': {field}="):
        tiny_official(**{field: value})


def test_default_architecture_is_unchanged():
    cfg = MoDEConfig()
    assert cfg.architecture == "mode"
    policy = MoDEPolicy(get_preset("tiny", state_dim=3, goal_dim=4))
    assert policy.goal_proj.bias is not None and policy.denoiser.use_expert_cache


def test_converted_folder_fine_tunes_with_frozen_routers(tmp_path):
    official = official_checkpoint(FIXTURE / "shared")
    save_file(official, str(tmp_path / "model_cleaned.safetensors"))
    convert_official(tmp_path / "model_cleaned.safetensors", tmp_path / "model")
    pretrained = MoDEPolicy.from_pretrained(tmp_path / "model")
    cfg = dataclasses.replace(pretrained.config, freeze_router=True, image_shift_pad=2)
    policy = MoDEPolicy(cfg)
    policy.load_weights(pretrained.state_dict())
    policy.train()
    routers = {k: v.clone() for k, v in policy.state_dict().items() if ".router." in k}
    experts = policy.denoiser.net.blocks[0].mlp.experts.w_in.detach().clone()
    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    for _ in range(3):
        loss, info = policy(image_batch(cfg, b=4))
        assert torch.isfinite(loss) and torch.equal(loss, info["diffusion_loss"])  # balancing loss dropped
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    state = policy.state_dict()
    assert all(torch.equal(state[k], v) for k, v in routers.items())
    assert not torch.equal(policy.denoiser.net.blocks[0].mlp.experts.w_in, experts)


def test_image_encoder_uses_clip_pixel_statistics():
    encoder = OfficialImageEncoder(tiny_official())
    grey = torch.full((1, 3, 2, 2), 128, dtype=torch.uint8)
    torch.testing.assert_close(encoder.normalize(grey), encoder.normalize(grey.float() / 255))
    assert torch.allclose(
        encoder.normalize(torch.zeros(1, 3, 1, 1)).flatten(),
        -torch.tensor([0.48145466, 0.4578275, 0.40821073]) / torch.tensor([0.26862954, 0.26130258, 0.27577711]),
    )
