"""Inception Transformer (iFormer; Si, Yu, Zhou, Zhou, Wang, Yan, NeurIPS 2022).

Reference: sail-sg/iFormer ``models/inception_transformer.py`` (``InceptionTransformer``,
``iformer_{small,base,large}[_384]``). Not in timm: timm's ``iformer_*`` models are a
different, later network (the 2025 mobile iFormer), so the variants here are named
``inception_transformer_*`` and never shadow timm's names.

- Stem (``patch_embed``): conv3x3/2 (C/2) -> BN -> GELU -> conv3x3/2 (C) -> BN; later
  embeds ``patch_embed{2,3,4}``: conv3x3/2 -> BN. Convs have bias; BN eps 1e-5; torch
  padding 1 on every side.
- After each embed a learned positional embedding ``pos_embed{k}`` of shape
  ``(1, G, G, C)`` (``G = img_size / 2**(k+1)``) is added. For another grid it is resized
  bilinearly with ``align_corners=False`` (torch ``F.interpolate(mode="bilinear")``),
  computed as two interpolation matrices, so it is exact and backend-independent.
- Block: ``x + ls1 * InceptionMixer(LN(x))``, ``x + ls2 * Mlp(LN(x))`` (LN eps 1e-6,
  exact GELU). The layer scales exist only in stages 3-4 (the official class ignores
  ``use_layer_scale`` in stages 1-2).
- Frequency ramp: ``attention_heads`` is indexed by the *global* block index; a block's
  low-frequency share is ``attention_heads[i] * head_dim`` of its channels (the last
  ones), ``head_dim = dim // num_heads[stage]``. The low-frequency attention pools by 2
  in stages 1-2 and not at all in stages 3-4.
- Head: LayerNorm, token mean, Linear.

Input sizes: any height and width whose stage-1 and stage-2 grids are even (multiples of
16 always work); the official code only runs square inputs, where ours computes the same
function. Batch and (unless given) spatial sizes are dynamic.

``pyramid_outputs`` P2..P5 are the outputs of each stage's last block.

The file reads top to bottom: family blocks -> model -> variant table -> key maps ->
official-constructor adapter.
"""

import keras
import numpy as np
from keras import ops

from visionzoo.backbones.base import ZooBackbone, build_classifier_top
from visionzoo.layers import GELU, LayerNorm, Mlp, PaddedConv2D, Scale, residual_add
from visionzoo.layers.inception_mixer import InceptionMixer

# --------------------------------------------------------------------------------------
# Family blocks
# --------------------------------------------------------------------------------------


def bilinear_resize_matrix(out_size, in_size):
    """``(out_size, in_size)`` matrix ``M`` with ``M @ v`` = torch's 1-D bilinear resize
    of ``v`` (``align_corners=False``, no antialiasing): source coordinate
    ``(i + 0.5) * in / out - 0.5`` clamped at 0, neighbours clamped at ``in - 1``."""
    src = (np.arange(out_size, dtype=np.float64) + 0.5) * (in_size / out_size) - 0.5
    src = np.maximum(src, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    lam = src - i0
    m = np.zeros((out_size, in_size), dtype=np.float64)
    rows = np.arange(out_size)
    np.add.at(m, (rows, i0), 1.0 - lam)
    np.add.at(m, (rows, i1), lam)
    return m


def _bilinear_resize_matrix_ops(out_size, in_size, dtype):
    """:func:`bilinear_resize_matrix` for a size only known at run time (a tensor)."""
    n = ops.cast(out_size, "float32")
    src = (ops.cast(ops.arange(out_size), "float32") + 0.5) * (in_size / n) - 0.5
    src = ops.maximum(src, 0.0)
    i0 = ops.minimum(ops.cast(ops.floor(src), "int32"), in_size - 1)
    i1 = ops.minimum(i0 + 1, in_size - 1)
    lam = ops.expand_dims(src - ops.cast(i0, "float32"), -1)
    m = ops.one_hot(i0, in_size) * (1.0 - lam) + ops.one_hot(i1, in_size) * lam
    return ops.cast(m, dtype)


@keras.saving.register_keras_serializable(package="visionzoo")
class ResizablePositionEmbedding(keras.layers.Layer):
    """Adds a learned ``(1, grid_h, grid_w, C)`` positional embedding to ``(B, H, W, C)``
    maps, resized bilinearly (torch ``align_corners=False``) when ``(H, W)`` differs from
    the stored grid.

    Args:
        grid_size: int or (int, int). The stored grid (the checkpoint's shape).
    """

    def __init__(self, grid_size, **kwargs):
        super().__init__(**kwargs)
        g = (grid_size, grid_size) if isinstance(grid_size, int) else tuple(grid_size)
        self.grid_size = tuple(int(v) for v in g)

    def build(self, input_shape):
        gh, gw = self.grid_size
        self.pos_embed = self.add_weight(
            name="pos_embed", shape=(1, gh, gw, input_shape[-1]),
            initializer=keras.initializers.TruncatedNormal(stddev=0.02))

    def resized(self, h, w):
        """The embedding at an ``h x w`` grid, ``(1, h, w, C)`` (ints or tensors)."""
        gh, gw = self.grid_size
        pos = ops.cast(self.pos_embed, self.compute_dtype)
        if isinstance(h, int) and isinstance(w, int):
            if (h, w) == (gh, gw):
                return pos
            ry = ops.convert_to_tensor(bilinear_resize_matrix(h, gh), pos.dtype)
            rx = ops.convert_to_tensor(bilinear_resize_matrix(w, gw), pos.dtype)
        else:
            ry = _bilinear_resize_matrix_ops(h, gh, pos.dtype)
            rx = _bilinear_resize_matrix_ops(w, gw, pos.dtype)
        c = pos.shape[-1]
        t = ops.matmul(ry, ops.reshape(pos, (gh, gw * c)))  # (h, gw*C)
        t = ops.transpose(ops.reshape(t, (-1, gw, c)), (1, 0, 2))  # (gw, h, C)
        t = ops.matmul(rx, ops.reshape(t, (gw, -1)))  # (w, h*C)
        t = ops.reshape(t, (ops.shape(t)[0], -1, c))  # (w, h, C)
        return ops.expand_dims(ops.transpose(t, (1, 0, 2)), 0)

    def call(self, x):
        h, w = x.shape[1], x.shape[2]
        if h is None or w is None:
            shape = ops.shape(x)
            h, w = shape[1], shape[2]
        return x + self.resized(h, w)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(grid_size=self.grid_size)
        return config


def _batch_norm(name):
    return keras.layers.BatchNormalization(epsilon=1e-5, momentum=0.9, name=name)


def inception_block(x, num_heads, attention_heads, pool_size, mlp_ratio, qkv_bias,
                    layer_scale, drop_path, name):
    """``x + [ls1 *] Mixer(LN(x))``, ``x + [ls2 *] Mlp(LN(x))``; ``layer_scale`` None
    means no layer scales (stages 1-2)."""
    dim = x.shape[-1]
    y = LayerNorm(epsilon=1e-6, name=f"{name}-norm1")(x)
    y = InceptionMixer(num_heads, attention_heads, pool_size, qkv_bias=qkv_bias,
                       name=f"{name}-attn")(y)
    if layer_scale is not None:
        y = Scale(layer_scale, name=f"{name}-layer_scale_1")(y)
    x = residual_add(x, y, drop_path, name, 1)
    y = LayerNorm(epsilon=1e-6, name=f"{name}-norm2")(x)
    y = Mlp(int(dim * mlp_ratio), name=f"{name}-mlp")(y)
    if layer_scale is not None:
        y = Scale(layer_scale, name=f"{name}-layer_scale_2")(y)
    return residual_add(x, y, drop_path, name, 2)


# --------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="visionzoo")
class InceptionTransformer(ZooBackbone):
    """Inception Transformer (sail-sg/iFormer) backbone/classifier.

    Args:
        embed_dims, depths, num_heads: lists per stage.
        attention_heads: list, one entry per block over *all* stages: the
            low-frequency (attention) heads of that block.
        img_size: int. The grid the positional embeddings are stored at
            (``img_size / 4`` in stage 1); other input sizes resize them.
        mlp_ratio: float.
        qkv_bias: bool.
        use_layer_scale: bool. Layer scales in stages 3-4 (never in 1-2).
        layer_scale_init_value: float.
        pool_sizes: list per stage. Low-frequency pooling (official: 2, 2, 1, 1).
        drop_path_rate: float. Linear over all blocks.
        head_dropout: float.
        include_top, num_classes, pooling, classifier_activation, input_shape,
        input_tensor, name: as in ``keras.applications``.
    """

    def __init__(self, embed_dims=(96, 192, 320, 384), depths=(3, 3, 9, 3),
                 num_heads=(3, 6, 10, 12),
                 attention_heads=(1,) * 3 + (3,) * 3 + (7,) * 4 + (9,) * 5 + (11,) * 3,
                 img_size=224, mlp_ratio=4.0, qkv_bias=True, use_layer_scale=True,
                 layer_scale_init_value=1e-6, pool_sizes=(2, 2, 1, 1), drop_path_rate=0.0,
                 head_dropout=0.0, include_top=True, num_classes=1000, pooling=None,
                 classifier_activation=None, input_shape=None, input_tensor=None,
                 name="inception_transformer", **kwargs):
        n = len(depths)
        if not (len(embed_dims) == len(num_heads) == len(pool_sizes) == n == 4):
            raise ValueError("embed_dims, depths, num_heads and pool_sizes need one entry "
                             "for each of the 4 stages.")
        if len(attention_heads) != sum(depths):
            raise ValueError(f"attention_heads needs one entry per block ({sum(depths)}), "
                             f"got {len(attention_heads)}.")
        inputs, x = self._make_input(input_shape, input_tensor, min_size=32)
        image_shape = tuple(x.shape[1:])

        x = PaddedConv2D(embed_dims[0] // 2, 3, strides=2, torch_padding=1,
                         name="patch_embed-proj1")(x)
        x = _batch_norm("patch_embed-norm1")(x)
        x = GELU(name="patch_embed-gelu1")(x)
        x = PaddedConv2D(embed_dims[0], 3, strides=2, torch_padding=1,
                         name="patch_embed-proj2")(x)
        x = _batch_norm("patch_embed-norm2")(x)

        total = sum(depths)
        grid = img_size // 4
        index = 0
        pyramid = {}
        for i in range(n):
            if i > 0:
                x = PaddedConv2D(embed_dims[i], 3, strides=2, torch_padding=1,
                                 name=f"patch_embed{i + 1}-proj")(x)
                x = _batch_norm(f"patch_embed{i + 1}-norm")(x)
                grid //= 2
            p = pool_sizes[i]
            for side, size in (("height", x.shape[1]), ("width", x.shape[2])):
                if size is not None and size % p:
                    raise ValueError(
                        f"Stage {i + 1} of the Inception Transformer pools by {p}, but its "
                        f"grid {side} is {size} (input shape {image_shape}); "
                        "use input sizes that are multiples of 16.")
            x = ResizablePositionEmbedding(grid, name=f"pos_embed{i + 1}")(x)
            scale = layer_scale_init_value if (use_layer_scale and i >= 2) else None
            for j in range(depths[i]):
                rate = drop_path_rate * index / max(total - 1, 1)
                x = inception_block(x, num_heads[i], attention_heads[index], p, mlp_ratio,
                                    qkv_bias, scale, rate, f"blocks{i + 1}-{j}")
                index += 1
            pyramid[f"P{i + 2}"] = x

        x = LayerNorm(epsilon=1e-6, name="norm")(x)
        if include_top:
            x = keras.layers.GlobalAveragePooling2D(name="avgpool")(x)
            x = build_classifier_top(x, num_classes, classifier_activation,
                                     dropout=head_dropout)
        else:
            x = build_classifier_top(x, None, None, pooling=pooling)

        super().__init__(inputs=inputs, outputs=x, name=name, **kwargs)
        self.pyramid_outputs = pyramid
        self.embed_dims = list(embed_dims)
        self.depths = list(depths)
        self.num_heads_per_stage = list(num_heads)
        self.attention_heads = list(attention_heads)
        self.img_size = img_size
        self.mlp_ratio = mlp_ratio
        self.qkv_bias = qkv_bias
        self.use_layer_scale = use_layer_scale
        self.layer_scale_init_value = layer_scale_init_value
        self.pool_sizes = list(pool_sizes)
        self.drop_path_rate = drop_path_rate
        self.head_dropout = head_dropout
        self._record_top_args(include_top, num_classes, pooling, classifier_activation,
                              input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            embed_dims=self.embed_dims, depths=self.depths,
            num_heads=self.num_heads_per_stage, attention_heads=self.attention_heads,
            img_size=self.img_size, mlp_ratio=self.mlp_ratio, qkv_bias=self.qkv_bias,
            use_layer_scale=self.use_layer_scale,
            layer_scale_init_value=self.layer_scale_init_value, pool_sizes=self.pool_sizes,
            drop_path_rate=self.drop_path_rate, head_dropout=self.head_dropout)
        return config

    @property
    def classifier_key(self):
        return "head.fc"


# --------------------------------------------------------------------------------------
# Variant table (data)
# --------------------------------------------------------------------------------------

_SIZES = {
    "small": {"embed_dims": [96, 192, 320, 384], "depths": [3, 3, 9, 3],
              "num_heads": [3, 6, 10, 12],
              "attention_heads": [1] * 3 + [3] * 3 + [7] * 4 + [9] * 5 + [11] * 3},
    "base": {"embed_dims": [96, 192, 384, 512], "depths": [4, 6, 14, 6],
             "num_heads": [3, 6, 12, 16],
             "attention_heads": [1] * 4 + [3] * 6 + [8] * 7 + [10] * 7 + [15] * 6},
    "large": {"embed_dims": [96, 192, 448, 640], "depths": [4, 6, 18, 8],
              "num_heads": [3, 6, 14, 20],
              "attention_heads": [1] * 4 + [3] * 6 + [10] * 9 + [12] * 9 + [19] * 8},
}
_COMMON = {"use_layer_scale": True, "layer_scale_init_value": 1e-6}
_STORE = "https://huggingface.co/sail/dl2/resolve/main/iformer"
_CODE = "https://github.com/sail-sg/iFormer/blob/main/models/inception_transformer.py"
_NOTE = ("sail-sg's Inception Transformer (iFormer, NeurIPS 2022), not timm's iformer_* "
         "(a different, later network).")
# Official README (params M, FLOPs G, ImageNet-1k top-1); the 224 px parameter counts
# are the factories' docstrings (19.866M, 47.866M, 86.637M), which the README rounds.
# (name, size, img_size, params_m, gflops, top1)
_TABLE = [
    ("inception_transformer_small", "small", 224, "19.866", 4.8, 83.4),
    ("inception_transformer_base", "base", 224, "47.866", 9.4, 84.6),
    ("inception_transformer_large", "large", 224, "86.637", 14.0, 84.8),
    ("inception_transformer_small_384", "small", 384, "20", 16.1, 84.6),
    ("inception_transformer_base_384", "base", 384, "48", 30.5, 85.7),
    ("inception_transformer_large_384", "large", 384, "87", 45.3, 85.8),
]
_OFFICIAL_NAMES = {name: "iformer_" + name[len("inception_transformer_"):]
                   for name, *_ in _TABLE}


def _variants():
    out = {}
    for name, size, img, params, gflops, top1 in _TABLE:
        official = _OFFICIAL_NAMES[name]
        out[name] = dict(
            config=dict(_SIZES[size], img_size=img, **_COMMON), input_size=img,
            crop_pct=1.0 if img == 384 else 0.9, interpolation="bicubic",
            weights={"in1k": {"url": f"{_STORE}/{official}.pth", "official_name": official}},
            code=_CODE, timm=None, license="apache-2.0",
            published={"params_m": params, "gmacs": gflops, "top1": top1},
            note=_NOTE)
    return out


VARIANTS = _variants()

MODEL_CLASS = InceptionTransformer
DISPLAY_NAMES = {"inception": "Inception"}
OFFICIAL_REPOS = ("sail-sg/iFormer",)
TIMM_NOTES = {name: ("sail-sg's Inception Transformer is not in timm (timm's iformer_* "
                     "is a different network); verify it against the official fixture "
                     "(../shared/parity/iformer_mini.npz).") for name in VARIANTS}


def application_name(model_name):
    """``inception_transformer_small_384`` -> ``InceptionTransformerSmall_384``."""
    out = ""
    for part in model_name.split("_"):
        out += f"_{part}" if part.isdigit() else part.capitalize()
    return out


def build(config, **kwargs):
    return InceptionTransformer(**config, **kwargs)


def classifier_key(config):
    return "head.fc"


# --------------------------------------------------------------------------------------
# Checkpoint key maps (data): sail-sg/iFormer -> ours
# --------------------------------------------------------------------------------------

KEY_MAPS = {
    "official": [
        (r"^(pos_embed\d)$", r"\1.pos_embed"),
        (r"\.(layer_scale_[12])$", r".\1.scale"),
        (r"^head\.", "head.fc."),
    ],
}
IGNORE_KEYS = (r"num_batches_tracked$",)


def detect_layout(keys):
    keys = set(keys)
    if "pos_embed1" in keys and any(k.startswith("blocks1.") for k in keys):
        return "official"
    return None


# --------------------------------------------------------------------------------------
# Official-constructor adapter
# --------------------------------------------------------------------------------------


def from_official_config(config):
    """Kwargs for :class:`InceptionTransformer` from ``InceptionTransformer(...)``
    constructor arguments (as the ``iformer_*`` factories pass them)."""
    c = dict(config)
    if c.get("in_chans", 3) != 3:
        raise ValueError("Only 3-channel official configs are supported.")
    for key in ("norm_layer", "act_layer", "embed_layer"):
        if c.get(key) is not None:
            raise ValueError(f"A custom {key} is not supported.")
    kwargs = {}
    for key in ("img_size", "embed_dims", "depths", "num_heads", "attention_heads",
                "mlp_ratio", "qkv_bias", "use_layer_scale", "layer_scale_init_value",
                "drop_path_rate", "num_classes"):
        if key in c:
            kwargs[key] = list(c[key]) if isinstance(c[key], (list, tuple)) else c[key]
    # The class's defaults where the factories pass nothing.
    kwargs.setdefault("use_layer_scale", False)
    kwargs.setdefault("layer_scale_init_value", 1e-5)
    return kwargs
