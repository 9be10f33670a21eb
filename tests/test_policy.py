import json

import pytest
import torch

from mode_policy.errors import CheckpointError, ConfigError, DataError
from mode_policy.model.config import MoDEConfig, get_preset
from mode_policy.model.diffusion import SamplingSettings
from mode_policy.policy import LEGACY_PREFIXES, MoDEPolicy
from mode_policy.training.ema import EMA


def make_policy(**kw) -> MoDEPolicy:
    cfg = get_preset("tiny", state_dim=5, action_dim=3, goal_dim=8, **kw)
    policy = MoDEPolicy(cfg)
    # Non-trivial weights everywhere (the output head starts at zero)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    policy.set_normalization(
        {
            "action": {"min": [-2.0, 0.0, -1.0], "max": [2.0, 1.0, 3.0]},
            "observation.state": {"mean": [0.1] * 5, "std": [2.0] * 5},
        }
    )
    return policy


def obs_batch(b: int) -> dict:
    return {"observation.state": torch.randn(b, 5), "goal": torch.randn(b, 8)}


def test_save_load_predict_identical(tmp_path):
    policy = make_policy().eval()
    batch, noise = obs_batch(3), torch.randn(3, 4, 3)
    before = policy.predict_action_chunk(batch, noise=noise)
    policy.save_pretrained(tmp_path / "ckpt")
    assert {p.name for p in (tmp_path / "ckpt").iterdir()} == {"config.json", "model.safetensors"}
    loaded = MoDEPolicy.from_pretrained(tmp_path / "ckpt")
    assert not loaded.training  # ready to act: dropout off, expert cache on, as a fresh .eval() policy
    after = loaded.predict_action_chunk(batch, noise=noise)
    assert torch.equal(before, after)
    # actions come back in the original units (inside the min-max range)
    lo, hi = torch.tensor([-2.0, 0.0, -1.0]), torch.tensor([2.0, 1.0, 3.0])
    assert (after >= lo - 1e-6).all() and (after <= hi + 1e-6).all()


def test_checkpoint_mismatch_names_the_problem(tmp_path):
    make_policy().save_pretrained(tmp_path / "a")
    cfg_path = tmp_path / "a" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["d_model"] = 32
    cfg["n_heads"] = 2
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"shape mismatch: .*checkpoint \(.*64.*\) vs model"):
        MoDEPolicy.from_pretrained(tmp_path / "a")
    cfg["d_model"], cfg["n_layers"] = 64, 3
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"missing tensors: denoiser\.net\.blocks\.2"):
        MoDEPolicy.from_pretrained(tmp_path / "a")
    cfg["n_layers"], cfg["not_a_field"] = 2, 1
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="unknown MoDEConfig field.*not_a_field"):
        MoDEPolicy.from_pretrained(tmp_path / "a")


def to_legacy_names(state: dict) -> dict:
    """A state dict as checkpoints written before the EDM denoiser module named it."""
    inverse = {new: old for old, new in LEGACY_PREFIXES.items()}
    out = {}
    for key, value in state.items():
        new = next((n for n in inverse if key.startswith(n)), None)
        out[inverse[new] + key[len(new) :] if new else key] = value
    return out


def test_checkpoint_with_legacy_key_names_loads(tmp_path):
    from safetensors.torch import load_file, save_file

    policy = make_policy().eval()
    policy.save_pretrained(tmp_path / "old")
    weights = tmp_path / "old" / "model.safetensors"
    legacy = to_legacy_names(load_file(str(weights)))
    assert "transformer.sigma_embed.weight" in legacy and not any(k.startswith("denoiser.") for k in legacy)
    save_file(legacy, str(weights))
    batch, noise = obs_batch(2), torch.randn(2, 4, 3)
    loaded = MoDEPolicy.from_pretrained(tmp_path / "old").eval()
    assert torch.equal(loaded.predict_action_chunk(batch, noise=noise), policy.predict_action_chunk(batch, noise=noise))
    # an EMA state of an old training checkpoint (resume) loads through load_state_dict too
    ema = EMA(make_policy())
    ema.load_state_dict({"decay": 0.99, "num_updates": 3, "model": to_legacy_names(policy.state_dict())})
    assert torch.equal(ema.model.denoiser.net.sigma_embed.weight, policy.denoiser.net.sigma_embed.weight)


def test_truncated_or_missing_checkpoint(tmp_path):
    make_policy().save_pretrained(tmp_path / "a")
    weights = tmp_path / "a" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        MoDEPolicy.from_pretrained(tmp_path / "a")
    with pytest.raises(CheckpointError, match="checkpoint file missing"):
        MoDEPolicy.from_pretrained(tmp_path / "nowhere")


def test_select_action_uses_queue_and_reset():
    policy = make_policy(n_action_steps=3).eval()
    calls = []
    original = policy.predict_action_chunk

    def counting(batch, noise=None, sampling=None):
        calls.append(1)
        return original(batch, noise, sampling=sampling)

    policy.predict_action_chunk = counting
    obs = obs_batch(2)
    actions = [policy.select_action(obs) for _ in range(7)]
    assert all(a.shape == (2, 3) for a in actions)
    assert len(calls) == 3  # re-plans every 3 actions: steps 0, 3, 6
    policy.reset()
    policy.select_action(obs)
    assert len(calls) == 4


def test_observation_history_is_stacked():
    policy = make_policy(n_obs_steps=2).eval()
    seen = []
    original = policy.predict_action_chunk
    policy.predict_action_chunk = lambda batch, noise=None, sampling=None: (seen.append(batch), original(batch))[1]
    first = obs_batch(1)
    policy.select_action(first)
    assert seen[0]["observation.state"].shape == (1, 2, 5)
    assert torch.equal(seen[0]["observation.state"][:, 0], first["observation.state"])


@pytest.mark.parametrize("batch_size", [1, 64])
def test_cached_equals_uncached(batch_size):
    policy = make_policy().eval()
    batch, noise = obs_batch(batch_size), torch.randn(batch_size, 4, 3)
    cached = policy.predict_action_chunk(batch, noise=noise)
    assert policy.denoiser.sampling_plan().cached
    policy.denoiser.use_expert_cache = False
    uncached = policy.predict_action_chunk(batch, noise=noise)
    assert not policy.denoiser.sampling_plan().cached
    assert (cached - uncached).abs().max().item() < 1e-5


def test_cache_views_own_no_copies_and_follow_weights():
    policy = make_policy().eval()
    batch, noise = obs_batch(2), torch.randn(2, 4, 3)
    denoiser = policy.denoiser
    plan = denoiser.sampling_plan()
    # top-2: every fused pair is a view of the expert bank; the cache owns only the mixing weights
    assert plan.cache_bytes == 2 * 10 * 2 * 4  # layers x steps x k x float32
    bank = denoiser.net.blocks[0].mlp.experts
    assert plan.levels[0].fused[0].w13.untyped_storage().data_ptr() == bank.w13.untyped_storage().data_ptr()
    assert denoiser.sampling_plan() is plan  # reused while nothing changes
    # Loading new weights rebuilds the plan and changes the actions exactly like uncached sampling
    other = make_policy().eval()
    policy.load_state_dict(other.state_dict())
    assert denoiser.sampling_plan() is not plan
    new_cached = policy.predict_action_chunk(batch, noise=noise)
    denoiser.use_expert_cache = False
    assert (new_cached - policy.predict_action_chunk(batch, noise=noise)).abs().max() < 1e-5
    denoiser.use_expert_cache = True
    # Train mode never uses the cache; back in eval it is rebuilt
    policy.train()
    assert not denoiser.sampling_plan().cached
    policy.eval()
    assert denoiser.sampling_plan().cached
    # Changing the number of steps (or the sampler) rebuilds it too
    assert len(denoiser.sampling_plan(SamplingSettings(num_inference_steps=5)).levels) == 5
    assert len(denoiser.sampling_plan(SamplingSettings(num_inference_steps=5, sampler="heun")).levels) == 9
    assert len(denoiser.sampling_plan().levels) == policy.config.num_inference_steps  # the config never changed


def test_cache_with_top3_copies_only_needed_combos():
    policy = make_policy(num_experts=6, top_k=3).eval()
    batch, noise = obs_batch(3), torch.randn(3, 4, 3)
    cached = policy.predict_action_chunk(batch, noise=noise)
    policy.denoiser.use_expert_cache = False
    assert (cached - policy.predict_action_chunk(batch, noise=noise)).abs().max() < 1e-5


def test_heun_sampler_cache_indexes_every_evaluation():
    policy = make_policy(sampler="heun", schedule="karras", num_inference_steps=4).eval()
    batch, noise = obs_batch(2), torch.randn(2, 4, 3)
    assert len(policy.denoiser.sampling_plan().levels) == 7  # 2n - 1 evaluations
    cached = policy.predict_action_chunk(batch, noise=noise)
    policy.denoiser.use_expert_cache = False
    assert (cached - policy.predict_action_chunk(batch, noise=noise)).abs().max() < 1e-5


def test_bad_inputs_raise_clear_errors():
    policy = make_policy()
    with pytest.raises(DataError, match="observation.state has shape"):
        policy.predict_action_chunk({"observation.state": torch.randn(2, 7), "goal": torch.randn(2, 8)})
    with pytest.raises(DataError, match="goal"):
        policy.predict_action_chunk({"observation.state": torch.randn(2, 5)})
    with pytest.raises(DataError, match="goal has width 3"):
        policy.predict_action_chunk({"observation.state": torch.randn(2, 5), "goal": torch.randn(2, 3)})
    with pytest.raises(DataError, match="action has shape"):
        policy({**obs_batch(2), "action": torch.randn(2, 9, 3)})
    with pytest.raises(DataError, match="needs 'action'"):
        policy(obs_batch(2))
    with pytest.raises(DataError, match="lack action.min"):
        policy.set_normalization({"observation.state": {"mean": [0] * 5, "std": [1] * 5}})
    with pytest.raises(DataError, match="NaN"):
        policy.set_normalization(
            {
                "action": {"min": [0, 0, float("nan")], "max": [1, 1, 1]},
                "observation.state": {"mean": [0] * 5, "std": [1] * 5},
            }
        )


def test_padded_actions_do_not_count_in_loss():
    policy = make_policy()
    batch = {**obs_batch(4), "action": torch.randn(4, 4, 3)}
    pad = torch.zeros(4, 4, dtype=torch.bool)
    pad[:, 2:] = True
    batch["action_is_pad"] = pad
    torch.manual_seed(3)
    loss_a, _ = policy(batch)
    batch["action"] = batch["action"].clone()
    batch["action"][:, 2:] = 100.0  # garbage in the padded part
    torch.manual_seed(3)
    # Causal attention: later (padded) tokens cannot influence earlier ones
    loss_b, _ = policy(batch)
    assert loss_a.item() == pytest.approx(loss_b.item(), rel=1e-5)


def test_config_validation():
    with pytest.raises(ConfigError, match="routing"):
        MoDEConfig(routing="magic")
    with pytest.raises(ConfigError, match="top_k"):
        MoDEConfig(top_k=5, num_experts=4)
    with pytest.raises(ConfigError, match="unknown preset"):
        get_preset("huge")


def test_paper_parameter_counts():
    """The paper: 685M total / 384M active for the 12-layer transformer; 460M for 8 layers."""
    with torch.device("meta"):  # shapes only, no memory or init time
        counts = MoDEPolicy(get_preset("paper-pretrain")).parameter_counts()["transformer"]
    assert abs(counts["total"] / 685e6 - 1) < 0.03
    assert abs(counts["active"] / 384e6 - 1) < 0.03
    with torch.device("meta"):
        counts8 = MoDEPolicy(get_preset("paper")).parameter_counts()["transformer"]
    assert abs(counts8["total"] / 460e6 - 1) < 0.03


def test_trainable_task_embedding_saves_and_loads(tmp_path):
    tasks = ["open the drawer", "close the drawer"]
    policy = make_policy(goal_encoder={"type": "task", "tasks": tasks, "dim": 8, "init": "normal"}).eval()
    batch = {"observation.state": torch.randn(2, 5), "task": tasks}
    noise = torch.randn(2, 4, 3)
    before = policy.predict_action_chunk(batch, noise=noise)
    assert any(k.startswith("goal_encoder.") for k in policy.state_dict())
    policy.save_pretrained(tmp_path / "ckpt")
    loaded = MoDEPolicy.from_pretrained(tmp_path / "ckpt").eval()
    assert torch.equal(loaded.predict_action_chunk(batch, noise=noise), before)
    with pytest.raises(DataError, match="unknown"):
        loaded.predict_action_chunk({"observation.state": torch.randn(1, 5), "task": ["fly away"]})


def test_image_policy_tokens_and_cached_sampling():
    cams = ["observation.images.corner", "observation.images.wrist"]
    policy = make_policy(image_keys=cams, vision_width=8, n_obs_steps=2)
    assert policy.config.n_tokens == 2 + 2 * 3 + 4
    batch = {
        "observation.state": torch.randn(3, 2, 5),
        "goal": torch.randn(3, 8),
        **{c: torch.randint(0, 256, (3, 2, 24, 24, 3), dtype=torch.uint8) for c in cams},
    }
    loss, _ = policy({**batch, "action": torch.randn(3, 4, 3)})
    loss.backward()
    assert policy.image_encoder.cameras["observation_images_corner"].conv1.weight.grad is not None
    policy.eval()
    noise = torch.randn(3, 4, 3)
    cached = policy.predict_action_chunk(batch, noise=noise)
    policy.denoiser.use_expert_cache = False
    assert (cached - policy.predict_action_chunk(batch, noise=noise)).abs().max() < 1e-5
    with pytest.raises(DataError, match="camera 'observation.images.wrist'"):
        policy.predict_action_chunk({k: v for k, v in batch.items() if k != cams[1]})


def test_paper_image_preset_counts():
    """Two ResNet-18 cameras: transformer 460M total, whole policy 277M active (paper)."""
    with torch.device("meta"):
        counts = MoDEPolicy(get_preset("paper")).parameter_counts()
    assert abs(counts["transformer"]["total"] / 460e6 - 1) < 0.03
    assert abs(counts["active_params"] / 277e6 - 1) < 0.05


@pytest.mark.parametrize("causal", [True, False])
def test_causal_flag_controls_what_earlier_actions_see(causal):
    policy = make_policy(causal=causal).eval()
    t = policy.denoiser.net
    cond = torch.randn(1, 2, 64)
    noise_emb = policy.denoiser.embed(torch.tensor([0.1]))
    x = torch.randn(1, 4, 3)
    y = x.clone()
    y[:, -1] += 1.0  # change only the last action token
    with torch.no_grad():
        first_x = t(x, noise_emb, cond)[0][:, 0]
        first_y = t(y, noise_emb, cond)[0][:, 0]
    assert torch.equal(first_x, first_y) == causal


# Numbers the code gave before the EDM denoiser module existed (same seeds): a refactor
# of the model must reproduce them (reordered random draws or a reformulated loss would not).
PINNED = {
    "noise": (1.7575079202651978, [-0.303310751914978, -0.07884147018194199, 0.4350188374519348]),
    "token": (1.9019238948822021, [-0.31230881810188293, 0.05788611248135567, 0.37569504976272583]),
    "dense": (1.8894875049591064, [0.05562970042228699, 0.16661429405212402, -0.041253089904785156]),
}


@pytest.mark.parametrize("routing", sorted(PINNED))
def test_seeded_loss_and_sample_are_unchanged(routing):
    torch.manual_seed(0)
    policy = MoDEPolicy(get_preset("tiny", state_dim=5, action_dim=3, goal_dim=8, routing=routing))
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    gen = torch.Generator().manual_seed(1)
    obs = {"observation.state": torch.randn(4, 5, generator=gen), "goal": torch.randn(4, 8, generator=gen)}
    batch = {**obs, "action": torch.randn(4, 4, 3, generator=gen).clamp(-1, 1)}
    torch.manual_seed(2)
    loss, _ = policy(batch)
    policy.eval()
    chunk = policy.predict_action_chunk(obs, noise=torch.randn(4, 4, 3, generator=gen))
    expected_loss, expected_actions = PINNED[routing]
    assert loss.item() == pytest.approx(expected_loss, rel=1e-6)
    assert chunk[0, 0].tolist() == pytest.approx(expected_actions, rel=1e-5, abs=1e-6)
