"""Where a distilled Meta-World camera policy loses the object: its encoder's position error on
frames of held-out scene episodes, split by object on the table / lifted and hand near / far;
with ``--own-episodes``, on frames of the camera policy's own episodes, split by how each
episode ended.

    python bench/metaworld_scene_errors.py --image checkpoints/metaworld_pick_place_image \
        --lowdim checkpoints/metaworld_pick_place_lowdim --episodes 20
    python bench/metaworld_scene_errors.py --image checkpoints/metaworld_pick_place_image \
        --lowdim checkpoints/metaworld_pick_place_lowdim --own-episodes 32 --method ddim:10

The scene episodes are the distillation's held-out ones (reset seeds from bac_ros.train.distill's
SCENE_SEED, the same noise and frame spacing). Own episodes start at the evaluation seeds
(``--seed``, default 100000: the first of the 200-seed table's) and keep every FRAME_EVERY-th
frame. The last column: the median distance from the encoder's object to the hand, beside the
true object's; an encoder that moves the object with the hand makes the first the smaller.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from bac_ros.policy.factory import load_policy
from bac_ros.sim.evaluate import evaluate
from bac_ros.sim.metaworld import scene_frames
from bac_ros.sim.tasks import task_of
from bac_ros.train import distill

LIFTED_Z = 0.04  # m: object centre above this counts as lifted (it rests at about 0.02)
NEAR_M = 0.05  # hand within this of the object


def own_frames(image, method: str, episodes: int, seed: int):
    """Frames, true states and each frame's episode outcome along the policy's own episodes."""
    frames, states, seeds = [], [], []

    def observe(episode_seed, step, obs, state):
        if step % distill.FRAME_EVERY == 0:
            frames.append(obs["image"])
            states.append(state)
            seeds.append(episode_seed)

    report = evaluate(image, method, episodes, seed, observer=observe)
    won = {r["seed"]: r["success"] for r in report["per_episode"]}
    print(f"{method}: {report['success_rate']:.1%} of {episodes} episodes from seed {seed}")
    return np.stack(frames), np.stack(states), np.array([won[s] for s in seeds])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image", required=True, help="distilled camera checkpoint")
    ap.add_argument("--lowdim", required=True, help="the low-dim checkpoint it came from")
    ap.add_argument("--episodes", type=int, help="held-out scene episodes (default 20)")
    ap.add_argument("--own-episodes", type=int, help="instead: the camera policy's own episodes")
    ap.add_argument("--method", help="what the own episodes sample with (default ddim:10)")
    ap.add_argument("--seed", type=int, help=f"first own episode (default {distill.EVAL_SEED})")
    args = ap.parse_args(argv)
    if args.own_episodes is None:
        if args.method is not None or args.seed is not None:
            ap.error("--method and --seed set the camera policy's own episodes; add "
                     "--own-episodes N")
        args.episodes = 20 if args.episodes is None else args.episodes
    elif args.episodes is not None or args.own_episodes < 1:
        ap.error("--own-episodes takes the place of --episodes, and needs at least 1 episode")
    image = load_policy(args.image, device="cpu")
    low = load_policy(args.lowdim, device="cpu")
    layout = distill.state_layout(low)
    targets = distill.SceneTargets(low, layout)
    if args.own_episodes:
        frames, states, won = own_frames(image, args.method or "ddim:10", args.own_episodes,
                                         distill.EVAL_SEED if args.seed is None else args.seed)
        outcomes = (("succeeded", won), ("failed", ~won))
    else:
        held = image.config["training"]["scene_encoder"]["scenes"]["held_out_episodes"]
        if args.episodes > held:
            ap.error(f"{args.image} held out its first {held} scene episodes; --episodes "
                     f"{args.episodes} would count scenes it trained on")
        # the image policy's task: its camera (the low-dim one records the default view)
        frames, states = scene_frames(task_of(image),
                                      distill.SCENE_SEED + np.arange(args.episodes),
                                      distill.SCENE_NOISE, distill.FRAME_EVERY)
        outcomes = (("", np.ones(len(states), bool)),)
    feats = distill.encoder_features(image, layout, frames, states)[:, :len(targets.cols)]
    st = torch.as_tensor(states)
    err = targets.errors(feats, st)["object"]
    cols = list(layout.groups["object"][0])
    delta = ((feats - targets(st)) / targets.scale)[:, [targets.cols.index(c) for c in cols]]
    to_hand = np.linalg.norm(states[:, cols] + delta.numpy() - states[:, 0:3], axis=1) * 1e3
    true_to_hand = np.linalg.norm(states[:, cols] - states[:, 0:3], axis=1) * 1e3
    lifted = states[:, 6] > LIFTED_Z
    near = true_to_hand < NEAR_M * 1e3
    print("| episodes | frames | n | median (mm) | p95 (mm) | encoder's object to the hand, true "
          "object to the hand (median mm) |\n|---|---|---:|---:|---:|---:|")
    for outcome, mask in outcomes:
        for name, m in (("all", np.ones(len(err), bool)), ("object on the table", ~lifted),
                        ("object lifted", lifted), ("hand within 5 cm", near),
                        ("on the table, hand further", ~lifted & ~near)):
            m = m & mask
            if m.any():
                print(f"| {outcome} | {name} | {m.sum()} | {np.median(err[m]):.1f} | "
                      f"{np.percentile(err[m], 95):.1f} | {np.median(to_hand[m]):.0f}, "
                      f"{np.median(true_to_hand[m]):.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
