"""The inception token mixer of the Inception Transformer (iFormer, Si et al., NeurIPS
2022; sail-sg/iFormer), on ``(B, H, W, C)`` maps.

The channels are split in two groups that see the map at two frequencies:

- **high frequency** (the *first* ``high_dim = C - low_dim`` channels,
  :class:`HighFrequencyMixer`): its first half goes through a 1x1 conv (no bias, x2
  width), a depthwise 3x3 conv (no bias) and GELU; its second half through a 3x3/1
  max-pool (torch padding 1: padded cells never win), a 1x1 conv (bias, x2 width) and
  GELU. Output: ``concat([conv path, pool path])``, ``2 * high_dim`` channels.
- **low frequency** (the *last* ``low_dim = attention_heads * head_dim`` channels,
  :class:`LowFrequencyMixer`): ``pool_size x pool_size`` average pooling (stride
  ``pool_size``, no padding; ``pool_size=1`` = none), multi-head self-attention with a
  fused ``qkv`` projection and **no output projection**, then nearest upsampling by
  ``pool_size``.

:class:`InceptionMixer` concatenates ``[high (2 * high_dim), low (low_dim)]``, adds a
depthwise 3x3 conv of that (``conv_fuse``, no bias) and projects back to ``C`` with a
1x1 conv (``proj``, bias).

Sub-layer names follow the official module paths (``high_mixer.conv1``,
``low_mixer.qkv``, ``conv_fuse``, ``proj``). Every transpose is 4-D and the
upsampling is concat + reshape, so the mixer lowers to builtin TFLite ops.
"""

import keras
from keras import ops

from visionzoo.layers.activations import GELU
from visionzoo.layers.conv import DepthwiseConv2D


@keras.saving.register_keras_serializable(package="visionzoo")
class HighFrequencyMixer(keras.layers.Layer):
    """iFormer's ``HighMixer``: a conv path and a max-pool path on the two channel halves.

    Input ``(B, H, W, C)`` with even ``C``; output ``(B, H, W, 2 * C)``.

    Args:
        kernel_size: int. Depthwise-conv and max-pool window (3 in every variant; the
            stride is 1 and the padding ``kernel_size // 2``).
    """

    def __init__(self, kernel_size=3, **kwargs):
        super().__init__(**kwargs)
        if int(kernel_size) % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size!r}.")
        self.kernel_size = int(kernel_size)

    def build(self, input_shape):
        dim = input_shape[-1]
        if dim is None or dim % 2:
            raise ValueError(f"HighFrequencyMixer needs an even channel count, got {dim}.")
        self.half = dim // 2
        policy = self.dtype_policy
        half_shape = tuple(input_shape[:-1]) + (self.half,)
        wide_shape = tuple(input_shape[:-1]) + (dim,)
        self.conv1 = keras.layers.Conv2D(dim, 1, use_bias=False, name="conv1", dtype=policy)
        self.proj1 = DepthwiseConv2D(self.kernel_size, padding="same",
                                                  use_bias=False, name="proj1", dtype=policy)
        self.proj2 = keras.layers.Conv2D(dim, 1, use_bias=True, name="proj2", dtype=policy)
        self.act1 = GELU(name="mid_gelu1", dtype=policy)
        self.act2 = GELU(name="mid_gelu2", dtype=policy)
        self.conv1.build(half_shape)
        self.proj1.build(wide_shape)
        self.proj2.build(half_shape)

    def call(self, x):
        cx = self.act1(self.proj1(self.conv1(x[..., :self.half])))
        # torch MaxPool2d pads with -inf; TF-style "same" max pooling at stride 1 with an
        # odd window ignores padded cells the same way.
        px = ops.max_pool(x[..., self.half:], self.kernel_size, 1, padding="same")
        px = self.act2(self.proj2(px))
        return ops.concatenate([cx, px], axis=-1)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (2 * input_shape[-1],)

    def get_config(self):
        config = super().get_config()
        config.update(kernel_size=self.kernel_size)
        return config


def nearest_upsample(x, factor):
    """Nearest-neighbour upsampling of ``(B, h, w, C)`` by an integer ``factor``
    (torch ``nn.Upsample(scale_factor=factor)``), as concat + reshape (TFLite builtins,
    dynamic sizes allowed)."""
    if factor == 1:
        return x
    shape = ops.shape(x)
    b, h, w, c = shape[0], shape[1], shape[2], x.shape[-1]
    # Repeat every pixel along W: (B, h, w, f*C) -> (B, h, w*f, C).
    x = ops.reshape(ops.concatenate([x] * factor, axis=-1), (b, h, w * factor, c))
    # Repeat every row: (B, h, f*w*f, C) -> (B, h*f, w*f, C).
    x = ops.concatenate([x] * factor, axis=2)
    return ops.reshape(x, (b, h * factor, w * factor, c))


@keras.saving.register_keras_serializable(package="visionzoo")
class LowFrequencyMixer(keras.layers.Layer):
    """iFormer's ``LowMixer``: pooled multi-head self-attention without an output
    projection, upsampled back to the input grid.

    Input and output ``(B, H, W, C)``; ``C`` must split into ``num_heads`` heads and, for
    ``pool_size > 1``, ``H`` and ``W`` must be multiples of ``pool_size``.

    Args:
        num_heads: int.
        pool_size: int. Average-pool window and stride, and the upsampling factor.
        qkv_bias: bool.
        attn_dropout: float.
    """

    def __init__(self, num_heads, pool_size=2, qkv_bias=True, attn_dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = int(num_heads)
        self.pool_size = int(pool_size)
        self.qkv_bias = bool(qkv_bias)
        self.attn_dropout = attn_dropout
        if self.pool_size < 1:
            raise ValueError(f"pool_size must be >= 1, got {pool_size!r}.")
        self.attn_drop = keras.layers.Dropout(attn_dropout, name="attn_drop")

    def build(self, input_shape):
        if len(input_shape) != 4:
            raise ValueError(f"LowFrequencyMixer takes (B, H, W, C) maps, got {input_shape}.")
        _, h, w, dim = input_shape
        if dim % self.num_heads:
            raise ValueError(f"{dim} channels do not split into {self.num_heads} heads.")
        p = self.pool_size
        for side, n in (("height", h), ("width", w)):
            if n is not None and p > 1 and n % p:
                raise ValueError(
                    f"LowFrequencyMixer pools by {p}: the map {side} ({n}) must be a "
                    f"multiple of {p} (input sizes must be multiples of {16 * p} for "
                    "iFormer).")
        self.dim = dim
        self.head_dim = dim // self.num_heads
        self.qkv = keras.layers.Dense(3 * dim, use_bias=self.qkv_bias, name="qkv",
                                      dtype=self.dtype_policy)
        # The qkv projection runs on the pooled grid; matmul_macs() reports its cost.
        self.qkv._vz_skip_macs = True
        self.qkv.build((None, None, dim))

    def _heads(self, t, batch):
        t = ops.reshape(t, (batch, -1, self.num_heads, self.head_dim))
        return ops.transpose(t, (0, 2, 1, 3))

    def call(self, x, training=None):
        p = self.pool_size
        if p > 1:
            x = ops.average_pool(x, p, p, padding="valid")
        shape = ops.shape(x)
        batch, h, w = shape[0], shape[1], shape[2]
        dim = self.dim
        qkv = self.qkv(ops.reshape(x, (batch, -1, dim)))
        q = self._heads(qkv[..., :dim], batch)
        k = self._heads(qkv[..., dim:2 * dim], batch)
        v = self._heads(qkv[..., 2 * dim:], batch)
        attn = ops.matmul(q, ops.transpose(k, (0, 1, 3, 2)))
        attn = attn * ops.cast(self.head_dim ** -0.5, attn.dtype)
        attn = ops.softmax(attn, axis=-1)
        attn = self.attn_drop(attn, training=training)
        out = ops.transpose(ops.matmul(attn, v), (0, 2, 1, 3))  # (B, N, heads, head_dim)
        out = ops.reshape(out, (batch, h, w, dim))
        return nearest_upsample(out, p)

    def matmul_macs(self, input_shape):
        """qkv projection and attention products for one sample (pooled grid)."""
        h, w = input_shape[1], input_shape[2]
        n = (int(h) // self.pool_size) * (int(w) // self.pool_size)
        return n * self.dim * 3 * self.dim + 2 * n * n * self.dim

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(num_heads=self.num_heads, pool_size=self.pool_size,
                      qkv_bias=self.qkv_bias, attn_dropout=self.attn_dropout)
        return config


@keras.saving.register_keras_serializable(package="visionzoo")
class InceptionMixer(keras.layers.Layer):
    """iFormer's ``Mixer``: high-frequency mixer on the first channels, low-frequency
    attention on the last ``attention_heads * head_dim``, then depthwise fusion and a
    1x1 projection.

    Equals the official ``Mixer(dim, num_heads, qkv_bias, attention_head, pool_size)``
    on NHWC maps.

    Args:
        num_heads: int. The stage's head count; ``head_dim = dim // num_heads``.
        attention_heads: int. Heads of the low-frequency mixer
            (``low_dim = attention_heads * head_dim``, at most ``dim``).
        pool_size: int. Low-frequency pooling (2 in stages 1-2, 1 in stages 3-4).
        qkv_bias: bool.
        attn_dropout: float.
        proj_dropout: float.

    Sub-layers (checkpoint names): ``high_mixer`` (``conv1``, ``proj1``, ``proj2``),
    ``low_mixer`` (``qkv``), ``conv_fuse``, ``proj``.
    """

    def __init__(self, num_heads, attention_heads, pool_size=2, qkv_bias=True,
                 attn_dropout=0.0, proj_dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = int(num_heads)
        self.attention_heads = int(attention_heads)
        self.pool_size = int(pool_size)
        self.qkv_bias = bool(qkv_bias)
        self.attn_dropout = attn_dropout
        self.proj_dropout = proj_dropout
        self.proj_drop = keras.layers.Dropout(proj_dropout, name="proj_drop")

    def build(self, input_shape):
        dim = input_shape[-1]
        if dim % self.num_heads:
            raise ValueError(f"{dim} channels do not split into {self.num_heads} heads.")
        head_dim = dim // self.num_heads
        self.dim = dim
        self.low_dim = self.attention_heads * head_dim
        self.high_dim = dim - self.low_dim
        if not 0 < self.low_dim < dim or self.high_dim % 2:
            raise ValueError(
                f"attention_heads={self.attention_heads} of {self.num_heads} heads leaves "
                f"{self.high_dim} high-frequency channels of {dim}; they must be a positive "
                "even number.")
        spatial = tuple(input_shape[:-1])
        fused = 2 * self.high_dim + self.low_dim
        policy = self.dtype_policy
        self.high_mixer = HighFrequencyMixer(3, name="high_mixer", dtype=policy)
        self.low_mixer = LowFrequencyMixer(self.attention_heads, self.pool_size,
                                           qkv_bias=self.qkv_bias,
                                           attn_dropout=self.attn_dropout, name="low_mixer",
                                           dtype=policy)
        self.conv_fuse = DepthwiseConv2D(3, padding="same", use_bias=False,
                                                      name="conv_fuse", dtype=policy)
        self.proj = keras.layers.Conv2D(dim, 1, use_bias=True, name="proj", dtype=policy)
        self.high_mixer.build(spatial + (self.high_dim,))
        self.low_mixer.build(spatial + (self.low_dim,))
        self.conv_fuse.build(spatial + (fused,))
        self.proj.build(spatial + (fused,))

    def call(self, x, training=None):
        hx = self.high_mixer(x[..., :self.high_dim])
        lx = self.low_mixer(x[..., self.high_dim:], training=training)
        x = ops.concatenate([hx, lx], axis=-1)
        x = x + self.conv_fuse(x)
        return self.proj_drop(self.proj(x), training=training)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(num_heads=self.num_heads, attention_heads=self.attention_heads,
                      pool_size=self.pool_size, qkv_bias=self.qkv_bias,
                      attn_dropout=self.attn_dropout, proj_dropout=self.proj_dropout)
        return config
