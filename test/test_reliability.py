"""Reliability: bad input, faults and load against running policy nodes (real rclpy, Fast DDS).

Every test feeds real messages on real topics and asserts what the node publishes. A tally
(messages tried, chunks received, unsafe actions published, node crashes, soak memory growth) is
printed in pytest's terminal summary and, when ``BAC_RELIABILITY_JSON`` names a file, written there
as JSON (docs/RELIABILITY.md quotes it).
"""

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import rclpy
import torch
import yaml
from diagnostic_msgs.msg import DiagnosticStatus
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.parameter import Parameter
from ros_helpers import JOINTS, TALLY, Running, diag_values, to_sec
from rosgraph_msgs.msg import Clock
from safetensors.torch import load_file, save_file
from sensor_msgs.msg import CompressedImage, Image, JointState

from bac_ros.cache.schedule import Schedule
from bac_ros.io.bag import BagWriter
from bac_ros.nodes.policy_node import PolicyNode
from bac_ros.nodes.soak import soak
from bac_ros.policy.policy import Policy
from bac_ros.sim.record import record_expert_bag

pytestmark = pytest.mark.ros


class _Summary:
    """Prints the tally at the end of the run, whatever pytest's capture settings."""

    def pytest_terminal_summary(self, terminalreporter):
        terminalreporter.write_sep("-", "reliability tally (test/test_reliability.py)")
        for k, v in TALLY.items():
            terminalreporter.write_line(f"{k}: {v}")


@pytest.fixture(scope="module", autouse=True)
def tally(request):
    if not request.config.pluginmanager.has_plugin("bac_reliability"):
        request.config.pluginmanager.register(_Summary(), "bac_reliability")
    yield TALLY
    if os.environ.get("BAC_RELIABILITY_JSON"):
        Path(os.environ["BAC_RELIABILITY_JSON"]).write_text(json.dumps(TALLY, indent=2) + "\n")


# -- bad messages ----------------------------------------------------------------------------
def _bad_messages(r: Running, good_stamp):
    """(publisher, message, words the diagnostic must say) for each kind of bad input."""
    now = r.client.get_clock().now()

    def img(**kw):
        base = dict(height=40, width=40, encoding="rgb8", step=120, data=bytes(4800))
        msg = Image(**{**base, **kw})
        msg.header.stamp = now.to_msg()
        return msg

    def js(names=JOINTS, position=(0.1, 0.2, 0.3), stamp=None, **kw):
        msg = JointState(name=list(names), position=list(position), **kw)
        msg.header.stamp = stamp or now.to_msg()
        return msg

    old = rclpy.time.Time(nanoseconds=rclpy.time.Time.from_msg(good_stamp).nanoseconds
                          - 200_000_000).to_msg()
    future = (now + rclpy.duration.Duration(seconds=100)).to_msg()
    return [
        (r.img, img(encoding="mono16"), "image encoding 'mono16' is not supported"),
        (r.img, img(height=0, width=0, step=0, data=b""), "expected a positive height"),
        (r.img, img(step=60), "step 60 is shorter than a row"),
        (r.img, img(data=bytes(1000)), "expected height x step = 4800"),
        (r.js, js(names=["joint1", "joint2"], position=[0.1, 0.2]), "lacks joints ['joint3']"),
        (r.js, js(position=[0.1, math.nan, 0.3]), "are not all finite"),
        (r.js, js(position=[0.1, math.inf, 0.3]), "are not all finite"),
        (r.js, js(position=[0.1, 0.2]), "3 names but 2 positions"),
        (r.js, js(velocity=[0.0]), "3 names but 1 velocity"),
        (r.js, js(stamp=old), "is older than the last one"),
        (r.js, js(stamp=future), "in the future"),
    ]


def test_bad_messages_are_rejected_and_the_last_good_state_kept(running, capfd, ckpt):
    r = running({"checkpoint": str(ckpt), "rate_hz": 5.0, "max_obs_age": 30.0})
    r.wait_connected()
    t0 = time.monotonic()
    while not r.chunks and time.monotonic() < t0 + 20:
        stamp = r.client.get_clock().now().to_msg()
        r.good(stamp)
        r.spin(0.2)

    def answered():
        return r.chunks and r.chunks[-1].header.stamp == stamp  # carried unchanged

    assert r.spin(5, answered)
    first = len(r.chunks) - 1
    bad = _bad_messages(r, stamp)
    for pub, msg, words in bad:
        pub.publish(msg)
        d = r.diag_with(words)
        assert d is not None, f"no diagnostic saying {words!r}"
        assert d.level == DiagnosticStatus.WARN and "\n" not in d.message
    TALLY["messages_tried"] += len(bad)
    TALLY["malformed_messages_tried"] += len(bad)
    for _ in range(20):  # a burst: logged at most once per 5 s per topic
        r.img.publish(Image(height=2, width=2, encoding="rgb8", step=6, data=b"\x00"))
    TALLY["messages_tried"] += 20
    TALLY["malformed_messages_tried"] += 20
    n = len(r.chunks)
    assert r.spin(10, lambda: len(r.chunks) >= n + 3)
    # 24 bad images in all: logged, but at most once per 5 s
    logged = capfd.readouterr().err.count("rejected image message")
    assert 1 <= logged <= 1 + (time.monotonic() - t0) / 5, "rejections are logged, throttled"
    # the node still infers from the last good observation: every chunk answers its stamp
    assert all(c.header.stamp == stamp for c in r.chunks[first:])
    # counted in the diagnostics (the best-effort camera topic may drop part of the burst)
    assert r.spin(5, lambda: int(diag_values(r.diags[-1])["rejected_msgs"]) >= len(bad) + 5)


# -- staleness -------------------------------------------------------------------------------
def test_stale_observations_stop_chunks_until_fresh_data_returns(running, ckpt):
    r = running({"checkpoint": str(ckpt), "replan_steps": 1, "max_obs_age": 0.3})
    r.wait_connected()
    r.stream(1.0)
    assert r.spin(10, lambda: len(r.chunks) >= 2)
    # silence: inputs go stale, the diagnostic names them, nothing new is published
    r.spin(0.5)
    n = len(r.chunks)
    d = r.diag_with("older than max_obs_age=0.3")
    assert d is not None and "image" in d.message and "joints" in d.message
    values = diag_values(d)
    assert values["stale_inputs"] == "image,joints"
    # a delayed camera: frames keep coming, but stamped 1 s ago: still no chunk
    late = rclpy.duration.Duration(seconds=1.0)
    stale = r.node.stats["stale"]  # only an inference refused for age counts it
    end = time.monotonic() + 1.5
    while time.monotonic() < end:
        r.good((r.client.get_clock().now() - late).to_msg())
        r.spin(0.1)
    assert len(r.chunks) == n
    assert r.node.stats["stale"] > stale  # the late frames reached inference and were refused
    # fresh data: publishing resumes
    r.stream(1.0)
    assert r.spin(10, lambda: len(r.chunks) >= n + 2)
    TALLY["messages_tried"] += 2 * 45


def test_staleness_and_clock_jumps_under_sim_time(running, ckpt):
    r = running({"checkpoint": str(ckpt), "use_sim_time": True, "rate_hz": 10.0,
                 "max_obs_age": 0.5})
    clock = r.client.create_publisher(Clock, "/clock", 10)
    r.wait_connected()
    sim = [100.0]

    def run(seconds: float, send: bool) -> None:
        """Advance sim time at wall speed, sending observations stamped with it."""
        for _ in range(int(seconds / 0.05)):
            sim[0] += 0.05
            t = rclpy.time.Time(nanoseconds=int(sim[0] * 1e9)).to_msg()
            clock.publish(Clock(clock=t))
            if send and round(sim[0] * 20) % 2 == 0:
                r.good(t)
                TALLY["messages_tried"] += 2
            r.spin(0.05)

    run(2.0, send=True)
    assert r.spin(10, lambda: len(r.chunks) >= 3)
    assert all(100.0 < to_sec(c.header.stamp) <= sim[0] for c in r.chunks)
    run(1.0, send=False)  # the inputs go stale on the sim clock
    n, stale = len(r.chunks), r.node.stats["stale"]
    run(2.0, send=False)
    assert len(r.chunks) == n
    assert r.node.stats["stale"] > stale  # the rate timer's inferences refused them for age
    assert r.node.last_problem.startswith("no chunk: observation")
    run(1.5, send=True)  # fresh data: chunks resume
    assert len(r.chunks) > n
    # the clock jumps back (bag replay looped): the history is cleared, new stamps accepted
    sim[0] = 10.0
    n = len(r.chunks)
    run(2.0, send=True)
    assert r.spin(5, lambda: any(to_sec(c.header.stamp) < 20 for c in r.chunks[n:]))
    assert any("clock jumped back" in d.message for d in r.diags)


# -- output safety ---------------------------------------------------------------------------
def test_clip_keeps_every_published_action_inside_the_limits(running, ckpt):
    r = running({"checkpoint": str(ckpt), "replan_steps": 1, "action_low": [-0.05],
                 "action_high": [0.05], "limit_mode": "clip"})
    r.wait_connected()
    r.stream(1.5)
    assert r.spin(10, lambda: len(r.chunks) >= 3 and len(r.trajs) >= 3)
    a = np.concatenate([np.asarray(c.actions) for c in r.chunks])
    assert a.min() >= np.float32(-0.05) and a.max() <= np.float32(0.05)
    assert np.isclose(np.abs(a), np.float32(0.05)).any()  # the model's output was clipped
    assert r.spin(5, lambda: r.diags and int(diag_values(r.diags[-1])["clipped"]) >= 3)
    TALLY["messages_tried"] += 30


def test_refuse_publishes_nothing_out_of_limits(running, ckpt):
    r = running({"checkpoint": str(ckpt), "replan_steps": 1, "action_low": [-0.05],
                 "action_high": [0.05], "limit_mode": "refuse"})
    r.wait_connected()
    r.stream(1.5)
    assert r.diag_with("no chunk: actions outside action_low/action_high") is not None
    assert r.chunks == [] and r.trajs == []
    TALLY["messages_tried"] += 30


@pytest.mark.parametrize("tensor,value", [("model.head.bias", math.nan),
                                          ("normalizer.params_dict.action.scale", 0.0)],
                         ids=["nan_weights", "inf_unnormalised"])
def test_a_model_producing_nan_or_inf_publishes_nothing(running, tmp_path, tensor, value, ckpt):
    """NaN weights, or a zero normaliser scale (x / 0 = inf), in an otherwise valid checkpoint."""
    bad = shutil.copytree(ckpt, tmp_path / "bad")
    tensors = load_file(str(bad / "model.safetensors"))
    tensors[tensor] = torch.full_like(tensors[tensor], value)
    save_file(tensors, str(bad / "model.safetensors"))
    r = running({"checkpoint": str(bad), "replan_steps": 1})
    r.wait_connected()
    r.stream(1.5)
    assert r.diag_with("no chunk: the model produced NaN or inf actions") is not None
    assert r.chunks == [] and r.trajs == []
    TALLY["messages_tried"] += 30


@pytest.mark.parametrize("low,high,words", [
    ([math.nan], [1.0], "are not ordered numbers"),
    ([1.0], [-1.0], "expected action_low <= action_high"),
    ([0.0, 0.0], [1.0], "expected 1 or 3"),
])
def test_bad_action_limits_fail_configure(ros, low, high, words, ckpt, capfd):
    node = PolicyNode(parameter_overrides=[Parameter("checkpoint", value=str(ckpt)),
                                           Parameter("device", value="cpu"),
                                           Parameter("autostart", value=False),
                                           Parameter("action_low", value=low),
                                           Parameter("action_high", value=high)])
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
        assert node.policy is None
        assert words in capfd.readouterr().err
    finally:
        node.destroy_node()


# -- files -----------------------------------------------------------------------------------
def _bad_files(tmp: Path, ckpt: Path) -> list[tuple[str, str, str]]:
    """(checkpoint, schedule, words of the one-line error) for corrupt or mismatched files."""
    def variant(name, edit):
        d = shutil.copytree(ckpt, tmp / name)
        edit(d)
        return str(d)

    def truncate(d):
        f = d / "model.safetensors"
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])

    def config(**model):
        def edit(d):
            cfg = yaml.safe_load((d / "config.yaml").read_text())
            cfg["model"].update(model)
            (d / "config.yaml").write_text(yaml.safe_dump(cfg))
        return edit

    policy = Policy.from_pretrained(ckpt, device="cpu")
    sched = Schedule.load(policy.compile_schedule(
        policy.profile([{"image": np.zeros((2, 32, 32, 3), np.uint8),
                         "joints": np.zeros((2, 3), np.float32)}]), budget=3, top_k=0)
        .save(tmp / "good.yaml"))
    text = (tmp / "good.yaml").read_text()
    (tmp / "half.yaml").write_text(text[: len(text) // 2])
    (tmp / "binary.yaml").write_bytes(b"\xff\xfe\x00\x13garbage")
    sched.fingerprint = "0" * 16
    sched.save(tmp / "other_model.yaml")
    good = str(ckpt)
    return [
        (variant("truncated", truncate), "", "model.safetensors cannot be read as safetensors"),
        (variant("yaml", lambda d: (d / "config.yaml").write_text("policy: [unclosed\n")), "",
         "config.yaml is not valid YAML (line 2, column 1"),
        (variant("wider", config(n_emb=64)), "", "has shape (32,); its config expects (64,)"),
        (variant("heads", config(n_head=3)), "",
         "does not build a policy (AssertionError: embed_dim must be divisible by num_heads)"),
        (str(tmp / "missing"), "", "is neither a checkpoint folder"),
        (good, str(tmp / "half.yaml"), "half.yaml is not valid YAML (line"),
        (good, str(tmp / "binary.yaml"), "binary.yaml cannot be read as text"),
        (good, str(tmp / "other_model.yaml"), "compiled for model 0000000000000000"),
        (good, str(tmp / "gone.yaml"), "gone.yaml does not exist"),
    ]


def test_bad_files_fail_configure_with_one_line_then_a_good_file_works(running, tmp_path, ckpt):
    r = running({"checkpoint": "", "replan_steps": 1, "autostart": False}, configure=False)
    node = r.node
    for checkpoint, schedule, words in _bad_files(tmp_path, ckpt):
        node.set_parameters([Parameter("checkpoint", value=checkpoint),
                             Parameter("schedule", value=schedule)])
        start = len(r.diags)
        assert node.trigger_configure() == TransitionCallbackReturn.FAILURE, words
        assert node.policy is None
        assert r.spin(5, lambda start=start: len(r.diags) > start)
        d = r.diags[start]
        assert d.level == DiagnosticStatus.ERROR and d.message.startswith("configure failed: ")
        assert words in d.message and "\n" not in d.message, d.message
    node.set_parameters([Parameter("checkpoint", value=str(ckpt)),
                         Parameter("schedule", value=str(tmp_path / "good.yaml"))])
    assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
    node.trigger_activate()
    r.wait_connected()
    r.stream(1.0)
    assert r.spin(10, lambda: len(r.chunks) >= 1)
    assert r.chunks[0].schedule_id == node.policy.schedule_id != ""


_WRITER = """
import sys
from bac_ros.cache.schedule import Schedule
s = Schedule.load(sys.argv[1])
s.provenance["padding"] = "x" * 300_000  # a long write, so that the kill lands inside one
print("ready", flush=True)
while True:
    s.save(sys.argv[1])
"""


def test_schedule_writes_are_atomic_under_kill(tmp_path, ckpt):
    """A writer killed (SIGKILL) mid-write leaves the previous complete schedule in place."""
    policy = Policy.from_pretrained(ckpt, device="cpu")
    obs = [{"image": np.zeros((2, 32, 32, 3), np.uint8), "joints": np.zeros((2, 3), np.float32)}]
    path = policy.compile_schedule(policy.profile(obs), budget=3, top_k=0).save(
        tmp_path / "s.yaml")
    for delay in (0.05, 0.2, 0.45):
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        policy.set_schedule(path)  # complete and valid, whichever write was the last
        padding = Schedule.load(path).provenance.get("padding")
        assert padding is None or len(padding) == 300_000  # the old file or a whole new one


# -- profiler --------------------------------------------------------------------------------
def test_profiler_refuses_bad_bags_and_writes_no_schedule(tmp_path, ckpt, capsys):
    from bac_ros.cli import main

    no_image = record_expert_bag(tmp_path / "no_image", episodes=1, images=False)
    BagWriter(tmp_path / "empty").close()
    truncated = record_expert_bag(tmp_path / "truncated", episodes=1, storage="mcap")
    f = next(truncated.glob("*.mcap"))
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    cases = [(no_image, "has no sensor_msgs/msg/Image topic 'image'"),
             (tmp_path / "empty", "it has no topics"),
             (truncated, "cannot be opened as a rosbag2"),
             (tmp_path / "nothing_here", "cannot be opened as a rosbag2")]
    for bag, words in cases:
        out = tmp_path / f"{bag.name}.yaml"
        assert main(["profile", "--checkpoint", str(ckpt), "--bag", str(bag),
                     "--out", str(out), "--device", "cpu"]) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("bac profile: error: ") and words in err and "\n" not in err
        assert not out.exists() and not list(tmp_path.glob(f".{out.name}*"))


def test_profiler_node_with_a_bad_checkpoint_exits_with_one_line(tmp_path, capfd):
    from bac_ros.nodes.profiler_node import main

    out = tmp_path / "s.yaml"
    assert main(["--ros-args", "-p", f"checkpoint:={tmp_path}", "-p", f"output:={out}"]) == 1
    err = capfd.readouterr().err.strip()
    assert "is not a bac_ros checkpoint folder" in err and "no schedule written" in err
    assert len(err.splitlines()) == 1 and not out.exists()
    # parameters that would only fail (or never finish) after the wait for observations
    for param, words in (("metric:=cosin", "metric is 'cosin'; expected one of"),
                         ("observations:=0", "must be positive"),
                         ("max_obs_age:=-1.0", "must be positive")):
        assert main(["--ros-args", "-p", f"checkpoint:={tmp_path}", "-p", param]) == 1
        assert words in capfd.readouterr().err


# -- fuzz ------------------------------------------------------------------------------------
ENCODINGS = ["rgb8", "bgr8", "rgba8", "mono8", "16UC1", "bayer_rggb8", "", "RGB8 ", "jpeg",
             "rgb8\u00e9", "32FC3"]


def _wild_stamp(rng, now):
    kind = rng.integers(5)
    if kind == 0:
        return int(rng.integers(-2**31, 2**31)), int(rng.integers(0, 2**32))
    if kind == 1:
        return 0, 0
    if kind == 2:
        return now + int(rng.integers(2, 10**6)), int(rng.integers(0, 10**9))
    if kind == 3:
        return now - int(rng.integers(1, 10**6)), 0
    return now, int(rng.integers(0, 10**9))


def _fuzz_image(rng, now):
    """An Image with at least one defect (encoding, size, step, data length) and a random stamp;
    sometimes a well-formed frame with a wild stamp instead."""
    enc = ENCODINGS[rng.integers(len(ENCODINGS))]
    h, w = (int(v) for v in rng.integers(0, 64, 2))
    if rng.random() < 0.05:
        h = int(rng.integers(2**20, 2**32))
    step = int(max(0, w * 3 + rng.integers(-4, 5)))
    size = h * step + int(rng.integers(-5, 6)) if rng.random() < 0.7 else int(rng.integers(0, 900))
    size = max(0, min(size, 20_000))
    msg = Image(height=h, width=w, encoding=enc, step=step, is_bigendian=int(rng.integers(2)),
                data=rng.integers(0, 256, size, dtype=np.uint8).tobytes())
    msg.header.stamp.sec, msg.header.stamp.nanosec = _wild_stamp(rng, now)
    return msg


def _fuzz_compressed(rng, now):
    fmt = ["jpeg", "png", "rgb8; jpeg compressed bgr8", "tiff", "", "PNG"][rng.integers(6)]
    kind = rng.integers(4)
    if kind == 0:
        data = rng.integers(0, 256, int(rng.integers(0, 2000)), dtype=np.uint8).tobytes()
    elif kind == 1:
        data = b""
    else:  # a real image with a truncated or corrupted body
        frame = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
        data = bytearray(cv2.imencode(".jpg" if kind == 2 else ".png", frame)[1].tobytes())
        cut = int(rng.integers(1, len(data)))
        data = bytes(data[:cut]) if rng.random() < 0.5 else bytes(
            data[:cut]) + rng.integers(0, 256, 64, dtype=np.uint8).tobytes()
    msg = CompressedImage(format=fmt, data=data)
    msg.header.stamp.sec, msg.header.stamp.nanosec = _wild_stamp(rng, now)
    return msg


def _fuzz_joints(rng, now):
    pool = JOINTS + ["gripper", "", "joint1 ", "JOINT2", "j\u00f6int3"]
    names = [pool[i] for i in rng.integers(0, len(pool), int(rng.integers(0, 7)))]
    specials = [math.nan, math.inf, -math.inf, 1e38, -1e38, 0.0, 5e-324]
    pos = [specials[rng.integers(len(specials))] if rng.random() < 0.4 else float(rng.normal())
           for _ in range(max(0, len(names) + int(rng.integers(-2, 3))))]
    msg = JointState(name=names, position=pos,
                     velocity=[0.0] * int(rng.integers(0, 5)), effort=[])
    msg.header.stamp.sec, msg.header.stamp.nanosec = _wild_stamp(rng, now)
    return msg


def test_fuzz_ten_thousand_malformed_messages(running, ckpt):
    """Random malformed messages of every subscribed type into two running nodes (raw and
    compressed camera), interleaved with good ones: no crash, every published action safe,
    and both nodes still answer afterwards."""
    limits = {"action_low": [-0.5], "action_high": [0.5], "rate_hz": 20.0, "max_obs_age": 1.0}
    raw = running({"checkpoint": str(ckpt), **limits}, namespace="fuzz_raw")
    jpeg = running({"checkpoint": str(ckpt), "compressed_image": True, **limits},
                   namespace="fuzz_jpeg")
    raw.wait_connected()
    jpeg.wait_connected()
    rng = np.random.default_rng(2024)
    tried = good = 0
    t0 = time.monotonic()
    while tried < 10_000:
        now = int(time.time())
        for make, pub in ((_fuzz_image, raw.img), (_fuzz_joints, raw.js),
                          (_fuzz_compressed, jpeg.jpeg), (_fuzz_joints, jpeg.js)):
            pub.publish(make(rng, now))
            tried += 1
        if tried % 200 == 0:  # keep valid traffic flowing, so chunks are computed meanwhile
            raw.good()
            jpeg.good(jpeg=True)
            good += 4
            raw.spin(0.01)
    fuzz_s = time.monotonic() - t0
    for r in (raw, jpeg):
        n = len(r.chunks)
        r.stream(1.0, jpeg=r is jpeg)
        good += 20
        assert r.spin(15, lambda r=r, n=n: len(r.chunks) > n), "the node stopped answering"
        assert r.thread.is_alive()
    # each node's own counter: both publish /diagnostics as bac_policy, so either client's
    # newest diagnostic may be the other node's
    rejected = [r.node.stats["rejected_msgs"] for r in (raw, jpeg)]
    TALLY["messages_tried"] += tried + good
    TALLY["malformed_messages_tried"] += tried
    TALLY["fuzz_seconds"] = round(fuzz_s, 1)
    TALLY["fuzz_rejected_by_nodes"] = sum(rejected)
    print(f"fuzz: {tried} malformed + {good} good messages in {fuzz_s:.1f} s; nodes rejected "
          f"{rejected}; chunks {len(raw.chunks)} + {len(jpeg.chunks)}; unsafe "
          f"{raw.unsafe + jpeg.unsafe}")
    assert min(rejected) > 500  # the nodes did process (and refuse) the garbage
    assert raw.chunks and jpeg.chunks


# -- load ------------------------------------------------------------------------------------
def test_short_soak_60hz_camera_flat_memory_and_latency():
    """The soak for 25 s against the real policy_node process (the 10-minute run is
    ``make soak``): camera at 60 Hz, inference at 5 Hz."""
    rclpy.init()
    try:
        res = soak(25.0, camera_hz=60.0, rate_hz=5.0, namespace="/short_soak",
                   log=lambda s: None)
    finally:
        rclpy.try_shutdown()
    print("soak:", json.dumps(res))
    TALLY["soak_seconds"] = res["seconds"]
    TALLY["soak_messages_sent"] = res["messages_sent"]
    TALLY["soak_rss_growth_mb"] = res["rss_growth_mb"]
    TALLY["soak_age_ms_first_last_third"] = [res["age_ms_median_first_third"],
                                             res["age_ms_median_last_third"]]
    TALLY["messages_tried"] += res["messages_sent"]
    TALLY["chunks_received"] += res["chunks_after_warmup"]
    TALLY["unsafe_actions_published"] += res["unsafe_actions_published"]
    TALLY["node_crashes"] += int(not res["node_alive"])
    assert res["node_alive"] and res["unsafe_actions_published"] == 0
    assert res["chunk_rate_hz"] > 1.0  # inference keeps running (5 Hz asked) under 60 Hz frames
    assert res["rss_growth_mb"] < 20
    # latest-observation semantics: chunks answer recent frames, and the delay does not grow.
    # A queue of 60 Hz frames served at 5 Hz would age chunks by seconds within the run; the
    # loose bounds only keep a busy machine's scheduling noise from failing the test.
    assert res["age_ms_median_last_third"] < 1000
    assert res["age_ms_median_last_third"] < res["age_ms_median_first_third"] + 500
