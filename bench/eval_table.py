"""Closed-loop success of every sampling method on the bundled task, one table per checkpoint.

    python bench/eval_table.py --checkpoint checkpoints/arm_lowdim --episodes 200 \
        --out docs/eval_arm_lowdim.md

Schedules are profiled on observation windows from expert demonstrations (demo seeds from 0),
never on the evaluation seeds (from 100000); every row runs the same episode seeds. Rows: full
DDPM-100; BAC at S = 5, 10, 20 with k = 5 and k = 0; uniform caching at the same update
densities; DDIM with 10, 25 and 50 steps. Lockstep mode: success measures behaviour, not speed;
the latency column is batch-1 latency on the machine that ran the table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from bac_ros.policy.policy import Policy
from bac_ros.policy.timing import device_label
from bac_ros.policy.tune import profile_and_compile
from bac_ros.sim.demos import generate_demos, load_npz
from bac_ros.sim.evaluate import evaluate
from bac_ros.train.dataset import observation_windows


def compile_schedules(policy: Policy, data: dict, folder: Path, budgets, top_ks,
                      n_obs: int) -> dict[str, Path]:
    obs = observation_windows(data, list(policy.obs_spec), policy.n_obs_steps, n_obs, seed=0)
    variants = [(S, k, "per_block") for S in budgets for k in top_ks]
    made = profile_and_compile(policy, obs, variants,
                               source=f"expert demonstrations ({len(obs)} windows)")
    folder.mkdir(parents=True, exist_ok=True)
    out = {f"BAC S={S} k={k}": sched.save(folder / f"bac_s{S}_k{k}.yaml")
           for (S, k, _), sched in zip(variants, made.schedules)}
    made.profile.save(folder / "profile.npz")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, required=True)
    ap.add_argument("--demos", type=Path, help="demonstrations npz (default: record 200)")
    ap.add_argument("--episodes", type=int, default=200)
    ap.add_argument("--seed", type=int, default=100_000)
    ap.add_argument("--profile-obs", type=int, default=64)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--schedules", type=Path, help="where schedules go (default: beside --out)")
    ap.add_argument("--out", type=Path, required=True, help="markdown table to write")
    args = ap.parse_args(argv)

    policy = Policy.from_pretrained(args.checkpoint, device=args.device)
    data = (load_npz(args.demos) if args.demos
            else generate_demos(200, 0, with_images=policy.reads_images))
    folder = args.schedules or args.out.parent / f"{args.out.stem}_schedules"
    t0 = time.perf_counter()
    schedules = compile_schedules(policy, data, folder, (5, 10, 20), (5, 0), args.profile_obs)
    profile_s = time.perf_counter() - t0
    methods = {"full (DDPM-100)": "full"}
    methods.update({name: f"bac:{path}" for name, path in schedules.items()})
    methods.update({f"uniform:{n}": f"uniform:{n}" for n in (20, 10, 5)})
    methods.update({f"DDIM-{n}": f"ddim:{n}" for n in (10, 25, 50)})

    rows = []
    for name, method in methods.items():
        r = evaluate(policy, method, args.episodes, args.seed, "lockstep")
        r["name"] = name
        rows.append(r)
        lo, hi = r["ci95"]
        print(f"{name:<16} success {r['success_rate']:6.1%} [{lo:.1%}, {hi:.1%}] "
              f"flops {r['flop_ratio']:5.2f}x latency {r['mean_latency_ms']:7.1f} ms "
              f"({r['wall_s']:.0f} s)", flush=True)

    device = device_label(policy.device)
    lines = [
        f"# Closed-loop success: `{args.checkpoint}`",
        "",
        f"Lockstep, {args.episodes} episodes (seeds {args.seed}..{args.seed + args.episodes - 1}),"
        f" the same seeds and initial noise for every row. Schedules profiled on "
        f"{args.profile_obs} observation windows of expert demonstrations ({profile_s:.0f} s). "
        f"Latency: median batch-1 `predict` on {device}.",
        "",
        "Reproduce: `python bench/eval_table.py --checkpoint " + str(args.checkpoint)
        + f" --episodes {args.episodes} --out {args.out}`",
        "",
        "| method | success | 95% CI | collisions | FLOP ratio | latency (ms) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lo, hi = r["ci95"]
        lines.append(f"| {r['name']} | {r['success_rate']:.1%} | {lo:.1%} – {hi:.1%} | "
                     f"{r['collision_rate']:.1%} | {r['flop_ratio']:.2f}x | "
                     f"{r['mean_latency_ms']:.1f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    summary = [{k: v for k, v in r.items() if k != "per_episode"} for r in rows]
    args.out.with_suffix(".json").write_text(json.dumps(
        {"checkpoint": str(args.checkpoint), "device": device, "rows": summary}, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
