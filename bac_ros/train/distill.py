"""The camera policy, built from the low-dim one: an encoder that finds the scene, the low-dim
transformer that acts on it.

The low-dim DP-T reads the target and obstacle positions from its state vector; the camera policy
must find them in pixels, to within a few millimetres, from 200 demonstrations (200 scenes).
Trained end to end on this 2-core CPU it stalled near 66% success. Distillation splits the two
jobs:

1. the image encoder learns to output the scene positions, normalised as the low-dim policy
   normalises them (shifted by +1 to be non-negative: the encoder ends in a ReLU), on freshly
   rendered scenes: every batch draws new layouts from the task's sampler and arm poses from the
   demonstrations, so it cannot memorise the demonstration scenes;
2. the image DP-T is the low-dim transformer, with the condition embedding's state columns moved
   onto those feature columns (and the joint columns onto the joint input).

The result is an ordinary image checkpoint: camera + joints in, the policy normaliser outside the
network; ``bac train --variant image --init`` can fine-tune it end to end.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from bac_ros.policy.checkpoint import Checkpoint, load_native
from bac_ros.policy.policy import Policy
from bac_ros.policy.timing import device_label
from bac_ros.sim.arm import LOWDIM_KEYS, ArmTaskConfig, render, sample_episode
from bac_ros.train.train import TrainConfig, build_initial

N_JOINTS = 3  # state layout (LOWDIM_KEYS): joints, then the scene (target xy, obstacle xy)
SCENE = slice(N_JOINTS, 7)
assert LOWDIM_KEYS == ("joints", "target_xy", "obstacle_xy")


def scene_batch(task: ArmTaskConfig, rng: np.random.Generator, poses: np.ndarray, n: int,
                pose_noise: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """``n`` rendered scenes: new target/obstacle layouts, arm poses from ``poses`` (+ noise).

    Returns uint8 images (n, S, S, 3) and float32 low-dim states (n, 7).
    """
    layouts = [sample_episode(task, rng) for _ in range(n)]
    joints = poses[rng.integers(len(poses), size=n)] + rng.normal(0, pose_noise, (n, N_JOINTS))
    joints = np.clip(joints, task.joint_low, task.joint_high)
    images = np.stack([render(task, j, t, o) for j, (t, o) in zip(joints, layouts, strict=True)])
    states = np.concatenate([joints, np.array([np.concatenate(lo) for lo in layouts])], axis=1)
    return images, states.astype(np.float32)


class SceneTargets:
    """Low-dim state -> the encoder's supervised feature values, and the error back in metres."""

    def __init__(self, lowdim_policy: Policy):
        params = lowdim_policy.normalizer.params_dict["state"]
        self.scale = params["scale"].detach()[SCENE].cpu()
        self.offset = params["offset"].detach()[SCENE].cpu()

    def __call__(self, states: torch.Tensor) -> torch.Tensor:
        return states[:, SCENE] * self.scale + self.offset + 1.0

    def error_m(self, features: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        """Per-scene position error (m) of target and obstacle, (n, 2)."""
        delta = (features - self(states)) / self.scale
        return delta.reshape(-1, 2, 2).norm(dim=-1)


def _encode(policy: Policy, images: np.ndarray, states: np.ndarray) -> torch.Tensor:
    x = torch.as_tensor(images).movedim(-1, -3).float() / 255.0
    obs = {"image": policy.normalizer.normalize("image", x),
           "joints": policy.normalizer.normalize("joints", torch.as_tensor(states[:, :N_JOINTS]))}
    return policy.obs_encoder(obs)


def train_scene_encoder(policy: Policy, targets: SceneTargets, poses: np.ndarray,
                        task: ArmTaskConfig, steps: int, batch_size: int = 64, lr: float = 1e-3,
                        seed: int = 0, log=print) -> dict:
    """Fit ``policy.obs_encoder`` so its first four features are the scene targets; returns
    held-out position errors (mm) on 512 scenes never trained on."""
    encoder = policy.obs_encoder.train()
    rng = np.random.default_rng(seed)
    held_out = scene_batch(task, np.random.default_rng([seed, 1]), poses, 512)
    opt = torch.optim.AdamW(encoder.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 100) * 0.5 * (1 + math.cos(math.pi * s / steps)))
    t0 = time.perf_counter()
    bar = tqdm(range(steps), desc="scene encoder", unit="step")
    for step in bar:
        images, states = scene_batch(task, rng, poses, batch_size)
        feats = _encode(policy, images, states)[:, :4]
        loss = nn.functional.mse_loss(feats, targets(torch.as_tensor(states)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.2e}")
    bar.close()
    encoder.eval()
    with torch.no_grad():
        err = targets.error_m(_encode(policy, *held_out)[:, :4], torch.as_tensor(held_out[1]))
    err_mm = err.numpy() * 1e3
    stats = {"steps": steps, "batch_size": batch_size, "lr": lr,
             "seconds": round(time.perf_counter() - t0, 1),
             "held_out_error_mm": {
                 name: {"median": float(np.median(e)), "p95": float(np.percentile(e, 95))}
                 for name, e in zip(("target", "obstacle"), err_mm.T, strict=True)}}
    err = stats["held_out_error_mm"]
    log(f"scene encoder: held-out error median target {err['target']['median']:.1f} mm, "
        f"obstacle {err['obstacle']['median']:.1f} mm")
    return stats


def _transfer_transformer(low: Checkpoint, image: Checkpoint, policy: Policy) -> None:
    """Copy the low-dim transformer; route its state columns onto feature and joint columns."""
    cols, start = {}, 0
    for spec in policy.obs_encoder.obs_specs:
        width = (policy.obs_encoder.obs_nets[spec.name].feature_dim if spec.name in
                 policy.obs_encoder.obs_nets else math.prod(spec.shape))
        cols[spec.name] = start
        start += width
    for key, value in low.tensors.items():
        if not key.startswith("model."):
            continue
        if key == "model.cond_obs_emb.weight":
            w = torch.zeros_like(image.tensors[key], dtype=torch.float32)
            w[:, cols["image"] : cols["image"] + 4] = value[:, SCENE].float()
            w[:, cols["joints"] : cols["joints"] + N_JOINTS] = value[:, :N_JOINTS].float()
            value = w
        elif key == "model.cond_obs_emb.bias":  # the +1 shift of the scene features
            scene_w = low.tensors["model.cond_obs_emb.weight"][:, SCENE].float()
            value = value.float() - scene_w.sum(1)
        elif image.tensors[key].shape != value.shape:
            raise ValueError(f"{key}: the low-dim model has shape {tuple(value.shape)}, the image "
                             f"model {tuple(image.tensors[key].shape)}; their configs differ")
        image.tensors[key] = value


def _transfer_normalizer(low: Checkpoint, image: Checkpoint) -> None:
    """Actions and joints normalised exactly as the low-dim policy normalises them."""
    for key, value in low.tensors.items():
        if key.startswith("normalizer.params_dict.action."):
            image.tensors[key] = value
        elif key.startswith("normalizer.params_dict.state."):
            image.tensors[key.replace(".state.", ".joints.")] = value[:N_JOINTS]


def distill_image_policy(lowdim: str | Path, data: dict, steps: int, batch_size: int = 64,
                         lr: float = 1e-3, seed: int = 0, task: ArmTaskConfig | None = None,
                         log=print) -> Checkpoint:
    """Build the image checkpoint from the low-dim checkpoint ``lowdim`` and demonstrations."""
    task = task or ArmTaskConfig()
    low = load_native(lowdim)
    if low.config["policy"]["obs"] != {"state": {"shape": [7], "type": "low_dim"}}:
        raise ValueError(f"{lowdim} is not a low-dim policy of the bundled task (obs 'state' of "
                         f"7 values); got obs {low.config['policy']['obs']}")
    model = {k: low.config["model"][k] for k in TrainConfig().model}
    image = build_initial(TrainConfig(variant="image", model=model, seed=seed), data, task)
    _transfer_normalizer(low, image)
    policy = Policy(image, device="cpu")
    stats = train_scene_encoder(policy, SceneTargets(Policy(low, device="cpu")),
                                np.asarray(data["joints"]), task, steps, batch_size, lr, seed, log)
    image.tensors.update({f"obs_encoder.{k}": v.detach().clone()
                          for k, v in policy.obs_encoder.state_dict().items()})
    _transfer_transformer(low, image, policy)
    image.config["source"] = {"distilled_from": str(lowdim),
                              "lowdim_training": low.config.get("training")}
    image.config["training"] = {"variant": "image", "method": "distilled (bac distill)",
                                "scene_encoder": stats, "seed": seed,
                                "device": device_label(policy.device)}
    return image
