"""Meta-World on MuJoCo: seeded starts, the scripted experts, the camera, demonstrations."""

import numpy as np
import pytest

from bac_ros.sim.metaworld import (
    ACTION_HIGH,
    ACTION_LOW,
    JOINT_NAMES,
    MetaWorldEnv,
    MetaWorldTaskConfig,
    expert_policy,
    generate_demos,
    rollout_expert,
)

DRAWER = MetaWorldTaskConfig(task="drawer-open")


def _object_start(env: MetaWorldEnv, seed: int) -> np.ndarray:
    s = env.reset(seed)["state"]
    return np.concatenate([s[4:7], s[-3:]])  # first object's position and the goal


def test_seeds_give_distinct_reproducible_starts():
    """Gymnasium's MT1 would re-use 50 fixed starts; every seed here must draw its own."""
    env = MetaWorldEnv(MetaWorldTaskConfig(task="pick-place"))
    starts = [_object_start(env, 100_000 + i) for i in range(60)]
    again = [_object_start(env, 100_000 + i) for i in (0, 37, 59)]
    env.close()
    distinct = {tuple(np.round(s, 6)) for s in starts}
    assert len(distinct) == 60
    for i, s in zip((0, 37, 59), again):
        np.testing.assert_array_equal(s, starts[i])


def test_expert_succeeds_on_seeded_episodes():
    env = MetaWorldEnv(DRAWER)
    expert = expert_policy(DRAWER)
    outcomes = [rollout_expert(env, expert, 100_000 + i)[1] for i in range(3)]
    env.close()
    assert outcomes == [True, True, True]


def test_unknown_task_is_refused_with_the_known_ones():
    with pytest.raises(ValueError, match="unknown Meta-World task 'pick-plaice-v3'.*pick-place"):
        MetaWorldEnv(MetaWorldTaskConfig(task="pick-plaice"))


def test_actions_are_validated_and_clipped():
    env = MetaWorldEnv(DRAWER)
    env.reset(0)
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        env.step(np.zeros(3))
    with pytest.raises(ValueError, match="finite"):
        env.step(np.array([np.nan, 0, 0, 0]))
    np.testing.assert_array_equal(env.clip_action(np.array([5.0, -5.0, 0.5, 2.0])),
                                  np.clip([5.0, -5.0, 0.5, 2.0], ACTION_LOW, ACTION_HIGH))
    assert env.joint_positions().shape == (len(JOINT_NAMES),)
    env.close()


def _project(env: MetaWorldEnv, point: np.ndarray, size: int) -> tuple[float, float]:
    """(row, col) of a world point in the env's frames (pinhole model of the task camera).

    MuJoCo draws camera +y up and +x right; the env turns its frames by 180 degrees, so in
    them camera +y points down the rows and +x to the left."""
    data, model = env._env.data, env._env.model
    cam = model.camera(env.config.camera).id
    rel = data.cam_xmat[cam].reshape(3, 3).T @ (point - data.cam_xpos[cam])
    f = size / 2 / np.tan(np.deg2rad(model.cam_fovy[cam]) / 2)
    depth = -rel[2]  # MuJoCo cameras look along their -z axis
    return size / 2 + f * rel[1] / depth, size / 2 - f * rel[0] / depth


def test_camera_frame_shows_the_arm_upright():
    """The hand, painted magenta, appears in the frame where the camera model puts it in an
    upright frame (turned over it would sit ~10 px away), and world-up is image-up there."""
    env = MetaWorldEnv(DRAWER, render_images=True)
    size, model = DRAWER.image_size, env._env.model
    hand = model.body("hand").id

    def on_hand(body: int) -> bool:
        while body not in (0, hand):
            body = model.body_parentid[body]
        return body == hand

    plain = env.reset(5)["image"]
    assert plain.shape == (size, size, 3) and plain.dtype == np.uint8
    assert plain.std() > 10  # the scene is drawn, not a blank frame
    model.geom_rgba[[g for g in range(model.ngeom) if on_hand(model.geom_bodyid[g])]] = \
        [1, 0, 1, 1]
    img = env.reset(5)["image"]
    magenta = (img[..., 0] > 150) & (img[..., 1] < 80) & (img[..., 2] > 150)
    assert magenta.sum() >= 10  # the arm's hand differs from everything around it
    rows, cols = np.nonzero(magenta)
    expected = _project(env, env._env.data.body("hand").xpos, size)
    assert abs(rows.mean() - expected[0]) < 3 and abs(cols.mean() - expected[1]) < 3
    above = _project(env, env._env.data.body("hand").xpos + np.array([0.0, 0.0, 0.1]), size)
    assert above[0] < expected[0] - 5
    env.close()


def test_demonstrations_label_clean_expert_actions():
    data = generate_demos(DRAWER, 2, seed=0, noise=0.3)
    ends = data["episode_ends"]
    assert len(ends) == 2 and ends[-1] == len(data["action"]) == len(data["state"])
    assert data["state"].shape[1] == 39 and data["proprio"].shape[1] == 4
    np.testing.assert_array_equal(data["proprio"], data["state"][:, :4])
    assert np.all(np.abs(data["action"]) <= 1.0)
    # labels are the expert's action at each recorded state, not the noisy executed one
    expert = expert_policy(DRAWER)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        relabel = np.stack([np.clip(expert.get_action(s.astype(np.float64)), -1, 1)
                            for s in data["state"][:20]])
    np.testing.assert_allclose(data["action"][:20], relabel, atol=1e-6)
