"""MAXIM building blocks (Tu et al., CVPR 2022), on NHWC maps.

The layers mirror the module tree of the official Flax code (google-research/maxim,
``maxim/models/maxim.py``), and every sub-layer carries the name Flax gives that module
(``in_project``, ``GridGatingUnit/Dense_0``, ``Conv_1``...), so a Keras variable path
such as ``.../SplitHeadMultiAxisGmlpLayer_0/GridGmlpLayer/in_project/kernel`` is the
official parameter path with ``/`` kept.

- Multi-axis gated MLP: :class:`GatingUnit` (grid or block spatial gating),
  :class:`GmlpLayer`, :class:`MultiAxisGmlpBlock` (``ResidualSplitHeadMultiAxisGmlpLayer``).
- :class:`SpatialGatingWeights` and :class:`CrossGatingBlock`.
- Channel attention: :class:`ChannelAttention` (``CALayer``), :class:`RCAB`,
  :class:`RDCAB` (with :class:`MlpBlock`).
- :class:`SupervisedAttention` (``SAM``), :class:`UpSampleRatio` and the resize helpers
  :func:`antialiased_downscale` / :func:`bilinear_upscale` / :func:`nearest_downscale`.

Numerics follow Flax, not torch: LayerNorm eps 1e-6 and the *tanh* GELU (``nn.gelu``'s
default; the exact erf GELU misses the official outputs by ~1e-3).

Spatial gating mixes tokens with one 5-D transpose each way: a ``(B, H, W, C)`` map is
laid out as ``(B, groups, C, tokens)`` so that the token-mixing matrix is a plain
matmul on the last axis (grid mode: tokens = the ``gh*gw`` grid cells, groups = the
``fh*fw`` pixels of a cell; block mode: tokens = the ``fh*fw`` pixels of a block,
groups = the blocks). Token order is row-major, as in the official
``einops`` ``n (gh fh) (gw fw) c -> n (gh gw) (fh fw) c``. Spatial sizes must be static.
"""

import keras
import numpy as np
from keras import ops

from visionzoo.layers.conv import depthwise_conv
from visionzoo.layers.norms import LayerNorm

LN_EPS = 1e-6  # Flax nn.LayerNorm default


def gelu_tanh(x):
    """Flax ``nn.gelu`` (tanh approximation)."""
    return ops.gelu(x, approximate=True)


# --------------------------------------------------------------------------------------
# Resizing (static shapes, builtin TFLite ops only)
# --------------------------------------------------------------------------------------


def _triangle_taps(factor):
    """1-D taps of the antialiased bilinear ``1/factor`` downscale (jax.image.resize):
    a tent of half-width ``factor`` at half-pixel centres, ``2*factor`` taps."""
    k = np.arange(2 * factor, dtype=np.float64)
    taps = np.maximum(0.0, 1.0 - np.abs(k + 0.5 - factor) / factor)
    return taps / taps.sum()


def antialiased_downscale(x, factor):
    """``jax.image.resize(x, (n, h/f, w/f, c), "bilinear")`` (antialias=True) for an even
    integer ``factor``: a fixed depthwise tent filter with stride ``factor`` on a
    zero-padded map, renormalised at the borders (divided by the filter applied to
    ones, computed here as a constant). Lowers to PAD + DEPTHWISE_CONV_2D + MUL."""
    if factor == 1:
        return x
    if factor % 2:
        raise ValueError(f"antialiased_downscale needs an even factor, got {factor}.")
    h, w, c = x.shape[1], x.shape[2], x.shape[3]
    if h is None or w is None or h % factor or w % factor:
        raise ValueError(f"antialiased_downscale needs static sizes divisible by {factor}; "
                         f"got {h}x{w}.")
    taps = _triangle_taps(factor)
    pad = factor // 2

    def coverage(n):  # sum of the taps that fall inside the image, per output index
        ones = np.pad(np.ones(n), pad)
        return np.array([ones[j * factor:j * factor + 2 * factor] @ taps
                         for j in range(n // factor)])

    kernel = np.outer(taps, taps)[:, :, None, None] * np.ones((1, 1, c, 1))
    norm = 1.0 / np.outer(coverage(h), coverage(w))[None, :, :, None]
    dtype = x.dtype
    y = ops.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    y = depthwise_conv(y, ops.convert_to_tensor(kernel.astype("float32"), dtype),
                           strides=factor, padding="valid")
    return y * ops.convert_to_tensor(norm.astype("float32"), dtype)


def bilinear_upscale(x, factor):
    """Half-pixel bilinear upsampling with edge clamping (``jax.image.resize`` bilinear
    for ratio > 1; TFLite RESIZE_BILINEAR)."""
    if factor == 1:
        return x
    h, w = x.shape[1], x.shape[2]
    return ops.image.resize(x, (h * factor, w * factor), interpolation="bilinear",
                            antialias=False)


def nearest_downscale(x, factor):
    """``jax.image.resize(..., "nearest")`` by ``1/factor``: picks pixel
    ``floor((i + 0.5) * factor) = i*factor + factor//2`` (strided slice)."""
    if factor == 1:
        return x
    start = factor // 2
    return x[:, start::factor, start::factor, :]


# --------------------------------------------------------------------------------------
# Base: composite layers that report their multiply-accumulates
# --------------------------------------------------------------------------------------


def _leaf_macs(layer, in_shape, out_shape):
    """MACs of one child layer from its static input/output shapes."""
    def positions(shape):
        if isinstance(shape, list):
            shape = shape[0]
        n = 1
        for d in shape[1:-1]:
            n *= int(d)
        return n

    if isinstance(layer, keras.layers.Conv2DTranspose):
        return positions(in_shape) * int(np.prod(layer.kernel.shape))
    if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
        return positions(out_shape) * int(np.prod(layer.kernel.shape))
    if hasattr(layer, "matmul_macs"):
        first = in_shape[0] if isinstance(in_shape, list) else in_shape
        return int(layer.matmul_macs(first))
    return 0


class MaximLayer(keras.layers.Layer):
    """Base of the composite MAXIM layers.

    Composite layers build their children explicitly in ``build`` (through
    :meth:`_build_child`) and implement ``compute_output_shape``, so a functional model
    never traces their ``call`` symbolically (nested tracing is exponential in depth).
    ``_build_child`` also records each child's multiply-accumulates at the shape it
    sees; ``matmul_macs`` reports the total (used by :func:`visionzoo.flops.count_macs`)
    and the children are marked so they are not counted twice.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._macs_by_layer = {}

    def _build_child(self, layer, shape):
        """Build ``layer`` for input ``shape``; return its output shape."""
        layer.build(shape)
        layer._vz_skip_macs = True
        if isinstance(layer, MaximLayer) or type(layer).compute_output_shape is not \
                keras.layers.Layer.compute_output_shape:
            out = layer.compute_output_shape(shape)
        else:
            out = tuple(shape)
        try:
            self._macs_by_layer[layer.name] = _leaf_macs(layer, shape, out)
        except (TypeError, ValueError):  # dynamic sizes: not counted
            pass
        return out

    def matmul_macs(self, input_shape=None):
        return int(sum(self._macs_by_layer.values()))


# --------------------------------------------------------------------------------------
# Multi-axis gated MLP
# --------------------------------------------------------------------------------------


def _partition(h, w, mode, size):
    """(gh, gw, fh, fw) of a ``mode`` ("grid" or "block") partition of an h x w map."""
    a, b = size
    if h % a or w % b:
        raise ValueError(f"{mode} size {tuple(size)} does not divide the {h}x{w} map.")
    if mode == "block":
        return h // a, w // b, a, b
    return a, b, h // a, w // b


def to_mixing_layout(x, mode, size):
    """``(B, H, W, C)`` -> ``(B, groups, C, tokens)``; tokens are mixed by a matmul."""
    h, w, c = x.shape[1], x.shape[2], x.shape[3]
    gh, gw, fh, fw = _partition(h, w, mode, size)
    if mode == "block":  # (B*gh, fh, gw, fw, C) -> (B*gh, gw, C, fh, fw)
        t = ops.transpose(ops.reshape(x, (-1, fh, gw, fw, c)), (0, 2, 4, 1, 3))
        return ops.reshape(t, (-1, gh * gw, c, fh * fw))
    # grid: (B, gh, fh, gw, fw*C) -> (B, fh, fw*C, gh, gw)
    t = ops.transpose(ops.reshape(x, (-1, gh, fh, gw, fw * c)), (0, 2, 4, 1, 3))
    return ops.reshape(t, (-1, fh * fw, c, gh * gw))


def from_mixing_layout(t, mode, size, h, w):
    """Inverse of :func:`to_mixing_layout`."""
    c = t.shape[2]
    gh, gw, fh, fw = _partition(h, w, mode, size)
    if mode == "block":
        t = ops.transpose(ops.reshape(t, (-1, gw, c, fh, fw)), (0, 3, 1, 4, 2))
    else:
        t = ops.transpose(ops.reshape(t, (-1, fh, fw * c, gh, gw)), (0, 3, 1, 4, 2))
    return ops.reshape(t, (-1, h, w, c))


@keras.saving.register_keras_serializable(package="visionzoo")
class TokenMixingDense(keras.layers.Layer):
    """A Dense over the tokens of a grid or block partition (the spatial projection of
    gMLP gating). ``kernel`` is ``(tokens_in, tokens_out)`` as in Flax.

    Args:
        mode: "grid" (mix the ``gh*gw`` cells of a fixed ``size`` grid: global) or
            "block" (mix the pixels of fixed ``size`` blocks: local).
        size: (a, b). Grid or block size.
        use_bias: bool.
        bias_initializer: initializer of the bias (the cross-gating block uses "ones").
    """

    def __init__(self, mode, size, use_bias=True, bias_initializer="zeros", **kwargs):
        super().__init__(**kwargs)
        if mode not in ("grid", "block"):
            raise ValueError(f"mode must be 'grid' or 'block', got {mode!r}.")
        self.mode = mode
        self.size = tuple(int(s) for s in size)
        self.use_bias = use_bias
        self.bias_initializer = keras.initializers.get(bias_initializer)

    def build(self, input_shape):
        n = self.size[0] * self.size[1]
        self.kernel = self.add_weight(
            name="kernel", shape=(n, n),
            initializer=keras.initializers.RandomNormal(stddev=2e-2))
        if self.use_bias:
            self.bias = self.add_weight(name="bias", shape=(n,),
                                        initializer=self.bias_initializer)

    def call(self, x):
        h, w = x.shape[1], x.shape[2]
        t = ops.matmul(to_mixing_layout(x, self.mode, self.size), self.kernel)
        if self.use_bias:
            t = t + self.bias
        return from_mixing_layout(t, self.mode, self.size, h, w)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def matmul_macs(self, input_shape):
        n = self.size[0] * self.size[1]
        return int(np.prod(input_shape[1:])) * n

    def get_config(self):
        config = super().get_config()
        config.update(mode=self.mode, size=list(self.size), use_bias=self.use_bias,
                      bias_initializer=keras.initializers.serialize(self.bias_initializer))
        return config


def _dense(units, use_bias, name):
    return keras.layers.Dense(units, use_bias=use_bias, name=name,
                              kernel_initializer=keras.initializers.RandomNormal(stddev=2e-2))


def _split(x):
    c = x.shape[-1] // 2
    return x[..., :c], x[..., c:]


@keras.saving.register_keras_serializable(package="visionzoo")
class GatingUnit(MaximLayer):
    """Grid or block spatial gating unit: ``u * (Dense_tokens(LN(v)) + 1)`` on the two
    channel halves (official ``GridGatingUnit`` / ``BlockGatingUnit``)."""

    def __init__(self, mode, size, use_bias=True, **kwargs):
        super().__init__(**kwargs)
        self.mode = mode
        self.size = tuple(size)
        self.use_bias = use_bias
        self.norm = LayerNorm(epsilon=LN_EPS, name="intermediate_layernorm")
        self.mix = TokenMixingDense(mode, self.size, use_bias, name="Dense_0")

    def build(self, input_shape):
        half = tuple(input_shape[:-1]) + (input_shape[-1] // 2,)
        self._build_child(self.norm, half)
        self._build_child(self.mix, half)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (input_shape[-1] // 2,)

    def call(self, x):
        u, v = _split(x)
        v = self.mix(self.norm(v))
        return u * (v + 1.0)

    def get_config(self):
        config = super().get_config()
        config.update(mode=self.mode, size=list(self.size), use_bias=self.use_bias)
        return config


@keras.saving.register_keras_serializable(package="visionzoo")
class GmlpLayer(MaximLayer):
    """Grid (global) or block (local) gMLP with its residual (official
    ``GridGmlpLayer`` / ``BlockGmlpLayer``); ``factor`` widens the inner projection."""

    def __init__(self, mode, size, factor=2, use_bias=True, dropout_rate=0.0, **kwargs):
        super().__init__(**kwargs)
        self.mode = mode
        self.size = tuple(size)
        self.factor = factor
        self.use_bias = use_bias
        self.dropout_rate = dropout_rate
        self.norm = LayerNorm(epsilon=LN_EPS, name="LayerNorm")
        self.unit = GatingUnit(mode, self.size, use_bias,
                               name="GridGatingUnit" if mode == "grid" else "BlockGatingUnit")
        self.drop = keras.layers.Dropout(dropout_rate)

    def build(self, input_shape):
        c = input_shape[-1]
        self.in_project = _dense(c * self.factor, self.use_bias, "in_project")
        self.out_project = _dense(c, self.use_bias, "out_project")
        shape = self._build_child(self.norm, input_shape)
        shape = self._build_child(self.in_project, shape)
        shape = self._build_child(self.unit, shape)
        self._build_child(self.out_project, shape)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def call(self, x, training=None):
        y = gelu_tanh(self.in_project(self.norm(x)))
        y = self.out_project(self.unit(y))
        return x + self.drop(y, training=training)

    def get_config(self):
        config = super().get_config()
        config.update(mode=self.mode, size=list(self.size), factor=self.factor,
                      use_bias=self.use_bias, dropout_rate=self.dropout_rate)
        return config


@keras.saving.register_keras_serializable(package="visionzoo")
class MultiAxisGmlpBlock(MaximLayer):
    """MAXIM's multi-axis gated MLP block (official
    ``ResidualSplitHeadMultiAxisGmlpLayer``): LN -> Dense(C*input_proj_factor) -> GELU,
    split in two heads, the first through a grid gMLP (global), the second through a
    block gMLP (local), concat -> Dense(C) + shortcut."""

    def __init__(self, block_size, grid_size, block_gmlp_factor=2, grid_gmlp_factor=2,
                 input_proj_factor=2, use_bias=True, dropout_rate=0.0, **kwargs):
        super().__init__(**kwargs)
        self.block_size = tuple(block_size)
        self.grid_size = tuple(grid_size)
        self.block_gmlp_factor = block_gmlp_factor
        self.grid_gmlp_factor = grid_gmlp_factor
        self.input_proj_factor = input_proj_factor
        self.use_bias = use_bias
        self.dropout_rate = dropout_rate
        self.norm = LayerNorm(epsilon=LN_EPS, name="LayerNorm_in")
        self.grid = GmlpLayer("grid", self.grid_size, grid_gmlp_factor, use_bias,
                              dropout_rate, name="GridGmlpLayer")
        self.block = GmlpLayer("block", self.block_size, block_gmlp_factor, use_bias,
                               dropout_rate, name="BlockGmlpLayer")
        self.drop = keras.layers.Dropout(dropout_rate)

    def build(self, input_shape):
        c = input_shape[-1]
        self.in_project = _dense(c * self.input_proj_factor, self.use_bias, "in_project")
        self.out_project = _dense(c, self.use_bias, "out_project")
        shape = self._build_child(self.norm, input_shape)
        shape = self._build_child(self.in_project, shape)
        half = tuple(shape[:-1]) + (shape[-1] // 2,)
        self._build_child(self.grid, half)
        self._build_child(self.block, half)
        self._build_child(self.out_project, shape)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def call(self, x, training=None):
        y = gelu_tanh(self.in_project(self.norm(x)))
        u, v = _split(y)
        u = self.grid(u, training=training)
        v = self.block(v, training=training)
        y = self.out_project(ops.concatenate([u, v], axis=-1))
        return x + self.drop(y, training=training)

    def get_config(self):
        config = super().get_config()
        config.update(block_size=list(self.block_size), grid_size=list(self.grid_size),
                      block_gmlp_factor=self.block_gmlp_factor,
                      grid_gmlp_factor=self.grid_gmlp_factor,
                      input_proj_factor=self.input_proj_factor, use_bias=self.use_bias,
                      dropout_rate=self.dropout_rate)
        return config


# --------------------------------------------------------------------------------------
# Channel attention
# --------------------------------------------------------------------------------------


def _conv(filters, kernel, use_bias, name, strides=1, padding="same"):
    return keras.layers.Conv2D(filters, kernel, strides=strides, padding=padding,
                               use_bias=use_bias, name=name)


@keras.saving.register_keras_serializable(package="visionzoo")
class ChannelAttention(MaximLayer):
    """Squeeze-and-excitation (official ``CALayer``): global mean -> 1x1 conv
    (``features // reduction``) -> ReLU -> 1x1 conv -> sigmoid, times the input."""

    def __init__(self, features, reduction=4, use_bias=True, **kwargs):
        super().__init__(**kwargs)
        self.features = features
        self.reduction = reduction
        self.use_bias = use_bias
        self.squeeze = _conv(features // reduction, 1, use_bias, "Conv_0")
        self.excite = _conv(features, 1, use_bias, "Conv_1")

    def build(self, input_shape):
        pooled = (input_shape[0], 1, 1, input_shape[-1])
        self._build_child(self.excite, self._build_child(self.squeeze, pooled))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def call(self, x):
        y = ops.mean(x, axis=(1, 2), keepdims=True)
        y = ops.relu(self.squeeze(y))
        return x * ops.sigmoid(self.excite(y))

    def get_config(self):
        config = super().get_config()
        config.update(features=self.features, reduction=self.reduction,
                      use_bias=self.use_bias)
        return config


@keras.saving.register_keras_serializable(package="visionzoo")
class RCAB(MaximLayer):
    """Residual channel-attention block: LN -> conv3x3 -> leaky ReLU -> conv3x3 ->
    channel attention, plus the input."""

    def __init__(self, features, reduction=4, lrelu_slope=0.2, use_bias=True, **kwargs):
        super().__init__(**kwargs)
        self.features = features
        self.reduction = reduction
        self.lrelu_slope = lrelu_slope
        self.use_bias = use_bias
        self.norm = LayerNorm(epsilon=LN_EPS, name="LayerNorm")
        self.conv1 = _conv(features, 3, use_bias, "conv1")
        self.conv2 = _conv(features, 3, use_bias, "conv2")
        self.attention = ChannelAttention(features, reduction, use_bias,
                                          name="channel_attention")

    def build(self, input_shape):
        shape = self._build_child(self.norm, input_shape)
        shape = self._build_child(self.conv2, self._build_child(self.conv1, shape))
        self._build_child(self.attention, shape)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def call(self, x):
        y = self.conv1(self.norm(x))
        y = ops.leaky_relu(y, negative_slope=self.lrelu_slope)
        y = self.attention(self.conv2(y))
        return x + y

    def get_config(self):
        config = super().get_config()
        config.update(features=self.features, reduction=self.reduction,
                      lrelu_slope=self.lrelu_slope, use_bias=self.use_bias)
        return config


@keras.saving.register_keras_serializable(package="visionzoo")
class MlpBlock(MaximLayer):
    """Dense(mlp_dim) -> GELU (tanh) -> Dense(channels) (official ``MlpBlock``)."""

    def __init__(self, mlp_dim, use_bias=True, dropout_rate=0.0, **kwargs):
        super().__init__(**kwargs)
        self.mlp_dim = mlp_dim
        self.use_bias = use_bias
        self.dropout_rate = dropout_rate
        self.fc1 = _dense(mlp_dim, use_bias, "Dense_0")
        self.drop = keras.layers.Dropout(dropout_rate)

    def build(self, input_shape):
        self.fc2 = _dense(input_shape[-1], self.use_bias, "Dense_1")
        self._build_child(self.fc2, self._build_child(self.fc1, input_shape))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def call(self, x, training=None):
        y = self.drop(gelu_tanh(self.fc1(x)), training=training)
        return self.fc2(y)

    def get_config(self):
        config = super().get_config()
        config.update(mlp_dim=self.mlp_dim, use_bias=self.use_bias,
                      dropout_rate=self.dropout_rate)
        return config


@keras.saving.register_keras_serializable(package="visionzoo")
class RDCAB(MaximLayer):
    """Residual dense channel-attention block (bottleneck): LN -> MlpBlock ->
    channel attention, plus the input."""

    def __init__(self, features, reduction=4, use_bias=True, dropout_rate=0.0, **kwargs):
        super().__init__(**kwargs)
        self.features = features
        self.reduction = reduction
        self.use_bias = use_bias
        self.dropout_rate = dropout_rate
        self.norm = LayerNorm(epsilon=LN_EPS, name="LayerNorm")
        self.mlp = MlpBlock(features, use_bias, dropout_rate, name="channel_mixing")
        self.attention = ChannelAttention(features, reduction, use_bias,
                                          name="channel_attention")

    def build(self, input_shape):
        shape = self._build_child(self.norm, input_shape)
        self._build_child(self.attention, self._build_child(self.mlp, shape))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def call(self, x, training=None):
        y = self.mlp(self.norm(x), training=training)
        return x + self.attention(y)

    def get_config(self):
        config = super().get_config()
        config.update(features=self.features, reduction=self.reduction,
                      use_bias=self.use_bias, dropout_rate=self.dropout_rate)
        return config


# --------------------------------------------------------------------------------------
# Cross gating
# --------------------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="visionzoo")
class SpatialGatingWeights(MaximLayer):
    """Gating weights of the cross-gating block (official ``GetSpatialGatingWeights``):
    LN -> Dense(2C) -> GELU -> split; grid token mixing on the first half (``Dense_0``),
    block token mixing on the second (``Dense_1``), both with biases initialised to one;
    concat -> Dense(C). No ``+1`` (unlike :class:`GatingUnit`)."""

    def __init__(self, features, block_size, grid_size, input_proj_factor=2, use_bias=True,
                 dropout_rate=0.0, **kwargs):
        super().__init__(**kwargs)
        self.features = features
        self.block_size = tuple(block_size)
        self.grid_size = tuple(grid_size)
        self.input_proj_factor = input_proj_factor
        self.use_bias = use_bias
        self.dropout_rate = dropout_rate
        self.norm = LayerNorm(epsilon=LN_EPS, name="LayerNorm_in")
        self.in_project = _dense(features * input_proj_factor, use_bias, "in_project")
        self.grid_mix = TokenMixingDense("grid", self.grid_size, use_bias, "ones",
                                         name="Dense_0")
        self.block_mix = TokenMixingDense("block", self.block_size, use_bias, "ones",
                                          name="Dense_1")
        self.out_project = _dense(features, use_bias, "out_project")
        self.drop = keras.layers.Dropout(dropout_rate)

    def build(self, input_shape):
        shape = self._build_child(self.in_project, self._build_child(self.norm, input_shape))
        half = tuple(shape[:-1]) + (shape[-1] // 2,)
        self._build_child(self.grid_mix, half)
        self._build_child(self.block_mix, half)
        self._build_child(self.out_project, shape)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.features,)

    def call(self, x, training=None):
        y = gelu_tanh(self.in_project(self.norm(x)))
        u, v = _split(y)
        y = ops.concatenate([self.grid_mix(u), self.block_mix(v)],
                            axis=-1)
        return self.drop(self.out_project(y), training=training)

    def get_config(self):
        config = super().get_config()
        config.update(features=self.features, block_size=list(self.block_size),
                      grid_size=list(self.grid_size),
                      input_proj_factor=self.input_proj_factor, use_bias=self.use_bias,
                      dropout_rate=self.dropout_rate)
        return config


@keras.saving.register_keras_serializable(package="visionzoo")
class CrossGatingBlock(MaximLayer):
    """Cross-gating MLP block: ``[x, y] -> [x_out, y_out]``.

    ``y`` (the gating signal) is first upsampled 2x by a 2x2/2 transposed conv when
    ``upsample_y``; both go through 1x1 convs to ``features``, then
    ``y_out = Dense(y' * gate(x)) + y`` and ``x_out = Dense(x' * gate(y)) + y_out + x``,
    where ``x'``, ``y'`` are LN -> Dense -> GELU of each and ``gate`` is
    :class:`SpatialGatingWeights`.

    The official ``ConvTranspose_0`` kernel (Flax, ``transpose_kernel=False``) is
    stored here in Keras ``Conv2DTranspose`` layout, spatially flipped:
    ``keras = flax[::-1, ::-1].transpose(0, 1, 3, 2)`` (the converter does it).

    Note: the official block does not forward ``input_proj_factor`` to its gating
    weights (they always use 2); ``input_proj_factor`` here is that inner factor.
    """

    def __init__(self, features, block_size, grid_size, upsample_y=True,
                 input_proj_factor=2, use_bias=True, dropout_rate=0.0, **kwargs):
        super().__init__(**kwargs)
        self.features = features
        self.block_size = tuple(block_size)
        self.grid_size = tuple(grid_size)
        self.upsample_y = upsample_y
        self.input_proj_factor = input_proj_factor
        self.use_bias = use_bias
        self.dropout_rate = dropout_rate
        if upsample_y:
            self.up = keras.layers.Conv2DTranspose(features, 2, strides=2, padding="same",
                                                   use_bias=use_bias, name="ConvTranspose_0")
        self.conv_x = _conv(features, 1, use_bias, "Conv_0")
        self.conv_y = _conv(features, 1, use_bias, "Conv_1")
        self.norm_x = LayerNorm(epsilon=LN_EPS, name="LayerNorm_x")
        self.norm_y = LayerNorm(epsilon=LN_EPS, name="LayerNorm_y")
        self.in_project_x = _dense(features, use_bias, "in_project_x")
        self.in_project_y = _dense(features, use_bias, "in_project_y")
        args = (features, self.block_size, self.grid_size, input_proj_factor, use_bias,
                dropout_rate)
        self.gating_x = SpatialGatingWeights(*args, name="SplitHeadMultiAxisGating_x")
        self.gating_y = SpatialGatingWeights(*args, name="SplitHeadMultiAxisGating_y")
        self.out_project_x = _dense(features, use_bias, "out_project_x")
        self.out_project_y = _dense(features, use_bias, "out_project_y")
        self.drop = keras.layers.Dropout(dropout_rate)

    def build(self, input_shape):
        sx, sy = (tuple(s) for s in input_shape)
        if self.upsample_y:
            sy = self._build_child(self.up, sy)
        sx = self._build_child(self.conv_x, sx)
        sy = self._build_child(self.conv_y, sy)
        for norm, proj, gating, out in (
                (self.norm_x, self.in_project_x, self.gating_x, self.out_project_x),
                (self.norm_y, self.in_project_y, self.gating_y, self.out_project_y)):
            shape = self._build_child(proj, self._build_child(norm, sx))
            self._build_child(gating, shape)
            self._build_child(out, shape)

    def compute_output_shape(self, input_shape):
        shape = tuple(input_shape[0][:-1]) + (self.features,)
        return [shape, shape]

    def call(self, inputs, training=None):
        x, y = inputs
        if self.upsample_y:
            y = self.up(y)
        x = self.conv_x(x)
        y = self.conv_y(y)
        shortcut_x, shortcut_y = x, y
        x = gelu_tanh(self.in_project_x(self.norm_x(x)))
        gx = self.gating_x(x, training=training)
        y = gelu_tanh(self.in_project_y(self.norm_y(y)))
        gy = self.gating_y(y, training=training)
        y = self.drop(self.out_project_y(y * gx), training=training) + shortcut_y
        x = self.drop(self.out_project_x(x * gy), training=training)
        return [x + y + shortcut_x, y]

    def get_config(self):
        config = super().get_config()
        config.update(features=self.features, block_size=list(self.block_size),
                      grid_size=list(self.grid_size), upsample_y=self.upsample_y,
                      input_proj_factor=self.input_proj_factor, use_bias=self.use_bias,
                      dropout_rate=self.dropout_rate)
        return config


# --------------------------------------------------------------------------------------
# Supervised attention, multi-scale resampling
# --------------------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="visionzoo")
class SupervisedAttention(MaximLayer):
    """Supervised attention module (MPRNet's SAM, official ``SAM``):
    ``[x, image_in] -> [x + conv(x) * sigmoid(conv(image)), image]`` with
    ``image = conv(x) + image_in`` (when ``output_channels == 3``)."""

    def __init__(self, features, output_channels=3, use_bias=True, **kwargs):
        super().__init__(**kwargs)
        self.features = features
        self.output_channels = output_channels
        self.use_bias = use_bias
        self.conv_features = _conv(features, 3, use_bias, "Conv_0")
        self.conv_image = _conv(output_channels, 3, use_bias, "Conv_1")
        self.conv_attention = _conv(features, 3, use_bias, "Conv_2")

    def build(self, input_shape):
        sx = tuple(input_shape[0])
        self._build_child(self.conv_features, sx)
        self._build_child(self.conv_attention, self._build_child(self.conv_image, sx))

    def compute_output_shape(self, input_shape):
        sx = tuple(input_shape[0])
        return [sx[:-1] + (self.features,), sx[:-1] + (self.output_channels,)]

    def call(self, inputs):
        x, x_image = inputs
        x1 = self.conv_features(x)
        image = self.conv_image(x)
        if self.output_channels == 3:
            image = image + x_image
        x2 = ops.sigmoid(self.conv_attention(image))
        return [x1 * x2 + x, image]

    def get_config(self):
        config = super().get_config()
        config.update(features=self.features, output_channels=self.output_channels,
                      use_bias=self.use_bias)
        return config


@keras.saving.register_keras_serializable(package="visionzoo")
class UpSampleRatio(MaximLayer):
    """Resample by ``ratio`` (a power of two; antialiased bilinear below 1, half-pixel
    bilinear above, identity at 1) then a 1x1 conv to ``features`` (``Conv_0``)."""

    def __init__(self, features, ratio, use_bias=True, **kwargs):
        super().__init__(**kwargs)
        self.features = features
        self.ratio = float(ratio)
        self.use_bias = use_bias
        self.conv = _conv(features, 1, use_bias, "Conv_0")

    def _resized(self, shape):
        def scale(n):
            return None if n is None else int(n * self.ratio)
        return (shape[0], scale(shape[1]), scale(shape[2]), shape[3])

    def build(self, input_shape):
        self._build_child(self.conv, self._resized(input_shape))

    def compute_output_shape(self, input_shape):
        return self._resized(input_shape)[:3] + (self.features,)

    def call(self, x):
        if self.ratio < 1:
            x = antialiased_downscale(x, int(round(1 / self.ratio)))
        elif self.ratio > 1:
            x = bilinear_upscale(x, int(round(self.ratio)))
        return self.conv(x)

    def get_config(self):
        config = super().get_config()
        config.update(features=self.features, ratio=self.ratio, use_bias=self.use_bias)
        return config
