"""The timing helpers the bench scripts share: plans timed side by side, the device label."""

import os
import platform

import numpy as np
import torch
from helpers import SMALL

from bac_ros.cache.plans import uniform_plan
from bac_ros.models.normalizer import LinearNormalizer
from bac_ros.policy.build import new_checkpoint
from bac_ros.policy.policy import Policy
from bac_ros.policy.timing import device_label, time_plans

K = 6


def _policy() -> Policy:
    norm = LinearNormalizer()
    norm.fit_limits("state", torch.randn(64, 4))
    norm.fit_limits("action", torch.randn(64, 2))
    return Policy(new_checkpoint({"state": {"shape": [4], "type": "low_dim"}}, 2, norm,
                                 horizon=8, n_action_steps=4, model=SMALL,
                                 num_inference_steps=K), device="cpu")


def test_time_plans_runs_every_plan_once_per_round_and_ends_on_full_compute():
    policy = _policy()
    plans = {"full": None, "every 2": uniform_plan(K, len(policy.engine.blocks), 2)}
    ran, predict = [], policy.predict

    def recording(obs, seed=None, **kw):  # the real predict, noting what it ran under
        ran.append((policy.schedule_id, policy.plan is None, seed))
        return predict(obs, seed=seed, **kw)

    policy.predict = recording
    obs = {"state": np.zeros((2, 4), np.float32)}
    times = time_plans(policy, plans, obs, repeats=3)
    # two warm-up rounds, then three timed ones; both plans in every round, in turn
    assert ran == [(name, plan is None, r) for r in range(5) for name, plan in plans.items()]
    assert {name: len(t) for name, t in times.items()} == {"full": 3, "every 2": 3}
    assert all(s > 0 for t in times.values() for s in t)
    assert policy.plan is None and policy.schedule_id == ""


def test_the_device_label_names_the_cpu_it_ran_on():
    label = device_label(torch.device("cpu"))
    assert label == (f"CPU ({platform.machine()}, {os.cpu_count()} cores, "
                     f"{torch.get_num_threads()} threads)")
