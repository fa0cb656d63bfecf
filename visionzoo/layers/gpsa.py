"""Gated positional self-attention (GPSA, ConViT: d'Ascoli et al., ICML 2021).

Each head mixes two attention maps with a learned gate ``g_h``:

    attn = (1 - sigmoid(g_h)) * softmax(q k^T * scale) + sigmoid(g_h) * softmax(pos_h)
    attn = attn / attn.sum(-1)

``pos_h`` is ``pos_proj`` (Linear 3 -> heads) applied to the relative-position features
``(dx, dy, dx^2 + dy^2)`` of every query/key patch pair on the square patch grid (a
constant). Values come from a separate ``v`` projection; ``qk`` projects queries and
keys together (queries first), as in the official layout.
"""

import keras
import numpy as np
from keras import ops

from visionzoo.layers.lowering import traced_constants


def relative_patch_features(side):
    """``(N, N, 3)`` float32 ``(dx, dy, dx^2 + dy^2)`` for a ``side x side`` grid, key
    minus query, tokens row-major (ConViT's ``rel_indices``)."""
    idx = np.arange(side * side)
    row, col = idx // side, idx % side
    dx = (col[None, :] - col[:, None]).astype("float32")
    dy = (row[None, :] - row[:, None]).astype("float32")
    return np.stack([dx, dy, dx * dx + dy * dy], axis=-1)


@keras.saving.register_keras_serializable(package="visionzoo")
class GatedPositionalSelfAttention(keras.layers.Layer):
    """GPSA on ``(B, N, C)`` patch tokens of a square grid (no class token).

    Args:
        num_heads: int.
        qkv_bias: bool. Bias of ``qk`` and ``v``.
        attn_dropout, proj_dropout: float.
    """

    def __init__(self, num_heads, qkv_bias=False, attn_dropout=0.0, proj_dropout=0.0,
                 **kwargs):
        super().__init__(**kwargs)
        self.num_heads = num_heads
        self.qkv_bias = qkv_bias
        self.attn_dropout = attn_dropout
        self.proj_dropout = proj_dropout
        self.attn_drop = keras.layers.Dropout(attn_dropout, name="attn_drop")
        self.proj_drop = keras.layers.Dropout(proj_dropout, name="proj_drop")

    def build(self, input_shape):
        n, dim = input_shape[1], input_shape[2]
        side = int(round((n or 0) ** 0.5))
        if n is None or side * side != n:
            raise ValueError(f"GPSA needs a static square number of patch tokens; got {n}.")
        if dim % self.num_heads:
            raise ValueError(f"{dim} channels do not split into {self.num_heads} heads.")
        self.dim, self.num_tokens = dim, n
        self.head_dim = dim // self.num_heads
        self.qk = keras.layers.Dense(2 * dim, use_bias=self.qkv_bias, name="qk")
        self.v = keras.layers.Dense(dim, use_bias=self.qkv_bias, name="v")
        self.proj = keras.layers.Dense(dim, name="proj")
        self.pos_proj = keras.layers.Dense(self.num_heads, name="pos_proj")
        self.pos_proj._vz_skip_macs = True  # a constant table, see matmul_macs
        for layer, shape in ((self.qk, input_shape), (self.v, input_shape),
                             (self.proj, input_shape), (self.pos_proj, (None, 3))):
            layer.build(shape)
        self.gating_param = self.add_weight(name="gating_param", shape=(self.num_heads,),
                                            initializer="ones")
        # Channels first, (3, 1, N, N): the positional scores of every head come out as
        # three broadcast multiply-adds in (heads, N, N) order, with no (N*N, 3) x (3,
        # heads) matmul (K = 3 is the worst case for a GEMM library) and no transpose.
        self._rel = np.ascontiguousarray(
            np.transpose(relative_patch_features(side), (2, 0, 1))[:, None])

    def _heads(self, t):
        t = ops.reshape(t, (-1, self.num_tokens, self.num_heads, self.head_dim))
        return ops.transpose(t, (0, 2, 1, 3))

    def call(self, x, training=None):
        n, dim, heads = self.num_tokens, self.dim, self.num_heads
        constants = traced_constants(self)
        if constants is not None:
            return self._call_tflite(x, constants)
        qk = self.qk(x)
        q, k = self._heads(qk[..., :dim]), self._heads(qk[..., dim:])
        v = self._heads(self.v(x))
        scale = ops.cast(self.head_dim ** -0.5, q.dtype)
        patch = ops.softmax(ops.matmul(q, ops.transpose(k, (0, 1, 3, 2))) * scale, axis=-1)
        pos = ops.softmax(ops.cast(self._position_scores(), patch.dtype), axis=-1)
        gate = ops.reshape(ops.sigmoid(ops.cast(self.gating_param, patch.dtype)),
                           (1, heads, 1, 1))
        # Both softmaxes sum to 1 over the keys, so their gated mix does too: the
        # reference's renormalisation (attn / attn.sum(-1)) only rescales by 1 +- 1 ulp
        # and is skipped (one pass less over the (B, heads, N, N) weights).
        attn = (1.0 - gate) * patch + gate * pos
        attn = self.attn_drop(attn, training=training)
        out = ops.reshape(ops.transpose(ops.matmul(attn, v), (0, 2, 1, 3)), (-1, n, dim))
        return self.proj_drop(self.proj(out), training=training)

    def tflite_constants(self):
        """Weights-only parts of the mix for the TFLite form (see
        :mod:`visionzoo.layers.lowering`): ``1 - g`` and ``g * softmax(pos)`` with
        ``g = sigmoid(gating_param)``, float32."""
        gate = ops.reshape(ops.sigmoid(ops.cast(self.gating_param, "float32")),
                           (1, self.num_heads, 1, 1))
        pos = ops.softmax(ops.cast(self._position_scores(), "float32"), axis=-1)
        return {"patch_gate": ops.convert_to_numpy(1.0 - gate),
                "positional": ops.convert_to_numpy(gate * pos)}

    def _call_tflite(self, x, constants):
        """The TFLite form: the gated positional map is a constant computed before the
        trace (the converter evaluates no SOFTMAX: each block's would run at inference),
        and the ``head_dim ** -0.5`` scale multiplies the query columns of ``qk``'s
        output, which the converter folds into its weights (instead of a pass over the
        ``(heads, N, N)`` scores). Same function up to float32 rounding."""
        n, dim = self.num_tokens, self.dim
        columns = np.concatenate([np.full(dim, self.head_dim ** -0.5, "float32"),
                                  np.ones(dim, "float32")])
        qk = self.qk(x) * ops.convert_to_tensor(columns, dtype=self.compute_dtype)
        q, k = self._heads(qk[..., :dim]), self._heads(qk[..., dim:])
        v = self._heads(self.v(x))
        patch = ops.softmax(ops.matmul(q, ops.transpose(k, (0, 1, 3, 2))), axis=-1)
        dtype = patch.dtype
        attn = (ops.convert_to_tensor(constants["patch_gate"], dtype=dtype) * patch
                + ops.convert_to_tensor(constants["positional"], dtype=dtype))
        out = ops.reshape(ops.transpose(ops.matmul(attn, v), (0, 2, 1, 3)), (-1, n, dim))
        return self.proj(out)

    def _position_scores(self):
        """``pos_proj`` applied to the relative features: ``(1, heads, N, N)``."""
        dtype = self.compute_dtype
        rel = ops.convert_to_tensor(self._rel, dtype=dtype)  # (3, 1, N, N)
        kernel = ops.cast(self.pos_proj.kernel, dtype)  # (3, heads)
        pos = ops.reshape(ops.cast(self.pos_proj.bias, dtype), (self.num_heads, 1, 1))
        for c in range(3):
            pos = pos + rel[c] * ops.reshape(kernel[c], (self.num_heads, 1, 1))
        return ops.expand_dims(pos, 0)

    def matmul_macs(self, input_shape):
        n = self.num_tokens
        return 2 * n * n * self.dim + n * n * 3 * self.num_heads

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(num_heads=self.num_heads, qkv_bias=self.qkv_bias,
                      attn_dropout=self.attn_dropout, proj_dropout=self.proj_dropout)
        return config
