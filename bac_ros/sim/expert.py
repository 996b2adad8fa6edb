"""Scripted expert for the arm task: goes around the obstacle on a side drawn at random.

The demonstrations must be bimodal only in the side: given the side, the motion is a
deterministic, smooth function of the scene. The effector follows the shortest path around the
obstacle (inflated by a clearance margin) on the chosen side: a straight tangent, an arc, a
straight tangent onto the target.

The arm has one spare degree of freedom for a 2-D effector position: the heading of link 3.
Given a heading and an elbow sign the joints follow in closed form, so the planner discretises
(heading, elbow) at waypoints 1 cm apart and picks the sequence by dynamic programming: least
joint motion and links kept away from the obstacle, with joint limits, a minimum link gap and
a bound on the joint step between waypoints as hard constraints. Jacobian-based inverse
kinematics is ill-posed at the folded start (all links collinear, a singularity) and gets
trapped against joint limits while the arm reaches around the obstacle; the global search does
not. The chosen headings are smoothed so that the joints, not just the effector, move smoothly,
and the joint path is timed with a minimum-jerk profile that slows down where the arm moves a
lot for little effector motion.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from bac_ros.sim.arm import ArmEnv, ArmTaskConfig, clearance, link_headings, wrap_angle

LEFT = 1  # passes the obstacle on the left of the start-to-target direction
RIGHT = -1


@dataclass(frozen=True)
class ExpertConfig:
    """Constants of the scripted expert."""

    # Effector path margin beyond the obstacle surface plus link half width (m): a policy that
    # cuts the corner by more than this collides.
    path_clearance: float = 0.025
    waypoint_spacing: float = 0.01  # m between effector waypoints of the joint-path search
    heading_bins: int = 120  # resolution of the link-3 heading search (3 degrees)
    max_joint_step: float = 0.25  # rad between consecutive waypoints
    min_link_gap: float = 0.012  # hard: link surface to obstacle (m), leaves room for lag
    preferred_link_gap: float = 0.05  # closer than this costs ``gap_weight * shortfall**2``
    gap_weight: float = 50.0
    smoothing_passes: int = 30  # neighbour-averaging passes over the heading sequence
    # Timing: the motion follows a minimum-jerk profile whose peak speed is the slower of
    # these cruise speeds along each stretch of the path (so it slows where the arm
    # reconfigures while the effector moves little).
    cruise_speed: float = 0.25  # m/s, effector
    cruise_joint_speed: float = 1.2  # rad/s, fastest joint
    min_motion_steps: int = 25
    max_motion_steps: int = 60
    settle_steps: int = 5  # holds the final targets while the controller converges


def _unit(angle: float) -> np.ndarray:
    return np.array([math.cos(angle), math.sin(angle)])


def _min_jerk(tau: np.ndarray) -> np.ndarray:
    """Fraction of the path covered at normalised time ``tau``: zero speed and acceleration at
    both ends, so the joint targets start and stop smoothly."""
    return tau**3 * (10 - 15 * tau + 6 * tau**2)


def detour_path(
    start: np.ndarray, goal: np.ndarray, center: np.ndarray, radius: float, side: int
) -> tuple[float, Callable[[np.ndarray], np.ndarray]]:
    """Shortest path from ``start`` to ``goal`` around a disc, passing it on ``side``.

    Returns ``(length, point_at)`` where ``point_at(s)`` maps arc lengths ``(n,)`` to ``(n, 2)``.
    """
    # Passing on the left of the motion means going clockwise around the disc.
    turn = -side

    def tangent_angle(p: np.ndarray, leaving: bool) -> float:
        """Polar angle (about the centre) of the point where the line from ``p`` touches."""
        rel = p - center
        dist = float(np.linalg.norm(rel))
        if dist <= radius:
            raise ValueError(f"point {p.tolist()} lies within the inflated obstacle")
        alpha = math.acos(radius / dist)
        polar = math.atan2(rel[1], rel[0])
        return polar + turn * alpha if leaving else polar - turn * alpha

    a_angle = tangent_angle(start, leaving=True)
    b_angle = tangent_angle(goal, leaving=False)
    a = center + radius * _unit(a_angle)
    b = center + radius * _unit(b_angle)
    sweep = (turn * (b_angle - a_angle)) % (2 * math.pi)
    if sweep > math.pi:
        raise ValueError("the obstacle must cross the straight start-to-goal line to go around it")
    l1 = float(np.linalg.norm(a - start))
    l2 = radius * sweep
    l3 = float(np.linalg.norm(goal - b))

    def point_at(s: np.ndarray) -> np.ndarray:
        s = np.asarray(s, dtype=np.float64)[:, None]
        first = start + (a - start) * np.clip(s / max(l1, 1e-9), 0, 1)
        ang = a_angle + turn * np.clip((s - l1) / radius, 0, sweep)
        arc = center + radius * np.concatenate([np.cos(ang), np.sin(ang)], axis=1)
        last = b + (goal - b) * np.clip((s - l1 - l2) / max(l3, 1e-9), 0, 1)
        return np.where(s <= l1, first, np.where(s <= l1 + l2, arc, last))

    return l1 + l2 + l3, point_at


def joints_from_heading(
    task: ArmTaskConfig, points: np.ndarray, heading: np.ndarray, elbow: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Closed-form inverse kinematics for effector ``points`` with link-3 ``heading`` and
    ``elbow`` sign (+1: link 2 turns counter-clockwise from link 1, i.e. joint 2 <= 0), all
    broadcast together.

    Returns ``(joints (..., 3), valid (...))``; ``valid`` is false where the wrist is out of
    reach or a joint is out of its limits.
    """
    l1, l2, l3 = task.link_lengths
    wrist = points - l3 * np.stack([np.cos(heading), np.sin(heading)], -1)
    rel = wrist - np.asarray(task.base_xy)
    c2 = (np.sum(rel**2, -1) - l1**2 - l2**2) / (2 * l1 * l2)
    reachable = np.abs(c2) <= 1.0
    bend = elbow * np.arccos(np.clip(c2, -1.0, 1.0))  # link 2 relative to link 1
    q1 = np.arctan2(rel[..., 1], rel[..., 0]) - np.arctan2(
        l2 * np.sin(bend), l1 + l2 * np.cos(bend)
    )
    # Joint 1 lives in [0, pi]: wrap it into a window centred there before the limit check.
    q1 = wrap_angle(q1 - np.pi / 2) + np.pi / 2
    q2 = wrap_angle(bend - np.pi)
    q3 = wrap_angle(heading - q1 - bend - np.pi)
    joints = np.stack(np.broadcast_arrays(q1, q2, q3), -1)
    within = np.all(
        (joints >= np.asarray(task.joint_low)) & (joints <= np.asarray(task.joint_high)), -1
    )
    return joints, reachable & within


def plan_joints(
    task: ArmTaskConfig,
    cfg: ExpertConfig,
    start_joints: np.ndarray,
    points: np.ndarray,
    obstacle: np.ndarray,
) -> np.ndarray:
    """Joints ``(n, 3)`` that put the effector on each of ``points`` ``(n, 2)``, starting from
    ``start_joints``: the dynamic-programming search, then smoothing.

    Raises ``RuntimeError`` when no sequence satisfies the hard constraints.
    """
    headings = np.arange(cfg.heading_bins) * (2 * np.pi / cfg.heading_bins)
    elbows = np.array([1.0, -1.0])
    # Nodes: every (heading, elbow) pair at every waypoint -> (n, m, 3) with m = 2 * bins.
    grid_h, grid_e = (a.ravel() for a in np.meshgrid(headings, elbows, indexing="ij"))
    joints, valid = joints_from_heading(task, points[:, None, :], grid_h, grid_e)
    gap = clearance(task, joints, obstacle)
    valid &= gap >= cfg.min_link_gap
    node_cost = cfg.gap_weight * np.maximum(cfg.preferred_link_gap - gap, 0.0) ** 2

    # Forward pass over the valid nodes of each waypoint; ``back`` indexes the previous list.
    prev_q, prev_cost = start_joints[None], np.zeros(1)
    nodes, backs = [], []
    for k in range(len(points)):
        idx = np.flatnonzero(valid[k])
        q = joints[k, idx]
        step = q[None, :, :] - prev_q[:, None, :]
        total = prev_cost[:, None] + np.sum(step**2, -1)
        total[np.abs(step).max(-1) > cfg.max_joint_step] = np.inf
        best = np.argmin(total, axis=0)
        cost = total[best, np.arange(len(idx))] + node_cost[k, idx]
        keep = np.isfinite(cost)
        if not keep.any():
            raise RuntimeError("no collision-free joint path around the obstacle on this side")
        nodes.append(idx[keep])
        backs.append(best[keep])
        prev_q, prev_cost = q[keep], cost[keep]
    # Backtrack from the cheapest final node.
    pick = int(np.argmin(prev_cost))
    chosen = np.empty(len(points), dtype=np.int64)
    for k in range(len(points) - 1, -1, -1):
        chosen[k] = nodes[k][pick]
        pick = backs[k][pick]
    return _smooth(task, cfg, start_joints, points, obstacle, grid_h[chosen], grid_e[chosen])


def _smooth(
    task: ArmTaskConfig,
    cfg: ExpertConfig,
    start_joints: np.ndarray,
    points: np.ndarray,
    obstacle: np.ndarray,
    heading: np.ndarray,
    elbow: np.ndarray,
) -> np.ndarray:
    """Average each heading with its neighbours (the grid leaves steps), keeping every pass
    that still meets the hard constraints; the effector positions stay exact."""
    start_heading = float(link_headings(start_joints)[-1])
    heading = start_heading + np.unwrap(np.concatenate([[0.0], heading - start_heading]))[1:]
    joints, _ = joints_from_heading(task, points, heading, elbow)
    for _ in range(cfg.smoothing_passes):
        padded = np.concatenate([[start_heading], heading, heading[-1:]])
        trial = 0.5 * heading + 0.25 * (padded[:-2] + padded[2:])
        trial_joints, valid = joints_from_heading(task, points, trial, elbow)
        steps = np.diff(np.concatenate([start_joints[None], trial_joints]), axis=0)
        ok = valid.all() and np.abs(steps).max() <= cfg.max_joint_step
        if not (ok and clearance(task, trial_joints, obstacle).min() >= cfg.min_link_gap):
            break
        heading, joints = trial, trial_joints
    return joints


class Expert:
    """Scripted demonstrator bound to an :class:`ArmEnv` (it reads the true target and obstacle).

    Call ``env.reset(seed)`` then ``expert.reset(seed)``; ``act(obs)`` returns the joint targets
    of the next control step. The side is drawn from ``seed`` independently of the scene.
    """

    def __init__(self, env: ArmEnv, config: ExpertConfig | None = None):
        self.env = env
        self.config = config or ExpertConfig()
        self._side = LEFT
        self._plan = np.zeros((1, 3))
        self._step = 0

    @property
    def side(self) -> int:
        """``LEFT`` (+1) or ``RIGHT`` (-1) of the start-to-target direction."""
        return self._side

    @property
    def plan(self) -> np.ndarray:
        """Joint targets ``(n, 3)`` of the whole episode, one row per control step."""
        return self._plan

    def reset(self, seed: int, side: int | None = None) -> None:
        """Choose the side (random from ``seed`` unless given) and plan the episode."""
        if side not in (None, LEFT, RIGHT):
            raise ValueError(f"side must be LEFT (+1), RIGHT (-1) or None, got {side!r}")
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), 1]))
        drawn = LEFT if rng.random() < 0.5 else RIGHT
        self._side = drawn if side is None else side
        self._plan = self._make_plan()
        self._step = 0

    def _make_plan(self) -> np.ndarray:
        task, cfg, env = self.env.config, self.config, self.env
        radius = task.obstacle_radius + task.link_half_width + cfg.path_clearance
        length, point_at = detour_path(env.effector, env.target, env.obstacle, radius, self._side)
        m = max(2, math.ceil(length / cfg.waypoint_spacing))
        points = point_at(np.linspace(0.0, length, m + 1)[1:])
        joints = plan_joints(task, cfg, env.joints, points, env.obstacle)
        joints = np.concatenate([env.joints[None], joints])
        # Cruise time of each stretch, then a minimum-jerk clock over the accumulated time.
        stretch = np.maximum(
            np.full(m, length / m) / cfg.cruise_speed,
            np.abs(np.diff(joints, axis=0)).max(axis=1) / cfg.cruise_joint_speed,
        )
        clock = np.concatenate([[0.0], np.cumsum(stretch)])
        # A minimum-jerk profile peaks at 15/8 of its mean speed.
        steps = math.ceil(15 / 8 * clock[-1] / task.dt)
        n = int(np.clip(steps, cfg.min_motion_steps, cfg.max_motion_steps))
        times = clock[-1] * _min_jerk(np.arange(1, n + 1) / n)
        motion = np.stack([np.interp(times, clock, joints[:, j]) for j in range(3)], axis=1)
        return np.concatenate([motion, np.repeat(motion[-1:], cfg.settle_steps, axis=0)])

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """Joint targets for the next control step (the plan's last row once it has run out)."""
        del obs  # the plan is fixed at reset: the task's dynamics are deterministic
        action = self._plan[min(self._step, len(self._plan) - 1)]
        self._step += 1
        return action.copy()
