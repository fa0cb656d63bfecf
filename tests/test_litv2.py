"""LITv2: official fixtures (whole model, HiLo alone), the deformable conv against
torchvision, non-square inputs, parameter counts, checkpoints, TFLite."""

import json

import numpy as np
import pytest

import keras

import visionzoo
from visionzoo.backbones import litv2
from visionzoo.layers.deformable import DeformableConv2D
from visionzoo.layers.hilo import HiLoAttention
from visionzoo.registry import get_variant, list_models
from visionzoo.weights import load_checkpoint
from visionzoo.weights.convert import CheckpointMismatchError
from visionzoo.weights.verify import verify

from conftest import (BACKEND, check_save_load_and_fit, only_on_full_backend, parity_fixture,
                     published_count_ok, requires_timm)



def _np(x):
    return keras.ops.convert_to_numpy(x)


def test_official_fixture_parity():
    result = verify(parity_fixture("litv2_mini"), verbose=False)
    print(result.table())
    assert result.ok, result.table()
    assert {r.output for r in result.rows} == {"output", "output_stage1", "output_stage2",
                                               "output_stage3", "output_stage4"}


def test_official_fixture_features():
    """``output_features`` = final norm + token mean = our headless avg-pooled model."""
    path = parity_fixture("litv2_mini")
    with open(path[:-4] + ".json") as f:
        meta = json.load(f)
    data = np.load(path)
    kwargs = litv2.from_official_config(meta["config"])
    model = litv2.LITv2(**kwargs, input_shape=(128, 128, 3))
    load_checkpoint(model, {k[6:]: data[k] for k in data.files if k.startswith("param/")})
    headless = keras.Model(model.inputs, model.get_layer("avgpool").output)
    out = headless.predict(data["input"].transpose(0, 2, 3, 1), verbose=0)
    ref = data["output_features"]
    assert np.abs(out - ref).max() <= meta["tolerance"]


def test_hilo_fixture_parity():
    path = parity_fixture("hilo_attention_mini")
    with open(path[:-4] + ".json") as f:
        meta = json.load(f)
    data = np.load(path)
    c = meta["config"]
    h, w = meta["call_args"]["H"], meta["call_args"]["W"]
    layer = HiLoAttention(c["num_heads"], c["window_size"], c["alpha"], qkv_bias=c["qkv_bias"])
    x = data["input"].reshape(-1, h, w, c["dim"])
    layer.build(x.shape)
    for name in ("l_q", "l_kv", "l_proj", "h_qkv", "h_proj"):
        dense = getattr(layer, name)
        dense.kernel.assign(data[f"param/{name}.weight"].T)
        dense.bias.assign(data[f"param/{name}.bias"])
    tol = meta["tolerance"]
    out = _np(layer(x)).reshape(data["output"].shape)
    assert np.abs(out - data["output"]).max() <= tol
    hifi = _np(layer.hifi(keras.ops.convert_to_tensor(x))).reshape(data["output_hifi"].shape)
    lofi = _np(layer.lofi(keras.ops.convert_to_tensor(x))).reshape(data["output_lofi"].shape)
    assert np.abs(hifi - data["output_hifi"]).max() <= tol
    assert np.abs(lofi - data["output_lofi"]).max() <= tol


def test_hilo_head_split_and_global_window():
    layer = HiLoAttention(12, 2, 0.9)
    assert (layer.l_heads, layer.h_heads) == (10, 2)
    glob = HiLoAttention(8, 1, 0.9)
    assert (glob.l_heads, glob.h_heads) == (8, 0)
    out = glob(np.random.rand(1, 4, 6, 32).astype("float32"))
    assert out.shape == (1, 4, 6, 32) and not hasattr(glob, "h_qkv")
    # Grids that are not multiples of the window are padded and cropped (detection
    # backbones' rule): a 5x6 map gives a 5x6 output whose rows 0-3 only see rows 0-3
    # through the Hi-Fi windows.
    x = np.random.rand(1, 5, 6, 48).astype("float32")
    out = _np(layer(x))
    assert out.shape == (1, 5, 6, 48) and np.isfinite(out).all()
    x2 = x.copy()
    x2[0, 4] += 3.0
    hifi_rows = _np(layer.hifi(keras.ops.convert_to_tensor(x)))[0, :4]
    hifi_rows2 = _np(layer.hifi(keras.ops.convert_to_tensor(x2)))[0, :4]
    np.testing.assert_allclose(hifi_rows, hifi_rows2, atol=1e-6)


@pytest.mark.parametrize("k, s, p, d", [(2, 2, 0, 1), (3, 1, 1, 1), (3, 1, 2, 2), (3, 2, 1, 1)])
def test_deformable_conv_equals_torchvision(k, s, p, d):
    requires_timm()  # torchvision comes with the test extras
    import torch
    from torchvision.ops import deform_conv2d

    rng = np.random.default_rng(0)
    b, c, h, w, out = 2, 5, 9, 11, 7
    layer = DeformableConv2D(out, k, strides=s, padding=p, dilation_rate=d)
    x = rng.standard_normal((b, h, w, c)).astype("float32")
    layer.build(x.shape)
    weight = rng.standard_normal((out, c, k, k)).astype("float32")
    bias = rng.standard_normal(out).astype("float32")
    off_w = (rng.standard_normal((2 * k * k, c, k, k)) * 1.5).astype("float32")
    off_b = (rng.standard_normal(2 * k * k) * 2.0).astype("float32")
    off_b[0] = 1.0  # an exactly integer offset too
    layer.kernel.assign(weight.transpose(2, 3, 1, 0))
    layer.bias.assign(bias)
    layer.conv_offset.kernel.assign(off_w.transpose(2, 3, 1, 0))
    layer.conv_offset.bias.assign(off_b)
    ours = _np(layer(x))
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2))
    offset = torch.nn.functional.conv2d(xt, torch.from_numpy(off_w), torch.from_numpy(off_b),
                                        stride=s, padding=p, dilation=d)
    assert offset.abs().max() > h  # some samples fall outside the map
    ref = deform_conv2d(xt, offset, torch.from_numpy(weight), torch.from_numpy(bias),
                        stride=s, padding=p, dilation=d).numpy().transpose(0, 2, 3, 1)
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, atol=2e-5 * np.abs(ref).max())


def _mini(**kw):
    config = dict(litv2.VARIANTS["litv2_s"]["config"], embed_dim=16, depths=[1, 1, 1, 1],
                  num_heads=[1, 2, 4, 8])
    config.update(kw)
    return litv2.LITv2(**config)


def test_non_square_input_and_pyramid():
    model = _mini(input_shape=(64, 128, 3), num_classes=5)
    x = np.random.rand(2, 64, 128, 3).astype("float32")
    assert model.predict(x, verbose=0).shape == (2, 5)
    feats = model.features().predict(x, verbose=0)
    for level, dim in zip(["P2", "P3", "P4", "P5"], [16, 32, 64, 128]):
        stride = 2 ** int(level[1])
        assert feats[level].shape == (2, 64 // stride, 128 // stride, dim)
    with pytest.raises(ValueError, match="multiples of 32"):
        _mini(input_shape=(64, 100, 3))


def test_non_square_equals_square_pieces_for_local_ops():
    """A non-square map is processed by the same per-token function: with HiLo stages
    removed (ConvFFN everywhere, which is local), a 64x128 input's left half away from
    the seam equals the 64x64 model's output on that half."""
    kw = dict(has_msa=[0, 0, 0, 0], include_top=False)
    wide = _mini(input_shape=(64, 128, 3), **kw)
    square = _mini(input_shape=(64, 64, 3), **kw)
    square.set_weights(wide.get_weights())
    x = np.random.rand(1, 64, 128, 3).astype("float32")
    p2_wide = wide.features().predict(x, verbose=0)["P2"]
    p2_square = square.features().predict(x[:, :, :64], verbose=0)["P2"]
    np.testing.assert_allclose(p2_wide[:, :, :15], p2_square[:, :, :15], atol=1e-5)


def test_keras_roundtrip_and_fit(tmp_path):
    check_save_load_and_fit(_mini(input_shape=(64, 64, 3), num_classes=3,
                                  drop_path_rate=0.1), tmp_path, 64)


def test_incomplete_checkpoint_is_refused_and_model_unchanged():
    path = parity_fixture("litv2_mini")
    data = np.load(path)
    state = {k[6:]: data[k] for k in data.files if k.startswith("param/")}
    del state["layers.1.downsample.dconv.conv_offset.weight"]
    state["layers.2.blocks.0.attn.h_proj.weight"] = np.zeros((3, 3), "float32")
    model = litv2.LITv2(**litv2.from_official_config(
        json.load(open(path[:-4] + ".json"))["config"]), input_shape=(128, 128, 3))
    before = [w.numpy().copy() for w in model.weights]
    with pytest.raises(CheckpointMismatchError) as err:
        load_checkpoint(model, state)
    assert "conv_offset.weight" in str(err.value) and "h_proj.weight" in str(err.value)
    for w, b in zip(model.weights, before):
        np.testing.assert_array_equal(w.numpy(), b)


def test_registry_and_applications():
    assert list_models("litv2*") == ["litv2_b", "litv2_b_384", "litv2_m", "litv2_s"]
    v = get_variant("litv2_b_384")
    assert v.input_size == 384 and v.weights["in1k"]["url"].endswith("litv2_b_384.pth")
    from visionzoo import applications

    assert applications.LITv2S.model_name == "litv2_s"
    with pytest.raises(ValueError, match="not in timm"):
        verify("timm:litv2_s", verbose=False)




@pytest.mark.slow
@pytest.mark.parametrize("name", list_models("litv2*"))
def test_parameter_counts_and_gmacs(name):
    only_on_full_backend("parameter counts are backend-independent; checked")
    from visionzoo.flops import count_macs

    v = get_variant(name)
    model = visionzoo.create_model(name, input_shape=(v.input_size, v.input_size, 3))
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert published_count_ok(trainable, v.published["params_m"]), trainable
    gmacs = count_macs(model) / 1e9
    assert abs(gmacs - v.published["gmacs"]) <= 0.03 * v.published["gmacs"], gmacs


def test_tflite_export(tmp_path):
    if BACKEND != "tensorflow":
        pytest.skip("exported on the TensorFlow backend (other backends hand off to it)")
    from test_export import assert_builtin_only

    model = _mini(input_shape=(64, 64, 3), num_classes=10)
    path = tmp_path / "litv2.tflite"
    report = visionzoo.export.to_tflite(model, path)
    assert report.max_abs_diff <= 1e-3 * report.ref_max_abs, report.summary()
    assert_builtin_only(report, path)
    assert "GATHER" in report.op_names  # the deformable sampling
