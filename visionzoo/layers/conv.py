"""Convolutions with torch-style explicit symmetric padding.

Keras ``padding="same"`` pads the bottom/right more than the top/left for strided
convolutions, whereas ``torch.nn.Conv2d(padding=p)`` pads ``p`` on every side.
These layers pad explicitly (``ops.pad``) and then run a "valid" convolution, so
weights converted from PyTorch give the same outputs at every stride.
"""

import math

import keras
from keras import ops

from visionzoo.layers.lowering import is_tflite_tracing

# LiteRT's XNNPACK delegate (ai-edge-litert 2.3, x86) runs depthwise kernels of up to 25
# taps in fast single-pass kernels and larger ones ~20x slower per tap: on
# (1, 56, 56, 128) a 5x5 takes 0.25 ms, a 6x6 7.7 ms and a 7x7 9.5 ms (1 thread).
XNNPACK_MAX_DEPTHWISE_TAPS = 25


def _pair(v):
    if isinstance(v, (list, tuple)):
        if len(v) != 2:
            raise ValueError(f"Expected an int or a pair, got {v!r}.")
        return tuple(int(i) for i in v)
    return (int(v), int(v))


def _same_padding(size, k, stride, dilation):
    """TF/Keras "same" padding ``(before, after)`` for one spatial axis."""
    span = (k - 1) * dilation + 1
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + span - size, 0)
    return total // 2, total - total // 2


def depthwise_conv(x, kernel, strides=1, padding="valid", dilation_rate=1):
    """``ops.depthwise_conv`` on NHWC tensors, with a fast path on JAX.

    XLA:CPU lowers a grouped (depthwise) convolution to a slow generic loop: a 7x7
    depthwise conv on ``(1, 56, 56, 128)`` takes ~25 ms there against ~1 ms when written
    as the sum of the ``kh * kw`` shifted (and strided) slices of the padded input times
    one kernel tap each, which XLA fuses into one loop. On JAX with a depth multiplier of
    1 that form is used; the result equals the convolution up to float32 summation
    order. Other backends call their native depthwise kernels, except that a kernel of
    more than 25 taps traced for TFLite (:func:`visionzoo.layers.lowering.tflite_tracing`)
    becomes :func:`depthwise_conv_split`'s bands.
    """
    strides = _pair(strides)
    dilation = _pair(dilation_rate)
    kh, kw, channels, mult = kernel.shape
    if (kh * kw > XNNPACK_MAX_DEPTHWISE_TAPS and is_tflite_tracing()
            and keras.config.backend() == "tensorflow" and len(x.shape) == 4):
        return depthwise_conv_split(x, kernel, strides, padding, dilation)
    if keras.config.backend() != "jax" or mult != 1 or len(x.shape) != 4:
        return ops.depthwise_conv(x, kernel, strides=strides, padding=padding,
                                  dilation_rate=dilation)
    (sh, sw), (dh, dw) = strides, dilation
    span_h, span_w = (kh - 1) * dh + 1, (kw - 1) * dw + 1
    def static(n):  # None for unknown sizes (symbolic, or JAX's dynamic dimensions)
        return n if isinstance(n, int) else None

    if padding == "same":
        h, w = static(x.shape[1]), static(x.shape[2])
        if (sh, sw) == (1, 1) and span_h % 2 and span_w % 2:
            pads = ((span_h // 2,) * 2, (span_w // 2,) * 2)
        elif h is None or w is None:  # symbolic shapes: padding depends on the size
            return ops.depthwise_conv(x, kernel, strides=strides, padding=padding,
                                      dilation_rate=dilation)
        else:
            pads = (_same_padding(h, kh, sh, dh), _same_padding(w, kw, sw, dw))
        x = ops.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    elif padding != "valid":
        raise ValueError(f"padding must be 'same' or 'valid', got {padding!r}.")
    h, w = static(x.shape[1]), static(x.shape[2])
    if (h is not None and h < span_h) or (w is not None and w < span_w):
        raise ValueError(f"A {kh}x{kw} depthwise kernel (dilation {dilation}) does not fit "
                         f"the padded {h}x{w} input.")
    taps = kernel[:, :, :, 0]
    out = None
    for i in range(kh):
        for j in range(kw):
            # Rows top, top + sh, ... that leave room for the rest of the kernel below
            # (negative stops, so symbolic sizes work too).
            top, left = i * dh, j * dw
            bottom, right = span_h - 1 - top, span_w - 1 - left
            window = x[:, top:-bottom or None:sh, left:-right or None:sw, :]
            term = window * taps[i, j]
            out = term if out is None else out + term
    return out


def depthwise_conv_split(x, kernel, strides=1, padding="valid", dilation_rate=1,
                         max_taps=XNNPACK_MAX_DEPTHWISE_TAPS):
    """A depthwise conv as a sum of depthwise convs of at most ``max_taps`` taps each.

    The kernel is cut into bands of whole rows (``max_taps // kw`` rows each; a kernel
    wider than ``max_taps`` is also cut across its columns). Each band convolves the
    (padded) input window its taps read, and the bands' outputs are added: the same
    result up to float32 summation order. :func:`depthwise_conv` uses this form when
    tracing for TFLite, where XNNPACK's kernels for more than 25 taps are slow (a 7x7
    becomes 3x7 + 3x7 + 1x7: 9.5 -> 0.6 ms on (1, 56, 56, 128)). Any backend; NHWC.
    """
    (sh, sw), (dh, dw) = _pair(strides), _pair(dilation_rate)
    kh, kw = int(kernel.shape[0]), int(kernel.shape[1])
    if padding == "same":
        h, w = x.shape[1], x.shape[2]
        if (sh, sw) == (1, 1) and ((kh - 1) * dh) % 2 == 0 and ((kw - 1) * dw) % 2 == 0:
            pads = (((kh - 1) * dh // 2,) * 2, ((kw - 1) * dw // 2,) * 2)
        elif isinstance(h, int) and isinstance(w, int):
            pads = (_same_padding(h, kh, sh, dh), _same_padding(w, kw, sw, dw))
        else:
            raise ValueError("A strided 'same' depthwise conv needs static height and "
                             "width to be split into bands.")
        x = ops.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    elif padding != "valid":
        raise ValueError(f"padding must be 'same' or 'valid', got {padding!r}.")
    cols = kw if kw <= max_taps else max_taps
    rows = max(1, min(kh, max_taps // cols))
    span_h, span_w = (kh - 1) * dh + 1, (kw - 1) * dw + 1
    out = None
    for i in range(0, kh, rows):
        for j in range(0, kw, cols):
            part = kernel[i:i + rows, j:j + cols]
            ph, pw = int(part.shape[0]), int(part.shape[1])
            # The band's taps read rows i*dh .. (that leave room for the kernel's rows
            # below it), likewise for columns; negative stops keep symbolic sizes.
            top, left = i * dh, j * dw
            bottom = span_h - (top + (ph - 1) * dh + 1)
            right = span_w - (left + (pw - 1) * dw + 1)
            window = x[:, top:-bottom or None, left:-right or None, :]
            term = ops.depthwise_conv(window, part, strides=(sh, sw), padding="valid",
                                      dilation_rate=(dh, dw))
            out = term if out is None else out + term
    return out


@keras.saving.register_keras_serializable(package="visionzoo")
class DepthwiseConv2D(keras.layers.DepthwiseConv2D):
    """``keras.layers.DepthwiseConv2D`` that runs :func:`depthwise_conv` (fast on JAX).

    Same arguments, weights and outputs as the Keras layer (channels-last only).
    """

    def call(self, inputs):
        if self.data_format != "channels_last":
            return super().call(inputs)
        outputs = depthwise_conv(inputs, self.kernel, strides=self.strides,
                                 padding=self.padding, dilation_rate=self.dilation_rate)
        if self.use_bias:
            outputs = ops.add(outputs, self.bias)
        if self.activation is not None:
            return self.activation(outputs)
        return outputs


class _TorchPadding:
    """Mixin: symmetric zero padding of ``torch_padding`` before the conv."""

    def _setup_padding(self, torch_padding):
        self.torch_padding = _pair(torch_padding)
        kh, kw = self.kernel_size
        sh, sw = self.strides
        ph, pw = self.torch_padding
        # With stride 1 and p == k // 2 on odd kernels, "same" is exactly symmetric.
        self._as_same = (sh, sw) == (1, 1) and kh % 2 == 1 and kw % 2 == 1 and (
            (ph, pw) == (kh // 2, kw // 2))
        if self._as_same:
            self.padding = "same"

    def _pad(self, x):
        ph, pw = self.torch_padding
        if self._as_same or (ph, pw) == (0, 0):
            return x
        return ops.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))

    def _padded_shape(self, input_shape):
        if self._as_same:
            return input_shape
        ph, pw = self.torch_padding
        h, w = input_shape[1], input_shape[2]
        return (input_shape[0], None if h is None else h + 2 * ph,
                None if w is None else w + 2 * pw, input_shape[3])


@keras.saving.register_keras_serializable(package="visionzoo")
class PaddedConv2D(_TorchPadding, keras.layers.Conv2D):
    """``torch.nn.Conv2d`` equivalent on NHWC tensors.

    Args:
        filters, kernel_size, strides, use_bias, groups: as ``keras.layers.Conv2D``.
        torch_padding: int or (int, int). Zeros added on each side (torch ``padding``).
    """

    def __init__(self, filters, kernel_size, strides=1, torch_padding=0, **kwargs):
        kwargs.pop("padding", None)
        super().__init__(filters, kernel_size, strides=strides, padding="valid", **kwargs)
        self._setup_padding(torch_padding)

    def build(self, input_shape):
        super().build(self._padded_shape(input_shape))

    def call(self, inputs):
        return super().call(self._pad(inputs))

    def compute_output_shape(self, input_shape):
        return super().compute_output_shape(self._padded_shape(input_shape))

    def get_config(self):
        config = super().get_config()
        config.pop("padding", None)
        config["torch_padding"] = self.torch_padding
        return config


@keras.saving.register_keras_serializable(package="visionzoo")
class PaddedDepthwiseConv2D(_TorchPadding, DepthwiseConv2D):
    """Depthwise ``torch.nn.Conv2d(C, C, k, groups=C)`` equivalent on NHWC tensors.

    Args:
        kernel_size, strides, use_bias, depth_multiplier: as ``keras.layers.DepthwiseConv2D``.
        torch_padding: int or (int, int). Zeros added on each side.
    """

    def __init__(self, kernel_size, strides=1, torch_padding=0, **kwargs):
        kwargs.pop("padding", None)
        super().__init__(kernel_size, strides=strides, padding="valid", **kwargs)
        self._setup_padding(torch_padding)

    def build(self, input_shape):
        super().build(self._padded_shape(input_shape))

    def call(self, inputs):
        return super().call(self._pad(inputs))

    def compute_output_shape(self, input_shape):
        return super().compute_output_shape(self._padded_shape(input_shape))

    def get_config(self):
        config = super().get_config()
        config.pop("padding", None)
        config["torch_padding"] = self.torch_padding
        return config
