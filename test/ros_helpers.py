"""The ROS test harness (real rclpy over Fast DDS): spin until a condition, start and stop a
policy node, and a running policy node with a client that checks what it publishes.

Only tests that use ROS import it; conftest.py, imported first, has set the DDS environment.
"""

import math
import threading
import time

import cv2
import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.executors import SingleThreadedExecutor
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import qos_profile_sensor_data
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CompressedImage, Image, JointState
from trajectory_msgs.msg import JointTrajectory

from bac_ros.msg import ActionChunk
from bac_ros.nodes.policy_node import PolicyNode
from bac_ros.sim import arm

JOINTS = arm.JOINT_NAMES
# The reliability tally: every Running.close adds to it; test_reliability.py reports it.
TALLY = {"messages_tried": 0, "malformed_messages_tried": 0, "chunks_received": 0,
         "unsafe_actions_published": 0, "node_crashes": 0}


def to_sec(stamp) -> float:
    """Seconds from the stamp's integer nanoseconds: equal stamps give equal floats."""
    return (stamp.sec * 10**9 + stamp.nanosec) / 1e9


def diag_values(status: DiagnosticStatus) -> dict[str, str]:
    return {kv.key: kv.value for kv in status.values}


def spin_until(executor, until, timeout):
    deadline = time.monotonic() + timeout
    while not until() and time.monotonic() < deadline:
        executor.spin_once(timeout_sec=0.02)
    return until()


def start_policy_node(node_overrides):
    """A configured, active PolicyNode spinning on its own executor thread."""
    node = PolicyNode(parameter_overrides=[Parameter(k, value=v)
                                           for k, v in node_overrides.items()])
    assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
    node.trigger_activate()
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    thread = threading.Thread(target=executor.spin, daemon=True)
    thread.start()
    return node, executor, thread


def stop_policy_node(node, executor, thread):
    executor.shutdown()
    thread.join(timeout=5)
    node.destroy_node()  # tears down the policy, timers and publishers first


def run_sim(sim, probe, policy, until, timeout: float) -> bool:
    """Spin ``sim`` and ``probe`` until ``until()`` (or ``timeout``), then stop ``policy``
    (start_policy_node's triple) and destroy both; whether ``until()`` was reached."""
    local = SingleThreadedExecutor()
    local.add_node(sim)
    local.add_node(probe)
    try:
        return spin_until(local, until, timeout)
    finally:
        stop_policy_node(*policy)
        sim.destroy_node()
        probe.destroy_node()


class Running:
    """A PolicyNode spinning on its own executor thread, plus a client that talks to it and
    checks every chunk and trajectory it publishes against the configured limits."""

    def __init__(self, params: dict, namespace: str = "", configure: bool = True):
        self.low = np.float32(params.get("action_low", [-math.inf])[0])
        self.high = np.float32(params.get("action_high", [math.inf])[0])
        self.node = PolicyNode(namespace=namespace, parameter_overrides=[
            Parameter(k, value=v) for k, v in {"device": "cpu", **params}.items()])
        if configure:
            assert self.node.trigger_configure() == TransitionCallbackReturn.SUCCESS
            self.node.trigger_activate()
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()
        ns = namespace.strip("/")
        self.client = rclpy.create_node(f"client_{ns or 'root'}", namespace=namespace)
        self.chunks, self.trajs, self.diags = [], [], []
        self.unsafe = 0
        self.client.create_subscription(ActionChunk, "action_chunk", self._on_chunk, 50)
        self.client.create_subscription(JointTrajectory, "joint_trajectory", self._on_traj, 50)
        self.client.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 50)
        self.img = self.client.create_publisher(Image, "image", qos_profile_sensor_data)
        self.jpeg = self.client.create_publisher(CompressedImage, "image/compressed",
                                                 qos_profile_sensor_data)
        self.js = self.client.create_publisher(JointState, "joint_states", 10)
        self.local = SingleThreadedExecutor()
        self.local.add_node(self.client)
        self.rng = np.random.default_rng(0)

    def _check(self, values) -> None:
        a = np.asarray(values, dtype=np.float32)
        if not (np.isfinite(a).all() and (a >= self.low).all() and (a <= self.high).all()):
            self.unsafe += 1

    def _on_chunk(self, msg) -> None:
        self.chunks.append(msg)
        self._check(msg.actions)

    def _on_traj(self, msg) -> None:
        self.trajs.append(msg)
        for p in msg.points:
            self._check(p.positions)

    def _on_diag(self, msg) -> None:
        ours = [s for s in msg.status if s.name == self.node.get_fully_qualified_name()]
        if ours:
            self.diags.append(ours[0])

    def spin(self, seconds: float = 0.0, until=None) -> bool:
        return spin_until(self.local, until or (lambda: False), seconds)

    def diag_with(self, text: str, timeout: float = 4.0) -> DiagnosticStatus | None:
        """The first diagnostic from now on whose message contains ``text``."""
        start = len(self.diags)
        self.spin(timeout, lambda: any(text in d.message for d in self.diags[start:]))
        return next((d for d in self.diags[start:] if text in d.message), None)

    def good(self, stamp=None, joints=(0.1, 0.2, 0.3), jpeg: bool = False) -> None:
        """One valid camera frame + joint state, stamped now (or ``stamp``)."""
        stamp = stamp or self.client.get_clock().now().to_msg()
        js = JointState(name=JOINTS, position=list(joints))
        js.header.stamp = stamp
        self.js.publish(js)
        frame = self.rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
        if jpeg:
            msg = CompressedImage(format="jpeg", data=cv2.imencode(".jpg", frame)[1].tobytes())
            msg.header.stamp = stamp
            self.jpeg.publish(msg)
        else:
            msg = Image(height=40, width=40, encoding="rgb8", step=120, data=frame.tobytes())
            msg.header.stamp = stamp
            self.img.publish(msg)

    def wait_connected(self) -> None:
        pub = self.jpeg if self.node.params.get("compressed_image") else self.img
        assert self.spin(10, lambda: pub.get_subscription_count() > 0 and
                         self.js.get_subscription_count() > 0)

    def stream(self, seconds: float, hz: float = 10.0, **kw) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.good(**kw)
            self.spin(1.0 / hz)

    def close(self) -> None:
        """Stop; count a crash when the executor thread died, and tally what was received."""
        alive = self.thread.is_alive()
        TALLY["node_crashes"] += int(not alive)
        TALLY["chunks_received"] += len(self.chunks)
        TALLY["unsafe_actions_published"] += self.unsafe
        self.executor.shutdown()
        self.thread.join(timeout=5)
        self.client.destroy_node()
        self.node.destroy_node()  # tears down the policy, timers and publishers first
        assert alive, "the policy node's executor thread died"
        assert self.unsafe == 0, f"{self.unsafe} unsafe chunks or trajectories were published"


# -- the parameter walk's probe (test_parameters.py, test_realtime.py) --------------------

LAG = 1.0  # every observation is stamped this long ago (see the age checks)
BASE = {"replan_steps": 1, "rate_hz": 0.0, "seed": 0, "max_obs_age": 5.0,
        "action_low": [-10.0], "action_high": [10.0], "replan": "at_end", "seam": "none",
        "chunk_actions": 0}
# One bad value per validated parameter, with words of the sentence refusing it.
BAD = {
    "action_high": ([math.nan], "are not ordered numbers"),
    "action_low": ([20.0], "expected action_low <= action_high"),
    "limit_mode": ("clamp", "expected clip or refuse"),
    "max_obs_age": (0.0, "expected a positive number of seconds"),
    "max_chunk_age": (-1.0, "expected 0 or a positive number of seconds"),
    "seed": (-2, "expected -1 (fresh noise every chunk)"),
    "rate_hz": (-1.0, "expected 0 (replan by frames) or a positive rate"),
    "replan_steps": (-1, "expected 0 (the policy's n_action_steps, 4)"),
    "instruction": ("stack the cups", "takes no instruction"),
    "replan": ("soon", "expected at_end or latency_aware"),
    "seam": ("smooth", "expected none, inpaint or blend"),
    "seam_weight": (1.5, "expected a weight in [0, 1]"),
    "warm_start": (1.0, "expected -1 (as the schedule says) or the fraction"),
    "chunk_actions": (8, "this policy predicts 7 actions from the current step on"),
}
RECONFIGURE = "is read at configure only; deactivate and clean up the node, set it, then configure"


class Probe:
    """Sends one observation at a time (same content every time) and waits for its outcome: a
    chunk with its stamp, or a /diagnostics counter going up."""

    def __init__(self, r: Running, now=None, size: int = 32, capfd=None):
        self.r, self.last, self.capfd = r, -math.inf, capfd  # capfd: for set_logs
        self.now = now or (lambda: r.client.get_clock().now().nanoseconds * 1e-9 - LAG)
        self.frame = np.random.default_rng(7).integers(0, 256, (size, size, 3), np.uint8)

    def send(self) -> float:
        """One observation, stamped now (LAG ago on the wall clock), at least one policy dt
        (0.1 s) after the previous one: the node counts it as a new frame. Its stamp as
        :func:`to_sec` reads it back, so a chunk answering it carries exactly this value."""
        t = self.now()
        while t < self.last + 0.1:
            self.r.spin(0.02)
            t = self.now()
        self.last = t
        stamp = rclpy.time.Time(nanoseconds=int(round(t * 1e9))).to_msg()
        t = to_sec(stamp)
        js = JointState(name=JOINTS, position=[0.1, 0.2, 0.3])
        js.header.stamp = stamp
        self.r.js.publish(js)
        self.r.spin(0.03)  # joints first: a camera frame needs a fresh joint state to count
        h, w = self.frame.shape[:2]
        img = Image(height=h, width=w, encoding="rgb8", step=3 * w, data=self.frame.tobytes())
        img.header.stamp = stamp
        self.r.img.publish(img)
        return t

    def stamps(self, chunks) -> list[float]:
        return [to_sec(c.header.stamp) for c in chunks]

    def chunk(self, tries: int = 3, wait: float = 5.0):
        """Send until a chunk answers the observation (a best-effort frame may be lost):
        (stamp, actions (n_action_steps, action_dim), message)."""
        for _ in range(tries):
            t = self.send()
            if self.r.spin(wait, lambda t=t: t in self.stamps(self.r.chunks)):
                msg = self.r.chunks[self.stamps(self.r.chunks).index(t)]
                if self.r.node.get_parameter("publish_trajectory").value:  # it follows
                    assert self.r.spin(5, lambda t=t: t in self.stamps(self.r.trajs))
                return t, np.asarray(msg.actions, np.float32).reshape(
                    msg.horizon, msg.action_dim), msg
        raise AssertionError("no chunk answered the observation")

    def counter(self, key: str) -> int:
        return int(diag_values(self.r.diags[-1])[key]) if self.r.diags else 0

    def dropped(self, key: str, tries: int = 3) -> float:
        """Send until the /diagnostics counter ``key`` goes up; the observation's stamp."""
        before = self.counter(key)
        for _ in range(tries):
            t = self.send()
            if self.r.spin(5, lambda: self.counter(key) > before):
                return t
        raise AssertionError(f"diagnostic counter {key} stayed at {before}")

    def said(self, words: str, since: int) -> bool:
        """Some /diagnostics message from ``since`` on says ``words`` (waits for the next)."""
        return self.r.spin(5, lambda: any(words in d.message for d in self.r.diags[since:]))

    def assert_unanswered(self, t: float) -> None:
        """No chunk carries stamp ``t``; call after a later chunk arrived (one FIFO topic)."""
        assert t not in self.stamps(self.r.chunks)

    def set(self, **values) -> None:
        res = self.r.node.set_parameters_atomically(
            [Parameter(k, value=v) for k, v in values.items()])
        assert res.successful, res.reason

    def set_logs(self, **values) -> list[str]:
        """Set ``values``; the lines the node logged on it, read from stderr as a console shows
        them (rclpy writes them before set_parameters returns)."""
        self.capfd.readouterr()
        self.set(**values)
        return self.capfd.readouterr().err.splitlines()

    def refuse(self, name: str, value, words: str = "") -> str:
        before = self.r.node.get_parameter(name).value
        res = self.r.node.set_parameters([Parameter(name, value=value)])[0]
        assert not res.successful and res.reason and words in res.reason, res.reason
        assert self.r.node.get_parameter(name).value == before
        return res.reason

    def refuse_bad(self, name: str) -> None:
        self.refuse(name, *BAD[name])


class SimClock:
    """/clock, moved by hand."""

    def __init__(self, r: Running, start: float):
        self.r, self.t = r, start
        self.pub = r.client.create_publisher(Clock, "/clock", 10)

    def advance(self, dt: float = 0.0) -> bool:
        """Publish sim time ``dt`` later; True once the node's clock shows it."""
        self.t += dt
        self.pub.publish(Clock(clock=rclpy.time.Time(nanoseconds=int(self.t * 1e9)).to_msg()))
        return abs(self.r.node.get_clock().now().nanoseconds * 1e-9 - self.t) < 1e-6

    def now(self) -> float:
        """For :class:`Probe`: each observation one policy dt of sim time after the last."""
        self.advance(0.1)
        return self.t


# -- one check per parameter -----------------------------------------------------------------
