"""Profiling: every block's output at every step of full-compute sampling, reduced on the fly.

Per observation the recorder keeps one (K, D) buffer per block (on the model's device); after
each batch those buffers are reduced to K x K matrices and folded into running statistics, so
memory stays at one batch of features however many observations are profiled.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

from bac_ros.cache.blocks import Block, Recorder
from bac_ros.cache.engine import DenoisingEngine
from bac_ros.cache.similarity import METRICS, RunningStats, pairwise_l1_error, similarity_matrix

T = TypeVar("T")


@dataclass
class ProfileResult:
    """Per-block similarity matrices (mean and spread over observations) and BUA errors."""

    blocks: list[Block]
    num_steps: int
    observations: int
    mean: dict[str, np.ndarray]  # metric -> (n_blocks, K, K)
    std: dict[str, np.ndarray]
    errors: np.ndarray  # (n_blocks,) mean pairwise l1 error, averaged over observations

    def save(self, path: str | Path) -> Path:
        """npz beside the schedule, so plots can be redrawn without profiling again."""
        arrays = {f"mean_{m}": v.astype(np.float32) for m, v in self.mean.items()}
        arrays.update({f"std_{m}": v.astype(np.float32) for m, v in self.std.items()})
        np.savez_compressed(
            path, names=np.array([b.name for b in self.blocks]),
            layers=np.array([b.layer for b in self.blocks]),
            kinds=np.array([b.kind for b in self.blocks]), errors=self.errors,
            num_steps=self.num_steps, observations=self.observations, **arrays,
        )
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> ProfileResult:
        d = np.load(path)
        blocks = [Block(str(n), int(l), str(k))
                  for n, l, k in zip(d["names"], d["layers"], d["kinds"])]
        metrics = [k[len("mean_"):] for k in d.files if k.startswith("mean_")]
        return cls(blocks, int(d["num_steps"]), int(d["observations"]),
                   {m: d[f"mean_{m}"] for m in metrics}, {m: d[f"std_{m}"] for m in metrics},
                   d["errors"])


def profile(
    engine: DenoisingEngine,
    batches: Iterable[T],
    run: Callable[[T, torch.Generator, Recorder], None],
    seed: int = 0,
    metrics: tuple[str, ...] = METRICS,
    progress: Callable[[int], None] | None = None,
) -> ProfileResult:
    """Run full compute on each batch of observations and accumulate block statistics.

    ``run(batch, generator, recorder)`` samples one batch with ``engine`` (full compute) passing
    the recorder on; ``progress(n)`` is told how many observations each finished batch held.
    """
    n_blocks, K = len(engine.blocks), engine.num_steps
    stats = {m: [RunningStats() for _ in range(n_blocks)] for m in metrics}
    err_stats = [RunningStats() for _ in range(n_blocks)]
    generator = torch.Generator().manual_seed(seed)
    feats: list[torch.Tensor | None] = [None] * n_blocks
    total = 0

    def record(step: int, index: int, out: torch.Tensor) -> None:
        buf = feats[index]
        if buf is None:
            buf = feats[index] = torch.empty(
                (K, *out.shape), dtype=torch.float32, device=out.device
            )
        buf[step] = out

    for batch in batches:
        feats = [None] * n_blocks
        run(batch, generator, record)
        n = feats[0].shape[1]
        for b in range(n_blocks):
            f = feats[b].transpose(0, 1)  # (B, K, ...)
            for obs in f:
                mats = {m: similarity_matrix(obs, m) for m in {*metrics, "l1"}}
                for m in metrics:
                    stats[m][b].add(mats[m])
                err_stats[b].add(torch.tensor(pairwise_l1_error(mats["l1"])))
        total += n
        if progress is not None:
            progress(n)
    if total == 0:
        raise ValueError("no observations to profile; expected at least one")
    return ProfileResult(
        blocks=engine.blocks,
        num_steps=K,
        observations=total,
        mean={m: np.stack([s.mean.numpy() for s in stats[m]]) for m in metrics},
        std={m: np.stack([s.std.numpy() for s in stats[m]]) for m in metrics},
        errors=np.array([float(s.mean) for s in err_stats]),
    )
