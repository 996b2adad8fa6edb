"""A Meta-World checkpoint against its scripted expert: success of each sampling method on the
same seeded episodes, and each method's speedup over full compute measured side by side.

    python bench/metaworld_table.py --checkpoint checkpoints/metaworld_drawer_open_lowdim \
        --episodes 200 --out docs/eval_metaworld_drawer_open.md

Rows: the scripted expert (the reference the floor is relative to); full compute (DDPM-100);
the checkpoint's shipped ``bac_s10_k5.yaml`` and ``tuned_x5.yaml``; DDIM-10 and DDPM-10.
Lockstep episodes (seeds from 100000, disjoint from the demonstration seeds from 0), one batch
per method with the same initial noise. Latency: median batch-1 ``predict``, every method once
per round in turn, so a busy machine slows all alike and the ratios stay meaningful.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from bac_ros.policy.policy import Policy
from bac_ros.policy.timing import device_label
from bac_ros.sim.evaluate import evaluate, time_methods, wilson_interval
from bac_ros.sim.metaworld import expert_outcomes
from bac_ros.sim.tasks import task_of


def methods_of(checkpoint: Path) -> dict[str, str]:
    methods = {"full (DDPM-100)": "full"}
    for name, file in (("BAC S=10 k=5", "bac_s10_k5.yaml"), ("tuned x5", "tuned_x5.yaml")):
        if (checkpoint / file).is_file():
            methods[name] = f"bac:{checkpoint / file}"
    methods.update({"DDIM-10": "ddim:10", "DDPM-10": "ddpm:10"})
    return methods


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, required=True)
    ap.add_argument("--episodes", type=int, default=200)
    ap.add_argument("--seed", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=10, help="latency rounds")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", type=Path, required=True, help="markdown table to write")
    args = ap.parse_args(argv)

    policy = Policy.from_pretrained(args.checkpoint, device=args.device)
    task = task_of(policy)
    seeds = range(args.seed, args.seed + args.episodes)
    t0 = time.perf_counter()
    expert = expert_outcomes(task, seeds)
    rows = [{"name": "scripted expert", "success_rate": float(np.mean(expert)),
             "ci95": list(wilson_interval(sum(expert), len(expert))), "speedup": None,
             "wall_s": round(time.perf_counter() - t0, 1)}]
    print(f"expert: {rows[0]['success_rate']:.1%}", flush=True)
    methods = methods_of(args.checkpoint)
    for name, method in methods.items():
        r = evaluate(policy, method, args.episodes, args.seed, "lockstep")
        r = {k: v for k, v in r.items() if k != "per_episode"} | {"name": name}
        rows.append(r)
        lo, hi = r["ci95"]
        print(f"{name:<16} success {r['success_rate']:6.1%} [{lo:.1%}, {hi:.1%}] "
              f"({r['wall_s']:.0f} s)", flush=True)

    window = {k: np.stack([v] * policy.n_obs_steps)
              for k, v in _first_obs(task, policy.reads_images).items()
              if k in policy.obs_spec}
    times = time_methods(policy, methods, window, args.repeats)
    median = {name: float(np.median(t)) for name, t in times.items()}
    for r in rows[1:]:
        r["latency_ms"] = 1e3 * median[r["name"]]
        r["speedup"] = median["full (DDPM-100)"] / median[r["name"]]

    device = device_label(policy.device)
    full = rows[1]["success_rate"]
    lines = [
        f"# Meta-World `{task.task}`: `{args.checkpoint}`",
        "",
        f"Lockstep, {args.episodes} episodes (seeds {args.seed}..{args.seed + args.episodes - 1}, "
        "disjoint from the demonstration seeds), the same seeds for every row and the same "
        f"initial noise for every method. Latency: median batch-1 `predict` on {device}, "
        f"{args.repeats} interleaved rounds.",
        "",
        f"Reproduce: `python bench/metaworld_table.py --checkpoint {args.checkpoint} "
        f"--episodes {args.episodes} --out {args.out}`",
        "",
        "| method | success | 95% CI | vs full (points) | latency (ms) | speedup |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lo, hi = r["ci95"]
        vs = "" if r["name"] in ("scripted expert", "full (DDPM-100)") else \
            f"{100 * (r['success_rate'] - full):+.1f}"
        lat = f"{r['latency_ms']:.1f}" if "latency_ms" in r else ""
        sp = f"{r['speedup']:.2f}x" if r["speedup"] else ""
        lines.append(f"| {r['name']} | {r['success_rate']:.1%} | {lo:.1%} – {hi:.1%} | {vs} | "
                     f"{lat} | {sp} |")
    floor = 0.8 * rows[0]["success_rate"]
    lines += ["", f"Floor (issue 17): full compute >= 80% of the expert's rate = {floor:.1%}: "
              f"{'met' if full >= floor else 'NOT met'} ({full:.1%})."]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    args.out.with_suffix(".json").write_text(json.dumps(
        {"checkpoint": str(args.checkpoint), "task": task.task, "device": device,
         "rows": rows}, indent=1))
    print(f"wrote {args.out}")
    return 0


def _first_obs(task, images: bool) -> dict:
    from bac_ros.sim.tasks import make_env

    env = make_env(task, images)
    obs = env.reset(0)
    env.close()
    return obs


if __name__ == "__main__":
    raise SystemExit(main())
