"""The policy node's own cost per chunk, measured from a client in another process: newest
observation received -> chunk published, minus model time, as the node reports it on
/diagnostics (``overhead_ms_median``, over its last 50 chunks); beside it, what the client sees:
observation published -> chunk received, minus the model time in ``ActionChunk.inference_time``
(adds two DDS hops between processes).

:func:`measure` starts the installed ``policy_node`` executable as its own process (as on a
robot), replanning on every frame, and sends one observation frame at a time over Fast DDS,
waiting for its chunk before the next (so no queueing hides in the figure). Node overhead is
message conversion, history assembly, the hand-off to the inference thread, the safety checks,
and building and publishing the chunk. A private ROS_DOMAIN_ID keeps other nodes out.
``bench/node_overhead.py`` and ``make bench`` call it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import rclpy
from ament_index_python.packages import get_package_prefix
from diagnostic_msgs.msg import DiagnosticArray, KeyValue
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float32MultiArray

from bac_ros.io.observer import IMAGE, JOINT_STATE, observation_sources
from bac_ros.msg import ActionChunk
from bac_ros.policy.checkpoint import load_native
from bac_ros.policy.policy import camera_frame
from bac_ros.sim import arm


def _messages(obs_spec: dict, rng: np.random.Generator, joint_names: list[str],
              camera: str) -> list:
    """One frame of messages (topic, message), the camera last: its arrival makes the frame;
    images name ``camera`` (the checkpoint's, which the node checks) in their frame_id."""
    out = []
    for s in observation_sources(obs_spec):
        shape = obs_spec[s.key][0]
        if s.msgtype == IMAGE:
            h, w = int(shape[1]), int(shape[2])
            data = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            img = Image(height=h, width=w, encoding="rgb8", step=w * 3, data=data.tobytes())
            img.header.frame_id = camera
            out.append((s.topic, img))
        elif s.msgtype == JOINT_STATE:
            out.insert(0, (s.topic, JointState(name=joint_names,
                                               position=rng.uniform(-1, 1, 3).tolist())))
        else:
            out.insert(0, (s.topic, Float32MultiArray(
                data=rng.uniform(-1, 1, int(np.prod(shape))).astype(np.float32).tolist())))
    return out


def measure(checkpoint: Path, schedule: str = "", chunks: int = 40, warmup: int = 5,
            timeout: float = 120.0, frame_timeout: float = 2.0, max_sends: int = 6,
            device: str = "auto") -> dict:
    """Median/p95 overhead (ms) over ``chunks`` frames after ``warmup`` frames, with the
    policy node on ``schedule`` (a file or ``uniform:N``; empty: full compute) and
    ``device``."""
    config = load_native(checkpoint).config
    obs_spec = {k: (tuple(v["shape"]), v.get("type", "low_dim"))
                for k, v in config["policy"]["obs"].items()}
    dt = float(config["policy"].get("dt", 0.1))
    joint_names = list(config["policy"].get("action_names") or arm.JOINT_NAMES)
    exe = Path(get_package_prefix("bac_ros")) / "lib" / "bac_ros" / "policy_node"
    ns = f"bench_{os.getpid()}"
    cmd = [sys.executable, str(exe), "--ros-args", "-r", f"__ns:=/{ns}",
           "-p", f"checkpoint:={checkpoint}", "-p", f"device:={device}",
           *(["-p", f"schedule:={schedule}"] if schedule else []),  # rcl refuses an empty value
           "-p", "replan_steps:=1", "-p", "max_obs_age:=5.0", "-p", "publish_trajectory:=false",
           "-p", f"joint_names:={json.dumps(joint_names)}", "--log-level", "warn"]
    os.environ["ROS_DOMAIN_ID"] = str(100 + os.getpid() % 100)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    rclpy.init()
    node = Node("bac_overhead_bench", namespace=ns)
    try:
        pubs = {}
        for s in observation_sources(obs_spec):
            cls = {IMAGE: Image, JOINT_STATE: JointState}.get(s.msgtype, Float32MultiArray)
            qos = qos_profile_sensor_data if cls is Image else 10
            pubs[s.topic] = node.create_publisher(cls, s.topic, qos)
        received: list[tuple[float, ActionChunk]] = []
        node.create_subscription(ActionChunk, "action_chunk",
                                 lambda m: received.append((time.time(), m)), 10)
        diagnostics: dict[str, str] = {}
        node.create_subscription(DiagnosticArray, "/diagnostics", lambda m: diagnostics.update(
            {kv.key: kv.value for st in m.status if st.name == f"/{ns}/bac_policy"
             for kv in [*st.values, KeyValue(key="device", value=st.hardware_id)]}), 10)
        rng = np.random.default_rng(0)
        deadline = time.monotonic() + timeout
        while node.count_subscribers(next(iter(pubs))) == 0:  # the node is configured
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"policy_node did not come up: {proc.stderr.read()[-2000:]}")
            rclpy.spin_once(node, timeout_sec=0.1)
        overheads, models, resent = [], [], 0
        camera = camera_frame(config) or ""
        for i in range(warmup + chunks):
            frame = _messages(obs_spec, rng, joint_names, camera)
            before = len(received)
            for _send in range(max_sends):  # the camera topic is best effort: frames drop
                for _, msg in frame:
                    if hasattr(msg, "header"):
                        msg.header.stamp = node.get_clock().now().to_msg()
                sent = time.time()
                for topic, msg in frame:
                    pubs[topic].publish(msg)
                while len(received) == before and time.time() - sent < frame_timeout:
                    if proc.poll() is not None:
                        raise RuntimeError(f"policy_node exited: {proc.stderr.read()[-2000:]}")
                    rclpy.spin_once(node, timeout_sec=0.01)
                if len(received) > before:
                    break
                resent += 1
            else:
                raise RuntimeError(f"policy_node answered none of {max_sends} sends of frame {i}")
            got, chunk = received[-1]
            if i >= warmup:
                overheads.append((got - sent - chunk.inference_time) * 1e3)
                models.append(chunk.inference_time * 1e3)
            time.sleep(max(0.0, 1.5 * dt - (time.time() - sent)))  # the next 10 Hz frame
        diagnostics.clear()
        deadline = time.monotonic() + 10.0
        while not diagnostics.get("overhead_ms_median"):  # published once a second
            if time.monotonic() > deadline:
                raise RuntimeError("policy_node published no overhead diagnostics")
            rclpy.spin_once(node, timeout_sec=0.1)
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # inside a long inference: never leave it running
            proc.kill()
            proc.wait()
    return {"checkpoint": str(checkpoint), "schedule": schedule or "full", "chunks": chunks,
            "device": diagnostics["device"],  # as the node reports it
            "frames_resent": resent,
            "node_overhead_ms_median": float(diagnostics["overhead_ms_median"]),
            "client_overhead_ms_median": float(np.median(overheads)),
            "client_overhead_ms_p95": float(np.percentile(overheads, 95)),
            "model_ms_median": float(np.median(models))}
