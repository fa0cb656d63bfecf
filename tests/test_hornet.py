"""HorNet: official fixtures (7x7 and GF), gnConv orders 2-5 and the global filter
against torch (rfft2/irfft2, the align_corners resize of the complex weight, dynamic
grids), checkpoints, parameter counts, pyramid outputs, TFLite."""

import json

import numpy as np
import pytest

import keras

import visionzoo
from visionzoo.backbones import hornet
from visionzoo.layers import gnconv as gn
from visionzoo.registry import get_variant, list_models
from visionzoo.weights import load_checkpoint
from visionzoo.weights.convert import CheckpointMismatchError
from visionzoo.weights.verify import verify

from conftest import (BACKEND, check_save_load_and_fit, only_on_full_backend, parity_fixture,
                     published_count_ok, requires_timm)

FIXTURES = ("hornet_7x7_mini", "hornet_gf_mini")


def _np(x):
    return keras.ops.convert_to_numpy(x)


def _run(model, x):
    """Outputs of ``model`` on ``x``: a direct call (cheap for one small batch), except on
    JAX, where eager dispatch of a new model's ops costs more than predict()'s compile."""
    if BACKEND == "jax":
        return model.predict(x, verbose=0)
    return keras.tree.map_structure(_np, model(keras.ops.convert_to_tensor(x),
                                               training=False))


def _fixture(name):
    path = parity_fixture(name)
    with open(path[:-4] + ".json") as f:
        meta = json.load(f)
    data = np.load(path)
    state = {k[6:]: data[k] for k in data.files if k.startswith("param/")}
    return path, meta, data, state


def _torch():
    requires_timm()  # torch comes with the test extras
    import torch

    return torch


# --------------------------------------------------------------------------------------
# Official fixtures
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", FIXTURES)
def test_official_fixture_parity(name):
    result = verify(parity_fixture(name), verbose=False)
    print(result.table())
    assert result.ok, result.table()
    assert {r.output for r in result.rows} == {"output", "output_stage1", "output_stage2",
                                               "output_stage3", "output_stage4"}


def test_from_official_config():
    _, meta, _, _ = _fixture("hornet_gf_mini")
    kwargs = hornet.from_official_config(meta["config"])
    assert kwargs == {"depths": [1, 1, 2, 1], "base_dim": 16, "num_classes": 10,
                      "orders": [2, 3, 4, 5], "gnconv_scale": pytest.approx(1 / 3),
                      "global_filter": [None, None, [14, 8], [7, 4]]}
    default = hornet.from_official_config({})  # HorNet(): order-5, s=1 everywhere
    assert default["orders"] == [5] * 4 and default["gnconv_scale"] == 1.0
    assert default["depths"] == [3, 3, 9, 3] and default["base_dim"] == 96


def test_headless_models_load_the_official_checkpoint():
    """``pooling=None`` ends at the stage-4 map (the final norm's tensors are dropped);
    ``pooling="avg"`` is the official ``forward_features`` (mean -> LayerNorm)."""
    _, meta, data, state = _fixture("hornet_7x7_mini")
    kwargs = hornet.from_official_config(meta["config"])
    kwargs.pop("num_classes")
    x = data["input"].transpose(0, 2, 3, 1)
    fmap_model = hornet.HorNet(**kwargs, include_top=False, input_shape=x.shape[1:])
    load_checkpoint(fmap_model, state)
    fmap = _run(fmap_model, x)
    ref4 = data["output_stage4"].transpose(0, 2, 3, 1)
    assert np.abs(fmap - ref4).max() <= meta["tolerance_per_output"]["output_stage4"]
    pooled_model = hornet.HorNet(**kwargs, include_top=False, pooling="avg",
                                 input_shape=x.shape[1:])
    load_checkpoint(pooled_model, state)
    pooled = _run(pooled_model, x)
    mean = ref4.mean(axis=(1, 2))
    mu = mean.mean(-1, keepdims=True)
    var = ((mean - mu) ** 2).mean(-1, keepdims=True)
    ref = (mean - mu) / np.sqrt(var + 1e-6) * state["norm.weight"] + state["norm.bias"]
    assert np.abs(pooled - ref).max() <= 1e-4 * np.abs(ref).max() + 1e-4
    logits = pooled @ state["head.weight"].T + state["head.bias"]
    assert np.abs(logits - data["output"]).max() <= meta["tolerance"]


def test_incomplete_checkpoint_is_refused_and_model_unchanged():
    _, meta, _, state = _fixture("hornet_gf_mini")
    del state["stages.2.1.gnconv.dwconv.complex_weight"]
    state["stages.3.0.gnconv.pws.3.weight"] = np.zeros((128, 32, 1, 1), "float32")
    state["stages.3.0.gnconv.extra.weight"] = np.zeros((3,), "float32")
    model = hornet.HorNet(**hornet.from_official_config(meta["config"]),
                          input_shape=(224, 224, 3))
    before = [_np(w).copy() for w in model.weights]
    with pytest.raises(CheckpointMismatchError) as err:
        load_checkpoint(model, state)
    message = str(err.value)
    for key in ("stages.2.1.gnconv.dwconv.complex_weight", "stages.3.0.gnconv.pws.3.weight",
                "stages.3.0.gnconv.extra.weight"):
        assert key in message, message
    assert "missing" in message and "unexpected" in message and "mis-shaped" in message
    for w, b in zip(model.weights, before):
        np.testing.assert_array_equal(_np(w), b)


def test_checkpoint_filters_at_another_grid_are_resized_on_load():
    """Like the official fine-tuning loader: 224-px (14x8, 7x4) filters into a model
    configured for other grids are resized bilinearly with align_corners=True."""
    torch = _torch()
    _, meta, _, state = _fixture("hornet_gf_mini")
    kwargs = dict(hornet.from_official_config(meta["config"]),
                  global_filter=[None, None, [24, 13], [3, 2]])
    model = hornet.HorNet(**kwargs, input_shape=(64, 64, 3))
    load_checkpoint(model, state)
    for layer, key, grid in [("stages-2-1-gnconv", "stages.2.1", (24, 13)),
                             ("stages-3-0-gnconv", "stages.3.0", (3, 2))]:
        src = torch.from_numpy(state[f"{key}.gnconv.dwconv.complex_weight"])
        ref = torch.nn.functional.interpolate(src.permute(3, 0, 1, 2), size=grid,
                                              mode="bilinear", align_corners=True)
        ours = _np(model.get_layer(layer).dwconv.complex_weight)
        np.testing.assert_allclose(ours, ref.permute(1, 2, 3, 0).numpy(), atol=1e-5)


# --------------------------------------------------------------------------------------
# The global filter against torch.fft, and gnConv against a torch composition
# --------------------------------------------------------------------------------------


def _torch_fourier(x_nhwc, weight):
    """The official spectral branch: rfft2(ortho) * resized complex weight -> irfft2."""
    torch = _torch()
    F = torch.nn.functional
    x = torch.from_numpy(x_nhwc.transpose(0, 3, 1, 2)).double()
    b, c, h, w = x.shape
    spec = torch.fft.rfft2(x, dim=(2, 3), norm="ortho")
    wt = torch.from_numpy(weight)
    if tuple(wt.shape[1:3]) != tuple(spec.shape[2:4]):
        wt = F.interpolate(wt.permute(3, 0, 1, 2), size=spec.shape[2:4], mode="bilinear",
                           align_corners=True).permute(1, 2, 3, 0)
    spec = spec * torch.view_as_complex(wt.double().contiguous())
    out = torch.fft.irfft2(spec, s=(h, w), dim=(2, 3), norm="ortho")
    return out.numpy().transpose(0, 2, 3, 1)


# (input H, W, weight h, w): even and odd W, non-square, and resized weights (up, down,
# and the 384-px grid applied to a 224-px map).
GRIDS = [(14, 14, 14, 8), (6, 9, 6, 5), (10, 12, 14, 8), (14, 14, 24, 13), (5, 3, 7, 4)]


@pytest.mark.parametrize("h, w, gh, gw", GRIDS)
def test_fourier_filter_equals_torch_fft(h, w, gh, gw):
    rng = np.random.default_rng(h * 100 + w)
    c = 6
    layer = gn.GlobalLocalFilter(gh, gw)
    layer.build((None, h, w, 2 * c))
    weight = rng.standard_normal((c, gh, gw, 2)).astype("float32")
    layer.complex_weight.assign(weight)
    x = rng.standard_normal((2, h, w, c)).astype("float32")
    ours = _np(layer.fourier_filter(keras.ops.convert_to_tensor(x)))
    ref = _torch_fourier(x, weight)
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, atol=1e-5 * np.abs(ref).max())


@pytest.mark.parametrize("w", [8, 7])
def test_complex_to_real_step_drops_dc_and_nyquist_imaginary_parts(w):
    """The inverse-W matrices equal ``torch.fft.irfft`` on spectra whose k=0 (and, for
    even W, k=W/2) bins have non-zero imaginary parts, which C2R discards."""
    torch = _torch()
    rng = np.random.default_rng(w)
    k = w // 2 + 1
    u = rng.standard_normal((4, k)) + 1j * rng.standard_normal((4, k))
    mats = gn.dft_matrices(3, w)
    scale = np.sqrt(3 * w)  # the matrices carry 1/sqrt(H W); irfft(norm="ortho") 1/sqrt(W)
    ours = (u.real @ mats["inv_w_re"] + u.imag @ mats["inv_w_im"]) * scale / np.sqrt(w)
    ref = torch.fft.irfft(torch.from_numpy(u), n=w, dim=-1, norm="ortho").numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-12)
    dropped = [0, k - 1] if w % 2 == 0 else [0]
    assert not mats["inv_w_im"][dropped].any()  # exact zeros, not round-off
    u2 = u.copy()
    u2[:, dropped] = u2[:, dropped].real + 5j
    ref2 = torch.fft.irfft(torch.from_numpy(u2), n=w, dim=-1, norm="ortho").numpy()
    np.testing.assert_allclose(ref2, ref, atol=1e-12)  # torch discards them too
    u3 = u.copy()
    u3[:, 1] += 5j  # an interior bin's imaginary part does matter
    ours3 = (u3.real @ mats["inv_w_re"] + u3.imag @ mats["inv_w_im"]) * scale / np.sqrt(w)
    assert np.abs(ours3 - ours).max() > 1.0


def test_dynamic_matrices_equal_static_ones():
    t = keras.ops.convert_to_tensor
    for h, w in [(5, 8), (6, 9)]:
        static = gn.dft_matrices(h, w)
        dynamic = gn._dft_matrices_dynamic(t(h, "int32"), t(w, "int32"))
        for key, value in static.items():
            np.testing.assert_allclose(_np(dynamic[key]), value, atol=2e-6, err_msg=key)
    for n_out, n_in in [(13, 8), (1, 4), (3, 7)]:
        np.testing.assert_allclose(
            _np(gn._interpolation_matrix_dynamic(t(n_out, "int32"), n_in)),
            gn.interpolation_matrix(n_out, n_in), atol=1e-6)


def _torch_global_local_filter(x_nhwc, params, eps=1e-6):
    """The official GlobalLocalFilter.forward, composed from torch ops on NCHW."""
    torch = _torch()
    F = torch.nn.functional
    x = torch.from_numpy(x_nhwc.transpose(0, 3, 1, 2))

    def ln_cf(t, weight, bias):
        u = t.mean(1, keepdim=True)
        s = (t - u).pow(2).mean(1, keepdim=True)
        return (t - u) / torch.sqrt(s + eps) * weight[:, None, None] + bias[:, None, None]

    p = {k: torch.from_numpy(v) for k, v in params.items()}
    x = ln_cf(x, p["pre_norm.weight"], p["pre_norm.bias"])
    x1, x2 = torch.chunk(x, 2, dim=1)
    x1 = F.conv2d(x1, p["dw.weight"], padding=1, groups=x1.shape[1])
    x2 = torch.from_numpy(_torch_fourier(x2.numpy().transpose(0, 2, 3, 1),
                                         params["complex_weight"]).transpose(0, 3, 1, 2))
    b, c, h, w = x1.shape
    x = torch.cat([x1.unsqueeze(2), x2.float().unsqueeze(2)], dim=2).reshape(b, 2 * c, h, w)
    x = ln_cf(x, p["post_norm.weight"], p["post_norm.bias"])
    return x.numpy().transpose(0, 2, 3, 1)


def test_global_local_filter_layer_resized_weight_equals_torch():
    """The whole layer (norms, 3x3 half, interleave) on a 10x12 map with a 14x8 weight
    (resized as the official code does at non-224 inputs)."""
    rng = np.random.default_rng(1)
    dim = 8
    params = {"pre_norm.weight": rng.uniform(0.5, 1.5, dim), "pre_norm.bias":
              rng.normal(0, 0.1, dim), "post_norm.weight": rng.uniform(0.5, 1.5, dim),
              "post_norm.bias": rng.normal(0, 0.1, dim),
              "dw.weight": rng.normal(0, 0.3, (dim // 2, 1, 3, 3)),
              "complex_weight": rng.normal(0, 0.6, (dim // 2, 14, 8, 2))}
    params = {k: v.astype("float32") for k, v in params.items()}
    layer = gn.GlobalLocalFilter(14, 8)
    layer.build((None, 10, 12, dim))
    layer.pre_norm.gamma.assign(params["pre_norm.weight"])
    layer.pre_norm.beta.assign(params["pre_norm.bias"])
    layer.post_norm.gamma.assign(params["post_norm.weight"])
    layer.post_norm.beta.assign(params["post_norm.bias"])
    layer.dw.kernel.assign(params["dw.weight"].transpose(2, 3, 0, 1))
    layer.complex_weight.assign(params["complex_weight"])
    x = rng.standard_normal((2, 10, 12, dim)).astype("float32")
    ours = _np(layer(x))
    ref = _torch_global_local_filter(x, params)
    np.testing.assert_allclose(ours, ref, atol=1e-4)


def _torch_gnconv(x_nhwc, p, order, s, dims):
    """The official gnconv.forward (depthwise 7x7 form) from torch ops on NCHW."""
    torch = _torch()
    F = torch.nn.functional
    t = {k: torch.from_numpy(v) for k, v in p.items()}
    x = torch.from_numpy(x_nhwc.transpose(0, 3, 1, 2))
    fused = F.conv2d(x, t["proj_in.weight"], t["proj_in.bias"])
    pwa, abc = torch.split(fused, (dims[0], sum(dims)), dim=1)
    dw = F.conv2d(abc, t["dwconv.weight"], t["dwconv.bias"], padding=3,
                  groups=sum(dims)) * s
    dw_list = torch.split(dw, dims, dim=1)
    y = pwa * dw_list[0]
    for i in range(order - 1):
        y = F.conv2d(y, t[f"pws.{i}.weight"], t[f"pws.{i}.bias"]) * dw_list[i + 1]
    y = F.conv2d(y, t["proj_out.weight"], t["proj_out.bias"])
    return y.numpy().transpose(0, 2, 3, 1)


@pytest.mark.parametrize("order", [2, 3, 4, 5])
def test_gnconv_orders_equal_torch(order):
    rng = np.random.default_rng(order)
    dim = 32
    dims = [dim // 2 ** i for i in range(order)][::-1]
    layer = gn.GnConv(order, scale=1 / 3)
    x = rng.standard_normal((2, 9, 11, dim)).astype("float32")
    layer.build(x.shape)
    assert layer.dims == dims
    shapes = {"proj_in.weight": (2 * dim, dim, 1, 1), "proj_in.bias": (2 * dim,),
              "dwconv.weight": (sum(dims), 1, 7, 7), "dwconv.bias": (sum(dims),),
              "proj_out.weight": (dim, dim, 1, 1), "proj_out.bias": (dim,)}
    for i in range(order - 1):
        shapes[f"pws.{i}.weight"] = (dims[i + 1], dims[i], 1, 1)
        shapes[f"pws.{i}.bias"] = (dims[i + 1],)
    p = {k: (rng.standard_normal(v) / np.sqrt(np.prod(v[1:]) if len(v) > 1 else 10.0)
             * (3.0 if k == "dwconv.weight" else 1.0)).astype("float32")
         for k, v in shapes.items()}
    for conv, key in [(layer.proj_in, "proj_in"), (layer.proj_out, "proj_out")] + [
            (c, f"pws.{i}") for i, c in enumerate(layer.pws)]:
        conv.kernel.assign(p[f"{key}.weight"].transpose(2, 3, 1, 0))
        conv.bias.assign(p[f"{key}.bias"])
    layer.dwconv.kernel.assign(p["dwconv.weight"].transpose(2, 3, 0, 1))
    layer.dwconv.bias.assign(p["dwconv.bias"])
    ours = _np(layer(x))
    ref = _torch_gnconv(x, p, order, 1 / 3, dims)
    np.testing.assert_allclose(ours, ref, atol=2e-5 * np.abs(ref).max())
    with pytest.raises(ValueError, match="divisible"):
        gn.GnConv(order).build((None, 8, 8, 2 ** (order - 1) * 3 + 1))


# --------------------------------------------------------------------------------------
# Model behaviour
# --------------------------------------------------------------------------------------


def _mini(gf=True, **kw):
    config = dict(hornet.VARIANTS["hornet_tiny_gf" if gf else "hornet_tiny_7x7"]["config"],
                  base_dim=16, depths=[1, 1, 1, 1])
    config.update(kw)
    return hornet.HorNet(**config)


def test_non_square_input_pyramid_and_dynamic_size():
    """Any size works: GF weights are resized to the grid. A dynamic-size model equals a
    static-size one with the same weights; on TensorFlow a graph traced with unknown
    height/width runs the run-time DFT and interpolation matrices."""
    dynamic = _mini(input_shape=(None, None, 3), num_classes=5)
    h, w = 64, 96
    x = np.random.rand(2, h, w, 3).astype("float32")
    static = _mini(input_shape=(h, w, 3), num_classes=5)
    static.set_weights(dynamic.get_weights())
    ref = _run(static, x)
    assert ref.shape == (2, 5)
    np.testing.assert_allclose(_run(dynamic, x), ref, atol=2e-5)
    if BACKEND == "tensorflow":
        import tensorflow as tf

        traced = tf.function(lambda t: dynamic(t, training=False), input_signature=[
            tf.TensorSpec((None, None, None, 3), tf.float32)])
        np.testing.assert_allclose(traced(x).numpy(), ref, atol=2e-5)
        x2 = np.random.rand(1, 100, 72, 3).astype("float32")
        static2 = _mini(input_shape=(100, 72, 3), num_classes=5)
        static2.set_weights(dynamic.get_weights())
        np.testing.assert_allclose(traced(x2).numpy(), _run(static2, x2), atol=2e-5)
    for level, dim in zip(["P2", "P3", "P4", "P5"], [16, 32, 64, 128]):
        stride = 2 ** int(level[1])
        assert tuple(static.pyramid_outputs[level].shape) == (None, h // stride,
                                                              w // stride, dim)
    assert set(static.features().output) == {"P2", "P3", "P4", "P5"}


def test_keras_roundtrip_and_fit(tmp_path):
    # One stage (an order-5 gnConv with a global filter) keeps the compiles short.
    model = hornet.HorNet(base_dim=32, depths=[1], orders=[5], global_filter=[[8, 5]],
                          input_shape=(32, 32, 3), num_classes=3, drop_path_rate=0.1)
    check_save_load_and_fit(model, tmp_path, 32)


def test_registry_and_applications():
    assert list_models("hornet*") == [
        "hornet_base_7x7", "hornet_base_gf", "hornet_large_7x7", "hornet_large_gf",
        "hornet_large_gf_img384", "hornet_small_7x7", "hornet_small_gf", "hornet_tiny_7x7",
        "hornet_tiny_gf"]
    v = get_variant("hornet_large_gf_img384")
    assert v.input_size == 384 and v.config["global_filter"] == [None, None, [24, 13],
                                                                 [12, 7]]
    assert v.weights["in22k"]["num_classes"] is None  # read from the checkpoint
    assert v.weights["in22k"]["url"].startswith("https://cloud.tsinghua.edu.cn/f/")
    assert get_variant("hornet_tiny_7x7").weights["in1k"]["filename"].endswith(".pth")
    from visionzoo import applications

    assert applications.HorNetTinyGF.model_name == "hornet_tiny_gf"
    assert applications.HorNetLargeGF_384.model_name == "hornet_large_gf_img384"
    assert applications.HorNetBase7x7.model_name == "hornet_base_7x7"
    with pytest.raises(ValueError, match="not in timm"):
        verify("timm:hornet_tiny_gf", verbose=False)


# Published (README) parameter counts. The ImageNet-22k checkpoints' README figures
# (209/211/216M) include a head of about 10.5k classes, not the 1000-class head built
# here; for those, the count with a 1000-class head is checked against the figures of
# the ports of the official weights (mmpretrain / keras_cv_attention_models).
CONVERTED_1K_HEAD = {"hornet_large_7x7": "194.5", "hornet_large_gf": "196.3",
                     "hornet_large_gf_img384": "201.8"}


@pytest.mark.slow
@pytest.mark.parametrize("name", list_models("hornet*"))
def test_parameter_counts_and_gmacs(name):
    only_on_full_backend("parameter counts are backend-independent; checked")
    from visionzoo.flops import count_macs

    v = get_variant(name)
    with keras.device("meta"):  # shapes only: no memory, no initialisation
        model = visionzoo.create_model(name, input_shape=(v.input_size, v.input_size, 3))
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    published = CONVERTED_1K_HEAD.get(name, v.published["params_m"])
    assert published_count_ok(trainable, published), trainable
    gmacs = count_macs(model) / 1e9
    assert abs(gmacs - v.published["gmacs"]) <= 0.03 * v.published["gmacs"], gmacs


def test_tflite_export(tmp_path):
    if BACKEND != "tensorflow":
        pytest.skip("exported on the TensorFlow backend (other backends hand off to it)")
    from test_export import assert_builtin_only

    # Stage 3 uses its stored grid (4x3 at 64 px); stage 4 resizes a 3x2 weight to 2x2.
    model = _mini(input_shape=(64, 64, 3), num_classes=10,
                  global_filter=[None, None, [4, 3], [3, 2]])
    path = tmp_path / "hornet.tflite"
    report = visionzoo.export.to_tflite(model, path)
    print(sorted(set(report.op_names)))
    assert report.max_abs_diff <= 1e-3 * report.ref_max_abs, report.summary()
    assert_builtin_only(report, path)
    assert "BATCH_MATMUL" in report.op_names or "FULLY_CONNECTED" in report.op_names
    assert not {"RFFT2D", "COMPLEX_ABS", "REAL", "IMAG"} & set(report.op_names)
