"""`bac tune`: the sampler, step count and cache schedule with the best offline fidelity inside
a latency budget, written as one schedule file the policy node loads unchanged.

Candidates: each sampler of the search space with every block computed, and with BAC schedules
compiled from a profile of that sampler on the given observations. A candidate is inside the
budget when its median batch-1 latency, measured here side by side with full compute, meets
``latency_ms`` (or ``full / speedup``). Inside the budget, the lowest energy distance to full
compute's chunk distribution wins (:mod:`bac_ros.policy.fidelity`); candidates whose energy is
statistically tied with the lowest (within two standard errors of the difference) count as
equally faithful, and the fastest of them is chosen. The report lists every candidate so a user
can see what was traded.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bac_ros.cache.profile import ProfileResult
from bac_ros.cache.schedule import Schedule, provenance
from bac_ros.policy.fidelity import (
    CANDIDATE_SEED,
    REFERENCE_SEED,
    SEARCH_SEED,
    draw_chunks,
    fidelity,
)
from bac_ros.policy.timing import time_interleaved

#: (scheduler type, step counts, budgets of the schedules compiled on top of it (() = full
#: compute only), schedule allocations: ``per_block`` BAC and/or ``shared`` FLOP budget).
DEFAULT_SPACE: tuple[tuple[str, tuple[int, ...], tuple[int, ...], tuple[str, ...]], ...] = (
    ("DDPMScheduler", (100,), (5, 7, 10, 15, 20), ("per_block", "shared")),
    ("DDPMScheduler", (10, 16, 20, 25, 34, 50), (), ()),
    ("DDPMScheduler", (50,), (8, 10, 15), ("per_block", "shared")),
    ("DDIMScheduler", (5, 8, 10, 16, 25), (), ()),
    ("DDIMScheduler", (25, 50), (5, 8, 10), ("per_block",)),
)


@dataclass
class Candidate:
    name: str
    schedule: Schedule
    latency_ms: float = float("nan")
    speedup: float = float("nan")
    flop_ratio: float = float("nan")
    scores: dict = field(default_factory=dict)

    def row(self) -> dict:
        return {"name": self.name, "sampler": self.schedule.sampler,
                "update_ratio": round(self.schedule.update_ratio(), 4),
                "latency_ms": self.latency_ms, "speedup": self.speedup,
                "flop_ratio": self.flop_ratio, **self.scores}


def every_step_schedule(policy, source: str = "") -> Schedule:
    """Full compute with the policy's current sampler, as a schedule file (so a plain few-step
    sampler is a configuration the node loads like any other)."""
    K = policy.num_inference_steps
    return Schedule(policy.fingerprint, policy.sampler,
                    {b.name: list(range(K)) for b in policy.engine.blocks},
                    method={"name": "full"}, provenance=provenance(source, 0))


@dataclass
class Compiled:
    """Schedules compiled from one profile of a sampler, and what making them cost (s)."""

    profile: ProfileResult
    schedules: list[Schedule]
    profile_s: float
    compile_s: float


def profile_and_compile(policy, observations: Sequence[Mapping[str, np.ndarray]],
                        variants: Sequence[tuple[int, int, str]], source: str | Path = "",
                        batch_size: int = 16) -> Compiled:
    """Profile the policy's current sampler once on ``observations``, then compile one
    schedule per (budget S, BUA blocks k, allocation) of ``variants``, in their order."""
    t0 = time.perf_counter()
    result = policy.profile(observations, batch_size=batch_size)
    t1 = time.perf_counter()
    schedules = [policy.compile_schedule(result, S, k, source=source, allocation=alloc)
                 for S, k, alloc in variants]
    return Compiled(result, schedules, t1 - t0, time.perf_counter() - t1)


def candidates(policy, observations: Sequence[Mapping[str, np.ndarray]], space=DEFAULT_SPACE,
               log: Callable[[str], None] = print) -> list[Candidate]:
    out, trained = [], (policy.config["noise_scheduler"]["type"], policy.trained_steps)
    for kind, counts, budgets, allocations in space:
        for K in counts:
            policy.set_sampler(kind, K)
            label = f"{kind.removesuffix('Scheduler')}-{K}"
            if (kind, K) != trained and not any(c.name == label for c in out):
                out.append(Candidate(label, every_step_schedule(policy)))
            if budgets:
                variants = [(S, 5, alloc) for S in budgets if S < K for alloc in allocations]
                made = profile_and_compile(policy, observations, variants, "bac tune")
                log(f"profiled {label} on {len(observations)} observations "
                    f"({made.profile_s:.0f} s)")
                for (S, _, alloc), sched in zip(variants, made.schedules):
                    what = "BAC" if alloc == "per_block" else alloc
                    out.append(Candidate(f"{label} + {what} S={S}", sched))
    policy.use_trained_sampler()
    return out


def _latencies(policy, schedules: Sequence[Schedule | None], obs, repeats: int) -> list[float]:
    """Median batch-1 latency (ms) of each schedule (None: full compute), timed interleaved."""

    def setup(sched):
        def apply():
            policy.use_trained_sampler()
            policy.set_schedule(sched)
        return apply

    times = time_interleaved(policy, {i: setup(s) for i, s in enumerate(schedules)}, obs,
                             repeats, warmup=1)
    policy.use_trained_sampler()
    return [float(np.median(times[i])) * 1e3 for i in range(len(schedules))]


def refine(policy, schedule: Schedule, observations: Sequence[Mapping[str, np.ndarray]],
           reference: np.ndarray, n_samples: int, evaluations: int = 40, seed: int = 0,
           log: Callable[[str], None] = print) -> Schedule:
    """Output-aware schedule search: from ``schedule`` (e.g. BAC's ACS solution), propose one
    change at a time (shift one update of a block a step or two, or hand it to a block that costs
    no more FLOPs) and keep it when the energy distance to ``reference`` drops. Step 0 and the
    FLOP total never grow worse; every plan is scored on the same noise (common random numbers),
    a seed the caller's final scoring does not use."""
    rng = np.random.default_rng(seed)
    policy.set_schedule(schedule)
    block_flops = dict(zip((b.name for b in policy.engine.blocks), policy.flops()[0]))
    names, K = list(schedule.steps), schedule.num_steps

    def score(steps: dict) -> float:
        policy.set_schedule(Schedule(schedule.fingerprint, schedule.sampler, steps))
        chunks = draw_chunks(policy, observations, n_samples, seed=SEARCH_SEED)
        return fidelity(reference, chunks)["energy"]

    steps = {n: list(v) for n, v in schedule.steps.items()}
    best = start = score(steps)
    for _ in range(evaluations):
        trial = {n: list(v) for n, v in steps.items()}
        b = names[rng.integers(len(names))]
        movable = [t for t in trial[b] if t > 0]
        if not movable:
            continue
        t = movable[rng.integers(len(movable))]
        if rng.random() < 0.5:
            new = t + int(rng.choice([-2, -1, 1, 2]))
            if not 0 < new < K or new in trial[b]:
                continue
            trial[b] = sorted(set(trial[b]) - {t} | {new})
        else:
            c = names[rng.integers(len(names))]
            free = [u for u in range(1, K) if u not in trial[c]]
            if c == b or not free or block_flops[c] > block_flops[b]:
                continue
            trial[b].remove(t)
            trial[c] = sorted(trial[c] + [free[rng.integers(len(free))]])
        energy = score(trial)
        if energy < best:
            steps, best = trial, energy
    log(f"refined {schedule.method.get('name', 'schedule')}: energy {start:.4f} -> {best:.4f} "
        f"on the search noise ({evaluations} proposals)")
    method = {**schedule.method, "name": f"{schedule.method.get('name', 'plan')}_refined",
              "refined": {"proposals": evaluations, "seed": seed, "search_energy": best,
                          "start_energy": start}}
    return Schedule(schedule.fingerprint, schedule.sampler, steps, method, schedule.provenance)


def tune(policy, observations: Sequence[Mapping[str, np.ndarray]],
         latency_ms: float | None = None, speedup: float | None = None, space=DEFAULT_SPACE,
         fidelity_obs: int = 16, n_samples: int = 16, repeats: int = 7, refinements: int = 0,
         log: Callable[[str], None] = print) -> tuple[Candidate, list[Candidate], dict]:
    """Search ``space``; return (winner, every candidate, reference figures). With
    ``refinements``, the most faithful cached candidate inside the budget is also refined by
    :func:`refine` with that many proposals and competes as one more candidate."""
    if (latency_ms is None) == (speedup is None):
        raise ValueError("give exactly one budget: latency_ms or speedup")
    policy.use_trained_sampler()
    probe = observations[0]
    full_ms = _latencies(policy, [None], probe, repeats)[0]
    log(f"full compute {full_ms:.1f} ms")
    fid_obs = list(observations[:fidelity_obs])
    reference = draw_chunks(policy, fid_obs, n_samples, seed=REFERENCE_SEED)
    floor = fidelity(reference, draw_chunks(policy, fid_obs, n_samples, seed=CANDIDATE_SEED))
    cands = candidates(policy, observations, space, log)

    def measure(c: Candidate) -> None:
        policy.set_schedule(c.schedule)  # switches to the candidate's sampler
        c.flop_ratio = policy.flop_ratio(policy.plan)
        if speedup is not None and c.flop_ratio * 1.5 < speedup:  # hopeless, even at 150% of
            return  # the FLOP bound
        full, c.latency_ms = _latencies(policy, [None, c.schedule], probe, repeats)
        c.speedup = full / c.latency_ms
        if (c.latency_ms <= latency_ms) if latency_ms is not None else (c.speedup >= speedup):
            policy.set_schedule(c.schedule)
            c.scores = fidelity(reference, draw_chunks(policy, fid_obs, n_samples,
                                                       seed=CANDIDATE_SEED))
            log(f"{c.name:<24} {c.latency_ms:7.1f} ms {c.speedup:5.2f}x energy "
                f"{c.scores['energy']:.4f} ± {c.scores['energy_sem']:.4f}")

    for c in cands:
        measure(c)
    cached = [c for c in cands if c.scores and c.schedule.update_ratio() < 1]
    if refinements and cached:
        start = min(cached, key=lambda c: c.scores["energy"])
        found = refine(policy, start.schedule, fid_obs, reference, n_samples, refinements,
                       log=log)
        cands.append(Candidate(f"{start.name} + search", found))
        measure(cands[-1])
    policy.use_trained_sampler()
    inside = [c for c in cands if c.scores]
    if not inside:
        fastest = min((c for c in cands if c.latency_ms == c.latency_ms),
                      key=lambda c: c.latency_ms, default=None)
        want = f"{latency_ms:.1f} ms" if latency_ms is not None else f"{speedup:g}x speedup"
        raise ValueError(
            f"no candidate meets {want} here (full compute takes {full_ms:.1f} ms"
            + (f"; the fastest, {fastest.name}, takes {fastest.latency_ms:.1f} ms)" if fastest
               else ")") + "; loosen the budget"
        )
    lowest = min(inside, key=lambda c: c.scores["energy"])
    tied = [c for c in inside if c.scores["energy"] - lowest.scores["energy"]
            <= 2 * np.hypot(c.scores["energy_sem"], lowest.scores["energy_sem"])]
    best = min(tied, key=lambda c: c.latency_ms)
    ref = {"full_ms": full_ms, "latency_ms": latency_ms, "speedup": speedup, "noise_floor": floor,
           "fidelity_obs": len(fid_obs), "samples": n_samples}
    return best, cands, ref


def tuned_schedule(best: Candidate, ref: dict, source: str | Path,
                   observations: int) -> Schedule:
    """The winner as a schedule file, with what it was chosen on (``source`` as in
    :func:`bac_ros.cache.schedule.provenance`)."""
    s = best.schedule
    method = dict(s.method)
    method.update({"name": "tuned", "candidate": best.name,
                   "latency_ms": round(best.latency_ms, 2), "speedup": round(best.speedup, 3),
                   "budget": ({"latency_ms": ref["latency_ms"]} if ref["latency_ms"] is not None
                              else {"speedup": ref["speedup"]}),
                   "energy": round(best.scores["energy"], 6),
                   "noise_floor_energy": round(ref["noise_floor"]["energy"], 6)})
    return Schedule(s.fingerprint, s.sampler, s.steps, method, provenance(source, observations))
