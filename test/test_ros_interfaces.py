"""The generated message and the installed layout, checked with real rclpy over Fast DDS."""

import os
import time
from pathlib import Path

import numpy as np
import pytest
import rclpy
from ament_index_python.packages import get_package_prefix, get_package_share_directory
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import QoSProfile, ReliabilityPolicy

from bac_ros.msg import ActionChunk

pytestmark = pytest.mark.ros

REPO = Path(__file__).resolve().parents[1]


def test_action_chunk_round_trip_over_dds():
    rclpy.init()
    try:
        pub_node = rclpy.create_node("chunk_talker")
        sub_node = rclpy.create_node("chunk_listener")
        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        received = []
        sub_node.create_subscription(ActionChunk, "action_chunk", received.append, qos)
        pub = pub_node.create_publisher(ActionChunk, "action_chunk", qos)

        actions = np.arange(16 * 3, dtype=np.float32).reshape(16, 3) / 7.0
        msg = ActionChunk()
        msg.header.stamp.sec = 1234
        msg.header.stamp.nanosec = 567_000_000
        msg.action_names = ["shoulder", "elbow", "wrist"]
        msg.horizon = 16
        msg.action_dim = 3
        msg.dt = 0.1
        msg.actions = actions.ravel().tolist()
        msg.inference_time = 0.0123
        msg.schedule_id = "bac_s10_k5@abc123"

        executor = SingleThreadedExecutor()
        executor.add_node(pub_node)
        executor.add_node(sub_node)
        deadline = time.monotonic() + 20.0
        while not received and time.monotonic() < deadline:
            if pub.get_subscription_count() > 0:
                pub.publish(msg)
            executor.spin_once(timeout_sec=0.1)
        assert received, "no ActionChunk arrived over DDS within 20 s"
        got = received[0]
        assert (got.header.stamp.sec, got.header.stamp.nanosec) == (1234, 567_000_000)
        assert list(got.action_names) == ["shoulder", "elbow", "wrist"]
        assert (got.horizon, got.action_dim) == (16, 3)
        assert got.dt == pytest.approx(0.1)
        np.testing.assert_array_equal(
            np.asarray(got.actions, dtype=np.float32).reshape(got.horizon, got.action_dim), actions
        )
        assert got.inference_time == pytest.approx(0.0123)
        assert got.schedule_id == "bac_s10_k5@abc123"
        executor.shutdown()
        pub_node.destroy_node()
        sub_node.destroy_node()
    finally:
        rclpy.shutdown()


def test_installed_where_ros2_run_and_launch_look():
    prefix = Path(get_package_prefix("bac_ros"))
    share = Path(get_package_share_directory("bac_ros"))
    for script in sorted((REPO / "scripts").iterdir()):
        exe = prefix / "lib" / "bac_ros" / script.name
        assert exe.is_file() and os.access(exe, os.X_OK), f"{exe} is missing or not executable"
    assert (prefix / "lib" / "bac_ros" / "bac").is_file()
    assert (share / "package.xml").is_file()
    for folder in ("launch", "config", "checkpoints"):
        assert (share / folder).is_dir(), f"share/bac_ros/{folder} is not installed"
    assert (share / "msg" / "ActionChunk.msg").is_file()
