"""Noise schedulers (diffusers) built from checkpoint config, and their update tabulated.

A diffusers ``step`` call costs tens of microseconds of Python per denoising step, which matters
once cached blocks make the network cheap. For DDPM and DDIM (epsilon or sample prediction) the
update is ``prev = c_x0 * clip(x0) + c_x * x + c_eps * eps + sigma * noise`` with per-step
constants, so :class:`StepTable` computes those constants once from the scheduler's own
``alphas_cumprod`` and timesteps. Every other scheduler runs through its own ``step``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
)

# FlowMatchEulerDiscreteScheduler integrates a velocity head (pi0 / GR00T style flow matching):
# x starts as noise at sigma = 1 and moves by (sigma_next - sigma) * v; the model sees
# timestep = sigma * num_train_timesteps.
SCHEDULERS = {
    "DDPMScheduler": DDPMScheduler,
    "DDIMScheduler": DDIMScheduler,
    "DPMSolverMultistepScheduler": DPMSolverMultistepScheduler,
    "FlowMatchEulerDiscreteScheduler": FlowMatchEulerDiscreteScheduler,
}

# Chi et al.'s DP-T defaults: the training noise schedule, and the denoising steps a checkpoint
# samples with when its config names none.
DEFAULT_INFERENCE_STEPS = 100
DEFAULT_SCHEDULER = dict(
    type="DDPMScheduler",
    num_train_timesteps=100,
    beta_start=0.0001,
    beta_end=0.02,
    beta_schedule="squaredcos_cap_v2",
    variance_type="fixed_small",
    clip_sample=True,
    prediction_type="epsilon",
)


def build_scheduler(config: dict):
    """``{"type": "DDPMScheduler", **kwargs}`` -> a diffusers scheduler instance."""
    config = dict(config)
    kind = config.pop("type", None) or config.pop("_target_", "").rsplit(".", 1)[-1]
    if kind not in SCHEDULERS:
        raise ValueError(f"unknown scheduler type {kind!r}; expected one of {sorted(SCHEDULERS)}")
    return SCHEDULERS[kind](**config)


def scheduler_config(scheduler) -> dict:
    """The scheduler's config as plain data (for config.yaml and fingerprints)."""
    cfg = {k: v for k, v in dict(scheduler.config).items() if not k.startswith("_")}
    cfg = {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()}
    return {"type": type(scheduler).__name__, **cfg}


@dataclass
class StepTable:
    """Per-step constants of an affine DDPM/DDIM update (index k = execution order).

    Plain Python floats: the update of step k is then a fixed sequence of tensor ops with no
    host-device traffic, which a CUDA graph can capture.
    """

    x0_from_x: list[float]  # x0 = x0_from_x * x + x0_from_out * model_output
    x0_from_out: list[float]
    c_x0: list[float]
    c_x: list[float]
    c_eps_x: list[float]  # eps = c_eps_x * x + c_eps_out * model_output (DDIM direction term)
    c_eps_out: list[float]
    sigma: list[float]
    clip: float | None

    @property
    def stochastic(self) -> bool:
        return any(s > 0 for s in self.sigma)

    def step(self, k: int, out: torch.Tensor, x: torch.Tensor, noise: torch.Tensor | None):
        x0 = self.x0_from_x[k] * x + self.x0_from_out[k] * out
        if self.clip is not None:
            x0 = x0.clamp(-self.clip, self.clip)
        prev = self.c_x0[k] * x0 + self.c_x[k] * x
        if self.c_eps_out[k] != 0 or self.c_eps_x[k] != 0:
            prev = prev + self.c_eps_x[k] * x + self.c_eps_out[k] * out
        if noise is not None and self.sigma[k] > 0:
            prev = prev + self.sigma[k] * noise
        return prev

    @classmethod
    def from_scheduler(cls, scheduler) -> StepTable | None:
        """Tabulate a scheduler whose ``set_timesteps`` was called; None if not affine here."""
        cfg = scheduler.config
        if not isinstance(scheduler, (DDPMScheduler, DDIMScheduler)):
            return None
        if cfg.prediction_type not in ("epsilon", "sample") or cfg.thresholding:
            return None
        if isinstance(scheduler, DDPMScheduler) and cfg.variance_type not in (
            "fixed_small",
            "fixed_large",
        ):
            return None
        ts = [int(t) for t in scheduler.timesteps]
        acp = scheduler.alphas_cumprod
        rows = []
        for i, t in enumerate(ts):
            if isinstance(scheduler, DDPMScheduler):
                prev_t = ts[i + 1] if i + 1 < len(ts) else -1
                a_prev = acp[prev_t] if prev_t >= 0 else scheduler.one
            else:
                prev_t = t - cfg.num_train_timesteps // scheduler.num_inference_steps
                a_prev = acp[prev_t] if prev_t >= 0 else scheduler.final_alpha_cumprod
            a_t = acp[t]
            b_t, b_prev = 1 - a_t, 1 - a_prev
            if cfg.prediction_type == "epsilon":
                x0x, x0o = 1 / a_t**0.5, -(b_t**0.5) / a_t**0.5
            else:
                x0x, x0o = torch.zeros(()), torch.ones(())
            if isinstance(scheduler, DDPMScheduler):
                cur_alpha = a_t / a_prev
                cur_beta = 1 - cur_alpha
                c_x0 = a_prev**0.5 * cur_beta / b_t
                c_x = cur_alpha**0.5 * b_prev / b_t
                if cfg.variance_type == "fixed_small":
                    var = torch.clamp(b_prev / b_t * cur_beta, min=1e-20)
                else:
                    var = cur_beta
                sigma = var**0.5 if t > 0 else torch.zeros(())
                ce_x, ce_o = torch.zeros(()), torch.zeros(())
            else:  # DDIM, eta = 0: deterministic
                c_x0, c_x, sigma = a_prev**0.5, torch.zeros(()), torch.zeros(())
                d = b_prev**0.5
                if cfg.prediction_type == "epsilon":
                    ce_x, ce_o = torch.zeros(()), d
                else:  # eps = (x - sqrt(a_t) x0_pred) / sqrt(b_t), x0_pred = model output
                    ce_x, ce_o = d / b_t**0.5, -d * a_t**0.5 / b_t**0.5
            rows.append([x0x, x0o, c_x0, c_x, ce_x, ce_o, sigma])
        # Rounded to float32 first: the values diffusers' own float32 arithmetic uses.
        cols = torch.tensor([[float(v) for v in r] for r in rows], dtype=torch.float32).T
        clip = float(cfg.clip_sample_range) if cfg.clip_sample else None
        return cls(*(c.tolist() for c in cols), clip=clip)


def noise_levels(scheduler, timesteps) -> list[tuple[float, float]]:
    """``(a_k, b_k)`` per step, such that the sample entering step k is ``a_k * x0 + b_k * noise``
    (how a clean target is noised to the level the sampler is at: inpainting, warm starts).

    Variance-preserving schedulers (DDPM, DDIM, DPM-Solver) read ``alphas_cumprod`` at each
    timestep; flow matching interpolates, ``x = (1 - sigma) x0 + sigma noise``."""
    if isinstance(scheduler, FlowMatchEulerDiscreteScheduler):
        sigmas = [float(s) for s in scheduler.sigmas[: len(timesteps)]]
        return [(1.0 - s, s) for s in sigmas]
    acp = scheduler.alphas_cumprod
    return [(float(acp[int(t)]) ** 0.5, float(1 - acp[int(t)]) ** 0.5) for t in timesteps]
