"""Policies from checkpoints: :func:`load_policy` builds the class registered for the
checkpoint's ``policy.kind`` (DP-T :class:`~bac_ros.policy.policy.Policy` for ``dpt_lowdim`` and
``dpt_image``, :class:`~bac_ros.policy.vla.VLAPolicy` for ``rdt``) and sets its schedule.

Classes register their kinds with :func:`register_policy`. This module imports no policy class
(the classes import it), so the import graph stays free of cycles; the package's ``__init__``
imports the built-in classes, so every kind is registered whichever module is imported first.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from bac_ros.cache.schedule import Schedule
from bac_ros.policy.checkpoint import Checkpoint, CheckpointError
from bac_ros.policy.loading import load_checkpoint

_CLASSES: dict[str, type] = {}


def register_policy(*kinds: str) -> Callable[[type], type]:
    """Class decorator: checkpoints of these ``policy.kind`` values are built with the class."""

    def register(cls: type) -> type:
        for kind in kinds:
            if kind in _CLASSES:
                raise ValueError(f"policy kind {kind!r} is already built by "
                                 f"{_CLASSES[kind].__name__}; register each kind once")
            _CLASSES[kind] = cls
        return cls

    return register


def policy_class(kind: str) -> type:
    """The class that builds checkpoints of ``kind``."""
    if kind not in _CLASSES:
        raise CheckpointError(f"checkpoint policy kind {kind!r} has no policy class; expected "
                              f"one of {sorted(_CLASSES)}")
    return _CLASSES[kind]


def load_policy(source: str | Path | Checkpoint, device: str = "auto", dtype: str = "float32",
                schedule: str | Path | Schedule | None = None, cls: type | None = None):
    """A policy from a checkpoint folder, a Chi et al. ``.ckpt`` or a loaded :class:`Checkpoint`,
    of the class its ``policy.kind`` names (``cls`` instead, when given), on ``device`` in
    ``dtype``, sampling under ``schedule`` (see ``Policy.set_schedule``)."""
    checkpoint = source if isinstance(source, Checkpoint) else load_checkpoint(source)
    if cls is None:
        cls = policy_class(checkpoint.config.get("policy", {}).get("kind"))
    policy = cls(checkpoint, device=device, dtype=dtype)
    policy.set_schedule(schedule)
    return policy
