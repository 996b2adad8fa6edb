"""Meta-World on MuJoCo: seeded starts, the scripted experts, the camera, demonstrations."""

from pathlib import Path

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
from bac_ros.sim.tasks import task_of

DRAWER = MetaWorldTaskConfig(task="drawer-open")
ACTION_NAMES_EXPECTED = ["dx", "dy", "dz", "gripper"]


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
    # private: MetaWorldEnv exposes no MuJoCo model/data, and the camera geometry needs both
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
    # private (here and below): MetaWorldEnv exposes no MuJoCo model/data to repaint or locate
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


def test_the_wrist_camera_sees_the_object_the_corner_camera_barely_does():
    """``camera`` takes effect: pick-place's object, painted magenta, covers a few pixels of the
    corner view and many of the wrist camera's (gripperPOV); a camera the model lacks is
    refused."""
    pixels = {}
    for camera in ("corner", "gripperPOV"):
        env = MetaWorldEnv(MetaWorldTaskConfig(task="pick-place", camera=camera),
                           render_images=True)
        model = env._env.model  # private: MetaWorldEnv exposes no MuJoCo model to repaint
        puck = [g for g in range(model.ngeom) if model.geom_bodyid[g] == model.body("obj").id]
        model.geom_matid[puck], model.geom_rgba[puck] = -1, [1, 0, 1, 1]  # no texture over it
        img = env.reset(100_000)["image"]
        magenta = (img[..., 0] > 150) & (img[..., 1] < 80) & (img[..., 2] > 150)
        pixels[camera] = int(magenta.sum())
        env.close()
    assert 0 < pixels["corner"] < 30 and pixels["gripperPOV"] > 3 * pixels["corner"]
    with pytest.raises(ValueError, match="camera 'wrist' is not in the pick-place model"):
        MetaWorldEnv(MetaWorldTaskConfig(task="pick-place", camera="wrist"))


def test_cli_demos_record_the_chosen_camera(tmp_path, capsys):
    """``bac demos --camera``: the frames are that camera's (a camera policy's windows need its
    own view); on the arm or without images it is refused."""
    import shutil

    import yaml

    from bac_ros.cli import main
    from bac_ros.policy.loading import load_checkpoint
    from bac_ros.sim.demos import load_npz

    out = tmp_path / "wrist.npz"
    assert main(["demos", "--task", "metaworld:pick-place", "--episodes", "1", "--camera",
                 "gripperPOV", "--out", str(out)]) == 0
    env = MetaWorldEnv(MetaWorldTaskConfig(task="pick-place", camera="gripperPOV"),
                       render_images=True)
    np.testing.assert_array_equal(load_npz(out)["image"][0], env.reset(0)["image"])
    env.close()
    for args in (["--task", "arm"], ["--task", "metaworld:pick-place", "--no-images"]):
        assert main(["demos", *args, "--camera", "gripperPOV", "--out", str(out)]) == 1
        assert "--camera picks the Meta-World camera" in capsys.readouterr().err
    # a policy trained on them records their camera; windows for a policy of another view are
    # refused, for its own view written
    ckpt = tmp_path / "wrist"
    assert main(["train", "--task", "metaworld:pick-place", "--variant", "image", "--demos",
                 str(out), "--steps", "1", "--batch-size", "2", "--out", str(ckpt)]) == 0
    assert task_of(load_checkpoint(ckpt)).camera == "gripperPOV"
    corner = tmp_path / "corner"
    shutil.copytree(ckpt, corner)
    config = yaml.safe_load((corner / "config.yaml").read_text())
    config["task"]["camera"] = "corner"
    (corner / "config.yaml").write_text(yaml.safe_dump(config))
    windows = ["windows", "--demos", str(out), "--count", "4", "--out", str(tmp_path / "o.npz")]
    assert main([*windows, "--checkpoint", str(corner)]) == 1
    assert "holds frames of the 'gripperPOV' camera" in capsys.readouterr().err
    assert main([*windows, "--checkpoint", str(ckpt)]) == 0
    bare = tmp_path / "bare.npz"
    assert main(["demos", "--task", "metaworld:pick-place", "--episodes", "1", "--no-images",
                 "--out", str(bare)]) == 0
    assert main(["windows", "--demos", str(bare), "--count", "4", "--out",
                 str(tmp_path / "o.npz"), "--checkpoint", str(ckpt)]) == 1
    assert "holds no camera frames" in capsys.readouterr().err


def test_a_recorded_bag_holds_what_the_camera_policy_reads(tmp_path):
    """``bac record`` of a Meta-World task writes the topics sim_node publishes, ``goal``
    included, through the chosen camera: the camera policy's windows come out of the bag equal
    to the simulator's observations (profiling a camera policy's schedule from a bag needs all
    three of its keys)."""
    from helpers import TINY

    from bac_ros.io.bag import BagError, read_observation_windows
    from bac_ros.policy.policy import Policy
    from bac_ros.sim.record import record_expert_bag
    from bac_ros.train.train import TrainConfig, build_initial, task_spec

    wrist = MetaWorldTaskConfig(task="pick-place", camera="gripperPOV")
    data = generate_demos(wrist, 1, seed=0, with_images=True)
    policy = Policy(build_initial(TrainConfig(variant="image", model=dict(TINY)), data,
                                  task_spec(wrist, "image")), device="cpu")
    bag = record_expert_bag(tmp_path / "bag", episodes=1, seed=7, task=wrist)
    windows = read_observation_windows(bag, policy, JOINT_NAMES)
    env = MetaWorldEnv(wrist, render_images=True)
    first = env.reset(7)
    env.close()
    assert set(windows[0]) == {"image", "proprio", "goal"}
    for key in ("proprio", "goal"):
        np.testing.assert_array_equal(windows[0][key][-1], first[key])
    np.testing.assert_array_equal(windows[0]["image"][-1], first["image"])  # HWC, as rendered
    # the frames name their camera, so a bag of another view is refused, not profiled
    corner = record_expert_bag(tmp_path / "corner", episodes=1, seed=7,
                               task=MetaWorldTaskConfig(task="pick-place"))
    with pytest.raises(BagError, match="frame_id is 'corner'; this policy was trained on the "
                                       "'gripperPOV' camera"):
        read_observation_windows(corner, policy, JOINT_NAMES)


def test_first_frame_draws_this_episodes_goal():
    """Meta-World places the goal marker after its last kinematics pass; the reset frame must
    show it where this episode's goal is (a 2-3 px sphere), not where the last start put it."""
    import mujoco

    env = MetaWorldEnv(MetaWorldTaskConfig(task="pick-place"), render_images=True)
    env.reset(100_000)
    obs = env.reset(100_001)
    np.testing.assert_array_equal(obs["goal"], obs["state"][36:])
    mujoco.mj_forward(env._env.model, env._env.data)  # every derived position up to date
    np.testing.assert_array_equal(obs["image"], env._renderer.frame())
    env.close()


def test_demonstrations_label_clean_expert_actions():
    data = generate_demos(DRAWER, 2, seed=0, noise=0.3)
    ends = data["episode_ends"]
    assert len(ends) == 2 and ends[-1] == len(data["action"]) == len(data["state"])
    assert data["state"].shape[1] == 39 and data["proprio"].shape[1] == 4
    np.testing.assert_array_equal(data["proprio"], data["state"][:, :4])
    np.testing.assert_array_equal(data["goal"], data["state"][:, 36:])
    assert np.all(np.abs(data["action"]) <= 1.0)
    # labels are the expert's action at each recorded state, not the noisy executed one
    expert = expert_policy(DRAWER)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        relabel = np.stack([np.clip(expert.get_action(s.astype(np.float64)), -1, 1)
                            for s in data["state"][:20]])
    np.testing.assert_allclose(data["action"][:20], relabel, atol=1e-6)


@pytest.mark.ros
def test_sim_node_runs_a_metaworld_task_for_the_policy_node(tmp_path):
    """sim_node as a Sawyer on MuJoCo, policy_node (Meta-World parameters) over DDS, lockstep:
    the Sawyer's joint states, 4-d chunks executed by time, no joint_trajectory, one result."""
    import json

    import rclpy
    import yaml
    from ament_index_python.packages import get_package_share_directory
    from helpers import SMALL
    from rclpy.parameter import Parameter
    from ros_helpers import run_sim, start_policy_node
    from sensor_msgs.msg import JointState
    from std_msgs.msg import String
    from trajectory_msgs.msg import JointTrajectory

    from bac_ros.nodes.sim_node import SimNode
    from bac_ros.policy.checkpoint import save_native
    from bac_ros.sim.metaworld import ACTION_NAMES, ACTION_TYPE, OBS_VARIANTS, task_record
    from bac_ros.train.train import TaskSpec, TrainConfig, build_initial

    data = generate_demos(DRAWER, 2, seed=0)
    spec = TaskSpec(OBS_VARIANTS["lowdim"], ACTION_NAMES, DRAWER.dt, task_record(DRAWER),
                    action_type=ACTION_TYPE)
    cfg = TrainConfig(model=dict(SMALL), horizon=8, n_action_steps=4)
    ckpt = save_native(build_initial(cfg, data, spec), tmp_path / "mw")
    share = get_package_share_directory("bac_ros")
    params = yaml.safe_load(open(f"{share}/config/policy_metaworld.yaml"))["bac_policy"][
        "ros__parameters"]
    params.update(checkpoint=str(ckpt), device="cpu", use_sim_time=True, replan_steps=1,
                  seam="none")

    rclpy.init()
    try:
        sim = SimNode(parameter_overrides=[
            Parameter("task", value="metaworld:drawer-open"), Parameter("mode", value="lockstep"),
            Parameter("episodes", value=1), Parameter("images", value=False),
            Parameter("n_action_steps", value=4), Parameter("max_steps", value=24)])
        policy = start_policy_node(params)
        probe = rclpy.create_node("mw_probe")
        joints, results, trajectories = [], [], []
        probe.create_subscription(JointState, "joint_states", joints.append, 50)
        probe.create_subscription(String, "episode_result", results.append, 10)
        probe.create_subscription(JointTrajectory, "joint_trajectory", trajectories.append, 10)
        assert run_sim(sim, probe, policy, lambda: sim.finished and results, timeout=180)
    finally:
        rclpy.try_shutdown()
    result = json.loads(results[0].data)
    assert result["steps"] == 24 and result["seed"] == 100_000 and not result["success"]
    assert result["timeout_waiting"] is False
    assert len(sim.chunk_arrivals) >= 24 // 4  # every observation's chunk came and was used
    assert joints and list(joints[0].name) == JOINT_NAMES and len(joints[0].position) == 7
    env = MetaWorldEnv(DRAWER)
    env.reset(100_000)
    np.testing.assert_allclose(joints[0].position, env.joint_positions(), atol=1e-9)
    assert trajectories == []  # end-effector actions are never sent as joint trajectories


@pytest.mark.ros
def test_the_policy_node_acts_only_on_images_of_its_own_camera(tmp_path):
    """sim_node renders pick-place through the wrist camera and names it in each image's
    frame_id; a policy trained on the corner camera refuses every frame (no chunk, the
    reason in its warning), one trained on the wrist camera answers them (lockstep over DDS)."""
    import json

    import rclpy
    import yaml
    from ament_index_python.packages import get_package_share_directory
    from helpers import TINY
    from rclpy.parameter import Parameter
    from rclpy.qos import qos_profile_sensor_data
    from ros_helpers import run_sim, start_policy_node
    from sensor_msgs.msg import Image
    from std_msgs.msg import String

    from bac_ros.nodes.sim_node import SimNode
    from bac_ros.policy.checkpoint import save_native
    from bac_ros.train.train import TrainConfig, build_initial, task_spec

    wrist = MetaWorldTaskConfig(task="pick-place", camera="gripperPOV")
    data = generate_demos(wrist, 1, seed=0, with_images=True)
    cfg = TrainConfig(variant="image", model=dict(TINY), horizon=8, n_action_steps=4)
    share = get_package_share_directory("bac_ros")
    params = yaml.safe_load(open(f"{share}/config/policy_metaworld.yaml"))["bac_policy"][
        "ros__parameters"]
    params.update(device="cpu", use_sim_time=True, replan_steps=1, seam="none")

    def episode(camera: str):
        task = MetaWorldTaskConfig(task="pick-place", camera=camera)
        ckpt = save_native(build_initial(cfg, data, task_spec(task, "image")), tmp_path / camera)
        sim = SimNode(parameter_overrides=[
            Parameter("task", value="metaworld:pick-place"), Parameter("mode", value="lockstep"),
            Parameter("camera", value="gripperPOV"), Parameter("episodes", value=1),
            Parameter("n_action_steps", value=4), Parameter("max_steps", value=8),
            Parameter("chunk_timeout", value=4.0)])
        policy = start_policy_node({**params, "checkpoint": str(ckpt)})
        probe = rclpy.create_node("camera_probe")
        frames, results = [], []
        probe.create_subscription(Image, "image", frames.append, qos_profile_sensor_data)
        probe.create_subscription(String, "episode_result", results.append, 10)
        assert run_sim(sim, probe, policy, lambda: sim.finished and results, timeout=120)
        rejected = (policy[0].stats["rejected_msgs"], policy[0].last_problem)
        return json.loads(results[0].data), frames, rejected, sim.chunk_arrivals

    rclpy.init()
    try:
        refused, frames, rejected, arrivals = episode("corner")
        answered, _, rejected_wrist, arrivals_wrist = episode("gripperPOV")
    finally:
        rclpy.try_shutdown()
    assert frames and {f.header.frame_id for f in frames} == {"gripperPOV"}
    assert refused["timeout_waiting"] is True and refused["steps"] == 0
    assert arrivals == [] and rejected[0] >= 1
    assert "frame_id is 'gripperPOV'; this policy was trained on the 'corner' camera" \
        in rejected[1]
    assert answered["timeout_waiting"] is False and answered["steps"] == 8
    assert rejected_wrist[0] == 0 and len(arrivals_wrist) >= 8 // 4


def test_end_effector_actions_are_never_published_as_joint_trajectories(tmp_path):
    import yaml
    from ament_index_python.packages import get_package_share_directory

    from bac_ros.nodes.settings import live_settings
    from bac_ros.policy.policy import Policy
    from bac_ros.sim.metaworld import ACTION_NAMES, ACTION_TYPE, OBS_VARIANTS, task_record
    from bac_ros.train.train import TaskSpec, TrainConfig, build_initial

    spec = TaskSpec(OBS_VARIANTS["lowdim"], ACTION_NAMES, DRAWER.dt, task_record(DRAWER),
                    action_type=ACTION_TYPE)
    tiny = dict(n_layer=1, n_head=2, n_emb=16, p_drop_emb=0.0, p_drop_attn=0.0,
                causal_attn=True, time_as_cond=True, n_cond_layers=0)
    policy = Policy(build_initial(TrainConfig(model=tiny), generate_demos(DRAWER, 1), spec),
                    device="cpu")
    share = get_package_share_directory("bac_ros")
    values = yaml.safe_load(open(f"{share}/config/policy_metaworld.yaml"))["bac_policy"][
        "ros__parameters"]
    assert live_settings(values, policy).publish_trajectory is False
    with pytest.raises(ValueError, match="publish_trajectory is true, but this policy's "
                                         "actions are ee_delta"):
        live_settings(dict(values, publish_trajectory=True), policy)


SHIPPED = sorted(p.name for p in (Path(__file__).resolve().parents[1] / "checkpoints").glob(
    "metaworld_*"))


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_checkpoint_acts_in_limits_and_succeeds(name):
    """Each bundled Meta-World policy: end-effector actions that the node's limits bound, and it
    does its task on held-out seeds (with its shipped tuned schedule, which keeps the suite
    quick; the 200-seed tables are in METAWORLD.md)."""
    from bac_ros.policy.factory import load_policy
    from bac_ros.sim.evaluate import evaluate

    ckpt = Path(__file__).resolve().parents[1] / "checkpoints" / name
    policy = load_policy(ckpt, device="cpu")
    assert policy.action_type == "ee_delta" and policy.action_names == ACTION_NAMES_EXPECTED
    env = MetaWorldEnv(task_of(policy), render_images=policy.reads_images)
    first = env.reset(100_000)
    env.close()
    window = {k: np.stack([first[k]] * policy.n_obs_steps) for k in policy.obs_spec}
    chunk = policy.predict(window, seed=0)
    assert chunk.shape == (policy.n_action_steps, 4) and np.isfinite(chunk).all()
    # raw samples may overshoot the action space slightly (the gripper's -1 is the data's edge);
    # the node's limits for these policies are exactly that space and clip the rest
    assert np.all(np.abs(chunk) <= 1.1)
    import yaml
    from ament_index_python.packages import get_package_share_directory

    share = get_package_share_directory("bac_ros")
    node = yaml.safe_load(open(f"{share}/config/policy_metaworld.yaml"))["bac_policy"][
        "ros__parameters"]
    assert (node["action_low"], node["action_high"]) == (ACTION_LOW, ACTION_HIGH)
    report = evaluate(policy, f"bac:{ckpt / 'tuned_x5.yaml'}", episodes=3, seed=100_000)
    assert sum(e["success"] for e in report["per_episode"]) >= 2, report["per_episode"]


@pytest.mark.ros
def test_demo_runs_the_metaworld_checkpoint_from_bag_to_real_time(tmp_path, capfd):
    """``make demo`` with the shipped drawer-open checkpoint, real processes over DDS (episodes
    cut to 40 steps, the schedule profiled on 4 histories): the checkpoint's task is recorded by
    its expert into a bag on the topics sim_node publishes, the BAC schedule compiled from that
    bag names the checkpoint's model, and sim_node runs the task against policy_node with full
    compute, that schedule and the shipped tuned sampler."""
    import json
    from pathlib import Path

    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    from bac_ros.cache.schedule import Schedule
    from bac_ros.nodes import demo
    from bac_ros.policy.policy import Policy

    ckpt = Path(__file__).resolve().parents[1] / "checkpoints" / "metaworld_drawer_open_lowdim"
    out = tmp_path / "demo"
    assert demo.main(["--checkpoint", str(ckpt), "--episodes", "1", "--max-steps", "40",
                      "--max-observations", "4", "--out", str(out)]) == 0
    printed = capfd.readouterr().out
    assert "real-time execution (config/policy_metaworld.yaml)" in printed
    assert "(real time at 80 Hz on this machine, seeds 100000..100000, episodes capped at 40 " \
           "steps" in printed

    store = get_typestore(Stores.ROS2_KILTED)
    with AnyReader([out / "expert_bag"], default_typestore=store) as reader:  # sim_node's topics
        types = {c.topic.lstrip("/"): c.msgtype for c in reader.connections}
        counts = {c.topic.lstrip("/"): c.msgcount for c in reader.connections}
        first = {}
        for conn, _, raw in reader.messages():
            first.setdefault(conn.topic.lstrip("/"), reader.deserialize(raw, conn.msgtype))
    assert types == {"joint_states": "sensor_msgs/msg/JointState",
                     "state": "std_msgs/msg/Float32MultiArray",
                     "proprio": "std_msgs/msg/Float32MultiArray",
                     "goal": "std_msgs/msg/Float32MultiArray"}
    assert len(set(counts.values())) == 1 and counts["state"] > 10 * 20
    env = MetaWorldEnv(DRAWER)
    start = env.reset(0)  # demonstration seeds start at 0
    assert list(first["joint_states"].name) == JOINT_NAMES
    np.testing.assert_allclose(first["joint_states"].position, env.joint_positions())
    np.testing.assert_array_equal(first["state"].data, start["state"])
    np.testing.assert_array_equal(first["proprio"].data, start["proprio"])
    np.testing.assert_array_equal(first["goal"].data, start["goal"])
    env.close()

    sched = Schedule.load(out / "bac_s10_k5.yaml")
    assert sched.fingerprint == Policy.from_pretrained(ckpt, device="cpu").fingerprint
    assert sched.method["budget"] == 10 and sched.provenance["observations"] == 4
    tuned = Schedule.load(ckpt / "tuned_x5.yaml")
    rows = json.loads((out / "summary.json").read_text())
    assert list(rows) == ["full", "BAC S=10 k=5", "tuned DDIM-5"]
    for i, (method, ident) in enumerate(zip(rows, ("full compute", sched.id, tuned.id))):
        assert f"schedule {ident}, device cpu" in (out / f"policy_{i}.log").read_text()
        (result,) = rows[method]["results"]
        assert result["seed"] == 100_000 and result["mode"] == "realtime"
        assert result["steps"] == 40 or result["success"] and result["steps"] < 40
        assert printed.count(f"\n{method} ") == 1  # one row of the table each


def test_frames_no_window_reads_are_not_rendered_and_change_nothing(monkeypatch):
    """A camera episode renders only the ticks its next window reads (the last n_obs_steps of
    each chunk; none while every chunk arrives too late to act), and ends exactly as one that
    renders every tick (an observer sees every observation), lockstep and real time."""
    from bac_ros.policy.factory import load_policy
    from bac_ros.sim import metaworld
    from bac_ros.sim.evaluate import evaluate

    frames = []
    real_frame = metaworld.Renderer.frame
    monkeypatch.setattr(metaworld.Renderer, "frame",
                        lambda self: frames.append(1) or real_frame(self))
    ckpt = Path(__file__).resolve().parents[1] / "checkpoints" / "metaworld_pick_place_wrist"
    policy = load_policy(ckpt, device="cpu")
    n, tick_ms = policy.n_action_steps, policy.dt * 1e3
    for kw in ({"mode": "lockstep"}, {"mode": "realtime", "latency_ms": 3.5 * tick_ms},
               {"mode": "realtime", "latency_ms": (n + 0.5) * tick_ms}):
        runs = []
        for observer in (None, lambda *a: None):
            frames.clear()
            report = evaluate(policy, "ddim:10", episodes=1, seed=100_000, observer=observer,
                              **kw)
            steps = sum(e["steps"] for e in report["per_episode"])
            runs.append(([(e["success"], e["steps"], e["chunks"], e["final_error"])
                          for e in report["per_episode"]], len(frames)))
        (lazy, lazy_frames), (eager, eager_frames) = runs
        assert lazy == eager, kw
        assert eager_frames == steps + 1  # every tick and the reset
        if kw.get("latency_ms", 0) > n * tick_ms:
            assert lazy_frames == 1  # no chunk acts: no window is read after the reset
        else:
            assert lazy_frames <= 1 + (steps // n + 1) * policy.n_obs_steps


def test_a_used_env_restarts_like_a_new_one(monkeypatch):
    """Evaluation hands a finished episode's MuJoCo env and renderer on to the next episode
    (building them costs more than a camera episode's frames): episodes on used envs must end
    exactly as on new ones, and only as many envs are built as episodes run at once."""
    from bac_ros.policy.factory import load_policy
    from bac_ros.sim import evaluate as ev

    built = []
    real_make_env = ev.make_env
    monkeypatch.setattr(ev, "make_env", lambda *a: built.append(1) or real_make_env(*a))
    monkeypatch.setattr(ev, "RENDER_GROUP", 2)  # seeds 100000-1 together, then 100002 alone
    ckpt = Path(__file__).resolve().parents[1] / "checkpoints" / "metaworld_pick_place_wrist"
    policy = load_policy(ckpt, device="cpu")

    def run(give):
        monkeypatch.setattr(ev._Envs, "give", give)
        built.clear()
        report = ev.evaluate(policy, "ddim:10", episodes=3, seed=100_000)
        return [(e["seed"], e["success"], e["steps"], e["chunks"], e["final_error"])
                for e in report["per_episode"]], len(built)

    hand_on = ev._Envs.give
    new, new_built = run(lambda self, env: env.close())  # a finished episode's env is closed
    used, used_built = run(hand_on)
    assert (new_built, used_built) == (3, 2)  # the third episode reuses one of the first two's
    assert used == new
