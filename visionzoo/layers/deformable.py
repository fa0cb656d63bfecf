"""Deformable convolution (DCNv1: learned offsets, no modulation), backend-agnostic.

Numerics follow the DCN CUDA kernels (mmcv/mmdet ``deform_conv``, LITv2's
``mm_modules/DCN``) and ``torchvision.ops.deform_conv2d``:

- offset channel ``2*(i*kw + j)`` is the row offset ``dy`` of tap ``(i, j)``, channel
  ``2*(i*kw + j) + 1`` the column offset ``dx``;
- tap ``(i, j)`` of output ``(ho, wo)`` samples ``y = ho*stride - pad + i*dilation + dy``,
  ``x = wo*stride - pad + j*dilation + dx``;
- a sample counts only if ``-1 < y < H`` and ``-1 < x < W``; it is bilinear, with corners
  outside the map read as 0.

The sampled taps are gathered with one ``take`` on the flattened batch (TFLite GATHER),
stacked tap-major ``(kh, kw, C)`` and projected by the kernel reshaped to
``(kh*kw*C, filters)``. No Python loop over pixels, taps or batch.
"""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="visionzoo")
class DeformableConv2D(keras.layers.Layer):
    """``DeformConv2dPack``: offsets from a plain conv (``conv_offset``, same kernel,
    stride and padding), then a deformable convolution.

    The kernel is stored in Keras conv layout ``(kh, kw, C, filters)``; the checkpoint
    converter reads torch's ``(filters, C, kh, kw)`` into it (``torch_layout="conv"``).
    Static spatial input sizes are required.

    Args:
        filters: int.
        kernel_size: int.
        strides: int.
        padding: int. Symmetric zero padding (torch's ``padding``).
        dilation_rate: int. (Keras' offset conv allows dilation only with stride 1.)
        use_bias: bool.
    """

    torch_layout = "conv"

    def __init__(self, filters, kernel_size, strides=1, padding=0, dilation_rate=1,
                 use_bias=True, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.kernel_size = kernel_size
        self.strides = strides
        self.padding = padding
        self.dilation_rate = dilation_rate
        self.use_bias = use_bias
        taps = kernel_size * kernel_size
        self.conv_offset = keras.layers.Conv2D(2 * taps, kernel_size, strides=strides,
                                               dilation_rate=dilation_rate,
                                               kernel_initializer="zeros", name="conv_offset")
        self._pad = keras.layers.ZeroPadding2D(padding) if padding else None

    def build(self, input_shape):
        _, h, w, c = input_shape
        if h is None or w is None:
            raise ValueError("DeformableConv2D needs static spatial sizes; got "
                             f"{tuple(input_shape)}.")
        k, p = self.kernel_size, self.padding
        self.kernel = self.add_weight(name="kernel", shape=(k, k, c, self.filters),
                                      initializer="glorot_uniform")
        if self.use_bias:
            self.bias = self.add_weight(name="bias", shape=(self.filters,),
                                        initializer="zeros")
        padded = (None, h + 2 * p, w + 2 * p, c)
        if self._pad is not None:
            self._pad.build(input_shape)
        self.conv_offset.build(padded)
        span = self.dilation_rate * (k - 1) + 1
        self._out_hw = ((h + 2 * p - span) // self.strides + 1,
                        (w + 2 * p - span) // self.strides + 1)
        self._in_hw = (h, w)

    def call(self, x):
        h, w = self._in_hw
        ho, wo = self._out_hw
        k, s, p, d = self.kernel_size, self.strides, self.padding, self.dilation_rate
        c = x.shape[-1]
        dtype = x.dtype
        offset = self.conv_offset(self._pad(x) if self._pad is not None else x)
        offset = ops.reshape(offset, (-1, ho, wo, k * k, 2))
        taps = ops.arange(k * k)
        base_y = (ops.arange(ho)[:, None] * s - p + (taps // k)[None, :] * d)  # (ho, K)
        base_x = (ops.arange(wo)[:, None] * s - p + (taps % k)[None, :] * d)  # (wo, K)
        y = ops.cast(base_y, dtype)[None, :, None, :] + offset[..., 0]  # (B, ho, wo, K)
        xx = ops.cast(base_x, dtype)[None, None, :, :] + offset[..., 1]
        inside = ops.cast((y > -1) & (y < h) & (xx > -1) & (xx < w), dtype)
        y0 = ops.floor(y)
        x0 = ops.floor(xx)
        ly, lx = y - y0, xx - x0
        y0 = ops.cast(y0, "int32")
        x0 = ops.cast(x0, "int32")
        batch = ops.shape(x)[0]
        flat = ops.reshape(x, (-1, c))  # (B*H*W, C)
        start = ops.reshape(ops.arange(batch, dtype="int32") * (h * w), (-1, 1, 1, 1))
        sampled = 0.0
        for dy, dx, wgt in ((0, 0, (1 - ly) * (1 - lx)), (0, 1, (1 - ly) * lx),
                            (1, 0, ly * (1 - lx)), (1, 1, ly * lx)):
            yc, xc = y0 + dy, x0 + dx
            valid = ops.cast((yc >= 0) & (yc <= h - 1) & (xc >= 0) & (xc <= w - 1), dtype)
            index = start + ops.clip(yc, 0, h - 1) * w + ops.clip(xc, 0, w - 1)
            values = ops.take(flat, ops.reshape(index, (-1,)), axis=0)  # (B*ho*wo*K, C)
            values = ops.reshape(values, (-1, ho, wo, k * k, c))
            sampled = sampled + values * (wgt * valid * inside)[..., None]
        cols = ops.reshape(sampled, (-1, ho, wo, k * k * c))
        out = ops.matmul(cols, ops.reshape(ops.cast(self.kernel, dtype), (k * k * c, -1)))
        if self.use_bias:
            out = out + ops.cast(self.bias, dtype)
        return out

    def compute_output_shape(self, input_shape):
        return (input_shape[0],) + tuple(self._out_hw) + (self.filters,)

    def matmul_macs(self, input_shape):
        """The projection of the sampled columns (the offset conv counts itself)."""
        ho, wo = self._out_hw
        return ho * wo * self.kernel_size ** 2 * input_shape[-1] * self.filters

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters, kernel_size=self.kernel_size,
                      strides=self.strides, padding=self.padding,
                      dilation_rate=self.dilation_rate, use_bias=self.use_bias)
        return config
