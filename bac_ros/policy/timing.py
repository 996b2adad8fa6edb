"""Latency measured side by side: every configuration runs once per round, in turn, so that a
busy machine slows all of them alike and their ratios stay meaningful."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import torch


def time_interleaved(policy, setups: Mapping[str, Callable[[], None]], obs, repeats: int,
                     warmup: int = 2) -> dict[str, list[float]]:
    """Seconds of batch-1 ``policy.predict(obs)`` per configuration (``setups[name]()`` puts
    the policy into it), ``repeats`` rounds after ``warmup`` rounds (CUDA graph capture)."""
    sync = torch.cuda.synchronize if policy.device.type == "cuda" else (lambda: None)
    times: dict[str, list[float]] = {name: [] for name in setups}
    for r in range(warmup + repeats):
        for name, setup in setups.items():
            setup()
            sync()
            t0 = time.perf_counter()
            policy.predict(obs, seed=r)
            sync()
            if r >= warmup:
                times[name].append(time.perf_counter() - t0)
    return times
