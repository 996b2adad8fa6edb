"""Soak: the real policy_node process under sensor traffic for minutes; memory and latency flat?

:func:`soak` starts ``policy_node`` (the installed executable ``ros2 run`` would start) on a
small image policy with random weights (32 px camera, 2 layers, K=10; built in a temporary
folder), then publishes a 64 px rgb8 camera and joint states at ``camera_hz`` while the node
infers at its own ``rate_hz``. The camera outruns inference, so queues must stay bounded and
every chunk must answer a recent frame. It samples the node's resident memory (VmRSS) every
second and checks every received chunk (finite, inside the configured limits). Growth is
measured after a warm-up (the first 10% of the run, at most 60 s) so that one-off allocations do
not count. ``make soak`` (bench/soak.py) and the test suite's short soak call it.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rclpy
import torch
from ament_index_python.packages import get_package_prefix
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image, JointState

from bac_ros.models.normalizer import LinearNormalizer
from bac_ros.msg import ActionChunk
from bac_ros.policy.build import new_checkpoint
from bac_ros.policy.checkpoint import save_native
from bac_ros.sim import arm

LIMITS = (-1.0, 1.0)


def make_checkpoint(folder: Path) -> Path:
    """A small image policy (camera 3x32x32 + 3 joints -> 3 actions) with random weights."""
    torch.manual_seed(0)
    norm = LinearNormalizer()
    norm.fit_image_range("image")
    norm.fit_limits("joints", torch.rand(64, 3) * 3 - 1)
    norm.fit_limits("action", torch.rand(64, 3) * 3 - 1)
    model = dict(n_layer=2, n_head=2, n_emb=32, p_drop_emb=0.0, p_drop_attn=0.0,
                 causal_attn=True, time_as_cond=True, n_cond_layers=0)
    obs = {"image": {"shape": [3, 32, 32], "type": "rgb"},
           "joints": {"shape": [3], "type": "low_dim"}}
    ckpt = new_checkpoint(obs, 3, norm, horizon=8, n_action_steps=4, model=model,
                          obs_encoder={"type": "small_cnn"}, num_inference_steps=10)
    return save_native(ckpt, folder / "soak_policy")


def node_command(checkpoint: Path, rate_hz: float, namespace: str) -> list[str]:
    exe = Path(get_package_prefix("bac_ros")) / "lib" / "bac_ros" / "policy_node"
    return [sys.executable, str(exe), "--ros-args", "-r", f"__ns:={namespace}",
            "-p", f"checkpoint:={checkpoint}", "-p", "device:=cpu",
            "-p", f"rate_hz:={rate_hz}", "-p", "max_obs_age:=0.5",
            "-p", f"action_low:=[{LIMITS[0]}]", "-p", f"action_high:=[{LIMITS[1]}]",
            "-p", "publish_trajectory:=false"]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def _slope_per_min(t: np.ndarray, y: np.ndarray) -> float:
    return float(np.polyfit(t, y, 1)[0] * 60) if len(t) > 2 else 0.0


def soak(seconds: float, camera_hz: float = 60.0, rate_hz: float = 5.0,
         image_size: int = 64, namespace: str = "/soak", log=print) -> dict:
    """Run the node under traffic for ``seconds``; returns the measurements (see module doc)."""
    tmp = tempfile.TemporaryDirectory(prefix="bac_soak_")
    ckpt = make_checkpoint(Path(tmp.name))
    proc = subprocess.Popen(node_command(ckpt, rate_hz, namespace), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    own_context = not rclpy.ok()
    if own_context:
        rclpy.init()
    client = rclpy.create_node("soak_traffic", namespace=namespace)
    received: list[tuple[float, float, float, bool]] = []  # (wall, age, inference, safe)

    def on_chunk(msg: ActionChunk) -> None:
        now = time.time()
        a = np.asarray(msg.actions, dtype=np.float32)
        safe = bool(np.isfinite(a).all() and (a >= np.float32(LIMITS[0])).all()
                    and (a <= np.float32(LIMITS[1])).all())
        stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        received.append((now, now - stamp, msg.inference_time, safe))

    client.create_subscription(ActionChunk, "action_chunk", on_chunk, 10)
    img_pub = client.create_publisher(Image, "image", qos_profile_sensor_data)
    js_pub = client.create_publisher(JointState, "joint_states", 10)
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (image_size, image_size, 3), dtype=np.uint8).tobytes()
              for _ in range(8)]
    sent, samples = 0, []  # samples: (seconds since start, rss MB)
    try:
        deadline = time.monotonic() + 120
        while img_pub.get_subscription_count() == 0 or not received:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"policy_node did not start: {proc.stderr.read()[-2000:]}")
            stamp = client.get_clock().now().to_msg()
            _publish(img_pub, js_pub, frames[sent % 8], image_size, stamp, rng)
            sent += 1
            rclpy.spin_once(client, timeout_sec=1.0 / camera_hz)
        received.clear()
        log(f"soak: node up (pid {proc.pid}); {seconds:.0f} s of {camera_hz:.0f} Hz camera + "
            f"joints, inference at {rate_hz} Hz")
        t0, start_wall = time.monotonic(), time.time()
        next_pub = next_sample = t0
        while (now := time.monotonic()) < t0 + seconds and proc.poll() is None:
            if now >= next_pub:
                stamp = client.get_clock().now().to_msg()
                _publish(img_pub, js_pub, frames[sent % 8], image_size, stamp, rng)
                sent += 1
                next_pub += 1.0 / camera_hz
            if now >= next_sample:
                samples.append((now - t0, rss_mb(proc.pid)))
                if len(samples) % 60 == 0:
                    log(f"soak: {now - t0:5.0f} s  rss {samples[-1][1]:.1f} MB  "
                        f"chunks {len(received)}")
                next_sample += 1.0
            rclpy.spin_once(client, timeout_sec=max(0.0, min(next_pub, next_sample)
                                                    - time.monotonic()))
        alive = proc.poll() is None
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        client.destroy_node()
        if own_context:
            rclpy.try_shutdown()
        tmp.cleanup()
    return summarize(seconds, camera_hz, rate_hz, sent, received, samples, alive, start_wall)


def _publish(img_pub, js_pub, frame: bytes, size: int, stamp, rng) -> None:
    img = Image(height=size, width=size, encoding="rgb8", step=size * 3, data=frame)
    img.header.stamp = stamp
    img_pub.publish(img)
    js = JointState(name=arm.JOINT_NAMES, position=(rng.random(3) - 0.5).tolist())
    js.header.stamp = stamp
    js_pub.publish(js)


def summarize(seconds, camera_hz, rate_hz, sent, received, samples, alive, start) -> dict:
    warmup = min(0.1 * seconds, 60.0)
    t = np.array([s[0] for s in samples])
    rss = np.array([s[1] for s in samples])
    warm = t >= warmup
    unsafe = sum(not r[3] for r in received)
    received = [r for r in received if r[0] >= start + warmup]
    ages = np.array([r[1] for r in received])
    third = max(1, len(ages) // 3)
    wall = np.array([r[0] for r in received])
    return {
        "seconds": seconds, "camera_hz": camera_hz, "rate_hz": rate_hz,
        "messages_sent": 2 * sent, "chunks_after_warmup": len(received),
        "chunk_rate_hz": round(len(received) / (seconds - warmup), 2),
        "unsafe_actions_published": unsafe,
        "node_alive": alive,
        "rss_mb_after_warmup": round(float(rss[warm][0]), 1) if warm.any() else None,
        "rss_mb_end": round(float(rss[-1]), 1) if len(rss) else None,
        "rss_growth_mb": round(float(rss[-1] - rss[warm][0]), 1) if warm.any() else None,
        "rss_slope_mb_per_min": round(_slope_per_min(t[warm], rss[warm]), 3),
        "age_ms_median_first_third": round(float(np.median(ages[:third])) * 1e3, 1)
        if len(ages) else None,
        "age_ms_median_last_third": round(float(np.median(ages[-third:])) * 1e3, 1)
        if len(ages) else None,
        "age_ms_max": round(float(ages.max()) * 1e3, 1) if len(ages) else None,
        "age_slope_ms_per_min": round(_slope_per_min(wall - wall[0], ages * 1e3), 3)
        if len(ages) > 2 else 0.0,
        "inference_ms_median": round(float(np.median([r[2] for r in received])) * 1e3, 1)
        if received else None,
    }
