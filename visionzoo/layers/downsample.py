"""Patch-embedding stems and strided-conv downsampling with optional norms."""

import keras

from visionzoo.layers._util import make_norm
from visionzoo.layers.conv import PaddedConv2D


@keras.saving.register_keras_serializable(package="visionzoo")
class ConvDownsample(keras.layers.Layer):
    """``[norm] -> conv(k, s, p) -> [norm]`` on NHWC maps (stems and stage transitions).

    Covers the MetaFormer stem (k7 s4 p2 + post-norm), its downsamples (pre-norm +
    k3 s2 p1) and plain PoolFormer v1 patch embeddings (no norm).

    Args:
        filters: int. Output channels.
        kernel_size: int.
        strides: int.
        padding: int. Torch-style symmetric zero padding.
        pre_norm: dict or None. Norm spec applied before the conv (see ``make_norm``).
        post_norm: dict or None. Norm spec applied after the conv.
        use_bias: bool.
    """

    def __init__(self, filters, kernel_size, strides, padding=0, pre_norm=None,
                 post_norm=None, use_bias=True, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.kernel_size = kernel_size
        self.strides = strides
        self.padding = padding
        self.pre_norm = pre_norm
        self.post_norm = post_norm
        self.use_bias = use_bias
        if pre_norm and post_norm:
            raise ValueError("ConvDownsample takes pre_norm or post_norm, not both.")
        self.norm = make_norm(pre_norm or post_norm, "norm") if (pre_norm or post_norm) else None
        self.conv = PaddedConv2D(filters, kernel_size, strides=strides,
                                 torch_padding=padding, use_bias=use_bias, name="conv")

    def build(self, input_shape):
        if self.pre_norm:
            self.norm.build(input_shape)
        self.conv.build(input_shape)
        if self.post_norm:
            self.norm.build(self.conv.compute_output_shape(input_shape))

    def call(self, x):
        if self.pre_norm:
            x = self.norm(x)
        x = self.conv(x)
        if self.post_norm:
            x = self.norm(x)
        return x

    def compute_output_shape(self, input_shape):
        return self.conv.compute_output_shape(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters, kernel_size=self.kernel_size,
                      strides=self.strides, padding=self.padding,
                      pre_norm=self.pre_norm, post_norm=self.post_norm,
                      use_bias=self.use_bias)
        return config
