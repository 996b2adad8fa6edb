"""Speed of BAC against full compute and uniform caching, measured side by side in one run.

    python bench/cache_speed.py [--checkpoint DIR] [--device auto|cpu|cuda] [--repeats 15]

Without --checkpoint it uses the bundled low-dim checkpoint when present, else the paper's DP-T
configuration with random weights (8 layers, 4 heads, n_emb 256, horizon 16, 2 observation
steps, DDPM 100 steps). Batch 1, as on a robot. Methods are timed interleaved (one round runs
each once) so that machine noise hits all of them alike; the table reports medians and p95.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from bac_ros.cache.plans import uniform_plan
from bac_ros.models.normalizer import LinearNormalizer
from bac_ros.policy.build import new_checkpoint
from bac_ros.policy.observations import load_observations, random_observations
from bac_ros.policy.policy import Policy
from bac_ros.policy.timing import device_label, time_plans

BUNDLED = Path(__file__).resolve().parents[1] / "checkpoints" / "arm_lowdim"


def random_paper_policy(device: str) -> Policy:
    norm = LinearNormalizer()
    g = torch.Generator().manual_seed(0)
    norm.fit_limits("state", torch.randn(256, 7, generator=g))
    norm.fit_limits("action", torch.randn(256, 3, generator=g))
    return Policy(new_checkpoint({"state": {"shape": [7], "type": "low_dim"}}, 3, norm), device)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, help="policy checkpoint (default: bundled/random)")
    ap.add_argument("--random", action="store_true",
                    help="the paper's DP-T configuration with random weights")
    ap.add_argument("--observations", type=Path, help="npz of profiling observations (N, To, ...)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--profile-obs", type=int, default=16)
    ap.add_argument("--budget", type=int, default=10)
    ap.add_argument("--top-k", type=int, default=5)
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)

    ckpt = None if args.random else args.checkpoint or (BUNDLED if BUNDLED.is_dir() else None)
    policy = (Policy.from_pretrained(ckpt, device=args.device) if ckpt
              else random_paper_policy(args.device))
    source = str(ckpt) if ckpt else "paper DP-T configuration, random weights"
    obs = (load_observations(args.observations) if args.observations
           else random_observations(policy, args.profile_obs, seed=0))
    t0 = time.perf_counter()
    result = policy.profile(obs, batch_size=8)
    schedule = policy.compile_schedule(result, budget=args.budget, top_k=args.top_k)
    compile_s = time.perf_counter() - t0
    K, n_blocks = policy.num_inference_steps, len(policy.engine.blocks)
    bac_plan = schedule.plan(policy.engine.blocks)
    every = max(1, round(K / (bac_plan.sum() / n_blocks)))  # same updates per block on average
    bac_name = f"BAC S={args.budget} k={args.top_k}"
    plans = {"full": None, f"uniform:{every}": uniform_plan(K, n_blocks, every), bac_name: bac_plan}
    times = time_plans(policy, plans, obs[0], args.repeats)

    full_med = float(np.median(times["full"]))
    device = device_label(policy.device)
    print(f"model: {source}; K={K}, {n_blocks} blocks; device: {device}; batch 1; "
          f"{args.repeats} interleaved repeats; profiling+compile {compile_s:.1f} s "
          f"on {len(obs)} observations")
    header = (f"{'method':<16} {'updates':>8} {'median ms':>10} {'p95 ms':>8} {'speedup':>8} "
              f"{'FLOP ratio':>10} {'achieved/theory':>16}")
    print(header)
    print("-" * len(header))
    rows = []
    for name, plan in plans.items():
        med = float(np.median(times[name]))
        p95 = float(np.percentile(times[name], 95))
        ratio = policy.flop_ratio(plan)
        updates = 1.0 if plan is None else float(plan.mean())
        row = dict(method=name, update_fraction=updates, median_ms=med * 1e3, p95_ms=p95 * 1e3,
                   speedup=full_med / med, flop_ratio=ratio,
                   achieved_over_theoretical=full_med / med / ratio)
        rows.append(row)
        print(f"{name:<16} {updates:>8.3f} {med * 1e3:>10.1f} {p95 * 1e3:>8.1f} "
              f"{row['speedup']:>7.2f}x {ratio:>9.2f}x {row['achieved_over_theoretical']:>15.0%}")
    if args.json:
        report = {"source": source, "device": device, "rows": rows}
        args.json.write_text(json.dumps(report, indent=1))
    bac = rows[-1]
    print(f"{bac_name}: speedup {bac['speedup']:.2f}x over full, "
          f"{bac['achieved_over_theoretical']:.0%} of FLOP bound")
    return 0


if __name__ == "__main__":
    sys.exit(main())
