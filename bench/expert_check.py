"""Scripted-expert figures on the bundled arm task: success, side balance, episode lengths.

Usage: python bench/expert_check.py [--episodes 200] [--seed 0]
Prints one table; the unit test checks the same figures on the same 200 seeds.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from bac_ros.sim.arm import ArmEnv
from bac_ros.sim.demos import rollout_expert
from bac_ros.sim.expert import LEFT, Expert


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0, help="first reset seed")
    args = parser.parse_args()

    env = ArmEnv(render_images=False)
    expert = Expert(env)
    start = time.perf_counter()
    episodes = [rollout_expert(env, expert, args.seed + i) for i in range(args.episodes)]
    elapsed = time.perf_counter() - start

    success = np.array([e.success for e in episodes])
    left = np.array([e.side == LEFT for e in episodes])
    lengths = np.array([len(e.steps["action"]) for e in episodes])
    gaps = np.array([e.min_clearance for e in episodes])
    rows = [
        ("episodes (seeds)", f"{args.episodes} ({args.seed}..{args.seed + args.episodes - 1})"),
        ("success", f"{success.mean():.1%} ({success.sum()}/{len(success)})"),
        ("success, left / right", f"{success[left].mean():.1%} / {success[~left].mean():.1%}"),
        ("side left / right", f"{left.mean():.1%} / {1 - left.mean():.1%}"),
        (
            "episode steps min/median/mean/max",
            f"{lengths.min()} / {np.median(lengths):.0f} / {lengths.mean():.1f} / {lengths.max()}",
        ),
        ("closest link to obstacle (m)", f"{gaps.min():.4f} (median {np.median(gaps):.4f})"),
        ("wall time per episode (s)", f"{elapsed / args.episodes:.4f}"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


if __name__ == "__main__":
    main()
