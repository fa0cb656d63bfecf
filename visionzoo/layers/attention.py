"""Multi-head self-attention with a fused qkv projection (timm/official layout)."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="visionzoo")
class MultiHeadSelfAttention(keras.layers.Layer):
    """Self-attention over all tokens of (B, N, C) or (B, H, W, C) inputs.

    ``qkv`` is one Dense whose output splits into q, k, v (in that order), each
    head-major, as in ``nn.Linear(dim, 3 * heads * head_dim)`` + reshape
    ``(B, N, 3, heads, head_dim)``. Transposes stay 4-D for TFLite.

    Args:
        num_heads: int.
        head_dim: int.
        qkv_bias: bool.
        proj_bias: bool.
        attn_dropout: float.
        proj_dropout: float.
    """

    def __init__(self, num_heads, head_dim, qkv_bias=False, proj_bias=False,
                 attn_dropout=0.0, proj_dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.qkv_bias = qkv_bias
        self.proj_bias = proj_bias
        self.attn_dropout = attn_dropout
        self.proj_dropout = proj_dropout
        inner = num_heads * head_dim
        self.qkv = keras.layers.Dense(3 * inner, use_bias=qkv_bias, name="qkv")
        self.attn_drop = keras.layers.Dropout(attn_dropout, name="attn_drop")
        self.proj_drop = keras.layers.Dropout(proj_dropout, name="proj_drop")
        self._inner = inner

    def build(self, input_shape):
        self.dim = input_shape[-1]
        self.proj = keras.layers.Dense(self.dim, use_bias=self.proj_bias, name="proj")
        self.qkv.build(input_shape)
        self.proj.build(tuple(input_shape[:-1]) + (self._inner,))

    def _heads(self, t, batch):
        t = ops.reshape(t, (batch, -1, self.num_heads, self.head_dim))
        return ops.transpose(t, (0, 2, 1, 3))

    def call(self, x, training=None):
        in_shape = ops.shape(x)
        batch = in_shape[0]
        spatial = len(x.shape) == 4
        tokens = ops.reshape(x, (batch, -1, self.dim)) if spatial else x
        qkv = self.qkv(tokens)
        inner = self._inner
        q = self._heads(qkv[..., :inner], batch)
        k = self._heads(qkv[..., inner:2 * inner], batch)
        v = self._heads(qkv[..., 2 * inner:], batch)
        scale = ops.cast(self.head_dim ** -0.5, q.dtype)
        attn = ops.matmul(q * scale, ops.transpose(k, (0, 1, 3, 2)))
        attn = ops.softmax(attn, axis=-1)
        attn = self.attn_drop(attn, training=training)
        out = ops.transpose(ops.matmul(attn, v), (0, 2, 1, 3))
        out = ops.reshape(out, (batch, -1, inner))
        out = self.proj_drop(self.proj(out), training=training)
        if spatial:
            out = ops.reshape(out, (batch, in_shape[1], in_shape[2], self.dim))
        return out

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(num_heads=self.num_heads, head_dim=self.head_dim,
                      qkv_bias=self.qkv_bias, proj_bias=self.proj_bias,
                      attn_dropout=self.attn_dropout, proj_dropout=self.proj_dropout)
        return config
