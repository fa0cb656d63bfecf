"""LITv2: Fast Vision Transformers with HiLo Attention (Pan et al., NeurIPS 2022).

Reference: ziplab/LITv2 ``classification/models/{litv2,layers,blocks,attentions,
patch_embed}.py`` (not in timm).

- Stem: 4x4/4 patch conv + LayerNorm.
- Stages 1-2: ``ConvFFNBlock`` = ``x + DWMlp(norm2(x))`` (no attention).
- Stages 3-4: ``Block`` = ``x + HiLo(norm1(x))``, ``x + DWMlp(norm2(x))``; stage 4 has
  window 1, i.e. plain global attention.
- ``DWMlp``: fc1 -> depthwise 3x3 conv (bias) -> GELU -> fc2.
- Between stages: deformable token merging (DTM) = DCNv1 2x2/2 (``conv_offset`` makes the
  offsets) -> BatchNorm -> GELU, at the *end* of stages 1-3.
- Head: LayerNorm, token mean, Linear.

Input sizes: the official model reshapes tokens with ``H = W = sqrt(N)``, so it only
runs square inputs. Ours works on maps and runs any height and width that are multiples
of 32 (every DTM halves an even grid and the stage-3 HiLo windows need an even grid);
on square inputs it computes exactly the official function. Batch is dynamic.

``pyramid_outputs`` P2..P5 are the outputs of each stage's last block, before its DTM.

The file reads top to bottom: family blocks -> model -> variant table -> key maps ->
official-constructor adapter.
"""

import keras

from visionzoo.backbones.base import ZooBackbone, build_classifier_top
from visionzoo.layers import GELU, LayerNorm, PaddedDepthwiseConv2D, residual_add
from visionzoo.layers.deformable import DeformableConv2D
from visionzoo.layers.hilo import HiLoAttention

# --------------------------------------------------------------------------------------
# Family blocks
# --------------------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="visionzoo")
class DWMlp(keras.layers.Layer):
    """``fc1 -> depthwise 3x3 (bias) -> GELU -> fc2`` on (B, H, W, C) maps.

    Args:
        hidden_dim: int.
        dropout: float.
    """

    def __init__(self, hidden_dim, dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        self.hidden_dim = hidden_dim
        self.dropout = dropout
        self.act = GELU(name="act")
        self.drop = keras.layers.Dropout(dropout, name="drop")
        # "dwconv-dwconv": the official module path is mlp.dwconv.dwconv.
        self.dwconv = PaddedDepthwiseConv2D(3, torch_padding=1, use_bias=True,
                                            name="dwconv-dwconv")

    def build(self, input_shape):
        dim = input_shape[-1]
        hidden = tuple(input_shape[:-1]) + (self.hidden_dim,)
        self.fc1 = keras.layers.Dense(self.hidden_dim, name="fc1")
        self.fc2 = keras.layers.Dense(dim, name="fc2")
        self.fc1.build(input_shape)
        self.dwconv.build(hidden)
        self.fc2.build(hidden)

    def call(self, x, training=None):
        x = self.drop(self.act(self.dwconv(self.fc1(x))), training=training)
        return self.drop(self.fc2(x), training=training)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(hidden_dim=self.hidden_dim, dropout=self.dropout)
        return config


@keras.saving.register_keras_serializable(package="visionzoo")
class DeformableTokenMerging(keras.layers.Layer):
    """DTM: ``DCNv1(C -> out, k2 s2) -> BatchNorm (eps 1e-5) -> GELU``.

    Args:
        out_dim: int.
    """

    def __init__(self, out_dim, **kwargs):
        super().__init__(**kwargs)
        self.out_dim = out_dim
        self.dconv = DeformableConv2D(out_dim, 2, strides=2, padding=0, name="dconv")
        self.norm_layer = keras.layers.BatchNormalization(epsilon=1e-5, momentum=0.9,
                                                          name="norm_layer")
        self.act = GELU(name="act_layer")

    def build(self, input_shape):
        h, w = input_shape[1], input_shape[2]
        if h is None or w is None or h % 2 or w % 2:
            raise ValueError(f"Deformable token merging needs an even, static grid; got "
                             f"{h}x{w} (LITv2 inputs must be multiples of 32).")
        self.dconv.build(input_shape)
        self.norm_layer.build((None, h // 2, w // 2, self.out_dim))

    def call(self, x, training=None):
        return self.act(self.norm_layer(self.dconv(x), training=training))

    def compute_output_shape(self, input_shape):
        b, h, w, _ = input_shape
        return (b, h // 2, w // 2, self.out_dim)

    def get_config(self):
        config = super().get_config()
        config.update(out_dim=self.out_dim)
        return config


def lit_block(x, has_msa, num_heads, window_size, alpha, mlp_ratio, qkv_bias, drop_path,
              name):
    """``Block`` (HiLo + DWMlp) or ``ConvFFNBlock`` (DWMlp only)."""
    dim = x.shape[-1]
    if has_msa:
        y = LayerNorm(epsilon=1e-5, name=f"{name}-norm1")(x)
        y = HiLoAttention(num_heads, window_size, alpha, qkv_bias=qkv_bias,
                          name=f"{name}-attn")(y)
        x = residual_add(x, y, drop_path, name, 1)
    y = LayerNorm(epsilon=1e-5, name=f"{name}-norm2")(x)
    y = DWMlp(int(dim * mlp_ratio), name=f"{name}-mlp")(y)
    return residual_add(x, y, drop_path, name, 2)


# --------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="visionzoo")
class LITv2(ZooBackbone):
    """LITv2 backbone/classifier.

    Args:
        embed_dim: int. Stage-1 channels (doubled by every DTM).
        depths, num_heads: lists per stage.
        alpha: float. Share of Lo-Fi heads in HiLo.
        local_ws: list per stage. HiLo window (1 = global attention; unused where
            ``has_msa`` is 0).
        has_msa: list of 0/1 per stage: HiLo blocks (1) or ConvFFN blocks (0).
        mlp_ratio: float.
        qkv_bias: bool.
        patch_size: int.
        drop_path_rate: float. Linear over all blocks.
        head_dropout: float.
        include_top, num_classes, pooling, classifier_activation, input_shape,
        input_tensor, name: as in ``keras.applications``.
    """

    def __init__(self, embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), alpha=0.9,
                 local_ws=(0, 0, 2, 1), has_msa=(0, 0, 1, 1), mlp_ratio=4.0, qkv_bias=True,
                 patch_size=4, drop_path_rate=0.0, head_dropout=0.0, include_top=True,
                 num_classes=1000, pooling=None, classifier_activation=None,
                 input_shape=None, input_tensor=None, name="litv2", **kwargs):
        n = len(depths)
        if not (len(num_heads) == len(local_ws) == len(has_msa) == n):
            raise ValueError("depths, num_heads, local_ws and has_msa need one entry per "
                             "stage.")
        multiple = patch_size * 2 ** (n - 1)
        shape = tuple(input_shape) if input_shape is not None else (224, 224, 3)
        if input_tensor is None and (shape[0] is None or shape[1] is None):
            shape = (shape[0] or 224, shape[1] or 224, shape[2])  # DTM needs static grids
        inputs, x = self._make_input(shape, input_tensor, min_size=multiple)
        h, w = x.shape[1], x.shape[2]
        if h is None or w is None or h % multiple or w % multiple:
            raise ValueError(f"LITv2 needs a static input height and width that are "
                             f"multiples of {multiple}; got {h}x{w}.")

        x = keras.layers.Conv2D(embed_dim, patch_size, strides=patch_size,
                                name="patch_embed-proj")(x)
        x = LayerNorm(epsilon=1e-5, name="patch_embed-norm")(x)
        total = sum(depths)
        index = 0
        pyramid = {}
        for i in range(n):
            for j in range(depths[i]):
                rate = drop_path_rate * index / max(total - 1, 1)
                x = lit_block(x, bool(has_msa[i]), num_heads[i], local_ws[i], alpha,
                              mlp_ratio, qkv_bias, rate, f"layers-{i}-blocks-{j}")
                index += 1
            pyramid[f"P{i + 2}"] = x
            if i < n - 1:
                x = DeformableTokenMerging(2 * x.shape[-1], name=f"layers-{i}-downsample")(x)

        x = LayerNorm(epsilon=1e-5, name="norm")(x)
        if include_top:
            x = keras.layers.GlobalAveragePooling2D(name="avgpool")(x)
            x = build_classifier_top(x, num_classes, classifier_activation,
                                     dropout=head_dropout)
        else:
            x = build_classifier_top(x, None, None, pooling=pooling)

        super().__init__(inputs=inputs, outputs=x, name=name, **kwargs)
        self.pyramid_outputs = pyramid
        self.embed_dim = embed_dim
        self.depths = list(depths)
        self.num_heads_per_stage = list(num_heads)
        self.alpha = alpha
        self.local_ws = list(local_ws)
        self.has_msa = list(has_msa)
        self.mlp_ratio = mlp_ratio
        self.qkv_bias = qkv_bias
        self.patch_size = patch_size
        self.drop_path_rate = drop_path_rate
        self.head_dropout = head_dropout
        self._record_top_args(include_top, num_classes, pooling, classifier_activation,
                              input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(embed_dim=self.embed_dim, depths=self.depths,
                      num_heads=self.num_heads_per_stage, alpha=self.alpha,
                      local_ws=self.local_ws, has_msa=self.has_msa, mlp_ratio=self.mlp_ratio,
                      qkv_bias=self.qkv_bias, patch_size=self.patch_size,
                      drop_path_rate=self.drop_path_rate, head_dropout=self.head_dropout)
        return config

    @property
    def classifier_key(self):
        return "head.fc"


# --------------------------------------------------------------------------------------
# Variant table (data)
# --------------------------------------------------------------------------------------

_COMMON = {"alpha": 0.9, "local_ws": [0, 0, 2, 1], "has_msa": [0, 0, 1, 1]}
_SIZES = {
    "s": {"embed_dim": 96, "depths": [2, 2, 6, 2], "num_heads": [3, 6, 12, 24]},
    "m": {"embed_dim": 96, "depths": [2, 2, 18, 2], "num_heads": [3, 6, 12, 24]},
    "b": {"embed_dim": 128, "depths": [2, 2, 18, 2], "num_heads": [4, 8, 16, 32]},
}
_RELEASE = "https://github.com/ziplab/LITv2/releases/download/v1.0"
_CODE = "https://github.com/ziplab/LITv2/blob/main/classification/models/litv2.py"
# Official README: params (M), GFLOPs, ImageNet-1k top-1.
_PUBLISHED = {"litv2_s": ("28", 3.7, 82.0), "litv2_m": ("49", 7.5, 83.3),
              "litv2_b": ("87", 13.2, 83.6), "litv2_b_384": ("87", 39.7, 84.7)}


def _variants():
    out = {}
    for name, (params, gflops, top1) in _PUBLISHED.items():
        size = name.split("_")[1]
        img = 384 if name.endswith("_384") else 224
        out[name] = dict(
            config=dict(_SIZES[size], **_COMMON), input_size=img,
            crop_pct=1.0 if img == 384 else 0.875,
            weights={"in1k": {"url": f"{_RELEASE}/{name}.pth"}},
            code=_CODE, timm=None, license="apache-2.0",
            published={"params_m": params, "gmacs": gflops, "top1": top1})
    return out


VARIANTS = _variants()

MODEL_CLASS = LITv2
DISPLAY_NAMES = {"litv2": "LITv2"}
OFFICIAL_REPOS = ("ziplab/LITv2",)
TIMM_NOTES = {name: "LITv2 is not in timm; verify it against the official fixture "
                    "(../shared/parity/litv2_mini.npz)." for name in VARIANTS}


def build(config, **kwargs):
    return LITv2(**config, **kwargs)


def classifier_key(config):
    return "head.fc"


# --------------------------------------------------------------------------------------
# Checkpoint key maps (data): ziplab/LITv2 -> ours
# --------------------------------------------------------------------------------------

KEY_MAPS = {
    "official": [(r"^head\.", "head.fc.")],
}
IGNORE_KEYS = (r"num_batches_tracked$",)


def detect_layout(keys):
    keys = set(keys)
    if any(k.startswith("patch_embed.") for k in keys) and any(
            ".dconv." in k or ".attn.l_q." in k for k in keys):
        return "official"
    return None


# --------------------------------------------------------------------------------------
# Official-constructor adapter
# --------------------------------------------------------------------------------------


def from_official_config(config):
    """Kwargs for :class:`LITv2` from ``LITv2(...)`` constructor arguments."""
    c = dict(config)
    if c.get("ape"):
        raise ValueError("Absolute position embeddings (ape=True) are not supported.")
    if not c.get("patch_norm", True):
        raise ValueError("patch_norm=False is not supported.")
    if c.get("qk_scale") not in (None, 0):
        raise ValueError("A custom qk_scale is not supported.")
    kwargs = {}
    for key in ("embed_dim", "depths", "num_heads", "alpha", "local_ws", "has_msa",
                "mlp_ratio", "qkv_bias", "patch_size", "num_classes"):
        if key in c:
            kwargs[key] = list(c[key]) if isinstance(c[key], (list, tuple)) else c[key]
    return kwargs
