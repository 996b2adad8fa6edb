"""Real-time chunk execution: when the next chunk starts, and how it joins the current one.

The executor (a robot's controller, sim_node, the closed-loop evaluation) runs action k of a
chunk stamped s at time s + k*dt. Requesting the next chunk only when the current one's last
action is due (``at_end``) leaves the robot without a fresh action for the whole inference
latency. ``latency_aware`` requests it as many frames earlier as the chunks have recently taken
to arrive (a high quantile of their ages, measured as the policy runs and restarted when the
schedule changes), so that it arrives before the current chunk runs out; LeRobot's asynchronous
inference starts the next chunk early by a chunk-size threshold for the same reason.

The new chunk's first actions overlap actions the robot is committed to. ``inpaint`` guides its
denoising toward them (training-free, as real-time chunking does, arXiv 2506.07339): weight 1
for the actions that run before the new chunk can take over, then a geometric decay over the
rest of the overlap. ``blend`` instead mixes the finished chunk with the old one over the
overlap with the same weights (temporal ensembling), for comparison.

ROS-free: policy_node and :mod:`bac_ros.sim.evaluate` run the same rule.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

REPLAN_MODES = ("at_end", "latency_aware")
SEAMS = ("none", "inpaint", "blend")
LATENCY_WINDOW = 20  # chunks the estimate looks back over: follows a machine getting busier
LATENCY_QUANTILE = 0.9  # of their ages, an observed value (not interpolated): one stall ignored


@dataclass(frozen=True)
class Execution:
    """How chunks are requested and joined (the policy node's live parameters of that name)."""

    replan: str = "latency_aware"
    seam: str = "inpaint"
    seam_weight: float = 0.5  # first uncommitted overlapping action; each later one: times this
    warm_start: float = -1.0  # fraction of the sampler's steps skipped; -1: the schedule's own
    chunk_actions: int = -1  # predicted actions per chunk to run; 0: n_action_steps, -1: all

    def warm_steps(self, num_steps: int) -> int | None:
        """Denoising steps a warm start skips with a sampler of ``num_steps`` (None: as the
        schedule says)."""
        return None if self.warm_start < 0 else int(self.warm_start * num_steps + 1e-9)

    def chunk_length(self, policy) -> int:
        """Actions per chunk for ``policy``; ValueError when it predicts fewer."""
        n = {0: policy.n_action_steps, -1: policy.max_chunk_actions}.get(self.chunk_actions,
                                                                         self.chunk_actions)
        if n > policy.max_chunk_actions:
            raise ValueError(f"chunk_actions is {n}; this policy predicts "
                             f"{policy.max_chunk_actions} actions from the current step on "
                             f"(expected 0 for its n_action_steps, {policy.n_action_steps}, -1 "
                             f"for all of them, or 1 .. {policy.max_chunk_actions})")
        return n


def execution_settings(values: Mapping) -> Execution:
    """``values`` (parameter name -> value) as an :class:`Execution`; ValueError with one
    sentence naming the parameter when a value cannot be used."""
    if values["replan"] not in REPLAN_MODES:
        raise ValueError(f"replan is {values['replan']!r}; expected at_end or latency_aware")
    if values["seam"] not in SEAMS:
        raise ValueError(f"seam is {values['seam']!r}; expected none, inpaint or blend")
    weight = float(values["seam_weight"])
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"seam_weight is {weight}; expected a weight in [0, 1] (1: the whole "
                         "overlap follows the committed actions, 0: only those that will run)")
    warm = float(values["warm_start"])
    if not (warm == -1.0 or 0.0 <= warm < 1.0):
        raise ValueError(f"warm_start is {warm}; expected -1 (as the schedule says) or the "
                         "fraction of denoising steps to skip, 0 <= f < 1")
    chunk = int(values["chunk_actions"])
    if chunk < -1:
        raise ValueError(f"chunk_actions is {chunk}; expected 0 (the policy's n_action_steps), "
                         "-1 (every action it predicts) or the number of actions per chunk")
    return Execution(values["replan"], values["seam"], weight, warm, chunk)


class Replanner:
    """Frame-driven chunk requests: :meth:`due` once per new observation frame says whether to
    request a chunk now. ``at_end`` every ``replan_steps`` frames; ``latency_aware`` every
    ``replan_steps - lead`` frames, where ``lead`` = ceil(estimated chunk age / dt) is how many
    frames a chunk needs to arrive (a request while one is running waits for it, as ever).

    One model computes one chunk at a time, so the next request can only start when the
    previous chunk is done: chunks of ``chunk_steps`` actions chain without a gap only while
    ``2 * lead <= chunk_steps``; past ``replan_steps - lead`` frames they then run back to
    back (every ``lead`` frames). Beyond that (and before anything is measured)
    ``latency_aware`` requests like ``at_end``: an earlier request would still arrive after the
    current chunk's end, from an observation taken while the robot moved, and add a seam no
    committed action covers (measured: far larger jumps and lower success than holding,
    bench/realtime.py). Chunks longer than ``replan_steps`` (the policy's predicted actions
    past n_action_steps, ``chunk_actions``) are what lets a slow model chain."""

    def __init__(self, dt: float):
        self.dt = float(dt)
        self.ages: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self.frames_since: int | None = None  # None: the next frame is due

    def restart(self) -> None:
        """The next frame gets a chunk at once (start, clock jump)."""
        self.frames_since = None

    def add_age(self, seconds: float) -> None:
        """A chunk finished ``seconds`` after its observation's stamp (published or not; an
        observation stamped a little ahead of this clock counts as 0)."""
        self.ages.append(max(0.0, float(seconds)))

    def reset_latency(self) -> None:
        """Forget the estimate (a new schedule runs at another speed; a new clock)."""
        self.ages.clear()

    def latency(self) -> float | None:
        if not self.ages:
            return None
        return float(np.quantile(np.asarray(self.ages), LATENCY_QUANTILE, method="higher"))

    def lead(self, replan_steps: int) -> int:
        """Frames a chunk needs from its observation to the executor (nothing measured yet:
        ``replan_steps``, so a seam treats the whole overlap as certain to run)."""
        latency = self.latency()
        return replan_steps if latency is None else math.ceil(latency / self.dt - 1e-9)

    def interval(self, replan: str, replan_steps: int, chunk_steps: int | None = None) -> int:
        lead = self.lead(replan_steps)
        if replan == "at_end" or self.latency() is None or \
                2 * lead > max(replan_steps, chunk_steps or 0):
            return replan_steps
        # never later than at_end: a request while a chunk runs waits for it anyway
        return max(1, min(replan_steps, max(lead, replan_steps - lead)))

    def due(self, replan: str, replan_steps: int, chunk_steps: int | None = None) -> bool:
        """Count one new frame; True when a chunk should be requested now (``chunk_steps``:
        actions per chunk, default ``replan_steps``)."""
        self.frames_since = None if self.frames_since is None else self.frames_since + 1
        if self.frames_since is None or \
                self.frames_since >= self.interval(replan, replan_steps, chunk_steps):
            self.frames_since = 0
            return True
        return False


def seam_weights(n: int, offset: int, certain: int, weight: float) -> np.ndarray:
    """Per committed action i (the new chunk's action ``j = i - offset``): 1 where j < certain
    (it runs before the new chunk can take over, or already ran), ``weight ** (j - certain +
    1)`` after, over the rest of the overlap."""
    j = np.arange(n) - offset
    return np.where(j < certain, 1.0, float(weight) ** np.maximum(j - certain + 1, 0)).astype(
        np.float32)


def offset_of(committed_stamp: float, stamp: float, dt: float) -> int:
    """Control steps from the committed chunk's stamp to a new observation's."""
    return int(round((stamp - committed_stamp) / dt))


def continuation(execution: Execution, committed: tuple[float, np.ndarray] | None,
                 stamp: float, dt: float, certain: int, policy) -> dict:
    """``policy.predict`` keyword arguments joining the chunk of the observation at ``stamp``
    to ``committed`` (stamp, actions), the chunk being executed, by inpainting and/or a warm
    start; {} when neither applies. ``certain``: the new chunk's first actions that will run
    from the committed chunk anyway (the replanner's lead)."""
    warm = execution.warm_steps(policy.num_inference_steps)
    warming = policy.warm_start if warm is None else warm
    if committed is None or (execution.seam != "inpaint" and not warming):
        return {}
    c_stamp, actions = committed
    offset = offset_of(c_stamp, stamp, dt)
    if offset < 0:
        return {}
    weights = (seam_weights(len(actions), offset, certain, execution.seam_weight)
               if execution.seam == "inpaint" else np.zeros(len(actions), np.float32))
    return {"committed": actions, "committed_offset": offset, "committed_weights": weights,
            "warm_start": warm}


def blended(execution: Execution, committed: tuple[float, np.ndarray] | None, stamp: float,
            dt: float, certain: int, actions: np.ndarray) -> np.ndarray:
    """The new chunk of the observation at ``stamp`` as it is published: under ``blend`` mixed
    into the overlap with ``committed`` (stamp, actions); as it is otherwise."""
    offset = -1 if committed is None else offset_of(committed[0], stamp, dt)
    if execution.seam != "blend" or offset < 0:
        return actions
    n = len(committed[1])
    return blend(actions, committed[1], offset,
                 seam_weights(n, offset, certain, execution.seam_weight))


def blend(actions: np.ndarray, committed: np.ndarray, offset: int,
          weights: np.ndarray) -> np.ndarray:
    """The new chunk with its overlap mixed into the committed actions: new action j becomes
    ``(1 - w) new[j] + w committed[j + offset]`` with ``w = weights[j + offset]`` (exact at 0
    and 1)."""
    out = np.array(actions, dtype=np.float32)
    i = np.arange(len(out)) + offset
    inside = i < len(committed)
    w = np.asarray(weights, np.float32)[i[inside], None]
    out[inside] = (1 - w) * out[inside] + w * np.asarray(committed, np.float32)[i[inside]]
    return out
