"""Schedule compilation: a profile of one model and sampler -> ACS -> BUA -> final step -> a
:class:`~bac_ros.cache.schedule.Schedule` file. Takes what it needs as plain arguments, so it
serves any policy without knowing one."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bac_ros.cache.plans import bac_steps, unified_steps
from bac_ros.cache.profile import ProfileResult
from bac_ros.cache.schedule import Schedule, provenance


def compile_schedule(result: ProfileResult, fingerprint: str, sampler: dict, budget: int = 10,
                     top_k: int = 5, metric: str = "cosine", last_step: bool = True,
                     source: str | Path = "", allocation: str = "per_block",
                     block_flops: np.ndarray | None = None) -> Schedule:
    """A schedule for the model ``fingerprint`` sampled with ``sampler`` (``{"type",
    "num_inference_steps"}``, what ``result`` was profiled with). ``allocation``: ``per_block``
    is BAC (ACS with ``budget`` updates per block -> BUA -> final step); ``shared`` spends the
    same total FLOPs across blocks by ACS gain (then BUA, final step; needs ``block_flops``, one
    step's FLOPs per block); ``unified`` is the paper's ablation, one ACS solution for every
    block."""
    sim = result.mean[metric]
    K = int(sampler["num_inference_steps"])
    if sim.shape[-1] != K:
        raise ValueError(
            f"the profile covers {sim.shape[-1]} steps but the policy samples with "
            f"{K}; profile with the sampler to compile for"
        )
    names = [b.name for b in result.blocks]
    selected: list[int] = []
    if allocation == "unified":
        steps, top_k = unified_steps(sim, budget, metric, last_step), 0
        name = f"unified_s{budget}"
    elif allocation in ("per_block", "shared"):
        if allocation == "shared" and block_flops is None:
            raise ValueError("allocation 'shared' needs block_flops (one step's FLOPs per block)")
        steps, selected = bac_steps(sim, result.errors, result.blocks, budget, metric, top_k,
                                    last_step, block_flops if allocation == "shared" else None)
        name = f"{'shared' if allocation == 'shared' else 'bac'}_s{budget}_k{top_k}"
    else:
        raise ValueError(
            f"allocation is {allocation!r}; expected per_block, shared or unified"
        )
    return Schedule(
        fingerprint=fingerprint,
        sampler=dict(sampler),
        steps=dict(zip(names, steps)),
        method={"name": name, "metric": metric, "budget": budget, "top_k": top_k,
                "bua_blocks": [names[i] for i in selected], "force_last_step": last_step,
                "allocation": allocation},
        provenance=provenance(source, result.observations),
    )
