"""Normalisations with explicit epsilon, matching PyTorch numerics.

Keras' own norms default to ``epsilon=1e-3`` and compute the variance as
``E[x^2] - E[x]^2``; these compute the centred variance like torch does.
"""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="visionzoo")
class LayerNorm(keras.layers.Layer):
    """LayerNorm over the last (channel) axis.

    Equals ``torch.nn.LayerNorm(C, eps)`` (``center=True``) and the MetaFormer
    ``LayerNormWithoutBias`` / ``LayerNormGeneral(bias=False)`` (``center=False``).

    Args:
        epsilon: float. Added to the variance; torch's default is 1e-5.
        center: bool. Learn a bias (``beta``).
        scale: bool. Learn a gain (``gamma``).
    """

    def __init__(self, epsilon=1e-5, center=True, scale=True, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = epsilon
        self.center = center
        self.scale = scale

    def build(self, input_shape):
        dim = input_shape[-1]
        if self.scale:
            self.gamma = self.add_weight(name="gamma", shape=(dim,), initializer="ones")
        if self.center:
            self.beta = self.add_weight(name="beta", shape=(dim,), initializer="zeros")

    def call(self, x):
        x = ops.cast(x, self.compute_dtype)
        mean = ops.mean(x, axis=-1, keepdims=True)
        centred = x - mean
        var = ops.mean(ops.square(centred), axis=-1, keepdims=True)
        y = centred * ops.rsqrt(var + self.epsilon)
        if self.scale:
            y = y * ops.cast(self.gamma, y.dtype)
        if self.center:
            y = y + ops.cast(self.beta, y.dtype)
        return y

    def get_config(self):
        config = super().get_config()
        config.update(epsilon=self.epsilon, center=self.center, scale=self.scale)
        return config


@keras.saving.register_keras_serializable(package="visionzoo")
class GroupNorm1(keras.layers.Layer):
    """GroupNorm with one group ("modified LayerNorm") on NHWC maps.

    Statistics over H, W and C of each sample; per-channel affine. Equals
    ``torch.nn.GroupNorm(1, C, eps)`` on NCHW and MetaFormer's
    ``LayerNormGeneral(normalized_dim=(1, 2, 3))`` on NHWC.

    Args:
        epsilon: float. torch's GroupNorm default is 1e-5.
        center: bool. Learn a per-channel bias.
        scale: bool. Learn a per-channel gain.
    """

    def __init__(self, epsilon=1e-5, center=True, scale=True, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = epsilon
        self.center = center
        self.scale = scale

    def build(self, input_shape):
        dim = input_shape[-1]
        if self.scale:
            self.gamma = self.add_weight(name="gamma", shape=(dim,), initializer="ones")
        if self.center:
            self.beta = self.add_weight(name="beta", shape=(dim,), initializer="zeros")

    def call(self, x):
        x = ops.cast(x, self.compute_dtype)
        axes = tuple(range(1, len(x.shape)))
        mean = ops.mean(x, axis=axes, keepdims=True)
        centred = x - mean
        var = ops.mean(ops.square(centred), axis=axes, keepdims=True)
        y = centred * ops.rsqrt(var + self.epsilon)
        if self.scale:
            y = y * ops.cast(self.gamma, y.dtype)
        if self.center:
            y = y + ops.cast(self.beta, y.dtype)
        return y

    def get_config(self):
        config = super().get_config()
        config.update(epsilon=self.epsilon, center=self.center, scale=self.scale)
        return config
