"""From the released weights to actions, the user's route: a denoiser-only official file (made by
the official code: tests/fixtures/official) converts, loads offline without CLIP, takes the official
inputs and gives the official outputs; a missing language model is one clear line, never a traceback."""

import json

import pytest
import torch
from official_parity import FIXTURE, VARIANTS, official_checkpoint, released_route
from safetensors.torch import load_file, save_file

from mode_policy.cli import main as cli
from mode_policy.encoders.resnet import WeightsNotFoundError
from mode_policy.errors import CheckpointError, ConfigError, DataError
from mode_policy.official import OfficialDenoiser, condition_tokens, official_batch
from mode_policy.official.convert import CAMERA_FEATURES_REASON, convert_official
from mode_policy.policy import MoDEPolicy

TOLERANCE = 1e-5
DENOISER_ONLY = FIXTURE / "experts" / "official.safetensors"


@pytest.fixture
def reference():
    return load_file(str(FIXTURE / "experts" / "reference.safetensors"))


@pytest.mark.parametrize("variant", VARIANTS)
def test_denoiser_only_file_converts_loads_and_matches_the_official_outputs(tmp_path, variant):
    diffs = released_route(FIXTURE / variant, tmp_path / "model")
    assert diffs["denoised"] < TOLERANCE and diffs["sample"] < TOLERANCE, diffs


def test_the_official_sample_is_unclipped_and_clipping_is_asked_for(tmp_path, reference):
    """The official DDIM returns values beyond [-1, 1]; the converted policy does too unless clamp=True."""
    convert_official(DENOISER_ONLY, tmp_path / "model")
    policy = MoDEPolicy.from_pretrained(tmp_path / "model")
    batch = official_batch(policy, reference["goal"], state_images=reference["state_images"])
    assert reference["sample"].abs().max() > 1.2
    free = policy.predict_action_chunk(batch, noise=reference["noise"])
    clipped = policy.predict_action_chunk(batch, noise=reference["noise"], clamp=True)
    torch.testing.assert_close(free, reference["sample"], atol=TOLERANCE, rtol=0)
    torch.testing.assert_close(clipped, reference["sample"].clamp(-1, 1), atol=TOLERANCE, rtol=0)


def test_denoiser_only_config_takes_features_of_the_tok_emb_width(tmp_path):
    report = convert_official(DENOISER_ONLY, tmp_path / "model", camera_names=["agentview", "wrist"])
    cfg = MoDEPolicy.from_pretrained(tmp_path / "model").config
    tok_emb = load_file(str(DENOISER_ONLY))["model.inner_model.tok_emb.weight"]  # (d, F)
    assert cfg.image_features and report.image_feature_dim == tok_emb.shape[1] == 64
    assert cfg.image_keys == ["observation.images.agentview", "observation.images.wrist"]
    assert cfg.goal_encoder == {} and report.ignored == {}
    policy = MoDEPolicy.from_pretrained(tmp_path / "model")
    assert len(policy.image_encoder.cameras) == 0  # no camera trunks, only the shared projection


def test_full_checkpoint_with_image_features_equals_the_denoiser_only_conversion(tmp_path):
    """The cameras of a full checkpoint are left out by name; what remains is the denoiser's."""
    full = official_checkpoint(FIXTURE / "experts")  # the fixture's denoiser + random official cameras
    save_file(full, str(tmp_path / "model_cleaned.safetensors"))
    report = convert_official(tmp_path, tmp_path / "features", image_features=True)
    convert_official(DENOISER_ONLY, tmp_path / "denoiser")
    camera_names = sorted(k for k in full if k.startswith(("static_resnet.", "gripper_resnet.")))
    assert sorted(report.ignored) == camera_names and set(report.ignored.values()) == {CAMERA_FEATURES_REASON}
    a = load_file(str(tmp_path / "features" / "model.safetensors"))
    b = load_file(str(tmp_path / "denoiser" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_official_denoiser_takes_the_official_argument_order(tmp_path, reference):
    convert_official(DENOISER_ONLY, tmp_path / "model")
    policy = MoDEPolicy.from_pretrained(tmp_path / "model")
    denoiser = OfficialDenoiser(policy)
    state, goal = reference["state_images"], reference["goal"]
    got = denoiser({"state_images": state}, reference["x"], goal, reference["sigma"])
    torch.testing.assert_close(got, reference["denoised"], atol=TOLERANCE, rtol=0)
    one_sigma = denoiser(state, reference["x"], goal, 1.0)  # a scalar sigma, as sigmas[i] in a sampler
    torch.testing.assert_close(one_sigma, denoiser(state, reference["x"], goal, torch.ones(3)))
    assert not torch.allclose(one_sigma, got)


def test_official_inputs_that_do_not_fit_are_named(tmp_path, reference):
    convert_official(DENOISER_ONLY, tmp_path / "model")
    policy = MoDEPolicy.from_pretrained(tmp_path / "model")
    goal, state = reference["goal"], reference["state_images"]
    with pytest.raises(DataError, match=r"state_images has shape \(3, 64\), expected \(B, 2, F\)"):
        official_batch(policy, goal, state_images=state[:, 0])
    with pytest.raises(DataError, match="takes the cameras' pooled features"):
        official_batch(policy, goal, images=[torch.rand(3, 8, 8, 3)] * 2)
    with pytest.raises(DataError, match=r"goal has shape \(3, 5\)"):
        official_batch(policy, goal[:, :5], state_images=state)
    batch = official_batch(policy, goal, state_images=state[..., :60])  # features of the wrong width
    with pytest.raises(DataError, match=r"observation.images.static has shape \(3, 60\).*\(B, 64\)"):
        policy.predict_action_chunk(batch)


def test_images_policy_takes_official_images(tmp_path):
    """Images in the official camera order (static, gripper) sample what their pooled features give."""
    save_file(official_checkpoint(FIXTURE / "shared"), str(tmp_path / "model_cleaned.safetensors"))
    convert_official(tmp_path, tmp_path / "model")
    policy = MoDEPolicy.from_pretrained(tmp_path / "model")
    assert not policy.config.image_features and len(policy.image_encoder.cameras) == 2
    goal = torch.randn(2, 1, policy.config.goal_dim)  # the official latent_goal
    static, gripper = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)  # official layout (B, 3, H, W) in [0, 1]
    batch = official_batch(policy, goal, images=[static, gripper])
    noise = torch.randn(2, policy.config.horizon, policy.config.action_dim)
    actions = policy.predict_action_chunk(batch, noise=noise)
    with torch.no_grad():
        features = torch.stack(
            [
                policy.image_encoder.cameras["observation_images_static"](
                    policy.image_encoder.normalize(static), goal[:, 0]
                ),
                policy.image_encoder.cameras["observation_images_gripper"](
                    policy.image_encoder.normalize(gripper), goal[:, 0]
                ),
            ],
            dim=1,
        )  # (B, 2, F): what the official cameras hand the denoiser
        expected = policy.denoiser.sample(condition_tokens(policy, goal, features), noise)
        swapped = policy.denoiser.sample(condition_tokens(policy, goal, features.flip(1)), noise)
    torch.testing.assert_close(actions, expected)
    assert (actions - swapped).abs().max() > 1e-3  # the camera order matters
    with pytest.raises(DataError, match="encodes camera images"):
        official_batch(policy, goal, state_images=features)


# ------------------------------------------------------------ offline: no CLIP on this machine
def clip_folder(tmp_path, clip_path, **options):
    """A converted folder (512-d goals) whose config names a CLIP model at ``clip_path``."""
    save_file(official_checkpoint(FIXTURE / "experts", goal_dim=512), str(tmp_path / "model_cleaned.safetensors"))
    clip = {"type": "clip", "path": str(clip_path)}
    report = convert_official(tmp_path, tmp_path / "model", goal_encoder=clip, **options)
    return tmp_path / "model", report


def test_clip_model_loads_offline_and_text_goals_say_where_clip_goes(tmp_path):
    missing = tmp_path / "clip_vit_b32"
    folder, report = clip_folder(tmp_path, missing)
    assert any("not on this machine" in note for note in report.notes)
    policy = MoDEPolicy.from_pretrained(folder)  # no CLIP needed to load
    images = {k: torch.rand(2, 16, 16, 3) for k in policy.config.image_keys}
    actions = policy.predict_action_chunk({**images, "goal": torch.randn(2, 512)})
    assert actions.shape == (2, policy.config.horizon, 7)
    with pytest.raises(WeightsNotFoundError) as err:
        policy.predict_action_chunk({**images, "task": ["open the drawer", "push the button"]})
    message = str(err.value)
    assert "\n" not in message and str(missing) in message and "no such folder" in message
    assert "--language_path=DIR" in message and "goal_encoder 'path'" in message
    assert isinstance(err.value, CheckpointError)  # a project error: the command line prints one line


def test_a_folder_that_is_not_a_clip_model_is_named_at_conversion(tmp_path):
    broken = tmp_path / "not_clip"
    broken.mkdir()
    with pytest.raises(WeightsNotFoundError, match=r"not_clip'?: the folder holds no config.json"):
        clip_folder(tmp_path, broken)  # convert checks a CLIP model that is there
    folder = tmp_path / "model"
    assert not folder.exists()


def test_default_clip_width_is_checked_without_clip(tmp_path):
    with pytest.raises(ConfigError, match="gives 512-d goals, the checkpoint's goal embedding takes 12-d"):
        convert_official(DENOISER_ONLY, tmp_path / "model", goal_encoder={"type": "clip"})
    assert not (tmp_path / "model").exists()


def test_cli_default_writes_goal_vectors_and_says_so(tmp_path, capsys):
    out = tmp_path / "model"
    assert cli(["convert", "official", str(DENOISER_ONLY), f"--out={out}"]) == 0
    printed = capsys.readouterr().out
    assert "as 64-d image features" in printed and "goals are vectors: 'goal' (B, 12)" in printed
    assert json.loads((out / "config.json").read_text())["goal_encoder"] == {}


def test_cli_help_shows_the_positional_form(capsys):
    with pytest.raises(SystemExit):
        cli(["convert", "--help"])
    assert "mode-policy convert official MoDE_Pretrained --out" in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--language=clip"], "gives 512-d goals, the checkpoint's goal embedding takes 12-d"),
        (["--language=clip", "--language_path={tmp}"], "the folder holds no config.json"),
        (["--language_path={tmp}"], "--language_path names the CLIP model of --language=clip"),
        (["--cameras=a,a"], "names a camera twice"),
    ],
)
def test_cli_convert_errors_are_one_line(tmp_path, capsys, args, fragment):
    out = tmp_path / "model"
    argv = ["convert", "official", str(DENOISER_ONLY), f"--out={out}", *(a.format(tmp=tmp_path) for a in args)]
    assert cli(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("mode-policy convert: error: ") and fragment in err
    assert not out.exists()


def test_feature_width_no_official_camera_gives_is_refused(tmp_path):
    tensors = load_file(str(DENOISER_ONLY))
    d = tensors["model.inner_model.tok_emb.weight"].shape[0]
    tensors["model.inner_model.tok_emb.weight"] = torch.zeros(d, 12)
    save_file(tensors, str(tmp_path / "m.safetensors"))
    with pytest.raises(CheckpointError, match="tok_emb.weight: image feature width 12"):
        convert_official(tmp_path / "m.safetensors", tmp_path / "model")


def test_cli_finetune_without_clip_is_one_line(tmp_path, capsys):
    """A converted folder naming CLIP, fine-tuned on text instructions on a machine without CLIP."""
    from test_finetune_official import camera_dataset

    folder, _ = clip_folder(tmp_path, tmp_path / "clip_vit_b32", camera_names=["agentview", "wrist"])
    data = camera_dataset(tmp_path / "data", ["agentview", "wrist"])
    argv = ["finetune", str(folder), f"--dataset={data}", f"--out={tmp_path / 'run'}", "--steps=1", "--batch_size=2"]
    assert cli([*argv, "--progress=false"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "clip_vit_b32" in err and "--language_path=DIR" in err
    assert not (tmp_path / "run").exists()


def test_features_policy_acts_step_by_step_and_its_schema_checks_requests(tmp_path, reference):
    import numpy as np

    from mode_policy.observation import ObservationSchema

    convert_official(DENOISER_ONLY, tmp_path / "model")
    policy = MoDEPolicy.from_pretrained(tmp_path / "model")
    frame = official_batch(policy, reference["goal"], state_images=reference["state_images"])
    torch.manual_seed(3)
    first = policy.select_action(frame)  # (B, A): the chunk's first action
    torch.manual_seed(3)
    chunk = policy.predict_action_chunk(frame)
    torch.testing.assert_close(first, chunk[:, 0])
    schema = ObservationSchema.for_policy(policy)
    assert schema.features()["image_features"] == 64
    request = {k: v.numpy() for k, v in frame.items()}
    assert schema.check_request(request).arrays["observation.images.static"].shape == (3, 1, 64)
    request["observation.images.gripper"] = np.zeros((3, 8, 8, 3), np.float32)
    with pytest.raises(DataError, match=r"gripper has shape \(3, 8, 8, 3\).*expected float image features"):
        schema.check_request(request)
