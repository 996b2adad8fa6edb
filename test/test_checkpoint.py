"""Checkpoints: Chi et al.'s on-disk .ckpt format -> import -> native -> reload, same actions."""

import dill
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from test_dpt import ReferenceDPT
from torch import nn

from bac_ros.cache.schedulers import DEFAULT_SCHEDULER, build_scheduler
from bac_ros.models.normalizer import LinearNormalizer
from bac_ros.models.vision import build_obs_encoder
from bac_ros.policy.checkpoint import (
    CheckpointError,
    import_chi_ckpt,
    load_native,
    save_native,
)
from bac_ros.policy.policy import ObservationError, Policy

OBS_DIM, ACT_DIM, H, TO, TA = 6, 2, 8, 2, 4


def _lowdim_cfg():
    """A workspace config shaped like Chi et al.'s train_diffusion_transformer_lowdim_workspace."""
    return OmegaConf.create({
        "name": "train_diffusion_transformer_lowdim",
        "_target_": "diffusion_policy.workspace.train_diffusion_transformer_lowdim_workspace."
                    "TrainDiffusionTransformerLowdimWorkspace",
        "obs_dim": OBS_DIM, "action_dim": ACT_DIM, "horizon": H, "n_obs_steps": TO,
        "n_action_steps": TA, "n_latency_steps": 0, "past_action_visible": False,
        "obs_as_cond": True, "pred_action_steps_only": False,
        "policy": {
            "_target_": "diffusion_policy.policy.diffusion_transformer_lowdim_policy."
                        "DiffusionTransformerLowdimPolicy",
            "model": {
                "_target_": "diffusion_policy.model.diffusion.transformer_for_diffusion."
                            "TransformerForDiffusion",
                "input_dim": "${eval:'${action_dim} if ${obs_as_cond} else ${obs_dim} + "
                             "${action_dim}'}",
                "output_dim": "${policy.model.input_dim}",
                "horizon": "${horizon}", "n_obs_steps": "${n_obs_steps}",
                "cond_dim": "${eval:'${obs_dim} if ${obs_as_cond} else 0'}",
                "n_layer": 2, "n_head": 2, "n_emb": 32, "p_drop_emb": 0.0, "p_drop_attn": 0.3,
                "causal_attn": True, "time_as_cond": True, "obs_as_cond": "${obs_as_cond}",
                "n_cond_layers": 0,
            },
            "noise_scheduler": {"_target_": "diffusers.schedulers.scheduling_ddpm.DDPMScheduler",
                                **{k: v for k, v in DEFAULT_SCHEDULER.items() if k != "type"}},
            "horizon": "${horizon}", "obs_dim": "${obs_dim}", "action_dim": "${action_dim}",
            "n_action_steps": "${eval:'${n_action_steps}+${n_latency_steps}'}",
            "n_obs_steps": "${n_obs_steps}", "num_inference_steps": 10,
            "obs_as_cond": "${obs_as_cond}", "pred_action_steps_only": "${pred_action_steps_only}",
            "oa_step_convention": True,
        },
        "training": {"use_ema": True, "seed": 42},
        "task": {"name": "toy"},
    })


class ChiLowdimPolicyWeights(nn.Module):
    """The tensors of DiffusionTransformerLowdimPolicy: model.*, normalizer.* (mask generator
    has none)."""

    def __init__(self):
        super().__init__()
        self.model = ReferenceDPT(ACT_DIM, ACT_DIM, H, TO, OBS_DIM, 2, 2, 32, True, True, 0)
        g = torch.Generator().manual_seed(3)
        with torch.no_grad():
            for p in self.model.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
        self.normalizer = LinearNormalizer()
        self.normalizer.fit_limits("obs", torch.randn(100, OBS_DIM, generator=g) * 3)
        self.normalizer.fit_limits("action", torch.rand(100, ACT_DIM, generator=g) * 2 - 0.5)


def _write_chi_ckpt(path, cfg, policy_weights):
    """As diffusion_policy's BaseWorkspace.save_checkpoint writes it."""
    ema = policy_weights.state_dict()
    model = {k: v + 1.0 if v.is_floating_point() and v.numel() else v for k, v in ema.items()}
    payload = {
        "cfg": cfg,
        "state_dicts": {"model": model, "ema_model": ema,
                        "optimizer": torch.optim.AdamW([nn.Parameter(torch.zeros(1))])
                        .state_dict()},
        "pickles": {"_output_dir": dill.dumps("/tmp/outputs/2026.11.25")},
    }
    with open(path, "wb") as f:
        torch.save(payload, f, pickle_module=dill)


def _chi_predict_lowdim(weights, obs, seed, K=10):
    """Chi et al.'s predict_action for the low-dim transformer policy, written out."""
    nobs = weights.normalizer.normalize("obs", torch.as_tensor(obs)[None])
    cond = nobs[:, :TO]
    s = build_scheduler(DEFAULT_SCHEDULER)
    s.set_timesteps(K)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((1, H, ACT_DIM), generator=g)
    with torch.no_grad():
        for t in s.timesteps:
            x = s.step(weights.model.eval()(x, int(t), cond), t, x, generator=g).prev_sample
    pred = weights.normalizer.unnormalize("action", x)
    return pred[0, TO - 1 : TO - 1 + TA].numpy()


@pytest.fixture
def lowdim_ckpt(tmp_path):
    weights = ChiLowdimPolicyWeights()
    path = tmp_path / "epoch=0100-test_mean_score=0.900.ckpt"
    _write_chi_ckpt(path, _lowdim_cfg(), weights)
    return path, weights


def test_import_convert_reload_gives_identical_actions(lowdim_ckpt, tmp_path):
    path, weights = lowdim_ckpt
    obs = {"obs": np.random.default_rng(0).normal(size=(TO, OBS_DIM)).astype(np.float32)}
    imported = Policy.from_pretrained(path, device="cpu")
    a = imported.predict(obs, seed=7)
    assert a.shape == (TA, ACT_DIM) and a.dtype == np.float32
    # Same as the original algorithm on the original (EMA) weights.
    np.testing.assert_allclose(a, _chi_predict_lowdim(weights, obs["obs"], 7), atol=2e-5)
    ckpt = import_chi_ckpt(path)
    assert ckpt.config["source"]["weights"] == "ema_model"
    save_native(ckpt, tmp_path / "native", weights_dtype=torch.float32)
    reloaded = Policy.from_pretrained(tmp_path / "native", device="cpu")
    np.testing.assert_array_equal(reloaded.predict(obs, seed=7), a)
    assert reloaded.fingerprint == imported.fingerprint
    # float16 storage: a different (rounded) model, close actions, different fingerprint.
    save_native(ckpt, tmp_path / "fp16")
    half = Policy.from_pretrained(tmp_path / "fp16", device="cpu")
    assert half.fingerprint != imported.fingerprint
    np.testing.assert_allclose(half.predict(obs, seed=7), a, atol=5e-2)
    # Saving over a checkpoint replaces each file whole and leaves no temporary files behind.
    save_native(ckpt, tmp_path / "fp16", weights_dtype=torch.float32)
    assert sorted(p.name for p in (tmp_path / "fp16").iterdir()) == ["config.yaml",
                                                                     "model.safetensors"]
    assert Policy.from_pretrained(tmp_path / "fp16", device="cpu").fingerprint == \
        imported.fingerprint


def test_predict_is_deterministic_and_slices_the_chunk(lowdim_ckpt):
    policy = Policy.from_pretrained(lowdim_ckpt[0], device="cpu")
    obs = {"obs": np.random.default_rng(1).normal(size=(3, OBS_DIM))}  # longer history: last To
    a, b = policy.predict(obs, seed=11), policy.predict(obs, seed=11)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, policy.predict(obs, seed=12))
    full = policy.predict_horizon(obs, seed=11)
    assert full.shape == (H, ACT_DIM)
    np.testing.assert_array_equal(a, full[TO - 1 : TO - 1 + TA])
    batched = policy.predict({"obs": np.stack([obs["obs"]] * 3)}, seed=11, batched=True)
    assert batched.shape == (3, TA, ACT_DIM)


def test_bad_observations_are_named(lowdim_ckpt):
    policy = Policy.from_pretrained(lowdim_ckpt[0], device="cpu")
    with pytest.raises(ObservationError, match="missing \\['obs'\\]"):
        policy.predict({"state": np.zeros((2, OBS_DIM))})
    with pytest.raises(ObservationError, match="expected \\(2, 6\\)"):
        policy.predict({"obs": np.zeros((2, 5))})
    with pytest.raises(ObservationError, match="holds 1 steps"):
        policy.predict({"obs": np.zeros((1, OBS_DIM))})
    with pytest.raises(ObservationError, match="NaN"):
        policy.predict({"obs": np.full((2, OBS_DIM), np.nan)})


def test_bad_checkpoints_are_named(lowdim_ckpt, tmp_path):
    with pytest.raises(CheckpointError, match="neither a checkpoint folder"):
        Policy.from_pretrained(tmp_path / "nothing.pt")
    with pytest.raises(CheckpointError, match="expected config.yaml"):
        Policy.from_pretrained(tmp_path)
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a pickle")
    with pytest.raises(CheckpointError, match="cannot be read"):
        Policy.from_pretrained(junk)
    other = tmp_path / "other.ckpt"
    torch.save({"cfg": OmegaConf.create({"policy": {"_target_": "x.DiffusionUnetLowdimPolicy",
                                                    "horizon": 1, "n_obs_steps": 1,
                                                    "n_action_steps": 1}}),
                "state_dicts": {"model": {}}}, other, pickle_module=dill)
    with pytest.raises(CheckpointError, match="DiffusionUnetLowdimPolicy"):
        Policy.from_pretrained(other)
    ckpt = import_chi_ckpt(lowdim_ckpt[0])
    del ckpt.tensors["model.head.weight"]
    save_native(ckpt, tmp_path / "missing")
    with pytest.raises(CheckpointError, match="missing \\['head.weight'\\]"):
        Policy.from_pretrained(tmp_path / "missing")
    ckpt = import_chi_ckpt(lowdim_ckpt[0])
    ckpt.config["policy"]["kind"] = "unet"
    with pytest.raises(CheckpointError, match="policy kind 'unet'"):
        save_native(ckpt, tmp_path / "kind")
    good = save_native(import_chi_ckpt(lowdim_ckpt[0]), tmp_path / "trunc")
    data = (good / "model.safetensors").read_bytes()
    (good / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cannot be read as safetensors"):
        load_native(good)


IMG = (3, 32, 32)


def _hybrid_cfg():
    return OmegaConf.create({
        "name": "train_diffusion_transformer_hybrid",
        "shape_meta": {"obs": {"image": {"shape": list(IMG), "type": "rgb"},
                               "agent_pos": {"shape": [2], "type": "low_dim"}},
                       "action": {"shape": [ACT_DIM]}},
        "horizon": H, "n_obs_steps": TO, "n_action_steps": TA, "obs_as_cond": True,
        "policy": {
            "_target_": "diffusion_policy.policy.diffusion_transformer_hybrid_image_policy."
                        "DiffusionTransformerHybridImagePolicy",
            "shape_meta": "${shape_meta}",
            "noise_scheduler": {"_target_": "diffusers.schedulers.scheduling_ddpm.DDPMScheduler",
                                **{k: v for k, v in DEFAULT_SCHEDULER.items() if k != "type"}},
            "horizon": "${horizon}", "n_action_steps": "${n_action_steps}",
            "n_obs_steps": "${n_obs_steps}", "num_inference_steps": 6, "crop_shape": [28, 28],
            "obs_encoder_group_norm": True, "eval_fixed_crop": True, "n_layer": 2,
            "n_cond_layers": 0, "n_head": 2, "n_emb": 32, "p_drop_emb": 0.0, "p_drop_attn": 0.3,
            "causal_attn": True, "time_as_cond": True, "obs_as_cond": "${obs_as_cond}",
            "pred_action_steps_only": False,
        },
        "training": {"use_ema": True},
    })


def test_hybrid_image_checkpoint_imports_and_matches_manual_pipeline(tmp_path):
    torch.manual_seed(0)
    enc, feat = build_obs_encoder({"type": "robomimic_resnet18", "crop_shape": [28, 28],
                                   "group_norm": True,
                                   "obs": {"image": {"shape": list(IMG), "type": "rgb"},
                                           "agent_pos": {"shape": [2]}}})
    model = ReferenceDPT(ACT_DIM, ACT_DIM, H, TO, feat, 2, 2, 32, True, True, 0)
    norm = LinearNormalizer()
    norm.fit_image_range("image")
    norm.fit_limits("agent_pos", torch.rand(50, 2) * 4)
    norm.fit_limits("action", torch.rand(50, ACT_DIM))
    weights = nn.Module()
    weights.obs_encoder, weights.model, weights.normalizer = enc, model, norm
    path = tmp_path / "hybrid.ckpt"
    _write_chi_ckpt(path, _hybrid_cfg(), weights)

    policy = Policy.from_pretrained(path, device="cpu")
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(TO, 32, 32, 3), dtype=np.uint8)  # camera layout HWC
    pos = rng.random((TO, 2)).astype(np.float32)
    got = policy.predict({"image": image, "agent_pos": pos}, seed=3)

    # Manual pipeline: normalise -> encode (time folded into batch) -> sample -> unnormalise.
    img = torch.as_tensor(np.moveaxis(image, -1, 1)).float()[None] / 255
    nobs = {"image": norm.normalize("image", img),
            "agent_pos": norm.normalize("agent_pos", torch.as_tensor(pos)[None])}
    enc.eval()
    model.eval()
    with torch.no_grad():
        cond = enc({k: v.reshape(-1, *v.shape[2:]) for k, v in nobs.items()}).reshape(1, TO, -1)
        s = build_scheduler(DEFAULT_SCHEDULER)
        s.set_timesteps(6)
        g = torch.Generator().manual_seed(3)
        x = torch.randn((1, H, ACT_DIM), generator=g)
        for t in s.timesteps:
            x = s.step(model(x, int(t), cond), t, x, generator=g).prev_sample
    want = norm.unnormalize("action", x)[0, TO - 1 : TO - 1 + TA].numpy()
    np.testing.assert_allclose(got, want, atol=2e-5)
    save_native(import_chi_ckpt(path), tmp_path / "native_img", weights_dtype=torch.float32)
    again = Policy.from_pretrained(tmp_path / "native_img", device="cpu")
    np.testing.assert_array_equal(again.predict({"image": image, "agent_pos": pos}, seed=3), got)
