"""Stochastic depth and learned per-channel scales."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="visionzoo")
class DropPath(keras.layers.Layer):
    """Stochastic depth: drop the whole residual branch per sample while training.

    Surviving samples are scaled by ``1 / (1 - rate)`` (timm's ``scale_by_keep``).
    Identity at inference.

    Args:
        rate: float in [0, 1). Probability of dropping the branch.
        seed: int or None. Seed of the layer's random generator.
    """

    def __init__(self, rate=0.0, seed=None, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"DropPath rate must be in [0, 1), got {rate}.")
        self.rate = rate
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed) if rate > 0 else None

    def call(self, x, training=None):
        if not training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        shape = (ops.shape(x)[0],) + (1,) * (len(x.shape) - 1)
        mask = keras.random.uniform(shape, seed=self.seed_generator, dtype=x.dtype)
        mask = ops.cast(mask < keep, x.dtype)
        return x * mask / keep

    def get_config(self):
        config = super().get_config()
        config.update(rate=self.rate, seed=self.seed)
        return config


@keras.saving.register_keras_serializable(package="visionzoo")
class Scale(keras.layers.Layer):
    """Element-wise learned scale on the channel axis (layer scale / residual scale).

    Args:
        init_value: float. Initial value of every entry.
        trainable_scale: bool. Whether the scale is trained.
    """

    def __init__(self, init_value=1.0, trainable_scale=True, **kwargs):
        super().__init__(**kwargs)
        self.init_value = init_value
        self.trainable_scale = trainable_scale

    def build(self, input_shape):
        self.scale = self.add_weight(
            name="scale", shape=(input_shape[-1],),
            initializer=keras.initializers.Constant(self.init_value),
            trainable=self.trainable_scale)

    def call(self, x):
        return x * ops.cast(self.scale, x.dtype)

    def get_config(self):
        config = super().get_config()
        config.update(init_value=self.init_value, trainable_scale=self.trainable_scale)
        return config


def residual_add(x, branch, drop_path, name, index):
    """``x + DropPath(branch)`` in a functional graph, with the layer names
    ``{name}-drop_path{index}`` (only when ``drop_path > 0``) and ``{name}-add{index}``."""
    if drop_path:
        branch = DropPath(drop_path, name=f"{name}-drop_path{index}")(branch)
    return keras.layers.Add(name=f"{name}-add{index}")([x, branch])
