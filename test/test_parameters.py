"""policy_node parameters at run time: each one takes effect from the next chunk or is refused.

The walk enumerates the parameters the running node declares, so a parameter added without a
run-time check here fails the test. Effects are observed on what the node publishes over DDS
(chunk values, stamps, counts, trajectories, /diagnostics counters); refusals on the
SetParametersResult and the unchanged value. Observations carry identical content, so with a
fixed seed every chunk is the same: a change shows as an exact difference.
"""

import itertools
import math
import re
import threading

import numpy as np
import pytest
from helpers import vla_with_backbone
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.parameter import Parameter
from ros_helpers import (
    BAD,
    BASE,
    LAG,
    RECONFIGURE,
    Probe,
    SimClock,
    diag_values,
)

from bac_ros.models.backbone import TinyBackbone

pytestmark = pytest.mark.ros
def check_action_high(p: Probe) -> None:
    _, base, _ = p.chunk()
    high = float(np.median(base))
    p.set(action_high=[high])
    p.r.high = np.float32(high)  # the client's safety tally follows the lowered limit
    _, got, _ = p.chunk()
    np.testing.assert_array_equal(got, np.minimum(base, np.float32(high)))
    p.refuse_bad("action_high")
    p.refuse("action_high", [1.0, 2.0], "expected 1 or 3 (one per action dimension)")
    np.testing.assert_array_equal(p.chunk()[1], got)  # the refusals changed nothing
    p.set(action_high=[10.0])
    p.r.high = np.float32(10.0)
    np.testing.assert_array_equal(p.chunk()[1], base)


def check_action_low(p: Probe) -> None:
    _, base, _ = p.chunk()
    low = float(np.median(base))
    p.set(action_low=[low])
    p.r.low = np.float32(low)
    np.testing.assert_array_equal(p.chunk()[1], np.maximum(base, np.float32(low)))
    p.refuse_bad("action_low")
    p.set(action_low=[-10.0])
    p.r.low = np.float32(-10.0)


def check_limit_mode(p: Probe) -> None:
    _, base, _ = p.chunk()
    high = float(np.median(base))
    # A bad value in an atomic change refuses all of it: the limit stays as it was.
    res = p.r.node.set_parameters_atomically([Parameter("action_high", value=[high]),
                                              Parameter("limit_mode", value="clamp")])
    assert not res.successful and "expected clip or refuse" in res.reason
    assert list(p.r.node.get_parameter("action_high").value) == [10.0]
    p.set(action_high=[high], limit_mode="refuse")  # limit and mode in one change
    p.r.high = np.float32(high)
    refused = p.dropped("unsafe")
    p.refuse_bad("limit_mode")
    p.set(limit_mode="clip")
    np.testing.assert_array_equal(p.chunk()[1], np.minimum(base, np.float32(high)))
    p.assert_unanswered(refused)
    p.set(action_high=[10.0])
    p.r.high = np.float32(10.0)


def check_seed(p: Probe) -> None:
    _, zero, _ = p.chunk()
    p.set(seed=1)
    one = p.chunk()[1]
    assert not np.array_equal(one, zero)
    np.testing.assert_array_equal(p.chunk()[1], one)
    p.set(seed=-1)
    assert not np.array_equal(p.chunk()[1], p.chunk()[1])  # fresh noise every chunk
    p.refuse_bad("seed")
    p.set(seed=0)
    np.testing.assert_array_equal(p.chunk()[1], zero)


def check_rate_hz(p: Probe) -> None:
    p.set(rate_hz=20.0)
    t = p.send()
    # On a timer the node re-plans from the newest observation: one frame, many chunks. By
    # frames (rate_hz 0) a frame is answered once.
    assert p.r.spin(20, lambda: p.stamps(p.r.chunks).count(t) >= 3)
    # Frame pacing set ahead on a timer is stored, and the answer says it waits for rate_hz 0.
    logs = p.set_logs(replan="at_end", replan_steps=2)
    assert [m.split("]: ", 1)[1] for m in logs if "only with rate_hz 0" in m] == [
        f"{name} is stored, but chunks are paced by frames only with rate_hz 0 (rate_hz is 20)"
        for name in ("replan", "replan_steps")], logs
    p.refuse_bad("rate_hz")
    assert not any("is stored" in m for m in p.set_logs(rate_hz=0.0, replan_steps=1))
    first, _, _ = p.chunk()
    p.r.spin(0.5)  # ten periods of the old timer: it would have answered `first` again
    p.chunk()
    assert p.stamps(p.r.chunks).count(first) == 1


def check_replan_steps(p: Probe) -> None:
    p.set(replan_steps=3)
    for _ in range(2):
        n = len(p.r.chunks)
        sent = [p.send() for _ in range(3)]
        assert p.r.spin(10, lambda n=n: len(p.r.chunks) > n)
        assert p.stamps(p.r.chunks)[n] == sent[2]  # every third frame is answered
    p.refuse_bad("replan_steps")
    p.set(replan_steps=1)
    p.chunk()


_SIM_SESSIONS = itertools.count()


def _to_sim_time(p: Probe, lag: float = 0.0):
    """The node on a hand-moved /clock that stands still while it infers; observations stamped
    ``lag`` s back, so every chunk is exactly ``lag`` s old when done. Returns the wall clock's
    stamp function, for :func:`_to_wall_time`."""
    clock = SimClock(p.r, 500.0 + 100 * next(_SIM_SESSIONS))  # stamps never repeat
    p.set(use_sim_time=True)
    assert p.r.spin(10, clock.advance)
    wall, p.now, p.last = p.now, (lambda: clock.now() - lag), -math.inf
    p.chunk(wait=60)  # the first chunk on this clock measures its age
    return wall


def _to_wall_time(p: Probe, wall) -> None:
    p.set(use_sim_time=False)
    p.now = wall
    p.chunk()


def _frames_to_answer(p: Probe, limit: int = 12) -> int:
    """Frames sent, one by one, until one of them gets a chunk: which frame requested it."""
    sent: list[float] = []
    while len(sent) < limit:
        sent.append(p.send())
        if p.r.spin(0.5, lambda: any(t in sent for t in p.stamps(p.r.chunks[-3:]))):
            return 1 + next(i for i, t in enumerate(sent) if t in p.stamps(p.r.chunks))
    raise AssertionError(f"none of {limit} frames got a chunk")


def check_replan(p: Probe) -> None:
    """Every chunk is 0.25 s old when done: 3 frames of lead."""
    wall = _to_sim_time(p, lag=0.25)
    p.set(replan_steps=8)  # at_end: the next chunk when this one's last action is due
    assert _frames_to_answer(p) == 8
    p.set(replan="latency_aware")  # 3 frames earlier, so that it arrives in time
    assert [_frames_to_answer(p) for _ in range(2)] == [5, 5]
    p.refuse_bad("replan")
    p.set(replan="at_end")
    assert _frames_to_answer(p) == 8
    p.set(replan_steps=1)
    _to_wall_time(p, wall)


def on_sim_time(check):
    """Run ``check`` on sim time with chunks 0 s old: none of a new chunk's actions is certain
    to run from the old one (lead 0), so only the seam weights decide the overlap. ``plain``
    is the chunk of the (always identical) observation with seed 0 and no seam."""
    def run(p: Probe) -> None:
        wall = _to_sim_time(p)
        check(p, p.chunk(wait=60)[1])
        _to_wall_time(p, wall)
    return run


def _answer(p: Probe):
    """The next chunk and its offset from the previous one (control steps between stamps)."""
    before = p.stamps(p.r.chunks)[-1]
    t, actions, _ = p.chunk(wait=60)
    return actions, round((t - before) / 0.1)


@on_sim_time
def check_seam(p: Probe, plain: np.ndarray) -> None:
    n = len(plain)
    p.set(seam="inpaint", seam_weight=1.0)
    inpainted, k = _answer(p)  # denoised toward the committed (plain) chunk where they overlap
    np.testing.assert_allclose(inpainted[: n - k], plain[k:], rtol=0, atol=1e-5)
    assert not np.allclose(inpainted[n - k:], plain[n - k:], atol=1e-3)  # a new sample beyond
    p.set(seam="blend")
    blended, k = _answer(p)  # plain sampling, then the overlap mixed in (weight 1: replaced)
    np.testing.assert_array_equal(blended[: n - k], inpainted[k:])
    np.testing.assert_array_equal(blended[n - k:], plain[n - k:])
    p.refuse_bad("seam")
    p.set(seam="none")
    np.testing.assert_array_equal(p.chunk(wait=60)[1], plain)


@on_sim_time
def check_seam_weight(p: Probe, plain: np.ndarray) -> None:
    n = len(plain)
    p.set(seam="blend", seam_weight=0.0)  # no overlapping action is certain to run: no mixing
    np.testing.assert_array_equal(_answer(p)[0], plain)
    p.set(seam_weight=0.5)
    got, k = _answer(p)  # committed: plain; action j gets weight 0.5 ** (j + 1)
    w = 0.5 ** np.arange(1, n - k + 1, dtype=np.float32)[:, None]
    want = plain.copy()
    want[: n - k] = (1 - w) * plain[: n - k] + w * plain[k:]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    p.refuse_bad("seam_weight")
    p.set(seam="none")
    assert any("weighs nothing while seam is none" in m for m in p.set_logs(seam_weight=1.0))
    np.testing.assert_array_equal(_answer(p)[0], plain)  # stored, and no effect without a seam
    p.set(seam_weight=0.5)


@on_sim_time
def check_warm_start(p: Probe, plain: np.ndarray) -> None:
    p.set(warm_start=0.5)  # 5 of the 10 steps skipped, from the committed chunk re-noised
    warm = _answer(p)[0]
    assert not np.allclose(warm, plain, atol=1e-3)
    p.set(warm_start=0.0)
    np.testing.assert_array_equal(p.chunk(wait=60)[1], plain)
    p.refuse_bad("warm_start")
    p.set(warm_start=-1.0)  # as the schedule says: full compute names no warm start
    np.testing.assert_array_equal(p.chunk(wait=60)[1], plain)


def check_chunk_actions(p: Probe) -> None:
    plain = p.chunk()[1]  # seed 0, no seam: the same sample every time
    p.set(chunk_actions=-1)  # all the policy predicts from the observation's step on (8 - 1)
    longer = p.chunk()[1]
    assert len(plain) == 4 and len(longer) == 7
    np.testing.assert_array_equal(longer[:4], plain)  # the same sample, further
    p.set(chunk_actions=5)
    np.testing.assert_array_equal(p.chunk()[1], longer[:5])
    p.refuse_bad("chunk_actions")
    p.set(chunk_actions=0)
    np.testing.assert_array_equal(p.chunk()[1], plain)


def check_publish_trajectory(p: Probe) -> None:
    p.set(publish_trajectory=False)
    off, _, _ = p.chunk()
    p.set(publish_trajectory=True)
    on, actions, _ = p.chunk()
    assert p.r.spin(5, lambda: on in p.stamps(p.r.trajs))
    assert off not in p.stamps(p.r.trajs)  # one FIFO topic: it would have come before `on`
    traj = p.r.trajs[p.stamps(p.r.trajs).index(on)]
    np.testing.assert_array_equal(np.asarray([pt.positions for pt in traj.points], np.float32),
                                  actions)


def check_max_obs_age(p: Probe) -> None:
    p.set(max_obs_age=LAG / 2)  # the observations (LAG old) are now too old to infer from
    n = len(p.r.diags)
    old = p.dropped("stale")
    assert p.said("older than max_obs_age=0.5", n)
    p.refuse_bad("max_obs_age")
    p.refuse("max_obs_age", math.nan, "expected a positive number of seconds")
    p.set(max_obs_age=5.0)
    p.chunk()
    p.assert_unanswered(old)


def check_max_chunk_age(p: Probe) -> None:
    # 0 (the default): 2 x max_obs_age, following max_obs_age's changes
    assert p.r.spin(5, lambda: diag_values(p.r.diags[-1])["max_chunk_age"] == "10")
    p.set(max_chunk_age=LAG / 2)  # fresh enough to start, too old to publish
    n = len(p.r.diags)
    late = p.dropped("late")
    assert p.said("later than max_chunk_age=0.5 s", n)
    p.refuse_bad("max_chunk_age")
    p.set(max_chunk_age=0.0)
    p.chunk()
    p.assert_unanswered(late)


def check_schedule(p: Probe) -> None:
    p.set(schedule="uniform:2")
    assert p.chunk()[2].schedule_id == "uniform:2"
    words = "does not exist"
    p.refuse("schedule", "/nonexistent/schedule.yaml", words)
    assert p.chunk()[2].schedule_id == "uniform:2"
    p.set(schedule="")
    assert p.chunk()[2].schedule_id == ""


def check_instruction(p: Probe) -> None:
    """A DP-T takes no instruction (the VLA's live instruction: the test further down)."""
    p.refuse_bad("instruction")
    p.chunk()


def refused_while_configured(name: str, value, words: str):
    def check(p: Probe) -> None:
        p.refuse(name, value, words)
        if words == RECONFIGURE:  # the same value again (a whole parameter file reloaded)
            p.set(**{name: p.r.node.get_parameter(name).value})
        p.chunk()  # still serving, as before
    return check


def check_use_sim_time(p: Probe) -> None:
    """rclpy's own: the node's clock switches to /clock. An observation stamped on the sim
    clock (1000 s) is answered; on the wall clock it would be ages old."""
    clock = SimClock(p.r, 1000.0)
    p.set(use_sim_time=True)
    assert p.r.spin(10, clock.advance)
    wall, p.now, p.last = p.now, clock.now, -math.inf
    t, _, _ = p.chunk()
    assert 1000.0 < t < 1001.0
    p.set(use_sim_time=False)
    p.now = wall
    assert p.chunk()[0] > 1e9


CHECKS = {
    "action_high": check_action_high,
    "action_low": check_action_low,
    "limit_mode": check_limit_mode,
    "seed": check_seed,
    "rate_hz": check_rate_hz,
    "replan_steps": check_replan_steps,
    "replan": check_replan,
    "chunk_actions": check_chunk_actions,
    "publish_trajectory": check_publish_trajectory,
    "max_obs_age": check_max_obs_age,
    "max_chunk_age": check_max_chunk_age,
    "schedule": check_schedule,
    "instruction": check_instruction,
    **{name: refused_while_configured(name, value, RECONFIGURE) for name, value in (
        ("checkpoint", "/elsewhere/model"), ("device", "cuda"), ("dtype", "float16"),
        ("joint_names", ["j1", "j2", "j3"]), ("compressed_image", True))},
    # read-only (autostart: ours, start_type_description_service: rclpy's)
    **{name: refused_while_configured(name, False, "read-only")
       for name in ("autostart", "start_type_description_service")},
    "seam": check_seam,  # these three run on a clock of their own
    "seam_weight": check_seam_weight,
    "warm_start": check_warm_start,
    "use_sim_time": check_use_sim_time,  # last: it moves the clock
}


def test_every_parameter_takes_effect_at_run_time_or_is_refused(running, ckpt, capfd):
    r = running({"checkpoint": str(ckpt), **BASE})
    r.wait_connected()
    declared = set(r.node.list_parameters([], 0).names)
    assert declared == set(CHECKS), (f"parameters without a run-time check: "
                                      f"{sorted(declared - set(CHECKS))}; checks of no "
                                      f"parameter: {sorted(set(CHECKS) - declared)}")
    p = Probe(r, capfd=capfd)
    for check in CHECKS.values():
        check(p)


def test_a_bad_value_is_refused_alike_at_configure_and_at_run_time(running, ckpt):
    """One validation function serves both: the sentences cannot drift apart."""
    r = running({"checkpoint": str(ckpt), "autostart": False, **BASE}, configure=False)
    node, at_configure = r.node, {}
    for name, (value, _) in BAD.items():
        good = node.get_parameter(name).value
        assert node.set_parameters([Parameter(name, value=value)])[0].successful  # unconfigured
        start = len(r.diags)
        assert node.trigger_configure() == TransitionCallbackReturn.FAILURE, name
        assert r.spin(5, lambda start=start: len(r.diags) > start)
        at_configure[name] = r.diags[start].message
        node.set_parameters([Parameter(name, value=good)])
    assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
    node.trigger_activate()
    p = Probe(r)
    for name, (value, words) in BAD.items():
        reason = p.refuse(name, value, words)
        assert at_configure[name] == f"configure failed: {reason}", name


# -- a chunk that finishes too late ----------------------------------------------------------
GATE, ENTERED = threading.Event(), threading.Event()


class GatedBackbone(TinyBackbone):
    """A condition provider that stalls until the test opens the gate, as a VLM behind an
    overloaded GPU or a swapping host would. Attached the way a robot attaches its VLM: the
    checkpoint names the factory (``backbone: {type: callable, factory: ...}``)."""

    def forward(self, images, instructions):
        ENTERED.set()
        if not GATE.wait(timeout=120):
            raise RuntimeError("the test never opened the gate")
        return super().forward(images, instructions)


@pytest.fixture(scope="module")
def gated_vla(tmp_path_factory):
    return vla_with_backbone(f"{__name__}:GatedBackbone", tmp_path_factory.mktemp("gated"),
                             instruction="pick up the red block")


def test_a_chunk_older_than_max_chunk_age_is_dropped_and_counted(running, gated_vla):
    """On sim time: the model stalls while the clock moves 10 s (ten times the derived bound
    2 x max_obs_age = 1 s); the finished chunk is dropped, counted and said in /diagnostics.
    Then the same model, no longer stalled, publishes; its instruction is live as well."""
    GATE.clear()
    ENTERED.clear()
    r = running({"checkpoint": str(gated_vla), "use_sim_time": True, "replan_steps": 1,
                 "max_obs_age": 0.5, "seed": 0, "seam": "none"})
    clock = SimClock(r, 100.0)
    r.wait_connected()
    assert r.spin(10, clock.advance)
    p = Probe(r, now=clock.now, size=16)
    p.send()
    assert r.spin(30, ENTERED.is_set)  # inference started and is stuck in the backbone
    clock.advance(10.0)
    assert r.spin(10, clock.advance)  # the node's clock has moved on
    GATE.set()

    def counted(key: str, at_least: int) -> bool:
        clock.advance(0.05)  # sim time drives the 1 Hz diagnostics
        return bool(r.diags) and int(diag_values(r.diags[-1])[key]) >= at_least

    assert r.spin(30, lambda: counted("late", 1))
    said = [d.message for d in r.diags if "later than max_chunk_age=1.0 s" in d.message]
    assert said and float(re.search(r"ready ([0-9.]+) s after", said[0]).group(1)) >= 10.0
    assert diag_values(r.diags[-1])["max_chunk_age"] == "1" and r.chunks == [] and r.trajs == []

    _, trained, _ = p.chunk()  # the gate stays open: a fast model publishes normally
    p.set(instruction="open the drawer")
    assert not np.array_equal(p.chunk()[1], trained)
    p.set(instruction="")  # '' = the checkpoint's instruction again
    np.testing.assert_array_equal(p.chunk()[1], trained)
    assert r.spin(10, lambda: counted("chunks", 3))
    assert diag_values(r.diags[-1])["late"] == "1"
