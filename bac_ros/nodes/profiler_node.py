"""profiler_node: compile a BAC schedule from live topics (e.g. during ``ros2 bag play``).

It builds the policy node's exact observation histories (same conversion and assembly code),
collects ``observations`` of them, then profiles full-compute sampling, runs ACS + BUA and writes
the schedule (atomically), its profile and plots, and exits. For a bag on disk, ``bac profile
--bag`` does the same without DDS.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import rclpy
import rclpy.logging
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node

from bac_ros.cache.similarity import METRICS
from bac_ros.io.messages import MessageError, stamp_seconds
from bac_ros.io.observer import (
    ObservationAssembler,
    converters,
    observation_sources,
    primary_key,
)
from bac_ros.nodes.topics import subscribe_observations
from bac_ros.sim import arm

PARAMETERS = {
    "checkpoint": ("", "policy checkpoint folder or .ckpt"),
    "output": ("schedule.yaml", "schedule file to write (profile .npz and plots beside it)"),
    "observations": (64, "observation histories to collect before profiling"),
    "budget": (10, "ACS update budget S per block"),
    "top_k": (5, "Bubbling Union blocks (below 2 disables it)"),
    "metric": ("cosine", "cosine | l1 | mse"),
    "joint_names": (list(arm.JOINT_NAMES), "joints read from joint_states"),
    "max_obs_age": (0.5, "seconds; staler observation keys do not make a frame"),
    "device": ("auto", "auto | cpu | cuda[:N]"),
}


class ProfilerNode(Node):
    def __init__(self, **kwargs):
        super().__init__("bac_profiler", **kwargs)
        for name, (default, text) in PARAMETERS.items():
            self.declare_parameter(name, default, ParameterDescriptor(description=text))
        self.p = {name: self.get_parameter(name).value for name in PARAMETERS}
        # checked before the wait for observations, not after it
        if self.p["metric"] not in METRICS:
            raise ValueError(f"metric is {self.p['metric']!r}; expected one of {METRICS}")
        if self.p["observations"] < 1 or not self.p["max_obs_age"] > 0:
            raise ValueError(f"observations {self.p['observations']} and max_obs_age "
                             f"{self.p['max_obs_age']} must be positive")
        from bac_ros.policy.policy import Policy

        self.policy = Policy.from_pretrained(self.p["checkpoint"], device=self.p["device"])
        sources = observation_sources(self.policy.obs_spec)
        convs = converters(sources, self.policy, self.p["joint_names"])
        self.assembler = ObservationAssembler([s.key for s in sources], self.policy.n_obs_steps,
                                              self.policy.dt, self.p["max_obs_age"],
                                              primary_key(self.policy.obs_spec))
        self.windows: list[dict] = []
        self.done = threading.Event()
        subscribe_observations(self, sources, lambda s, m: self._on_message(s, convs[s.key], m))
        self.get_logger().info(f"collecting {self.p['observations']} observations from "
                               f"{[s.topic for s in sources]}")

    def _on_message(self, source, convert, msg) -> None:
        if self.done.is_set():
            return
        try:
            stamp = (stamp_seconds(msg.header) if hasattr(msg, "header")
                     else self.get_clock().now().nanoseconds * 1e-9)
            if self.assembler.add(source.key, convert(msg), stamp) and self.assembler.ready:
                self.windows.append(self.assembler.window()[0])
                n = len(self.windows)
                if n % 16 == 0:
                    self.get_logger().info(f"{n}/{self.p['observations']} observations")
                if n >= self.p["observations"]:
                    self.done.set()
        except Exception as e:  # whatever a message holds, it costs that message only
            why = e if isinstance(e, MessageError) else f"{type(e).__name__}: {e}"
            self.get_logger().warning(f"rejected {source.topic} message: {why}",
                                      throttle_duration_sec=5.0)

    def compile(self) -> Path:
        result = self.policy.profile(self.windows, batch_size=8)
        sched = self.policy.compile_schedule(
            result, budget=self.p["budget"], top_k=self.p["top_k"], metric=self.p["metric"],
            source=f"live topics via {self.get_fully_qualified_name()}")
        out = sched.save(self.p["output"])
        result.save(out.with_suffix(".profile.npz"))
        self.get_logger().info(f"wrote {out} (id {sched.id}, update ratio "
                               f"{sched.update_ratio():.1%})")
        return out


def main(args=None) -> int:
    rclpy.init(args=args)
    try:
        node = ProfilerNode()
    except (ValueError, OSError) as e:  # bad checkpoint or parameters: one line, no trace
        rclpy.logging.get_logger("bac_profiler").error(f"{e}; no schedule written")
        rclpy.try_shutdown()
        return 1
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        while rclpy.ok() and not node.done.is_set():
            executor.spin_once(timeout_sec=0.1)
        if node.windows:
            node.compile()
        else:
            node.get_logger().error("no complete observation arrived; no schedule written")
            return 1
    except (KeyboardInterrupt, ExternalShutdownException):
        if node.windows:
            node.compile()
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
