"""Closed-loop evaluation of a policy on the bundled task, for any sampling method.

Methods: ``full`` (the checkpoint's sampler, every block), ``bac:FILE`` (a schedule file),
``uniform:N`` (every N-th step, all blocks), ``ddim:N`` / ``ddpm:N`` (DDIM, or stochastic DDPM,
with N steps, no caching). A schedule file brings its own sampler and step count.

Modes:
* ``lockstep`` — each chunk is computed from the current observation and the world waits for
  it: success measures what the sampler does to behaviour, not its speed. Episodes run as one
  batch, and each draws its noise from its own generator, seeded by its reset seed and
  replanning round: every method sees the same noise per episode and round, and an episode's
  noise does not depend on which episodes share its batch (so seed ranges can be sharded).
* ``realtime`` — the world moves on at the control rate while the model computes: a chunk that
  took L seconds (measured live, on this machine) takes over ``floor(L / dt)`` ticks after its
  observation, starting at the action meant for that tick; until then the world runs the chunk
  in force, or holds its last target when that one has run out. When chunks are requested and
  how they join follow the policy node's own rule (:mod:`bac_ros.policy.realtime`): by default
  ``at_end`` with no seam handling, or any :class:`Execution`.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from functools import partial

import numpy as np
import torch

from bac_ros.policy.policy import Policy
from bac_ros.policy.realtime import Execution, Replanner, blended, continuation
from bac_ros.policy.timing import time_interleaved
from bac_ros.sim.metaworld import MetaWorldTaskConfig, expert_outcomes
from bac_ros.sim.tasks import Env, Task, make_env, task_of

MODES = ("lockstep", "realtime")
#: Batched episodes that render run this many at a time: each holds an offscreen context, and
#: 200 Meta-World camera episodes at once took 14.5 GB and ran this 24 GiB machine out of memory.
RENDER_GROUP = 32
# request when the chunk ends, run n_action_steps of it
AT_END = Execution(replan="at_end", seam="none", warm_start=0.0, chunk_actions=0)


def apply_method(policy: Policy, method: str) -> None:
    """Configure ``policy`` for a method string (see the module docstring)."""
    base = policy.config
    if method == "full":
        policy.set_sampler(base["noise_scheduler"], base["policy"]["num_inference_steps"])
    elif method.startswith("ddim:"):
        policy.set_sampler("DDIMScheduler", _int_arg(method))
    elif method.startswith("ddpm:"):
        policy.set_sampler("DDPMScheduler", _int_arg(method))
    elif method.startswith("uniform:"):
        policy.set_sampler(base["noise_scheduler"], base["policy"]["num_inference_steps"])
        policy.set_schedule(method)
    elif method.startswith("bac:"):
        policy.set_sampler(base["noise_scheduler"], base["policy"]["num_inference_steps"])
        policy.set_schedule(method.split(":", 1)[1])
    else:
        raise ValueError(
            f"unknown method {method!r}; expected full, bac:FILE, uniform:N, ddim:N or ddpm:N"
        )


def time_methods(policy: Policy, methods: Mapping[str, str], obs: Mapping[str, np.ndarray],
                 repeats: int) -> dict[str, list[float]]:
    """Batch-1 ``predict`` seconds of each method (name -> method string), interleaved: one
    round runs every method once, so a busy machine slows all of them alike."""
    return time_interleaved(policy, {name: partial(apply_method, policy, method)
                                     for name, method in methods.items()}, obs, repeats)


def _int_arg(method: str) -> int:
    try:
        n = int(method.split(":", 1)[1])
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"method {method!r} needs a positive integer after ':'")
    return n


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for a success rate (sound at 0% and 100% too)."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def expert_success(task: Task, seed: int, episodes: int) -> dict | None:
    """The task's scripted expert on the reset seeds :func:`evaluate` uses (``seed .. seed +
    episodes - 1``): what a policy's success is judged against. None for the arm, whose
    demonstrations are planned paths, not a closed-loop expert."""
    if not isinstance(task, MetaWorldTaskConfig):
        return None
    t0 = time.perf_counter()
    won = expert_outcomes(task, range(seed, seed + episodes))
    return {"success_rate": float(np.mean(won)), "ci95": list(wilson_interval(sum(won), episodes)),
            "seed": seed, "episodes": episodes, "wall_s": round(time.perf_counter() - t0, 1)}


def policy_observation(policy: Policy, env: Env,
                       obs: dict) -> dict[str, np.ndarray]:
    """One time step of what the policy reads: ``state`` = env.state(), else env obs keys."""
    return {k: (env.state() if k == "state" else obs[k]) for k in policy.obs_spec}


#: ``(seed, step, observation, true state)``, called for every observation an episode makes
Observer = Callable[[int, int, dict, np.ndarray], None]


@dataclass
class EpisodeResult:
    seed: int
    success: bool
    collision: bool
    steps: int
    chunks: int
    latency_ms: float  # mean model latency per chunk
    final_error: float


class _Envs:
    """Environments handed on from finished episodes to new ones. Building a Meta-World model
    and its renderer takes ~0.8 s, more than a camera episode's frames; ``reset(seed)`` starts
    a used environment exactly as a new one (``test_a_used_env_restarts_like_a_new_one``)."""

    def __init__(self, task: Task, images: bool):
        self.task, self.images, self.free = task, images, []

    def take(self) -> Env:
        return self.free.pop() if self.free else make_env(self.task, self.images)

    def give(self, env: Env) -> None:
        self.free.append(env)

    def close(self) -> None:
        """Free the rendering contexts (one per environment alive at once)."""
        for env in self.free:
            if hasattr(env, "close"):
                env.close()
        self.free.clear()


class _Episode:
    """One environment with its observation history (padded at the start, as in training).
    A tick stepped with ``observe=False`` leaves a gap in the history: rendering is most of a
    camera episode's cost, and most ticks' frames are never read; a window over a gap raises."""

    def __init__(self, policy: Policy, envs: _Envs, seed: int, observer: Observer | None = None):
        self.policy, self.seed, self.observer, self._envs = policy, seed, observer, envs
        self.env = envs.take()
        first = self._observed(self.env.reset(seed))
        self.history = deque([first] * policy.n_obs_steps, maxlen=policy.n_obs_steps)
        self.info: dict = {"success": False, "collision": False, "effector_error": float("nan")}
        self.chunks, self.latencies, self.done, self.steps = 0, [], False, 0
        self.last_window: dict[str, np.ndarray] | None = None

    def _observed(self, obs: dict) -> dict[str, np.ndarray]:
        if self.observer is not None:
            self.observer(self.seed, self.env.steps, obs, self.env.state())
        return policy_observation(self.policy, self.env, obs)

    def window(self) -> dict[str, np.ndarray]:
        """The policy's input now; a finished episode's is its last one (CUDA keeps finished
        rows in the batch for a constant shape, and their chunks are discarded)."""
        if self.done:
            return self.last_window
        if any(h is None for h in self.history):
            raise RuntimeError(f"episode {self.seed}: the window needs an observation that was "
                               "stepped with observe=False")
        self.last_window = {k: np.stack([h[k] for h in self.history])
                            for k in self.policy.obs_spec}
        return self.last_window

    def act(self, action: np.ndarray, observe: bool = True) -> None:
        observe = observe or self.observer is not None  # an observer sees every observation
        obs, self.done, self.info = self.env.step(action, observe)
        self.history.append(self._observed(obs) if observe else None)
        if self.done:  # a finished episode keeps its result; its simulator goes on to the next
            self.steps = self.env.steps
            self._envs.give(self.env)
            self.env = None

    def hold(self, observe: bool = True) -> None:
        """One tick with no fresh action (the robot keeps its last command)."""
        self.act(self.env.hold_action(), observe)

    def result(self) -> EpisodeResult:
        return EpisodeResult(self.seed, bool(self.info["success"]), bool(self.info["collision"]),
                             self.steps, self.chunks,
                             float(np.mean(self.latencies) * 1e3) if self.latencies else 0.0,
                             float(self.info["effector_error"]))


def _generator(seed: int, round_: int) -> torch.Generator:
    """The noise of one episode's replanning round, whatever else runs beside it."""
    return torch.Generator().manual_seed(seed * 100_003 + round_)


def _batched(policy: Policy, episodes: list[_Episode], progress, late: int = 0) -> None:
    """The episodes as one batch; each chunk's first ``late`` ticks pass with the arm holding
    its previous target (0: lockstep). On CUDA finished episodes stay in the batch (a constant
    shape replays one captured graph); elsewhere they leave it, since a few long failures would
    otherwise cost a full batch every round. A row's noise is its own generator's, so which
    rows share the batch does not change its noise; the batch's size can still move a chunk's
    last float bits (matrix kernels differ by shape), so only the same grouping reproduces an
    episode bit for bit. A chunk ``late`` by all its actions
    changes nothing the arm does, so it is not computed: a model that slow holds the arm from
    start to limit, and finding that out costs no inference. Only the ticks the next window
    reads (a round's last ``n_obs_steps``; none if no chunk is computed) are observed."""
    rounds, constant_shape = 0, policy.device.type == "cuda"
    n = policy.n_action_steps
    first_read = n - policy.n_obs_steps if late < n else n  # ticks from here on are read
    while not all(e.done for e in episodes):
        live = episodes if constant_shape else [e for e in episodes if not e.done]
        if late >= n:
            chunks = [None] * len(live)
        else:
            batch = {k: np.stack([e.window()[k] for e in live]) for k in policy.obs_spec}
            gens = [_generator(e.seed, rounds) for e in live]
            chunks = policy.predict(batch, generator=gens, batched=True)
        rounds += 1
        for e, chunk in zip(live, chunks):
            if e.done:
                continue
            e.chunks += 1
            for k in range(n):
                e.hold(k >= first_read) if k < late else e.act(chunk[k], k >= first_read)
                if e.done:
                    progress(1)
                    break


class _Timeline:
    """What the executor saw in one real-time episode."""

    def __init__(self):
        self.starts: list[int] = []  # tick (observation) of each inference
        self.executed: list[tuple[int, int] | None] = []  # per tick: (chunk number, action)
        self.ticks = self.holds = 0  # control ticks, and those without a fresh action
        self.jumps: list[float] = []  # |first new action - the action it replaced| per seam
        self.changes: list[float] = []  # |a[k+1] - a[k]| inside chunks: the policy's own steps
        self.moves: list[float] = []  # |command - previous command| per tick, as executed


def _live_episode(policy: Policy, e: _Episode, g: torch.Generator, ex: Execution, lag: int,
                  clock: Callable[[], float]) -> _Timeline:
    """One episode on a simulated clock driven by live latency: an inference from the
    observation at tick t measured L seconds, so its chunk takes over at tick t + floor(L / dt)
    + ``lag`` (extra delay, e.g. transport), at its action for that tick. The world does not
    wait: the ticks in between run the chunk in force (or hold). Requests follow the node's
    rule, one :meth:`Replanner.due` per observation frame; one that comes while an inference
    runs waits for it, then starts from the newest observation, as on the node's one thread."""
    dt, n, line = policy.dt, policy.n_action_steps, _Timeline()
    length = ex.chunk_length(policy)
    planner = Replanner(dt)
    # in force: (stamp, actions, number); computing: (stamp, arrival, actions, age, number)
    chunk = flight = None
    again, tick, last = False, 0, e.env.hold_action()

    def start():
        lead = planner.lead(n)
        stamp = tick * dt
        committed = None if chunk is None else chunk[:2]
        t0 = clock()
        actions = policy.predict(e.window(), generator=g, n_actions=length,
                                 **continuation(ex, committed, stamp, dt, lead, policy))
        latency = clock() - t0
        actions = blended(ex, committed, stamp, dt, lead, actions)
        e.chunks += 1
        e.latencies.append(latency)
        line.starts.append(tick)
        return (stamp, tick + int(latency // dt) + lag, actions, latency + lag * dt,
                len(line.starts) - 1)

    while not e.done:
        if planner.due(ex.replan, n, length):
            if flight is None:
                flight = start()
            else:
                again = True
        while flight is not None and flight[1] <= tick:
            stamp, _, actions, age, number = flight
            planner.add_age(age)
            k = tick - round(stamp / dt)
            if chunk is not None and k < len(actions):
                i = tick - round(chunk[0] / dt)
                replaced = chunk[1][i] if i < len(chunk[1]) else e.env.hold_action()
                line.jumps.append(float(np.linalg.norm(actions[k] - replaced)))
            line.changes += np.linalg.norm(np.diff(actions, axis=0), axis=1).tolist()
            chunk, flight = (stamp, actions, number), None
            if again:
                again, flight = False, start()
        k = None if chunk is None else tick - round(chunk[0] / dt)
        line.ticks += 1
        if k is not None and k < len(chunk[1]):
            line.executed.append((chunk[2], k))
            target = chunk[1][k]
        else:
            line.executed.append(None)
            line.holds += 1
            target = e.env.hold_action()
        line.moves.append(float(np.linalg.norm(target - last)))
        last = np.asarray(target)
        e.act(target)
        tick += 1
    return line


def _realtime(policy: Policy, episodes: list[_Episode], progress,
              execution: Execution = AT_END, lag: int = 0,
              clock: Callable[[], float] = time.perf_counter) -> list[_Timeline]:
    lines = []
    for e in episodes:
        g = _generator(e.seed, 0)  # one stream for the episode: its rounds are not aligned
        lines.append(_live_episode(policy, e, g, execution, lag, clock))
        progress(1)
    return lines


def _timeline_report(execution: Execution, lag: int, lines: list[_Timeline]) -> dict:
    """Seam and starvation figures over all episodes (medians and 95th percentiles)."""
    jumps = np.asarray([j for ln in lines for j in ln.jumps])
    changes = np.asarray([c for ln in lines for c in ln.changes])
    moves = np.asarray([m for ln in lines for m in ln.moves])

    def q(values, p):
        return float(np.percentile(values, p)) if len(values) else float("nan")

    return {
        **asdict(execution), "lag_ticks": lag,
        "hold_share": sum(ln.holds for ln in lines) / max(1, sum(ln.ticks for ln in lines)),
        "seam_jump_median": q(jumps, 50), "seam_jump_p95": q(jumps, 95),
        "step_change_median": q(changes, 50), "step_change_p95": q(changes, 95),
        # the command as executed: a seam that moved into the new chunk shows here
        "executed_step_p95": q(moves, 95), "executed_step_max": q(moves, 100),
        "seams": int(len(jumps)),
        # per episode: the tick of each inference, and per tick (chunk number, action) or None
        "starts": [ln.starts for ln in lines], "executed": [ln.executed for ln in lines],
    }


def _batch1_latency(policy: Policy, window: dict, repeats: int = 5) -> float:
    times = []
    for r in range(repeats + 1):
        t0 = time.perf_counter()
        policy.predict(window, seed=r)
        times.append(time.perf_counter() - t0)
    return float(np.median(times[1:]))


def evaluate(
    policy: Policy,
    method: str,
    episodes: int = 200,
    seed: int = 100_000,
    mode: str = "lockstep",
    task: Task | None = None,
    progress: Callable[[int], None] | None = None,
    latency_ms: float | None = None,
    execution: Execution = AT_END,
    lag_ticks: int = 0,
    clock: Callable[[], float] = time.perf_counter,
    observer: Observer | None = None,
) -> dict:
    """Run ``episodes`` episodes with reset seeds ``seed .. seed + episodes - 1``.

    The default seeds lie far above the demonstration seeds (0 .. a few hundred). In realtime
    mode, ``latency_ms`` replaces the live per-chunk measurement by a fixed latency (e.g. the
    median measured side by side with other methods): episodes then run batched, and the
    result no longer depends on how busy the machine is while it runs. With live latency,
    ``execution`` is the node's replanning and seam rule, ``lag_ticks`` an extra delay per
    chunk, ``clock`` what latency is read from (a slowed, simulated one in tests), and the
    report's ``realtime`` entry says what the executor saw. ``observer(seed, step, obs,
    state)`` sees every observation of every episode (reset included) with the true state.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}; got {mode!r}")
    if (execution != AT_END or lag_ticks) and (mode != "realtime" or latency_ms is not None):
        raise ValueError(f"replanning, seams, warm starts and lag ({execution}, lag "
                         f"{lag_ticks}) act in realtime mode with live latency only; expected "
                         "mode realtime without a fixed latency, or the at_end defaults")
    apply_method(policy, method)
    task = task or task_of(policy)
    progress = progress or (lambda n: None)
    t0 = time.perf_counter()
    timeline, envs = None, _Envs(task, policy.reads_images)
    try:
        if mode == "realtime" and latency_ms is None:
            eps, lines = [], []
            for i in range(episodes):  # one at a time: one rendering context alive
                eps.append(_Episode(policy, envs, seed + i, observer))
                lines += _realtime(policy, eps[-1:], progress, execution, lag_ticks, clock)
            timeline = _timeline_report(execution, lag_ticks, lines)
        else:
            late = 0 if mode == "lockstep" else int(latency_ms * 1e-3 // policy.dt)
            # an episode's noise is its own: groups change its chunks by float rounding only
            group, eps = RENDER_GROUP if policy.reads_images else max(episodes, 1), []
            for start in range(0, episodes, group):
                batch = [_Episode(policy, envs, seed + i, observer)
                         for i in range(start, min(start + group, episodes))]
                _batched(policy, batch, progress, late)
                eps += batch
            # the batch hid per-observation latency: time batch 1 separately (or the given one)
            latency = (latency_ms * 1e-3 if latency_ms is not None
                       else _batch1_latency(policy, eps[0].window()))
            for e in eps:
                e.latencies = [latency]
    finally:
        envs.close()
    results = [e.result() for e in eps]
    return {
        "method": method,
        "mode": mode,
        "fixed_latency": latency_ms is not None,
        "seed": seed,
        **summarize(results),
        "schedule_id": policy.schedule_id,
        "flop_ratio": policy.flop_ratio(policy.plan),
        "sampler": policy.sampler,
        "wall_s": round(time.perf_counter() - t0, 1),
        "per_episode": [asdict(r) for r in results],
        **({"realtime": timeline} if timeline is not None else {}),
    }


def summarize(results: list[EpisodeResult]) -> dict:
    """Success, its interval, collisions and mean latency over episodes (also of merged shards)."""
    n, n_success = len(results), sum(r.success for r in results)
    lo, hi = wilson_interval(n_success, n)
    latencies = [r.latency_ms for r in results if r.chunks]
    return {
        "episodes": n,
        "success_rate": n_success / n,
        "ci95": [lo, hi],
        "collision_rate": sum(r.collision for r in results) / n,
        "mean_latency_ms": float(np.mean(latencies)) if latencies else 0.0,
    }
