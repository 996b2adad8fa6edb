"""Training DP-T on the bundled task's demonstrations (Chi et al.'s recipe, epsilon prediction).

Resumable: a training state (weights, EMA, optimiser, LR schedule, step, RNG) is written every
``save_every`` steps and on exit; ``resume=True`` continues from it. The result is a native
checkpoint folder holding the EMA weights.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from bac_ros.cache.schedulers import DEFAULT_INFERENCE_STEPS, DEFAULT_SCHEDULER, build_scheduler
from bac_ros.models.normalizer import LinearNormalizer
from bac_ros.policy.build import PAPER_MODEL, new_checkpoint
from bac_ros.policy.checkpoint import Checkpoint, load_native, save_native
from bac_ros.policy.policy import Policy, resolve_device
from bac_ros.policy.timing import device_label
from bac_ros.sim.arm import ArmTaskConfig
from bac_ros.train.dataset import SequenceSampler

# Observation keys per variant: what the policy sees (the camera variant must find target and
# obstacle in the image; the low-dim variant gets their positions in the state vector).
VARIANTS = {
    "lowdim": {"state": {"shape": [7], "type": "low_dim"}},
    "image": {"image": {"shape": [3, 96, 96], "type": "rgb"},
              "joints": {"shape": [3], "type": "low_dim"}},
}
# No crop: the camera is fixed and actions are absolute joint targets, so a random crop's shift
# (robomimic's augmentation) would blur exactly the target position the arm must reach.
IMAGE_ENCODER = {"type": "small_cnn", "crop_shape": None}
# Spatial-softmax pixel grids: buffers fixed by the image size, rebuilt rather than transferred.
_GRID_BUFFERS = (".pos_x", ".pos_y")
JOINT_NAMES = ["joint1", "joint2", "joint3"]
RESUMABLE_CHANGES = ("steps", "save_every")  # a run may be resumed with more steps


@dataclass(frozen=True)
class TaskSpec:
    """What training needs of a task: the policy's inputs and outputs, its control period, and
    the task description the checkpoint records (so evaluation rebuilds the same task)."""

    obs: dict
    action_names: list
    dt: float
    task: dict | None = None
    action_type: str = "joint_position"  # or "ee_delta": what a controller does with actions


def arm_spec(variant: str, task: ArmTaskConfig | None = None) -> TaskSpec:
    """The bundled arm task's spec for a training variant (``lowdim`` or ``image``)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {sorted(VARIANTS)}")
    return TaskSpec(VARIANTS[variant], JOINT_NAMES, (task or ArmTaskConfig()).dt)


@dataclass
class TrainConfig:
    variant: str = "lowdim"
    steps: int = 8000
    batch_size: int = 64
    lr: float = 2e-4
    weight_decay: float = 1e-3
    warmup_steps: int = 500
    ema_power: float = 0.75
    ema_max_decay: float = 0.9999
    horizon: int = 16
    n_obs_steps: int = 2
    n_action_steps: int = 8
    model: dict = field(default_factory=lambda: dict(PAPER_MODEL))
    seed: int = 0
    save_every: int = 500


class EMA:
    """Chi et al.'s EMA schedule: ``decay = 1 - (1 + step) ** -power``, capped."""

    def __init__(self, module: nn.Module, power: float, max_decay: float):
        self.shadow = copy.deepcopy(module).eval().requires_grad_(False)
        self.power, self.max_decay, self.step = power, max_decay, 0

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        self.step += 1
        decay = min(max(1 - (1 + self.step) ** -self.power, 0.0), self.max_decay)
        shadow = [p for p in self.shadow.parameters() if p.numel()]
        live = [p.detach() for p in module.parameters() if p.numel()]
        torch._foreach_mul_(shadow, decay)
        torch._foreach_add_(shadow, live, alpha=1 - decay)
        for s, b in zip(self.shadow.buffers(), module.buffers()):
            s.copy_(b)


class Nets(nn.Module):
    """What training updates: the noise model and (image variant) the observation encoder."""

    def __init__(self, model: nn.Module, obs_encoder: nn.Module | None):
        super().__init__()
        self.model = model
        self.obs_encoder = obs_encoder


def _normalizer(data: dict, obs: dict) -> LinearNormalizer:
    norm = LinearNormalizer()
    for key, spec in obs.items():
        if spec["type"] == "rgb":
            norm.fit_image_range(key)
        else:
            norm.fit_limits(key, torch.as_tensor(data[key]))
    norm.fit_limits("action", torch.as_tensor(data["action"]))
    return norm


def build_initial(cfg: TrainConfig, data: dict, spec: TaskSpec | ArmTaskConfig) -> Checkpoint:
    """The untrained checkpoint (normaliser fitted to ``data``); an ``ArmTaskConfig`` stands
    for the arm's spec of ``cfg.variant``."""
    if isinstance(spec, ArmTaskConfig):
        spec = arm_spec(cfg.variant, spec)
    obs = spec.obs
    images = any(v["type"] == "rgb" for v in obs.values())
    ckpt = new_checkpoint(
        obs, len(spec.action_names), _normalizer(data, obs), horizon=cfg.horizon,
        n_obs_steps=cfg.n_obs_steps, n_action_steps=cfg.n_action_steps, model=cfg.model,
        obs_encoder=IMAGE_ENCODER if images else None,
        scheduler=DEFAULT_SCHEDULER, num_inference_steps=DEFAULT_INFERENCE_STEPS, dt=spec.dt,
        action_names=list(spec.action_names), seed=cfg.seed,
    )
    ckpt.config["policy"]["action_type"] = spec.action_type
    if spec.task is not None:
        ckpt.config["task"] = dict(spec.task)
    return ckpt


def _transferable(start: Checkpoint, target: Checkpoint) -> dict[str, torch.Tensor]:
    """The tensors of ``start`` that initialise ``target``: all weights, not the normaliser.

    Spatial-softmax grids follow the image size of ``target`` (e.g. when the crop changes); any
    other tensor whose shape differs is an error rather than a silent skip.
    """
    out = {}
    for key, value in start.tensors.items():
        if key.startswith("normalizer."):
            continue
        want = target.tensors.get(key)
        if want is not None and want.shape != value.shape:
            if key.endswith(_GRID_BUFFERS):
                continue
            raise ValueError(f"cannot start from this checkpoint: {key} has shape "
                             f"{tuple(value.shape)}, this training run expects {tuple(want.shape)}")
        out[key] = value
    return out


def _to_chw_float(images: torch.Tensor) -> torch.Tensor:
    """(..., H, W, 3) uint8 camera frames -> (..., 3, H, W) float in [0, 1]."""
    return images.movedim(-1, -3).float() / 255.0


def train(
    data: dict,
    out: str | Path,
    cfg: TrainConfig,
    device: str = "auto",
    resume: bool = True,
    task: ArmTaskConfig | TaskSpec | None = None,
    log=print,
    time_budget_s: float | None = None,
    init: str | Path | None = None,
) -> Path:
    """Train and write the native checkpoint folder ``out``; returns its path.

    ``time_budget_s`` stops early (the checkpoint records the steps actually done); ``init``
    starts from a trained checkpoint's weights (fine-tuning; the optimiser starts fresh).
    """
    spec = task if isinstance(task, TaskSpec) else arm_spec(cfg.variant, task)
    dev = resolve_device(device)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state_file = out / "train_state.pt"
    torch.manual_seed(cfg.seed)
    init_ckpt = build_initial(cfg, data, spec)
    if init is not None:
        start = load_native(init)
        if start.config["model"] != init_ckpt.config["model"]:
            raise ValueError(f"{init} has another model config than this training run")
        init_ckpt.tensors.update(_transferable(start, init_ckpt))
        init_ckpt.config["source"] = {"fine_tuned_from": start.config.get("training")}
    init = init_ckpt
    policy = Policy(init, device="cpu")  # builds modules + normaliser from the config
    nets = Nets(policy.model, policy.obs_encoder).to(dev).train()
    norm = policy.normalizer.to(dev)
    obs_keys = list(spec.obs)
    sampler = SequenceSampler(data, cfg.horizon, cfg.n_obs_steps, cfg.n_action_steps,
                              obs_keys=obs_keys)
    fields = {k: torch.as_tensor(data[k]).to(dev) for k in (*obs_keys, "action")}
    index = torch.as_tensor(sampler.indices).to(dev)

    decay, no_decay = [], []
    for name, p in nets.named_parameters():
        (no_decay if p.ndim < 2 or "norm" in name or "emb" in name else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=cfg.lr, betas=(0.9, 0.95))

    def lr_at(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    sched_lr = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    ema = EMA(nets, cfg.ema_power, cfg.ema_max_decay)
    noise_sched = build_scheduler(DEFAULT_SCHEDULER)
    gen = torch.Generator(device=dev).manual_seed(cfg.seed)
    step, elapsed = 0, 0.0
    if resume and state_file.is_file():
        st = torch.load(state_file, map_location=dev, weights_only=False)
        same = {k: v for k, v in asdict(cfg).items() if k not in RESUMABLE_CHANGES}
        if {k: v for k, v in st["config"].items() if k not in RESUMABLE_CHANGES} != same:
            raise ValueError(f"{state_file} was written by another training config; remove it "
                             "or pass the same settings (only steps may change) to resume")
        nets.load_state_dict(st["nets"])
        ema.shadow.load_state_dict(st["ema"])
        ema.step = st["ema_step"]
        opt.load_state_dict(st["opt"])
        sched_lr.load_state_dict(st["lr"])
        gen.set_state(st["gen"].cpu())
        step, elapsed = st["step"], st["elapsed"]
        log(f"resumed from step {step}")

    def save_state() -> None:
        tmp = state_file.with_suffix(".tmp")
        torch.save({"config": asdict(cfg), "nets": nets.state_dict(),
                    "ema": ema.shadow.state_dict(),
                    "ema_step": ema.step, "opt": opt.state_dict(), "lr": sched_lr.state_dict(),
                    "gen": gen.get_state(), "step": step, "elapsed": elapsed}, tmp)
        tmp.replace(state_file)

    alphas = noise_sched.alphas_cumprod.to(dev)
    T = noise_sched.config.num_train_timesteps
    bar = tqdm(total=cfg.steps, initial=step, desc=f"train {cfg.variant}", unit="step")
    t_start = time.perf_counter() - elapsed
    losses = []
    try:
        while step < cfg.steps:
            if time_budget_s is not None and time.perf_counter() - t_start > time_budget_s:
                log(f"time budget reached at step {step} of {cfg.steps}")
                break
            rows = index[torch.randint(len(index), (cfg.batch_size,), device=dev, generator=gen)]
            obs_rows = rows[:, : cfg.n_obs_steps]
            nobs = {}
            for k in obs_keys:
                x = fields[k][obs_rows]
                x = _to_chw_float(x) if spec.obs[k]["type"] == "rgb" else x.float()
                nobs[k] = norm.normalize(k, x)
            if nets.obs_encoder is not None:
                B = rows.shape[0]
                flat = {k: v.reshape(-1, *v.shape[2:]) for k, v in nobs.items()}
                cond = nets.obs_encoder(flat).reshape(B, cfg.n_obs_steps, -1)
            else:
                cond = torch.cat([nobs[k] for k in obs_keys], dim=-1)
            action = norm.normalize("action", fields["action"][rows].float())
            noise = torch.randn(action.shape, device=dev, generator=gen)
            t = torch.randint(0, T, (action.shape[0],), device=dev, generator=gen)
            a = alphas[t][:, None, None]
            noisy = a.sqrt() * action + (1 - a).sqrt() * noise
            loss = nn.functional.mse_loss(nets.model(noisy, t, cond), noise)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(nets.parameters(), 1.0)
            opt.step()
            sched_lr.step()
            ema.update(nets)
            step += 1
            losses.append(loss.item())
            bar.update(1)
            if step % 50 == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
            if step % cfg.save_every == 0:
                elapsed = time.perf_counter() - t_start
                save_state()
    finally:
        bar.close()
        elapsed = time.perf_counter() - t_start
        if step > 0:
            save_state()

    final = Checkpoint(copy.deepcopy(init.config), dict(init.tensors))
    final.tensors.update({f"model.{k}": v.cpu() for k, v in ema.shadow.model.state_dict().items()})
    if ema.shadow.obs_encoder is not None:
        final.tensors.update({f"obs_encoder.{k}": v.cpu()
                              for k, v in ema.shadow.obs_encoder.state_dict().items()})
    final.config["training"] = {
        **asdict(cfg), "steps_done": step, "episodes": int(len(data["episode_ends"])),
        "windows": len(sampler), "device": device_label(dev), "seconds": round(elapsed, 1),
        "final_loss": float(np.mean(losses[-200:])) if losses else None,
    }
    save_native(final, out)
    log(f"wrote {out} after {step} steps in {elapsed / 60:.1f} min")
    return out
