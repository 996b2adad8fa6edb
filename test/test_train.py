"""`bac train` on two demonstrations with a tiny DP-T: checkpoints, resume, fine-tuning."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import TINY

from bac_ros.policy.checkpoint import load_native, save_native
from bac_ros.policy.policy import Policy
from bac_ros.policy.timing import device_label
from bac_ros.sim.arm import ArmTaskConfig
from bac_ros.sim.demos import generate_demos
from bac_ros.train.train import TrainConfig, build_initial, train


@pytest.fixture(scope="module")
def demos():
    return generate_demos(2, seed=0, with_images=True)


def _cfg(variant: str, steps: int, **kw) -> TrainConfig:
    return TrainConfig(variant=variant, steps=steps, batch_size=4, warmup_steps=2,
                       model=dict(TINY), save_every=2, **kw)


def _quiet(*_):
    pass


def test_lowdim_training_writes_a_loadable_checkpoint_and_resumes(demos, tmp_path):
    out = train(demos, tmp_path / "ck", _cfg("lowdim", 3), device="cpu", log=_quiet)
    ck = load_native(out)
    assert ck.config["training"]["steps_done"] == 3
    assert np.isfinite(ck.config["training"]["final_loss"])
    assert ck.config["training"]["device"] == device_label(torch.device("cpu"))
    first = {k: v.clone() for k, v in ck.tensors.items()}

    # More steps resume from the saved state (step 3), and move the weights on.
    messages = []
    train(demos, out, _cfg("lowdim", 5), device="cpu", log=messages.append)
    assert "resumed from step 3" in messages
    ck = load_native(out)
    assert ck.config["training"]["steps_done"] == 5
    assert any(not torch.equal(first[k], v) for k, v in ck.tensors.items()
               if k.startswith("model."))
    with pytest.raises(ValueError, match="another training config"):
        train(demos, out, _cfg("lowdim", 6, lr=1e-3), device="cpu", log=_quiet)

    policy = Policy.from_pretrained(out, device="cpu")
    chunk = policy.predict({"state": demos["state"][:2]}, seed=0)
    assert chunk.shape == (8, 3) and np.isfinite(chunk).all()


def test_image_training_sees_the_whole_frame_and_writes_a_loadable_checkpoint(demos, tmp_path):
    out = train(demos, tmp_path / "img", _cfg("image", 2), device="cpu", log=_quiet)
    ck = load_native(out)
    assert ck.config["obs_encoder"]["crop_shape"] is None
    policy = Policy.from_pretrained(out, device="cpu")
    obs = {"image": demos["image"][:2], "joints": demos["joints"][:2]}
    assert np.isfinite(policy.predict(obs, seed=0)).all()


def test_fine_tune_rebuilds_pixel_grids_and_refuses_other_shapes(demos, tmp_path):
    cfg = _cfg("image", 1)
    start = build_initial(cfg, demos, ArmTaskConfig())
    grid = next(k for k in start.tensors if k.endswith(".pos_x"))
    # A checkpoint trained on 88 px crops: its spatial-softmax grids hold 11x11 positions.
    start.tensors[grid] = torch.zeros(1, 121)
    save_native(start, tmp_path / "cropped")
    out = train(demos, tmp_path / "ft", cfg, device="cpu", log=_quiet, init=tmp_path / "cropped")
    assert load_native(out).tensors[grid].shape == (1, 144)  # 96 px image, stride 8: 12x12

    linear = next(k for k in start.tensors if k.startswith("obs_encoder.") and
                  k.endswith("linear.weight"))
    start.tensors[linear] = torch.zeros(5, 5)
    save_native(start, tmp_path / "other")
    with pytest.raises(ValueError, match="expects"):
        train(demos, tmp_path / "ft2", cfg, device="cpu", log=_quiet, init=tmp_path / "other")


def test_fine_tune_may_change_dropout_but_not_the_architecture(demos, tmp_path):
    base = train(demos, tmp_path / "base", _cfg("lowdim", 1), device="cpu", log=_quiet)
    calmer = _cfg("lowdim", 1)
    calmer.model = {**TINY, "p_drop_attn": 0.05}
    out = train(demos, tmp_path / "ft", calmer, device="cpu", log=_quiet, init=base)
    ck = load_native(out)
    assert ck.config["model"]["p_drop_attn"] == 0.05
    assert ck.config["source"]["fine_tuned_from"]["model"]["p_drop_attn"] == TINY["p_drop_attn"]
    wider = _cfg("lowdim", 1)
    wider.model = {**TINY, "n_emb": 2 * TINY["n_emb"]}
    with pytest.raises(ValueError, match="another model config"):
        train(demos, tmp_path / "ft2", wider, device="cpu", log=_quiet, init=base)
