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
from bac_ros.models.vision import IMAGE_TYPES, image_keys
from bac_ros.policy.build import PAPER_MODEL, new_checkpoint
from bac_ros.policy.checkpoint import Checkpoint, load_native, save_native
from bac_ros.policy.policy import Policy, resolve_device
from bac_ros.policy.timing import device_label
from bac_ros.sim import metaworld
from bac_ros.sim.arm import JOINT_NAMES, ArmTaskConfig
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
# Meta-World's one camera leaves a lifted object's depth open; fused with the hand's position
# (``proprio``: the grasped object sits at the hand) its features can place it (METAWORLD.md).
METAWORLD_IMAGE_ENCODER = dict(IMAGE_ENCODER, condition_on=["proprio"])
# Spatial-softmax pixel grids: buffers fixed by the image size, rebuilt rather than transferred.
_GRID_BUFFERS = (".pos_x", ".pos_y")
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
    image_encoder: dict | None = None  # the image variant's encoder config; None: IMAGE_ENCODER


def arm_spec(variant: str, task: ArmTaskConfig | None = None) -> TaskSpec:
    """The bundled arm task's spec for a training variant (``lowdim`` or ``image``)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {sorted(VARIANTS)}")
    return TaskSpec(VARIANTS[variant], JOINT_NAMES, (task or ArmTaskConfig()).dt)


def task_spec(task: ArmTaskConfig | metaworld.MetaWorldTaskConfig, variant: str) -> TaskSpec:
    """The spec of a training variant (``lowdim`` or ``image``) of the arm or a Meta-World task."""
    if not isinstance(task, metaworld.MetaWorldTaskConfig):
        return arm_spec(variant, task)
    if variant not in metaworld.OBS_VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of "
                         f"{sorted(metaworld.OBS_VARIANTS)}")
    return TaskSpec(metaworld.OBS_VARIANTS[variant], metaworld.ACTION_NAMES, task.dt,
                    metaworld.task_record(task), action_type=metaworld.ACTION_TYPE,
                    image_encoder=METAWORLD_IMAGE_ENCODER)


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
        if spec["type"] in IMAGE_TYPES:
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
    images = bool(image_keys(obs))
    ckpt = new_checkpoint(
        obs, len(spec.action_names), _normalizer(data, obs), horizon=cfg.horizon,
        n_obs_steps=cfg.n_obs_steps, n_action_steps=cfg.n_action_steps, model=cfg.model,
        obs_encoder=(spec.image_encoder or IMAGE_ENCODER) if images else None,
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


def _architecture(model: dict) -> dict:
    """A model config without its dropout rates: what weights must agree on to transfer."""
    return {k: v for k, v in model.items() if not k.startswith("p_drop")}


def _starting_checkpoint(cfg: TrainConfig, data: dict, spec: TaskSpec,
                         init: str | Path | None) -> Checkpoint:
    """The untrained checkpoint, holding the weights of the trained checkpoint ``init`` when
    one is given (fine-tuning)."""
    ckpt = build_initial(cfg, data, spec)
    if init is not None:
        start = load_native(init)
        if _architecture(start.config["model"]) != _architecture(ckpt.config["model"]):
            raise ValueError(f"{init} has another model config than this training run")
        ckpt.tensors.update(_transferable(start, ckpt))
        ckpt.config["source"] = {"fine_tuned_from": start.config.get("training")}
    return ckpt


def _lr_schedule(cfg: TrainConfig):
    """Linear warm-up, then cosine decay to 0 at ``cfg.steps`` (a factor of ``cfg.lr``)."""

    def lr_at(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return lr_at


class _Run:
    """What a training run updates and saves (networks, EMA, optimiser, LR schedule, the noise
    RNG, the step reached and the time spent), so that a stopped run resumes where it was."""

    def __init__(self, cfg: TrainConfig, nets: Nets, dev: torch.device):
        decay, no_decay = [], []
        for name, p in nets.named_parameters():
            (no_decay if p.ndim < 2 or "norm" in name or "emb" in name else decay).append(p)
        self.cfg, self.nets = cfg, nets
        self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                      {"params": no_decay, "weight_decay": 0.0}],
                                     lr=cfg.lr, betas=(0.9, 0.95))
        self.lr = torch.optim.lr_scheduler.LambdaLR(self.opt, _lr_schedule(cfg))
        self.ema = EMA(nets, cfg.ema_power, cfg.ema_max_decay)
        self.gen = torch.Generator(device=dev).manual_seed(cfg.seed)
        self.step, self.elapsed = 0, 0.0

    def resume(self, state_file: Path, dev: torch.device) -> None:
        """Continue from a saved state; one written by another config (other than in
        :data:`RESUMABLE_CHANGES`) is refused."""
        st = torch.load(state_file, map_location=dev, weights_only=False)
        same = {k: v for k, v in asdict(self.cfg).items() if k not in RESUMABLE_CHANGES}
        if {k: v for k, v in st["config"].items() if k not in RESUMABLE_CHANGES} != same:
            raise ValueError(f"{state_file} was written by another training config; remove it "
                             "or pass the same settings (only steps may change) to resume")
        self.nets.load_state_dict(st["nets"])
        self.ema.shadow.load_state_dict(st["ema"])
        self.ema.step = st["ema_step"]
        self.opt.load_state_dict(st["opt"])
        self.lr.load_state_dict(st["lr"])
        self.gen.set_state(st["gen"].cpu())
        self.step, self.elapsed = st["step"], st["elapsed"]

    def save(self, state_file: Path) -> None:
        tmp = state_file.with_suffix(".tmp")
        torch.save({"config": asdict(self.cfg), "nets": self.nets.state_dict(),
                    "ema": self.ema.shadow.state_dict(),
                    "ema_step": self.ema.step, "opt": self.opt.state_dict(),
                    "lr": self.lr.state_dict(), "gen": self.gen.get_state(), "step": self.step,
                    "elapsed": self.elapsed}, tmp)
        tmp.replace(state_file)


def _loss(policy: Policy, fields: dict[str, torch.Tensor], rows: torch.Tensor,
          alphas: torch.Tensor, T: int, gen: torch.Generator) -> torch.Tensor:
    """Chi et al.'s epsilon-prediction loss on a batch of windows (``rows``: indices into
    ``fields``), conditioned as the policy conditions at inference."""
    nobs = {}
    for k in policy.obs_spec:
        x = fields[k][rows[:, : policy.n_obs_steps]]
        x = _to_chw_float(x) if k in policy.cameras else x.float()
        nobs[k] = policy.normalizer.normalize(k, x)
    cond = policy.features(nobs)
    action = policy.normalizer.normalize("action", fields["action"][rows].float())
    noise = torch.randn(action.shape, device=action.device, generator=gen)
    t = torch.randint(0, T, (action.shape[0],), device=action.device, generator=gen)
    a = alphas[t][:, None, None]
    noisy = a.sqrt() * action + (1 - a).sqrt() * noise
    return nn.functional.mse_loss(policy.model(noisy, t, cond), noise)


def _optimise(run: _Run, policy: Policy, fields: dict[str, torch.Tensor], index: torch.Tensor,
              state_file: Path, time_budget_s: float | None, log) -> list[float]:
    """Steps until ``cfg.steps`` (or the time budget); the state is saved every ``save_every``
    steps and on the way out, however that comes. Returns the losses of the steps taken."""
    cfg, dev = run.cfg, index.device
    noise_sched = build_scheduler(DEFAULT_SCHEDULER)
    alphas = noise_sched.alphas_cumprod.to(dev)
    T = noise_sched.config.num_train_timesteps
    bar = tqdm(total=cfg.steps, initial=run.step, desc=f"train {cfg.variant}", unit="step")
    t_start = time.perf_counter() - run.elapsed
    losses = []
    try:
        while run.step < cfg.steps:
            if time_budget_s is not None and time.perf_counter() - t_start > time_budget_s:
                log(f"time budget reached at step {run.step} of {cfg.steps}")
                break
            rows = index[torch.randint(len(index), (cfg.batch_size,), device=dev,
                                       generator=run.gen)]
            loss = _loss(policy, fields, rows, alphas, T, run.gen)
            run.opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(run.nets.parameters(), 1.0)
            run.opt.step()
            run.lr.step()
            run.ema.update(run.nets)
            run.step += 1
            losses.append(loss.item())
            bar.update(1)
            if run.step % 50 == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
            if run.step % cfg.save_every == 0:
                run.elapsed = time.perf_counter() - t_start
                run.save(state_file)
    finally:
        bar.close()
        run.elapsed = time.perf_counter() - t_start
        if run.step > 0:
            run.save(state_file)
    return losses


def _trained_checkpoint(start: Checkpoint, run: _Run, data: dict, windows: int,
                        losses: list[float], dev: torch.device) -> Checkpoint:
    """``start`` with the EMA weights, and the record of the run that trained them."""
    final = Checkpoint(copy.deepcopy(start.config), dict(start.tensors))
    shadow = run.ema.shadow
    final.tensors.update({f"model.{k}": v.cpu() for k, v in shadow.model.state_dict().items()})
    if shadow.obs_encoder is not None:
        final.tensors.update({f"obs_encoder.{k}": v.cpu()
                              for k, v in shadow.obs_encoder.state_dict().items()})
    final.config["training"] = {
        **asdict(run.cfg), "steps_done": run.step, "episodes": int(len(data["episode_ends"])),
        "windows": windows, "device": device_label(dev), "seconds": round(run.elapsed, 1),
        "final_loss": float(np.mean(losses[-200:])) if losses else None,
    }
    return final


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
    start = _starting_checkpoint(cfg, data, spec, init)
    policy = Policy(start, device="cpu")  # builds modules + normaliser from the config
    nets = Nets(policy.model, policy.obs_encoder).to(dev).train()
    policy.normalizer.to(dev)
    sampler = SequenceSampler(data, cfg.horizon, cfg.n_obs_steps, cfg.n_action_steps,
                              obs_keys=list(policy.obs_spec))
    fields = {k: torch.as_tensor(data[k]).to(dev) for k in (*policy.obs_spec, "action")}
    index = torch.as_tensor(sampler.indices).to(dev)
    run = _Run(cfg, nets, dev)
    if resume and state_file.is_file():
        run.resume(state_file, dev)
        log(f"resumed from step {run.step}")
    losses = _optimise(run, policy, fields, index, state_file, time_budget_s, log)
    save_native(_trained_checkpoint(start, run, data, len(sampler), losses, dev), out)
    log(f"wrote {out} after {run.step} steps in {run.elapsed / 60:.1f} min")
    return out
