"""Subscriptions to a policy's observation sources, shared by the policy and profiler nodes."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Float32MultiArray

from bac_ros.io.observer import COMPRESSED, IMAGE, JOINT_STATE, Source

MSG_CLASSES = {IMAGE: Image, COMPRESSED: CompressedImage, JOINT_STATE: JointState}


def subscribe_observations(node: Node, sources: Sequence[Source],
                           callback: Callable[[Source, object], None],
                           callback_group=None) -> list:
    """One subscription per source (cameras with sensor-data QoS); ``callback(source, msg)``."""
    subs = []
    for s in sources:
        cls = MSG_CLASSES.get(s.msgtype, Float32MultiArray)
        qos = qos_profile_sensor_data if cls in (Image, CompressedImage) else 10
        subs.append(node.create_subscription(cls, s.topic, lambda msg, s=s: callback(s, msg),
                                             qos, callback_group=callback_group))
    return subs
