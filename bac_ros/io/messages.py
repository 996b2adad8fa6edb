"""Messages <-> numpy, shared by the live nodes and the rosbag reader.

Functions read message fields only (duck typing), so they accept rclpy messages and the
dataclasses ``rosbags`` deserialises to alike: the profiler builds exactly the observations the
policy node builds. Bad input raises :class:`MessageError` with one sentence saying what was
wrong and what was expected.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Encodings the camera path accepts, with (channels, dtype, channel order to RGB).
IMAGE_ENCODINGS = {
    "rgb8": (3, np.uint8, (0, 1, 2)),
    "bgr8": (3, np.uint8, (2, 1, 0)),
    "rgba8": (4, np.uint8, (0, 1, 2)),
    "bgra8": (4, np.uint8, (2, 1, 0)),
}


class MessageError(ValueError):
    """A message that cannot become an observation."""


def stamp_seconds(header) -> float:
    return float(header.stamp.sec) + float(header.stamp.nanosec) * 1e-9


def image_to_rgb(msg, expected_hw: tuple[int, int] | None = None) -> np.ndarray:
    """sensor_msgs/Image -> uint8 (H, W, 3) RGB, resized to ``expected_hw`` if given."""
    enc = str(msg.encoding).lower()
    if enc not in IMAGE_ENCODINGS:
        raise MessageError(
            f"image encoding {msg.encoding!r} is not supported; expected one of "
            f"{sorted(IMAGE_ENCODINGS)}"
        )
    channels, dtype, order = IMAGE_ENCODINGS[enc]
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if h <= 0 or w <= 0:
        raise MessageError(f"image is {h}x{w}; expected a positive height and width")
    if step < w * channels:
        raise MessageError(f"image step {step} is shorter than a row ({w * channels} bytes)")
    data = np.frombuffer(bytes(msg.data), dtype=dtype)
    if data.size != h * step:
        raise MessageError(
            f"image data has {data.size} bytes; expected height x step = {h * step}"
        )
    rgb = data.reshape(h, step)[:, : w * channels].reshape(h, w, channels)[..., list(order)]
    if expected_hw is not None and (h, w) != tuple(expected_hw):
        import cv2

        rgb = cv2.resize(np.ascontiguousarray(rgb), (expected_hw[1], expected_hw[0]),
                         interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(rgb)


def compressed_to_rgb(msg, expected_hw: tuple[int, int] | None = None) -> np.ndarray:
    """sensor_msgs/CompressedImage (jpeg or png) -> uint8 (H, W, 3) RGB, resized if needed."""
    import cv2

    fmt = str(msg.format).lower()
    if "jpeg" not in fmt and "jpg" not in fmt and "png" not in fmt:
        raise MessageError(f"compressed image format {msg.format!r} is not supported; "
                           "expected jpeg or png")
    try:
        bgr = cv2.imdecode(np.frombuffer(bytes(msg.data), dtype=np.uint8), cv2.IMREAD_COLOR)
    except cv2.error:  # empty or absurd buffers raise instead of returning None
        bgr = None
    if bgr is None:
        raise MessageError(f"compressed image ({len(msg.data)} bytes) could not be decoded "
                           f"as {msg.format}")
    rgb = bgr[..., ::-1]
    if expected_hw is not None and rgb.shape[:2] != tuple(expected_hw):
        rgb = cv2.resize(np.ascontiguousarray(rgb), (expected_hw[1], expected_hw[0]),
                         interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(rgb)


def joint_positions(msg, names: Sequence[str]) -> np.ndarray:
    """sensor_msgs/JointState -> float32 positions of ``names``, in that order."""
    msg_names, pos = list(msg.name), np.asarray(msg.position, dtype=np.float64)
    if len(msg_names) != len(pos):
        raise MessageError(
            f"joint state has {len(msg_names)} names but {len(pos)} positions; expected equal"
        )
    for field in ("velocity", "effort"):  # the message's contract: empty or one per name
        size = len(getattr(msg, field, ()))
        if size not in (0, len(msg_names)):
            raise MessageError(f"joint state has {len(msg_names)} names but {size} {field} "
                               "values; expected equal or none")
    index = {n: i for i, n in enumerate(msg_names)}
    missing = [n for n in names if n not in index]
    if missing:
        raise MessageError(f"joint state lacks joints {missing}; expected {list(names)}")
    out = pos[[index[n] for n in names]]
    if not np.isfinite(out).all():
        raise MessageError(f"joint positions {out.tolist()} are not all finite")
    return out.astype(np.float32)


def vector(msg, size: int) -> np.ndarray:
    """std_msgs/Float32MultiArray -> float32 (size,)."""
    data = np.asarray(msg.data, dtype=np.float32)
    if data.shape != (size,):
        raise MessageError(f"vector has {data.size} values; expected {size}")
    if not np.isfinite(data).all():
        raise MessageError("vector contains NaN or inf")
    return data


def fill_chunk(msg, actions: np.ndarray, names: Sequence[str], dt: float,
               inference_time: float, schedule_id: str) -> None:
    """Write an (horizon, action_dim) chunk into an ActionChunk message (header set by caller)."""
    actions = np.asarray(actions, dtype=np.float32)
    msg.action_names = list(names)
    msg.horizon, msg.action_dim = int(actions.shape[0]), int(actions.shape[1])
    msg.dt = float(dt)
    msg.actions = actions.ravel().tolist()
    msg.inference_time = float(inference_time)
    msg.schedule_id = schedule_id


def chunk_actions(msg) -> np.ndarray:
    """ActionChunk -> float32 (horizon, action_dim), checked."""
    a = np.asarray(msg.actions, dtype=np.float32)
    if a.size != msg.horizon * msg.action_dim:
        raise MessageError(
            f"action chunk holds {a.size} values; expected horizon x action_dim = "
            f"{msg.horizon * msg.action_dim}"
        )
    return a.reshape(msg.horizon, msg.action_dim)
