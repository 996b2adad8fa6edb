"""`bac distill` for Meta-World pick-place: a camera + proprio + goal policy from the low-dim
one, its encoder trained on frames of fresh expert episodes."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from helpers import TINY

from bac_ros.cli import main
from bac_ros.policy.checkpoint import save_native
from bac_ros.policy.policy import Policy
from bac_ros.sim.metaworld import (
    MetaWorldEnv,
    MetaWorldTaskConfig,
    expert_policy,
    generate_demos,
    rollout_expert,
    scene_frames,
)
from bac_ros.sim.tasks import task_of
from bac_ros.train.distill import (
    SCENE_SEED,
    SceneTargets,
    distill_image_policy,
    rollout_seeds,
)
from bac_ros.train.train import TrainConfig, build_initial, task_spec

PICK = MetaWorldTaskConfig(task="pick-place")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    demos = generate_demos(PICK, 2, seed=0)
    low = build_initial(TrainConfig(model=dict(TINY)), demos, task_spec(PICK, "lowdim"))
    folder = tmp_path_factory.mktemp("low")
    save_native(low, folder, weights_dtype=torch.float32)
    image = distill_image_policy(folder, demos, steps=3, batch_size=4, scene_episodes=3,
                                 log=lambda *_: None)
    return demos, folder, Policy.from_pretrained(folder, device="cpu"), image


def test_image_checkpoint_loads_and_acts_on_a_rendered_observation(built, tmp_path):
    _, _, _, ckpt = built
    policy = Policy.from_pretrained(save_native(ckpt, tmp_path / "image"), device="cpu")
    assert policy.obs_spec == {"image": ((3, 96, 96), "rgb"), "proprio": ((4,), "low_dim"),
                               "goal": ((3,), "low_dim")}
    assert policy.action_type == "ee_delta" and policy.config["task"]["task"] == "pick-place"
    env = MetaWorldEnv(PICK, render_images=True)
    first = env.reset(100_000)
    second, _, _ = env.step(np.zeros(4))
    env.close()
    window = {k: np.stack([first[k], second[k]]) for k in policy.obs_spec}
    chunk = policy.predict(window, seed=0)
    assert chunk.shape == (8, 4) and np.isfinite(chunk).all()
    assert np.all(np.abs(chunk) <= 1.0)


def test_features_are_the_normalised_object_columns_and_map_onto_the_low_dim_state(built):
    demos, _, low, ckpt = built
    image = Policy(ckpt, device="cpu")
    targets = SceneTargets(low)
    # pick-place has one object: its pose (columns 4-10) comes from the image; the second
    # object's columns are padding (always 0), a constant folded into the bias
    assert targets.cols == list(range(4, 11)) and targets.layout.constant == tuple(range(11, 18))
    assert np.all(demos["state"][:, 11:18] == 0)
    states = torch.as_tensor(demos["state"][::5]).clone()
    torch.testing.assert_close(targets(states),
                               low.normalizer.normalize("state", states)[:, 4:11] + 1.0)
    # a scene at rest (its previous-step copy equals the current values): the camera policy's
    # condition embedding on exact features is the low-dim policy's on the state
    states[:, 18:36] = states[:, 0:18]
    width = image.model.cond_obs_emb.in_features
    feats = torch.randn(len(states), width)  # feature columns beyond the object must not matter
    feats[:, :7] = targets(states)
    feats[:, -7:-3] = image.normalizer.normalize("proprio", states[:, :4])
    feats[:, -3:] = image.normalizer.normalize("goal", states[:, 36:])
    with torch.no_grad():
        got = image.model.cond_obs_emb(feats)
        want = low.model.cond_obs_emb(low.normalizer.normalize("state", states))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # the low-dim inputs are normalised exactly as the low-dim policy normalises those columns
    torch.testing.assert_close(image.normalizer.normalize("goal", states[:, 36:]),
                               low.normalizer.normalize("state", states)[:, 36:])
    # 1 cm off in x measures 10 mm of object error, and no rotation
    moved = states.clone()
    moved[:, 4] += 0.01
    err = targets.errors(targets(moved), states)
    np.testing.assert_allclose(err["object"], 10.0, rtol=1e-3)
    assert np.all(err["object_orientation"] < 1e-2)


def test_scene_frames_render_the_states_they_return_along_expert_episodes():
    frames, states = scene_frames(PICK, [SCENE_SEED], 0.0, 3)
    env = MetaWorldEnv(PICK, render_images=True)
    ref, success = rollout_expert(env, expert_policy(PICK), SCENE_SEED, keys=("state", "image"))
    env.close()
    assert success
    phases = [p for p in range(3) if len(ref["state"][p::3]) == len(states)
              and np.array_equal(ref["state"][p::3], states)]
    assert len(phases) == 1  # every third step of the episode, from one phase
    np.testing.assert_array_equal(frames, ref["image"][phases[0]::3])
    assert states[:, 6].max() > 0.05  # the encoder sees the object lifted, not only at rest
    noisy = scene_frames(PICK, [SCENE_SEED, SCENE_SEED + 1], 0.3, 3)
    again = scene_frames(PICK, [SCENE_SEED, SCENE_SEED + 1], 0.3, 3)
    np.testing.assert_array_equal(noisy[1], again[1])  # reproducible per seed
    assert not np.array_equal(noisy[1][: len(states)], states)  # the noise moves the episodes


def test_scenes_are_fresh_seeds_off_the_demonstrations_and_evaluation(built):
    demos, folder, _, ckpt = built
    record = ckpt.config["training"]["scene_encoder"]["scenes"]
    assert record["reset_seeds"] == [SCENE_SEED, SCENE_SEED + 2]
    assert (record["episodes"], record["held_out_episodes"]) == (2, 1)
    assert demos["episode_seeds"].max() < SCENE_SEED
    stats = ckpt.config["training"]["scene_encoder"]
    assert set(stats["held_out_error_mm"]) == {"object"}
    assert set(stats["held_out_error_deg"]) == {"object_orientation"}
    clash = dict(demos, episode_seeds=np.array([0, SCENE_SEED + 1]))
    with pytest.raises(ValueError, match="re-use"):
        distill_image_policy(folder, clash, steps=1, scene_episodes=3)
    with pytest.raises(ValueError, match="evaluation seeds"):
        distill_image_policy(folder, None, steps=1, scene_episodes=90_001)


def test_cli_distills_a_metaworld_checkpoint(built, tmp_path, capsys):
    _, folder, _, _ = built
    out = tmp_path / "image"
    assert main(["distill", "--lowdim", str(folder), "--episodes", "5", "--out", str(out)]) == 1
    assert "--scene-episodes" in capsys.readouterr().err
    assert main(["distill", "--lowdim", str(folder), "--scene-episodes", "2", "--steps", "1",
                 "--batch-size", "2", "--out", str(out)]) == 0
    assert set(Policy.from_pretrained(out, device="cpu").obs_spec) == {"image", "proprio", "goal"}


def test_a_chosen_camera_is_the_one_the_policy_is_trained_and_evaluated_with(built, tmp_path):
    """``camera`` picks the view: the scenes render it, the checkpoint records it (so evaluation
    and sim_node render it too), an encoder of another view cannot be continued, and a camera
    the model does not have is refused before any work."""
    demos, folder, _, ckpt = built
    wrist = distill_image_policy(folder, demos, steps=1, batch_size=2, scene_episodes=2,
                                 camera="gripperPOV", log=lambda *_: None)
    assert wrist.config["task"]["camera"] == "gripperPOV"
    assert ckpt.config["task"]["camera"] == "corner"
    assert task_of(wrist) == replace(PICK, camera="gripperPOV")
    corner = save_native(ckpt, tmp_path / "corner", weights_dtype=torch.float32)
    with pytest.raises(ValueError, match="same camera"):
        distill_image_policy(folder, demos, steps=1, scene_episodes=2, init=corner,
                             camera="gripperPOV")
    with pytest.raises(ValueError, match="camera 'wrist' is not in the pick-place model"):
        distill_image_policy(folder, demos, steps=1, scene_episodes=2, camera="wrist")


def test_the_camera_features_see_the_hand_position(built):
    """One camera cannot place a lifted object in depth; its features are fused with the hand's
    position, which can (the grasped object sits at the hand)."""
    _, _, _, ckpt = built
    assert ckpt.config["obs_encoder"]["condition_on"] == ["proprio"]
    image = Policy(ckpt, device="cpu")
    frames, states = scene_frames(PICK, [SCENE_SEED], 0.0, 20)
    obs = {"image": torch.as_tensor(frames).movedim(-1, -3).float() / 255.0,
           "proprio": torch.as_tensor(states[:, :4]), "goal": torch.as_tensor(states[:, 36:])}
    norm = {k: image.normalizer.normalize(k, v) for k, v in obs.items()}
    with torch.no_grad():
        feats = image.obs_encoder(norm)
        raised = image.obs_encoder(dict(norm, proprio=norm["proprio"] + 0.5))
    assert not torch.allclose(feats[:, :64], raised[:, :64])


def test_init_continues_from_the_given_encoder(built, tmp_path):
    demos, folder, _, ckpt = built
    first = save_native(ckpt, tmp_path / "first", weights_dtype=torch.float32)
    again = distill_image_policy(folder, demos, steps=1, batch_size=2, lr=0.0, scene_episodes=2,
                                 init=first, log=lambda *_: None)
    encoder = {k: v for k, v in ckpt.tensors.items() if k.startswith("obs_encoder.")}
    assert encoder and all(torch.equal(again.tensors[k], v) for k, v in encoder.items())
    record = again.config["training"]["continued_from"]
    assert record["checkpoint"] == str(first)
    assert record["scene_encoder"] == ckpt.config["training"]["scene_encoder"]
    assert again.config["training"]["scene_encoder"]["steps"] == 1  # then it trained on
    other = {"distilled_from": str(folder), "lowdim_training": {"steps": 1}}
    for config, refusal in ((dict(ckpt.config, source=other), "was not distilled from"),
                            (dict(ckpt.config, obs_encoder=dict(ckpt.config["obs_encoder"],
                                                                condition_hidden=8)),
                             "configured otherwise")):
        with pytest.raises(ValueError, match=refusal):
            distill_image_policy(folder, demos, steps=1, scene_episodes=2,
                                 init=save_native(replace(ckpt, config=config), tmp_path / "x"))
    # init held out its first scene episode; 32 scenes would hold out two, one of them trained on
    with pytest.raises(ValueError, match="scene_episodes must be below 32"):
        distill_image_policy(folder, demos, steps=1, scene_episodes=32, init=first)


def test_rollout_seeds_follow_every_seed_the_encoder_trained_on():
    prior = {"scenes": {"reset_seeds": [SCENE_SEED, SCENE_SEED + 1999],
                        "rollouts": {"reset_seeds": [SCENE_SEED + 2000, SCENE_SEED + 2159]}}}
    assert list(rollout_seeds(3, 1000, prior, [])) == [SCENE_SEED + 2160 + i for i in range(3)]
    assert list(rollout_seeds(2, 5, None, [])) == [SCENE_SEED + 5, SCENE_SEED + 6]
    with pytest.raises(ValueError, match="re-use"):
        rollout_seeds(4, 2, None, [SCENE_SEED + 3])
    with pytest.raises(ValueError, match="evaluation seeds"):
        rollout_seeds(89_999, 2, None, [])
    with pytest.raises(ValueError, match="at least 2"):
        rollout_seeds(1, 2, None, [])


def test_rollouts_add_the_camera_policys_own_episodes_on_fresh_seeds(built):
    """The encoder also learns from the camera policy's own episodes (misses and objects left
    behind, which expert scenes rarely show), labelled with the simulator's state."""
    demos, folder, _, _ = built
    seen = []
    image = distill_image_policy(folder, demos, steps=1, batch_size=2, scene_episodes=2,
                                 rollouts=2, log=seen.append)
    training = image.config["training"]
    rollouts = training["scene_encoder"]["scenes"]["rollouts"]
    # after this run's scenes (SCENE_SEED, SCENE_SEED + 1): fresh starts, one held out
    assert rollouts["reset_seeds"] == [SCENE_SEED + 2, SCENE_SEED + 3]
    assert (rollouts["episodes"], rollouts["held_out_episodes"]) == (1, 1)
    assert rollouts["method"] == "ddim:10" and 0.0 <= rollouts["success_rate"] <= 1.0
    # an untrained policy runs to the 500-step limit: every third of its 501 observations
    assert rollouts["frames"] in (166, 167) and rollouts["held_out_frames"] in (166, 167)
    assert "rollouts" not in training["first_encoder"]["scenes"]  # the first encoder had none
    assert set(training["scene_encoder"]["rollouts_held_out_error_mm"]) == {"object"}
    assert any("held-out error (rollouts)" in line for line in seen)
    with pytest.raises(ValueError, match="evaluation seeds"):  # before any rendering
        distill_image_policy(folder, demos, steps=1, scene_episodes=2, rollouts=89_999,
                             log=pytest.fail)
