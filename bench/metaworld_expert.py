"""Meta-World's scripted experts with noise on the executed action: how much noise the
demonstrations can carry before the expert itself starts failing.

    python bench/metaworld_expert.py --episodes 50 --out docs/metaworld_expert.md

The experts are deterministic functions of the state, so noise-free demonstrations show one
path per start. Noise on the executed action (labels stay the clean expert action) makes the
demonstrations visit nearby states and show the way back; this table says what it costs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from bac_ros.sim.evaluate import wilson_interval
from bac_ros.sim.metaworld import (
    TASKS,
    MetaWorldEnv,
    MetaWorldTaskConfig,
    expert_policy,
    rollout_expert,
)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--tasks", nargs="+", default=list(TASKS))
    ap.add_argument("--noise", nargs="+", type=float, default=[0.0, 0.1, 0.2, 0.3])
    ap.add_argument("--episodes", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0, help="first reset seed (demonstration seeds)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    rows = []
    for task in args.tasks:
        config = MetaWorldTaskConfig(task=task)
        env, expert = MetaWorldEnv(config), expert_policy(config)
        for noise in args.noise:
            runs = [rollout_expert(env, expert, args.seed + i, noise, keys=())
                    for i in range(args.episodes)]
            ok = [success for _, success in runs]
            lengths = [len(steps["action"]) for steps, success in runs if success]
            lo, hi = wilson_interval(sum(ok), len(ok))
            rows.append({"task": task, "noise": noise, "success": float(np.mean(ok)),
                         "ci95": [lo, hi], "median_steps": float(np.median(lengths))
                         if lengths else None})
            print(f"{task:<18} noise {noise:.2f}: {np.mean(ok):6.1%} [{lo:.1%}, {hi:.1%}], "
                  f"median {rows[-1]['median_steps']} steps", flush=True)
        env.close()
    lines = ["# Meta-World scripted experts with executed-action noise", "",
             f"{args.episodes} seeded episodes per row (seeds {args.seed}.."
             f"{args.seed + args.episodes - 1}); Gaussian noise of the given std added to the "
             "executed action, clipped to [-1, 1].", "",
             f"Reproduce: `python bench/metaworld_expert.py --episodes {args.episodes} "
             f"--out {args.out}`", "",
             "| task | noise std | success | 95% CI | median steps to success |",
             "|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['task']} | {r['noise']:.2f} | {r['success']:.0%} | "
                     f"{r['ci95'][0]:.0%} – {r['ci95'][1]:.0%} | {r['median_steps']} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
