"""Conditioning pieces of adaLN-Zero diffusion transformers (DiT and its descendants).

- :func:`sincos_2d_table`: the fixed 2-D sine-cosine position table (MAE/DiT layout: the
  first half of the channels encodes the *column* coordinate, the second half the row;
  each half is ``[sin, cos]``).
- :class:`FixedPositionEmbedding`: adds that table (a constant, not a weight).
- :class:`TimestepFrequencies`: the sinusoidal features of (possibly fractional)
  timesteps, ``[cos, sin]`` of ``t * exp(-ln(max_period) * i / (half - shift))``
  (``shift=0``: official DiT/GLIDE; ``shift=1``: diffusers' DiT).
- :class:`LabelEmbedding`: a class table with one extra row, the *null* class used for
  classifier-free guidance; during training labels are replaced by the null class with
  probability ``dropout_prob``.
- :class:`AdaLNModulate`: parameter-free LayerNorm followed by
  ``x * (1 + scale) + shift``, where shift/scale are chunks of a per-sample modulation
  vector (the output of ``SiLU -> Linear(D, k*D)``).
- :class:`GatedResidual`: ``x + gate * y`` with the gate another chunk of it.

Shift/scale/gate chunk indices are arguments, so one pair of layers serves both the
6-chunk transformer blocks and the 2-chunk final layer.
"""

import math

import keras
import numpy as np
from keras import ops


def sincos_1d_table(dim, positions):
    """``(len(positions), dim)`` float64 table ``[sin(p * w), cos(p * w)]``,
    ``w_i = 10000 ** (-i / (dim / 2))``."""
    if dim % 2:
        raise ValueError(f"The sine-cosine table needs an even width, got {dim}.")
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    args = np.asarray(positions, np.float64).reshape(-1)[:, None] * omega[None]
    return np.concatenate([np.sin(args), np.cos(args)], axis=1)


def sincos_2d_table(dim, grid_h, grid_w):
    """``(grid_h * grid_w, dim)`` float32 2-D position table in row-major token order.

    Channels ``[:dim/2]`` encode the column index, ``[dim/2:]`` the row index (as in
    the MAE/DiT ``get_2d_sincos_pos_embed``, whose ``meshgrid`` puts ``w`` first).
    """
    if dim % 4:
        raise ValueError(f"The 2-D sine-cosine table needs a width divisible by 4, got {dim}.")
    rows, cols = np.meshgrid(np.arange(grid_h), np.arange(grid_w), indexing="ij")
    table = np.concatenate([sincos_1d_table(dim // 2, cols), sincos_1d_table(dim // 2, rows)],
                           axis=1)
    return table.astype("float32")


@keras.saving.register_keras_serializable(package="visionzoo")
class FixedPositionEmbedding(keras.layers.Layer):
    """Add the fixed 2-D sine-cosine table of a ``grid`` to ``(B, grid_h*grid_w, D)``.

    Args:
        grid: (grid_h, grid_w).
    """

    def __init__(self, grid, **kwargs):
        super().__init__(**kwargs)
        self.grid = tuple(int(g) for g in grid)

    def build(self, input_shape):
        n = self.grid[0] * self.grid[1]
        if input_shape[1] is not None and input_shape[1] != n:
            raise ValueError(f"Expected {n} tokens for the grid {self.grid}, got {input_shape[1]}.")
        self._table = sincos_2d_table(int(input_shape[-1]), *self.grid)[None]

    def call(self, x):
        return x + ops.cast(self._table, x.dtype)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(grid=list(self.grid))
        return config


@keras.saving.register_keras_serializable(package="visionzoo")
class TimestepFrequencies(keras.layers.Layer):
    """``(B,)`` timesteps -> ``(B, dim)`` sinusoidal features ``[cos, sin]``.

    Args:
        dim: int. Feature width (256 in DiT); an odd width gets a zero column.
        max_period: float. Sets the lowest frequency (10000).
        freq_shift: float. Frequencies ``exp(-ln(max_period) * i / (dim/2 - freq_shift))``;
            0 in the official DiT, 1 in diffusers' ``DiTTransformer2DModel``.
    """

    def __init__(self, dim=256, max_period=10000.0, freq_shift=0.0, **kwargs):
        kwargs.setdefault("dtype", "float32")  # the reference computes these in float32
        super().__init__(**kwargs)
        self.dim = dim
        self.max_period = max_period
        self.freq_shift = freq_shift
        half = dim // 2
        self._freqs = np.exp(-math.log(max_period) * np.arange(half, dtype=np.float32)
                             / np.float32(half - freq_shift)).astype("float32")

    def call(self, t):
        t = ops.cast(ops.reshape(t, (-1, 1)), "float32")
        args = t * ops.convert_to_tensor(self._freqs[None], "float32")
        out = ops.concatenate([ops.cos(args), ops.sin(args)], axis=-1)
        if self.dim % 2:
            out = ops.concatenate([out, ops.zeros_like(out[:, :1])], axis=-1)
        return out

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.dim)

    def get_config(self):
        config = super().get_config()
        config.update(dim=self.dim, max_period=self.max_period, freq_shift=self.freq_shift)
        return config


@keras.saving.register_keras_serializable(package="visionzoo")
class LabelEmbedding(keras.layers.Layer):
    """Class-label embedding with a null class for classifier-free guidance.

    The table has ``num_classes + 1`` rows when ``dropout_prob > 0`` (row
    ``num_classes`` is the null / unconditional class) and ``num_classes`` otherwise.
    In training, each label is replaced by the null class with probability
    ``dropout_prob``. Labels are integer indices; out-of-range labels are clipped.

    Args:
        num_classes: int.
        dim: int. Embedding width.
        dropout_prob: float. Label-drop probability in training.
        seed: int or None. Seed of the label-drop generator.
    """

    def __init__(self, num_classes, dim, dropout_prob=0.1, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.dim = dim
        self.dropout_prob = dropout_prob
        self.seed = seed
        self.rows = num_classes + int(dropout_prob > 0)
        self.seed_generator = keras.random.SeedGenerator(seed) if dropout_prob > 0 else None

    def build(self, input_shape):
        self.embedding_table = self.add_weight(
            name="embedding_table", shape=(self.rows, self.dim),
            initializer=keras.initializers.RandomNormal(stddev=0.02))

    def call(self, labels, training=None):
        labels = ops.cast(ops.reshape(labels, (-1,)), "int32")
        if training and self.dropout_prob > 0:
            drop = keras.random.uniform(ops.shape(labels), seed=self.seed_generator)
            labels = ops.where(drop < self.dropout_prob,
                               ops.full_like(labels, self.num_classes), labels)
        labels = ops.clip(labels, 0, self.rows - 1)
        return ops.take(ops.cast(self.embedding_table, self.compute_dtype), labels, axis=0)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.dim)

    def get_config(self):
        config = super().get_config()
        config.update(num_classes=self.num_classes, dim=self.dim,
                      dropout_prob=self.dropout_prob, seed=self.seed)
        return config


def _chunk(mod, index, num_chunks):
    width = mod.shape[-1] // num_chunks
    return mod[:, None, index * width:(index + 1) * width]


@keras.saving.register_keras_serializable(package="visionzoo")
class AdaLNModulate(keras.layers.Layer):
    """``LayerNorm(x) * (1 + scale) + shift`` on ``(B, N, D)`` tokens.

    Called on ``[x, mod]`` with ``mod`` ``(B, num_chunks * D)``; ``shift`` is chunk
    ``shift_index`` and ``scale`` chunk ``shift_index + 1`` (the adaLN-Zero order
    shift, scale, gate). The LayerNorm has no affine parameters.

    Args:
        shift_index: int.
        num_chunks: int. 6 in a DiT block, 2 in the final layer.
        epsilon: float. 1e-6 in DiT.
    """

    def __init__(self, shift_index=0, num_chunks=6, epsilon=1e-6, **kwargs):
        super().__init__(**kwargs)
        self.shift_index = shift_index
        self.num_chunks = num_chunks
        self.epsilon = epsilon

    def call(self, inputs):
        x, mod = inputs
        x = ops.cast(x, self.compute_dtype)
        mod = ops.cast(mod, self.compute_dtype)
        mean = ops.mean(x, axis=-1, keepdims=True)
        centred = x - mean
        var = ops.mean(ops.square(centred), axis=-1, keepdims=True)
        y = centred * ops.rsqrt(var + self.epsilon)
        shift = _chunk(mod, self.shift_index, self.num_chunks)
        scale = _chunk(mod, self.shift_index + 1, self.num_chunks)
        return y * (1.0 + scale) + shift

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0])

    def get_config(self):
        config = super().get_config()
        config.update(shift_index=self.shift_index, num_chunks=self.num_chunks,
                      epsilon=self.epsilon)
        return config


@keras.saving.register_keras_serializable(package="visionzoo")
class GatedResidual(keras.layers.Layer):
    """``x + gate * y`` on ``[x, y, mod]``; ``gate`` is chunk ``gate_index`` of ``mod``.

    Args:
        gate_index: int. 2 (attention) or 5 (MLP) in a DiT block.
        num_chunks: int.
    """

    def __init__(self, gate_index=2, num_chunks=6, **kwargs):
        super().__init__(**kwargs)
        self.gate_index = gate_index
        self.num_chunks = num_chunks

    def call(self, inputs):
        x, y, mod = inputs
        gate = ops.cast(_chunk(mod, self.gate_index, self.num_chunks), y.dtype)
        return x + gate * y

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0])

    def get_config(self):
        config = super().get_config()
        config.update(gate_index=self.gate_index, num_chunks=self.num_chunks)
        return config
