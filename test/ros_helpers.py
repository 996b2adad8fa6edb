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
from sensor_msgs.msg import CompressedImage, Image, JointState
from trajectory_msgs.msg import JointTrajectory

from bac_ros.msg import ActionChunk
from bac_ros.nodes.policy_node import PolicyNode

JOINTS = ["joint1", "joint2", "joint3"]
# The reliability tally: every Running.close adds to it; test_reliability.py reports it.
TALLY = {"messages_tried": 0, "malformed_messages_tried": 0, "chunks_received": 0,
         "unsafe_actions_published": 0, "node_crashes": 0}


def to_sec(stamp) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


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
    assert node.trigger_configure() is not None and node.policy is not None
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
        ours = [s for s in msg.status if s.name == "bac_policy"]
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
