"""Windowed attention building blocks (Swin v1/v2, LITv2's Hi-Fi branch, ...).

Everything here is TFLite-friendly by construction:

- window partition/reverse use reshapes and *4-D* transposes only (the reference
  implementations use 6-D permutes, which TFLite runs as FlexTranspose);
- the cyclic shift is slice + concatenate (``torch.roll`` has no TFLite builtin);
- the relative-position index, the shifted-window mask and the v2 log-spaced
  coordinate table are numpy constants computed once for the static grid;
- the mask is added in a 4-D layout ``(B, nW, heads, N*N)`` without tiling it.

Spatial sizes must be static (known when the layer is built): masks depend on them.
"""

import math

import keras
import numpy as np
from keras import ops

from visionzoo.layers.lowering import is_tflite_tracing


def _pair(v):
    if isinstance(v, (list, tuple)):
        if len(v) != 2:
            raise ValueError(f"Expected an int or a pair, got {v!r}.")
        return int(v[0]), int(v[1])
    return int(v), int(v)


# --------------------------------------------------------------------------------------
# Functional helpers
# --------------------------------------------------------------------------------------


def window_partition(x, window_size):
    """``(B, H, W, C)`` -> ``(B*nW, wh*ww, C)``: non-overlapping windows, row-major.

    ``H`` and ``W`` must be static multiples of the window. Window ``k`` covers rows
    ``(k // nW_w) * wh ...`` and columns ``(k % nW_w) * ww ...``; tokens inside a window
    are row-major (as ``torch``'s ``window_partition(...).view(-1, wh*ww, C)``).
    """
    wh, ww = _pair(window_size)
    h, w, c = x.shape[1], x.shape[2], x.shape[3]
    if h is None or w is None or h % wh or w % ww:
        raise ValueError(f"window_partition needs a static grid divisible by the window "
                         f"{wh}x{ww}; got {h}x{w}.")
    x = ops.reshape(x, (-1, wh, w // ww, ww * c))  # (B*nH, wh, nW, ww*C)
    x = ops.transpose(x, (0, 2, 1, 3))  # (B*nH, nW, wh, ww*C)
    return ops.reshape(x, (-1, wh * ww, c))


def window_reverse(windows, window_size, height, width):
    """Inverse of :func:`window_partition`: ``(B*nW, wh*ww, C)`` -> ``(B, H, W, C)``."""
    wh, ww = _pair(window_size)
    c = windows.shape[-1]
    x = ops.reshape(windows, (-1, width // ww, wh, ww * c))  # (B*nH, nW, wh, ww*C)
    x = ops.transpose(x, (0, 2, 1, 3))  # (B*nH, wh, nW, ww*C)
    return ops.reshape(x, (-1, height, width, c))


def roll_2d(x, shift_h, shift_w):
    """``torch.roll(x, (shift_h, shift_w), dims=(1, 2))`` as slices + concatenation.

    ``out[i] = x[(i - shift) mod size]``; static sizes.
    """
    for axis, shift in ((1, shift_h), (2, shift_w)):
        size = x.shape[axis]
        s = shift % size if size else 0
        if s:
            if axis == 1:
                x = ops.concatenate([x[:, size - s:], x[:, :size - s]], axis=1)
            else:
                x = ops.concatenate([x[:, :, size - s:], x[:, :, :size - s]], axis=2)
    return x


def relative_position_index(window_size):
    """``(N, N)`` int32 index into a ``((2wh-1)(2ww-1), heads)`` bias table (Swin)."""
    wh, ww = _pair(window_size)
    coords = np.stack(np.meshgrid(np.arange(wh), np.arange(ww), indexing="ij")).reshape(2, -1)
    rel = coords[:, :, None] - coords[:, None, :]  # (2, N, N)
    return ((rel[0] + wh - 1) * (2 * ww - 1) + rel[1] + ww - 1).astype("int32")


def log_spaced_relative_coords(window_size, pretrained_window_size=(0, 0)):
    """Swin v2 continuous-position-bias input: ``((2wh-1)(2ww-1), 2)`` float32.

    Offsets are divided by ``(pretrained window - 1)`` (or the window's own, if no
    pretrained size is given), scaled to +-8 and mapped through
    ``sign(t) * log2(|t| + 1) / log2(8)``.
    """
    wh, ww = _pair(window_size)
    ph, pw = _pair(pretrained_window_size)
    dh = np.arange(-(wh - 1), wh, dtype="float64")
    dw = np.arange(-(ww - 1), ww, dtype="float64")
    table = np.stack(np.meshgrid(dh, dw, indexing="ij"), axis=-1)  # (2wh-1, 2ww-1, 2)
    if ph > 0:
        table[..., 0] /= max(ph - 1, 1)
        table[..., 1] /= max(pw - 1, 1)
    else:
        table[..., 0] /= max(wh - 1, 1)
        table[..., 1] /= max(ww - 1, 1)
    table = table.astype("float32") * 8  # float32 like the reference before the log
    table = np.sign(table) * np.log2(np.abs(table) + 1.0) / math.log2(8)
    return table.reshape(-1, 2).astype("float32")


def shifted_window_mask(height, width, window_size, shift_size, fill=-100.0):
    """Additive ``(nW, N, N)`` mask of a shifted-window layer on a ``height x width``
    (already padded) grid: 0 inside a region, ``fill`` across regions.

    Regions are the official nine: rows/columns sliced at ``(0, -w), (-w, -s), (-s, None)``
    with Python slice semantics (so a zero shift on one axis leaves it unsplit).
    """
    wh, ww = _pair(window_size)
    sh, sw = _pair(shift_size)
    labels = np.zeros((height, width), "float32")
    count = 0
    for hs in (slice(0, -wh), slice(-wh, -sh), slice(-sh, None)):
        for ws in (slice(0, -ww), slice(-ww, -sw), slice(-sw, None)):
            labels[hs, ws] = count
            count += 1
    windows = labels.reshape(height // wh, wh, width // ww, ww).transpose(0, 2, 1, 3)
    windows = windows.reshape(-1, wh * ww)
    diff = windows[:, None, :] - windows[:, :, None]
    return np.where(diff != 0, fill, 0.0).astype("float32")


def clamp_window(grid, window_size, shift_size):
    """Swin's rule per axis: a grid no larger than the window becomes one window with
    no shift; otherwise the window and shift are kept (the grid is then padded)."""
    window = tuple(g if g <= w else w for g, w in zip(grid, _pair(window_size)))
    shift = tuple(0 if g <= w else s for g, w, s in zip(grid, window, _pair(shift_size)))
    return window, shift


def resize_relative_bias_table(table, new_window_size, old_window_size=None):
    """Resize a ``((2h-1)(2w-1), heads)`` relative-position bias table to another window.

    The rule is timm's (from BEiT): source offsets are placed on a geometric
    progression whose span covers the target offsets, and the table is linearly
    interpolated at the integer target offsets. Same window: returned unchanged.
    """
    table = np.asarray(table, dtype="float32")
    nh, nw = _pair(new_window_size)
    dst = (2 * nh - 1, 2 * nw - 1)
    if old_window_size is None:
        side = int(round(math.sqrt(table.shape[0])))
        if side * side != table.shape[0]:
            raise ValueError(f"Cannot infer the window of a {table.shape[0]}-row relative "
                             "position table; pass old_window_size.")
        src = (side, side)
    else:
        oh, ow = _pair(old_window_size)
        src = (2 * oh - 1, 2 * ow - 1)
    if src == dst:
        return table
    points = [_geometric_offsets(s, d) for s, d in zip(src, dst)]
    targets = [np.arange(-(d // 2), d // 2 + 0.1, 1.0) for d in dst]
    grid = table.reshape(src[0], src[1], -1).astype("float64")
    (y0, y1, wy0, wy1, ny), (x0, x1, wx0, wx1, nx) = (
        _linear_taps(p, t) for p, t in zip(points, targets))
    out = (grid[y0][:, x0] * (wy1[:, None] * wx1[None, :])[..., None]
           + grid[y0][:, x1] * (wy1[:, None] * wx0[None, :])[..., None]
           + grid[y1][:, x0] * (wy0[:, None] * wx1[None, :])[..., None]
           + grid[y1][:, x1] * (wy0[:, None] * wx0[None, :])[..., None])
    out /= (ny[:, None] * nx[None, :])[..., None]
    return out.reshape(dst[0] * dst[1], -1).astype("float32")


def _geometric_offsets(src, dst):
    """Offsets ``-d_k..0..d_k`` with gaps growing by ``q`` so that they reach ``dst // 2``."""
    left, right = 1.01, 1.5
    while right - left > 1e-6:
        q = (left + right) / 2.0
        if (1.0 - q ** (src // 2)) / (1.0 - q) > dst // 2:
            right = q
        else:
            left = q
    dis, cur = [], 1.0
    for i in range(src // 2):
        dis.append(cur)
        cur += q ** (i + 1)
    return np.array([-d for d in reversed(dis)] + [0.0] + dis, dtype="float32")


def _linear_taps(points, x):
    """Left/right indices and distances of piecewise-linear interpolation on an uneven
    grid (values outside the grid take the nearest end)."""
    points = points.astype("float64")
    x = x.astype("float32").astype("float64")
    right = np.minimum(np.searchsorted(points, x, side="left"), len(points) - 1)
    left = np.clip(right - 1, 0, len(points) - 1)
    d_left = np.maximum(x - points[left], 0.0)
    d_right = np.maximum(points[right] - x, 0.0)
    both = (d_left == 0) & (d_right == 0)
    d_left[both] = d_right[both] = 1.0
    return left, right, d_left, d_right, d_left + d_right


# --------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="visionzoo")
class WindowAttention(keras.layers.Layer):
    """(Shifted) window multi-head self-attention on ``(B, H, W, C)`` maps.

    Swin v1: scaled dot product + a learned relative-position bias table
    (``relative_position_bias_table``). Swin v2 (``cosine=True``): cosine similarity
    times a clamped learned temperature (``logit_scale``) + ``16*sigmoid`` of a
    continuous position bias from a 2-layer MLP (``cpb_mlp``) on log-spaced offsets;
    the qkv bias is ``concat(q_bias, 0, v_bias)``.

    Grids that are not multiples of the window are zero-padded at the bottom/right,
    then cyclically shifted, partitioned and masked on the padded grid, as the official
    Swin detection backbone does; the padding is cropped afterwards. ``window_size``
    and ``shift_size`` are used as given (see :func:`clamp_window` for Swin's rule).

    Args:
        num_heads: int.
        window_size: int or (wh, ww).
        shift_size: int or (sh, sw). 0 for plain windows.
        qkv_bias: bool.
        cosine: bool. Swin v2 attention.
        pretrained_window_size: int or pair. v2 only: the window the continuous bias
            was trained with (0: this window).
        cpb_hidden: int. Hidden width of the v2 position-bias MLP.
        attn_dropout, proj_dropout: float.
    """

    def __init__(self, num_heads, window_size, shift_size=0, qkv_bias=True, cosine=False,
                 pretrained_window_size=0, cpb_hidden=512, attn_dropout=0.0,
                 proj_dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = int(num_heads)
        self.window_size = _pair(window_size)
        self.shift_size = _pair(shift_size)
        self.qkv_bias = qkv_bias
        self.cosine = cosine
        self.pretrained_window_size = _pair(pretrained_window_size)
        self.cpb_hidden = cpb_hidden
        self.attn_dropout = attn_dropout
        self.proj_dropout = proj_dropout
        self.attn_drop = keras.layers.Dropout(attn_dropout, name="attn_drop")
        self.proj_drop = keras.layers.Dropout(proj_dropout, name="proj_drop")

    def build(self, input_shape):
        _, h, w, dim = input_shape
        if h is None or w is None:
            raise ValueError("WindowAttention needs static spatial sizes (its masks depend "
                             f"on them); got input shape {tuple(input_shape)}.")
        if dim % self.num_heads:
            raise ValueError(f"{dim} channels do not split into {self.num_heads} heads.")
        self.dim = dim
        wh, ww = self.window_size
        sh, sw = self.shift_size
        if sh >= wh or sw >= ww:
            raise ValueError(f"shift {self.shift_size} must be smaller than the window "
                             f"{self.window_size}.")
        self._hp = -(-h // wh) * wh
        self._wp = -(-w // ww) * ww
        n = wh * ww
        self._n = n
        self._num_windows = (self._hp // wh) * (self._wp // ww)
        self.qkv = keras.layers.Dense(3 * dim, use_bias=self.qkv_bias and not self.cosine,
                                      name="qkv")
        self.qkv.build((None, n, dim))
        self.proj = keras.layers.Dense(dim, name="proj")
        self.proj.build((None, n, dim))
        self._index = relative_position_index(self.window_size).reshape(-1)
        if self.cosine:
            self.logit_scale = self.add_weight(
                name="logit_scale", shape=(self.num_heads, 1, 1),
                initializer=keras.initializers.Constant(math.log(10.0)))
            self.cpb_fc1 = keras.layers.Dense(self.cpb_hidden, activation="relu",
                                              name="cpb_mlp-0")
            self.cpb_fc2 = keras.layers.Dense(self.num_heads, use_bias=False, name="cpb_mlp-2")
            # The bias MLP runs once per call on a constant table: not a per-token cost.
            self.cpb_fc1._vz_skip_macs = self.cpb_fc2._vz_skip_macs = True
            self.cpb_fc1.build((None, 2))
            self.cpb_fc2.build((None, self.cpb_hidden))
            self._coords = log_spaced_relative_coords(self.window_size,
                                                      self.pretrained_window_size)
            if self.qkv_bias:
                self.q_bias = self.add_weight(name="q_bias", shape=(dim,), initializer="zeros")
                self.v_bias = self.add_weight(name="v_bias", shape=(dim,), initializer="zeros")
        else:
            self.relative_position_bias_table = self.add_weight(
                name="relative_position_bias_table",
                shape=((2 * wh - 1) * (2 * ww - 1), self.num_heads),
                initializer=keras.initializers.TruncatedNormal(stddev=0.02))
        self._mask = None
        if sh or sw:
            mask = shifted_window_mask(self._hp, self._wp, self.window_size, self.shift_size)
            self._mask = mask.reshape(1, self._num_windows, 1, n * n)

    def _position_bias(self, dtype):
        """``(heads, N*N)`` additive bias."""
        if self.cosine:
            coords = ops.convert_to_tensor(self._coords, dtype=self.compute_dtype)
            table = self.cpb_fc2(self.cpb_fc1(coords))
            bias = 16.0 * ops.sigmoid(ops.take(table, self._index, axis=0))
        else:
            bias = ops.take(ops.cast(self.relative_position_bias_table, self.compute_dtype),
                            self._index, axis=0)
        return ops.cast(ops.transpose(bias, (1, 0)), dtype)

    def _heads(self, t):
        t = ops.reshape(t, (-1, self._n, self.num_heads, self.dim // self.num_heads))
        return ops.transpose(t, (0, 2, 1, 3))

    def call(self, x, training=None):
        h, w = x.shape[1], x.shape[2]
        hp, wp = self._hp, self._wp
        if hp != h or wp != w:
            x = ops.pad(x, ((0, 0), (0, hp - h), (0, wp - w), (0, 0)))
        sh, sw = self.shift_size
        if sh or sw:
            x = roll_2d(x, -sh, -sw)
        n, dim, heads = self._n, self.dim, self.num_heads
        windows = window_partition(x, self.window_size)  # (B*nW, N, C)
        qkv = self.qkv(windows)
        if self.cosine and self.qkv_bias:
            q_bias = ops.cast(self.q_bias, qkv.dtype)
            qkv = qkv + ops.concatenate(
                [q_bias, ops.zeros_like(q_bias), ops.cast(self.v_bias, qkv.dtype)])
        q = self._heads(qkv[..., :dim])
        k = self._heads(qkv[..., dim:2 * dim])
        v = self._heads(qkv[..., 2 * dim:])
        if self.cosine:
            q = q / ops.maximum(ops.norm(q, axis=-1, keepdims=True), 1e-12)
            k = k / ops.maximum(ops.norm(k, axis=-1, keepdims=True), 1e-12)
            attn = ops.matmul(q, ops.transpose(k, (0, 1, 3, 2)))
            scale = ops.exp(ops.minimum(ops.cast(self.logit_scale, attn.dtype),
                                        math.log(100.0)))
            attn = attn * scale
        else:
            scale = ops.cast((dim // heads) ** -0.5, q.dtype)
            attn = ops.matmul(q * scale, ops.transpose(k, (0, 1, 3, 2)))
        # (B*nW, heads, N, N) -> (B, nW, heads, N*N): bias and mask broadcast in 4-D.
        attn = ops.reshape(attn, (-1, self._num_windows, heads, n * n))
        attn = attn + ops.reshape(self._position_bias(attn.dtype), (1, 1, heads, n * n))
        if self._mask is not None:
            attn = attn + ops.cast(self._mask, attn.dtype)
        attn = ops.reshape(attn, (-1, heads, n, n))
        attn = ops.softmax(attn, axis=-1)
        attn = self.attn_drop(attn, training=training)
        out = ops.transpose(ops.matmul(attn, v), (0, 2, 1, 3))
        out = self.proj_drop(self.proj(ops.reshape(out, (-1, n, dim))), training=training)
        out = window_reverse(out, self.window_size, hp, wp)
        if sh or sw:
            out = roll_2d(out, sh, sw)
        if hp != h or wp != w:
            out = out[:, :h, :w, :]
        return out

    def matmul_macs(self, input_shape):
        """q@k and attn@v over every (padded) window, as Swin's FLOP counter does."""
        return 2 * self._num_windows * self._n * self._n * self.dim

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(num_heads=self.num_heads, window_size=self.window_size,
                      shift_size=self.shift_size, qkv_bias=self.qkv_bias, cosine=self.cosine,
                      pretrained_window_size=self.pretrained_window_size,
                      cpb_hidden=self.cpb_hidden, attn_dropout=self.attn_dropout,
                      proj_dropout=self.proj_dropout)
        return config


def _phases_on_channels(x):
    """``concat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]])``
    on channels, for even H and W.

    When tracing for TFLite with a static grid, the same values come from unit-stride
    slices of a ``(B*H/2, 2, W/2, 2C)`` view: XNNPACK does not take strided slices, so
    each of the four would run outside the delegate and split its graph.
    """
    h, w, c = x.shape[1], x.shape[2], x.shape[3]
    if not (is_tflite_tracing() and isinstance(h, int) and isinstance(w, int)):
        return ops.concatenate([x[:, 0::2, 0::2], x[:, 1::2, 0::2],
                                x[:, 0::2, 1::2], x[:, 1::2, 1::2]], axis=-1)
    rows = ops.reshape(x, (-1, 2, w // 2, 2 * c))  # (B*H/2, row phase, W/2, (col phase, C))
    # i:i + 1, not i: XNNPACK does not take slices that drop an axis either.
    parts = [rows[:, i:i + 1, :, j * c:(j + 1) * c] for j in (0, 1) for i in (0, 1)]
    return ops.reshape(ops.concatenate(parts, axis=-1), (-1, h // 2, w // 2, 4 * c))


@keras.saving.register_keras_serializable(package="visionzoo")
class PatchMerging(keras.layers.Layer):
    """Swin's 2x downsampling: the four 2x2 phases ``(0,0), (1,0), (0,1), (1,1)``
    concatenated on channels, then LayerNorm + Linear(4C -> out, no bias) (v1,
    ``norm_first=True``) or Linear + LayerNorm(out) (v2). Odd grids are zero-padded at
    the bottom/right first.

    Args:
        out_dim: int. Default 2C.
        norm_first: bool.
        epsilon: float. LayerNorm epsilon (torch default 1e-5).
    """

    def __init__(self, out_dim=None, norm_first=True, epsilon=1e-5, **kwargs):
        super().__init__(**kwargs)
        self.out_dim = out_dim
        self.norm_first = norm_first
        self.epsilon = epsilon

    def build(self, input_shape):
        from visionzoo.layers.norms import LayerNorm

        c = input_shape[-1]
        out = self.out_dim or 2 * c
        self.reduction = keras.layers.Dense(out, use_bias=False, name="reduction")
        self.reduction.build((None, None, None, 4 * c))
        self.norm = LayerNorm(epsilon=self.epsilon, name="norm")
        self.norm.build((None, None, None, 4 * c if self.norm_first else out))

    def call(self, x):
        h, w = x.shape[1], x.shape[2]
        if h is not None and w is not None and (h % 2 or w % 2):
            x = ops.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
        x = _phases_on_channels(x)
        if self.norm_first:
            return self.reduction(self.norm(x))
        return self.norm(self.reduction(x))

    def compute_output_shape(self, input_shape):
        b, h, w, c = input_shape
        half = (lambda n: None if n is None else -(-n // 2))
        return (b, half(h), half(w), self.out_dim or 2 * c)

    def get_config(self):
        config = super().get_config()
        config.update(out_dim=self.out_dim, norm_first=self.norm_first, epsilon=self.epsilon)
        return config
