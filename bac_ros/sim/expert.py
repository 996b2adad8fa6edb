"""Scripted expert for the arm task: goes around the obstacle on a side drawn at random.

The demonstrations must be bimodal only in the side: given the side, the motion is a
deterministic, smooth function of the scene. The effector follows the shortest path around the
obstacle (inflated by a clearance margin) on the chosen side: a straight tangent, an arc, a
straight tangent onto the target, timed with a minimum-jerk profile.

The arm has one spare degree of freedom for a 2-D effector position: the heading of link 3.
Given a heading and an elbow sign the joints follow in closed form, so the planner discretises
(heading, elbow) at every waypoint and picks the sequence with dynamic programming: least
joint motion, links kept away from the obstacle, joint limits and a per-step joint-speed bound
as hard constraints. Local (Jacobian) inverse kinematics gets trapped unfolding the tucked
start pose; the global search does not. The chosen headings are then smoothed so that the
joint targets, not just the effector, move smoothly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from bac_ros.sim.arm import ArmEnv, ArmTaskConfig, clearance, wrap_angle

LEFT = 1  # passes the obstacle on the left of the start-to-target direction
RIGHT = -1


@dataclass(frozen=True)
class ExpertConfig:
    """Constants of the scripted expert."""

    # Effector path margin beyond the obstacle surface plus link half width (m): a policy that
    # cuts the corner by more than this collides.
    path_clearance: float = 0.025
    mean_speed: float = 0.15  # m/s along the path; sets the episode length
    min_motion_steps: int = 25
    max_motion_steps: int = 55
    settle_steps: int = 5  # holds the final targets while the controller converges
    heading_bins: int = 180  # resolution of the link-3 heading search (2 degrees)
    max_joint_step: float = 0.2  # rad per control step between planned targets
    min_link_gap: float = 0.012  # hard: link surface to obstacle (m), leaves room for lag
    preferred_link_gap: float = 0.05  # closer than this costs ``gap_weight * shortfall**2``
    gap_weight: float = 50.0
    smoothing_passes: int = 30  # neighbour-averaging passes over the heading sequence


def _unit(angle: float) -> np.ndarray:
    return np.array([math.cos(angle), math.sin(angle)])


def _min_jerk(tau: np.ndarray) -> np.ndarray:
    """Fraction of the path covered at normalised time ``tau``: zero speed and acceleration at
    both ends, so the joint targets start and stop smoothly."""
    return tau**3 * (10 - 15 * tau + 6 * tau**2)


def detour_path(
    start: np.ndarray, goal: np.ndarray, center: np.ndarray, radius: float, side: int
) -> tuple[float, callable]:
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
    ``elbow`` sign (sign of joint 2), all broadcast together.

    Returns ``(joints (..., 3), valid (...))``; ``valid`` is false where the wrist is out of
    reach or a joint is out of its limits.
    """
    l1, l2, l3 = task.link_lengths
    wrist = points - l3 * np.stack([np.cos(heading), np.sin(heading)], -1)
    rel = wrist - np.asarray(task.base_xy)
    c2 = (np.sum(rel**2, -1) - l1**2 - l2**2) / (2 * l1 * l2)
    reachable = np.abs(c2) <= 1.0
    q2 = elbow * np.arccos(np.clip(c2, -1.0, 1.0))
    q1 = np.arctan2(rel[..., 1], rel[..., 0]) - np.arctan2(l2 * np.sin(q2), l1 + l2 * np.cos(q2))
    # Joint 1 lives in [0, pi]: wrap it into a window centred there before the limit check.
    q1 = wrap_angle(q1 - np.pi / 2) + np.pi / 2
    q3 = wrap_angle(heading - q1 - q2)
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
    """Joint targets ``(n, 3)`` that put the effector on each of ``points`` ``(n, 2)``.

    Raises ``RuntimeError`` when no sequence satisfies the hard constraints.
    """
    n = len(points)
    headings = np.arange(cfg.heading_bins) * (2 * np.pi / cfg.heading_bins)
    elbows = np.array([1.0, -1.0])
    # Nodes: every (heading, elbow) pair at every waypoint -> (n, m, 3) with m = 2 * bins.
    grid_h, grid_e = (a.ravel() for a in np.meshgrid(headings, elbows, indexing="ij"))
    joints, valid = joints_from_heading(task, points[:, None, :], grid_h, grid_e)
    gap = clearance(task, joints, obstacle)
    valid &= gap >= cfg.min_link_gap
    node_cost = cfg.gap_weight * np.maximum(cfg.preferred_link_gap - gap, 0.0) ** 2
    node_cost = np.where(valid, node_cost, np.inf)

    def transition(prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
        step = nxt[None, :, :] - prev[:, None, :]
        cost = np.sum(step**2, -1)
        return np.where(np.max(np.abs(step), -1) <= cfg.max_joint_step, cost, np.inf)

    cost = transition(start_joints[None], joints[0])[0] + node_cost[0]
    back = np.zeros((n, joints.shape[1]), dtype=np.int64)
    for k in range(1, n):
        alive = np.flatnonzero(np.isfinite(cost))
        total = cost[alive, None] + transition(joints[k - 1, alive], joints[k])
        best = np.argmin(total, axis=0)
        back[k] = alive[best]
        cost = total[best, np.arange(total.shape[1])] + node_cost[k]
    if not np.isfinite(cost.min()):
        raise RuntimeError("no collision-free joint path around the obstacle on this side")
    chosen = np.empty(n, dtype=np.int64)
    chosen[-1] = int(np.argmin(cost))
    for k in range(n - 1, 0, -1):
        chosen[k - 1] = back[k, chosen[k]]
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
    start_heading = float(np.sum(start_joints))
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
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), 1]))
        drawn = LEFT if rng.random() < 0.5 else RIGHT
        self._side = drawn if side is None else side
        self._plan = self._make_plan()
        self._step = 0

    def _make_plan(self) -> np.ndarray:
        task, cfg, env = self.env.config, self.config, self.env
        radius = task.obstacle_radius + task.link_half_width + cfg.path_clearance
        length, point_at = detour_path(env.effector, env.target, env.obstacle, radius, self._side)
        steps = math.ceil(length / (cfg.mean_speed * task.dt))
        n = int(np.clip(steps, cfg.min_motion_steps, cfg.max_motion_steps))
        points = point_at(length * _min_jerk(np.arange(1, n + 1) / n))
        motion = plan_joints(task, cfg, env.joints, points, env.obstacle)
        return np.concatenate([motion, np.repeat(motion[-1:], cfg.settle_steps, axis=0)])

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """Joint targets for the next control step (the plan's last row once it has run out)."""
        del obs  # the plan is fixed at reset: the task's dynamics are deterministic
        action = self._plan[min(self._step, len(self._plan) - 1)]
        self._step += 1
        return action.copy()
