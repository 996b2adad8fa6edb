"""Blocks and the hook that caches them.

A *block* is one residual branch of a transformer layer (self-attention, cross-attention or FFN):
``x = x + branch(x, ...)``. An adapter names a model's blocks as (module, method) pairs; the
:class:`BlockCache` hook replaces each such method on its module instance (the model's code is
not touched, as with diffusers' hooks) and, following a static plan, either computes the branch
and stores the result or returns the stored result. Removing the hooks restores the model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

KINDS = ("sa", "ca", "ffn")
OWNER_ATTR = "_bac_block_cache"


@dataclass(frozen=True)
class Block:
    """A block's stable identity: its name in schedule files, its layer index and its kind."""

    name: str
    layer: int
    kind: str

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"block {self.name!r} has kind {self.kind!r}; expected one of {KINDS}")


@dataclass(frozen=True)
class BlockBinding:
    """Where a block lives: ``getattr(module, method)(...)`` returns the branch output."""

    block: Block
    module: nn.Module
    method: str


Recorder = Callable[[int, int, torch.Tensor], None]
Wrapper = Callable[[int, Callable, tuple, dict], torch.Tensor]


def checked_plan(plan, n_blocks: int, num_steps: int | None = None) -> np.ndarray:
    """``plan`` as a (K, n_blocks) boolean array whose first step updates every block (with
    K = ``num_steps`` when given), else a ValueError saying what it was."""
    plan = np.asarray(plan, dtype=bool)
    if plan.ndim != 2 or plan.shape[1] != n_blocks or not plan[0].all():
        raise ValueError(
            f"plan must be a (K, {n_blocks}) boolean array whose first step "
            f"updates every block; got shape {plan.shape}"
        )
    if num_steps is not None and len(plan) != num_steps:
        raise ValueError(f"plan has {len(plan)} steps but the sampler runs {num_steps}")
    return plan


class BlockCache:
    """Plan-driven compute-or-reuse for a set of bound blocks.

    ``plan`` is a (K, n_blocks) boolean array in execution order; ``step`` is advanced by the
    sampler. A reuse returns the tensor stored at the block's last update. ``calls`` counts
    real branch computations per block (for tests and reports); ``recorder`` sees every
    computed branch output (profiling); ``wrapper``, when set, makes each computation (FLOP
    counting).
    """

    def __init__(self, bindings: list[BlockBinding]):
        self.bindings = bindings
        self.plan: np.ndarray | None = None
        self.step = 0
        self.store: list[torch.Tensor | None] = [None] * len(bindings)
        self.calls = np.zeros(len(bindings), dtype=np.int64)
        self.recorder: Recorder | None = None
        self.wrapper: Wrapper | None = None
        self._attached = False

    @property
    def blocks(self) -> list[Block]:
        return [b.block for b in self.bindings]

    def reset(self, plan: np.ndarray | None) -> None:
        """Start a new sampling run under ``plan`` (None = compute everything)."""
        self.plan = None if plan is None else checked_plan(plan, len(self.bindings))
        self.step = 0
        self.store = [None] * len(self.bindings)

    def _run(self, index: int, fn: Callable, args, kwargs):
        plan = self.plan
        if plan is None or plan[self.step, index]:
            if self.wrapper is None:
                out = fn(*args, **kwargs)
            else:
                out = self.wrapper(index, fn, args, kwargs)
            self.calls[index] += 1
            if plan is not None:
                self.store[index] = out
            if self.recorder is not None:
                self.recorder(self.step, index, out)
            return out
        return self.store[index]

    def attach(self) -> BlockCache:
        """Install the hooks (instance attributes shadowing the bound methods).

        A module carries one cache at a time: attaching takes the blocks over from any other
        cache (several engines may share a model, one sampling at a time).
        """
        for binding in self.bindings:
            owner = getattr(binding.module, OWNER_ATTR, None)
            if owner is not None and owner is not self:
                owner.detach()
        if self._attached:
            return self
        for index, binding in enumerate(self.bindings):
            original = getattr(type(binding.module), binding.method).__get__(binding.module)

            def hooked(*args, _i=index, _fn=original, **kwargs):
                return self._run(_i, _fn, args, kwargs)

            setattr(binding.module, binding.method, hooked)
            setattr(binding.module, OWNER_ATTR, self)
        self._attached = True
        return self

    def detach(self) -> None:
        for binding in self.bindings:
            if getattr(binding.module, OWNER_ATTR, None) is self:
                vars(binding.module).pop(binding.method, None)
                vars(binding.module).pop(OWNER_ATTR, None)
        self._attached = False
