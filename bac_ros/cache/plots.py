"""PNG figures of a profile and a schedule: similarity heatmaps, update raster, block errors."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from bac_ros.cache.profile import ProfileResult  # noqa: E402


def similarity_heatmaps(result: ProfileResult, metric: str, path: Path) -> Path:
    """One K x K heatmap per block (execution-order steps), in a grid by layer and kind."""
    mats, blocks = result.mean[metric], result.blocks
    kinds = sorted({b.kind for b in blocks}, key=["sa", "ca", "ffn"].index)
    layers = sorted({b.layer for b in blocks})
    fig, axes = plt.subplots(len(kinds), len(layers), squeeze=False,
                             figsize=(1.6 * len(layers) + 1, 1.6 * len(kinds) + 0.8))
    vmin, vmax = float(mats.min()), float(mats.max())
    im = None
    for i, block in enumerate(blocks):
        ax = axes[kinds.index(block.kind)][layers.index(block.layer)]
        im = ax.imshow(mats[i], vmin=vmin, vmax=vmax, cmap="viridis")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"L{block.layer} {block.kind}", fontsize=7)
    fig.colorbar(im, ax=axes, shrink=0.8, label=metric)
    fig.suptitle(f"step-to-step {metric} per block ({result.observations} observations)")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def update_raster(names: list[str], plan: np.ndarray, path: Path, title: str = "") -> Path:
    """Blocks x steps: a dark cell is an update (computed), a light one a reuse."""
    fig, ax = plt.subplots(figsize=(10, 0.22 * len(names) + 1.2))
    ax.imshow(plan.T, aspect="auto", cmap="Greys", interpolation="nearest")
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(names, fontsize=6)
    ax.set_xlabel("denoising step (execution order, 0 = noisiest)")
    ax.set_title(title or f"updates: {plan.sum()} of {plan.size} block-steps ({plan.mean():.1%})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def block_errors(result: ProfileResult, selected: list[str], path: Path) -> Path:
    """BUA's per-block error (mean pairwise l1), BUA-selected blocks highlighted."""
    names = [b.name for b in result.blocks]
    colors = ["tab:red" if n in selected else "tab:blue" for n in names]
    fig, ax = plt.subplots(figsize=(10, 3))
    ax.bar(range(len(names)), result.errors, color=colors)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels([n.replace("decoder.layers.", "L") for n in names], rotation=90, fontsize=6)
    ax.set_ylabel("mean pairwise l1")
    ax.set_title("block caching error (red: selected by the Bubbling Union)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
