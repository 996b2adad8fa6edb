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
  took L seconds arrives ``floor(L / dt)`` ticks late, the arm holds its last target meanwhile,
  and the actions whose time has passed are skipped. Latency is measured on this machine.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch

from bac_ros.policy.policy import Policy
from bac_ros.sim.tasks import Env, Task, make_env, task_of

MODES = ("lockstep", "realtime")


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


def policy_observation(policy: Policy, env: Env,
                       obs: dict) -> dict[str, np.ndarray]:
    """One time step of what the policy reads: ``state`` = env.state(), else env obs keys."""
    return {k: (env.state() if k == "state" else obs[k]) for k in policy.obs_spec}


@dataclass
class EpisodeResult:
    seed: int
    success: bool
    collision: bool
    steps: int
    chunks: int
    latency_ms: float  # mean model latency per chunk
    final_error: float


class _Episode:
    """One environment with its observation history (padded at the start, as in training)."""

    def __init__(self, policy: Policy, task: Task, seed: int, images: bool):
        self.policy, self.seed = policy, seed
        self.env = make_env(task, images)
        first = policy_observation(policy, self.env, self.env.reset(seed))
        self.history = deque([first] * policy.n_obs_steps, maxlen=policy.n_obs_steps)
        self.info: dict = {"success": False, "collision": False, "effector_error": float("nan")}
        self.chunks, self.latencies, self.done = 0, [], False

    def window(self) -> dict[str, np.ndarray]:
        return {k: np.stack([h[k] for h in self.history]) for k in self.policy.obs_spec}

    def act(self, action: np.ndarray) -> None:
        obs, self.done, self.info = self.env.step(action)
        self.history.append(policy_observation(self.policy, self.env, obs))
        if self.done and hasattr(self.env, "close"):
            self.env.close()  # a rendering context per finished episode would pile up

    def hold(self) -> None:
        """One tick with no fresh action (the robot keeps its last command)."""
        self.act(self.env.hold_action())

    def result(self) -> EpisodeResult:
        return EpisodeResult(self.seed, bool(self.info["success"]), bool(self.info["collision"]),
                             self.env.steps, self.chunks,
                             float(np.mean(self.latencies) * 1e3) if self.latencies else 0.0,
                             float(self.info["effector_error"]))


def _generator(seed: int, round_: int) -> torch.Generator:
    """The noise of one episode's replanning round, whatever else runs beside it."""
    return torch.Generator().manual_seed(seed * 100_003 + round_)


def _batched(policy: Policy, episodes: list[_Episode], progress, late: int = 0) -> None:
    """All episodes as one batch (finished ones too: a constant shape, one CUDA graph); each
    chunk's first ``late`` ticks pass with the arm holding its previous target (0: lockstep)."""
    rounds = 0
    while not all(e.done for e in episodes):
        batch = {k: np.stack([e.window()[k] for e in episodes]) for k in policy.obs_spec}
        gens = [_generator(e.seed, rounds) for e in episodes]
        chunks = policy.predict(batch, generator=gens, batched=True)
        rounds += 1
        for e, chunk in zip(episodes, chunks):
            if e.done:
                continue
            e.chunks += 1
            for k in range(len(chunk)):
                e.hold() if k < late else e.act(chunk[k])
                if e.done:
                    progress(1)
                    break


def _realtime(policy: Policy, episodes: list[_Episode], progress) -> None:
    dt = policy.dt
    for e in episodes:
        g = _generator(e.seed, 0)  # one stream for the episode: its rounds are not aligned
        while not e.done:
            t0 = time.perf_counter()
            chunk = policy.predict(e.window(), generator=g)
            latency = time.perf_counter() - t0
            e.chunks += 1
            e.latencies.append(latency)
            late = int(latency // dt)
            for _ in range(min(late, len(chunk))):  # the world moves on while the model runs
                e.hold()
                if e.done:
                    break
            for a in chunk[late:]:
                if e.done:
                    break
                e.act(a)
        progress(1)


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
) -> dict:
    """Run ``episodes`` episodes with reset seeds ``seed .. seed + episodes - 1``.

    The default seeds lie far above the demonstration seeds (0 .. a few hundred). In realtime
    mode, ``latency_ms`` replaces the live per-chunk measurement by a fixed latency (e.g. the
    median measured side by side with other methods): episodes then run batched, and the
    result no longer depends on how busy the machine is while it runs.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}; got {mode!r}")
    apply_method(policy, method)
    task = task or task_of(policy)
    eps = [_Episode(policy, task, seed + i, policy.reads_images) for i in range(episodes)]
    progress = progress or (lambda n: None)
    t0 = time.perf_counter()
    if mode == "realtime" and latency_ms is None:
        _realtime(policy, eps, progress)
    else:
        late = 0 if mode == "lockstep" else int(latency_ms * 1e-3 // policy.dt)
        _batched(policy, eps, progress, late)
        # the batch hid per-observation latency: time batch 1 separately (or take the given one)
        latency = (latency_ms * 1e-3 if latency_ms is not None
                   else _batch1_latency(policy, eps[0].window()))
        for e in eps:
            e.latencies = [latency]
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
