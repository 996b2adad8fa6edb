"""The ROS nodes with real rclpy over Fast DDS, bags through rosbags, and the launch files."""

import ast
import time
from pathlib import Path

import numpy as np
import pytest
import rclpy
import torch
from ament_index_python.packages import get_package_prefix, get_package_share_directory
from diagnostic_msgs.msg import DiagnosticArray
from helpers import SMALL
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import qos_profile_sensor_data
from ros_helpers import spin_until, start_policy_node, stop_policy_node
from sensor_msgs.msg import Image, JointState
from trajectory_msgs.msg import JointTrajectory

from bac_ros.cache.schedule import Schedule
from bac_ros.io.bag import BagError, read_observation_windows
from bac_ros.models.normalizer import LinearNormalizer
from bac_ros.msg import ActionChunk
from bac_ros.nodes.overhead import measure as measure_overhead
from bac_ros.nodes.policy_node import PolicyNode
from bac_ros.policy.build import new_checkpoint
from bac_ros.policy.checkpoint import save_native
from bac_ros.policy.policy import Policy
from bac_ros.sim.arm import JOINT_NAMES
from bac_ros.sim.record import record_expert_bag

pytestmark = pytest.mark.ros
IMAGE_OBS = {"image": {"shape": [3, 32, 32], "type": "rgb"},
             "joints": {"shape": [3], "type": "low_dim"}}


@pytest.fixture(scope="module")
def image_ckpt(tmp_path_factory):
    norm = LinearNormalizer()
    norm.fit_image_range("image")
    norm.fit_limits("joints", torch.rand(64, 3) * 3 - 1)
    norm.fit_limits("action", torch.rand(64, 3) * 3 - 1)
    ckpt = new_checkpoint(IMAGE_OBS, 3, norm, horizon=8, n_action_steps=4, model=SMALL,
                          obs_encoder={"type": "small_cnn"}, num_inference_steps=10)
    return save_native(ckpt, tmp_path_factory.mktemp("ckpt") / "image")


def _image(stamp, rng, size=48):
    data = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    msg = Image(height=size, width=size, encoding="rgb8", step=size * 3, data=data.tobytes())
    msg.header.stamp = stamp
    return msg


def test_policy_node_publishes_stamped_chunks_and_trajectories(ros, image_ckpt, tmp_path):
    node, executor, thread = start_policy_node({"checkpoint": str(image_ckpt), "device": "cpu",
                                                "action_low": [-10.0], "action_high": [10.0],
                                                "replan_steps": 1})
    client = rclpy.create_node("test_client")
    chunks, trajs, diags = [], [], []
    client.create_subscription(DiagnosticArray, "/diagnostics", diags.append, 10)
    client.create_subscription(ActionChunk, "action_chunk", chunks.append, 10)
    client.create_subscription(JointTrajectory, "joint_trajectory", trajs.append, 10)
    img_pub = client.create_publisher(Image, "image", qos_profile_sensor_data)
    js_pub = client.create_publisher(JointState, "joint_states", 10)
    local = rclpy.executors.SingleThreadedExecutor()
    local.add_node(client)
    rng = np.random.default_rng(0)
    sent = []
    try:
        assert spin_until(local, lambda: img_pub.get_subscription_count() > 0, 10)
        t0 = client.get_clock().now()
        for i in range(12):
            stamp = (t0 + rclpy.duration.Duration(seconds=0.1 * i)).to_msg()
            js = JointState(name=["joint3", "joint1", "joint2", "gripper"],
                            position=[0.3, 0.1, 0.2, 9.0])
            js.header.stamp = stamp
            js_pub.publish(js)
            img_pub.publish(_image(stamp, rng))
            sent.append(stamp.sec + stamp.nanosec * 1e-9)
            spin_until(local, lambda: False, timeout=0.1)
        assert spin_until(local, lambda: len(chunks) >= 3 and len(trajs) >= 3, 30)
        assert spin_until(local, lambda: any(
            dict((kv.key, kv.value) for kv in d.status[0].values).get("chunks", "0") != "0"
            for d in diags), 10)
    finally:
        stop_policy_node(node, executor, thread)
    for c in chunks:  # chunk_actions -1 (default): all 7 actions predicted from the obs step on
        assert (c.horizon, c.action_dim) == (7, 3) and len(c.actions) == 21
        assert list(c.action_names) == ["joint1", "joint2", "joint3"]
        assert c.dt == pytest.approx(0.1) and c.inference_time > 0
        stamp = c.header.stamp.sec + c.header.stamp.nanosec * 1e-9
        assert min(abs(stamp - s) for s in sent) < 1e-6  # the stamp of an observation we sent
        assert np.isfinite(c.actions).all()
    values = [dict((kv.key, kv.value) for kv in d.status[0].values) for d in diags]
    last = [v for v in values if v["chunks"] != "0"][-1]
    assert float(last["latency_ms_mean"]) > 0 and last["cache_update_ratio"] == "1.0000"
    assert last["rejected_msgs"] == "0" and last["schedule_id"] == ""
    t = trajs[0]
    assert list(t.joint_names) == ["joint1", "joint2", "joint3"] and len(t.points) == 7
    assert [p.time_from_start.nanosec for p in t.points] == [k * 100_000_000 for k in range(7)]
    match = [c for c in chunks if c.header.stamp == t.header.stamp][0]
    np.testing.assert_allclose(np.asarray(t.points[1].positions),
                               np.asarray(match.actions[3:6]), atol=1e-6)


def test_schedule_swap_by_parameter(ros, image_ckpt, tmp_path):
    policy = Policy.from_pretrained(image_ckpt, device="cpu")
    rng = np.random.default_rng(1)
    obs = [{"image": rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8),
            "joints": rng.random((2, 3)).astype(np.float32)} for _ in range(4)]
    sched = policy.compile_schedule(policy.profile(obs), budget=3, top_k=2)
    path = sched.save(tmp_path / "s.yaml")
    node, executor, thread = start_policy_node({"checkpoint": str(image_ckpt), "device": "cpu"})
    try:
        assert node.policy.schedule_id == ""
        ok = node.set_parameters([Parameter("schedule", value=str(path))])[0]
        assert ok.successful and node.policy.schedule_id == sched.id
        assert node.policy.plan is not None and node.policy.plan.mean() < 1
        other = Schedule.load(path)
        other.fingerprint = "0" * 16
        bad = other.save(tmp_path / "bad.yaml")
        res = node.set_parameters([Parameter("schedule", value=str(bad))])[0]
        assert not res.successful and "compiled for model" in res.reason
        assert node.policy.schedule_id == sched.id  # the good schedule stays
        assert node.set_parameters([Parameter("schedule", value="")])[0].successful
        assert node.policy.plan is None
    finally:
        stop_policy_node(node, executor, thread)


def test_configure_fails_cleanly_and_can_retry(ros, image_ckpt, tmp_path):
    node = PolicyNode(parameter_overrides=[Parameter("checkpoint", value=str(tmp_path)),
                                           Parameter("device", value="cpu")])
    # FAILURE, not ERROR: the configure caught its problem (rclpy turns a raised one into ERROR)
    assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
    assert node.policy is None  # still unconfigured, still alive
    node.set_parameters([Parameter("checkpoint", value=str(image_ckpt))])
    assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
    assert node.policy is not None
    node.destroy_node()  # tears down the policy, timers and publishers first


def test_compressed_image_is_refused_for_a_policy_without_a_camera(ros, lowdim_ckpt, capfd):
    node = PolicyNode(parameter_overrides=[Parameter("checkpoint", value=str(lowdim_ckpt)),
                                           Parameter("device", value="cpu"),
                                           Parameter("compressed_image", value=True)])
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
        assert node.policy is None
        assert "compressed_image is true, but this policy reads no camera" in \
            capfd.readouterr().err
    finally:
        node.destroy_node()


def test_overhead_client_measures_the_policy_node_process(image_ckpt):
    """What ``make bench`` runs for its node-overhead figure: the installed policy_node as its
    own process, one frame at a time, each answered before the next."""
    res = measure_overhead(image_ckpt, chunks=3, warmup=1, device="cpu")
    assert res["schedule"] == "full" and res["chunks"] == 3 and res["device"] == "cpu"
    assert res["model_ms_median"] > 0 and res["node_overhead_ms_median"] > 0
    assert 0 < res["client_overhead_ms_median"] <= res["client_overhead_ms_p95"]


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_bag_profile_equals_in_process_profile(tmp_path, storage):
    """A bag written in either storage yields the schedule of the same observations profiled
    in-process (windows built from the task directly, as the policy node would see them)."""
    norm = LinearNormalizer()
    norm.fit_limits("state", torch.rand(64, 7) * 2 - 0.5)
    norm.fit_limits("action", torch.rand(64, 3))
    ckpt = save_native(new_checkpoint({"state": {"shape": [7], "type": "low_dim"}}, 3, norm,
                                      horizon=8, n_action_steps=4, model=SMALL,
                                      num_inference_steps=10), tmp_path / "lowdim")
    policy = Policy.from_pretrained(ckpt, device="cpu")
    bag = record_expert_bag(tmp_path / f"bag_{storage}", episodes=2, storage=storage,
                            images=False)
    windows = read_observation_windows(bag, policy, JOINT_NAMES)
    from bac_ros.sim.arm import ArmEnv
    from bac_ros.sim.expert import Expert

    env, direct = ArmEnv(render_images=False), []
    expert = Expert(env)
    for seed in (0, 1):  # the bag's 1 s break between episodes (> max_age) starts a history
        history = []
        obs = env.reset(seed)
        expert.reset(seed)
        done = False
        while True:
            history.append(env.state())
            direct.append({"state": np.stack(([history[0]] + history)[-2:])})
            if done:
                break
            obs, done, _ = env.step(expert.act(obs))
    assert len(windows) == len(direct)
    for w, d in zip(windows, direct):
        np.testing.assert_array_equal(w["state"], d["state"])
    a = policy.compile_schedule(policy.profile(windows), budget=4, top_k=2)
    b = policy.compile_schedule(policy.profile(direct), budget=4, top_k=2)
    assert a.steps == b.steps


def test_a_gap_longer_than_max_age_starts_the_history_afresh():
    """Frames 0.1 s apart build a history; after a sensor gap longer than dt + max_age the old
    frames are not mixed with the new one (they would be read as one step earlier): the new
    frame is repeated, as at an episode's start."""
    from bac_ros.io.observer import ObservationAssembler

    asm = ObservationAssembler(["image", "joints"], n_obs_steps=2, dt=0.1, max_age=0.5,
                               primary="image")

    def frame(t, v):
        asm.add("joints", np.full(3, v), t)
        return asm.add("image", np.full((2, 2, 3), v), t)

    assert frame(100.0, 1) and frame(100.1, 2)
    np.testing.assert_array_equal(asm.window()[0]["joints"][:, 0], [1, 2])
    assert frame(100.6, 3)  # 0.5 s: within dt + max_age, history kept
    np.testing.assert_array_equal(asm.window()[0]["joints"][:, 0], [2, 3])
    assert frame(110.0, 4)  # a 9.5 s gap
    window, stamp = asm.window()
    assert stamp == 110.0
    np.testing.assert_array_equal(window["joints"][:, 0], [4, 4])
    np.testing.assert_array_equal(window["image"][:, 0, 0, 0], [4, 4])
    assert frame(110.1, 5)
    np.testing.assert_array_equal(asm.window()[0]["joints"][:, 0], [4, 5])
    # a bound under the frame spacing (30 Hz camera, 10 Hz policy, max_age 0.05) still keeps
    # a history of frames dt apart
    asm = ObservationAssembler(["image", "joints"], n_obs_steps=2, dt=0.1, max_age=0.05,
                               primary="image")
    for i in range(7):
        frame(200.0 + i / 30, i)
    np.testing.assert_array_equal(asm.window()[0]["joints"][:, 0], [3, 6])


def test_bad_bags_are_refused(tmp_path, image_ckpt):
    policy = Policy.from_pretrained(image_ckpt, device="cpu")
    bag = record_expert_bag(tmp_path / "noimg", episodes=1, images=False)
    with pytest.raises(BagError, match="has no sensor_msgs/msg/Image topic 'image'"):
        read_observation_windows(bag, policy, JOINT_NAMES)
    with pytest.raises(BagError, match="cannot be opened"):
        read_observation_windows(tmp_path / "missing", policy, JOINT_NAMES)


def _launch_files():
    return sorted((Path(get_package_share_directory("bac_ros")) / "launch").glob("*.launch.py"))


def test_launch_files_name_only_installed_things():
    share = Path(get_package_share_directory("bac_ros"))
    lib = Path(get_package_prefix("bac_ros")) / "lib" / "bac_ros"
    files = _launch_files()
    assert {f.name for f in files} >= {"policy.launch.py", "profile_bag.launch.py",
                                       "sim_demo.launch.py"}
    for f in files:
        tree = ast.parse(f.read_text())
        consts = {t.id: n.value.value for n in tree.body if isinstance(n, ast.Assign)
                  for t in n.targets if isinstance(n.value, ast.Constant)}
        assert consts["PACKAGE"] == "bac_ros"
        names = [v for k, v in consts.items() if "EXECUTABLE" in k]
        paths = [v for k, v in consts.items() if k.endswith("_FILE") or k.startswith("DEFAULT_")]
        assert names, f"{f.name} names no executable"
        for exe in names:
            assert (lib / exe).is_file(), f"{f.name}: executable {exe} is not installed"
        for rel in paths:
            assert (share / rel).exists(), f"{f.name}: {rel} is not in share/bac_ros"
        declared = [c.args[0].value for c in ast.walk(tree) if isinstance(c, ast.Call)
                    and getattr(c.func, "id", "") == "DeclareLaunchArgument"]
        used = {c.args[0].value for c in ast.walk(tree) if isinstance(c, ast.Call)
                and getattr(c.func, "id", "") == "arg"}
        assert used <= set(declared), f"{f.name} uses undeclared arguments {used - set(declared)}"
        assert set(declared) <= used, f"{f.name} declares unused {set(declared) - used}"


@pytest.fixture(scope="module")
def lowdim_ckpt(tmp_path_factory):
    norm = LinearNormalizer()
    norm.fit_limits("state", torch.rand(64, 7) * 2 - 0.5)
    norm.fit_limits("action", torch.rand(64, 3) * 2)
    return save_native(new_checkpoint({"state": {"shape": [7], "type": "low_dim"}}, 3, norm,
                                      horizon=8, n_action_steps=4, model=SMALL,
                                      num_inference_steps=10),
                       tmp_path_factory.mktemp("ckpt") / "lowdim")


def test_lockstep_sim_and_policy_on_sim_time(ros, lowdim_ckpt):
    """sim_node waits for the chunk of each observation on /clock time; the policy node, on
    sim time, answers every one of them: the episode runs to its end."""
    from bac_ros.nodes.sim_node import SimNode

    sim = SimNode(parameter_overrides=[Parameter("mode", value="lockstep"),
                                       Parameter("episodes", value=2),
                                       Parameter("max_steps", value=12),
                                       Parameter("images", value=False),
                                       Parameter("n_action_steps", value=4)])
    node, executor, thread = start_policy_node({"checkpoint": str(lowdim_ckpt), "device": "cpu",
                                                "use_sim_time": True, "replan_steps": 1,
                                                "seam": "none"})
    stamps = []
    node.create_subscription(ActionChunk, "action_chunk",
                             lambda m: stamps.append(m.header.stamp.sec
                                                     + m.header.stamp.nanosec * 1e-9), 50)
    local = rclpy.executors.SingleThreadedExecutor()
    local.add_node(sim)
    try:
        assert spin_until(local, lambda: sim.finished, timeout=120)
    finally:
        stop_policy_node(node, executor, thread)
        sim.destroy_node()
    for i, result in enumerate(sim.results):
        assert result["steps"] == 12 and result["seed"] == 100_000 + i
        assert result["timeout_waiting"] is False
    # every chunk answered an observation: 4 actions per chunk
    assert len(sim.chunk_arrivals) >= 2 * 12 // 4
    # the second episode starts after a break of sim time, so its first chunk is computed from
    # its own first frame, not from the history of the first episode (same stamp before)
    gaps = np.diff(sorted(set(stamps)))
    assert (gaps > 5.0).sum() == 1 and (gaps < 1.0).sum() == len(gaps) - 1


def test_sim_node_camera_takes_effect_or_is_refused(ros):
    """``camera`` selects the Meta-World view it renders; with the arm (one view) or without
    images (nothing rendered) it would mean nothing, so it is refused."""
    from bac_ros.nodes.sim_node import SimNode

    sim = SimNode(parameter_overrides=[Parameter("task", value="metaworld:pick-place"),
                                       Parameter("camera", value="gripperPOV")])
    try:
        assert sim.env.config.camera == "gripperPOV"
        assert sim.env.reset(100_000)["image"].shape == (96, 96, 3)
    finally:
        sim.env.close()
        sim.destroy_node()
    for overrides, refusal in (([], "the arm renders one view"),
                               ([Parameter("task", value="metaworld:pick-place"),
                                 Parameter("images", value=False)], "nothing would be rendered"),
                               ([Parameter("task", value="metaworld:pick-place")],
                                "'wrist' is not in the pick-place model")):
        camera = "wrist" if "wrist" in refusal else "gripperPOV"
        with pytest.raises(ValueError, match=refusal):
            SimNode(parameter_overrides=[*overrides, Parameter("camera", value=camera)])


def test_sim_node_refuses_lockstep_settings_in_real_time(capfd):
    """n_action_steps and chunk_timeout pace lockstep only: in realtime (chunks executed by
    time) a changed value would be ignored, so the installed node refuses it in one line."""
    from bac_ros.nodes.sim_node import main

    cases = ((["mode:=realtime", "chunk_timeout:=5.0"], "chunk_timeout is 5.0, but it applies "
              "in lockstep only and mode is realtime"),
             (["mode:=realtime", "n_action_steps:=4"], "n_action_steps is 4, but it applies"),
             (["mode:=lockstep", "n_action_steps:=0"], "must all be positive"),
             (["mode:=lockstep", "chunk_timeout:=0.0"], "must all be positive"))
    for params, refusal in cases:
        args = ["--ros-args"] + [a for p in params for a in ("-p", p)] + ["-p", "images:=false"]
        assert main(args) == 1
        err = capfd.readouterr().err.strip()
        assert refusal in err and len(err.splitlines()) == 1


def test_profiler_node_compiles_a_schedule_from_live_topics(ros, lowdim_ckpt, tmp_path):
    from std_msgs.msg import Float32MultiArray

    from bac_ros.nodes.profiler_node import ProfilerNode

    out = tmp_path / "live.yaml"
    prof = ProfilerNode(parameter_overrides=[Parameter("checkpoint", value=str(lowdim_ckpt)),
                                             Parameter("observations", value=4),
                                             Parameter("budget", value=3),
                                             Parameter("top_k", value=2),
                                             Parameter("device", value="cpu"),
                                             Parameter("output", value=str(out))])
    pub_node = rclpy.create_node("state_source")
    pub = pub_node.create_publisher(Float32MultiArray, "state", 10)
    local = rclpy.executors.SingleThreadedExecutor()
    local.add_node(prof)
    local.add_node(pub_node)
    rng = np.random.default_rng(0)
    try:
        assert spin_until(local, lambda: pub.get_subscription_count() > 0, 10)
        deadline = time.monotonic() + 30
        while not prof.done.is_set() and time.monotonic() < deadline:
            pub.publish(Float32MultiArray(data=rng.random(7).astype(np.float32).tolist()))
            spin_until(local, lambda: False, timeout=0.11)
        assert prof.done.is_set()
        prof.compile()
    finally:
        prof.destroy_node()
        pub_node.destroy_node()
    sched = Schedule.load(out)
    assert sched.provenance["observations"] == 4 and sched.method["budget"] == 3
    assert (tmp_path / "live.profile.npz").is_file()


def test_compressed_camera_input(ros, image_ckpt):
    import cv2
    from sensor_msgs.msg import CompressedImage

    from bac_ros.io.messages import MessageError, compressed_to_rgb

    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    png = CompressedImage(format="rgb8; png compressed bgr8",
                          data=cv2.imencode(".png", rgb[..., ::-1])[1].tobytes())
    np.testing.assert_array_equal(compressed_to_rgb(png), rgb)  # lossless round trip
    with pytest.raises(MessageError, match="could not be decoded"):
        compressed_to_rgb(CompressedImage(format="jpeg", data=b"\x00" * 10))

    node, executor, thread = start_policy_node({"checkpoint": str(image_ckpt), "device": "cpu",
                                                "compressed_image": True, "replan_steps": 1})
    client = rclpy.create_node("compressed_client")
    chunks = []
    client.create_subscription(ActionChunk, "action_chunk", chunks.append, 10)
    img_pub = client.create_publisher(CompressedImage, "image/compressed",
                                      qos_profile_sensor_data)
    js_pub = client.create_publisher(JointState, "joint_states", 10)
    local = rclpy.executors.SingleThreadedExecutor()
    local.add_node(client)
    try:
        assert spin_until(local, lambda: img_pub.get_subscription_count() > 0, 10)
        t0 = client.get_clock().now()
        for i in range(6):
            stamp = (t0 + rclpy.duration.Duration(seconds=0.1 * i)).to_msg()
            js = JointState(name=["joint1", "joint2", "joint3"], position=[0.1, 0.2, 0.3])
            js.header.stamp = stamp
            js_pub.publish(js)
            frame = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
            msg = CompressedImage(format="jpeg",
                                  data=cv2.imencode(".jpg", frame)[1].tobytes())
            msg.header.stamp = stamp
            img_pub.publish(msg)
            spin_until(local, lambda: False, timeout=0.1)
        assert spin_until(local, lambda: len(chunks) >= 1, 30)
    finally:
        stop_policy_node(node, executor, thread)
    assert (chunks[0].horizon, chunks[0].action_dim) == (7, 3)  # all 7 predicted (default)


def test_config_files_list_every_declared_parameter():
    """The shipped parameter files are the nodes' documentation: none may miss or invent one."""
    import yaml

    from bac_ros.nodes import policy_node, profiler_node, sim_node

    share = Path(get_package_share_directory("bac_ros")) / "config"
    for file, node, module in (("policy.yaml", "bac_policy", policy_node),
                               ("policy_metaworld.yaml", "bac_policy", policy_node),
                               ("profiler.yaml", None, profiler_node),
                               ("sim.yaml", None, sim_node)):
        data = yaml.safe_load((share / file).read_text())
        section = data[node] if node else next(iter(data.values()))
        assert set(section["ros__parameters"]) == set(module.PARAMETERS), file
