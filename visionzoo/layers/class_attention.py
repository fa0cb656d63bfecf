"""Class attention (CaiT, Touvron et al. 2021): only the class token queries."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="visionzoo")
class ClassAttention(keras.layers.Layer):
    """``(B, 1 + N, C)`` tokens -> the updated class token ``(B, 1, C)``.

    Keys and values come from every token (class token included), the single query from
    the class token: ``proj(softmax(q k^T / sqrt(d)) v)``. Sublayers ``q`` (C -> C),
    ``kv`` (C -> 2C, keys then values, head-major) and ``proj``, all with bias, as in
    CaiT / SVT / VOLO.

    Args:
        num_heads: int. Must divide the width.
    """

    def __init__(self, num_heads, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = num_heads

    def build(self, input_shape):
        dim = input_shape[-1]
        if dim % self.num_heads:
            raise ValueError(f"Width {dim} is not divisible by num_heads={self.num_heads}.")
        self.dim = dim
        self.head_dim = dim // self.num_heads
        self.q = keras.layers.Dense(dim, name="q")
        self.kv = keras.layers.Dense(2 * dim, name="kv")
        self.proj = keras.layers.Dense(dim, name="proj")
        self.q.build(tuple(input_shape[:-2]) + (1, dim))
        self.kv.build(input_shape)
        self.proj.build(tuple(input_shape[:-2]) + (1, dim))

    def _heads(self, t):
        t = ops.reshape(t, (-1, t.shape[1] if t.shape[1] is not None else ops.shape(t)[1],
                            self.num_heads, self.head_dim))
        return ops.transpose(t, (0, 2, 1, 3))

    def call(self, x):
        kv = self.kv(x)
        k = self._heads(kv[..., :self.dim])
        v = self._heads(kv[..., self.dim:])
        q = self._heads(self.q(x[:, :1]))
        attn = ops.matmul(q * (self.head_dim ** -0.5), ops.transpose(k, (0, 1, 3, 2)))
        attn = ops.softmax(attn, axis=-1)
        out = ops.transpose(ops.matmul(attn, v), (0, 2, 1, 3))
        return self.proj(ops.reshape(out, (-1, 1, self.dim)))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 1, input_shape[-1])

    def matmul_macs(self, input_shape):
        # q k^T and attn v for one query, plus the kv projection of the N tokens the
        # generic counter leaves out (it counts sublayers at the (B, 1, C) output).
        n = input_shape[1]
        return 2 * n * self.dim + (n - 1) * self.dim * 2 * self.dim

    def get_config(self):
        config = super().get_config()
        config.update(num_heads=self.num_heads)
        return config
