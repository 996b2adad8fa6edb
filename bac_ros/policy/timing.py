"""Latency measured side by side: every configuration runs once per round, in turn, so that a
busy machine slows all of them alike and their ratios stay meaningful. Also a reproducible CPU
load to measure under, and the label that says what a figure was measured on."""

from __future__ import annotations

import multiprocessing
import os
import platform
import time
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from functools import partial

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


def time_plans(policy, plans: Mapping[str, object], obs, repeats: int) -> dict[str, list[float]]:
    """:func:`time_interleaved` over block plans of the current sampler (``{label: plan}``,
    None: full compute); the policy is left on full compute."""
    times = time_interleaved(policy, {name: partial(policy.use_plan, plan, name)
                                      for name, plan in plans.items()}, obs, repeats)
    policy.use_plan(None)
    return times


def device_label(device: torch.device) -> str:
    """The machine a figure was measured on, as reports print it: the CUDA card's name, or the
    CPU's architecture, cores and the threads torch uses."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def _busy(stop) -> None:
    while not stop.is_set():
        for _ in range(100_000):
            pass


@contextmanager
def cpu_load(processes: int):
    """``processes`` extra processes, each keeping one CPU core busy with a pure-Python loop at
    normal priority, for the duration of the ``with`` block: a reproducible stand-in for the
    training job or perception stack a robot's computer also runs (forked, so they start in
    milliseconds and import nothing)."""
    ctx = multiprocessing.get_context("fork")
    stop = ctx.Event()
    procs = [ctx.Process(target=_busy, args=(stop,), daemon=True) for _ in range(processes)]
    for p in procs:
        p.start()
    try:
        yield procs
    finally:
        stop.set()
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.terminate()
