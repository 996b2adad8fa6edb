"""Where a distilled Meta-World camera policy loses the object: its encoder's position error on
frames of held-out scene episodes, split by object on the table / lifted and hand near / far.

    python bench/metaworld_scene_errors.py --image mw_pick_place_image \
        --lowdim checkpoints/metaworld_pick_place_lowdim --episodes 20

The episodes are the distillation's held-out ones (reset seeds from bac_ros.train.distill's
SCENE_SEED, the same noise and frame spacing).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from bac_ros.policy.factory import load_policy
from bac_ros.sim.metaworld import scene_frames
from bac_ros.sim.tasks import task_of
from bac_ros.train import distill

LIFTED_Z = 0.04  # m: object centre above this counts as lifted (it rests at about 0.02)
NEAR_M = 0.05  # hand within this of the object


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image", required=True, help="distilled camera checkpoint")
    ap.add_argument("--lowdim", required=True, help="the low-dim checkpoint it came from")
    ap.add_argument("--episodes", type=int, default=20)
    args = ap.parse_args(argv)
    image = load_policy(args.image, device="cpu")
    low = load_policy(args.lowdim, device="cpu")
    layout = distill.state_layout(low)
    targets = distill.SceneTargets(low, layout)
    frames, states = scene_frames(task_of(low), distill.SCENE_SEED + np.arange(args.episodes),
                                  distill.SCENE_NOISE, distill.FRAME_EVERY)
    feats = distill.encoder_features(image, layout, frames, states)[:, :len(targets.cols)]
    err = targets.errors(feats, torch.as_tensor(states))["object"]
    lifted = states[:, 6] > LIFTED_Z
    near = np.linalg.norm(states[:, 0:3] - states[:, 4:7], axis=1) < NEAR_M
    print("| frames | n | median (mm) | p95 (mm) |\n|---|---:|---:|---:|")
    for name, m in (("all", np.ones(len(err), bool)), ("object on the table", ~lifted),
                    ("object lifted", lifted), ("hand within 5 cm", near),
                    ("hand further", ~near)):
        print(f"| {name} | {m.sum()} | {np.median(err[m]):.1f} | {np.percentile(err[m], 95):.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
