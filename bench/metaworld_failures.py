"""Where a Meta-World policy fails: per held-out episode, where the object started, how close
the hand came to it, whether the object left the table, how close it came to the goal; and at
the states the policy itself visits near the object, its horizontal action against the scripted
expert's (the expert relabels the policy's own states, as DAgger would).

    python bench/metaworld_failures.py --checkpoint wip/mw_peg_ft --episodes 8

A policy that reaches the object but never lifts it, with horizontal actions much smaller than
the expert's at the same states, has not learnt the expert's fine alignment before the grasp.
"""

from __future__ import annotations

import argparse
from collections import deque
from pathlib import Path

import numpy as np

from bac_ros.policy.policy import Policy
from bac_ros.sim.evaluate import apply_method
from bac_ros.sim.metaworld import MetaWorldEnv, expert_action, expert_policy, task_from_record

HAND, OBJECT = slice(0, 3), slice(4, 7)  # Meta-World's state: hand xyz, first object's xyz
NEAR_XY = 0.06  # "near the object": the hand within 6 cm of it horizontally
LIFTED = 0.02  # the object counts as lifted 2 cm above its start


def episode(policy: Policy, env: MetaWorldEnv, expert, seed: int) -> dict:
    state = env.reset(seed)["state"]
    start = state[OBJECT].copy()
    history = deque([state] * policy.n_obs_steps, maxlen=policy.n_obs_steps)
    closest, lift, to_goal, mine, theirs = np.inf, 0.0, np.inf, [], []
    done, info = False, {}
    while not done:
        for action in policy.predict({"state": np.stack(history)}, seed=seed):
            state = env.state()
            if (np.linalg.norm(state[HAND][:2] - state[OBJECT][:2]) < NEAR_XY
                    and state[OBJECT][2] - start[2] < LIFTED):
                mine.append(np.abs(action[:2]).mean())
                theirs.append(np.abs(expert_action(expert, env)[:2]).mean())
            obs, done, info = env.step(action)
            state = obs["state"]
            history.append(state)
            closest = min(closest, float(np.linalg.norm(state[HAND] - state[OBJECT])))
            lift = max(lift, float(state[OBJECT][2] - start[2]))
            to_goal = min(to_goal, info["effector_error"])
            if done:
                break
    return {"seed": seed, "success": info["success"], "steps": info["steps"],
            "start_xy": start[:2], "closest": closest,
            "lift": lift, "to_goal": to_goal, "near_steps": len(mine),
            "policy_xy": float(np.mean(mine)) if mine else float("nan"),
            "expert_xy": float(np.mean(theirs)) if theirs else float("nan")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, required=True)
    ap.add_argument("--method", default="ddim:10")
    ap.add_argument("--episodes", type=int, default=8)
    ap.add_argument("--seed", type=int, default=100_000, help="first held-out reset seed")
    args = ap.parse_args(argv)

    policy = Policy.from_pretrained(args.checkpoint, device="cpu")
    apply_method(policy, args.method)
    task = task_from_record(policy.config["task"])
    env, expert = MetaWorldEnv(task), expert_policy(task)
    print(f"{task.task}, {args.checkpoint}, {args.method}: hand-object and object-goal distances "
          f"in mm; mean |dx|,|dy| while the hand is within {NEAR_XY * 100:.0f} cm of the object "
          "and the object is on the table (policy, and the expert at the same states)\n")
    print("| seed | success | steps | object start x, y | closest hand-object | lift | "
          "closest object-goal | near-object steps | policy \\|xy\\| | expert \\|xy\\| |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    rows = [episode(policy, env, expert, s) for s in range(args.seed, args.seed + args.episodes)]
    for r in rows:
        x, y = 1e3 * r["start_xy"]
        print(f"| {r['seed']} | {'yes' if r['success'] else 'no'} | {r['steps']} | "
              f"{x:.0f}, {y:.0f} | {1e3 * r['closest']:.0f} | {1e3 * r['lift']:.0f} | "
              f"{1e3 * r['to_goal']:.0f} | "
              f"{r['near_steps']} | {r['policy_xy']:.2f} | {r['expert_xy']:.2f} |")
    env.close()
    ok = sum(r["success"] for r in rows)
    print(f"\n{ok} of {len(rows)} succeeded; near the object the policy's mean |xy| action is "
          f"{np.nanmean([r['policy_xy'] for r in rows]):.2f}, the expert's at the same states "
          f"{np.nanmean([r['expert_xy'] for r in rows]):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
