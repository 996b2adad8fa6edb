"""sim_node: a task as a ROS robot — the bundled arm, or a Meta-World task on MuJoCo physics.

``task`` selects it: ``arm`` or ``metaworld:NAME`` (e.g. ``metaworld:drawer-open``). Publishes
``image`` (sensor_msgs/Image rgb8, upright), ``joint_states`` (the arm's joints; for Meta-World
the Sawyer's seven joints ``right_j0..6`` with their positions read from the MuJoCo model),
``state`` (the policy's low-dim vector; Meta-World also ``proprio`` and ``goal``) and, with
``publish_clock``, ``/clock``; executes ``action_chunk`` messages (arm: joint targets;
Meta-World: end-effector delta xyz + gripper); publishes one ``episode_result`` per episode.
Actions are read by time: action k of a chunk stamped s is meant for time s + k*dt, so actions
whose time has passed are skipped, and a chunk that arrives while another runs takes over at
the action for the current time. The summary counts the ticks without a fresh action (holds)
and each seam's jump (|first action of a new chunk - the one it replaced|).

* ``realtime``: the world steps at the control rate in wall-clock time whether or not a fresh
  chunk has arrived (a slow policy acts on stale chunks, or holds).
* ``lockstep``: after each ``n_action_steps`` actions the world waits for the chunk computed
  from its current observation, so only the policy's decisions matter, not its speed. Time is
  then simulation time (``/clock``, published just before each observation): run the policy
  node with ``use_sim_time:=true`` and ``replan_steps:=1`` (the sim decides which chunk it
  consumes).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time

import numpy as np
import rclpy
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float32MultiArray, String

from bac_ros.io.messages import MessageError, chunk_actions, stamp_seconds
from bac_ros.msg import ActionChunk
from bac_ros.sim import arm
from bac_ros.sim.tasks import image_frame_id, make_env, parse_task

EPISODE_BREAK_S = 10.0  # sim time between episodes (with /clock)

PARAMETERS = {
    "task": ("arm", "arm | metaworld:TASK (e.g. metaworld:drawer-open)"),
    "mode": ("realtime", "realtime | lockstep"),
    "max_steps": (0, "episode step limit; 0: the task's own (arm 80, Meta-World 500)"),
    "episodes": (10, "episodes to run, then the node exits"),
    "seed": (100_000, "reset seed of the first episode (the next ones count up)"),
    "n_action_steps": (8, "lockstep: actions executed per chunk before waiting again"),
    "images": (True, "render and publish camera images"),
    "camera": ("", "Meta-World: the MuJoCo camera rendered on image (empty: corner; "
                   "gripperPOV is the wrist camera); a camera policy needs the one its "
                   "checkpoint records (task.camera)"),
    "publish_clock": (False, "publish /clock (sim time starts at 1000 s); lockstep always "
                             "does, since time must stand still while the world waits"),
    "joint_names": (list(arm.JOINT_NAMES),
                    "arm: names in joint_states (Meta-World publishes the Sawyer's own names)"),
    "chunk_timeout": (30.0, "lockstep: seconds to wait for a chunk before the episode fails"),
}


class SimNode(Node):
    def __init__(self, **kwargs):
        super().__init__("bac_sim", **kwargs)
        for name, (default, text) in PARAMETERS.items():
            self.declare_parameter(name, default, ParameterDescriptor(description=text))
        self.p = {name: self.get_parameter(name).value for name in PARAMETERS}
        if self.p["mode"] not in ("realtime", "lockstep"):
            raise ValueError(f"mode is {self.p['mode']!r}; expected realtime or lockstep")
        if self.p["mode"] == "lockstep":  # time must stand still while the world waits
            self.p["publish_clock"] = True
        else:  # realtime executes chunks by time: these two only pace lockstep
            for name in ("n_action_steps", "chunk_timeout"):
                if self.p[name] != PARAMETERS[name][0]:
                    raise ValueError(f"{name} is {self.p[name]}, but it applies in lockstep "
                                     "only and mode is realtime; expected mode lockstep or "
                                     f"the default {PARAMETERS[name][0]}")
        if self.p["n_action_steps"] < 1 or not self.p["chunk_timeout"] > 0 \
                or self.p["episodes"] < 1:
            raise ValueError(f"n_action_steps {self.p['n_action_steps']}, chunk_timeout "
                             f"{self.p['chunk_timeout']} and episodes {self.p['episodes']} "
                             "must all be positive")
        task = parse_task(self.p["task"])
        if self.p["max_steps"] < 0:
            raise ValueError(f"max_steps is {self.p['max_steps']}; expected 0 (the task's own "
                             "limit) or a positive step count")
        if self.p["max_steps"]:
            task = dataclasses.replace(task, max_steps=int(self.p["max_steps"]))
        if self.p["camera"]:
            if not hasattr(task, "camera"):
                raise ValueError(f"camera is {self.p['camera']!r}, but the arm renders one view; "
                                 "expected an empty camera for task arm")
            if not self.p["images"]:
                raise ValueError(f"camera is {self.p['camera']!r} but images is false, so nothing "
                                 "would be rendered; expected images true or an empty camera")
            task = dataclasses.replace(task, camera=self.p["camera"])
        self.env = make_env(task, self.p["images"])
        self.image_frame_id = image_frame_id(task)  # image header.frame_id: the camera rendered
        self.metaworld = hasattr(self.env, "joint_positions")
        self.action_dim = len(self.env.hold_action())
        self.dt = self.env.config.dt
        self.image_pub = self.create_publisher(Image, "image", qos_profile_sensor_data)
        self.joint_pub = self.create_publisher(JointState, "joint_states", 10)
        self.state_pub = self.create_publisher(Float32MultiArray, "state", 10)
        # the camera policy's low-dim inputs (hand xyz + gripper, goal), on the topics of their keys
        self.vector_pubs = {k: self.create_publisher(Float32MultiArray, k, 10)
                            for k in (("proprio", "goal") if self.metaworld else ())}
        self.result_pub = self.create_publisher(String, "episode_result", 10)
        self.clock_pub = self.create_publisher(Clock, "/clock", 10) if self.p["publish_clock"] \
            else None
        self.create_subscription(ActionChunk, "action_chunk", self._on_chunk, 10)
        self.results: list[dict] = []
        self.inference_times: list[float] = []
        self.chunk_arrivals: list[float] = []
        self.chunk: tuple[float, np.ndarray] | None = None
        self.ticks = self.holds = 0
        self.seam_jumps: list[float] = []
        self.sim_time = 1000.0
        self.episode = -1
        self.finished = False
        self._start_episode()
        self.timer = self.create_timer(self.dt if self.p["mode"] == "realtime" else 0.005,
                                       self._tick)

    def now(self) -> float:
        return self.sim_time if self.clock_pub is not None else time.time()

    def _start_episode(self) -> None:
        self.episode += 1
        if self.episode >= self.p["episodes"]:
            self.finished = True
            return
        self.seed = self.p["seed"] + self.episode
        if self.episode and self.clock_pub is not None:
            # a break of sim time between episodes: the policy node's history of the last one
            # lies past max_obs_age, so the new episode's first chunk is of its own frame only
            self.sim_time += EPISODE_BREAK_S
        self.obs = self.env.reset(self.seed)
        self.chunk, self.executed, self.chunks_used = None, 0, 0
        self.running: tuple[float, np.ndarray] | None = None  # the chunk the last tick ran
        self.waiting_since, self.republished = time.monotonic(), 0.0
        self.obs_stamp = self.episode_stamp = self._publish_obs()

    def _publish_obs(self) -> float:
        if self.clock_pub is not None:  # the clock first, so observers stamp with the new time
            msg = Clock()
            msg.clock.sec, msg.clock.nanosec = int(self.sim_time), \
                int(round((self.sim_time % 1) * 1e9))
            self.clock_pub.publish(msg)
            time.sleep(0.01)
        t = self.now()
        stamp = rclpy.time.Time(nanoseconds=int(round(t * 1e9))).to_msg()
        if self.metaworld:
            from bac_ros.sim.metaworld import JOINT_NAMES

            names, positions = JOINT_NAMES, self.env.joint_positions()
        else:
            names, positions = self.p["joint_names"], self.obs["joints"]
        js = JointState(name=list(names), position=[float(v) for v in positions])
        js.header.stamp = stamp
        self.joint_pub.publish(js)
        self.state_pub.publish(Float32MultiArray(data=self.env.state().tolist()))
        for key, pub in self.vector_pubs.items():
            pub.publish(Float32MultiArray(data=self.obs[key].tolist()))
        if self.p["images"]:
            img = self.obs["image"]
            msg = Image(height=img.shape[0], width=img.shape[1], encoding="rgb8",
                        step=img.shape[1] * 3, data=img.tobytes())
            msg.header.stamp, msg.header.frame_id = stamp, self.image_frame_id
            self.image_pub.publish(msg)
        return t

    def _on_chunk(self, msg: ActionChunk) -> None:
        try:
            actions = chunk_actions(msg)
            if actions.shape[1] != self.action_dim or not np.isfinite(actions).all():
                raise MessageError(f"chunk of shape {actions.shape} is not (horizon, "
                                   f"{self.action_dim}) finite")
        except MessageError as e:
            self.get_logger().warning(f"ignored action chunk: {e}")
            return
        stamp = stamp_seconds(msg.header)
        self.inference_times.append(float(msg.inference_time))
        self.chunk_arrivals.append(time.monotonic())
        # the newest chunk wins; one computed before this episode began is not for this world
        if stamp >= self.episode_stamp - 1e-6 and (self.chunk is None or stamp >= self.chunk[0]):
            self.chunk = (stamp, actions)

    def _action_now(self, chunk=None) -> np.ndarray | None:
        """The action of ``chunk`` (default: the newest) meant for the current time; None if
        it has none (hold)."""
        chunk = chunk or self.chunk
        if chunk is None:
            return None
        stamp, actions = chunk
        k = int(round((self.obs_stamp - stamp) / self.dt))
        return actions[k] if 0 <= k < len(actions) else None

    def _count(self, action: np.ndarray | None) -> None:
        """Tally a tick: a hold, or a seam when a new chunk takes over from another."""
        self.ticks += 1
        if action is None:
            self.holds += 1
            return
        if self.running is not None and self.running[0] != self.chunk[0]:
            before = self._action_now(self.running)
            before = self.env.hold_action() if before is None else before
            self.seam_jumps.append(float(np.linalg.norm(action - before)))
        self.running = self.chunk

    def _tick(self) -> None:
        if self.finished:
            return
        if self.p["mode"] == "lockstep":
            if self.executed == 0:  # waiting for the chunk of the current observation
                if self.chunk is None or abs(self.chunk[0] - self.obs_stamp) > 1e-6:
                    waited = time.monotonic() - self.waiting_since
                    if waited > self.p["chunk_timeout"]:
                        self._finish({"success": False, "collision": False,
                                      "timeout_waiting": True})
                    elif waited > self.republished + 1.0:  # a late subscriber missed it
                        self.republished = waited
                        self._publish_obs()
                    return
                self.chunks_used += 1
            action = self._action_now()
            self.executed = (self.executed + 1) % self.p["n_action_steps"]
        else:
            action = self._action_now()
        self._count(action)
        target = action if action is not None else self.env.hold_action()
        self.obs, done, info = self.env.step(target)
        self.sim_time += self.dt
        self.obs_stamp = self._publish_obs()
        if self.p["mode"] == "lockstep" and self.executed == 0:
            self.waiting_since, self.republished = time.monotonic(), 0.0
        if done:
            self._finish(info)

    def _finish(self, info: dict) -> None:
        result = {"episode": self.episode, "seed": self.seed, "success": bool(info["success"]),
                  "collision": bool(info.get("collision", False)), "steps": self.env.steps,
                  "mode": self.p["mode"],
                  # lockstep: no chunk answered an observation within chunk_timeout
                  "timeout_waiting": bool(info.get("timeout_waiting", False))}
        self.results.append(result)
        self.result_pub.publish(String(data=json.dumps(result)))
        self.get_logger().info(f"episode {self.episode} (seed {self.seed}): "
                               f"{'success' if result['success'] else 'failure'}")
        self._start_episode()


def main(args=None) -> int:
    rclpy.init(args=args)
    try:
        node = SimNode()
    except ValueError as e:  # a refused parameter: one line, no trace
        rclpy.logging.get_logger("bac_sim").error(str(e))
        rclpy.try_shutdown()
        return 1
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        while rclpy.ok() and not node.finished:
            executor.spin_once(timeout_sec=0.1)
        time.sleep(0.5)  # let the last result leave
        arrivals = node.chunk_arrivals
        summary = {
            "episodes": len(node.results),
            "successes": sum(r["success"] for r in node.results),
            "chunks": len(arrivals),
            "mean_inference_ms": 1e3 * float(np.mean(node.inference_times))
            if node.inference_times else None,
            "chunk_rate_hz": (len(arrivals) - 1) / (arrivals[-1] - arrivals[0])
            if len(arrivals) > 1 else 0.0,
            "hold_share": node.holds / max(1, node.ticks),
            "seam_jump_median": float(np.median(node.seam_jumps)) if node.seam_jumps else None,
            "results": node.results,
        }
        print(json.dumps(summary), flush=True)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
