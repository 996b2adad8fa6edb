"""The denoising loop, driven by a static block plan.

Full compute is the plan ``None`` (every block updates at every step). A plan is a (K, blocks)
boolean array fixed before sampling, so nothing in the loop depends on data: noise is drawn up
front, scheduler constants are tabulated, and what depends only on the observation and the step
schedule is computed once by the model's ``prepare``. On CUDA the whole loop can be captured once
per plan as a graph and replayed.

The engine knows no model. It drives one through its per-step interface:
``context = model.prepare(cond, timesteps)`` once per sample (``timesteps``: the K steps'), then
``model.step(x, k, context)`` at step k, the model's ``forward(x, timesteps[k], cond)`` being
the same code for one timestep. A model without ``prepare``/``step`` runs ``forward`` per step.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, flop_registry, register_flop_formula

from bac_ros.cache.adapters import BlockAdapter, adapter_for
from bac_ros.cache.blocks import Block, BlockCache, Recorder, checked_plan
from bac_ros.cache.schedulers import StepTable, noise_levels

_SDPA_CPU = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
if _SDPA_CPU.default not in flop_registry and _SDPA_CPU not in flop_registry:

    @register_flop_formula(_SDPA_CPU)
    def _sdpa_cpu_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
        """torch counts SDPA's CUDA kernels only; the CPU one does the same two matmuls."""
        b, h, tq, d = query
        return 4 * b * h * tq * key[-2] * d


Generators = torch.Generator | list[torch.Generator] | None
"""One generator for the batch, or one per batch row (diffusers' convention)."""


def _check_rows(shape: tuple[int, ...], generators) -> None:
    if len(generators) != shape[0]:
        raise ValueError(f"got {len(generators)} generators for a batch of {shape[0]}; "
                         "expected one per row")


class DenoisingEngine:
    """Samples ``x_0`` for a batch of conditions with a diffusers scheduler and a block plan.

    ``fast=False`` runs the model's plain ``forward`` at every step and the scheduler's own
    ``step`` (the reference path); ``fast=True`` runs ``prepare`` once and ``step`` per step,
    with the tabulated update: the same maths in a cheaper order (equal to float rounding). On
    CUDA the fast path replays one captured graph per (plan, shape) when ``cuda_graphs`` is on.
    """

    def __init__(
        self,
        model: nn.Module,
        scheduler,
        num_inference_steps: int,
        adapter: BlockAdapter | None = None,
        fast: bool = True,
        cuda_graphs: bool = True,
    ):
        self.model = model.eval()
        self.scheduler = scheduler
        self.adapter = adapter or adapter_for(model)
        has = [callable(getattr(model, name, None)) for name in ("prepare", "step")]
        if has[0] != has[1]:
            raise TypeError(f"{type(model).__name__} defines {'prepare' if has[0] else 'step'} "
                            "but not the other; a model's per-step interface is both or neither")
        self._stepwise = has[0]
        self.cache = BlockCache(self.adapter.bind(model)).attach()
        scheduler.set_timesteps(num_inference_steps)
        self.timesteps = scheduler.timesteps.clone()
        self.levels = noise_levels(scheduler, self.timesteps)
        self._timesteps_dev: torch.Tensor | None = None
        self.fast = fast
        self.table = StepTable.from_scheduler(scheduler) if fast else None
        self.graphs = CudaGraphs() if fast and cuda_graphs else None

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)

    @property
    def blocks(self) -> list[Block]:
        return self.cache.blocks

    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    def draw_noise(
        self, shape: tuple[int, ...], generator: Generators
    ) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        """Initial sample and per-step noise, drawn in the order diffusers' DDPM loop draws them
        (initial, then one draw after every step but the last), on CPU for reproducibility.

        A list holds one generator per batch row, and each row draws from its own exactly as a
        batch of one would: a row's noise does not depend on which rows share its batch.
        """
        if isinstance(generator, (list, tuple)):
            _check_rows(shape, generator)
            rows = [self.draw_noise((1, *shape[1:]), g) for g in generator]
            x = torch.cat([r[0] for r in rows])
            if rows[0][1] is None:
                return x, None
            return x, [torch.cat(step) for step in zip(*(r[1] for r in rows))]
        x = torch.randn(shape, generator=generator)
        stochastic = self.table.stochastic if self.table is not None else False
        steps = [torch.randn(shape, generator=generator) for _ in range(self.num_steps - 1)]
        return x, (steps + [torch.zeros(shape)] if stochastic else None)

    @torch.inference_mode()
    def sample(
        self,
        cond: torch.Tensor | None,
        shape: tuple[int, ...],
        generator: Generators = None,
        plan: np.ndarray | None = None,
        recorder: Recorder | None = None,
        condition_data: torch.Tensor | None = None,
        condition_mask: torch.Tensor | None = None,
        noised_condition: torch.Tensor | None = None,
        init: torch.Tensor | None = None,
        start_step: int = 0,
    ) -> torch.Tensor:
        """Denoise from Gaussian noise to a (B, T, D) sample; ``cond`` is the model's condition.

        ``condition_data``/``condition_mask`` inpaint known entries before every step and after
        the last. A boolean mask replaces them (Chi et al.'s convention for policies that put
        observations in the trajectory); a float mask in [0, 1] blends, ``x <- lerp(x, data,
        w)``, exact at 0 and 1 (soft weights over a seam, as real-time chunking uses). Entries
        where ``noised_condition`` is true are first noised to the level of the step (``a_k *
        data + b_k * fresh noise``): a clean target inpainted into a noisy sample must carry
        that step's noise (RePaint), while Chi et al.'s observations go in as they are.

        Warm start: with ``start_step`` s > 0 sampling starts from ``init`` (a clean estimate,
        e.g. the previous chunk shifted) noised to the level of step s and runs steps s..K-1;
        under a plan every block updates at step s, since nothing is cached yet. With s = 0
        ``init`` is not read: plain sampling, bit for bit.
        """
        device = self._device()
        dtype = next(self.model.parameters()).dtype
        if plan is not None:
            checked_plan(plan, len(self.blocks), self.num_steps)
        start = int(start_step)
        if not 0 <= start < self.num_steps:
            raise ValueError(f"start_step is {start_step}; expected 0 .. {self.num_steps - 1} "
                             "(steps skipped by a warm start)")
        if start and (init is None or tuple(init.shape) != tuple(shape)):
            raise ValueError(f"a warm start at step {start} needs init of shape {tuple(shape)}")
        if start and plan is not None:
            plan = np.array(plan, dtype=bool)
            plan[start] = True
        self.cache.attach().reset(plan)
        self.cache.recorder = recorder
        fast_step = self.table is not None
        if fast_step:
            x, noise = self.draw_noise(shape, generator)
            noise = None if noise is None else torch.stack(noise).to(device, dtype)
        elif isinstance(generator, (list, tuple)):
            _check_rows(shape, generator)
            x = torch.cat([torch.randn((1, *shape[1:]), generator=g) for g in generator])
            noise = None
        else:
            x, noise = torch.randn(shape, generator=generator), None
        cond_noise = None
        if noised_condition is not None:  # drawn after the sampler's noise, which stays as is
            cond_noise = torch.randn((self.num_steps, *shape), generator=generator)
            cond_noise = cond_noise.to(device, dtype)
            noised_condition = noised_condition.to(device)
        if condition_mask is not None and condition_mask.dtype != torch.bool:
            condition_mask = condition_mask.to(device, dtype)
        x = x.to(device, dtype)
        if start:
            a, b = self.levels[start]
            x = a * init.to(device, dtype) + b * x
        if cond is not None:
            cond = cond.to(device, dtype)
        try:
            graphable = recorder is None and self.cache.wrapper is None
            if self.graphs is not None and fast_step and graphable and device.type == "cuda":
                return self.graphs.run(self, cond, x, noise, plan, condition_data, condition_mask,
                                       (noised_condition, cond_noise), start)
            return self._loop(cond, x, noise, condition_data, condition_mask, generator,
                              noised_condition, cond_noise, start)
        finally:
            self.cache.recorder = None

    def _inpaint(self, k, x, data, mask, noised, cond_noise):
        """Put the known entries into x at the level of step k (k = K: the clean sample)."""
        if noised is not None and k < self.num_steps:
            a, b = self.levels[k]
            data = torch.where(noised, a * data + b * cond_noise[k], data)
        if mask.dtype == torch.bool:
            return torch.where(mask, data, x)
        return torch.lerp(x, data, mask)

    def _loop(self, cond, x, noise, condition_data, condition_mask, generator=None,
              noised=None, cond_noise=None, start=0):
        """Steps start..K-1; with the fast update a fixed op sequence (graph-capturable)."""
        device = x.device
        if self._timesteps_dev is None or self._timesteps_dev.device != device:
            self._timesteps_dev = self.timesteps.to(device)  # never copied inside a graph capture
        timesteps, model = self._timesteps_dev, self.model
        stepwise = self.fast and self._stepwise
        if stepwise:
            context, step = model.prepare(cond, timesteps), model.step
        if self.table is None:  # multistep solvers keep per-run state (step index, history)
            self.scheduler.set_timesteps(self.num_steps)
        inpaint = condition_mask is not None
        for k in range(start, self.num_steps):
            self.cache.step = k
            if inpaint:
                x = self._inpaint(k, x, condition_data, condition_mask, noised, cond_noise)
            out = step(x, k, context) if stepwise else model(x, timesteps[k], cond)
            if self.table is not None:
                x = self.table.step(k, out, x, None if noise is None else noise[k])
            else:
                x = self.scheduler.step(out, self.timesteps[k], x, generator=generator).prev_sample
        if inpaint:
            x = self._inpaint(self.num_steps, x, condition_data, condition_mask, noised,
                              cond_noise)
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


class CudaGraphs:
    """One captured CUDA graph of the whole K-step loop per (plan, input shapes).

    The plan is static, so the loop is a fixed sequence of kernels: capture it once, then copy
    the new condition and noise into the graph's input buffers and replay. Weights must not
    change after capture (call :meth:`clear` if they do).
    """

    def __init__(self, max_graphs: int = 8):
        self.max_graphs = max_graphs
        self._graphs: dict = {}

    def clear(self) -> None:
        self._graphs.clear()

    @staticmethod
    def _key(plan, *tensors):
        plan_key = None if plan is None else np.packbits(np.asarray(plan, bool)).tobytes()
        shapes = tuple(None if t is None else (tuple(t.shape), t.dtype) for t in tensors)
        return plan_key, shapes

    def run(self, engine: DenoisingEngine, cond, x, noise, plan, data, mask, seam=(None, None),
            start: int = 0) -> torch.Tensor:
        inputs = (cond, x, noise, data, mask, *seam)
        key = (self._key(plan, *inputs), start)
        entry = self._graphs.get(key)
        if entry is None:
            if len(self._graphs) >= self.max_graphs:
                self._graphs.pop(next(iter(self._graphs)))
            static = tuple(None if t is None else t.clone() for t in inputs)
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(2):  # warm up kernels and allocator outside the capture
                    engine.cache.reset(plan)
                    engine._loop(*static[:5], None, *static[5:], start)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            engine.cache.reset(plan)
            with torch.cuda.graph(graph):
                out = engine._loop(*static[:5], None, *static[5:], start)
            entry = self._graphs[key] = (graph, static, out)
        graph, static, out = entry
        for dst, src in zip(static, inputs):
            if dst is not None:
                dst.copy_(src)
        graph.replay()
        return out.clone()
