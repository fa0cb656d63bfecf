"""Shared layers: torch-exact numerics and serialisation round trips."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import keras

from visionzoo import layers as L
from visionzoo.backbones.metaformer import PoolingMixer, RandomMixing, SepConv


def _np(x):
    return keras.ops.convert_to_numpy(x)


def _rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype("float32")


def _roundtrip(layer, x):
    """Config round trip; the clone with the same weights gives the same output."""
    y = _np(layer(x))
    config = keras.saving.serialize_keras_object(layer)
    clone = keras.saving.deserialize_keras_object(config)
    clone(x)
    clone.set_weights(layer.get_weights())
    np.testing.assert_allclose(_np(clone(x)), y, rtol=1e-6, atol=1e-6)
    return y


def test_layernorm_matches_torch_with_and_without_bias():
    x = _rand(2, 5, 6, 8) * 3 + 2
    for center in (True, False):
        layer = L.LayerNorm(epsilon=1e-6, center=center)
        layer.build(x.shape)
        gamma = _rand(8, seed=1)
        beta = _rand(8, seed=2)
        layer.set_weights([gamma, beta] if center else [gamma])
        y = _roundtrip(layer, x)
        ref = F.layer_norm(torch.from_numpy(x), (8,), torch.from_numpy(gamma),
                           torch.from_numpy(beta) if center else None, eps=1e-6)
        np.testing.assert_allclose(y, ref.numpy(), atol=2e-5)


def test_groupnorm1_matches_torch_groupnorm():
    x = _rand(2, 5, 6, 8) * 2 + 1
    layer = L.GroupNorm1(epsilon=1e-5)
    layer.build(x.shape)
    gamma, beta = _rand(8, seed=1), _rand(8, seed=2)
    layer.set_weights([gamma, beta])
    y = _roundtrip(layer, x)
    ref = F.group_norm(torch.from_numpy(x).permute(0, 3, 1, 2), 1, torch.from_numpy(gamma),
                       torch.from_numpy(beta), eps=1e-5).permute(0, 2, 3, 1)
    np.testing.assert_allclose(y, ref.numpy(), atol=2e-5)


def test_activations_match_torch():
    x = _rand(4, 7) * 3
    t = torch.from_numpy(x)
    np.testing.assert_allclose(_roundtrip(L.GELU(), x), F.gelu(t).numpy(), atol=1e-6)
    np.testing.assert_allclose(_roundtrip(L.GELU(approximate=True), x),
                               F.gelu(t, approximate="tanh").numpy(), atol=1e-5)
    np.testing.assert_allclose(_roundtrip(L.SquaredReLU(), x), F.relu(t).pow(2).numpy(),
                               atol=1e-6)
    star = L.StarReLU(scale_value=0.8, bias_value=-0.3)
    np.testing.assert_allclose(_roundtrip(star, x), (0.8 * F.relu(t) ** 2 - 0.3).numpy(),
                               atol=1e-5)
    assert [w.shape for w in star.weights] == [(1,), (1,)]


@pytest.mark.parametrize("size,k,s,p", [((7, 9), 3, 1, 1), ((8, 8), 3, 1, 1), ((1, 3), 3, 1, 1),
                                        ((9, 10), 3, 2, 1), ((11, 8), 5, 3, 2), ((6, 7), 2, 2, 0)])
def test_avgpool_excludes_padding_like_torch(size, k, s, p):
    x = _rand(2, *size, 4)
    y = _roundtrip(L.AvgPool2DNoPadCount(k, strides=s, padding=p), x)
    ref = F.avg_pool2d(torch.from_numpy(x).permute(0, 3, 1, 2), k, s, p,
                       count_include_pad=False).permute(0, 2, 3, 1)
    np.testing.assert_allclose(y, ref.numpy(), atol=1e-5)


@pytest.mark.parametrize("k,s,p,hw", [(7, 4, 2, (29, 31)), (3, 2, 1, (9, 10)), (3, 1, 1, (6, 5)),
                                      (1, 1, 0, (4, 4))])
def test_padded_conv_matches_torch(k, s, p, hw):
    x = _rand(2, *hw, 3)
    w = _rand(5, 3, k, k, seed=1)
    b = _rand(5, seed=2)
    layer = L.PaddedConv2D(5, k, strides=s, torch_padding=p)
    layer.build(x.shape)
    layer.set_weights([w.transpose(2, 3, 1, 0), b])
    y = _roundtrip(layer, x)
    ref = F.conv2d(torch.from_numpy(x).permute(0, 3, 1, 2), torch.from_numpy(w),
                   torch.from_numpy(b), stride=s, padding=p).permute(0, 2, 3, 1)
    assert y.shape == tuple(ref.shape)
    np.testing.assert_allclose(y, ref.numpy(), atol=1e-4)


def test_padded_depthwise_conv_matches_torch():
    x = _rand(2, 9, 11, 6)
    w = _rand(6, 1, 7, 7, seed=1)
    layer = L.PaddedDepthwiseConv2D(7, torch_padding=3, use_bias=False)
    layer.build(x.shape)
    layer.set_weights([w.transpose(2, 3, 0, 1)])
    y = _roundtrip(layer, x)
    ref = F.conv2d(torch.from_numpy(x).permute(0, 3, 1, 2), torch.from_numpy(w),
                   padding=3, groups=6).permute(0, 2, 3, 1)
    np.testing.assert_allclose(y, ref.numpy(), atol=1e-4)


@pytest.mark.parametrize("kernel,stride,dilation,padding", [
    (7, 1, 1, "same"), (3, 2, 1, "same"), (4, 2, 1, "same"), (3, 1, 2, "same"),
    (5, 2, 1, "valid"), (3, 3, 1, "valid")])
def test_depthwise_conv_matches_torch(kernel, stride, dilation, padding):
    """The JAX fast path (shifted slices) and the native kernels agree with torch at
    every stride, dilation and Keras padding, bias included, forward and gradient."""
    x = _rand(2, 13, 10, 6)
    w = _rand(6, 1, kernel, kernel, seed=1)
    b = _rand(6, seed=2)
    layer = L.DepthwiseConv2D(kernel, strides=stride, dilation_rate=dilation,
                              padding=padding)
    layer.build(x.shape)
    layer.set_weights([w.transpose(2, 3, 0, 1), b])
    y = _roundtrip(layer, x)
    t = torch.from_numpy(x).permute(0, 3, 1, 2)
    if padding == "same":  # TF's rule: the extra row/column goes after
        span = (kernel - 1) * dilation + 1
        pads = []
        for size in (10, 13):  # F.pad order: last axis first
            total = max((-(-size // stride) - 1) * stride + span - size, 0)
            pads += [total // 2, total - total // 2]
        t = F.pad(t, pads)
    ref = F.conv2d(t, torch.from_numpy(w), torch.from_numpy(b), stride=stride,
                   dilation=dilation, groups=6).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(y, ref, atol=1e-5)
    # Gradients: sum(out * g) w.r.t. the input equals the native depthwise conv's.
    g = _rand(*ref.shape, seed=3)
    native = keras.ops.depthwise_conv(x, w.transpose(2, 3, 0, 1), strides=stride,
                                      padding=padding, dilation_rate=dilation)
    np.testing.assert_allclose(_np(native) + b, ref, atol=1e-5)
    grads = []
    for fn in (lambda v: L.depthwise_conv(v, w.transpose(2, 3, 0, 1), stride, padding,
                                          dilation),
               lambda v: keras.ops.depthwise_conv(v, w.transpose(2, 3, 0, 1), stride,
                                                  padding, dilation_rate=dilation)):
        grads.append(_input_grad(fn, x, g))
    np.testing.assert_allclose(grads[0], grads[1], atol=1e-4)


@pytest.mark.parametrize("kernel,stride,dilation,padding,max_taps", [
    ((7, 7), 1, 1, "same", 25), ((7, 7), 2, 1, "same", 25), ((6, 5), 1, 2, "same", 12),
    ((5, 7), 3, 1, "valid", 25), ((3, 9), 1, 1, "valid", 4), ((7, 7), 1, 1, "valid", 49)])
def test_depthwise_conv_split_matches_conv(kernel, stride, dilation, padding, max_taps):
    """The banded form the TFLite export traces (kernels cut into pieces of at most
    ``max_taps`` taps, also across columns when a row is wider) equals the convolution
    at every stride, dilation, padding and depth multiplier."""
    from visionzoo.layers.conv import depthwise_conv_split

    x = _rand(2, 13, 11, 6)
    for mult in (1, 2):
        w = _rand(*kernel, 6, mult, seed=mult)
        ref = _np(keras.ops.depthwise_conv(x, w, strides=stride, padding=padding,
                                           dilation_rate=dilation))
        y = _np(depthwise_conv_split(x, w, stride, padding, dilation, max_taps=max_taps))
        assert y.shape == ref.shape
        np.testing.assert_allclose(y, ref, atol=1e-5)


def test_depthwise_conv_uses_bands_only_when_tracing_for_tflite():
    """Outside ``tflite_tracing`` every backend runs its usual form; inside it, on the
    TensorFlow backend, kernels above 25 taps are traced as bands (same values)."""
    from visionzoo.layers import conv
    from visionzoo.layers.lowering import is_tflite_tracing, tflite_tracing

    calls = []
    original = conv.depthwise_conv_split

    def spy(*args, **kwargs):
        calls.append(args[1].shape)
        return original(*args, **kwargs)

    x = _rand(1, 12, 12, 4)
    w = _rand(7, 7, 4, 1)
    try:
        conv.depthwise_conv_split = spy
        plain = _np(L.depthwise_conv(x, w, 1, "same"))
        assert not calls and not is_tflite_tracing()
        with tflite_tracing():
            assert is_tflite_tracing()
            traced = _np(L.depthwise_conv(x, w, 1, "same"))
            _np(L.depthwise_conv(x, w[:5, :5], 1, "same"))  # 25 taps: never split
        assert not is_tflite_tracing()
    finally:
        conv.depthwise_conv_split = original
    assert calls == ([(7, 7, 4, 1)] if keras.config.backend() == "tensorflow" else [])
    np.testing.assert_allclose(traced, plain, atol=1e-5)


def test_depthwise_conv_in_model_with_unknown_spatial_size():
    """Symbolic (None) height/width: the layers build inside a functional model and
    then run on concrete sizes, including odd ones at stride 2."""
    inputs = keras.Input((None, None, 4))
    a = L.DepthwiseConv2D(3, strides=2, padding="same")(inputs)
    b = L.PaddedDepthwiseConv2D(5, torch_padding=2)(inputs)
    model = keras.Model(inputs, [a, b])
    x = _rand(1, 9, 11, 4)
    ya, yb = (_np(t) for t in model(x))
    assert ya.shape == (1, 5, 6, 4) and yb.shape == (1, 9, 11, 4)
    ka = model.layers[1].get_weights()[0]
    ref = keras.ops.depthwise_conv(x, ka, 2, "same") + model.layers[1].get_weights()[1]
    np.testing.assert_allclose(ya, _np(ref), atol=1e-5)


def _input_grad(fn, x, g):
    backend = keras.config.backend()
    if backend == "jax":
        import jax
        return np.asarray(jax.grad(lambda v: (fn(v) * g).sum())(x))
    if backend == "tensorflow":
        import tensorflow as tf
        v = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(v)
            loss = tf.reduce_sum(fn(v) * g)
        return tape.gradient(loss, v).numpy()
    v = torch.tensor(x, requires_grad=True)
    (fn(v) * torch.from_numpy(g)).sum().backward()
    return v.grad.numpy()


def test_attention_matches_torch_sdpa():
    x = _rand(2, 4, 5, 64)
    layer = L.MultiHeadSelfAttention(num_heads=2, head_dim=32)
    layer.build(x.shape)
    wqkv, wproj = _rand(192, 64, seed=1) / 8, _rand(64, 64, seed=2) / 8
    layer.set_weights([wqkv.T, wproj.T])
    y = _roundtrip(layer, x)
    t = torch.from_numpy(x).reshape(2, 20, 64)
    qkv = (t @ torch.from_numpy(wqkv).T).reshape(2, 20, 3, 2, 32).permute(2, 0, 3, 1, 4)
    o = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2]).transpose(1, 2).reshape(2, 20, 64)
    ref = (o @ torch.from_numpy(wproj).T).reshape(2, 4, 5, 64)
    np.testing.assert_allclose(y, ref.numpy(), atol=1e-5)


def test_composite_layers_roundtrip():
    x = _rand(2, 7, 7, 16)
    _roundtrip(L.Mlp(32, activation="star_relu", use_bias=False), x)
    _roundtrip(L.Mlp(32, activation="gelu", conv_form=True), x)
    _roundtrip(L.MlpHead(10, 64), _rand(2, 16))
    _roundtrip(L.ConvDownsample(8, 3, 2, 1, pre_norm={"type": "layernorm", "epsilon": 1e-6,
                                                        "center": False}), x)
    _roundtrip(L.Scale(0.5), x)
    _roundtrip(PoolingMixer(3), x)
    _roundtrip(SepConv(), x)
    _roundtrip(RandomMixing(49), x)


def test_drop_path_is_identity_at_inference_and_scales_in_training():
    x = np.ones((512, 3), "float32")
    layer = L.DropPath(0.25, seed=1)
    np.testing.assert_array_equal(_np(layer(x, training=False)), x)
    y = _np(layer(x, training=True))
    kept = y[:, 0] > 0
    assert 0.6 < kept.mean() < 0.9
    np.testing.assert_allclose(y[kept], 1 / 0.75, rtol=1e-6)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        L.DropPath(1.0)


def test_random_mixing_refuses_other_grids():
    with pytest.raises(ValueError, match="196-token matrix"):
        RandomMixing(196)(np.zeros((1, 7, 7, 4), "float32"))
