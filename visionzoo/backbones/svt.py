"""SVT: scattering vision transformer (Patro & Agneeswaran, NeurIPS 2023), SVT-H.

Reference: badripatro/svt ``svt.py`` (``SVT``, ``svt_s/b/l``; no weights are published).

- Stem: 7x7/2 Conv+BN+ReLU, two 3x3 Conv+BN+ReLU (no conv bias), a 3x3/2 projection and
  LayerNorm (eps 1e-5): a 56x56 token map at 224 px. Stages 2-4 start with a 3x3/2
  conv + LayerNorm (eps 1e-5).
- Stage 1 blocks mix tokens with the *scattering* layer (:class:`ScatterChannelMixing`):
  a level-1 DTCWT (:mod:`visionzoo.layers.dtcwt`), the lowpass multiplied element-wise by
  a learned ``(C, 56, 56)`` weight, the six complex high-pass orientations passed through
  a two-layer block-diagonal complex MLP (4 blocks, ReLU after the first layer, shared
  across orientations and positions), then the inverse DTCWT. Stages 2-4 use plain
  multi-head self-attention. Every block has the PVTv2 FFN (fc1 -> 3x3 depthwise ->
  GELU -> fc2); pre-norm LayerNorms with eps 1e-6.
- After stage 4: a class token (the mean of the tokens), one CaiT class-attention block
  (:class:`~visionzoo.layers.class_attention.ClassAttention`), LayerNorm.
- Head as the official evaluation computes it (token labeling):
  ``head(cls) + 0.5 * max over tokens of aux_head(tokens)``.

The lowpass weight is tied to the 56x56 stage-1 grid of a 224-px input. At other input
sizes it is resized bilinearly (torch ``align_corners=False`` semantics) to the stage-1
grid; this extension is ours (the official model only runs at 224). Inputs must be
multiples of 32.
"""

import keras
import numpy as np
from keras import ops

from visionzoo.backbones.base import ZooBackbone
from visionzoo.layers import (GELU, DepthwiseConv2D, LayerNorm, MultiHeadSelfAttention,
                              PaddedConv2D, residual_add)
from visionzoo.layers.class_attention import ClassAttention
from visionzoo.layers.dtcwt import BIORTHOGONAL_FILTERS, DTCWTForward, DTCWTInverse

# --------------------------------------------------------------------------------------
# Family-only layers
# --------------------------------------------------------------------------------------


def _block_diagonal(w):
    """``(blocks, d, k)`` -> the ``(blocks*d, blocks*k)`` block-diagonal matrix."""
    blocks = w.shape[0]
    eye = ops.eye(blocks, dtype=w.dtype)
    # full[b, d, e, k] = w[b, d, k] * (b == e), as a broadcast product (exact: times 1 or
    # 0). Not an einsum: the TFLite converter lowers this outer-product einsum to a
    # BATCH_MATMUL with a wrong output shape once blocks are 16 channels or wider (the
    # published widths) and the export fails, with a dynamic or a fixed batch alike.
    full = w[:, :, None, :] * eye[:, None, :, None]
    return ops.reshape(full, (blocks * w.shape[1], blocks * w.shape[2]))


@keras.saving.register_keras_serializable(package="visionzoo")
class ScatterChannelMixing(keras.layers.Layer):
    """SVT's scattering token mixer on NHWC maps (official ``SVT_channel_mixing``).

    Weights, in the official layout: ``complex_weight_ll`` ``(C, gh, gw)`` (the lowpass
    gate), ``complex_weight_lh_1/2`` ``(2, blocks, C/blocks, C/blocks)`` (real, imag)
    and ``complex_weight_lh_b1/b2`` ``(2, blocks, C/blocks)``.

    Args:
        num_blocks: int. Blocks of the block-diagonal complex MLP (4).
        weight_grid: (gh, gw). Grid the lowpass weight is stored at (56x56 officially);
            other input grids use a bilinear resize of it.
    """

    def __init__(self, num_blocks=4, weight_grid=(56, 56), **kwargs):
        kwargs.setdefault("dtype", "float32")  # the official layer casts to float32
        super().__init__(**kwargs)
        self.num_blocks = num_blocks
        self.weight_grid = tuple(weight_grid)
        self.xfm = DTCWTForward(name="xfm")
        self.ifm = DTCWTInverse(name="ifm")

    def build(self, input_shape):
        c = input_shape[-1]
        if c % self.num_blocks:
            raise ValueError(f"Width {c} is not divisible by num_blocks={self.num_blocks}.")
        if input_shape[1] is None or input_shape[2] is None:
            raise ValueError("ScatterChannelMixing needs a static height and width.")
        bs = c // self.num_blocks
        init = keras.initializers.RandomNormal(stddev=0.02)
        self.complex_weight_ll = self.add_weight(
            name="complex_weight_ll", shape=(c,) + self.weight_grid, initializer=init)
        for name, shape in (("complex_weight_lh_1", (2, self.num_blocks, bs, bs)),
                            ("complex_weight_lh_2", (2, self.num_blocks, bs, bs)),
                            ("complex_weight_lh_b1", (2, self.num_blocks, bs)),
                            ("complex_weight_lh_b2", (2, self.num_blocks, bs))):
            setattr(self, name, self.add_weight(name=name, shape=shape, initializer=init))
        self.xfm.build(input_shape)

    def _lowpass_gate(self, h, w):
        gate = ops.transpose(ops.cast(self.complex_weight_ll, self.compute_dtype), (1, 2, 0))
        if (h, w) != self.weight_grid:
            gate = ops.image.resize(gate[None], (h, w), interpolation="bilinear",
                                    antialias=False)[0]
        return gate

    def call(self, x):
        x = ops.cast(x, self.compute_dtype)
        low, real, imag = self.xfm(x)
        low = low * self._lowpass_gate(low.shape[1], low.shape[2])
        c = x.shape[-1]
        bands = real.shape[1:4]
        real = ops.reshape(real, (-1, int(np.prod(bands)), c))
        imag = ops.reshape(imag, (-1, int(np.prod(bands)), c))
        w1, w2 = self.complex_weight_lh_1, self.complex_weight_lh_2
        b1 = ops.reshape(self.complex_weight_lh_b1, (1, 2 * c))  # [real | imag]
        b2 = ops.reshape(self.complex_weight_lh_b2, (1, 2 * c))
        w1r, w1i, w2r, w2i = (_block_diagonal(w) for w in (w1[0], w1[1], w2[0], w2[1]))
        # Complex products as real ones on [real | imag] halves:
        # (r + i j)(wr + wi j) = (r wr - i wi) + (r wi + i wr) j.
        hidden = ops.relu(ops.matmul(real, ops.concatenate([w1r, w1i], axis=1))
                          + ops.matmul(imag, ops.concatenate([-w1i, w1r], axis=1)) + b1)
        second = ops.concatenate([ops.concatenate([w2r, w2i], axis=1),
                                  ops.concatenate([-w2i, w2r], axis=1)], axis=0)
        out = ops.matmul(hidden, second) + b2
        r2, i2 = out[..., :c], out[..., c:]
        shape = (-1,) + tuple(bands) + (c,)
        return self.ifm([low, ops.reshape(r2, shape), ops.reshape(i2, shape)])

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def matmul_macs(self, input_shape):
        # The complex MLP as published (block-diagonal: C*C/blocks per complex product,
        # 4 real products per complex one, 2 layers) on 6 bands at half resolution; the
        # DTCWT filtering (separable, 19/13 taps) is counted as its multiplies.
        h, w, c = input_shape[1], input_shape[2], input_shape[3]
        per_position = 2 * 4 * c * c // self.num_blocks
        mlp = 6 * (h // 2) * (w // 2) * per_position
        dtcwt = h * w * c * (2 * (13 + 19) + 2 * (13 + 19))  # rows + columns, fwd + inv
        return mlp + dtcwt

    def get_config(self):
        config = super().get_config()
        config.update(num_blocks=self.num_blocks, weight_grid=list(self.weight_grid))
        return config


@keras.saving.register_keras_serializable(package="visionzoo")
class MeanClassToken(keras.layers.Layer):
    """``(B, H, W, C)`` map -> ``(B, 1 + H*W, C)`` with the token mean prepended."""

    def call(self, x):
        tokens = ops.reshape(x, (-1, x.shape[1] * x.shape[2], x.shape[3]))
        return ops.concatenate([ops.mean(tokens, axis=1, keepdims=True), tokens], axis=1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[1] * input_shape[2] + 1, input_shape[3])


@keras.saving.register_keras_serializable(package="visionzoo")
class TokenLabelingLogits(keras.layers.Layer):
    """``head(cls) + weight * max over tokens of aux(tokens)`` from the two logit sets."""

    def __init__(self, aux_weight=0.5, **kwargs):
        super().__init__(**kwargs)
        self.aux_weight = aux_weight

    def call(self, inputs):
        cls_logits, token_logits = inputs
        return cls_logits + self.aux_weight * ops.max(token_logits, axis=1)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0])

    def get_config(self):
        config = super().get_config()
        config.update(aux_weight=self.aux_weight)
        return config


def _conv(x, filters, kernel, stride, name, bias=True):
    return PaddedConv2D(filters, kernel, strides=stride, torch_padding=kernel // 2,
                        use_bias=bias, name=name)(x)


def stem(x, hidden, dim):
    for index, (kernel, stride) in enumerate(((7, 2), (3, 1), (3, 1))):
        x = _conv(x, hidden, kernel, stride, f"patch_embed1-conv-{3 * index}", bias=False)
        x = keras.layers.BatchNormalization(epsilon=1e-5, momentum=0.9,
                                            name=f"patch_embed1-conv-{3 * index + 1}")(x)
        x = keras.layers.ReLU(name=f"patch_embed1-conv-{3 * index + 2}")(x)
    x = _conv(x, dim, 3, 2, "patch_embed1-proj")
    return LayerNorm(epsilon=1e-5, name="patch_embed1-norm")(x)


def svt_block(x, scatter, num_heads, mlp_ratio, drop_path, weight_grid, name):
    dim = x.shape[-1]
    y = LayerNorm(epsilon=1e-6, name=f"{name}-norm1")(x)
    if scatter:
        y = ScatterChannelMixing(weight_grid=weight_grid, name=f"{name}-attn")(y)
    else:
        y = MultiHeadSelfAttention(num_heads, dim // num_heads, qkv_bias=True, proj_bias=True,
                                   name=f"{name}-attn")(y)
    x = residual_add(x, y, drop_path, name, 1)
    y = LayerNorm(epsilon=1e-6, name=f"{name}-norm2")(x)
    hidden = int(dim * mlp_ratio)
    y = keras.layers.Dense(hidden, name=f"{name}-mlp-fc1")(y)
    y = DepthwiseConv2D(3, padding="same", name=f"{name}-mlp-dwconv-dwconv")(y)
    y = GELU(name=f"{name}-mlp-act")(y)
    y = keras.layers.Dense(dim, name=f"{name}-mlp-fc2")(y)
    return residual_add(x, y, drop_path, name, 2)


def class_block(x, num_heads, mlp_ratio, name):
    """CaiT class-attention block on ``(B, 1 + N, C)``: only the class token changes."""
    dim = x.shape[-1]
    cls = keras.layers.Lambda(lambda t: t[:, :1], output_shape=lambda s: (s[0], 1, s[2]),
                              name=f"{name}-cls")(x)
    rest = keras.layers.Lambda(lambda t: t[:, 1:],
                               output_shape=lambda s: (s[0], s[1] - 1, s[2]),
                               name=f"{name}-tokens")(x)
    y = LayerNorm(epsilon=1e-6, name=f"{name}-norm1")(x)
    cls = keras.layers.Add(name=f"{name}-add1")(
        [cls, ClassAttention(num_heads, name=f"{name}-attn")(y)])
    y = LayerNorm(epsilon=1e-6, name=f"{name}-norm2")(cls)
    y = keras.layers.Dense(int(dim * mlp_ratio), name=f"{name}-mlp-fc1")(y)
    y = GELU(name=f"{name}-mlp-act")(y)
    y = keras.layers.Dense(dim, name=f"{name}-mlp-fc2")(y)
    cls = keras.layers.Add(name=f"{name}-add2")([cls, y])
    return keras.layers.Concatenate(axis=1, name=f"{name}-concat")([cls, rest])


# --------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="visionzoo")
class SVT(ZooBackbone):
    """SVT-H classifier / backbone.

    Args:
        stem_hidden_dim: int. Width of the stem convolutions.
        embed_dims, num_heads, mlp_ratios, depths: four values each (per stage).
        scatter_stages: int. Leading stages that use the scattering mixer (1, the
            official ``alpha``).
        weight_grid: int. Side of the stored lowpass weight (56: the stage-1 grid at 224).
        aux_head: bool. Add the token-labeling head and combine it as the official
            evaluation does (``head(cls) + 0.5 * max aux_head(tokens)``).
        drop_path_rate: float. Linear over blocks.
        include_top, num_classes, classifier_activation, input_shape, input_tensor,
        name: as in ``keras.applications``. Without the top the output is the normalised
        token sequence (class token first); ``pooling="token"`` gives the class token,
        ``"avg"``/``"max"`` pool the patch tokens. ``pyramid_outputs``: ``P2``..``P5``.
    """

    def __init__(self, stem_hidden_dim=32, embed_dims=(64, 128, 320, 448),
                 num_heads=(2, 4, 10, 14), mlp_ratios=(8, 8, 4, 4), depths=(3, 4, 6, 3),
                 scatter_stages=1, weight_grid=56, aux_head=True, drop_path_rate=0.0,
                 include_top=True, num_classes=1000, pooling=None,
                 classifier_activation=None, input_shape=None, input_tensor=None,
                 name="svt", **kwargs):
        n = len(embed_dims)
        if not (len(num_heads) == len(mlp_ratios) == len(depths) == n):
            raise ValueError("embed_dims, num_heads, mlp_ratios and depths need one entry "
                             "per stage.")
        if pooling not in (None, "avg", "max", "token"):
            raise ValueError(f"pooling must be None, 'avg', 'max' or 'token', got {pooling!r}.")
        multiple = 4 * 2 ** (n - 1)
        shape = tuple(input_shape) if input_shape is not None else (224, 224, 3)
        if input_tensor is None and (shape[0] is None or shape[1] is None):
            shape = (shape[0] or 224, shape[1] or 224, shape[2])  # DTCWT needs static grids
        inputs, x = self._make_input(shape, input_tensor, min_size=multiple)
        h, w = x.shape[1], x.shape[2]
        if h is None or w is None or h % multiple or w % multiple:
            raise ValueError(f"SVT needs a static input height and width that are multiples "
                             f"of {multiple}; got {h}x{w}.")

        x = stem(x, stem_hidden_dim, embed_dims[0])
        total, index, pyramid = sum(depths), 0, {}
        for i in range(n):
            if i:
                x = _conv(x, embed_dims[i], 3, 2, f"patch_embed{i + 1}-proj")
                x = LayerNorm(epsilon=1e-5, name=f"patch_embed{i + 1}-norm")(x)
            for j in range(depths[i]):
                rate = drop_path_rate * index / max(total - 1, 1)
                x = svt_block(x, i < scatter_stages, num_heads[i], mlp_ratios[i], rate,
                              (weight_grid, weight_grid), f"block{i + 1}-{j}")
                index += 1
            if i < n - 1:
                x = LayerNorm(epsilon=1e-6, name=f"norm{i + 1}")(x)
            pyramid[f"P{i + 2}"] = x

        x = MeanClassToken(name="cls_token")(x)
        x = class_block(x, num_heads[-1], mlp_ratios[-1], "post_network-0")
        x = LayerNorm(epsilon=1e-6, name=f"norm{n}")(x)
        if include_top:
            cls = keras.layers.Lambda(lambda t: t[:, 0], output_shape=lambda s: (s[0], s[2]),
                                      name="head-token")(x)
            logits = keras.layers.Dense(num_classes, name="head")(cls)
            if aux_head:
                tokens = keras.layers.Lambda(lambda t: t[:, 1:],
                                             output_shape=lambda s: (s[0], s[1] - 1, s[2]),
                                             name="aux_head-tokens")(x)
                token_logits = keras.layers.Dense(num_classes, name="aux_head")(tokens)
                logits = TokenLabelingLogits(0.5, name="token_labeling")([logits, token_logits])
            x = logits
            if classifier_activation not in (None, "linear"):
                x = keras.layers.Activation(classifier_activation, name="predictions",
                                            dtype="float32")(x)
        elif pooling == "token":
            x = keras.layers.Lambda(lambda t: t[:, 0], output_shape=lambda s: (s[0], s[2]),
                                    name="token_pool")(x)
        elif pooling in ("avg", "max"):
            x = keras.layers.Lambda(lambda t: t[:, 1:],
                                    output_shape=lambda s: (s[0], s[1] - 1, s[2]),
                                    name="patch_tokens")(x)
            pool = (keras.layers.GlobalAveragePooling1D if pooling == "avg"
                    else keras.layers.GlobalMaxPooling1D)
            x = pool(name=f"{pooling}_pool")(x)

        super().__init__(inputs=inputs, outputs=x, name=name, **kwargs)
        self.pyramid_outputs = pyramid
        self.stem_hidden_dim = stem_hidden_dim
        self.embed_dims = list(embed_dims)
        self.num_heads_per_stage = list(num_heads)
        self.mlp_ratios = list(mlp_ratios)
        self.depths = list(depths)
        self.scatter_stages = scatter_stages
        self.weight_grid = weight_grid
        self.aux_head = aux_head
        self.drop_path_rate = drop_path_rate
        self._record_top_args(include_top, num_classes, pooling, classifier_activation,
                              input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(stem_hidden_dim=self.stem_hidden_dim, embed_dims=self.embed_dims,
                      num_heads=self.num_heads_per_stage, mlp_ratios=self.mlp_ratios,
                      depths=self.depths, scatter_stages=self.scatter_stages,
                      weight_grid=self.weight_grid, aux_head=self.aux_head,
                      drop_path_rate=self.drop_path_rate)
        return config

    @property
    def classifier_key(self):
        return "head"


# --------------------------------------------------------------------------------------
# Variant table (data)
# --------------------------------------------------------------------------------------

_CODE = "https://github.com/badripatro/svt/blob/main/svt.py"
# Official README / configs: stem width, dims, heads, MLP ratios, depths, params (M),
# GFLOPs, ImageNet-1k top-1 (token labeling), drop-path rate used in training, and the
# parameter count of the official code's ``svt_s/b/l()`` (counted by us with
# ``sum(p.numel())``; SVT-H-L's README says 54.0M, its code builds 54.59M).
_TABLE = {
    "svt_h_small": (32, (64, 128, 320, 448), (2, 4, 10, 14), (3, 4, 6, 3), "22.0", 3.9,
                    84.2, 0.1, 22052592),
    "svt_h_base": (64, (64, 128, 320, 512), (2, 4, 10, 16), (3, 4, 12, 3), "32.8", 6.3,
                   85.2, 0.1, 32878544),
    "svt_h_large": (64, (96, 192, 384, 512), (3, 6, 12, 16), (3, 6, 18, 3), "54.0", 12.7,
                    85.7, 0.3, 54594000),
}


def _variants():
    out = {}
    for name, (stem_dim, dims, heads, depths, params, gflops, top1, dpr,
               code_params) in _TABLE.items():
        out[name] = dict(
            config={"stem_hidden_dim": stem_dim, "embed_dims": list(dims),
                    "num_heads": list(heads), "mlp_ratios": [8, 8, 4, 4],
                    "depths": list(depths)},
            input_size=224, crop_pct=0.875, interpolation="bicubic",
            weights={}, code=_CODE, timm=None, license="unknown",
            published={"params_m": params, "gmacs": gflops, "top1": top1,
                       "train_drop_path_rate": dpr, "official_code_params": code_params})
    return out


VARIANTS = _variants()
MODEL_CLASS = SVT
DISPLAY_NAMES = {"svt": "SVT"}
OFFICIAL_REPOS = ("badripatro/svt",)
TIMM_NOTES = {name: "SVT is not in timm and has no released weights; verify it against "
                    "the official fixture (../shared/parity/svt_mini.npz)."
              for name in VARIANTS}


def build(config, **kwargs):
    return SVT(**config, **kwargs)


def classifier_key(config):
    return "head"


def application_name(model_name):
    return "SVTH" + model_name.rsplit("_", 1)[1].capitalize()


# --------------------------------------------------------------------------------------
# Checkpoint layout: the repository's training checkpoints (``{"model": state_dict}``,
# read by ``read_checkpoint``). Names match ours except that self-attention stores
# ``q`` and ``kv`` separately (ours is one fused ``qkv``, merged in ``adapt_state``), and
# the scattering blocks carry the DTCWT filter buffers (checked, then dropped).
# --------------------------------------------------------------------------------------

KEY_MAPS = {"official": []}
IGNORE_KEYS = (r"num_batches_tracked$", r"\.attn\.(xfm|ifm)\.")
_LEVEL1_FILTERS = {"xfm.h0o": "h0o", "xfm.h1o": "h1o", "ifm.g0o": "g0o", "ifm.g1o": "g1o"}


def adapt_state(model, state, renamed):
    """Merge ``attn.q`` + ``attn.kv`` into ``attn.qkv``; check the stored DTCWT filters."""
    filters = BIORTHOGONAL_FILTERS["near_sym_b"]
    out = {}
    for key, value in state.items():
        stem_key, _, leaf = key.rpartition(".")
        tail = ".".join(key.split(".")[-2:])
        if ".attn.xfm." in key or ".attn.ifm." in key:
            name = _LEVEL1_FILTERS.get(tail)
            if name is not None:
                stored = np.asarray(value, np.float64).ravel()[::-1]  # prep_filt reverses
                if stored.shape != filters[name].shape or not np.allclose(
                        stored, filters[name], atol=1e-7):
                    raise ValueError(f"{key} holds other wavelet filters than near_sym_b; "
                                     "this port implements near_sym_b only. The model was "
                                     "left unchanged.")
            out[key] = value
            continue
        if key.endswith((".attn.q.weight", ".attn.q.bias")) and not key.startswith(
                "post_network."):
            kv_key = key.replace(".attn.q.", ".attn.kv.")
            if kv_key in state:
                merged = np.concatenate([np.asarray(value), np.asarray(state[kv_key])], 0)
                out[key.replace(".attn.q.", ".attn.qkv.")] = merged
                continue
        if key.endswith((".attn.kv.weight", ".attn.kv.bias")) and not key.startswith(
                "post_network."):
            if key.replace(".attn.kv.", ".attn.q.") in state:
                continue  # merged above
        out[key] = value
    return out


def detect_layout(keys):
    keys = set(keys)
    if "patch_embed1.conv.0.weight" in keys and any(k.startswith("post_network.")
                                                    for k in keys):
        return "official"
    return None


def from_official_config(config):
    """Kwargs for :class:`SVT` from ``SVT(...)`` constructor arguments."""
    c = dict(config)
    if c.get("num_stages", 4) != len(c.get("embed_dims", [0] * 4)):
        raise ValueError("num_stages must equal the number of embed_dims.")
    kwargs = {}
    for key in ("stem_hidden_dim", "embed_dims", "num_heads", "mlp_ratios", "depths",
                "num_classes", "drop_path_rate"):
        if key in c:
            kwargs[key] = list(c[key]) if isinstance(c[key], (list, tuple)) else c[key]
    kwargs["aux_head"] = bool(c.get("token_label", True))
    return kwargs
