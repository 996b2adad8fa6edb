"""Observation histories from message streams: one implementation for live topics and bags.

Each policy observation key has a source topic (relative, so users remap): camera keys read
``sensor_msgs/Image`` on the key's name (``image``; or ``sensor_msgs/CompressedImage`` on
``image/compressed``), ``joints`` reads ``sensor_msgs/JointState``
on ``joint_states``, any other low-dim key reads ``std_msgs/Float32MultiArray`` on its name.
The assembler keeps the latest value of each key and, every ``dt`` of message time, appends a
snapshot to an ``n_obs_steps`` history: the 10 Hz frames the policy was trained on.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from bac_ros.io.messages import (
    MessageError,
    compressed_to_rgb,
    image_to_rgb,
    joint_positions,
    vector,
)

IMAGE, JOINT_STATE, VECTOR = "sensor_msgs/msg/Image", "sensor_msgs/msg/JointState", \
    "std_msgs/msg/Float32MultiArray"
COMPRESSED = "sensor_msgs/msg/CompressedImage"


@dataclass(frozen=True)
class Source:
    key: str
    topic: str
    msgtype: str


def observation_sources(obs_spec: Mapping[str, tuple[tuple[int, ...], str]],
                        compressed: bool = False) -> list[Source]:
    """Sources of each key; with ``compressed``, cameras read ``<key>/compressed``."""
    out = []
    for key, (_, kind) in obs_spec.items():
        if kind == "rgb":
            out.append(Source(key, f"{key}/compressed", COMPRESSED) if compressed
                       else Source(key, key, IMAGE))
        elif key == "joints":
            out.append(Source(key, "joint_states", JOINT_STATE))
        else:
            out.append(Source(key, key, VECTOR))
    return out


def converter(source: Source, shape: tuple[int, ...], joint_names: Sequence[str],
              camera_frame: str | None = None) -> Callable:
    """message -> numpy observation value for one source (raises MessageError); with
    ``camera_frame``, images whose ``header.frame_id`` names another camera are refused."""
    if source.msgtype in (IMAGE, COMPRESSED):
        hw = (int(shape[1]), int(shape[2]))
        decode = image_to_rgb if source.msgtype == IMAGE else compressed_to_rgb
        if camera_frame is None:
            return lambda msg: decode(msg, hw)

        def checked(msg):
            if msg.header.frame_id != camera_frame:
                raise MessageError(
                    f"image frame_id is {msg.header.frame_id!r}; this policy was trained on "
                    f"the {camera_frame!r} camera and reads only images whose frame_id names it")
            return decode(msg, hw)

        return checked
    if source.msgtype == JOINT_STATE:
        if len(joint_names) != shape[0]:
            raise ValueError(
                f"joint_names lists {len(joint_names)} joints but the policy's 'joints' "
                f"observation has {shape[0]}"
            )
        return lambda msg: joint_positions(msg, joint_names)
    return lambda msg: vector(msg, int(np.prod(shape)))


def converters(sources: Sequence[Source], policy, joint_names: Sequence[str]
               ) -> dict[str, Callable]:
    """:func:`converter` of every source of ``policy``, images checked against its camera."""
    return {s.key: converter(s, policy.obs_spec[s.key][0], joint_names, policy.camera_frame)
            for s in sources}


class ObservationAssembler:
    """Latest value per key; a frame of the primary key (the camera, else the first key)
    appends a snapshot of all keys to the last-``n_obs_steps`` history, at most once per
    ``dt`` of its stamps: faster cameras are decimated to the policy's rate. A frame more than
    ``dt + max_age`` after the previous one (a gap beyond the history's own spacing) starts the
    history afresh (its older frames are stale, and would be read as one step earlier): after a
    sensor gap, as after a bag's episode break, the policy sees the new frame repeated, as at
    the start of an episode."""

    def __init__(self, keys: Sequence[str], n_obs_steps: int, dt: float, max_age: float,
                 primary: str | None = None):
        self.keys = list(keys)
        self.primary = primary or self.keys[0]
        self.dt, self.max_age = dt, max_age
        self.latest: dict[str, tuple[np.ndarray, float]] = {}
        self.history: deque = deque(maxlen=n_obs_steps)
        self._last_frame = -np.inf

    def add(self, key: str, value: np.ndarray, stamp: float) -> bool:
        """Store a value; returns True when it completed a new history frame."""
        prev = self.latest.get(key)
        if prev is not None and stamp < prev[1]:
            raise ValueError(
                f"{key} stamp {stamp:.3f} is older than the last one ({prev[1]:.3f}); "
                "expected stamps that do not go backwards"
            )
        self.latest[key] = (value, stamp)
        if key != self.primary or stamp < self._last_frame + 0.9 * self.dt:
            return False
        if self.stale_keys(stamp):
            return False
        if stamp - self._last_frame > self.dt + self.max_age:
            self.history.clear()
        self._last_frame = stamp
        self.history.append(({k: self.latest[k][0] for k in self.keys}, stamp))
        return True

    def clear(self) -> None:
        """Forget every value and frame (after the clock jumped back)."""
        self.latest.clear()
        self.history.clear()
        self._last_frame = -np.inf

    def stale_keys(self, now: float) -> list[str]:
        """Keys with no value yet, or whose newest value is older than ``max_age``."""
        return [k for k in self.keys
                if k not in self.latest or now - self.latest[k][1] > self.max_age]

    @property
    def ready(self) -> bool:
        return len(self.history) > 0

    def window(self) -> tuple[dict[str, np.ndarray], float]:
        """The observation history (To, ...) per key and the stamp of its newest frame; until
        ``n_obs_steps`` frames exist the first one is repeated, as in training."""
        frames = list(self.history)
        frames = [frames[0]] * (self.history.maxlen - len(frames)) + frames
        return ({k: np.stack([f[k] for f, _ in frames]) for k in self.keys}, frames[-1][1])


def primary_key(obs_spec: Mapping[str, tuple[tuple[int, ...], str]]) -> str:
    return next((k for k, (_, kind) in obs_spec.items() if kind == "rgb"), next(iter(obs_spec)))


def windows_from_messages(
    messages: Iterable[tuple[str, float, object]],
    sources: Sequence[Source],
    converters: Mapping[str, Callable],
    assembler: ObservationAssembler,
) -> list[dict[str, np.ndarray]]:
    """(topic, stamp, message) in time order -> every observation history the policy node
    would have built from them."""
    by_topic = {s.topic: s for s in sources}
    out = []
    for topic, stamp, msg in messages:
        src = by_topic.get(topic)
        if src is not None and assembler.add(src.key, converters[src.key](msg), stamp) \
                and assembler.ready:
            out.append(assembler.window()[0])
    return out
