"""Activations used by the ported families, equal to their torch definitions."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="visionzoo")
class GELU(keras.layers.Layer):
    """GELU; exact (erf) by default like ``torch.nn.GELU()``.

    ``keras.ops.gelu`` defaults to the tanh approximation, which breaks parity.
    The exact form lowers to TFLite's builtin GELU op.

    On JAX the exact form is written as ``0.5 * x * (1 + erf(x / sqrt(2)))`` (torch's
    own formula): ``jax.nn.gelu(approximate=False)`` goes through ``erfc``, which XLA:CPU
    evaluates 2-3x slower. Other backends call ``ops.gelu`` (TensorFlow's is the op the
    TFLite converter turns into its builtin GELU; an explicit erf would not convert).

    Args:
        approximate: bool. Use the tanh approximation (``GELU(approximate='tanh')``).
    """

    def __init__(self, approximate=False, **kwargs):
        super().__init__(**kwargs)
        self.approximate = approximate

    def call(self, x):
        if not self.approximate and keras.backend.backend() == "jax":
            return 0.5 * x * (1.0 + ops.erf(x * 0.7071067811865476))
        return ops.gelu(x, approximate=self.approximate)

    def get_config(self):
        config = super().get_config()
        config.update(approximate=self.approximate)
        return config


@keras.saving.register_keras_serializable(package="visionzoo")
class SquaredReLU(keras.layers.Layer):
    """``relu(x) ** 2`` (So et al., 2021)."""

    def call(self, x):
        return ops.square(ops.relu(x))


@keras.saving.register_keras_serializable(package="visionzoo")
class StarReLU(keras.layers.Layer):
    """``s * relu(x) ** 2 + b`` with scalar ``s`` and ``b`` (MetaFormer baselines).

    Args:
        scale_value: float. Initial ``s``.
        bias_value: float. Initial ``b``.
        scale_learnable: bool. Whether ``s`` is trained.
        bias_learnable: bool. Whether ``b`` is trained.
    """

    def __init__(self, scale_value=1.0, bias_value=0.0, scale_learnable=True,
                 bias_learnable=True, **kwargs):
        super().__init__(**kwargs)
        self.scale_value = scale_value
        self.bias_value = bias_value
        self.scale_learnable = scale_learnable
        self.bias_learnable = bias_learnable

    def build(self, input_shape):
        self.scale = self.add_weight(
            name="scale", shape=(1,),
            initializer=keras.initializers.Constant(self.scale_value),
            trainable=self.scale_learnable)
        self.bias = self.add_weight(
            name="bias", shape=(1,),
            initializer=keras.initializers.Constant(self.bias_value),
            trainable=self.bias_learnable)

    def call(self, x):
        r = ops.relu(x)
        return ops.cast(self.scale, x.dtype) * ops.square(r) + ops.cast(self.bias, x.dtype)

    def get_config(self):
        config = super().get_config()
        config.update(scale_value=self.scale_value, bias_value=self.bias_value,
                      scale_learnable=self.scale_learnable,
                      bias_learnable=self.bias_learnable)
        return config
