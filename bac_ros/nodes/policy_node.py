"""policy_node: camera + joint states in, BAC-accelerated action chunks out (lifecycle node).

configure loads and validates the checkpoint and schedule (a failure leaves the node
unconfigured, alive, ready for another try); activate starts inference. Subscriptions only store
the newest message, and each camera frame (at most one per dt) extends the observation history;
inference runs on its own thread, at ``rate_hz`` or (0) by frames: with ``replan: at_end`` every
``replan_steps`` new frames, with ``latency_aware`` early enough that the chunk arrives before the
current one runs out; ``seam`` joins it to the chunk being executed (bac_ros/policy/realtime.py).
Nothing non-finite, outside the action limits or older than ``max_chunk_age`` is ever published.

Every parameter is live (validated by the same function as at configure, then in force from the
next chunk), read at configure (refused while configured), or read-only: never accepted and
ignored. See ``PARAMETERS`` and docs/RELIABILITY.md.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.time import Time
from std_msgs.msg import String
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from bac_ros.io.messages import MessageError, fill_chunk, stamp_seconds
from bac_ros.io.observer import (
    ObservationAssembler,
    converters,
    observation_sources,
    primary_key,
)
from bac_ros.msg import ActionChunk
from bac_ros.nodes.settings import LiveSettings, dormant, live_settings
from bac_ros.nodes.topics import subscribe_observations
from bac_ros.policy.realtime import Replanner, blended, continuation
from bac_ros.sim import arm

# name: (default, when a change takes effect, description). LIVE: from the next chunk on,
# after validation; CONFIGURE: read at configure, refused while configured (a reconfigure is
# needed); START: read once at start, read-only.
LIVE, CONFIGURE, START = "live", "configure", "start"
PARAMETERS = {
    "checkpoint": ("", CONFIGURE,
                   "policy checkpoint folder (config.yaml + model.safetensors) or .ckpt"),
    "schedule": ("", LIVE, "BAC schedule YAML; '' = full compute; 'uniform:N' = uniform "
                           "caching; a new value is validated, then swapped between chunks"),
    "device": ("auto", CONFIGURE, "auto | cpu | cuda[:N]"),
    "dtype": ("float32", CONFIGURE, "float32 | float16 | bfloat16 (half precision on CUDA only)"),
    "rate_hz": (0.0, LIVE, "inference rate; 0 = every replan_steps new observation frames"),
    "replan_steps": (0, LIVE, "with rate_hz 0: frames between chunks (0 = the policy's "
                              "n_action_steps, as it was trained to execute)"),
    "replan": ("latency_aware", LIVE,
               "with rate_hz 0: at_end requests the next chunk when the current one's last "
               "action is due (every replan_steps frames); latency_aware as many frames earlier "
               "as chunks take to arrive (a high quantile of their recent ages, per schedule), "
               "so the robot does not run out of actions; like at_end while a chunk takes "
               "more than half of replan_steps or chunk_actions, whichever is larger (chunks "
               "cannot chain), or nothing is measured"),
    "chunk_actions": (-1, LIVE,
                      "predicted actions per published chunk (0 = the policy's n_action_steps, "
                      "-1 = all it predicts from the observation's step on); more than "
                      "n_action_steps give the robot the policy's own next actions to run while "
                      "a late chunk is computed instead of holding, and let a slow model chain "
                      "chunks"),
    "seam": ("inpaint", LIVE,
             "how a new chunk joins the one being executed: none; inpaint (its denoising is "
             "guided toward the overlapping committed actions); blend (mixed with them after "
             "sampling)"),
    "seam_weight": (0.5, LIVE,
                    "with seam inpaint or blend: weight of the first overlapping action not "
                    "certain to run (those that are get 1); each later one gets this factor "
                    "again; 1: the whole overlap follows the committed chunk, 0: only the "
                    "actions that will run"),
    "warm_start": (-1.0, LIVE,
                   "fraction of denoising steps skipped by starting from the committed chunk, "
                   "shifted and re-noised, when the new observation falls inside it (0: off; "
                   "-1: as the schedule file says); whole steps, rounded down, so under 1/K of "
                   "a K-step sampler skips none"),
    "joint_names": (list(arm.JOINT_NAMES), CONFIGURE,
                    "joints read from joint_states, in the policy's order; also the action names"),
    "action_low": ([-math.inf], LIVE,
                   "lower action limits per dimension (one value: all dimensions)"),
    "action_high": ([math.inf], LIVE,
                    "upper action limits per dimension (one value: all dimensions)"),
    "limit_mode": ("clip", LIVE, "clip: clamp out-of-limit actions; refuse: drop the whole chunk"),
    "compressed_image": (False, CONFIGURE,
                         "read cameras as sensor_msgs/CompressedImage on <key>/compressed "
                         "(refused for a policy without a camera)"),
    "max_obs_age": (0.5, LIVE, "seconds: no inference on an observation older than this"),
    "max_chunk_age": (0.0, LIVE, "seconds: a chunk older than this (now - its observation's "
                                 "stamp) when it would be published is dropped; 0 = 2 x "
                                 "max_obs_age"),
    "publish_trajectory": (True, LIVE, "also publish trajectory_msgs/JointTrajectory"),
    "seed": (-1, LIVE, "sampling seed for reproducible chunks (-1: fresh noise every chunk)"),
    "instruction": ("", LIVE, "VLA policies only: the task instruction ('' = the checkpoint's); "
                              "the 'instruction' topic (std_msgs/String) changes it too"),
    "autostart": (True, START, "configure and activate at start"),
}
_WHEN = {LIVE: " Run-time changes take effect from the next chunk.",
         CONFIGURE: " Read at configure; refused while configured (clean up, set, configure).",
         START: " Read once at start (read-only)."}


def _same(a, b) -> bool:
    """Parameter values equal (arrays arrive as lists or array.array): loading the whole
    parameter file again onto a running node changes nothing and is not refused."""
    if isinstance(a, str) or isinstance(b, str):
        return a == b
    try:
        return list(a) == list(b)
    except TypeError:
        return a == b


def _to_time(seconds: float) -> Time:
    return Time(nanoseconds=int(round(seconds * 1e9)))


class PolicyNode(LifecycleNode):
    def __init__(self, **kwargs):
        super().__init__("bac_policy", **kwargs)
        for name, (default, when, text) in PARAMETERS.items():
            self.declare_parameter(name, default, ParameterDescriptor(
                description=text + _WHEN[when], read_only=when == START))
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.add_post_set_parameters_callback(self._after_set_parameters)
        self.policy = None
        self.settings: LiveSettings | None = None  # swapped whole, never edited
        self.lock = threading.Lock()
        # Every torch call (loading, inference) runs on this one thread: a second thread calling
        # into torch starts a second OpenMP team, and the two halve CPU inference speed.
        self._torch = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bac_inference")
        self._pending = self._again = False
        self.stats = {"chunks": 0, "stale": 0, "late": 0, "rejected_msgs": 0, "unsafe": 0,
                      "clipped": 0}
        self.latencies: deque = deque(maxlen=50)
        self.overheads: deque = deque(maxlen=50)
        self._received = 0.0
        self.publish_times: deque = deque(maxlen=50)
        self.last_problem = ""
        self._log_times: dict[str, float] = {}
        self._last_now = -math.inf
        # Not a lifecycle publisher: a failed configure must be able to say why.
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._entities: list = []
        self._rate_timer = None
        self._active = False

    def _values(self) -> dict:
        return {name: self.get_parameter(name).value for name in PARAMETERS}

    # -- lifecycle ---------------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        from bac_ros.policy.policy import Policy

        p = self._values()
        try:
            if not p["checkpoint"]:
                raise ValueError("parameter 'checkpoint' is empty; set it to a checkpoint folder")
            policy = self._torch.submit(
                Policy.from_pretrained, p["checkpoint"], device=p["device"], dtype=p["dtype"],
                schedule=p["schedule"] or None).result()
            if p["compressed_image"] and not policy.cameras:
                raise ValueError("compressed_image is true, but this policy reads no camera; "
                                 "expected false")
            sources = observation_sources(policy.obs_spec, p["compressed_image"])
            convs = converters(sources, policy, p["joint_names"])
            settings = live_settings(p, policy)
        except Exception as e:  # configure must fail cleanly, whatever went wrong
            self._configure_failed(e, p["checkpoint"])
            return TransitionCallbackReturn.FAILURE
        # What stays fixed until the next configure (live values are read from self.settings).
        self.params = {k: v for k, v in p.items() if PARAMETERS[k][1] != LIVE}
        self.policy, self.settings = policy, settings
        self.replanner = Replanner(policy.dt)  # the first frame gets a chunk at once
        self._committed: tuple[float, np.ndarray] | None = None  # last published (stamp, chunk)
        # The newest frame's header stamp as sent: a chunk carries it unchanged, since float
        # seconds at epoch times keep only ~0.2 us and a consumer matches stamps exactly.
        self._frame_stamp = None
        self.assembler = ObservationAssembler([s.key for s in sources], policy.n_obs_steps,
                                              policy.dt, settings.max_obs_age,
                                              primary_key(policy.obs_spec))
        sensors = self._sensors = MutuallyExclusiveCallbackGroup()
        self._entities += subscribe_observations(
            self, sources, lambda s, msg: self._on_message(s, convs[s.key], msg), sensors)
        if policy.accepts_instruction:  # a VLA: instruction by parameter and topic
            self._trained_instruction = policy.instruction
            if p["instruction"]:
                policy.set_instruction(p["instruction"])
            self._entities.append(self.create_subscription(
                String, "instruction", lambda msg: self._set_instruction(msg.data), 10,
                callback_group=sensors))
        self.chunk_pub = self.create_lifecycle_publisher(ActionChunk, "action_chunk", 10)
        # Created even when off: publish_trajectory is live and only gates publishing.
        self.traj_pub = self.create_lifecycle_publisher(JointTrajectory, "joint_trajectory", 10)
        self._entities.append(self.create_timer(1.0, self._diagnostics, callback_group=sensors))
        self._set_rate(settings.rate_hz)
        self.get_logger().info(
            f"configured {p['checkpoint']} ({policy.config['policy']['kind']}, "
            f"{policy.sampler['type']} K={policy.num_inference_steps}, schedule "
            f"{policy.schedule_id or 'full compute'}, device {policy.device})")
        return TransitionCallbackReturn.SUCCESS

    def _configure_failed(self, error: Exception, checkpoint: str) -> None:
        """Log and publish (as an ERROR diagnostic) one line saying why configure failed."""
        text = str(error) if isinstance(error, (ValueError, OSError)) else \
            f"checkpoint {checkpoint} does not build a policy ({type(error).__name__}: {error})"
        text = "configure failed: " + " ".join(text.split())  # one line, even for YAML errors
        self.get_logger().error(text)
        status = DiagnosticStatus(name=self.get_fully_qualified_name(),
                                  level=DiagnosticStatus.ERROR, message=text)
        arr = DiagnosticArray(status=[status])
        arr.header.stamp = self.get_clock().now().to_msg()
        self.diag_pub.publish(arr)

    def _set_rate(self, rate_hz: float) -> None:
        """Replace the inference timer: rate_hz > 0 runs at that rate, 0 follows frames."""
        old, self._rate_timer = self._rate_timer, None
        if old is not None:
            old.cancel()
            self.destroy_timer(old)
        if rate_hz > 0:
            self._rate_timer = self.create_timer(1.0 / rate_hz, self._request_inference,
                                                 callback_group=self._sensors)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._active = True
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._active = False
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._teardown()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._teardown()
        return TransitionCallbackReturn.SUCCESS

    def _teardown(self) -> None:
        self._active = False
        self._set_rate(0.0)
        for e in self._entities:
            if hasattr(e, "cancel"):
                e.cancel()
                self.destroy_timer(e)
            else:
                self.destroy_subscription(e)
        self._entities.clear()
        for name in ("chunk_pub", "traj_pub"):
            pub = self.__dict__.pop(name, None)
            if pub is not None:
                self.destroy_lifecycle_publisher(pub)
        self.policy = None

    def destroy_node(self):
        self._teardown()
        self._torch.shutdown(wait=True, cancel_futures=True)
        return super().destroy_node()

    # -- inputs ------------------------------------------------------------------------------
    def _warn(self, key: str, text: str) -> None:
        """Throttled warning (once per 5 s per kind) that also feeds the diagnostics."""
        self.last_problem = text
        now = time.monotonic()
        if now - self._log_times.get(key, -1e9) > 5.0:
            self._log_times[key] = now
            self.get_logger().warning(text)

    def _now(self) -> float:
        """Clock seconds. A backwards jump (sim time restarted, bag looped, wall clock set back)
        clears the observation history: its stamps would lie in the future and block new ones."""
        with self.lock:
            now = self.get_clock().now().nanoseconds * 1e-9
            jump, self._last_now = self._last_now - now, now
            if jump > 0.01:
                self.assembler.clear()
                self.replanner.restart()
                self.replanner.reset_latency()
                self._committed = None
        if jump > 0.01:
            self._warn("clock", f"clock jumped back {jump:.3f} s; observation history cleared")
        return now

    def _on_message(self, source, convert, msg) -> None:
        received = time.perf_counter()
        try:
            value = convert(msg)
            now = self._now()
            s = self.settings
            stamp = stamp_seconds(msg.header) if hasattr(msg, "header") else now
            if stamp > now + s.max_obs_age:
                raise MessageError(f"stamp {stamp:.3f} lies {stamp - now:.3f} s in the future; "
                                   f"expected at most max_obs_age={s.max_obs_age}")
            with self.lock:
                new_frame = self.assembler.add(source.key, value, stamp)
                self._received = received
                if new_frame:
                    self._frame_stamp = msg.header.stamp if hasattr(msg, "header") \
                        else _to_time(stamp).to_msg()
        except Exception as e:  # whatever a message holds, it costs that message only
            self.stats["rejected_msgs"] += 1
            why = e if isinstance(e, ValueError) else f"{type(e).__name__}: {e}"
            self._warn(source.topic, f"rejected {source.topic} message: {why}")
            return
        if new_frame and s.rate_hz <= 0:
            with self.lock:
                due = self.replanner.due(s.execution.replan, s.replan_steps, s.chunk_actions)
            if due:
                self._request_inference()

    # -- inference ---------------------------------------------------------------------------
    def _request_inference(self) -> None:
        """Queue one inference on the torch thread; while one runs, remember to run again
        (latest observation wins: requests never pile up)."""
        with self.lock:
            if self._pending:
                self._again = True
                return
            self._pending = True
        self._torch.submit(self._infer_job)

    def _infer_job(self) -> None:
        try:
            self._infer()
        except Exception as e:  # an unexpected fault costs this chunk, never the node
            self.stats["unsafe"] += 1
            self._warn("infer", f"no chunk: inference step failed ({type(e).__name__}: {e})")
        finally:
            with self.lock:
                again, self._pending, self._again = self._again, False, False
            if again and self._active:
                self._request_inference()

    def _infer(self) -> None:
        if not self._active or self.policy is None:
            return
        now = self._now()
        with self.lock:
            if not self.assembler.ready:
                return
            window, stamp = self.assembler.window()
            received, header_stamp = self._received, self._frame_stamp
            stale = self.assembler.stale_keys(now)
            policy, s = self.policy, self.settings
            committed, lead = self._committed, self.replanner.lead(s.replan_steps)
        if stale or now - stamp > s.max_obs_age:
            self.stats["stale"] += 1
            self._warn("stale", f"no chunk: observation {stale or 'history'} older than "
                                f"max_obs_age={s.max_obs_age} s")
            return
        t0 = time.perf_counter()
        try:
            actions = policy.predict(
                window, seed=s.seed, n_actions=s.chunk_actions,
                **continuation(s.execution, committed, stamp, policy.dt, lead, policy))
        except Exception as e:  # a bad observation must cost a chunk, never the node
            self.stats["unsafe"] += 1
            self._warn("predict", f"no chunk: inference failed ({e})")
            return
        latency = time.perf_counter() - t0
        actions = blended(s.execution, committed, stamp, policy.dt, lead, actions)
        # The output is checked against the settings in force now, not those at the start: a
        # limit lowered while this chunk was computed already applies to it.
        out = self.settings
        actions = self._safe(actions, out)
        if actions is None:
            return
        self._publish(actions, stamp, header_stamp, latency, policy, received, out)

    def _safe(self, actions: np.ndarray, s: LiveSettings) -> np.ndarray | None:
        """The chunk as float32 inside the limits, or None (with a diagnostic) when it must not
        be published."""
        with np.errstate(over="ignore"):  # float64 beyond float32 becomes inf: refused below
            actions = np.asarray(actions, dtype=np.float32)
        if not np.isfinite(actions).all():
            self.stats["unsafe"] += 1
            self._warn("nan", "no chunk: the model produced NaN or inf actions")
            return None
        outside = (actions < s.low) | (actions > s.high)
        if outside.any():
            if s.limit_mode == "refuse":
                self.stats["unsafe"] += 1
                self._warn("limits", "no chunk: actions outside action_low/action_high")
                return None
            self.stats["clipped"] += 1
            actions = np.clip(actions, s.low, s.high)
        return actions

    def _publish(self, actions: np.ndarray, stamp: float, header_stamp, latency: float,
                 policy, received: float, s: LiveSettings) -> None:
        chunk_pub, traj_pub = self.__dict__.get("chunk_pub"), self.__dict__.get("traj_pub")
        if chunk_pub is None:  # torn down while this chunk was computed
            return
        msg = ActionChunk()
        msg.header.stamp = header_stamp
        names = self.params["joint_names"] if len(self.params["joint_names"]) == \
            actions.shape[1] else policy.action_names
        fill_chunk(msg, actions, names, policy.dt, latency, policy.schedule_id)
        traj = None
        if s.publish_trajectory:
            traj = JointTrajectory()
            traj.header.stamp = msg.header.stamp
            traj.joint_names = list(names)
            for k, a in enumerate(actions):
                point = JointTrajectoryPoint()
                point.positions = [float(v) for v in a]
                t = k * policy.dt
                point.time_from_start.sec = int(t)
                point.time_from_start.nanosec = int(round((t - int(t)) * 1e9))
                traj.points.append(point)
        # The age check is the last thing before sending: inference may have stalled for
        # seconds (CPU load), and the observation's age was only checked when it started.
        age = self._now() - stamp
        with self.lock:
            self.replanner.add_age(age)  # what the executor waits for, published or not
        if age > s.max_chunk_age:
            self.stats["late"] += 1
            self._warn("late", f"no chunk: it was ready {age:.3f} s after its observation, "
                               f"later than max_chunk_age={s.max_chunk_age} s")
            return
        chunk_pub.publish(msg)
        if traj is not None:
            traj_pub.publish(traj)
        with self.lock:
            self._committed = (stamp, actions)
        self.stats["chunks"] += 1
        self.latencies.append(latency)
        # Node overhead: newest observation received -> chunk published, minus model time.
        self.overheads.append(time.perf_counter() - received - latency)
        self.publish_times.append(time.monotonic())

    def _diagnostics(self) -> None:
        if self.policy is None:
            return
        now = self._now()
        s = self.settings
        with self.lock:
            stale = self.assembler.stale_keys(now)
        problem = self.last_problem
        if not problem and stale and self._active:  # no input: no inference ran to say so
            problem = (f"no chunk: observation {stale} missing or older than "
                       f"max_obs_age={s.max_obs_age} s")
        # named by the node's namespace too: /diagnostics is one topic for every robot
        status = DiagnosticStatus(name=self.get_fully_qualified_name(),
                                  hardware_id=str(self.policy.device))
        status.level = DiagnosticStatus.WARN if problem else DiagnosticStatus.OK
        status.message = problem or ("publishing chunks" if self._active else "inactive")
        times = list(self.publish_times)
        rate = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and \
            times[-1] > times[0] else 0.0
        plan = self.policy.plan
        with self.lock:
            age = self.replanner.latency()
            interval = self.replanner.interval(s.execution.replan, s.replan_steps,
                                               s.chunk_actions)
        values = {
            "latency_ms_mean": f"{np.mean(self.latencies) * 1e3:.2f}" if self.latencies else "",
            "overhead_ms_median": (f"{np.median(self.overheads) * 1e3:.3f}" if self.overheads
                                   else ""),
            "achieved_rate_hz": f"{rate:.2f}",
            "cache_update_ratio": f"{1.0 if plan is None else float(plan.mean()):.4f}",
            "schedule_id": self.policy.schedule_id,
            "stale_inputs": ",".join(stale),
            "max_chunk_age": f"{s.max_chunk_age:g}",
            "chunk_age_ms_estimate": "" if age is None else f"{age * 1e3:.1f}",
            "replan_interval_frames": str(interval),
            **{k: str(v) for k, v in self.stats.items()},
        }
        status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
        arr = DiagnosticArray(status=[status])
        arr.header.stamp = self.get_clock().now().to_msg()
        self.diag_pub.publish(arr)
        self.last_problem = ""

    # -- parameters --------------------------------------------------------------------------
    def _set_instruction(self, text: str) -> None:
        with self.lock:
            if self.policy is None or not self.policy.accepts_instruction:
                return
            self.policy.set_instruction(text)
        self.get_logger().info(f"instruction now {text!r}")

    def _on_set_parameters(self, params) -> SetParametersResult:
        """Validate a change before rclpy stores it: refused with one sentence, or accepted and
        applied from the next chunk (by :meth:`_after_set_parameters`); a value its mode
        leaves without effect is stored, and the log says so (rclpy drops the reason of a
        success). Unconfigured, every value is accepted: configure reads and checks them all."""
        if self.policy is None:
            return SetParametersResult(successful=True)
        for param in params:
            if PARAMETERS.get(param.name, (None, LIVE))[1] == CONFIGURE and \
                    not _same(param.value, self.get_parameter(param.name).value):
                return SetParametersResult(successful=False, reason=(
                    f"{param.name} is read at configure only; deactivate and clean up the node, "
                    "set it, then configure again"))
        values = {**self._values(), **{p.name: p.value for p in params}}
        try:
            live_settings(values, self.policy)
        except ValueError as e:
            return SetParametersResult(successful=False, reason=str(e))
        schedule = next((p.value for p in params if p.name == "schedule"), None)
        if schedule is not None:  # last: everything else in this change is valid
            # On the inference thread: a swap never lands in the middle of a chunk. A
            # schedule file brings its sampler; '' = full compute, the checkpoint's sampler.
            def swap():
                if schedule:
                    self.policy.set_schedule(schedule)
                else:
                    self.policy.use_trained_sampler()
                with self.lock:  # the new schedule runs at its own speed: measure it afresh
                    self.replanner.reset_latency()

            try:
                self._torch.submit(swap).result()
            except Exception as e:
                return SetParametersResult(successful=False, reason=str(e))
            self.get_logger().info(f"schedule now {self.policy.schedule_id or 'full compute'}")
        for note in dormant(values, {p.name for p in params}):
            self.get_logger().info(note)
        return SetParametersResult(successful=True)

    def _after_set_parameters(self, params) -> None:
        """Swap in the settings of the values rclpy just stored (validated above)."""
        if self.policy is None:
            return
        names = {p.name for p in params}
        if "instruction" in names and hasattr(self.policy, "set_instruction"):
            self._set_instruction(self.get_parameter("instruction").value
                                  or self._trained_instruction)
        settings = live_settings(self._values(), self.policy)
        with self.lock:
            old, self.settings = self.settings, settings
            self.assembler.max_age = settings.max_obs_age
        if settings.rate_hz != old.rate_hz:
            self._set_rate(settings.rate_hz)
        changed = [p.name for p in params if PARAMETERS.get(p.name, (None, ""))[1] == LIVE]
        if changed:
            self.get_logger().info("now " + ", ".join(
                f"{n}={self.get_parameter(n).value!r}" for n in changed))


def main(args=None) -> int:
    rclpy.init(args=args)
    node = PolicyNode()
    # Callbacks only store messages and queue work: one executor thread is enough, and more
    # Python threads would compete for the GIL with the inference thread.
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    if node.get_parameter("autostart").value:
        if node.trigger_configure() == TransitionCallbackReturn.SUCCESS:
            node.trigger_activate()
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node._teardown()
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
