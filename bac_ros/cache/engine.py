"""The denoising loop, driven by a static block plan.

Full compute is the plan ``None`` (every block updates at every step). A plan is a (K, blocks)
boolean array fixed before sampling, so nothing in the loop depends on data: noise is drawn up
front, scheduler constants are tabulated, and per-observation constants are hoisted by the
adapter's runner. On CUDA the whole loop can be captured once per plan as a graph and replayed.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, flop_registry, register_flop_formula

from bac_ros.cache.adapters import BlockAdapter, adapter_for
from bac_ros.cache.blocks import Block, BlockCache, Recorder
from bac_ros.cache.schedulers import StepTable


_SDPA_CPU = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
if _SDPA_CPU.default not in flop_registry and _SDPA_CPU not in flop_registry:

    @register_flop_formula(_SDPA_CPU)
    def _sdpa_cpu_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
        """torch counts SDPA's CUDA kernels only; the CPU one does the same two matmuls."""
        b, h, tq, d = query
        return 4 * b * h * tq * key[-2] * d


class DenoisingEngine:
    """Samples ``x_0`` for a batch of conditions with a diffusers scheduler and a block plan.

    ``fast=False`` runs the model's plain ``forward`` and the scheduler's own ``step`` (the
    reference path); ``fast=True`` uses the adapter's runner and the tabulated update, which
    are the same maths in a cheaper order (equal to float rounding).
    """

    def __init__(
        self,
        model: nn.Module,
        scheduler,
        num_inference_steps: int,
        adapter: BlockAdapter | None = None,
        fast: bool = True,
    ):
        self.model = model.eval()
        self.scheduler = scheduler
        self.adapter = adapter or adapter_for(model)
        self.cache = BlockCache(self.adapter.bind(model)).attach()
        scheduler.set_timesteps(num_inference_steps)
        self.timesteps = scheduler.timesteps.clone()
        self.fast = fast
        self.table = StepTable.from_scheduler(scheduler) if fast else None
        self._table_device = None

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)

    @property
    def blocks(self) -> list[Block]:
        return self.cache.blocks

    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    def draw_noise(
        self, shape: tuple[int, ...], generator: torch.Generator | None
    ) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        """Initial sample and per-step noise, drawn in the order diffusers' DDPM loop draws them
        (initial, then one draw after every step but the last), on CPU for reproducibility."""
        x = torch.randn(shape, generator=generator)
        stochastic = self.table.stochastic if self.table is not None else False
        steps = [torch.randn(shape, generator=generator) for _ in range(self.num_steps - 1)]
        return x, (steps + [torch.zeros(shape)] if stochastic else None)

    @torch.inference_mode()
    def sample(
        self,
        cond: torch.Tensor | None,
        shape: tuple[int, ...],
        generator: torch.Generator | None = None,
        plan: np.ndarray | None = None,
        recorder: Recorder | None = None,
        condition_data: torch.Tensor | None = None,
        condition_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Denoise from Gaussian noise to a (B, T, D) sample; ``cond`` is the model's condition.

        ``condition_data``/``condition_mask`` inpaint known entries before every step (Chi et
        al.'s convention for policies that put observations in the trajectory).
        """
        device = self._device()
        dtype = next(self.model.parameters()).dtype
        if plan is not None and len(plan) != self.num_steps:
            raise ValueError(
                f"plan has {len(plan)} steps but the sampler runs {self.num_steps}"
            )
        self.cache.attach().reset(plan)
        self.cache.recorder = recorder
        if self.table is not None and self._table_device != device:
            self.table, self._table_device = self.table.to(device), device
        fast_step = self.table is not None
        if fast_step:
            x, noise = self.draw_noise(shape, generator)
            noise = None if noise is None else torch.stack(noise).to(device, dtype)
        else:
            x, noise = torch.randn(shape, generator=generator), None
        x = x.to(device, dtype)
        if cond is not None:
            cond = cond.to(device, dtype)
        step_fn = self.adapter.runner(self.model, cond, self.timesteps, fast=self.fast)
        inpaint = condition_mask is not None
        try:
            for k in range(self.num_steps):
                self.cache.step = k
                if inpaint:
                    x[condition_mask] = condition_data[condition_mask]
                out = step_fn(x, k)
                if fast_step:
                    x = self.table.step(k, out, x, None if noise is None else noise[k])
                else:
                    t = self.timesteps[k]
                    x = self.scheduler.step(out, t, x, generator=generator).prev_sample
            if inpaint:
                x[condition_mask] = condition_data[condition_mask]
        finally:
            self.cache.recorder = None
        return x

    def measure_flops(
        self, cond: torch.Tensor | None, shape: tuple[int, ...]
    ) -> tuple[np.ndarray, float]:
        """FLOPs per block per step and FLOPs per step outside the blocks (counted, not guessed:
        one full-compute sample under torch's FlopCounterMode; per-observation set-up is spread
        over the steps)."""
        per_block = np.zeros(len(self.blocks))
        with FlopCounterMode(display=False) as counter:

            def wrapper(index, fn, args, kwargs):
                before = counter.get_total_flops()
                out = fn(*args, **kwargs)
                per_block[index] += counter.get_total_flops() - before
                return out

            self.cache.wrapper = wrapper
            try:
                self.sample(cond, shape, generator=torch.Generator().manual_seed(0))
            finally:
                self.cache.wrapper = None
            total = counter.get_total_flops()
        K = self.num_steps
        return per_block / K, (total - per_block.sum()) / K


def plan_flops(plan: np.ndarray | None, block_flops: np.ndarray, overhead: float, K: int) -> float:
    """Total FLOPs of one sample under ``plan`` (None = full compute)."""
    updates = np.full(len(block_flops), K) if plan is None else np.asarray(plan).sum(axis=0)
    return float(overhead * K + (updates * block_flops).sum())
