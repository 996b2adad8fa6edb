"""Loading helpers shared by every policy class and the factory: a checkpoint from disk, and
weights into a module that must match its config exactly.

They live apart from the classes so that :mod:`bac_ros.policy.vla` and
:mod:`bac_ros.policy.factory` use them without importing each other through ``policy.py``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from bac_ros.policy.checkpoint import Checkpoint, CheckpointError, import_chi_ckpt, load_native


def load_checkpoint(path: str | Path) -> Checkpoint:
    path = Path(path)
    if path.is_dir():
        return load_native(path)
    if path.suffix == ".ckpt":
        return import_chi_ckpt(path)
    raise CheckpointError(
        f"{path} is neither a checkpoint folder (config.yaml + model.safetensors) nor a .ckpt file"
    )


def load_weights(module: torch.nn.Module, tensors: dict, what: str) -> None:
    """Load, allowing only aliased keys (same storage as another key) to be absent."""
    own = module.state_dict()
    ptrs: dict[int, str] = {}
    aliases = set()
    for k, v in own.items():
        if v.numel():
            p = v.untyped_storage().data_ptr() + v.storage_offset() * v.element_size()
            if p in ptrs:
                aliases.add(k)
            ptrs.setdefault(p, k)
    missing = sorted(set(own) - set(tensors) - aliases)
    unexpected = sorted(set(tensors) - set(own))
    if missing or unexpected:
        raise CheckpointError(
            f"{what} weights do not match its config: missing {missing[:4]}, unexpected "
            f"{unexpected[:4]} ({len(missing)} missing, {len(unexpected)} unexpected)"
        )
    for k, v in tensors.items():
        if own[k].shape != v.shape:
            raise CheckpointError(
                f"{what} weight {k} has shape {tuple(v.shape)}; its config expects "
                f"{tuple(own[k].shape)}"
            )
    module.load_state_dict(tensors, strict=False)
