"""`bac tune`: the sampler, step count and cache schedule with the best offline fidelity inside
a latency budget, written as one schedule file the policy node loads unchanged.

Candidates: each sampler of the search space with every block computed, and with BAC schedules
compiled from a profile of that sampler on the given observations. A candidate is inside the
budget when its median batch-1 latency, measured here side by side with full compute, meets
``latency_ms`` (or ``full / speedup``). Inside the budget, the lowest energy distance to full
compute's chunk distribution wins (:mod:`bac_ros.policy.fidelity`); the report lists every
candidate so a user can see what was traded.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from bac_ros.cache.schedule import Schedule, provenance
from bac_ros.policy.fidelity import draw_chunks, fidelity

#: (scheduler type, step counts, BAC budgets compiled on top of it; () = full compute only).
DEFAULT_SPACE: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...] = (
    ("DDPMScheduler", (100,), (5, 7, 10, 15, 20)),
    ("DDPMScheduler", (10, 16, 20, 25, 34, 50), ()),
    ("DDPMScheduler", (50,), (8, 10, 15)),
    ("DDIMScheduler", (5, 8, 10, 16, 25), ()),
    ("DDIMScheduler", (25, 50), (5, 8, 10)),
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


def candidates(policy, observations: Sequence[Mapping[str, np.ndarray]], space=DEFAULT_SPACE,
               log: Callable[[str], None] = print) -> list[Candidate]:
    out, trained = [], (policy.config["noise_scheduler"]["type"],
                        int(policy.config["policy"].get("num_inference_steps", 100)))
    for kind, counts, budgets in space:
        for K in counts:
            policy.set_sampler(kind, K)
            label = f"{kind.removesuffix('Scheduler')}-{K}"
            if (kind, K) != trained and not any(c.name == label for c in out):
                out.append(Candidate(label, every_step_schedule(policy)))
            if budgets:
                t0 = time.perf_counter()
                result = policy.profile(observations, batch_size=16)
                log(f"profiled {label} on {len(observations)} observations "
                    f"({time.perf_counter() - t0:.0f} s)")
                for S in budgets:
                    if S < K:
                        sched = policy.compile_schedule(result, S, 5, source="bac tune")
                        out.append(Candidate(f"{label} + BAC S={S}", sched))
    policy.use_trained_sampler()
    return out


def _median_latency(policy, obs, repeats: int) -> float:
    times = []
    for r in range(repeats + 1):
        t0 = time.perf_counter()
        policy.predict(obs, seed=r)
        times.append(time.perf_counter() - t0)
    return float(np.median(times[1:])) * 1e3


def tune(policy, observations: Sequence[Mapping[str, np.ndarray]],
         latency_ms: float | None = None, speedup: float | None = None, space=DEFAULT_SPACE,
         fidelity_obs: int = 32, n_samples: int = 16, repeats: int = 7,
         log: Callable[[str], None] = print) -> tuple[Candidate, list[Candidate], dict]:
    """Search ``space``; return (winner, every candidate, reference figures)."""
    if (latency_ms is None) == (speedup is None):
        raise ValueError("give exactly one budget: latency_ms or speedup")
    policy.use_trained_sampler()
    probe = observations[0]
    full_ms = _median_latency(policy, probe, repeats)
    budget = latency_ms if latency_ms is not None else full_ms / speedup
    log(f"full compute {full_ms:.1f} ms; budget {budget:.1f} ms")
    fid_obs = list(observations[:fidelity_obs])
    reference = draw_chunks(policy, fid_obs, n_samples, seed=1000)
    floor = fidelity(reference, draw_chunks(policy, fid_obs, n_samples, seed=2000), reference)
    cands = candidates(policy, observations, space, log)
    for c in cands:
        policy.set_schedule(c.schedule)
        c.flop_ratio = policy.flop_ratio(policy.plan)
        if c.flop_ratio * 1.5 < full_ms / budget:  # hopeless even at 150% of the FLOP bound
            continue
        c.latency_ms = _median_latency(policy, probe, repeats)
        c.speedup = full_ms / c.latency_ms
        if c.latency_ms <= budget:
            c.scores = fidelity(reference, draw_chunks(policy, fid_obs, n_samples, seed=2000),
                                draw_chunks(policy, fid_obs, n_samples, seed=1000))
            log(f"{c.name:<24} {c.latency_ms:7.1f} ms {c.speedup:5.2f}x energy "
                f"{c.scores['energy']:.4f} rmse {c.scores['rmse']:.4f}")
    policy.use_trained_sampler()
    inside = [c for c in cands if c.scores]
    if not inside:
        fastest = min((c for c in cands if c.latency_ms == c.latency_ms),
                      key=lambda c: c.latency_ms, default=None)
        raise ValueError(
            f"no candidate meets {budget:.1f} ms here (full compute takes {full_ms:.1f} ms"
            + (f"; the fastest, {fastest.name}, takes {fastest.latency_ms:.1f} ms)" if fastest
               else ")") + "; raise the budget"
        )
    best = min(inside, key=lambda c: (c.scores["energy"], c.latency_ms))
    ref = {"full_ms": full_ms, "budget_ms": budget, "noise_floor": floor,
           "fidelity_obs": len(fid_obs), "samples": n_samples}
    return best, cands, ref


def tuned_schedule(best: Candidate, ref: dict, source: str, observations: int) -> Schedule:
    """The winner as a schedule file, with what it was chosen on."""
    s = best.schedule
    method = dict(s.method)
    method.update({"name": "tuned", "candidate": best.name,
                   "latency_ms": round(best.latency_ms, 2), "budget_ms": round(ref["budget_ms"], 2),
                   "speedup": round(best.speedup, 3), "energy": round(best.scores["energy"], 6),
                   "noise_floor_energy": round(ref["noise_floor"]["energy"], 6)})
    return Schedule(s.fingerprint, s.sampler, s.steps, method, provenance(source, observations))
