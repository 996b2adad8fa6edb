"""How much of a Meta-World task's object each MuJoCo camera sees along the scripted expert's
episodes: the object's pixels at reset, while the hand is within 5 cm of it (the grasp, where
the corner camera's camera policy misses), and the share of frames without it.

    python bench/metaworld_camera_views.py --task pick-place --episodes 12

Pixels are counted on MuJoCo's segmentation render (geoms of the body ``--body``) at the
policies' frame size, so they are what a camera policy's encoder gets to look at. Seeds start
at the evaluation seeds (100000).
"""

from __future__ import annotations

import argparse

import mujoco
import numpy as np

from bac_ros.sim.metaworld import (
    MetaWorldEnv,
    MetaWorldTaskConfig,
    camera_names,
    expert_action,
    expert_policy,
)

NEAR_M = 0.05  # hand within this of the object: the grasp phase


def object_pixels(task: str, body: str, episodes: int, seed: int, size: int) -> dict:
    """Per camera, per episode: (pixels at reset, min and median in the grasp phase, share of
    frames with none)."""
    env = MetaWorldEnv(MetaWorldTaskConfig(task=task))
    model = env._env.model  # private: MetaWorldEnv exposes no MuJoCo model to render from
    geoms = [g for g in range(model.ngeom) if model.geom_bodyid[g] == model.body(body).id]
    model.vis.quality.offsamples = 0
    renderer = mujoco.Renderer(model, height=size, width=size)
    renderer.enable_segmentation_rendering()
    cameras = camera_names(model)
    expert = expert_policy(env.config)
    out = {c: [] for c in cameras}
    try:
        for s in range(seed, seed + episodes):
            env.reset(s)
            counts, near = {c: [] for c in cameras}, []
            while not env.done:
                state = env.state()
                near.append(np.linalg.norm(state[:3] - state[4:7]) < NEAR_M)
                for c in cameras:
                    renderer.update_scene(env._env.data, camera=c)
                    seg = renderer.render()
                    hit = np.isin(seg[..., 0], geoms) & (seg[..., 1] == mujoco.mjtObj.mjOBJ_GEOM)
                    counts[c].append(int(hit.sum()))
                env.step(expert_action(expert, env))
            near = np.array(near)
            for c in cameras:
                n = np.array(counts[c])
                grasp = n[near] if near.any() else np.array([np.nan])
                out[c].append((n[0], grasp.min(), np.median(grasp), np.mean(n == 0)))
    finally:
        renderer.close()
        env.close()
    return {c: np.array(v, dtype=float) for c, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", default="pick-place")
    ap.add_argument("--body", default="obj", help="the MuJoCo body counted as the object")
    ap.add_argument("--episodes", type=int, default=12)
    ap.add_argument("--seed", type=int, default=100_000)
    ap.add_argument("--size", type=int, default=96, help="frame size (the policies' is 96)")
    args = ap.parse_args()
    rows = object_pixels(args.task, args.body, args.episodes, args.seed, args.size)
    print(f"{args.task}: object pixels per {args.size} px frame, {args.episodes} expert episodes "
          f"from seed {args.seed} (means over episodes)\n")
    print("| camera | at reset | grasp phase, min | grasp phase, median | frames without it |")
    print("|---|---:|---:|---:|---:|")
    for camera, r in rows.items():
        m = np.nanmean(r, axis=0)
        print(f"| `{camera}` | {m[0]:.1f} | {m[1]:.1f} | {m[2]:.1f} | {100 * m[3]:.0f}% |")


if __name__ == "__main__":
    main()
