"""The bundled arm task (bac_ros.sim): kinematics, collisions, rendering, expert, demo data."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from bac_ros.sim.arm import (
    BACKGROUND_RGB,
    LOWDIM_DIMS,
    OBSTACLE_RGB,
    STATE_DIM,
    TARGET_RGB,
    ArmEnv,
    ArmTaskConfig,
    clearance,
    forward_kinematics,
    in_collision,
    render,
)
from bac_ros.sim.demos import generate_demos, load_npz, save_npz
from bac_ros.sim.expert import LEFT, RIGHT, Expert
from bac_ros.train.dataset import SequenceSampler

TASK = ArmTaskConfig()


# --- kinematics ---------------------------------------------------------------------------


def test_forward_kinematics_known_poses():
    # Start pose: folded Z along the vertical through the base (0.5, 0.1).
    pts = forward_kinematics(TASK, np.array([math.pi / 2, 0.0, 0.0]))
    np.testing.assert_allclose(pts, [[0.5, 0.1], [0.5, 0.45], [0.5, 0.15], [0.5, 0.4]], atol=1e-12)
    # Joints 2 and 3 at +-pi are straight: the arm stretches along +x.
    pts = forward_kinematics(TASK, np.array([0.0, math.pi, -math.pi]))
    np.testing.assert_allclose(pts, [[0.5, 0.1], [0.85, 0.1], [1.15, 0.1], [1.4, 0.1]], atol=1e-12)
    # Link 1 up, link 2 at a right angle to it (pointing left), link 3 folded back onto link 2.
    pts = forward_kinematics(TASK, np.array([math.pi / 2, -math.pi / 2, 0.0]))
    np.testing.assert_allclose(pts[1:], [[0.5, 0.45], [0.2, 0.45], [0.45, 0.45]], atol=1e-12)


def test_forward_kinematics_batches_and_mirrors():
    rng = np.random.default_rng(0)
    q = rng.uniform(TASK.joint_low, TASK.joint_high, size=(5, 7, 3))
    pts = forward_kinematics(TASK, q)
    assert pts.shape == (5, 7, 4, 2)
    np.testing.assert_allclose(pts[2, 3], forward_kinematics(TASK, q[2, 3]))
    lengths = np.linalg.norm(np.diff(pts, axis=-2), axis=-1)
    np.testing.assert_allclose(lengths, np.broadcast_to(TASK.link_lengths, (5, 7, 3)))
    # (pi - q1, -q2, -q3) is the mirror image about the vertical through the base.
    mirror = forward_kinematics(TASK, np.stack([np.pi - q[..., 0], -q[..., 1], -q[..., 2]], -1))
    np.testing.assert_allclose(mirror[..., 0], 2 * TASK.base_xy[0] - pts[..., 0], atol=1e-12)
    np.testing.assert_allclose(mirror[..., 1], pts[..., 1], atol=1e-12)


# --- collisions ---------------------------------------------------------------------------

START = np.array(TASK.start_joints)
REACH = TASK.obstacle_radius + TASK.link_half_width  # centre distance at which links touch


def test_collision_against_link_side_and_tip():
    assert in_collision(TASK, START, np.array([0.5, 0.3]))
    assert not in_collision(TASK, START, np.array([0.9, 0.9]))
    # Beside link 1 (x = 0.5, y in [0.1, 0.45]): 1 mm inside vs 1 mm outside the reach.
    assert in_collision(TASK, START, np.array([0.5 + REACH - 1e-3, 0.3]))
    assert not in_collision(TASK, START, np.array([0.5 + REACH + 1e-3, 0.3]))
    # Beyond the tip of link 1: the closest point is the joint, not the infinite line.
    assert in_collision(TASK, START, np.array([0.5, 0.45 + REACH - 1e-3]))
    assert not in_collision(TASK, START, np.array([0.5, 0.45 + REACH + 1e-3]))
    np.testing.assert_allclose(clearance(TASK, START, np.array([0.6, 0.3])), 0.1 - REACH)


def test_collision_checks_every_link():
    q = np.array([math.pi / 2, -math.pi / 2, 0.0])  # link 2 from (0.5, 0.45) to (0.2, 0.45)
    assert in_collision(TASK, q, np.array([0.3, 0.45 + REACH - 1e-3]))
    q_batch = np.stack([START, q])
    gaps = clearance(TASK, q_batch, np.array([0.3, 0.5]))
    assert gaps[1] < 0 < gaps[0]
    assert in_collision(TASK, q_batch, np.array([0.3, 0.5]))  # any of the batch


def test_fast_swing_through_small_obstacle_is_caught_between_control_steps():
    task = dataclasses.replace(TASK, obstacle_radius=0.005)
    env = ArmEnv(task, render_images=False)
    env.reset(0)
    # Link 1 swings 0.2 rad in one step (saturated speed); the obstacle sits half-way at
    # r = 0.3 m, 0.03 m from the link before and after the step.
    angle = math.pi / 2 - 0.1
    env.obstacle = np.array(task.base_xy) + 0.3 * np.array([math.cos(angle), math.sin(angle)])
    end = START + np.array([-0.2, 0.0, 0.0])
    assert not in_collision(task, START, env.obstacle)
    assert not in_collision(task, end, env.obstacle)
    _, done, info = env.step(START + np.array([-1.0, 0.0, 0.0]))
    assert done and info["collision"] and not info["success"]
    assert info["clearance"] < 0
    # The arm stopped where it first touched, before the end of the swing.
    assert START[0] - 0.2 < env.joints[0] < START[0] - 0.05


# --- environment dynamics and episode outcomes ---------------------------------------------


def test_reset_is_seeded_and_state_layout():
    env = ArmEnv(render_images=False)
    env.reset(7)
    first = env.state()
    env.reset(8)
    assert not np.allclose(env.state()[3:], first[3:])
    obs = env.reset(7)
    np.testing.assert_array_equal(env.state(), first)
    assert first.dtype == np.float32 and first.shape == (STATE_DIM,) == (sum(LOWDIM_DIMS),)
    np.testing.assert_allclose(first[:3], START)
    np.testing.assert_allclose(first[3:5], env.target, atol=1e-6)
    np.testing.assert_allclose(first[5:7], env.obstacle, atol=1e-6)
    assert obs["joints"].dtype == np.float32 and "image" not in obs


def test_sampled_scenes_put_the_obstacle_across_both_lines():
    env = ArmEnv(render_images=False)
    base = np.array(TASK.base_xy)
    for seed in range(200):
        env.reset(seed)
        start, target, obstacle = env.effector, env.target, env.obstacle
        along = (target - start) / np.linalg.norm(target - start)
        rel = obstacle - start
        assert abs(along[0] * rel[1] - along[1] * rel[0]) <= TASK.obstacle_offset_max + 1e-9
        gap = np.linalg.norm(target - obstacle)
        lo, hi = TASK.obstacle_gap_range
        assert lo - 1e-9 <= gap <= math.hypot(hi, TASK.obstacle_offset_max) + 1e-9
        assert np.linalg.norm(obstacle - base) >= TASK.obstacle_min_base_dist
        margin = TASK.workspace_margin
        assert np.all((target >= margin) & (target <= 1 - margin))
        assert clearance(TASK, START, obstacle) > 0.02


def test_joint_controller_tracks_limits_and_holds_for_success():
    task = dataclasses.replace(TASK, max_steps=30)
    env = ArmEnv(task, render_images=False)
    far = np.array([0.98, 0.98])  # 1 m from the base: out of reach
    env.reset(0)
    env.obstacle = far
    goal = np.array([1.2, -0.8, 0.9])
    env.target = forward_kinematics(task, goal)[-1]
    steps = []
    done = False
    while not done:
        before = env.joints.copy()
        _, done, info = env.step(goal)
        steps.append(np.abs(env.joints - before).max())
    assert info["success"] and not info["collision"]
    assert max(steps) <= task.max_joint_speed * task.dt + 1e-9
    # Success needs success_hold_steps consecutive steps inside the tolerance.
    env.reset(0)
    env.obstacle = far
    env.target = env.effector.copy()
    _, done, info = env.step(START)
    assert not done and info["effector_error"] < 1e-9
    _, done, info = env.step(START)
    assert done and info["success"] and info["steps"] == 2
    # Out-of-limit targets are clipped; the joints never leave their limits.
    env.reset(0)
    env.obstacle = far
    for _ in range(25):
        env.step(np.array([9.0, -9.0, 9.0]))
    np.testing.assert_allclose(env.joints, [math.pi, -2.8, 2.8], atol=1e-5)


def test_timeout_and_bad_actions():
    env = ArmEnv(dataclasses.replace(TASK, max_steps=3), render_images=False)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(START)
    env.reset(1)
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros(2))
    with pytest.raises(ValueError, match="finite"):
        env.step(np.array([np.nan, 0.0, 0.0]))
    outcomes = [env.step(START)[1:] for _ in range(3)]
    assert [done for done, _ in outcomes] == [False, False, True]
    assert outcomes[-1][1]["timeout"] and not outcomes[-1][1]["success"]
    with pytest.raises(RuntimeError, match="finished"):
        env.step(START)


# --- rendering ---------------------------------------------------------------------------


def _pixel_centre_xy(mask: np.ndarray) -> np.ndarray:
    rows, cols = np.nonzero(mask)
    s = mask.shape[0]
    return np.array([(cols.mean() + 0.5) / s, 1.0 - (rows.mean() + 0.5) / s])


def test_render_shape_determinism_and_colours_in_place():
    env = ArmEnv()
    obs = env.reset(3)
    image = obs["image"]
    assert image.shape == (96, 96, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(image, env.reset(3)["image"])
    np.testing.assert_array_equal(image, render(TASK, env.joints, env.target, env.obstacle))
    assert not np.array_equal(image, env.reset(4)["image"])
    env.reset(3)
    px = 1.0 / TASK.image_size
    for colour, centre, radius in (
        (OBSTACLE_RGB, env.obstacle, TASK.obstacle_radius),
        (TARGET_RGB, env.target, TASK.target_radius),
    ):
        mask = np.all(image == colour, axis=-1)
        # Solid-colour pixels form a disc at the right place with the right size.
        np.testing.assert_allclose(_pixel_centre_xy(mask), centre, atol=0.5 * px)
        area = mask.sum() * px**2
        assert math.pi * (radius - px) ** 2 <= area <= math.pi * radius**2
    assert tuple(image[0, 0]) == BACKGROUND_RGB
    # Anti-aliased edges: intermediate shades exist around the obstacle.
    r, c = np.nonzero(np.all(image == OBSTACLE_RGB, axis=-1))
    ring = image[r.min() - 1 : r.max() + 2, c.min() - 1 : c.max() + 2].reshape(-1, 3)
    known = {BACKGROUND_RGB, OBSTACLE_RGB}
    assert any(tuple(p) not in known for p in ring)


def test_render_draws_the_arm():
    env = ArmEnv()
    env.reset(0)
    env.obstacle = np.array([0.9, 0.9])
    q = np.array([math.pi / 2, -math.pi / 2, 0.0])  # link 2 horizontal at y = 0.45
    image = render(TASK, q, env.target, env.obstacle)
    row = int((1 - 0.45) * TASK.image_size)
    # Link 2 spans x = 0.2..0.5 (columns 19..48): dark red channel, unlike the background.
    red = image[row - 1 : row + 2, 25:40, 0].min(axis=0)
    assert np.all(red < 120)
    bg = render(TASK, START, env.target, env.obstacle)[row - 1 : row + 2, 25:40]
    assert np.all(bg == BACKGROUND_RGB)


# --- expert ------------------------------------------------------------------------------


@pytest.mark.slow
def test_expert_succeeds_on_200_seeds_with_both_sides():
    env = ArmEnv(render_images=False)
    expert = Expert(env)
    success, sides, lengths, gaps = [], [], [], []
    for seed in range(200):
        obs = env.reset(seed)
        expert.reset(seed)
        done = False
        previous = env.joints.copy()
        while not done:
            action = expert.act(obs)
            # Smooth targets: bounded step between consecutive actions.
            assert np.abs(action - previous).max() <= 0.15
            previous = action
            obs, done, info = env.step(action)
            gaps.append(info["clearance"])
        success.append(info["success"])
        sides.append(expert.side)
        lengths.append(info["steps"])
    assert np.mean(success) >= 0.99
    assert 0.4 <= np.mean(np.array(sides) == LEFT) <= 0.6
    assert 25 <= min(lengths) and max(lengths) <= 60 and 30 <= np.mean(lengths) <= 50
    assert min(gaps) > 0.01  # never grazes the obstacle


def test_expert_sides_reach_around_opposite_ways_and_are_deterministic():
    env = ArmEnv(render_images=False)
    expert = Expert(env)
    base = np.array(TASK.base_xy)
    for seed in range(5):
        wrists = {}
        for side in (LEFT, RIGHT):
            env.reset(seed)
            expert.reset(seed, side=side)
            plan = expert.plan.copy()
            env.reset(seed)
            expert.reset(seed, side=side)
            np.testing.assert_array_equal(expert.plan, plan)
            # The wrist (end of link 2) ends on the chosen side of the base-target line.
            radial = (env.target - base) / np.linalg.norm(env.target - base)
            wrist = forward_kinematics(TASK, plan[-1])[2] - base
            wrists[side] = radial[0] * wrist[1] - radial[1] * wrist[0]
        assert wrists[LEFT] > 0.1 and wrists[RIGHT] < -0.1
        # Without a forced side, the draw depends on the seed only.
        env.reset(seed)
        expert.reset(seed)
        drawn = expert.side
        env.reset(seed)
        expert.reset(seed)
        assert expert.side == drawn
    with pytest.raises(ValueError, match="side"):
        expert.reset(0, side=0)


# --- demonstrations and training windows --------------------------------------------------


def test_generate_demos_layout_determinism_and_roundtrip(tmp_path):
    data = generate_demos(4, seed=100, with_images=True)
    ends = data["episode_ends"]
    n = ends[-1]
    assert ends.dtype == np.int64 and len(ends) == 4 and np.all(np.diff(ends) > 0)
    assert data["joints"].shape == (n, 3) and data["joints"].dtype == np.float32
    assert data["state"].shape == (n, STATE_DIM) and data["action"].shape == (n, 3)
    assert data["image"].shape == (n, 96, 96, 3) and data["image"].dtype == np.uint8
    np.testing.assert_array_equal(data["episode_seeds"], [100, 101, 102, 103])
    assert set(data["episode_sides"].tolist()) <= {LEFT, RIGHT}
    np.testing.assert_array_equal(data["state"][:, :3], data["joints"])
    # Every episode starts at the start pose, and its scene stays fixed within the episode.
    starts = np.concatenate([[0], ends[:-1]])
    np.testing.assert_allclose(data["joints"][starts], np.tile(START, (4, 1)), atol=1e-6)
    for s, e in zip(starts, ends, strict=True):
        assert np.ptp(data["state"][s:e, 3:], axis=0).max() == 0
    # Replaying an episode's actions reproduces its success.
    env = ArmEnv(render_images=False)
    env.reset(int(data["episode_seeds"][2]))
    for a in data["action"][starts[2] : ends[2]]:
        _, done, info = env.step(a)
    assert done and info["success"]

    again = generate_demos(4, seed=100, with_images=False)
    assert "image" not in again
    for key in ("joints", "state", "action", "episode_ends", "episode_sides"):
        np.testing.assert_array_equal(again[key], data[key])

    path = tmp_path / "demos.npz"
    save_npz(path, data)
    loaded = load_npz(path)
    assert loaded.keys() == data.keys()
    for key in data:
        np.testing.assert_array_equal(loaded[key], data[key])
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="episode_ends"):
        load_npz(tmp_path / "other.npz")


def _chi_reference_windows(episode_ends, horizon, pad_before, pad_after):
    """Straight port of Chi et al.'s ``create_indices`` + ``sample_sequence`` padding."""
    windows = []
    for i, end in enumerate(episode_ends):
        start = 0 if i == 0 else episode_ends[i - 1]
        length = end - start
        for idx in range(-pad_before, length - horizon + pad_after + 1):
            b0 = max(idx, 0) + start
            b1 = min(idx + horizon, length) + start
            s0 = b0 - (idx + start)
            s1 = horizon - ((idx + horizon + start) - b1)
            sample = list(range(b0, b1))
            windows.append([sample[0]] * s0 + sample + [sample[-1]] * (horizon - s1))
    return np.array(windows)


def test_sequence_sampler_padding_matches_chi_et_al():
    ends = np.array([5, 8])
    data = {
        "state": np.arange(8, dtype=np.float32)[:, None] * 10,
        "action": np.arange(8, dtype=np.float32)[:, None],
        "episode_ends": ends,
    }
    sampler = SequenceSampler(data, horizon=4, n_obs_steps=2, n_action_steps=3)
    expected = [
        [0, 0, 1, 2], [0, 1, 2, 3], [1, 2, 3, 4], [2, 3, 4, 4], [3, 4, 4, 4],
        [5, 5, 6, 7], [5, 6, 7, 7], [6, 7, 7, 7],
    ]  # fmt: skip
    np.testing.assert_array_equal(sampler.indices, expected)
    item = sampler[0]
    np.testing.assert_array_equal(item["obs"]["state"][:, 0], [0, 0])
    np.testing.assert_array_equal(item["action"][:, 0], [0, 0, 1, 2])
    np.testing.assert_array_equal(sampler[7]["obs"]["state"][:, 0], [60, 70])
    masked = SequenceSampler(data, 4, 2, 3, episode_mask=np.array([False, True]))
    np.testing.assert_array_equal(masked.indices, expected[5:])

    rng = np.random.default_rng(0)
    ends = np.cumsum(rng.integers(1, 40, size=30))
    ref = _chi_reference_windows(ends, horizon=16, pad_before=1, pad_after=7)
    sampler = SequenceSampler(
        {"state": np.zeros((ends[-1], 1)), "action": np.zeros((ends[-1], 1)), "episode_ends": ends},
        horizon=16,
        n_obs_steps=2,
        n_action_steps=8,
    )
    np.testing.assert_array_equal(sampler.indices, ref)


def test_sequence_sampler_on_demos_gives_batches_of_the_right_shape():
    data = generate_demos(3, seed=0, with_images=True)
    sampler = SequenceSampler(data, 16, 2, 8, obs_keys=("state", "image"))
    lengths = np.diff(np.concatenate([[0], data["episode_ends"]]))
    assert len(sampler) == int(np.sum(lengths - 16 + 1 + 7 + 1))
    batch = sampler.batch(np.array([0, 5, len(sampler) - 1]))
    assert batch["obs"]["state"].shape == (3, 2, STATE_DIM)
    assert batch["obs"]["image"].shape == (3, 2, 96, 96, 3)
    assert batch["action"].shape == (3, 16, 3)
    single = sampler[5]
    np.testing.assert_array_equal(single["obs"]["image"], batch["obs"]["image"][1])
    np.testing.assert_array_equal(single["action"], batch["action"][1])
    # The very last window holds the final action after the episode ends.
    np.testing.assert_array_equal(batch["action"][2][-8:], np.repeat(data["action"][-1:], 8, 0))
    with pytest.raises(KeyError, match="lacks"):
        SequenceSampler(data, 16, 2, 8, obs_keys=("depth",))
