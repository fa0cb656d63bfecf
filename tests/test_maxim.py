"""MAXIM: official fixtures (full model, every stage/scale output; cross-gating block) on
every backend, Flax checkpoint conversion (ConvTranspose flip, prefixes, strictness),
resize helpers against jax.image.resize, any-size restoration, Keras round trip and
fit with the restoration recipe, parameter counts/MACs, TFLite export, CLI."""

import contextlib
import json

import numpy as np
import pytest

import keras

import visionzoo
from visionzoo.backbones import maxim
from visionzoo.layers import maxim_blocks as mb
from visionzoo.registry import get_variant, list_models
from visionzoo.weights import load_checkpoint
from visionzoo.weights.convert import CheckpointMismatchError

from conftest import BACKEND, only_on_full_backend, parity_fixture

# A small config with every code path (2 stages: SAM, input fusion, encoder cross gating).
TINY = dict(features=8, depth=2, num_stages=2, num_groups=1, num_supervision_scales=2,
            num_bottleneck_blocks=1, block_size_hr=(4, 4), grid_size_hr=(4, 4),
            block_size_lr=(2, 2), grid_size_lr=(2, 2), high_res_stages=1)


@contextlib.contextmanager
def fast_init():
    """Under JAX every new weight shape compiles its random initializer (about a second
    each on a busy CPU, a minute for the fixture model). These tests overwrite the weights
    or only need some random start, so draw the initial values with NumPy instead."""
    if BACKEND != "jax":
        yield
        return
    from keras.src.initializers import random_initializers

    rng = np.random.default_rng(0)
    backend_random = random_initializers.random

    class NumpyRandom:
        def __getattr__(self, name):  # make_default_seed, ...
            return getattr(backend_random, name)

        def normal(self, shape, mean=0.0, stddev=1.0, dtype=None, seed=None):
            return (mean + stddev * rng.standard_normal(shape)).astype(dtype or "float32")

        def truncated_normal(self, shape, mean=0.0, stddev=1.0, dtype=None, seed=None):
            z = np.clip(rng.standard_normal(shape), -2, 2)
            return (mean + stddev * z).astype(dtype or "float32")

        def uniform(self, shape, minval=0.0, maxval=1.0, dtype=None, seed=None):
            return rng.uniform(minval, maxval, shape).astype(dtype or "float32")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(random_initializers, "random", NumpyRandom())
        yield


def _load(name):
    path = parity_fixture(name)
    data = np.load(path)
    meta = json.load(open(path[:-4] + ".json"))
    state = {k[len("param/"):]: data[k] for k in data.files if k.startswith("param/")}
    return data, meta, state


def _np(x):
    return keras.ops.convert_to_numpy(x)


def _predict(model, x):
    """JAX: one jitted predict; TF/torch: an eager call (TF's predict would XLA-compile
    the whole graph, which costs minutes on a busy CPU)."""
    if BACKEND == "jax":
        return model.predict(x, verbose=0)
    return model(x, training=False)


@pytest.fixture(scope="module")
def mini():
    data, meta, state = _load("maxim_mini")
    with fast_init():
        model = maxim.MAXIM(**maxim.from_official_config(meta["config"]), all_outputs=True,
                            input_shape=tuple(data["input"].shape[1:]))
    return data, meta, state, model


def test_official_fixture_every_stage_and_scale(mini):
    data, meta, state, model = mini
    assert maxim.detect_layout(state) == "flax"
    assert sum(int(np.prod(w.shape)) for w in model.weights) == meta["num_params"]
    load_checkpoint(model, state)
    outs = _predict(model, data["input"])
    keys = ["output_s0_0", "output_s0_1", "output_s0_2",
            "output_s1_0", "output_s1_1", "output_s1_2"]
    assert model.output_names_all == [f"stage{s}_scale{k}" for s in (0, 1) for k in range(3)]
    tols = meta.get("tolerance_per_output", {})
    for key, out in zip(keys, outs):
        err = np.max(np.abs(_np(out) - data[key]))
        assert err <= tols.get(key, meta["tolerance"]), (key, err)
    err = np.max(np.abs(_np(outs[-1]) - data["output"]))
    assert err <= tols.get("output", meta["tolerance"]), err


def test_official_checkpoint_prefix_and_strictness(mini):
    data, meta, state, model = mini
    # Released files nest the parameters under opt/target/ next to optimizer state.
    released = {f"opt/target/{k}": v for k, v in state.items()}
    released["opt/state/step"] = np.zeros((), "float32")
    load_checkpoint(model, released)
    before = [_np(w).copy() for w in model.weights]
    broken = {k: v for k, v in state.items()
              if k != "stage_1_decoder_block_0/ConvTranspose_0/kernel"}
    broken["stage_0_extra/kernel"] = np.zeros((3, 3), "float32")
    with pytest.raises(CheckpointMismatchError) as err:
        load_checkpoint(model, broken)
    assert "stage_1_decoder_block_0.ConvTranspose_0.weight" in str(err.value)
    assert "stage_0_extra.weight" in str(err.value)  # reported in canonical form
    wrong = dict(state)
    wrong["UpSampleRatio_3/Conv_0/kernel"] = wrong["UpSampleRatio_3/Conv_0/kernel"][..., :-1]
    with pytest.raises(CheckpointMismatchError, match="mis-shaped"):
        load_checkpoint(model, wrong)
    for w, b in zip(model.weights, before):
        np.testing.assert_array_equal(_np(w), b)


def test_cross_gating_block_fixture():
    data, meta, state = _load("maxim_cross_gating_mini")
    c = meta["config"]
    block = mb.CrossGatingBlock(c["features"], c["block_size"], c["grid_size"],
                                upsample_y=c["upsample_y"], use_bias=c["use_bias"],
                                name="cross_gating_block")
    x = keras.Input(data["input"].shape[1:])
    y = keras.Input(data["input_y"].shape[1:])
    with fast_init():
        model = keras.Model([x, y], block([x, y]))
    assert sum(int(np.prod(w.shape)) for w in model.weights) == meta["num_params"]
    # Inside a model the block's parameters sit under its name.
    maxim.load_flax_params(model, {f"cross_gating_block/{k}": v for k, v in state.items()})
    out_x, out_y = _predict(model, [data["input"], data["input_y"]])
    assert np.max(np.abs(_np(out_x) - data["output"])) <= meta["tolerance"]
    assert np.max(np.abs(_np(out_y) - data["output_y"])) <= meta["tolerance"]


def test_flax_conv_transpose_conversion_is_flipped():
    """Flax ConvTranspose (2x2/2 SAME, transpose_kernel=False) computes
    out[2i+a, 2j+c] = x[i, j] @ K[1-a, 1-c] + b; the converted Keras layer must too."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 4, 5)).astype("float32")
    k = rng.standard_normal((2, 2, 5, 6)).astype("float32")
    b = rng.standard_normal(6).astype("float32")
    ref = np.zeros((2, 6, 8, 6), "float32")
    for a in range(2):
        for c in range(2):
            ref[:, a::2, c::2] = x @ k[1 - a, 1 - c] + b
    layer = keras.layers.Conv2DTranspose(6, 2, strides=2, padding="same")
    layer.build(x.shape)
    layer.kernel.assign(maxim.flax_to_keras_convtranspose(k))
    layer.bias.assign(b)
    np.testing.assert_allclose(_np(layer(x)), ref, atol=1e-5)
    layer.kernel.assign(k.transpose(0, 1, 3, 2))  # the swap-only conversion is wrong
    assert np.max(np.abs(_np(layer(x)) - ref)) > 0.1


def test_resize_helpers_match_jax_image_resize():
    jax = pytest.importorskip("jax")
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 16, 24, 3)).astype("float32")
    for f in (2, 4):
        ref = np.asarray(jax.image.resize(x, (2, 16 // f, 24 // f, 3), "bilinear"))
        np.testing.assert_allclose(_np(mb.antialiased_downscale(x, f)), ref, atol=1e-5)
        plain = np.asarray(jax.image.resize(x, (2, 16 // f, 24 // f, 3), "bilinear",
                                            antialias=False))
        assert np.max(np.abs(plain - ref)) > 0.1  # antialiasing matters
        ref = np.asarray(jax.image.resize(x, (2, 16 * f, 24 * f, 3), "bilinear"))
        np.testing.assert_allclose(_np(mb.bilinear_upscale(x, f)), ref, atol=1e-5)
        ref = np.asarray(jax.image.resize(x, (2, 16 // f, 24 // f, 3), "nearest"))
        np.testing.assert_array_equal(_np(mb.nearest_downscale(x, f)), ref)


def test_mixing_layout_round_trip_and_token_order():
    x = np.arange(2 * 8 * 12 * 3, dtype="float32").reshape(2, 8, 12, 3)
    for mode, size in (("grid", (2, 3)), ("block", (4, 2))):
        t = _np(mb.to_mixing_layout(x, mode, size))
        np.testing.assert_array_equal(_np(mb.from_mixing_layout(t, mode, size, 8, 12)), x)
    # block mode: tokens of block (0, 0) are its pixels, row-major
    t = _np(mb.to_mixing_layout(x, "block", (4, 2)))
    np.testing.assert_array_equal(t[0, 0, 1], x[0, :4, :2, 1].reshape(-1))
    # grid mode: tokens of group (0, 0) are the first pixel of every cell, row-major
    t = _np(mb.to_mixing_layout(x, "grid", (2, 3)))
    np.testing.assert_array_equal(t[0, 0, 2], x[0, ::4, ::4, 2].reshape(-1))


def test_padding_as_run_eval_and_any_size_restore():
    img = np.random.default_rng(2).random((101, 70, 3)).astype("float32")
    padded, box = maxim.pad_for_model(img, 64)
    # 101 -> 102 (even) -> 128 (13 per side); 70 -> 128 (29 per side)
    assert padded.shape == (128, 128, 3) and box == (13, 29, 101, 70)
    np.testing.assert_array_equal(padded[13:13 + 101, 29:29 + 70], img)
    small = img[:21, :30]
    p, (top, left, h, w) = maxim.pad_for_model(small, 8)
    assert p.shape == (24, 32, 3)
    with fast_init():
        model = maxim.MAXIM(**TINY, input_shape=(32, 32, 3))
        other = model.with_input_size(*p.shape[:2])  # same weights, another size
    assert model.size_multiple == 8
    for a, b in zip(other.weights, model.weights):
        np.testing.assert_array_equal(_np(a), _np(b))
    out = maxim.restore(other, small)
    assert out.shape == small.shape
    ref = _np(_predict(other, p[None]))[0, top:top + h, left:left + w]
    np.testing.assert_allclose(out, ref, atol=1e-5)
    if BACKEND != "jax":  # restore() building the padded-size model itself (slow on JAX)
        np.testing.assert_allclose(maxim.restore(model, small), out, atol=1e-5)
    with pytest.raises(ValueError, match="multiples of 8"):
        maxim.MAXIM(**TINY, input_shape=(36, 36, 3))


def test_keras_roundtrip_and_fit(tmp_path):
    from visionzoo.training.restoration import compile_for_restoration

    with fast_init():
        model = maxim.MAXIM(**TINY, input_shape=(32, 32, 3))
    x = np.random.rand(4, 32, 32, 3).astype("float32")
    ref = _np(_predict(model, x))
    model.save(tmp_path / "m.keras")
    with fast_init():
        loaded = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(_np(_predict(loaded, x)), ref, atol=1e-5)
    assert loaded.get_config() == model.get_config()
    # fit() on a one-stage model (quicker) with the restoration recipe
    with fast_init():
        model = maxim.MAXIM(**{**TINY, "num_stages": 1}, input_shape=(32, 32, 3))
    x, clean = x[:2], np.clip(x[:2] * 0.8 + 0.1, 0, 1)
    # Eager on TF/torch (tracing/compiling the train step costs more than 5 steps); JAX
    # jit-compiles (its op-by-op eager mode is slower still).
    compile_for_restoration(model, learning_rate=1e-3, run_eagerly=BACKEND != "jax")
    h = model.fit(x, clean, epochs=5, batch_size=2, verbose=0).history
    assert h["loss"][-1] < h["loss"][0] and h["psnr"][-1] > h["psnr"][0], h


def test_restoration_losses_and_metrics():
    from visionzoo.training import restoration as r

    rng = np.random.default_rng(3)
    a = rng.random((2, 24, 24, 3)).astype("float32")
    b = np.clip(a + 0.05 * rng.standard_normal(a.shape), 0, 1).astype("float32")
    mse = np.mean((a - b) ** 2, axis=(1, 2, 3))
    np.testing.assert_allclose(_np(r.psnr(a, b)), 10 * np.log10(1 / mse), rtol=1e-5)
    d = b - a
    f = np.fft.fft2(d.transpose(0, 3, 1, 2), norm="ortho")
    ref = (np.mean(np.sqrt(d ** 2 + 1e-6), axis=(1, 2, 3))
           + 0.1 * np.mean(np.abs(f.real) + np.abs(f.imag), axis=(1, 2, 3)))
    np.testing.assert_allclose(_np(r.RestorationLoss(reduction=None)(a, b)), ref, rtol=1e-4)
    skm = pytest.importorskip("skimage.metrics")
    for i in range(2):
        ref = skm.structural_similarity(a[i], b[i], channel_axis=-1, data_range=1.0,
                                        gaussian_weights=True, sigma=1.5,
                                        use_sample_covariance=False)
        assert abs(float(_np(r.ssim(a[i:i + 1], b[i:i + 1]))[0]) - ref) < 2e-3
    assert float(_np(r.ssim(a, a)).min()) > 0.999


@pytest.mark.slow
@pytest.mark.parametrize("name", list_models("maxim_*"))
def test_parameter_counts_and_macs(name):
    only_on_full_backend("parameter counts are backend-independent; checked")
    from visionzoo.flops import count_macs

    v = get_variant(name)
    assert v.task == "restoration"
    # The official code comment counts Model(variant=...) with its default
    # num_supervision_scales=1: exactly equal.
    model = visionzoo.create_model(name, num_supervision_scales=1)
    count = sum(int(np.prod(w.shape)) for w in model.weights)
    assert count == v.published["official_code_params"]
    # Its GFLOPs (XLA cost analysis at 256x256) count 2 flops per multiply-add plus
    # element-wise work: 2 * our MACs is 88-94% of it.
    ratio = 2 * count_macs(model) / 1e9 / v.published["gflops"]
    assert 0.85 < ratio < 0.97, ratio
    if name in ("maxim_s2", "maxim_s3"):  # README (checkpoint configuration): 14.1M, 22.2M
        full = visionzoo.create_model(name)
        count = sum(int(np.prod(w.shape)) for w in full.weights)
        assert int(count / 1e5) / 10 == {"maxim_s2": 14.1, "maxim_s3": 22.2}[name]


def test_registry_entries():
    assert set(list_models("maxim_*")) == set(list_models(task="restoration")) >= {
        "maxim_s1", "maxim_s2", "maxim_s3", "maxim_m1", "maxim_m2", "maxim_m3"}
    tags = {tag: spec for n in list_models("maxim_*") for tag, spec in get_variant(n).weights.items()}
    assert len(tags) == 11
    assert tags["sidd"]["url"] == ("https://storage.googleapis.com/gresearch/maxim/ckpt/"
                                   "Denoising/SIDD/checkpoint.npz")
    assert set(get_variant("maxim_s3").weights) == {"sidd", "gopro", "reds", "realblur_r",
                                                    "realblur_j"}


def test_tflite_export(tmp_path):
    if BACKEND != "tensorflow":
        pytest.skip("exported on the TensorFlow backend (other backends hand off to it)")
    from test_export import assert_builtin_only

    model = maxim.MAXIM(**TINY, input_shape=(32, 32, 3))
    path = tmp_path / "maxim_tiny.tflite"
    rng = np.random.default_rng(0)
    report = visionzoo.export.to_tflite(model, path,
                                        check_input=rng.random((2, 32, 32, 3)).astype("float32"))
    assert report.max_abs_diff <= 1e-3 * report.ref_max_abs, report.summary()
    assert_builtin_only(report, path)
    print(report.summary())


def test_cli_predict_restore(tmp_path):
    only_on_full_backend("CLI smoke test")
    from PIL import Image

    from visionzoo.cli import main

    img = (np.random.default_rng(4).random((40, 50, 3)) * 255).astype("uint8")
    Image.fromarray(img).save(tmp_path / "in.png")
    assert main(["predict", "--task", "restore", "maxim_s1", str(tmp_path / "in.png"),
                 "--out", str(tmp_path / "out.png")]) == 0
    assert np.asarray(Image.open(tmp_path / "out.png")).shape == (40, 50, 3)
