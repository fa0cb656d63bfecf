"""Average pooling equal to torch's ``AvgPool2d(count_include_pad=False)``."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="visionzoo")
class AvgPool2DNoPadCount(keras.layers.Layer):
    """Average pooling whose border windows average only the real (unpadded) cells.

    Computed as zero-pad + "valid" average pool, divided by the same pooling of a
    ones map, which is the share of real cells in each window. This gives one
    result on every backend (Keras' torch backend has differed from TF/JAX on
    "same" average pooling) and lowers to builtin TFLite ops.

    Args:
        pool_size: int. Square window.
        strides: int.
        padding: int. Zeros added on each side (torch ``padding``).
    """

    def __init__(self, pool_size=3, strides=1, padding=None, **kwargs):
        super().__init__(**kwargs)
        self.pool_size = int(pool_size)
        self.strides = int(strides)
        self.padding = self.pool_size // 2 if padding is None else int(padding)

    def call(self, x):
        p = self.padding
        pads = ((0, 0), (p, p), (p, p), (0, 0))
        k, s = self.pool_size, self.strides
        pooled = ops.average_pool(ops.pad(x, pads), k, s, padding="valid")
        if p == 0:
            return pooled
        ones = ops.ones_like(x[:1, :, :, :1])
        share = ops.average_pool(ops.pad(ones, pads), k, s, padding="valid")
        return pooled / share

    def compute_output_shape(self, input_shape):
        k, s, p = self.pool_size, self.strides, self.padding

        def out(n):
            return None if n is None else (n + 2 * p - k) // s + 1

        return (input_shape[0], out(input_shape[1]), out(input_shape[2]), input_shape[3])

    def get_config(self):
        config = super().get_config()
        config.update(pool_size=self.pool_size, strides=self.strides, padding=self.padding)
        return config
