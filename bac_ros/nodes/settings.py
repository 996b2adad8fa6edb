"""The policy node's live settings: one validation for configure and for run-time changes.

Limits, limit mode, ages, seed, rate, replanning, chunk length and seams are what an operator
changes on a running robot. :func:`live_settings` checks a whole set of parameter values
against the loaded policy and returns one immutable :class:`LiveSettings`; configure and the
parameter callback both call it, so a value refused at one is refused at the other with the
same sentence. The node swaps the object whole, and the inference thread reads it once per
use: a limit and its mode always come from the same change. ROS-free, so the rules are plain
functions.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from bac_ros.policy.realtime import Execution, execution_settings

LIMIT_MODES = ("clip", "refuse")


@dataclass(frozen=True)
class LiveSettings:
    low: np.ndarray            # float32, the type published: a checked value stays inside once sent
    high: np.ndarray
    limit_mode: str
    max_obs_age: float
    max_chunk_age: float       # resolved: 0 in the parameter means 2 x max_obs_age
    seed: int | None           # None: fresh noise every chunk
    rate_hz: float
    replan_steps: int          # resolved: 0 in the parameter means the policy's n_action_steps
    publish_trajectory: bool
    execution: Execution       # replan, seam, seam_weight, warm_start, chunk_actions
    chunk_actions: int         # resolved: 0 in the parameter means the policy's n_action_steps


def _limits(name: str, values, dim: int) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if values.size == 1:
        return np.full(dim, values.item())
    if values.size != dim:
        raise ValueError(f"{name} lists {values.size} values; expected 1 or {dim} "
                         "(one per action dimension)")
    return values


def _seconds(name: str, value, allow_zero: bool) -> float:
    value = float(value)
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        expected = "0 or a positive" if allow_zero else "a positive"
        raise ValueError(f"{name} is {value}; expected {expected} number of seconds")
    return value


def live_settings(values: Mapping, policy) -> LiveSettings:
    """The settings ``values`` (parameter name -> value) give for ``policy``; ValueError with
    one sentence naming the parameter when a value cannot be used."""
    low = _limits("action_low", values["action_low"], policy.action_dim)
    high = _limits("action_high", values["action_high"], policy.action_dim)
    if np.isnan(low).any() or np.isnan(high).any() or (low > high).any():
        raise ValueError(f"action limits {low.tolist()} .. {high.tolist()} are not ordered "
                         "numbers; expected action_low <= action_high")
    if values["limit_mode"] not in LIMIT_MODES:
        raise ValueError(f"limit_mode is {values['limit_mode']!r}; expected clip or refuse")
    max_obs_age = _seconds("max_obs_age", values["max_obs_age"], allow_zero=False)
    max_chunk_age = _seconds("max_chunk_age", values["max_chunk_age"], allow_zero=True)
    seed = int(values["seed"])
    if seed < -1:
        raise ValueError(f"seed is {seed}; expected -1 (fresh noise every chunk) or a "
                         "non-negative integer")
    rate_hz = float(values["rate_hz"])
    if not math.isfinite(rate_hz) or rate_hz < 0:
        raise ValueError(f"rate_hz is {rate_hz}; expected 0 (replan by frames) or a positive "
                         "rate")
    replan_steps = int(values["replan_steps"])
    if replan_steps < 0:
        raise ValueError(f"replan_steps is {replan_steps}; expected 0 (the policy's "
                         f"n_action_steps, {policy.n_action_steps}) or a positive frame count")
    if values["instruction"] and not policy.accepts_instruction:
        raise ValueError(f"instruction is {values['instruction']!r}, but this "
                         f"{policy.config['policy']['kind']} policy takes no instruction; "
                         "expected '' (only VLA policies read one)")
    if values["publish_trajectory"] and policy.action_type != "joint_position":
        raise ValueError(f"publish_trajectory is true, but this policy's actions are "
                         f"{policy.action_type} ({', '.join(policy.action_names)}), not joint "
                         "positions; expected false (feed action_chunk to a Cartesian "
                         "controller instead)")
    execution = execution_settings(values)
    chunk_actions = execution.chunk_length(policy)
    low32, high32 = low.astype(np.float32), high.astype(np.float32)
    low32.flags.writeable = high32.flags.writeable = False
    return LiveSettings(
        low=low32, high=high32, limit_mode=values["limit_mode"], max_obs_age=max_obs_age,
        max_chunk_age=max_chunk_age or 2.0 * max_obs_age, seed=None if seed < 0 else seed,
        rate_hz=rate_hz, replan_steps=replan_steps or policy.n_action_steps,
        publish_trajectory=bool(values["publish_trajectory"]), execution=execution,
        chunk_actions=chunk_actions)


def dormant(values: Mapping, changed) -> list[str]:
    """One sentence per parameter in ``changed`` that the mode in ``values`` leaves without
    effect: it is stored and applies once the mode does (set it ahead, then switch), and the
    operator is told so rather than left to think it acted."""
    notes = []
    rate_hz = float(values["rate_hz"])
    for name in ("replan", "replan_steps"):
        if name in changed and rate_hz > 0:
            notes.append(f"{name} is stored, but chunks are paced by frames only with rate_hz 0 "
                         f"(rate_hz is {rate_hz:g})")
    if "seam_weight" in changed and values["seam"] == "none":
        notes.append("seam_weight is stored, but weighs nothing while seam is none (it applies "
                     "with inpaint or blend)")
    return notes
