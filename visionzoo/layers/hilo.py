"""HiLo attention (LITv2, Pan et al., NeurIPS 2022) on ``(B, H, W, C)`` maps.

The heads are split in two groups that see the map at two frequencies:

- **Hi-Fi** (``h_heads = num_heads - int(num_heads * alpha)``): self-attention inside
  non-overlapping ``ws x ws`` windows (``h_qkv``, ``h_proj``).
- **Lo-Fi** (``l_heads = int(num_heads * alpha)``): every token queries (``l_q``) keys
  and values (``l_kv``) computed from the ``ws x ws`` average-pooled *full-width*
  input; ``l_proj``.

The output is ``concat([hifi, lofi], -1)`` (Hi-Fi channels first); each branch has its
own output projection. ``window_size=1`` makes every head Lo-Fi without pooling, i.e.
plain global multi-head self-attention. The scale is ``head_dim ** -0.5``.

Grids that are not multiples of the window are zero-padded at the bottom/right before
both branches and cropped afterwards, as the official detection/segmentation backbones
do (the classification model only ever sees multiples of the window). The padded zeros
take part in the Hi-Fi windows and in the Lo-Fi pooled averages, exactly as there.

Window partition/reverse come from :mod:`visionzoo.layers.window` (4-D transposes only,
TFLite builtins). Spatial sizes must be static.
"""

import keras
from keras import ops

from visionzoo.layers.window import window_partition, window_reverse


@keras.saving.register_keras_serializable(package="visionzoo")
class HiLoAttention(keras.layers.Layer):
    """HiLo attention; equals the official ``HiLo(dim, num_heads, qkv_bias, qk_scale,
    window_size=ws, alpha=alpha)`` applied to the tokens of the map.

    Args:
        num_heads: int. Total heads; ``dim`` must be divisible by it.
        window_size: int. The Hi-Fi window and Lo-Fi pooling size ``s`` (1: global MSA).
        alpha: float in [0, 1]. Fraction of heads given to Lo-Fi (floored).
        qkv_bias: bool. Bias of ``h_qkv``, ``l_q`` and ``l_kv`` (projections always
            have one).
        qk_scale: float or None. Overrides ``head_dim ** -0.5``.

    Sub-layers (checkpoint names): ``h_qkv``, ``h_proj`` (when there are Hi-Fi heads),
    ``l_q``, ``l_kv``, ``l_proj`` (when there are Lo-Fi heads).

    :meth:`hifi` and :meth:`lofi` return the two branches separately.
    """

    def __init__(self, num_heads, window_size=2, alpha=0.5, qkv_bias=True, qk_scale=None,
                 **kwargs):
        super().__init__(**kwargs)
        if int(window_size) < 1:
            raise ValueError(f"window_size must be >= 1, got {window_size!r}.")
        if not 0.0 <= float(alpha) <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha!r}.")
        self.num_heads = int(num_heads)
        self.window_size = int(window_size)
        self.alpha = float(alpha)
        self.qkv_bias = bool(qkv_bias)
        self.qk_scale = qk_scale
        if self.window_size == 1:  # every head is Lo-Fi, nothing is pooled
            self.l_heads, self.h_heads = self.num_heads, 0
        else:
            self.l_heads = int(self.num_heads * self.alpha)
            self.h_heads = self.num_heads - self.l_heads

    def build(self, input_shape):
        if len(input_shape) != 4:
            raise ValueError(f"HiLoAttention takes (B, H, W, C) maps, got {input_shape}.")
        _, h, w, dim = input_shape
        if h is None or w is None:
            raise ValueError("HiLoAttention needs static spatial sizes; got input shape "
                             f"{tuple(input_shape)}.")
        if dim % self.num_heads:
            raise ValueError(f"{dim} channels do not split into {self.num_heads} heads.")
        ws = self.window_size
        self.dim = dim
        self.head_dim = dim // self.num_heads
        self.h_dim = self.h_heads * self.head_dim
        self.l_dim = self.l_heads * self.head_dim
        self.scale = self.qk_scale or self.head_dim ** -0.5
        self._grid = (h, w)
        self._padded = (-(-h // ws) * ws, -(-w // ws) * ws)
        hp, wp = self._padded
        if self.h_heads:
            self.h_qkv = keras.layers.Dense(3 * self.h_dim, use_bias=self.qkv_bias,
                                            name="h_qkv")
            self.h_proj = keras.layers.Dense(self.h_dim, name="h_proj")
            self.h_qkv.build((None, hp, wp, dim))
            self.h_proj.build((None, hp, wp, self.h_dim))
            # They run on the padded grid: matmul_macs counts them.
            self.h_qkv._vz_skip_macs = self.h_proj._vz_skip_macs = True
        if self.l_heads:
            self.l_q = keras.layers.Dense(self.l_dim, use_bias=self.qkv_bias, name="l_q")
            self.l_kv = keras.layers.Dense(2 * self.l_dim, use_bias=self.qkv_bias,
                                           name="l_kv")
            self.l_proj = keras.layers.Dense(self.l_dim, name="l_proj")
            self.l_q.build((None, h, w, dim))
            self.l_kv.build((None, hp // ws, wp // ws, dim))
            self.l_proj.build((None, h, w, self.l_dim))
            self.l_kv._vz_skip_macs = True  # runs on the pooled grid: see matmul_macs

    # ----------------------------------------------------------------------------------

    def _pad(self, x):
        (h, w), (hp, wp) = self._grid, self._padded
        if (hp, wp) == (h, w):
            return x
        return ops.pad(x, ((0, 0), (0, hp - h), (0, wp - w), (0, 0)))

    def _crop(self, x):
        (h, w), (hp, wp) = self._grid, self._padded
        return x if (hp, wp) == (h, w) else x[:, :h, :w, :]

    @staticmethod
    def _split_heads(t, heads, head_dim):
        """``(B', N, heads*head_dim)`` -> ``(B', heads, N, head_dim)``."""
        t = ops.reshape(t, (-1, t.shape[1], heads, head_dim))
        return ops.transpose(t, (0, 2, 1, 3))

    def _attend(self, q, k, v):
        attn = ops.matmul(q * ops.cast(self.scale, q.dtype), ops.transpose(k, (0, 1, 3, 2)))
        attn = ops.softmax(attn, axis=-1)
        out = ops.transpose(ops.matmul(attn, v), (0, 2, 1, 3))  # (B', N, heads, hd)
        return ops.reshape(out, (-1, out.shape[1], out.shape[2] * out.shape[3]))

    def hifi(self, x):
        """Hi-Fi branch: ``(B, H, W, C)`` -> ``(B, H, W, h_dim)`` (after ``h_proj``)."""
        ws, hd, heads = self.window_size, self.head_dim, self.h_heads
        hp, wp = self._padded
        qkv = window_partition(self.h_qkv(self._pad(x)), ws)  # (B*nW, ws*ws, 3*h_dim)
        d = self.h_dim
        q = self._split_heads(qkv[..., :d], heads, hd)
        k = self._split_heads(qkv[..., d:2 * d], heads, hd)
        v = self._split_heads(qkv[..., 2 * d:], heads, hd)
        out = window_reverse(self._attend(q, k, v), ws, hp, wp)
        return self._crop(self.h_proj(out))

    def lofi(self, x):
        """Lo-Fi branch: ``(B, H, W, C)`` -> ``(B, H, W, l_dim)`` (after ``l_proj``)."""
        ws, hd, heads = self.window_size, self.head_dim, self.l_heads
        h, w = self._grid
        # Queries of the padded cells would be cropped: only the real tokens query.
        q = ops.reshape(self.l_q(x), (-1, h * w, self.l_dim))
        src = x
        if ws > 1:
            src = ops.average_pool(self._pad(x), ws, strides=ws, padding="valid")
        kv = self.l_kv(src)
        kv = ops.reshape(kv, (-1, kv.shape[1] * kv.shape[2], 2 * self.l_dim))
        d = self.l_dim
        out = self._attend(self._split_heads(q, heads, hd),
                           self._split_heads(kv[..., :d], heads, hd),
                           self._split_heads(kv[..., d:], heads, hd))
        return self.l_proj(ops.reshape(out, (-1, h, w, d)))

    def call(self, x):
        x = ops.cast(x, self.compute_dtype)
        if not self.l_heads:
            return self.hifi(x)
        if not self.h_heads:
            return self.lofi(x)
        return ops.concatenate([self.hifi(x), self.lofi(x)], axis=-1)

    # ----------------------------------------------------------------------------------

    def matmul_macs(self, input_shape=None):
        """MACs the generic counter cannot attribute: q@k and attn@v of both branches,
        and the projections that do not run on the output grid (``h_qkv``/``h_proj``
        on the padded grid, ``l_kv`` on the pooled one)."""
        (h, w), (hp, wp), ws = self._grid, self._padded, self.window_size
        n, n_pad, n_pool = h * w, hp * wp, (hp // ws) * (wp // ws)
        macs = 0
        if self.h_heads:
            macs += n_pad * self.dim * 3 * self.h_dim + n_pad * self.h_dim * self.h_dim
            macs += 2 * n_pad * ws * ws * self.h_dim
        if self.l_heads:
            macs += n_pool * self.dim * 2 * self.l_dim
            macs += 2 * n * n_pool * self.l_dim
        return macs

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(num_heads=self.num_heads, window_size=self.window_size,
                      alpha=self.alpha, qkv_bias=self.qkv_bias, qk_scale=self.qk_scale)
        return config
