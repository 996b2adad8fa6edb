"""The bundled task: a planar 3-link arm that must put its end effector on a target disc that
sits behind a circular obstacle, so the arm has to reach around the obstacle on one side.

Coordinates are metres in a 1 m x 1 m workspace, x to the right, y up; the base sits near the
bottom centre. Joint 1 is the absolute angle of link 1 (counter-clockwise from +x). Joints 2 and
3 are measured counter-clockwise from the *folded* pose, where a link lies back along the
previous one (the links move in stacked planes, so they may pass over each other): 0 is folded,
+-pi would be straight. With this convention the start pose, the arm folded into a Z along the
vertical, is ``(pi/2, 0, 0)`` and the mirror image of ``(q1, q2, q3)`` is
``(pi - q1, -q2, -q3)``: unfolding to the left or to the right is equally easy, which is what
makes the two ways around the obstacle equally good demonstrations.

Links are segments of width ``2 * link_half_width``; the arm collides when any link comes
closer to the obstacle centre than ``obstacle_radius + link_half_width``. Links do not collide
with each other (a planar arm whose links lie in stacked planes).

Actions are absolute joint-position targets. A first-order joint controller with a speed limit
tracks them at ``control_hz``, integrated in ``substeps`` sub-steps so that a fast swing cannot
tunnel through the obstacle between collision checks.

An episode ends as

- a failure on the first sub-step in collision;
- a success once the end effector has been within ``success_tol`` of the target centre at the
  end of ``success_hold_steps`` consecutive control steps (passing through is not enough: the
  arm must stop there);
- a failure after ``max_steps`` control steps.

Observations are ``{"joints": float32 (3,), "image": uint8 (S, S, 3)}`` (RGB, top-down);
:meth:`ArmEnv.state` gives the low-dim variant's features, laid out as :data:`LOWDIM_KEYS`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

#: Low-dimensional state layout returned by :meth:`ArmEnv.state`, in order.
LOWDIM_KEYS: tuple[str, ...] = ("joints", "target_xy", "obstacle_xy")
#: Width of each block of :data:`LOWDIM_KEYS`.
LOWDIM_DIMS: tuple[int, ...] = (3, 2, 2)
STATE_DIM: int = sum(LOWDIM_DIMS)
JOINT_DIM: int = 3
#: The arm's joints as its joint_states name them (the nodes' default ``joint_names``).
JOINT_NAMES: list[str] = ["joint1", "joint2", "joint3"]

# RGB colours of the render: distinct hues, so that an image encoder can tell the parts apart.
BACKGROUND_RGB = (235, 235, 230)
OBSTACLE_RGB = (210, 40, 40)
TARGET_RGB = (40, 170, 70)
LINK_RGB = (40, 80, 200)
JOINT_RGB = (30, 30, 30)
EFFECTOR_RGB = (240, 170, 0)

_SHIFT = 4  # cv2 fixed-point bits: sub-pixel accurate anti-aliased drawing
_SCALE = 1 << _SHIFT


@dataclass(frozen=True)
class ArmTaskConfig:
    """Every constant of the task; a checkpoint trained on one config is evaluated on the same."""

    link_lengths: tuple[float, float, float] = (0.35, 0.30, 0.25)
    base_xy: tuple[float, float] = (0.5, 0.1)
    # Joints 2 and 3 stop 0.34 rad short of straight (+-pi), away from the stretched-out
    # singularity.
    joint_low: tuple[float, float, float] = (0.0, -2.8, -2.8)
    joint_high: tuple[float, float, float] = (math.pi, 2.8, 2.8)
    # Folded Z along the vertical: every link within 0.35 m of the base, effector 0.3 m above.
    start_joints: tuple[float, float, float] = (math.pi / 2, 0.0, 0.0)
    link_half_width: float = 0.01
    obstacle_radius: float = 0.06
    # Drawn radius of the target disc; success: the effector inside it (``success_tol``).
    target_radius: float = 0.03
    success_tol: float = 0.03
    success_hold_steps: int = 2
    control_hz: float = 10.0
    substeps: int = 10
    joint_gain: float = 20.0  # 1/s, first-order tracking gain
    max_joint_speed: float = 2.0  # rad/s
    max_steps: int = 80
    image_size: int = 96
    joint_marker_radius: float = 0.012  # drawn joint and effector dots (m)
    # Episode sampling (distances in metres from the base unless said otherwise).
    target_dist_range: tuple[float, float] = (0.6, 0.78)
    target_bearing_max: float = 0.6  # rad either side of straight up
    obstacle_gap_range: tuple[float, float] = (0.17, 0.22)  # obstacle centre to target centre
    obstacle_offset_max: float = 0.015  # sideways offset from the straight start-target line
    obstacle_min_base_dist: float = 0.48  # link 1 (0.35 m) never reaches the obstacle
    # The obstacle also sits on the straight base-to-target line (at most this far off it), so
    # either way around, the arm has to reach around it: the two sides are mirror images.
    obstacle_max_chain_offset: float = 0.04
    workspace_margin: float = 0.05

    @property
    def dt(self) -> float:
        return 1.0 / self.control_hz


def wrap_angle(a: np.ndarray | float) -> np.ndarray | float:
    """Angle(s) mapped to [-pi, pi)."""
    return (np.asarray(a) + np.pi) % (2 * np.pi) - np.pi


def link_headings(joints: np.ndarray) -> np.ndarray:
    """Absolute direction of each link, ``(..., 3)``, under the folded-zero convention."""
    joints = np.asarray(joints, dtype=np.float64)
    return np.cumsum(joints, axis=-1) + np.array([0.0, np.pi, 2 * np.pi])


def forward_kinematics(config: ArmTaskConfig, joints: np.ndarray) -> np.ndarray:
    """Joint angles ``(..., 3)`` -> points ``(..., 4, 2)``: base, joint 2, joint 3, effector."""
    theta = link_headings(joints)
    lengths = np.asarray(config.link_lengths)
    steps = lengths[:, None] * np.stack([np.cos(theta), np.sin(theta)], axis=-1)
    base = np.broadcast_to(np.asarray(config.base_xy), steps.shape[:-2] + (1, 2))
    return np.concatenate([base, base + np.cumsum(steps, axis=-2)], axis=-2)


def segment_distances(points: np.ndarray, center: np.ndarray) -> np.ndarray:
    """Distances from ``center`` to the links of arm points ``(..., 4, 2)`` -> ``(..., 3)``."""
    a = points[..., :-1, :]
    ab = points[..., 1:, :] - a
    ap = np.asarray(center) - a
    t = np.clip(np.sum(ap * ab, -1) / np.maximum(np.sum(ab * ab, -1), 1e-12), 0.0, 1.0)
    return np.linalg.norm(ap - t[..., None] * ab, axis=-1)


def clearance(config: ArmTaskConfig, joints: np.ndarray, obstacle_xy: np.ndarray) -> np.ndarray:
    """Signed gap (m) between the closest link surface and the obstacle; < 0 means collision."""
    dist = segment_distances(forward_kinematics(config, joints), obstacle_xy)
    return dist.min(axis=-1) - config.obstacle_radius - config.link_half_width


def in_collision(config: ArmTaskConfig, joints: np.ndarray, obstacle_xy: np.ndarray) -> bool:
    """Whether any of the given configuration(s) touches the obstacle."""
    return bool(np.any(clearance(config, joints, obstacle_xy) < 0.0))


def sample_episode(
    config: ArmTaskConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Target and obstacle centres with the obstacle across the start-to-target line.

    The obstacle sits ``obstacle_gap_range`` before the target on the straight line from the
    start effector, shifted sideways by at most ``obstacle_offset_max`` so that neither side is
    clearly shorter, far enough from the base that only links 2 and 3 can reach it, and close
    to the base-to-target line, so the arm must reach around it whichever side it takes. Draws
    that miss a constraint are redrawn.
    """
    base = np.asarray(config.base_xy)
    start = forward_kinematics(config, np.asarray(config.start_joints))[-1]
    lo = config.workspace_margin
    while True:
        dist = rng.uniform(*config.target_dist_range)
        bearing = rng.uniform(-config.target_bearing_max, config.target_bearing_max)
        gap = rng.uniform(*config.obstacle_gap_range)
        offset = rng.uniform(-config.obstacle_offset_max, config.obstacle_offset_max)
        target = base + dist * np.array([-math.sin(bearing), math.cos(bearing)])
        along = (target - start) / np.linalg.norm(target - start)
        obstacle = target - gap * along + offset * np.array([-along[1], along[0]])
        inside = np.all((target >= lo) & (target <= 1 - lo))
        inside &= np.all(obstacle >= lo + config.obstacle_radius)
        inside &= np.all(obstacle <= 1 - lo - config.obstacle_radius)
        radial = (target - base) / dist
        chain_offset = abs(radial[0] * (obstacle - base)[1] - radial[1] * (obstacle - base)[0])
        far = np.linalg.norm(obstacle - base) >= config.obstacle_min_base_dist
        if inside and far and chain_offset <= config.obstacle_max_chain_offset:
            return target, obstacle


def _to_px(config: ArmTaskConfig, xy: np.ndarray) -> tuple[int, int]:
    """Workspace metres -> cv2 fixed-point pixel coordinates (pixel centres at integers)."""
    s = config.image_size
    u = (xy[0] * s - 0.5) * _SCALE
    v = ((1.0 - xy[1]) * s - 0.5) * _SCALE
    return int(round(u)), int(round(v))


def render(
    config: ArmTaskConfig, joints: np.ndarray, target_xy: np.ndarray, obstacle_xy: np.ndarray
) -> np.ndarray:
    """Top-down RGB image ``(S, S, 3)`` uint8 of the scene, anti-aliased and deterministic."""
    s = config.image_size
    img = np.empty((s, s, 3), np.uint8)
    img[:] = BACKGROUND_RGB
    px_per_m = s * _SCALE
    aa = cv2.LINE_AA
    r_target = int(round(config.target_radius * px_per_m))
    r_obstacle = int(round(config.obstacle_radius * px_per_m))
    cv2.circle(img, _to_px(config, target_xy), r_target, TARGET_RGB, -1, aa, _SHIFT)
    cv2.circle(img, _to_px(config, obstacle_xy), r_obstacle, OBSTACLE_RGB, -1, aa, _SHIFT)
    points = [_to_px(config, p) for p in forward_kinematics(config, joints)]
    width = max(1, int(round(2 * config.link_half_width * s)))
    for a, b in zip(points[:-1], points[1:], strict=True):
        cv2.line(img, a, b, LINK_RGB, width, aa, _SHIFT)
    r_joint = int(round(config.joint_marker_radius * px_per_m))
    for p in points[:-1]:
        cv2.circle(img, p, r_joint, JOINT_RGB, -1, aa, _SHIFT)
    cv2.circle(img, points[-1], r_joint, EFFECTOR_RGB, -1, aa, _SHIFT)
    return img


class ArmEnv:
    """The task as a step-by-step environment: ``reset(seed)``, then ``step(joint targets)``."""

    def __init__(self, config: ArmTaskConfig | None = None, render_images: bool = True):
        self.config = config or ArmTaskConfig()
        self.render_images = render_images
        self._low = np.asarray(self.config.joint_low)
        self._high = np.asarray(self.config.joint_high)
        self.joints = np.asarray(self.config.start_joints, dtype=np.float64)
        self.target = np.zeros(2)
        self.obstacle = np.zeros(2)
        self.steps = 0
        self.done = True
        self._hold = 0
        self.command = self.joints.copy()  # the last joint targets commanded

    def reset(self, seed: int) -> dict[str, np.ndarray]:
        """Start a new episode; the same seed always gives the same target and obstacle."""
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0]))
        self.target, self.obstacle = sample_episode(self.config, rng)
        self.joints = np.asarray(self.config.start_joints, dtype=np.float64)
        self.command = self.joints.copy()
        self.steps = 0
        self.done = False
        self._hold = 0
        return self.observation()

    @property
    def effector(self) -> np.ndarray:
        return forward_kinematics(self.config, self.joints)[-1]

    def observation(self) -> dict[str, np.ndarray]:
        """Joint positions, plus the render unless the env was made with ``render_images=False``."""
        obs = {"joints": self.joints.astype(np.float32)}
        if self.render_images:
            obs["image"] = render(self.config, self.joints, self.target, self.obstacle)
        return obs

    def state(self) -> np.ndarray:
        """Low-dim features ``float32 (7,)``, laid out as :data:`LOWDIM_KEYS`."""
        return np.concatenate([self.joints, self.target, self.obstacle]).astype(np.float32)

    def hold_action(self) -> np.ndarray:
        """What the arm does with no fresh action: keep tracking the last joint targets."""
        return self.command.copy()

    def clip_action(self, action: np.ndarray) -> np.ndarray:
        """Validate a joint-target action and clip it to the joint limits."""
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (JOINT_DIM,):
            raise ValueError(f"action must have shape (3,) (joint targets), got {action.shape}")
        if not np.all(np.isfinite(action)):
            raise ValueError(f"action must be finite joint targets, got {action.tolist()}")
        return np.clip(action, self._low, self._high)

    def step(self, action: np.ndarray, observe: bool = True
             ) -> tuple[dict[str, np.ndarray] | None, bool, dict]:
        """Track the joint targets for one control period; returns ``(obs, done, info)``
        (``obs`` None with ``observe=False``: a tick whose observation no one reads is not
        rendered).

        ``info`` holds ``success``, ``collision``, ``timeout`` (bools), ``steps``,
        ``effector_error`` (distance to the target centre, m) and ``clearance`` (smallest link
        gap to the obstacle during the step, m; negative on collision). On a collision the arm
        stops where it first touched.
        """
        if self.done:
            raise RuntimeError("step() called on a finished episode; call reset(seed) first")
        cfg = self.config
        target = self.clip_action(action)
        self.command = target
        h = cfg.dt / cfg.substeps
        path = np.empty((cfg.substeps, JOINT_DIM))
        q = self.joints
        for i in range(cfg.substeps):
            speed = np.clip(
                cfg.joint_gain * (target - q), -cfg.max_joint_speed, cfg.max_joint_speed
            )
            q = q + speed * h
            path[i] = q
        gaps = clearance(cfg, path, self.obstacle)
        hit = np.flatnonzero(gaps < 0.0)
        collision = hit.size > 0
        self.joints = path[hit[0]] if collision else q
        self.steps += 1
        error = float(np.linalg.norm(self.effector - self.target))
        self._hold = self._hold + 1 if error <= cfg.success_tol and not collision else 0
        success = self._hold >= cfg.success_hold_steps
        timeout = not (success or collision) and self.steps >= cfg.max_steps
        self.done = success or collision or timeout
        info = {
            "success": success,
            "collision": collision,
            "timeout": timeout,
            "steps": self.steps,
            "effector_error": error,
            "clearance": float(gaps.min()),
        }
        return (self.observation() if observe else None), self.done, info
