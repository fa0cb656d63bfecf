"""Convolutions with torch-style explicit symmetric padding.

Keras ``padding="same"`` pads the bottom/right more than the top/left for strided
convolutions, whereas ``torch.nn.Conv2d(padding=p)`` pads ``p`` on every side.
These layers pad explicitly (``ops.pad``) and then run a "valid" convolution, so
weights converted from PyTorch give the same outputs at every stride.
"""

import keras
from keras import ops


def _pair(v):
    if isinstance(v, (list, tuple)):
        if len(v) != 2:
            raise ValueError(f"Expected an int or a pair, got {v!r}.")
        return tuple(int(i) for i in v)
    return (int(v), int(v))


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
class PaddedDepthwiseConv2D(_TorchPadding, keras.layers.DepthwiseConv2D):
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
