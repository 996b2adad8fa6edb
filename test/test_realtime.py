"""Real-time execution: when the next chunk starts, how it joins the current one, and which
action the executor runs. Latency is made deterministic, never timed: a model that waits for
the test on sim time (the node, over DDS), or a simulated clock (the closed-loop evaluation)."""

import json
import threading
from pathlib import Path

import numpy as np
import pytest
import rclpy
import torch
import yaml
from helpers import SMALL, vla_with_backbone
from ros_helpers import Probe, SimClock

from bac_ros.cache.engine import DenoisingEngine
from bac_ros.cache.plans import uniform_plan
from bac_ros.cache.schedule import Schedule, ScheduleError
from bac_ros.cache.schedulers import DEFAULT_SCHEDULER, build_scheduler
from bac_ros.models.backbone import TinyBackbone
from bac_ros.models.dpt import TransformerForDiffusion
from bac_ros.models.normalizer import LinearNormalizer
from bac_ros.policy.build import new_checkpoint
from bac_ros.policy.checkpoint import save_native
from bac_ros.policy.policy import Policy
from bac_ros.policy.realtime import Execution, Replanner, blend, seam_weights
from bac_ros.sim.arm import ArmEnv, ArmTaskConfig
from bac_ros.sim.evaluate import evaluate

ROOT = Path(__file__).resolve().parents[1]


# -- the rule --------------------------------------------------------------------------------
def test_the_next_chunk_is_requested_as_many_frames_early_as_chunks_take():
    r = Replanner(0.1)
    # Nothing measured yet: the first frame asks, then as at_end (no guess)
    assert [i for i in range(9) if r.due("latency_aware", 8)] == [0, 8]
    assert r.lead(8) == 8  # ... and a seam takes the whole overlap as certain to run
    r.add_age(0.25)  # arrives in the 3rd frame: request 3 frames before the chunk ends
    assert (r.lead(8), r.interval("latency_aware", 8), r.interval("at_end", 8)) == (3, 5, 8)
    r.restart()
    assert [i for i in range(11) if r.due("latency_aware", 8)] == [0, 5, 10]
    r.restart()
    assert [i for i in range(17) if r.due("at_end", 8)] == [0, 8, 16]
    r.add_age(0.4)  # 4 frames, half a chunk: the next one still starts in time
    assert r.interval("latency_aware", 8) == 4
    r.reset_latency()
    for _ in range(19):
        r.add_age(0.12)
    r.add_age(0.9)  # one stall in a full window is ignored by the 90% quantile ...
    assert r.lead(8) == 2
    r.add_age(0.9)  # ... two are not: 9 frames, more than half a chunk: chunks cannot
    assert r.lead(8) == 9 and r.interval("latency_aware", 8) == 8  # chain; as at_end
    r.add_age(-0.05)  # an observation stamped ahead of this clock: 0 s, not a negative lead
    assert r.ages[-1] == 0.0


def test_longer_chunks_let_chunks_that_take_over_half_a_chunk_run_back_to_back():
    r = Replanner(0.1)
    r.add_age(0.6)  # 6 frames: more than half of 8 ...
    assert r.interval("latency_aware", 8) == 8  # ... 8-action chunks cannot chain: as at_end
    assert r.interval("latency_aware", 8, 15) == 6  # 15 can: back to back, one every 6 frames
    assert r.interval("latency_aware", 8, 12) == 6
    assert r.interval("at_end", 8, 15) == 8
    assert r.interval("latency_aware", 4, 15) == 4  # never later than at_end (it would wait)
    assert r.interval("latency_aware", 1, 15) == 1  # every frame (lockstep launches)
    r.add_age(0.3)
    assert r.interval("latency_aware", 8, 15) == 6  # the 90% quantile: still 6 frames
    for _ in range(2):
        r.add_age(0.8)  # 8 frames: not even 15 actions cover two of them
    assert r.interval("latency_aware", 8, 15) == 8


def test_seam_weights_and_blend():
    # committed actions 0..7, new chunk 5 steps later: new j = i - 5; 2 certain to run first
    np.testing.assert_array_equal(seam_weights(8, 5, 2, 0.5), [1, 1, 1, 1, 1, 1, 1, 0.5])
    np.testing.assert_array_equal(seam_weights(8, 2, 1, 0.5),
                                  [1, 1, 1, 0.5, 0.25, 0.125, 0.0625, 0.03125])
    np.testing.assert_array_equal(seam_weights(4, 1, 0, 0.0), [1, 0, 0, 0])
    new = np.arange(12, dtype=np.float32).reshape(4, 3)
    old = -np.arange(12, dtype=np.float32).reshape(4, 3)
    out = blend(new, old, 2, np.array([1, 1, 1, 0.5], np.float32))
    np.testing.assert_array_equal(out[0], old[2])  # weight 1: exactly the committed action
    np.testing.assert_array_equal(out[1], 0.5 * new[1] + 0.5 * old[3])
    np.testing.assert_array_equal(out[2:], new[2:])  # beyond the committed chunk: unchanged


# -- the engine ------------------------------------------------------------------------------
def _engine(K=20, sched=None):
    torch.manual_seed(0)
    m = TransformerForDiffusion(input_dim=3, output_dim=3, horizon=8, n_obs_steps=2, cond_dim=5,
                                **{**SMALL, "n_layer": 3})
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return DenoisingEngine(m, build_scheduler(sched or DEFAULT_SCHEDULER), K)


COND = torch.randn(2, 2, 5, generator=torch.Generator().manual_seed(9))
SHAPE = (2, 8, 3)


def _g(seed=4):
    return torch.Generator().manual_seed(seed)


def test_soft_noised_inpainting_is_exact_at_weights_0_and_1():
    eng = _engine()
    plain = eng.sample(COND, SHAPE, _g())
    target = torch.linspace(-0.5, 0.5, 48).reshape(SHAPE)
    noised = torch.ones(SHAPE, dtype=torch.bool)
    zero = eng.sample(COND, SHAPE, _g(), condition_data=target,
                      condition_mask=torch.zeros(SHAPE), noised_condition=noised)
    assert torch.equal(zero, plain)  # weight 0 everywhere: plain sampling, bit for bit
    w = torch.zeros(SHAPE)
    w[:, :3] = 1.0
    w[:, 3:5] = 0.5
    out = eng.sample(COND, SHAPE, _g(), condition_data=target, condition_mask=w,
                     noised_condition=noised)
    assert torch.equal(out[:, :3], target[:, :3])  # weight 1: the target exactly
    assert not torch.allclose(out[:, 3:5], target[:, 3:5], atol=1e-3)  # pulled, not pinned
    # the soft part lies nearer the target than plain sampling does
    gap = (out[:, 3:5] - target[:, 3:5]).abs().mean()
    assert gap < (plain[:, 3:5] - target[:, 3:5]).abs().mean()


DDIM = {**{k: v for k, v in DEFAULT_SCHEDULER.items() if k != "variance_type"},
        "type": "DDIMScheduler"}
DPM = {"type": "DPMSolverMultistepScheduler", "num_train_timesteps": 100,
       "beta_schedule": "squaredcos_cap_v2"}


@pytest.mark.parametrize("sched", [DEFAULT_SCHEDULER, DDIM, DPM])
def test_warm_start_skips_steps_and_zero_skipped_is_plain_sampling(sched):
    K = 10
    eng = _engine(K, sched)
    plain = eng.sample(COND, SHAPE, _g())
    prior = torch.full(SHAPE, 0.3)
    assert torch.equal(eng.sample(COND, SHAPE, _g(), init=prior, start_step=0), plain)
    before = eng.cache.calls.copy()
    warm = eng.sample(COND, SHAPE, _g(), init=prior, start_step=4)
    assert (eng.cache.calls - before == K - 4).all()  # steps 4..9 only, every block
    assert torch.isfinite(warm).all() and not torch.allclose(warm, plain, atol=1e-3)
    with pytest.raises(ValueError, match="expected 0 .. 9"):
        eng.sample(COND, SHAPE, _g(), init=prior, start_step=K)


def test_warm_start_runs_a_cache_plan_from_its_start_step():
    eng = _engine(10)
    plan = uniform_plan(10, len(eng.blocks), 3)  # updates at 0, 3, 6, 9
    before = eng.cache.calls.copy()
    eng.sample(COND, SHAPE, _g(), plan=plan, init=torch.zeros(SHAPE), start_step=4)
    # step 4 updates every block (nothing cached yet), then the plan's own steps 6 and 9
    assert (eng.cache.calls - before == 3).all()
    assert (plan[4] == 0).all()  # the caller's plan is not changed


# -- the policy ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lowdim(tmp_path_factory):
    torch.manual_seed(0)
    norm = LinearNormalizer()
    norm.fit_limits("state", torch.rand(64, 7) * 2 - 0.5)
    norm.fit_limits("action", torch.rand(64, 3) * 2)
    ckpt = new_checkpoint({"state": {"shape": [7], "type": "low_dim"}}, 3, norm, horizon=8,
                          n_action_steps=4, model=SMALL, num_inference_steps=10)
    return save_native(ckpt, tmp_path_factory.mktemp("ckpt") / "lowdim")


OBS = {"state": np.random.default_rng(0).uniform(-0.5, 1.5, (2, 7)).astype(np.float32)}


def test_predict_follows_the_committed_actions_where_they_overlap(lowdim):
    policy = Policy.from_pretrained(lowdim, device="cpu")
    committed = policy.predict(OBS, seed=1)
    plain = policy.predict(OBS, seed=0)
    # zero weights and no warm start: nothing to join, plain sampling bit for bit
    np.testing.assert_array_equal(policy.predict(OBS, seed=0, committed=committed,
                                                 committed_offset=1,
                                                 committed_weights=np.zeros(4)), plain)
    np.testing.assert_array_equal(policy.predict(OBS, seed=0, committed=committed,
                                                 committed_offset=1,
                                                 committed_weights=np.zeros(4), warm_start=0),
                                  plain)
    got = policy.predict(OBS, seed=0, committed=committed, committed_offset=1)  # weight 1
    np.testing.assert_allclose(got[:3], committed[1:], rtol=0, atol=1e-5)
    assert not np.allclose(got[3], plain[3], atol=1e-3)  # the rest is sampled toward it
    # a chunk that came too late (the robot then keeps its last command) still warm-starts
    late = dict(committed=committed, committed_offset=12, committed_weights=np.zeros(4))
    assert not np.allclose(policy.predict(OBS, seed=0, warm_start=5, **late), plain, atol=1e-3)
    np.testing.assert_array_equal(policy.predict(OBS, seed=0, warm_start=0, **late), plain)
    with pytest.raises(ValueError, match=r"expected finite \(n, 3\) actions"):
        policy.predict(OBS, committed=committed[:, :2])
    with pytest.raises(ValueError, match=r"expected 4 weights in \[0, 1\]"):
        policy.predict(OBS, committed=committed, committed_weights=np.full(4, 2.0))
    with pytest.raises(ValueError, match="warm_start is 10 steps; expected 0 .. 9"):
        policy.predict(OBS, committed=committed, warm_start=10)


def test_a_schedule_file_names_its_warm_start(lowdim, tmp_path):
    policy = Policy.from_pretrained(lowdim, device="cpu")
    steps = {b.name: [0, 5] for b in policy.engine.blocks}
    base = Schedule(policy.fingerprint, policy.sampler, steps, {"name": "test"})
    old = base.save(tmp_path / "old.yaml")
    policy.set_schedule(old)
    assert policy.warm_start == 0  # files without the key load as before
    data = yaml.safe_load(old.read_text())
    data["sampler"]["warm_start"] = {"skip": 3}
    (tmp_path / "warm.yaml").write_text(yaml.safe_dump(data))
    policy.set_schedule(tmp_path / "warm.yaml")
    assert policy.warm_start == 3 and policy.schedule_id != base.id
    committed = policy.predict(OBS, seed=1)
    warm = policy.predict(OBS, seed=0, committed=committed, committed_offset=1,
                          committed_weights=np.zeros(4))
    assert not np.allclose(warm, policy.predict(OBS, seed=0, committed=committed,
                                                committed_offset=1,
                                                committed_weights=np.zeros(4), warm_start=0))
    for bad in ({"skip": 10}, {"skip": -1}, {"steps": 3}, 3):
        data["sampler"]["warm_start"] = bad
        (tmp_path / "bad.yaml").write_text(yaml.safe_dump(data))
        with pytest.raises(ScheduleError, match=r"sampler.warm_start is .*expected \{skip: N\}"):
            policy.set_schedule(tmp_path / "bad.yaml")
    assert policy.warm_start == 3  # a refused file changes nothing
    policy.set_schedule(None)
    assert policy.warm_start == 0


def test_inpainting_softens_the_seam_of_the_bundled_policy():
    """The trained arm policy (tuned DDPM-10), 16 arm states: a new chunk 3 steps into the
    committed one, whose first action still runs from the old chunk. Its first own action
    jumps less from the committed one it replaces when inpainted with soft weights."""
    policy = Policy.from_pretrained(ROOT / "checkpoints/arm_lowdim", device="cpu",
                                    schedule=ROOT / "checkpoints/arm_lowdim/tuned_x5.yaml")
    env = ArmEnv(ArmTaskConfig())
    states = []
    for seed in range(16):
        env.reset(100_000 + seed)
        states.append(np.stack([env.state()] * 2))
    obs = {"state": np.stack(states).astype(np.float32)}
    committed = policy.predict(obs, batched=True, seed=1)
    weights = seam_weights(8, 3, 1, 0.5)
    free = policy.predict(obs, batched=True, seed=2)
    soft = policy.predict(obs, batched=True, seed=2, committed=committed, committed_offset=3,
                          committed_weights=weights)
    np.testing.assert_allclose(soft[:, 0], committed[:, 3], rtol=0, atol=1e-4)  # certain: pinned

    def jump(chunks):
        return np.linalg.norm(chunks[:, 1] - committed[:, 4], axis=1).mean()

    assert jump(soft) < 0.5 * jump(free)


# -- the closed-loop evaluation's executor ---------------------------------------------------
class SlowPolicy(Policy):
    """Each chunk takes ``latency`` seconds on a simulated clock (the evaluation reads it)."""

    latency = 0.15
    now = 0.0

    def clock(self) -> float:
        return self.now

    def predict(self, *args, **kwargs):
        out = super().predict(*args, **kwargs)
        self.now += self.latency
        self.chunks.append(out)
        return out


@pytest.mark.parametrize("replan", ["at_end", "latency_aware"])
def test_evaluation_starts_chunks_by_the_rule_and_runs_them_from_their_arrival(lowdim, replan):
    policy = SlowPolicy.from_pretrained(lowdim, device="cpu")
    policy.chunks = []
    report = evaluate(policy, "full", episodes=1, mode="realtime", clock=policy.clock,
                      execution=Execution(replan=replan, seam="none", warm_start=0.0,
                                          chunk_actions=0))
    line = report["realtime"]
    starts, ticks = line["starts"][0], report["per_episode"][0]["steps"]
    # 0.15 s: a chunk arrives 1 tick after its observation; 4 actions per chunk
    if replan == "at_end":  # every 4 ticks; the first tick of each waits (hold)
        assert starts == list(range(0, ticks, 4))
        assert line["hold_share"] == pytest.approx(len(starts) / ticks)
    else:  # measured once the first chunk is in: lead 2, every 2 ticks; never waits again
        assert starts == list(range(0, ticks, 2))
        assert line["hold_share"] == pytest.approx(1 / ticks)
    # each tick runs the newest chunk arrived by then (1 tick after its observation) at the
    # action meant for that tick, or holds when that chunk has none left
    assert len(policy.chunks) == len(starts)
    for tick, ran in enumerate(line["executed"][0]):
        arrived = [c for c, s in enumerate(starts) if s + 1 <= tick]
        k = tick - starts[arrived[-1]] if arrived else None
        assert ran == (None if k is None or k >= 4 else (arrived[-1], k)), tick


def test_a_longer_chunk_is_the_same_sample_further(lowdim):
    policy = Policy.from_pretrained(lowdim, device="cpu")
    assert policy.max_chunk_actions == 7  # horizon 8 from the second observation step on
    short = policy.predict(OBS, seed=3)
    longer = policy.predict(OBS, seed=3, n_actions=7)
    assert short.shape == (4, 3) and longer.shape == (7, 3)
    np.testing.assert_array_equal(longer[:4], short)
    np.testing.assert_array_equal(longer, policy.predict_horizon(OBS, seed=3)[1:])
    with pytest.raises(ValueError, match=r"a chunk of 8 actions; expected 1 \.\. 7"):
        policy.predict(OBS, seed=3, n_actions=8)


@pytest.mark.parametrize("chunk", [0, -1])
def test_a_slow_model_chains_long_chunks_and_holds_with_short_ones(lowdim, chunk):
    """Each chunk takes 0.25 s (it arrives 2 ticks after its observation, 3 frames of lead):
    more than half of the 4-action chunk, so with 4 actions latency_aware requests as at_end
    and every chunk leaves 2 ticks without an action; with all 7 predicted actions
    (chunk_actions -1) the chunks run back to back
    (every 3 ticks) and, after the first one, the robot never waits."""
    policy = SlowPolicy.from_pretrained(lowdim, device="cpu")
    policy.latency, policy.chunks = 0.25, []
    report = evaluate(policy, "full", episodes=1, mode="realtime", clock=policy.clock,
                      execution=Execution(replan="latency_aware", seam="none", warm_start=0.0,
                                          chunk_actions=chunk))
    line, length = report["realtime"], {0: 4, -1: 7}[chunk]  # n_action_steps; all predicted
    starts, ticks = line["starts"][0], report["per_episode"][0]["steps"]
    assert {len(c) for c in policy.chunks} == {length}
    if chunk:
        assert starts == [0, *range(3, ticks, 3)]
        assert line["hold_share"] == pytest.approx(2 / ticks)  # the first chunk's wait only
    else:
        assert starts == list(range(0, ticks, 4))
        assert line["hold_share"] == pytest.approx(
            sum(min(2, ticks - s) for s in starts) / ticks)
    for tick, ran in enumerate(line["executed"][0]):
        arrived = [c for c, s in enumerate(starts) if s + 2 <= tick]
        k = tick - starts[arrived[-1]] if arrived else None
        assert ran == (None if k is None or k >= length else (arrived[-1], k)), tick


@pytest.mark.ros
def test_sim_node_runs_a_chunk_from_the_action_for_its_arrival_time(ros):  # noqa: F811
    from bac_ros.io.messages import fill_chunk
    from bac_ros.msg import ActionChunk
    from bac_ros.nodes.sim_node import SimNode

    # real time on the sim's own clock (each tick dt later), ticked by hand
    sim = SimNode(parameter_overrides=[rclpy.parameter.Parameter(k, value=v) for k, v in (
        ("episodes", 2), ("images", False), ("publish_clock", True))])
    sim.timer.cancel()
    client = rclpy.create_node("chunk_source")
    pub = client.create_publisher(ActionChunk, "action_chunk", 10)
    executor = rclpy.executors.SingleThreadedExecutor()
    executor.add_node(sim)
    executor.add_node(client)

    def send(actions, steps_ago):
        msg = ActionChunk()
        stamp = sim.obs_stamp - steps_ago * sim.dt
        msg.header.stamp = rclpy.time.Time(nanoseconds=int(round(stamp * 1e9))).to_msg()
        fill_chunk(msg, actions, ["joint1", "joint2", "joint3"], sim.dt, 0.0, "")
        n = len(sim.chunk_arrivals)
        pub.publish(msg)
        deadline = 200
        while len(sim.chunk_arrivals) == n and deadline:
            executor.spin_once(timeout_sec=0.05)
            deadline -= 1
        assert len(sim.chunk_arrivals) > n

    try:
        while pub.get_subscription_count() == 0:
            executor.spin_once(timeout_sec=0.05)
        old = np.stack([np.linspace(0.5, 1.2, 8), np.full(8, 0.3), np.full(8, -0.2)], 1)
        for _ in range(3):
            sim._tick()  # no chunk yet: the arm holds
        send(old.astype(np.float32), 3)  # computed from the observation 3 ticks ago
        sim._tick()
        np.testing.assert_allclose(sim.env.command, old[3], atol=1e-6)  # not old[0]
        sim._tick()
        np.testing.assert_allclose(sim.env.command, old[4], atol=1e-6)
        new = old + 0.05
        send(new.astype(np.float32), 1)  # a newer chunk takes over at its action for now
        sim._tick()
        np.testing.assert_allclose(sim.env.command, new[1], atol=1e-6)
        assert sim.seam_jumps == [pytest.approx(np.linalg.norm(new[1] - old[5]), abs=1e-5)]
        send(new.astype(np.float32), 9)  # older than the one running: ignored
        sim._tick()
        np.testing.assert_allclose(sim.env.command, new[2], atol=1e-6)
        assert sim.holds == 3
        sim._start_episode()  # a new world: a chunk from before it began is not run
        send(new.astype(np.float32), 1)
        assert sim.chunk is None
        send(old.astype(np.float32), 0)
        sim._tick()
        np.testing.assert_allclose(sim.env.command, old[0], atol=1e-6)
    finally:
        client.destroy_node()
        sim.destroy_node()


# -- the policy node over DDS: the next chunk starts at the frame the rule says --------------
PERMITS, ENTERED = threading.Semaphore(0), threading.Event()


class SteppedBackbone(TinyBackbone):
    """A condition provider that waits for the test's permit at every chunk, so each chunk
    takes exactly the sim time the test moves the clock by meanwhile."""

    def forward(self, images, instructions):
        ENTERED.set()
        if not PERMITS.acquire(timeout=120):
            raise RuntimeError("the test never let the chunk finish")
        return super().forward(images, instructions)


@pytest.fixture(scope="module")
def stepped_vla(tmp_path_factory):
    return vla_with_backbone(f"{__name__}:SteppedBackbone", tmp_path_factory.mktemp("stepped"))


@pytest.mark.ros
def test_policy_node_requests_the_next_chunk_by_its_measured_latency(running, stepped_vla):  # noqa: F811
    """Sim time; every chunk takes what the test lets it (0.15 s: it arrives 2 frames after
    its observation). With 4 actions per chunk, latency_aware requests the next one 2 frames
    after the last, at_end 4; so does latency_aware for a chunk that takes 0.35 s (4 frames,
    more than half a chunk) and after a schedule change, which forgets the estimate."""
    ENTERED.clear()
    r = running({"checkpoint": str(stepped_vla), "use_sim_time": True, "replan_steps": 0,
                 "replan": "latency_aware", "seam": "none", "max_obs_age": 5.0, "seed": 0,
                 "action_low": [-10.0], "action_high": [10.0]})
    clock = SimClock(r, 100.0)
    r.wait_connected()
    assert r.spin(10, clock.advance)
    p = Probe(r, now=clock.now, size=16)

    def frame() -> float:
        t = p.send()
        r.spin(0.3)  # a request this frame causes has read its observation by now
        return t

    def finish(latency: float) -> float:
        """Let the running chunk take ``latency`` s of sim time; its stamp."""
        assert r.spin(60, ENTERED.is_set)
        ENTERED.clear()
        clock.advance(latency)
        assert r.spin(10, clock.advance)
        n = len(r.chunks)
        PERMITS.release()
        assert r.spin(60, lambda: len(r.chunks) > n)
        return p.stamps(r.chunks)[-1]

    def next_request(latency: float = 0.15) -> int:
        """Frames sent until a chunk is requested (the chunk says which one it answers)."""
        sent = []
        while not ENTERED.is_set():
            sent.append(frame())
            assert len(sent) <= 8, "no chunk was requested"
        return sent.index(finish(latency)) + 1

    first = frame()
    assert finish(0.15) == first
    assert [next_request() for _ in range(3)] == [2, 2, 2]
    p.set(replan="at_end")
    assert [next_request() for _ in range(2)] == [4, 4]
    p.set(replan="latency_aware")
    assert next_request(latency=0.35) == 2  # the estimate is now 0.35 s: chunks cannot chain
    assert next_request() == 4
    p.set(schedule="uniform:2")  # latency forgotten: as at_end ...
    assert next_request() == 4
    assert next_request() == 2  # ... until this schedule's first chunk was measured


def test_a_chunk_late_by_all_its_actions_leaves_the_arm_holding_its_start(lowdim):
    """A fixed latency longer than a chunk: every action is past its tick on arrival, so each
    episode is the arm holding its start pose to the limit; a tick less, and the arm moves."""
    policy = Policy.from_pretrained(lowdim, device="cpu")
    n, tick_ms = policy.n_action_steps, policy.dt * 1e3
    stale = evaluate(policy, "full", episodes=2, mode="realtime", latency_ms=(n + 0.5) * tick_ms)
    for ep in stale["per_episode"]:
        env = ArmEnv(ArmTaskConfig())
        env.reset(ep["seed"])
        done = False
        while not done:
            _, done, info = env.step(env.hold_action())
        assert (ep["success"], ep["steps"], ep["final_error"]) == \
            (bool(info["success"]), env.steps, float(info["effector_error"]))
        assert ep["chunks"] == -(-env.steps // n)
    late = evaluate(policy, "full", episodes=2, mode="realtime", latency_ms=(n - 0.5) * tick_ms)
    assert all(a["final_error"] != b["final_error"]
               for a, b in zip(late["per_episode"], stale["per_episode"]))


def test_the_evaluation_refuses_a_rule_it_would_not_apply(lowdim):
    policy = Policy.from_pretrained(lowdim, device="cpu")
    for kw in ({"mode": "lockstep"}, {"mode": "realtime", "latency_ms": 100.0}):
        with pytest.raises(ValueError, match="act in realtime mode with live latency only"):
            evaluate(policy, "full", episodes=1, execution=Execution(), **kw)


def test_bac_eval_runs_the_node_rule_in_real_time(lowdim, tmp_path, capsys):
    from bac_ros.cli import main

    out = tmp_path / "rt.json"
    assert main(["eval", "--checkpoint", str(lowdim), "--mode", "realtime", "--episodes", "1",
                 "--device", "cpu", "--replan", "latency_aware", "--seam", "inpaint",
                 "--seam-weight", "0.7", "--json", str(out)]) == 0
    rt = json.loads(out.read_text())["realtime"]
    assert (rt["replan"], rt["seam"], rt["seam_weight"]) == ("latency_aware", "inpaint", 0.7)
    assert len(rt["starts"]) == 1 and rt["starts"][0][0] == 0
    assert main(["eval", "--checkpoint", str(lowdim), "--seam", "inpaint", "--episodes", "1",
                 "--device", "cpu"]) != 0
    assert "act in realtime mode with live latency only" in capsys.readouterr().err
