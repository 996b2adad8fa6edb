"""Step-to-step similarity of a block's output, and the error statistics BUA ranks blocks by.

For one observation, a block's outputs over K steps are ``F`` (K x D). ``cosine`` is higher for
more similar steps; ``l1`` (mean absolute difference) and ``mse`` are distances (lower is
better). Matrices are averaged over observations with a streaming mean/variance, so profiling
memory does not grow with the number of observations.
"""

from __future__ import annotations

import numpy as np
import torch

METRICS = ("cosine", "l1", "mse")
DISTANCES = ("l1", "mse")


def similarity_matrix(features: torch.Tensor, metric: str) -> torch.Tensor:
    """(K, D) features of one observation -> (K, K) matrix, computed in float32."""
    f = features.reshape(features.shape[0], -1).float()
    if metric == "cosine":
        n = torch.nn.functional.normalize(f, dim=1)
        return n @ n.T
    if metric == "l1":
        return torch.cdist(f, f, p=1) / f.shape[1]
    if metric == "mse":  # |a-b|^2 = |a|^2 + |b|^2 - 2ab: one matmul, much faster than cdist
        sq = f.square().sum(1)
        d = (sq[:, None] + sq[None, :] - 2 * f @ f.T).clamp_min(0) / f.shape[1]
        return d.fill_diagonal_(0)
    raise ValueError(f"unknown similarity metric {metric!r}; expected one of {METRICS}")


def pairwise_l1_error(l1: np.ndarray | torch.Tensor) -> float:
    """BUA's block error: mean over step pairs i < j of mean|F_i - F_j| (the l1 upper triangle)."""
    m = torch.as_tensor(l1)
    i, j = torch.triu_indices(m.shape[0], m.shape[1], offset=1)
    return float(m[i, j].mean())


class RunningStats:
    """Streaming mean and (population) standard deviation of equally shaped arrays (Welford)."""

    def __init__(self):
        self.count = 0
        self.mean: torch.Tensor | None = None
        self._m2: torch.Tensor | None = None

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().double().cpu()
        self.count += 1
        if self.mean is None:
            self.mean, self._m2 = x.clone(), torch.zeros_like(x)
            return
        delta = x - self.mean
        self.mean += delta / self.count
        self._m2 += delta * (x - self.mean)

    @property
    def std(self) -> torch.Tensor:
        return (self._m2 / max(self.count, 1)).sqrt()
