"""Recursive gated convolution (``gnConv``, HorNet) and its global-local filter.

``GnConv`` (order ``n``) on an NHWC map with ``C`` channels, ``dims = [C / 2^(n-1), ...,
C / 2, C]``:

- ``proj_in`` (1x1 conv, C -> 2C) gives ``p0`` (``dims[0]`` channels) and ``q``
  (``sum(dims)`` channels);
- ``q`` goes through a depthwise 7x7 conv with bias (or a :class:`GlobalLocalFilter`),
  is multiplied by ``scale`` and split into ``q_0 .. q_{n-1}`` of sizes ``dims``;
- ``p = p0 * q_0``, then ``p = pws[k](p) * q_{k+1}`` for ``k = 0 .. n-2`` (1x1 convs
  ``dims[k] -> dims[k+1]``);
- ``proj_out`` (1x1 conv, C -> C).

``GlobalLocalFilter`` (the "GF" variants) on ``D`` channels: LayerNorm (eps 1e-6);
the first ``D/2`` channels go through a depthwise 3x3 conv without bias, the other
``D/2`` through a learned filter in the 2-D Fourier domain (``rfft2`` with ``ortho``
norm, times a complex weight, ``irfft2``); the two halves are *interleaved* (channel
``2i`` is the conv's ``i``, ``2i+1`` the filter's ``i``) and LayerNorm-ed again.

The Fourier transforms are written as real DFT-matrix products (no complex dtypes, no
FFT ops, so the layer exports to builtin-only TFLite). They reproduce
``torch.fft.rfft2``/``irfft2(s=(H, W), norm="ortho")`` exactly, including the
complex-to-real step that discards the imaginary part of the ``k = 0`` and (even ``W``)
``k = W/2`` columns: those columns' sine rows are exactly zero in the inverse matrix.
The complex weight is stored as in the official checkpoints, ``(D/2, h, w, 2)`` (real,
imaginary on the last axis). When the input's frequency grid ``(H, W // 2 + 1)``
differs from ``(h, w)`` it is resized like the official code does (bilinear,
``align_corners=True``), here as two interpolation-matrix products.
"""

import functools
import math

import keras
import numpy as np
from keras import ops

from visionzoo.layers.conv import DepthwiseConv2D
from visionzoo.layers.norms import LayerNorm

# --------------------------------------------------------------------------------------
# DFT and interpolation matrices (numpy for static grids, keras.ops for dynamic ones)
# --------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def dft_matrices(height, width):
    """Real matrices of the ortho ``rfft2`` / ``irfft2(s=(height, width))`` pair.

    Returns a dict of float64 arrays (``K = width // 2 + 1``):
        ``fwd_w_re``, ``fwd_w_im`` (W, K): ``x @ .`` is the scaled real-input DFT along W;
        ``cos_h``, ``sin_h`` (H, H): the full DFT along H is ``cos_h - i sin_h``, its
        inverse ``cos_h + i sin_h``;
        ``inv_w_re``, ``inv_w_im`` (K, W): ``U_re @ inv_w_re + U_im @ inv_w_im`` is the
        scaled complex-to-real inverse along W.
    The ``1 / sqrt(H W)`` of each ortho transform is folded into the W matrices.
    Cached: treat the arrays as read-only.
    """
    k = np.arange(width // 2 + 1)
    angle_w = 2.0 * np.pi * (np.outer(np.arange(width), k) % width) / width
    angle_h = 2.0 * np.pi * (np.outer(np.arange(height), np.arange(height)) % height) / height
    scale = 1.0 / math.sqrt(height * width)
    # Hermitian weights of the complex-to-real inverse: bins k and W-k both present,
    # except k = 0 and the Nyquist bin (even W), which appear once.
    edge = (k == 0) | (2 * k == width)
    weight = np.where(edge, 1.0, 2.0)[:, None]
    inv_sin = np.where(edge[:, None], 0.0, np.sin(angle_w.T))  # exact zeros: C2R drops
    return {                                                   # those imaginary parts
        "fwd_w_re": np.cos(angle_w) * scale,
        "fwd_w_im": -np.sin(angle_w) * scale,
        "cos_h": np.cos(angle_h),
        "sin_h": np.sin(angle_h),
        "inv_w_re": weight * np.cos(angle_w.T) * scale,
        "inv_w_im": -weight * inv_sin * scale,
    }


@functools.lru_cache(maxsize=64)
def interpolation_matrix(size_out, size_in):
    """``(size_out, size_in)`` matrix of 1-D linear interpolation with
    ``align_corners=True`` (torch ``F.interpolate`` semantics, float32 source indices).
    Cached: treat the array as read-only."""
    if size_out > 1:
        step = np.float32((size_in - 1) / (size_out - 1))
        src = np.arange(size_out, dtype=np.float32) * step
    else:
        src = np.zeros((size_out,), np.float32)
    i0 = np.minimum(np.floor(src).astype(np.int64), size_in - 1)
    i1 = np.minimum(i0 + 1, size_in - 1)
    lam = (src - i0).astype(np.float64)
    out = np.zeros((size_out, size_in))
    out[np.arange(size_out), i0] += 1.0 - lam
    out[np.arange(size_out), i1] += lam
    return out


def _dft_matrices_dynamic(height, width):
    """:func:`dft_matrices` for sizes only known when the graph runs (float32)."""
    two_pi = 2.0 * math.pi
    kw = width // 2 + 1
    k = ops.arange(kw)
    n_w = ops.arange(width)
    n_h = ops.arange(height)
    wf = ops.cast(width, "float32")
    hf = ops.cast(height, "float32")
    angle_w = two_pi * ops.cast(ops.mod(ops.outer(n_w, k), width), "float32") / wf
    angle_h = two_pi * ops.cast(ops.mod(ops.outer(n_h, n_h), height), "float32") / hf
    scale = ops.rsqrt(hf * wf)
    edge = ops.logical_or(ops.equal(k, 0), ops.equal(2 * k, width))
    weight = ops.expand_dims(ops.where(edge, 1.0, 2.0), 1)
    inv_sin = ops.where(ops.expand_dims(edge, 1), 0.0, ops.sin(ops.transpose(angle_w)))
    return {
        "fwd_w_re": ops.cos(angle_w) * scale,
        "fwd_w_im": -ops.sin(angle_w) * scale,
        "cos_h": ops.cos(angle_h),
        "sin_h": ops.sin(angle_h),
        "inv_w_re": weight * ops.cos(ops.transpose(angle_w)) * scale,
        "inv_w_im": -weight * inv_sin * scale,
    }


def _interpolation_matrix_dynamic(size_out, size_in):
    """:func:`interpolation_matrix` for a run-time ``size_out`` (static ``size_in``)."""
    denom = ops.cast(ops.maximum(size_out - 1, 1), "float32")
    step = ops.cast(size_in - 1, "float32") / denom
    src = ops.cast(ops.arange(size_out), "float32") * step
    i0 = ops.minimum(ops.cast(ops.floor(src), "int32"), size_in - 1)
    i1 = ops.minimum(i0 + 1, size_in - 1)
    lam = ops.expand_dims(src - ops.cast(i0, "float32"), 1)
    return (ops.one_hot(i0, size_in, dtype="float32") * (1.0 - lam)
            + ops.one_hot(i1, size_in, dtype="float32") * lam)


# --------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="visionzoo")
class GlobalLocalFilter(keras.layers.Layer):
    """HorNet's global-local filter on NHWC maps (replaces gnConv's depthwise 7x7).

    Args:
        height: int. Rows ``h`` of the stored complex weight (the stage's grid at the
            training resolution: 14 at 224 px for stage 3).
        width: int. Columns ``w`` of the stored complex weight (``h // 2 + 1`` for square
            training inputs: 8 at 224 px for stage 3).
        epsilon: float. Epsilon of both LayerNorms (official: 1e-6).

    Weights: ``pre_norm``/``post_norm`` (LayerNorm over all channels), ``dw`` (depthwise
    3x3, no bias, on the first half) and ``complex_weight`` ``(C/2, height, width, 2)``.
    The Fourier branch runs in float32 whatever the dtype policy (as the official one).
    """

    def __init__(self, height=14, width=8, epsilon=1e-6, **kwargs):
        super().__init__(**kwargs)
        self.height = int(height)
        self.width = int(width)
        self.epsilon = epsilon
        self.pre_norm = LayerNorm(epsilon=epsilon, name="pre_norm", dtype=self.dtype_policy)
        self.post_norm = LayerNorm(epsilon=epsilon, name="post_norm", dtype=self.dtype_policy)
        self.dw = DepthwiseConv2D(3, padding="same", use_bias=False, name="dw",
                                               dtype=self.dtype_policy)

    def build(self, input_shape):
        dim = input_shape[-1]
        if dim is None or dim % 2:
            raise ValueError(f"GlobalLocalFilter needs an even, known channel count; got "
                             f"{dim}.")
        half = dim // 2
        self.pre_norm.build(input_shape)
        self.dw.build(tuple(input_shape[:-1]) + (half,))
        self.post_norm.build(input_shape)
        self.complex_weight = self.add_weight(
            name="complex_weight", shape=(half, self.height, self.width, 2),
            initializer=keras.initializers.TruncatedNormal(stddev=0.02), dtype="float32")

    def _spectral_weight(self, grid_h, grid_k, static):
        """Real and imaginary weight ``(C/2, grid_h, grid_k)``, resized if needed."""
        w = ops.cast(self.complex_weight, "float32")
        w_re, w_im = w[..., 0], w[..., 1]
        if static and (grid_h, grid_k) == (self.height, self.width):
            return w_re, w_im
        if static:
            r_h = ops.convert_to_tensor(interpolation_matrix(grid_h, self.height), "float32")
            r_k = ops.convert_to_tensor(interpolation_matrix(grid_k, self.width).T, "float32")
        else:
            r_h = _interpolation_matrix_dynamic(grid_h, self.height)
            r_k = ops.transpose(_interpolation_matrix_dynamic(grid_k, self.width))
        return (ops.matmul(ops.matmul(r_h, w_re), r_k),
                ops.matmul(ops.matmul(r_h, w_im), r_k))

    def fourier_filter(self, x):
        """``irfft2(rfft2(x) * weight)`` (ortho) on an NHWC float map; returns float32."""
        height, width = x.shape[1], x.shape[2]
        static = isinstance(height, int) and isinstance(width, int)
        if static:
            mats = {k: ops.convert_to_tensor(v, "float32")
                    for k, v in dft_matrices(height, width).items()}
        else:
            shape = ops.shape(x)
            height, width = shape[1], shape[2]
            mats = _dft_matrices_dynamic(height, width)
        w_re, w_im = self._spectral_weight(height, width // 2 + 1, static)
        xt = ops.transpose(ops.cast(x, "float32"), (0, 3, 1, 2))  # (B, C, H, W)
        ch, sh = mats["cos_h"], mats["sin_h"]
        # rfft along W, then the full DFT along H: (cos - i sin) @ (a_re + i a_im).
        a_re = ops.matmul(xt, mats["fwd_w_re"])
        a_im = ops.matmul(xt, mats["fwd_w_im"])
        f_re = ops.matmul(ch, a_re) + ops.matmul(sh, a_im)
        f_im = ops.matmul(ch, a_im) - ops.matmul(sh, a_re)
        # Complex product with the (resized) weight.
        z_re = f_re * w_re - f_im * w_im
        z_im = f_re * w_im + f_im * w_re
        # Inverse DFT along H: (cos + i sin) @ z, then complex-to-real along W.
        u_re = ops.matmul(ch, z_re) - ops.matmul(sh, z_im)
        u_im = ops.matmul(ch, z_im) + ops.matmul(sh, z_re)
        y = ops.matmul(u_re, mats["inv_w_re"]) + ops.matmul(u_im, mats["inv_w_im"])
        return ops.transpose(y, (0, 2, 3, 1))

    def call(self, x):
        x = self.pre_norm(x)
        half = x.shape[-1] // 2
        local = self.dw(x[..., :half])
        glob = ops.cast(self.fourier_filter(x[..., half:]), local.dtype)
        # Interleave: channel 2i <- local i, 2i+1 <- global i (the official cat+reshape).
        y = ops.stack([local, glob], axis=-1)
        shape = ops.shape(local)
        y = ops.reshape(y, (-1, shape[1], shape[2], 2 * half))
        return self.post_norm(y)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def dft_macs(self, input_shape):
        """MACs of the DFT-matrix products for an NHWC ``input_shape`` of this layer."""
        _, h, w, c = input_shape
        half, k = c // 2, w // 2 + 1
        return half * (2 * h * w * k + 8 * h * h * k + 2 * h * k * w)

    def get_config(self):
        config = super().get_config()
        config.update(height=self.height, width=self.width, epsilon=self.epsilon)
        return config


@keras.saving.register_keras_serializable(package="visionzoo")
class GnConv(keras.layers.Layer):
    """Recursive gated convolution ``g^n Conv`` on NHWC maps (output channels = input).

    Args:
        order: int >= 1. Interaction order ``n`` (HorNet uses 2-5 in stages 1-4). The
            channel count must be divisible by ``2 ** (order - 1)``.
        scale: float. Multiplies the depthwise (or filter) output (HorNet: 1/3).
        kernel_size: int. Depthwise kernel when ``global_filter`` is None (official: 7).
        global_filter: None or ``(h, w)``: use a :class:`GlobalLocalFilter` whose
            complex weight is ``(sum(dims)/2, h, w, 2)`` instead of the depthwise conv.
        epsilon: float. LayerNorm epsilon inside the global filter.

    Sub-layers (official names): ``proj_in``, ``dwconv``, ``pws-{k}``, ``proj_out``.
    """

    def __init__(self, order=5, scale=1.0, kernel_size=7, global_filter=None, epsilon=1e-6,
                 **kwargs):
        super().__init__(**kwargs)
        if int(order) < 1:
            raise ValueError(f"gnConv order must be >= 1, got {order}.")
        self.order = int(order)
        self.scale = float(scale)
        self.kernel_size = int(kernel_size)
        self.global_filter = None if global_filter is None else tuple(
            int(v) for v in global_filter)
        self.epsilon = epsilon

    def build(self, input_shape):
        dim = input_shape[-1]
        if dim is None or dim % (2 ** (self.order - 1)):
            raise ValueError(f"gnConv of order {self.order} needs channels divisible by "
                             f"{2 ** (self.order - 1)}; got {dim}.")
        self.dims = [dim // 2 ** i for i in range(self.order)][::-1]
        policy = self.dtype_policy
        spatial = tuple(input_shape[:-1])
        self.proj_in = keras.layers.Conv2D(2 * dim, 1, name="proj_in", dtype=policy)
        self.proj_in.build(input_shape)
        if self.global_filter is None:
            self.dwconv = DepthwiseConv2D(
                self.kernel_size, padding="same", use_bias=True, name="dwconv", dtype=policy)
        else:
            self.dwconv = GlobalLocalFilter(*self.global_filter, epsilon=self.epsilon,
                                            name="dwconv", dtype=policy)
        self.dwconv.build(spatial + (sum(self.dims),))
        self.pws = []
        for i in range(self.order - 1):
            conv = keras.layers.Conv2D(self.dims[i + 1], 1, name=f"pws-{i}", dtype=policy)
            conv.build(spatial + (self.dims[i],))
            self.pws.append(conv)
        self.proj_out = keras.layers.Conv2D(dim, 1, name="proj_out", dtype=policy)
        self.proj_out.build(input_shape)

    def call(self, x):
        fused = self.proj_in(x)
        d0 = self.dims[0]
        gate, rest = fused[..., :d0], fused[..., d0:]
        q = self.dwconv(rest) * ops.cast(self.scale, rest.dtype)
        y = gate * q[..., :d0]
        start = d0
        for i, conv in enumerate(self.pws):
            stop = start + self.dims[i + 1]
            y = conv(y) * q[..., start:stop]
            start = stop
        return self.proj_out(y)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def matmul_macs(self, input_shape):
        """Products that are not conv/dense kernels (for ``visionzoo.flops``): the global
        filter's DFT matrices; 0 for the depthwise-conv form."""
        if self.global_filter is None:
            return 0
        return self.dwconv.dft_macs(tuple(input_shape[:-1]) + (sum(self.dims),))

    def get_config(self):
        config = super().get_config()
        config.update(order=self.order, scale=self.scale, kernel_size=self.kernel_size,
                      global_filter=None if self.global_filter is None
                      else list(self.global_filter),
                      epsilon=self.epsilon)
        return config
