"""BAC on an RDT-style VLA head: latency and action error against full compute, for DPM-Solver
(few steps, RDT's sampler) and flow-matching Euler (pi0 / GR00T style), side by side.

    python bench/rdt_speed.py [--depth 12] [--hidden 512] [--steps 10] [--budget 4] \
        [--out docs/rdt_speed_cpu.txt]

A mid-size head with random weights (no VLA weights can be downloaded here) behind the built-in
tiny backbone: 64x64 camera, 2 frames, 8x8 patches (128 image tokens), 16 instruction tokens.
Per sampler: profile on --profile-obs random observations, compile BAC (ACS + BUA + final step),
then time full / uniform (same update count) / BAC interleaved at batch 1, and report the mean
absolute action difference to full compute on --eval-obs other observations (same noise). For
scale, "seed spread" is the difference between two full-compute samples with different noise.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from bac_ros.cache.plans import uniform_plan
from bac_ros.models.normalizer import LinearNormalizer
from bac_ros.policy.build import FLOW_SCHEDULER, RDT_SCHEDULER, new_rdt_checkpoint
from bac_ros.policy.observations import random_observations
from bac_ros.policy.timing import device_label, time_plans
from bac_ros.policy.vla import VLAPolicy

OBS = {"image": {"shape": [3, 64, 64], "type": "rgb"}, "joints": {"shape": [7], "type": "low_dim"}}


def build(args, scheduler: dict) -> VLAPolicy:
    norm = LinearNormalizer()
    g = torch.Generator().manual_seed(0)
    norm.fit_image_range("image")
    norm.fit_limits("joints", torch.randn(256, 7, generator=g))
    norm.fit_limits("action", torch.randn(256, 7, generator=g))
    head = dict(depth=args.depth, hidden_size=args.hidden, num_heads=args.heads, state_dim=8)
    ckpt = new_rdt_checkpoint(OBS, 7, norm, head, horizon=args.horizon, n_action_steps=16,
                              backbone=dict(lang_tokens=16, lang_token_dim=256,
                                            img_token_dim=256),
                              scheduler=scheduler, num_inference_steps=args.steps,
                              instruction="put the red block in the bowl")
    return VLAPolicy(ckpt, device=args.device)


def action_error(policy: VLAPolicy, plan, observations, seed_offset: int = 0,
                 label: str = "") -> float:
    errs = []
    for i, obs in enumerate(observations):
        policy.use_plan(None)
        ref = policy.predict_horizon(obs, seed=i)
        policy.use_plan(plan, label)
        errs.append(np.abs(policy.predict_horizon(obs, seed=i + seed_offset) - ref).mean())
    policy.use_plan(None)
    return float(np.mean(errs))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--depth", type=int, default=12)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--horizon", type=int, default=32)
    ap.add_argument("--steps", type=int, default=10, help="denoising steps of both samplers")
    ap.add_argument("--budget", type=int, default=4, help="BAC updates per block (S)")
    ap.add_argument("--top-k", type=int, default=5)
    ap.add_argument("--profile-obs", type=int, default=4)
    ap.add_argument("--eval-obs", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, help="also write the table here")
    args = ap.parse_args(argv)

    lines = []

    def emit(text: str = "") -> None:
        print(text, flush=True)
        lines.append(text)

    for label, scheduler in (("DPM-Solver++", RDT_SCHEDULER), ("flow Euler", FLOW_SCHEDULER)):
        policy = build(args, scheduler)
        if not lines:
            params = sum(p.numel() for p in policy.model.parameters())
            device = device_label(policy.device)
            emit(f"RDT-style head, random weights: depth {args.depth}, hidden {args.hidden}, "
                 f"{args.heads} heads, horizon {args.horizon}, {params / 1e6:.1f}M parameters; "
                 f"{policy.model.config['img_cond_len']} image + 16 language tokens; device: "
                 f"{device}; batch 1; {args.repeats} interleaved repeats")
            emit(f"{'sampler':<13} {'K':>3} {'method':<14} {'updates':>8} {'median ms':>10} "
                 f"{'speedup':>8} {'FLOP ratio':>10} {'action err':>11} {'seed spread':>12}")
            emit("-" * 95)
        obs = random_observations(policy, args.profile_obs + args.eval_obs, seed=0)
        profile_obs, eval_obs = obs[: args.profile_obs], obs[args.profile_obs:]
        t0 = time.perf_counter()
        schedule = policy.compile_schedule(policy.profile(profile_obs, batch_size=4),
                                           budget=args.budget, top_k=args.top_k)
        compile_s = time.perf_counter() - t0
        K, n_blocks = policy.num_inference_steps, len(policy.engine.blocks)
        bac = schedule.plan(policy.engine.blocks)
        every = max(1, round(K / (bac.sum() / n_blocks)))
        plans = {"full": None, f"uniform:{every}": uniform_plan(K, n_blocks, every),
                 f"BAC S={args.budget} k={args.top_k}": bac}
        times = time_plans(policy, plans, eval_obs[0], args.repeats)
        full_ms = float(np.median(times["full"])) * 1e3
        spread = action_error(policy, None, eval_obs, seed_offset=1000)
        for name, plan in plans.items():
            med = float(np.median(times[name])) * 1e3
            err = 0.0 if plan is None else action_error(policy, plan, eval_obs, label=name)
            updates = 1.0 if plan is None else float(plan.mean())
            emit(f"{label:<13} {K:>3} {name:<14} {updates:>8.3f} {med:>10.1f} "
                 f"{full_ms / med:>7.2f}x {policy.flop_ratio(plan):>9.2f}x {err:>11.4f} "
                 f"{spread:>12.4f}")
        emit(f"{'':<13} profiling + compile: {compile_s:.1f} s on {args.profile_obs} observations")
    if args.out:
        cmd = "python bench/rdt_speed.py " + " ".join(argv if argv is not None else sys.argv[1:])
        args.out.write_text(f"$ {cmd}\n" + "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
