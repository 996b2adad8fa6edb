"""Observation encoders: Chi et al. hybrid-image state-dict layout, stage numerics, factory."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bac_ros.models.vision import (
    CropRandomizer,
    ResNet18Conv,
    SmallCNN,
    SmallCNNConfig,
    SpatialSoftmax,
    VisualCore,
    build_obs_encoder,
)

PUSHT = {
    "type": "robomimic_resnet18",
    "obs": {
        "image": {"shape": [3, 96, 96], "type": "rgb"},
        "agent_pos": {"shape": [2], "type": "low_dim"},
    },
    "crop_shape": [84, 84],
}


def resnet18_trunk_keys(group_norm: bool) -> list[str]:
    """State-dict keys of robomimic's ResNet18Conv ``nets``: torchvision resnet18 children[:-2].

    Written out from torchvision's hierarchy (conv1, bn1, relu, maxpool, layer1..4 at indices
    0..7; two BasicBlocks a layer, a 1x1 conv + norm ``downsample`` in the first block of layers
    2-4), not derived from the module under test.
    """
    norm = ["weight", "bias"]
    if not group_norm:
        norm += ["running_mean", "running_var", "num_batches_tracked"]
    keys = ["0.weight"] + [f"1.{n}" for n in norm]
    for layer in range(4):
        for block in range(2):
            p = f"{4 + layer}.{block}"
            keys.append(f"{p}.conv1.weight")
            keys += [f"{p}.bn1.{n}" for n in norm]
            keys.append(f"{p}.conv2.weight")
            keys += [f"{p}.bn2.{n}" for n in norm]
            if layer > 0 and block == 0:
                keys.append(f"{p}.downsample.0.weight")
                keys += [f"{p}.downsample.1.{n}" for n in norm]
    return keys


def visual_core_keys(prefix: str, group_norm: bool = True) -> list[str]:
    trunk = resnet18_trunk_keys(group_norm)
    pool = ["temperature", "pos_x", "pos_y", "nets.weight", "nets.bias"]
    return (
        [f"{prefix}.backbone.nets.{k}" for k in trunk]
        + [f"{prefix}.pool.{k}" for k in pool]
        + [f"{prefix}.nets.0.nets.{k}" for k in trunk]
        + [f"{prefix}.nets.1.{k}" for k in pool]
        + [f"{prefix}.nets.3.weight", f"{prefix}.nets.3.bias"]
    )


def test_resnet18_trunk_parameter_count_and_norms():
    gn, bn = ResNet18Conv(group_norm=True), ResNet18Conv(group_norm=False)
    # torchvision resnet18 has 11,689,512 parameters, fc 513,000 of them.
    assert sum(p.numel() for p in gn.parameters()) == 11_176_512
    assert sum(p.numel() for p in bn.parameters()) == 11_176_512
    assert list(gn.buffers()) == []
    assert len(list(bn.buffers())) == 20 * 3
    groups = [m.num_groups for m in gn.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert len(groups) == 20
    assert set(groups) == {4, 8, 16, 32}  # channels // 16 for 64, 128, 256, 512


@pytest.mark.parametrize("hw", [(84, 84), (76, 76), (96, 96), (216, 288), (65, 97)])
def test_resnet18_output_shape_matches_formula(hw):
    out = ResNet18Conv().eval()(torch.zeros(1, 3, *hw))
    assert out.shape[1:] == (512, *ResNet18Conv.output_hw(*hw))
    # robomimic's own output_shape says ceil(size / 32) and checks it at run time.
    assert out.shape[2:] == tuple(-(-s // 32) for s in hw)


def test_hybrid_state_dict_keys_match_chi_layout():
    enc, dim = build_obs_encoder(PUSHT)
    sd = enc.state_dict()
    expected = visual_core_keys("obs_nets.image")
    assert list(sd) == expected
    assert len(sd) == 132
    assert dim == 64 + 2
    shapes = {
        "obs_nets.image.backbone.nets.0.weight": (64, 3, 7, 7),
        "obs_nets.image.backbone.nets.1.weight": (64,),
        "obs_nets.image.backbone.nets.7.1.bn2.weight": (512,),
        "obs_nets.image.backbone.nets.5.0.downsample.0.weight": (128, 64, 1, 1),
        "obs_nets.image.pool.nets.weight": (32, 512, 1, 1),
        "obs_nets.image.pool.temperature": (1,),
        "obs_nets.image.pool.pos_x": (1, 9),  # 84 px crop -> 3x3 feature map
        "obs_nets.image.nets.3.weight": (64, 64),
        "obs_nets.image.nets.3.bias": (64,),
    }
    for key, shape in shapes.items():
        assert tuple(sd[key].shape) == shape, key
    core = enc.obs_nets["image"]
    assert isinstance(core.backbone.nets[1], torch.nn.GroupNorm)
    assert core.nets[0] is core.backbone and core.nets[1] is core.pool
    assert sd["obs_nets.image.nets.0.nets.0.weight"].data_ptr() == (
        sd["obs_nets.image.backbone.nets.0.weight"].data_ptr()
    )
    assert float(sd["obs_nets.image.pool.temperature"]) == 1.0
    assert not any(n.endswith("temperature") for n, _ in enc.named_parameters())


def test_batchnorm_variant_and_two_cameras_keys():
    cfg = {
        "type": "robomimic_resnet18",
        "group_norm": False,
        "crop_shape": [76, 76],
        "obs": {
            "agentview_image": {"shape": [3, 84, 84], "type": "rgb"},
            "robot0_eye_in_hand_image": {"shape": [3, 84, 84], "type": "rgb"},
            "robot0_eef_pos": {"shape": [3]},
            "robot0_eef_quat": {"shape": [4]},
            "robot0_gripper_qpos": {"shape": [2]},
        },
    }
    enc, dim = build_obs_encoder(cfg)
    assert dim == 64 * 2 + 3 + 4 + 2
    assert list(enc.state_dict()) == visual_core_keys(
        "obs_nets.agentview_image", group_norm=False
    ) + visual_core_keys("obs_nets.robot0_eye_in_hand_image", group_norm=False)


def test_load_state_dict_reproduces_features_exactly():
    torch.manual_seed(0)
    src, _ = build_obs_encoder(PUSHT)
    torch.manual_seed(1)
    dst, _ = build_obs_encoder(PUSHT)
    # A Chi et al. checkpoint stores these as ``obs_encoder.<key>`` inside the policy state dict.
    ckpt = {f"obs_encoder.{k}": v.clone() for k, v in src.state_dict().items()}
    dst.load_state_dict({k.removeprefix("obs_encoder."): v for k, v in ckpt.items()}, strict=True)
    obs = {"image": torch.rand(3, 3, 96, 96), "agent_pos": torch.randn(3, 2)}
    src.eval()
    dst.eval()
    with torch.no_grad():
        assert torch.equal(src(obs), dst(obs))


def test_forward_order_relu_lowdim_and_determinism():
    torch.manual_seed(0)
    cfg = dict(PUSHT, obs={"agent_pos": PUSHT["obs"]["agent_pos"], "image": PUSHT["obs"]["image"]})
    enc, dim = build_obs_encoder(cfg)
    enc.eval()
    obs = {
        "image": torch.rand(4, 3, 96, 96),
        "agent_pos": torch.randn(4, 2),
        "extra": torch.ones(1),
    }
    with torch.no_grad():
        out = enc(obs)
        again = enc(obs)
        single = enc({k: v[1:2] for k, v in obs.items() if k != "extra"})
    assert out.shape == (4, dim)
    assert torch.equal(out, again)
    # config order: low-dim key first, passed through unchanged; image features after the ReLU
    assert torch.equal(out[:, :2], obs["agent_pos"])
    assert (out[:, 2:] >= 0).all() and (out[:, 2:] > 0).any()
    # GroupNorm: a sample's features do not depend on the rest of the batch
    torch.testing.assert_close(single[0], out[1], rtol=1e-5, atol=1e-6)


def _reference_visual_core(core: VisualCore, x: torch.Tensor) -> torch.Tensor:
    """torchvision resnet18 trunk + robomimic spatial softmax + linear, spelled out with F.*."""
    sd = {k.removeprefix("backbone.nets."): v for k, v in core.state_dict().items()}

    def gn(h, name):
        return F.group_norm(
            h, sd[f"{name}.weight"].numel() // 16, sd[f"{name}.weight"], sd[f"{name}.bias"]
        )

    h = F.relu(gn(F.conv2d(x, sd["0.weight"], stride=2, padding=3), "1"))
    h = F.max_pool2d(h, 3, 2, 1)
    for layer in range(4):
        for block in range(2):
            p = f"{4 + layer}.{block}"
            stride = 2 if layer > 0 and block == 0 else 1
            out = F.relu(
                gn(F.conv2d(h, sd[f"{p}.conv1.weight"], stride=stride, padding=1), f"{p}.bn1")
            )
            out = gn(F.conv2d(out, sd[f"{p}.conv2.weight"], padding=1), f"{p}.bn2")
            if stride == 2:
                h = gn(F.conv2d(h, sd[f"{p}.downsample.0.weight"], stride=2), f"{p}.downsample.1")
            h = F.relu(out + h)
    kp = F.conv2d(h, sd["pool.nets.weight"], sd["pool.nets.bias"])
    attn = F.softmax(kp.flatten(2), dim=-1)
    xy = torch.stack([(attn * sd["pool.pos_x"]).sum(-1), (attn * sd["pool.pos_y"]).sum(-1)], -1)
    return F.linear(xy.flatten(1), sd["nets.3.weight"], sd["nets.3.bias"])


def test_visual_core_matches_spelled_out_reference():
    torch.manual_seed(0)
    core = VisualCore((3, 84, 84)).eval()
    with torch.no_grad():
        for m in core.modules():  # non-trivial norm affines so that they are exercised
            if isinstance(m, torch.nn.GroupNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
        x = torch.rand(2, 3, 84, 84)
        torch.testing.assert_close(core(x), _reference_visual_core(core, x), rtol=1e-4, atol=1e-5)


def test_spatial_softmax_hot_pixel_and_uniform():
    ss = SpatialSoftmax((1, 5, 7), num_kp=1).eval()
    with torch.no_grad():
        ss.nets.weight.fill_(1.0)
        ss.nets.bias.zero_()
        feat = torch.zeros(2, 1, 5, 7)
        feat[0, 0, 1, 5] = 50.0  # row 1 of 5, column 5 of 7
        kp = ss(feat)
    assert kp.shape == (2, 1, 2)
    lin_x, lin_y = torch.linspace(-1, 1, 7), torch.linspace(-1, 1, 5)
    torch.testing.assert_close(kp[0, 0], torch.stack([lin_x[5], lin_y[1]]), atol=1e-5, rtol=0)
    torch.testing.assert_close(kp[1, 0], torch.zeros(2), atol=1e-6, rtol=0)
    assert ss.pos_x.shape == (1, 35) and ss.pos_x[0, 0] == -1 and ss.pos_y[0, -1] == 1


@pytest.mark.parametrize(("size", "top"), [(96, 6), (97, 6), (95, 6), (99, 8)])
def test_centre_crop_rounds_like_torchvision(size, top):
    # torchvision center_crop: top = int(round((H - h) / 2)), Python rounds half to even
    x = torch.arange(2 * 3 * size * size, dtype=torch.float32).reshape(2, 3, size, size)
    crop = CropRandomizer(84, 84).eval()
    assert torch.equal(crop(x), x[:, :, top : top + 84, top : top + 84])


def test_random_crop_is_a_window_inside_the_image():
    torch.manual_seed(0)
    size, c = 12, 8
    x = torch.arange(5 * 2 * size * size, dtype=torch.float32).reshape(5, 2, size, size)
    crop = CropRandomizer(c, c).train()
    offsets = set()
    for _ in range(20):
        out = crop(x)
        assert out.shape == (5, 2, c, c)
        for b in range(5):
            top = int(out[b, 0, 0, 0] - x[b, 0, 0, 0]) // size
            left = int(out[b, 0, 0, 0] - x[b, 0, 0, 0]) % size
            assert 0 <= top < size - c and 0 <= left < size - c  # robomimic never hits H - h
            assert torch.equal(out[b], x[b, :, top : top + c, left : left + c])
            offsets.add((top, left))
    assert len(offsets) > 1


@pytest.mark.parametrize("px", [64, 96])
@pytest.mark.parametrize("pool", ["spatial_softmax", "avg"])
def test_small_cnn_shapes_and_size(px, pool):
    net = SmallCNN((3, px, px), SmallCNNConfig(pool=pool)).eval()
    assert net(torch.rand(2, 3, px, px)).shape == (2, 64)
    assert sum(p.numel() for p in net.parameters()) < 150_000


def test_small_cnn_factory_and_config_errors():
    cfg = {
        "type": "small_cnn",
        "obs": {"image": {"shape": [3, 96, 96], "type": "rgb"}, "qpos": {"shape": [3]}},
        "crop_shape": [88, 88],
        "cnn": {"channels": [16, 32], "strides": [2, 2], "feature_dim": 32},
    }
    enc, dim = build_obs_encoder(cfg)
    enc.eval()
    assert dim == 35
    out = enc({"image": torch.rand(3, 3, 96, 96), "qpos": torch.zeros(3, 3)})
    assert out.shape == (3, 35)
    ptrs = [t.data_ptr() for t in enc.state_dict().values()]
    assert len(ptrs) == len(set(ptrs))  # no aliased tensors: safe for safetensors
    with pytest.raises(ValueError, match="one stride per conv layer"):
        SmallCNNConfig(channels=(16, 32), strides=(2,))
    with pytest.raises(ValueError, match="pool"):
        SmallCNNConfig(pool="max")
    with pytest.raises(ValueError, match="unknown keys"):
        build_obs_encoder(dict(cfg, cnn={"width": 3}))


def test_factory_and_forward_errors_name_the_problem():
    with pytest.raises(ValueError, match="'type'"):
        build_obs_encoder(dict(PUSHT, type="vit"))
    with pytest.raises(ValueError, match="unknown keys"):
        build_obs_encoder(dict(PUSHT, cnn={}))
    with pytest.raises(ValueError, match="depth"):
        build_obs_encoder(dict(PUSHT, obs={"d": {"shape": [1, 8, 8], "type": "depth"}}))
    with pytest.raises(ValueError, match="does not fit"):
        build_obs_encoder(dict(PUSHT, crop_shape=[100, 84]))
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        build_obs_encoder(dict(PUSHT, obs={"image": {"shape": [96, 96], "type": "rgb"}}))
    enc, _ = build_obs_encoder(PUSHT)
    with pytest.raises(KeyError, match="agent_pos"):
        enc({"image": torch.rand(1, 3, 96, 96)})
    with pytest.raises(ValueError, match=r"expected \(batch, 3, 96, 96\)"):
        enc({"image": torch.rand(1, 3, 84, 84), "agent_pos": torch.zeros(1, 2)})


def test_condition_on_fuses_the_hand_state_into_each_camera_feature():
    two = {"left": {"shape": [3, 32, 32], "type": "rgb"}, "right": {"shape": [3, 32, 32],
           "type": "rgb"}, "hand": {"shape": [4]}, "goal": {"shape": [3]}}
    cfg = {"type": "small_cnn", "obs": two, "cnn": {"channels": [16], "strides": [2]},
           "condition_on": ["hand"], "condition_hidden": 32}
    torch.manual_seed(0)
    enc, dim = build_obs_encoder(cfg)
    enc.eval()
    assert dim == 64 + 64 + 4 + 3
    fusers = {k: tuple(v.shape) for k, v in enc.state_dict().items() if k.startswith("obs_fusers")}
    assert fusers == {f"obs_fusers.{cam}.{i}.{p}": s for cam in ("left", "right")
                      for i, p, s in ((0, "weight", (32, 68)), (0, "bias", (32,)),
                                      (2, "weight", (64, 32)), (2, "bias", (64,)))}
    obs = {"left": torch.rand(2, 3, 32, 32), "right": torch.rand(2, 3, 32, 32),
           "hand": torch.zeros(2, 4), "goal": torch.zeros(2, 3)}
    base = enc(obs)
    moved = enc(dict(obs, hand=torch.ones(2, 4)))
    assert not torch.allclose(base[:, :128], moved[:, :128])  # both cameras' features move
    torch.testing.assert_close(moved[:, 128:132], torch.ones(2, 4))  # the key itself passes on
    assert torch.equal(enc(dict(obs, goal=torch.ones(2, 3)))[:, :128], base[:, :128])
    assert (base[:, :128] >= 0).all()  # the ReLU after each camera comes after the fusion
    # without condition_on the encoder is robomimic's: no fuser tensors, the hand does not matter
    plain, _ = build_obs_encoder({k: v for k, v in cfg.items() if not k.startswith("condition")})
    assert not any(k.startswith("obs_fusers") for k in plain.state_dict())
    plain.eval()
    assert torch.equal(plain(obs)[:, :128], plain(dict(obs, hand=torch.ones(2, 4)))[:, :128])
    with pytest.raises(ValueError, match="no condition_on"):
        build_obs_encoder(dict(cfg, condition_on=[]))
    for bad in (["left"], ["elbow"]):
        with pytest.raises(ValueError, match="not low-dim observations"):
            build_obs_encoder(dict(cfg, condition_on=bad))
    with pytest.raises(KeyError, match="hand"):
        enc({k: v for k, v in obs.items() if k != "hand"})
