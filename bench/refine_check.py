"""Does output-aware schedule search beat BAC at the same FLOPs? One A/B on the same seeds.

    python bench/refine_check.py --checkpoint checkpoints/arm_lowdim --budget 10 \
        --proposals 40 --json docs/refine_arm_lowdim.json

Compiles BAC (ACS -> BUA -> final step) from a profile of expert-demonstration windows, refines
it with ``bac_ros.policy.tune.refine`` (energy distance to full compute on the search noise),
then scores both on held-out noise and in closed loop (lockstep, the same 200 seeds).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from bac_ros.policy.fidelity import CANDIDATE_SEED, REFERENCE_SEED, draw_chunks, fidelity
from bac_ros.policy.policy import Policy
from bac_ros.policy.tune import refine
from bac_ros.sim.demos import generate_demos
from bac_ros.sim.evaluate import evaluate
from bac_ros.train.dataset import observation_windows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, required=True)
    ap.add_argument("--budget", type=int, default=10)
    ap.add_argument("--proposals", type=int, default=40)
    ap.add_argument("--episodes", type=int, default=200)
    ap.add_argument("--fidelity-obs", type=int, default=16)
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    policy = Policy.from_pretrained(args.checkpoint, device=args.device)
    data = generate_demos(30, seed=0, with_images=policy.reads_images)
    obs = observation_windows(data, list(policy.obs_spec), policy.n_obs_steps, 64, seed=0)
    fid_obs = obs[: args.fidelity_obs]
    bac = policy.compile_schedule(policy.profile(obs, batch_size=16), args.budget, 5,
                                  source="expert demos")
    reference = draw_chunks(policy, fid_obs, args.samples, seed=REFERENCE_SEED)
    found = refine(policy, bac, fid_obs, reference, args.samples, args.proposals)
    rows = []
    for name, sched in ((f"BAC S={args.budget} k=5", bac), ("output-aware search", found)):
        policy.set_schedule(sched)
        held_out = fidelity(reference, draw_chunks(policy, fid_obs, args.samples,
                                                   seed=CANDIDATE_SEED))
        ratio = policy.flop_ratio(policy.plan)
        path = sched.save(Path("out") / "refine" / f"{sched.method['name']}.yaml")
        r = evaluate(policy, f"bac:{path}", args.episodes, mode="lockstep")
        rows.append({"name": name, "flop_ratio": ratio, **held_out,
                     "success_rate": r["success_rate"], "ci95": r["ci95"]})
        lo, hi = r["ci95"]
        print(f"{name:<22} FLOP ratio {ratio:5.2f}x  energy (held-out noise) "
              f"{held_out['energy']:.4f} ± {held_out['energy_sem']:.4f}  lockstep success "
              f"{r['success_rate']:.1%} [{lo:.1%}, {hi:.1%}]", flush=True)
    print(f"({time.perf_counter() - t0:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps({"checkpoint": str(args.checkpoint),
                                         "proposals": args.proposals, "rows": rows,
                                         "refined": found.method["refined"]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
