"""Checkpoints: Chi et al.'s on-disk .ckpt format -> import -> native -> reload, same actions."""

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from chi_fixtures import (
    ACT_DIM,
    AGENT_POS,
    H_IMG,
    IMG,
    OBS_DIM,
    TA,
    TO,
    H,
    HybridPolicy,
    LowdimPolicy,
    hybrid_cfg,
    lowdim_cfg,
    unet_lowdim_cfg,
    write_cfg_only_ckpt,
    write_workspace_ckpt,
)
from omegaconf import OmegaConf

from bac_ros.cache.schedulers import DEFAULT_SCHEDULER, build_scheduler
from bac_ros.cli import main
from bac_ros.policy.checkpoint import (
    IMPORTER_VERSION,
    CheckpointError,
    import_chi_ckpt,
    load_native,
    save_native,
)
from bac_ros.policy.policy import ObservationError, Policy

ROOT = Path(__file__).resolve().parents[1]

# Where each accepted class's predict_action starts the executed chunk, as its source reads
# (``start = To - 1; end = start + self.n_action_steps``), written out independently of bac_ros.
AUTHORS_START = {"DiffusionTransformerLowdimPolicy": TO - 1,
                 "DiffusionTransformerHybridImagePolicy": TO - 1}


def _chi_predict_lowdim(weights, obs, seed, K=10):
    """DiffusionTransformerLowdimPolicy.predict_action (obs as condition), written out."""
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
    start = TO - 1
    return pred[0, start : start + TA].numpy()


@pytest.fixture
def lowdim_ckpt(tmp_path):
    weights = LowdimPolicy()
    path = tmp_path / "epoch=0100-test_mean_score=0.900.ckpt"
    write_workspace_ckpt(path, lowdim_cfg(), weights)
    return path, weights


def _lowdim_obs(seed, steps=TO):
    return {"obs": np.random.default_rng(seed).normal(size=(steps, OBS_DIM)).astype(np.float32)}


def test_import_convert_reload_gives_identical_actions(lowdim_ckpt, tmp_path):
    path, weights = lowdim_ckpt
    obs = _lowdim_obs(0)
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


@pytest.fixture(params=["DiffusionTransformerLowdimPolicy",
                        "DiffusionTransformerHybridImagePolicy"])
def each_class(request, tmp_path):
    """(policy class, .ckpt, one observation history) for each class bac_ros imports."""
    path = tmp_path / "latest.ckpt"
    rng = np.random.default_rng(1)
    if request.param == "DiffusionTransformerLowdimPolicy":
        write_workspace_ckpt(path, lowdim_cfg(), LowdimPolicy())
        obs = _lowdim_obs(1, steps=3)  # a longer history: the policy takes the last To
    else:
        write_workspace_ckpt(path, hybrid_cfg(), HybridPolicy())
        obs = {"image": rng.integers(0, 256, size=(TO, IMG[1], IMG[2], 3), dtype=np.uint8),
               "agent_pos": rng.random((TO, AGENT_POS)).astype(np.float32) * 500}
    return request.param, path, obs


def test_executed_chunk_is_the_policy_class_slice(each_class, tmp_path):
    cls, path, obs = each_class
    policy = Policy.from_pretrained(path, device="cpu")
    a, b = policy.predict(obs, seed=11), policy.predict(obs, seed=11)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, policy.predict(obs, seed=12))
    full = policy.predict_horizon(obs, seed=11)  # the whole action_pred, same noise
    assert full.shape == (policy.horizon, ACT_DIM)
    start = AUTHORS_START[cls]
    np.testing.assert_array_equal(a, full[start : start + TA])
    assert not np.allclose(a, full[TO : TO + TA])  # the old importer's low-dim chunk
    # bac convert records the rule; the converted folder executes the same chunk.
    assert main(["convert", str(path), str(tmp_path / "native")]) == 0
    source = yaml.safe_load((tmp_path / "native" / "config.yaml").read_text())["source"]
    assert source == {"imported_from": "latest.ckpt", "policy_class": cls, "weights": "ema_model",
                      "importer_version": IMPORTER_VERSION,
                      "action_slice": "action_pred[n_obs_steps-1 : n_obs_steps-1+n_action_steps]"}
    native = Policy.from_pretrained(tmp_path / "native", device="cpu")
    np.testing.assert_array_equal(native.predict(obs, seed=11), a)


def test_bad_observations_are_named(lowdim_ckpt):
    policy = Policy.from_pretrained(lowdim_ckpt[0], device="cpu")
    with pytest.raises(ObservationError, match="missing \\['obs'\\]"):
        policy.predict({"state": np.zeros((2, OBS_DIM))})
    with pytest.raises(ObservationError, match="expected \\(2, 20\\)"):
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
    latency = tmp_path / "latency.ckpt"
    write_cfg_only_ckpt(latency, lowdim_cfg(overrides=["n_latency_steps=1"]))
    with pytest.raises(CheckpointError, match="n_latency_steps=1, whose env runners drop"):
        Policy.from_pretrained(latency)
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


def test_unet_policy_is_refused_with_one_sentence(tmp_path, capsys):
    path = tmp_path / "unet.ckpt"
    write_cfg_only_ckpt(path, unet_lowdim_cfg())
    with pytest.raises(CheckpointError) as err:
        Policy.from_pretrained(path)
    msg = str(err.value)
    assert "holds a DiffusionUnetLowdimPolicy; bac_ros imports only the transformer policies " \
           "(DiffusionTransformerLowdimPolicy, DiffusionTransformerHybridImagePolicy)" in msg
    assert "\n" not in msg
    assert main(["convert", str(path), str(tmp_path / "out")]) == 1
    assert capsys.readouterr().err.strip() == f"bac convert: error: {msg}"
    assert not (tmp_path / "out").exists()


def test_folders_of_an_older_importer_are_refused(lowdim_ckpt, tmp_path):
    path = lowdim_ckpt[0]
    folder = tmp_path / "mine"
    assert main(["convert", str(path), str(folder)]) == 0
    cfg_file = folder / "config.yaml"
    config = yaml.safe_load(cfg_file.read_text())
    # What importer version 1 wrote: no rule recorded, the low-dim chunk started at To.
    old = dict(config, source={"imported_from": path.name, "weights": "ema_model"})
    old["policy"] = dict(config["policy"], action_offset=TO)
    for source, match in [
        (old["source"], "older bac_ros importer \\(version 1\\) that executed low-dim"),
        (dict(config["source"], importer_version=1), "older bac_ros importer \\(version 1\\)"),
        (dict(config["source"], importer_version=IMPORTER_VERSION + 1), "newer bac_ros"),
    ]:
        cfg_file.write_text(yaml.safe_dump(dict(old, source=source), sort_keys=False))
        with pytest.raises(CheckpointError, match=match) as err:
            Policy.from_pretrained(folder, device="cpu")
        assert "re-convert" in str(err.value) and "`bac convert" in str(err.value)
    # Re-converting as told gives a folder that loads and executes the authors' chunk.
    assert main(["convert", str(path), str(folder)]) == 0
    policy = Policy.from_pretrained(folder, device="cpu")
    assert policy.action_offset == TO - 1
    # Folders trained here were never imported: the rule does not concern them.
    for bundled in ("arm_lowdim", "arm_image"):
        ckpt = load_native(ROOT / "checkpoints" / bundled)
        assert "imported_from" not in ckpt.config["source"]


def test_unresolved_cfg_imports_like_the_resolved_one(tmp_path):
    """A cfg saved without OmegaConf.resolve (a workspace module's own main) keeps Hydra's
    ${now:...} and train.py's ${eval:...}; neither resolver is registered here."""
    weights = LowdimPolicy()
    raw = lowdim_cfg(resolve=False)
    assert OmegaConf.to_container(raw.logging)["name"].startswith("${now:")
    assert not OmegaConf.has_resolver("now") and not OmegaConf.has_resolver("eval")
    write_workspace_ckpt(tmp_path / "raw.ckpt", raw, weights)
    write_workspace_ckpt(tmp_path / "resolved.ckpt", lowdim_cfg(), weights)
    a, b = import_chi_ckpt(tmp_path / "raw.ckpt"), import_chi_ckpt(tmp_path / "resolved.ckpt")
    a.config["source"].pop("imported_from"), b.config["source"].pop("imported_from")
    assert a.config == b.config
    assert not OmegaConf.has_resolver("eval")  # offered while importing only
    obs = _lowdim_obs(2)
    np.testing.assert_array_equal(Policy(a, device="cpu").predict(obs, seed=1),
                                  Policy(b, device="cpu").predict(obs, seed=1))


def test_an_unknown_resolver_is_named_where_the_import_needs_it(tmp_path):
    weights = LowdimPolicy()
    # Outside what the import reads it is never evaluated.
    elsewhere = lowdim_cfg(resolve=False, overrides=["logging.name=${wandb_clock:x}"])
    write_workspace_ckpt(tmp_path / "elsewhere.ckpt", elsewhere, weights)
    assert import_chi_ckpt(tmp_path / "elsewhere.ckpt").config["policy"]["kind"] == "dpt_lowdim"
    needed = lowdim_cfg(resolve=False, overrides=["policy.num_inference_steps=${steps_from:10}"])
    write_workspace_ckpt(tmp_path / "needed.ckpt", needed, weights)
    with pytest.raises(CheckpointError) as err:
        import_chi_ckpt(tmp_path / "needed.ckpt")
    msg = str(err.value)
    assert "config entry policy.num_inference_steps uses the resolver 'steps_from'" in msg
    assert "\n" not in msg


@pytest.mark.parametrize("resolve", [True, False])
def test_loading_a_ckpt_emits_no_warning(tmp_path, resolve):
    path = tmp_path / "latest.ckpt"
    write_workspace_ckpt(path, lowdim_cfg(resolve=resolve), LowdimPolicy())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        policy = Policy.from_pretrained(path, device="cpu")
    assert policy.n_action_steps == TA


def test_hybrid_image_checkpoint_imports_and_matches_manual_pipeline(tmp_path):
    weights = HybridPolicy()
    path = tmp_path / "hybrid.ckpt"
    write_workspace_ckpt(path, hybrid_cfg(), weights)

    policy = Policy.from_pretrained(path, device="cpu")
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(TO, IMG[1], IMG[2], 3), dtype=np.uint8)  # camera HWC
    pos = rng.random((TO, AGENT_POS)).astype(np.float32) * 500
    got = policy.predict({"image": image, "agent_pos": pos}, seed=3)

    # Manual pipeline: normalise -> encode (time folded into batch) -> sample -> unnormalise.
    norm, enc, model = weights.normalizer, weights.obs_encoder.eval(), weights.model.eval()
    img = torch.as_tensor(np.moveaxis(image, -1, 1)).float()[None] / 255
    nobs = {"image": norm.normalize("image", img),
            "agent_pos": norm.normalize("agent_pos", torch.as_tensor(pos)[None])}
    with torch.no_grad():
        cond = enc({k: v.reshape(-1, *v.shape[2:]) for k, v in nobs.items()}).reshape(1, TO, -1)
        s = build_scheduler(DEFAULT_SCHEDULER)
        s.set_timesteps(6)
        g = torch.Generator().manual_seed(3)
        x = torch.randn((1, H_IMG, ACT_DIM), generator=g)
        for t in s.timesteps:
            x = s.step(model(x, int(t), cond), t, x, generator=g).prev_sample
    start = TO - 1
    want = norm.unnormalize("action", x)[0, start : start + TA].numpy()
    np.testing.assert_allclose(got, want, atol=2e-4)
    save_native(import_chi_ckpt(path), tmp_path / "native_img", weights_dtype=torch.float32)
    again = Policy.from_pretrained(tmp_path / "native_img", device="cpu")
    np.testing.assert_array_equal(again.predict({"image": image, "agent_pos": pos}, seed=3), got)
