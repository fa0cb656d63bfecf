"""The 2-D dual-tree complex wavelet transform (Kingsbury), level 1, as real Keras ops.

``DTCWTForward`` / ``DTCWTInverse`` compute what ``pytorch_wavelets.DTCWTForward(J=1)``
/ ``DTCWTInverse`` compute (its default ``mode="symmetric"``), on NHWC maps:

- Analysis: separable filtering along rows then columns with the biorthogonal level-1
  filters ``h0o`` (low) and ``h1o`` (high), each a true convolution over a
  half-sample-symmetric extension of the map (numpy's "symmetric" padding), output the
  same size. ``ll`` is the (undecimated) lowpass; ``lh``, ``hl`` and ``hh`` are turned
  into two complex subbands each by the quad-to-complex step: with the 2x2 quads
  ``a b / c d`` scaled by 1/sqrt(2), ``(a - d) + i(b + c)`` and ``(a + d) + i(b - c)``.
  The six orientations are ordered 15, 45, 75, 105, 135, 165 degrees:
  (lh, hh, hl, hl, hh, lh).
- Synthesis: the complex-to-quad step (the inverse interleave), then
  ``y = rows_g1(cols_g1(hh) + cols_g0(hl)) + rows_g0(cols_g1(lh) + cols_g0(ll))``.

Everything is real, no FFT and no complex dtype. Each 1-D filtering of a map (the
symmetric extension and the taps together) is a linear map along one axis, computed as
follows:

- On TensorFlow (so in TFLite files): a constant-index ``take`` for the extension, then a
  depthwise convolution with a constant kernel. With strided slices, stacks and reshapes
  of at most 5 dimensions, TFLite files use builtin ops only.
- On JAX and torch: one product with a constant ``(L, L)`` banded matrix that holds the
  extension and the taps (:func:`filter_matrix`). XLA:CPU has no fast depthwise
  convolution, and written as a sum of shifted slices the inverse transform's two
  passes are fused into one loop that recomputes the first pass for each tap of the
  second: at ``(1, 56, 56, 64)`` the inverse took 50 ms on JAX, and takes 2.6 ms as
  products (batch 8: 667 -> 22 ms; torch 11 -> 9 ms). The matrix grows with ``L**2``,
  but the products stayed faster on every size tried: forward + inverse of
  ``(1, L, L, 16)`` on JAX took 3.4 -> 1.3 ms at L = 56 and 1316 -> 284 ms at L = 448.
  On TensorFlow the products were slower than its native depthwise kernels (inverse
  3.6 -> 6.2 ms), so it keeps them.

Both forms give the same values up to float32 summation order.

At level 1 only the biorthogonal filters are used (the q-shift filters of ``qshift_b``
enter at levels >= 2, which are not implemented here).

Filter provenance: ``near_sym_b`` are Kingsbury's (13, 19)-tap near-symmetric
biorthogonal filters, the values shipped as ``near_sym_b.npz`` in the ``dtcwt`` and
``pytorch_wavelets`` packages (``biort("near_sym_b")``); the tests compare them with
``pytorch_wavelets`` whenever it is installed.
"""

import keras
import numpy as np
from keras import ops

from visionzoo.layers.conv import depthwise_conv

# near_sym_b, as (h0o, h1o, g0o, g1o). All four are symmetric, so true convolution
# and cross-correlation coincide; the code still flips them, to be exact in general.
_H0O = np.array([-9, 0, 114, -240, -247, 1520, 2844, 1520, -247, -240, 114, 0, -9],
                np.float64) / 5120.0
_G1O = np.array([-9, 0, 114, 240, -247, -1520, 2844, -1520, -247, 240, 114, 0, -9],
                np.float64) / 5120.0
_G0O = np.array([
    7.062639508928571e-05, 0.0, -0.0013419015066964285, -0.0018833705357142855,
    0.007156808035714285, 0.023856026785714284, -0.05564313616071428,
    -0.05168805803571428, 0.29975760323660716, 0.5594308035714286,
    0.29975760323660716, -0.05168805803571428, -0.05564313616071428,
    0.023856026785714284, 0.007156808035714285, -0.0018833705357142855,
    -0.0013419015066964285, 0.0, 7.062639508928571e-05])
# h1o is g0o modulated by (-1)^n (about its centre), the biorthogonality relation.
_H1O = _G0O * np.array([(-1.0) ** (n + 1) for n in range(19)])

BIORTHOGONAL_FILTERS = {"near_sym_b": {"h0o": _H0O, "h1o": _H1O, "g0o": _G0O, "g1o": _G1O}}
QSHIFT_FILTERS = ("qshift_b",)  # accepted names; unused at level 1

_SQRT_HALF = float(1.0 / np.sqrt(2.0))


def symmetric_indices(length, pad):
    """Indices of a half-sample-symmetric extension by ``pad`` on each side.

    ``... 2 1 0 | 0 1 2 ... n-1 | n-1 n-2 ...``, reflecting again when ``pad`` exceeds
    ``length`` (numpy's ``np.pad(mode="symmetric")`` for any pad).
    """
    idx = np.arange(-pad, length + pad)
    period = 2 * length
    idx = np.mod(idx, period)
    return np.where(idx >= length, period - 1 - idx, idx).astype("int32")


def _check_filters(biort, qshift):
    if biort not in BIORTHOGONAL_FILTERS:
        raise ValueError(f"Unknown biorthogonal filters {biort!r}; available: "
                         f"{sorted(BIORTHOGONAL_FILTERS)}.")
    if qshift not in QSHIFT_FILTERS:
        raise ValueError(f"Unknown q-shift filters {qshift!r}; available: "
                         f"{list(QSHIFT_FILTERS)}.")
    return BIORTHOGONAL_FILTERS[biort]


def filter_matrix(taps, length):
    """The ``(length, length)`` matrix of :func:`_filter` along one axis: output ``o`` is
    ``sum_t taps[::-1][t] * x_ext[o + t]`` with ``x_ext`` the symmetric extension of ``x``
    by ``len(taps) // 2``, so ``M[o, j]`` adds up the taps that read sample ``j``."""
    taps = np.asarray(taps, np.float64)
    pad = len(taps) // 2
    source = symmetric_indices(length, pad)  # x_ext[i] = x[source[i]]
    rows = np.repeat(np.arange(length), len(taps))
    reads = np.arange(length)[:, None] + np.arange(len(taps))[None, :]
    matrix = np.zeros((length, length), np.float64)
    np.add.at(matrix, (rows, source[reads].ravel()), np.tile(taps[::-1], length))
    return matrix.astype(np.float32)


def _filter(x, taps, axis, channels):
    """Convolve every channel of NHWC ``x`` with the 1-D ``taps`` along ``axis``
    (1: columns/height, 2: rows/width), symmetric extension, same-size output."""
    length = x.shape[axis]
    if keras.config.backend() != "tensorflow":
        matrix = ops.convert_to_tensor(filter_matrix(taps, length), dtype=x.dtype)
        if axis == 1:
            return ops.einsum("hk,bkwc->bhwc", matrix, x)
        return ops.einsum("wk,bhkc->bhwc", matrix, x)
    pad = len(taps) // 2
    x = ops.take(x, symmetric_indices(length, pad), axis=axis)
    kernel = np.asarray(taps[::-1], np.float32)  # true convolution
    shape = (len(taps), 1) if axis == 1 else (1, len(taps))
    kernel = np.broadcast_to(kernel.reshape(shape + (1, 1)), shape + (channels, 1))
    kernel = ops.convert_to_tensor(np.ascontiguousarray(kernel), dtype=x.dtype)
    return depthwise_conv(x, kernel, strides=1, padding="valid")


def _quads_to_complex(y):
    """``(B, H, W, C)`` -> two complex subbands ``((re, im), (re, im))`` at half size."""
    y = y * _SQRT_HALF
    a, b = y[:, 0::2, 0::2], y[:, 0::2, 1::2]
    c, d = y[:, 1::2, 0::2], y[:, 1::2, 1::2]
    return (a - d, b + c), (a + d, b - c)


def _complex_to_quads(w1, w2):
    """The inverse of :func:`_quads_to_complex`: interleave into a 2x map."""
    (w1r, w1i), (w2r, w2i) = w1, w2
    top_left, top_right = w1r + w2r, w1i + w2i
    bottom_left, bottom_right = w1i - w2i, w2r - w1r
    h, w, c = w1r.shape[1], w1r.shape[2], w1r.shape[3]  # static (checked in build)
    top = ops.reshape(ops.stack([top_left, top_right], axis=3), (-1, h, 2 * w, c))
    bottom = ops.reshape(ops.stack([bottom_left, bottom_right], axis=3), (-1, h, 2 * w, c))
    y = ops.reshape(ops.stack([top, bottom], axis=2), (-1, 2 * h, 2 * w, c))
    return y * _SQRT_HALF


@keras.saving.register_keras_serializable(package="visionzoo")
class DTCWTForward(keras.layers.Layer):
    """Level-1 2-D DTCWT of NHWC maps (``pytorch_wavelets.DTCWTForward(J=1)``).

    Odd heights/widths are first extended by repeating the last row/column, as the
    reference does.

    Args:
        biort: str. Level-1 biorthogonal filters (``"near_sym_b"``).
        qshift: str. Q-shift filters (``"qshift_b"``; unused at level 1).
        J: int. Levels; only 1 is implemented.

    Call: ``x (B, H, W, C)`` -> ``[low, high_real, high_imag]`` with ``low`` of shape
    ``(B, H', W', C)`` (H', W' = H, W rounded up to even) and ``high_*`` of shape
    ``(B, H'/2, W'/2, 6, C)`` (orientations 15, 45, 75, 105, 135, 165 degrees).
    pytorch_wavelets' ``yh[0]`` ``(B, C, 6, H/2, W/2, 2)`` is
    ``stack([high_real, high_imag], -1)`` transposed by ``(0, 4, 3, 1, 2, 5)``.
    """

    def __init__(self, biort="near_sym_b", qshift="qshift_b", J=1, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if J != 1:
            raise ValueError(f"Only the level-1 DTCWT (J=1) is implemented, got J={J}.")
        self.filters = _check_filters(biort, qshift)
        self.biort, self.qshift, self.J = biort, qshift, J

    def build(self, input_shape):
        if input_shape[1] is None or input_shape[2] is None:
            raise ValueError("DTCWTForward needs a static height and width (its "
                             f"symmetric extension is precomputed); got {input_shape}.")

    def call(self, x):
        x = ops.cast(x, self.compute_dtype)
        if x.shape[1] % 2:
            x = ops.concatenate([x, x[:, -1:]], axis=1)
        if x.shape[2] % 2:
            x = ops.concatenate([x, x[:, :, -1:]], axis=2)
        c = x.shape[-1]
        f = self.filters
        lo = _filter(x, f["h0o"], 2, c)
        hi = _filter(x, f["h1o"], 2, c)
        ll = _filter(lo, f["h0o"], 1, c)
        lh = _filter(lo, f["h1o"], 1, c)
        hl = _filter(hi, f["h0o"], 1, c)
        hh = _filter(hi, f["h1o"], 1, c)
        (d15, d165), (d45, d135), (d75, d105) = (
            _quads_to_complex(lh), _quads_to_complex(hh), _quads_to_complex(hl))
        order = (d15, d45, d75, d105, d135, d165)
        real = ops.stack([z[0] for z in order], axis=3)
        imag = ops.stack([z[1] for z in order], axis=3)
        return [ll, real, imag]

    def compute_output_shape(self, input_shape):
        b, h, w, c = input_shape
        h, w = h + h % 2, w + w % 2
        return [(b, h, w, c), (b, h // 2, w // 2, 6, c), (b, h // 2, w // 2, 6, c)]

    def get_config(self):
        config = super().get_config()
        config.update(biort=self.biort, qshift=self.qshift, J=self.J)
        return config


@keras.saving.register_keras_serializable(package="visionzoo")
class DTCWTInverse(keras.layers.Layer):
    """Level-1 inverse 2-D DTCWT (``pytorch_wavelets.DTCWTInverse`` on one level).

    Call: ``[low, high_real, high_imag]`` as :class:`DTCWTForward` returns them ->
    ``(B, H, W, C)``. If ``low`` is larger than twice the subbands (by 2 in a
    dimension), its outer rows/columns are cut, as the reference does.
    """

    def __init__(self, biort="near_sym_b", qshift="qshift_b", **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.filters = _check_filters(biort, qshift)
        self.biort, self.qshift = biort, qshift

    def build(self, input_shape):
        low, real, imag = input_shape
        if tuple(real) != tuple(imag) or len(real) != 5 or real[3] != 6:
            raise ValueError("DTCWTInverse needs high_real and high_imag of one shape "
                             f"(B, H/2, W/2, 6, C); got {real} and {imag}.")
        if low[-1] != real[-1]:
            raise ValueError(f"low has {low[-1]} channels but the subbands {real[-1]}.")
        for axis in (1, 2):
            if low[axis] is None or real[axis] is None:
                raise ValueError("DTCWTInverse needs static heights and widths.")
            if low[axis] not in (2 * real[axis], 2 * real[axis] + 2):
                raise ValueError(f"low {tuple(low)} does not fit subbands {tuple(real)}: "
                                 "its height and width must be twice theirs.")

    def call(self, inputs):
        low, real, imag = (ops.cast(t, self.compute_dtype) for t in inputs)
        if low.shape[1] != 2 * real.shape[1]:
            low = low[:, 1:-1]
        if low.shape[2] != 2 * real.shape[2]:
            low = low[:, :, 1:-1]

        def band(i):
            return real[:, :, :, i], imag[:, :, :, i]

        lh = _complex_to_quads(band(0), band(5))
        hh = _complex_to_quads(band(1), band(4))
        hl = _complex_to_quads(band(2), band(3))
        c = low.shape[-1]
        f = self.filters
        hi = _filter(hh, f["g1o"], 1, c) + _filter(hl, f["g0o"], 1, c)
        lo = _filter(lh, f["g1o"], 1, c) + _filter(low, f["g0o"], 1, c)
        return _filter(hi, f["g1o"], 2, c) + _filter(lo, f["g0o"], 2, c)

    def compute_output_shape(self, input_shape):
        real = input_shape[1]
        return (real[0], 2 * real[1], 2 * real[2], real[4])

    def get_config(self):
        config = super().get_config()
        config.update(biort=self.biort, qshift=self.qshift)
        return config
