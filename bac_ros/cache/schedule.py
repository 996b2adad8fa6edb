"""Schedule files: a compiled cache plan with everything needed to refuse a wrong one.

YAML, human-readable, versioned. A schedule is tied to one model (fingerprint of architecture
config and weights), one sampler (scheduler type and step count) and block names; loading it for
anything else is an error, never a silent fallback. Writes are atomic (temp file + rename).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml

from bac_ros import __version__
from bac_ros.cache.blocks import Block
from bac_ros.cache.plans import plan_from_steps

FORMAT = "bac_ros/schedule"
VERSION = 1


class ScheduleError(ValueError):
    """A schedule file that cannot be used with this model or sampler."""


def yaml_problem(error: yaml.YAMLError) -> str:
    """A YAML parse error in one line (PyYAML's own text spans several, with a caret)."""
    mark = getattr(error, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return where + " ".join(str(getattr(error, "problem", None) or error).split())


def model_fingerprint(config: dict, state_dict: dict[str, torch.Tensor]) -> str:
    """sha256 of the architecture config and every tensor's name, dtype, shape and bytes."""
    h = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


@dataclass
class Schedule:
    """Per-block sorted update steps plus how they were made."""

    fingerprint: str
    sampler: dict  # {"type": ..., "num_inference_steps": K}
    steps: dict[str, list[int]]  # block name -> update steps (execution order, 0 first)
    method: dict = field(default_factory=dict)  # name, metric, budget, top_k, bua_blocks, ...
    provenance: dict = field(default_factory=dict)

    @property
    def num_steps(self) -> int:
        return int(self.sampler["num_inference_steps"])

    @property
    def warm_start(self) -> int:
        """Denoising steps a warm start from the previous chunk skips (sampler section
        ``warm_start: {skip: N}``; 0 when the file names none)."""
        return int((self.sampler.get("warm_start") or {}).get("skip", 0))

    @property
    def id(self) -> str:
        """Short content hash: what the policy node reports as its schedule id."""
        body = json.dumps([self.fingerprint, self.sampler, self.steps], sort_keys=True)
        return f"{self.method.get('name', 'plan')}-{hashlib.sha256(body.encode()).hexdigest()[:8]}"

    def update_ratio(self) -> float:
        return sum(len(s) for s in self.steps.values()) / (len(self.steps) * self.num_steps)

    def plan(self, blocks: list[Block]) -> np.ndarray:
        """The (K, n_blocks) plan in the engine's block order; block names must match exactly."""
        names = [b.name for b in blocks]
        missing = [n for n in names if n not in self.steps]
        unknown = [n for n in self.steps if n not in names]
        if missing or unknown:
            raise ScheduleError(
                f"schedule block names do not match the model: unknown {unknown[:3]}, "
                f"missing {missing[:3]}; expected exactly {len(names)} blocks such as {names[0]!r}"
            )
        return plan_from_steps([self.steps[n] for n in names], self.num_steps)

    def validate_for(self, fingerprint: str, sampler_type: str, num_steps: int,
                     blocks: list[Block]) -> np.ndarray:
        """Check the schedule fits this model and sampler; return its plan."""
        if self.fingerprint != fingerprint:
            raise ScheduleError(
                f"schedule was compiled for model {self.fingerprint}, but the loaded model is "
                f"{fingerprint}; profile this model to get a schedule for it"
            )
        if self.sampler.get("type") != sampler_type or self.num_steps != num_steps:
            raise ScheduleError(
                f"schedule is for {self.sampler.get('type')} with {self.num_steps} steps, but "
                f"the policy samples with {sampler_type} with {num_steps} steps"
            )
        return self.plan(blocks)

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "version": VERSION,
            "id": self.id,
            "model": {"fingerprint": self.fingerprint},
            "sampler": self.sampler,
            "method": self.method,
            "provenance": self.provenance,
            "update_ratio": round(self.update_ratio(), 6),
            "blocks": {name: [int(s) for s in steps] for name, steps in self.steps.items()},
        }

    def save(self, path: str | Path) -> Path:
        """Write atomically: a crash mid-write never leaves a half file at ``path``."""
        text = yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None, width=100)
        return write_atomically(path, text.encode())

    @classmethod
    def load(cls, path: str | Path) -> Schedule:
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text())
        except FileNotFoundError:
            raise ScheduleError(f"schedule file {path} does not exist") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ScheduleError(f"schedule file {path} cannot be read as text ({e})") from None
        except yaml.YAMLError as e:
            raise ScheduleError(
                f"schedule file {path} is not valid YAML ({yaml_problem(e)})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ScheduleError(f"{path} is not a bac_ros schedule file (format: {FORMAT})")
        if data.get("version") != VERSION:
            raise ScheduleError(
                f"{path} has schedule format version {data.get('version')}; this bac_ros reads "
                f"version {VERSION}"
            )
        try:
            sched = cls(
                fingerprint=str(data["model"]["fingerprint"]),
                sampler=dict(data["sampler"]),
                steps={str(k): [int(s) for s in v] for k, v in data["blocks"].items()},
                method=dict(data.get("method") or {}),
                provenance=dict(data.get("provenance") or {}),
            )
            K = sched.num_steps
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ScheduleError(
                f"{path} lacks a required field or has a malformed one ({e!r}); expected model."
                "fingerprint, sampler.type, sampler.num_inference_steps and blocks"
            ) from None
        warm = sched.sampler.get("warm_start")
        if warm is not None and not (
                isinstance(warm, dict) and set(warm) == {"skip"} and type(warm["skip"]) is int
                and 0 <= warm["skip"] < K):
            raise ScheduleError(
                f"{path}: sampler.warm_start is {warm!r}; expected {{skip: N}} with N the "
                f"denoising steps a warm start skips, 0 <= N < {K}"
            )
        for name, steps in sched.steps.items():
            if not steps or steps != sorted(set(steps)) or steps[0] != 0 or steps[-1] >= K:
                raise ScheduleError(
                    f"{path}: block {name!r} has update steps {steps[:5]}...; expected sorted "
                    f"unique steps starting at 0 and below {K}"
                )
        return sched


def write_atomically(path: str | Path, data: bytes) -> Path:
    """Temp file in the same folder, fsync, rename: readers see the old file or the whole new
    one, never a half-written one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def source_digest(path: str | Path) -> dict:
    """The profiled data by name and content: the file's sha256 (what ``sha256sum`` prints), or
    for a folder such as a rosbag2 one sha256 per file by relative path. An absolute path names
    one machine's temporary file; the hash still identifies the data wherever it was copied."""
    path = Path(path)
    if path.is_dir():
        files = sorted(f for f in path.rglob("*") if f.is_file())
        if not files:
            raise ValueError(f"{path} is an empty folder; expected an observation file or a bag")
        return {"source": path.name,
                "sha256": {f.relative_to(path).as_posix(): file_sha256(f) for f in files}}
    return {"source": path.name, "sha256": file_sha256(path)}


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def provenance(source: str | Path, observations: int) -> dict:
    """How a schedule was made. ``source`` is a path to the observations (file or bag folder),
    recorded by name and hash, or a description of data that is no file (live topics,
    generated demonstrations), recorded as given."""
    what = source_digest(source) if isinstance(source, Path) else {"source": source}
    return {
        **what,
        "observations": int(observations),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "tool": f"bac_ros {__version__}",
    }
