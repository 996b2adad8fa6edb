"""`bac distill`: the image policy built from a low-dim one acts exactly as the low-dim policy
would on the scene its encoder reports."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import TINY

from bac_ros.policy.checkpoint import save_native
from bac_ros.policy.policy import Policy
from bac_ros.sim.arm import ArmTaskConfig, render
from bac_ros.sim.demos import generate_demos
from bac_ros.train.distill import SceneTargets, distill_image_policy, scene_batch
from bac_ros.train.train import TrainConfig, build_initial


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    demos = generate_demos(2, seed=0)
    low = build_initial(TrainConfig(model=dict(TINY)), demos, ArmTaskConfig())
    folder = tmp_path_factory.mktemp("low")
    save_native(low, folder, weights_dtype=torch.float32)
    image = distill_image_policy(folder, demos, steps=3, batch_size=4, log=lambda *_: None)
    return demos, Policy.from_pretrained(folder, device="cpu"), Policy(image, device="cpu"), image


def test_scene_batch_renders_the_states_it_returns():
    task = ArmTaskConfig()
    poses = np.tile(np.asarray(task.start_joints, np.float32), (5, 1))
    images, states = scene_batch(task, np.random.default_rng(0), poses, 5)
    assert images.shape == (5, 96, 96, 3) and states.shape == (5, 7)
    assert len({tuple(s) for s in states[:, 3:].round(6)}) == 5  # a new layout per scene
    for img, s in zip(images, states, strict=True):
        np.testing.assert_array_equal(img, render(task, s[:3], s[3:5], s[5:]))
        assert np.all(s[:3] >= task.joint_low) and np.all(s[:3] <= task.joint_high)


def test_condition_embedding_maps_scene_features_onto_the_low_dim_state(built):
    demos, low, image, _ = built
    targets = SceneTargets(low)
    states = torch.as_tensor(demos["state"][::7])
    width = image.model.cond_obs_emb.in_features
    feats = torch.randn(len(states), width)  # columns beyond the scene must not matter
    feats[:, :4] = targets(states)
    feats[:, -3:] = image.normalizer.normalize("joints", states[:, :3])
    with torch.no_grad():
        got = image.model.cond_obs_emb(feats)
        want = low.model.cond_obs_emb(low.normalizer.normalize("state", states))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # Exact scene features measure zero error; 1 cm off the target measures 10 mm.
    exact = targets.errors(targets(states), states)
    assert max(exact["target"].max(), exact["obstacle"].max()) < 1e-3
    moved = states.clone()
    moved[:, 3] += 0.01
    err = targets.errors(targets(moved), states)
    np.testing.assert_allclose(err["target"], 10.0, rtol=1e-4, atol=1e-3)
    assert err["obstacle"].max() < 1e-3


def test_every_other_weight_and_the_action_normaliser_come_from_the_low_dim_policy(built):
    demos, low, image, ckpt = built
    low_sd, image_sd = low.model.state_dict(), image.model.state_dict()
    for key, value in low_sd.items():
        if not key.startswith("cond_obs_emb."):
            torch.testing.assert_close(image_sd[key], value, rtol=0, atol=0)
    actions = torch.as_tensor(demos["action"])
    torch.testing.assert_close(image.normalizer.normalize("action", actions),
                               low.normalizer.normalize("action", actions))
    assert ckpt.config["training"]["scene_encoder"]["steps"] == 3
    obs = {"image": demos["image"][:2] if "image" in demos else
           np.stack([render(ArmTaskConfig(), s[:3], s[3:5], s[5:]) for s in demos["state"][:2]]),
           "joints": demos["joints"][:2]}
    assert image.predict(obs, seed=0).shape == (8, 3)


def test_refuses_a_checkpoint_that_is_not_the_low_dim_task(built, tmp_path):
    demos, _, _, image = built
    save_native(image, tmp_path / "img")
    with pytest.raises(ValueError, match="not a low-dim policy"):
        distill_image_policy(tmp_path / "img", demos, steps=1)


def test_the_arm_refuses_meta_world_scene_episodes_and_rollouts(built, tmp_path):
    demos, _, _, _ = built
    low = build_initial(TrainConfig(model=dict(TINY)), demos, ArmTaskConfig())
    save_native(low, tmp_path / "low", weights_dtype=torch.float32)
    with pytest.raises(ValueError, match="scene_episodes is for Meta-World"):
        distill_image_policy(tmp_path / "low", demos, steps=1, scene_episodes=10)
    with pytest.raises(ValueError, match="rollouts are for Meta-World"):
        distill_image_policy(tmp_path / "low", demos, steps=1, rollouts=4)
