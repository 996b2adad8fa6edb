"""rosbag2 files (sqlite3 or mcap) through ``rosbags``: no ROS installation needed.

Reading gives the observation histories the policy node would build from the same topics
(:mod:`bac_ros.io.observer`); writing records the bundled task driven by its expert.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from bac_ros.io.messages import MessageError, stamp_seconds
from bac_ros.io.observer import (
    IMAGE,
    JOINT_STATE,
    VECTOR,
    ObservationAssembler,
    converters,
    observation_sources,
    primary_key,
    windows_from_messages,
)

STORAGES = ("sqlite3", "mcap")


class BagError(ValueError):
    """A bag that cannot be profiled: missing, empty, truncated, or without the topics."""


def _typestore():
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS2_KILTED)


def read_observation_windows(bag: str | Path, policy, joint_names: Sequence[str],
                             max_age: float = 0.5) -> list[dict[str, np.ndarray]]:
    """Every observation history in ``bag`` for ``policy`` (relative topic names; the bag's
    topics may carry a leading namespace, e.g. ``/robot/image`` matches ``image``). A bag whose
    images come from another camera than the policy's recorded one is refused."""
    from rosbags.highlevel import AnyReader

    bag = Path(bag)
    sources = observation_sources(policy.obs_spec)
    convs = converters(sources, policy, joint_names)
    try:
        reader = AnyReader([bag], default_typestore=_typestore())
        reader.open()
    except Exception as e:  # rosbags raises several types for unreadable bags
        raise BagError(f"{bag} cannot be opened as a rosbag2 ({e})") from None
    try:
        chosen, topic_of = [], {}
        for s in sources:
            match = [c for c in reader.connections
                     if c.topic.rstrip("/").split("/")[-1] == s.topic and c.msgtype == s.msgtype]
            if not match:
                have = sorted({f"{c.topic} ({c.msgtype})" for c in reader.connections})
                raise BagError(f"{bag} has no {s.msgtype} topic '{s.topic}' for observation "
                               f"'{s.key}'; it has {have or 'no topics'}")
            chosen += match
            topic_of.update({c.topic: s.topic for c in match})

        def messages() -> Iterator[tuple[str, float, object]]:
            for conn, t_ns, raw in reader.messages(connections=chosen):
                msg = reader.deserialize(raw, conn.msgtype)
                stamp = stamp_seconds(msg.header) if hasattr(msg, "header") else t_ns * 1e-9
                yield topic_of[conn.topic], stamp, msg

        try:
            asm = ObservationAssembler([s.key for s in sources], policy.n_obs_steps,
                                       policy.dt, max_age, primary_key(policy.obs_spec))
            windows = windows_from_messages(messages(), sources, convs, asm)
        except MessageError as e:
            raise BagError(f"{bag}: {e}") from None
        except Exception as e:  # truncated or corrupt message data
            raise BagError(f"{bag} could not be read to the end ({e})") from None
    finally:
        reader.close()
    if not windows:
        raise BagError(f"{bag} yields no complete observation history; expected at least "
                       f"{policy.n_obs_steps} frames of every observation topic")
    return windows


class BagWriter:
    """Write the task's observations (and actions) as ROS 2 messages into a new bag."""

    def __init__(self, path: str | Path, storage: str = "sqlite3"):
        from rosbags.rosbag2 import StoragePlugin, Writer

        if storage not in STORAGES:
            raise ValueError(f"storage must be one of {STORAGES}; got {storage!r}")
        self.store = _typestore()
        plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
        self.writer = Writer(Path(path), version=9, storage_plugin=plugin)
        self.writer.open()
        self.conns: dict[str, object] = {}

    def _conn(self, topic: str, msgtype: str):
        if topic not in self.conns:
            self.conns[topic] = self.writer.add_connection(topic, msgtype, typestore=self.store)
        return self.conns[topic]

    def _header(self, t: float, frame: str = ""):
        T = self.store.types
        sec = int(t)
        return T["std_msgs/msg/Header"](
            stamp=T["builtin_interfaces/msg/Time"](sec=sec, nanosec=int(round((t - sec) * 1e9))),
            frame_id=frame,
        )

    def write(self, topic: str, msgtype: str, msg, t: float) -> None:
        data = self.store.serialize_cdr(msg, msgtype)
        self.writer.write(self._conn(topic, msgtype), int(round(t * 1e9)), data)

    def image(self, topic: str, rgb: np.ndarray, t: float, frame: str) -> None:
        h, w, _ = rgb.shape
        msg = self.store.types[IMAGE](header=self._header(t, frame), height=h, width=w,
                                      encoding="rgb8", is_bigendian=0, step=w * 3,
                                      data=np.ascontiguousarray(rgb, np.uint8).ravel())
        self.write(topic, IMAGE, msg, t)

    def joint_state(self, topic: str, names: Sequence[str], position: np.ndarray,
                    t: float) -> None:
        empty = np.zeros(0, dtype=np.float64)
        msg = self.store.types[JOINT_STATE](header=self._header(t), name=list(names),
                                            position=np.asarray(position, np.float64),
                                            velocity=empty, effort=empty)
        self.write(topic, JOINT_STATE, msg, t)

    def vector(self, topic: str, values: np.ndarray, t: float) -> None:
        T = self.store.types
        layout = T["std_msgs/msg/MultiArrayLayout"](dim=[], data_offset=0)
        msg = T[VECTOR](layout=layout, data=np.asarray(values, np.float32))
        self.write(topic, VECTOR, msg, t)

    def close(self) -> None:
        self.writer.close()
