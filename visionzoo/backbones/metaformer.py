"""MetaFormer family: PoolFormer v1, PoolFormerV2, IdentityFormer, RandFormer,
ConvFormer and CAFormer.

References:
- PoolFormer v1: sail-sg/poolformer ``models/poolformer.py`` (Yu et al., CVPR 2022).
- Baselines: sail-sg/metaformer ``metaformer_baselines.py`` (Yu et al., TPAMI 2023).

Numerics follow the official code (not timm where they differ):
- PoolFormer v1 normalises the final *map* with GroupNorm(1, eps 1e-5) and then pools;
  timm pools first and applies a LayerNorm, which is a different function.
- ConvFormer/CAFormer ``MlpHead`` uses LayerNorm eps 1e-5 (timm: 1e-6).

Layer names follow timm's module paths (``stem.conv``, ``stages.1.downsample.norm``,
``stages.2.blocks.0.token_mixer.qkv``, ``head.fc``), so a timm state dict maps
one-to-one and the official layouts are renamed by the key maps at the bottom.

The file reads top to bottom: family-only layers -> block -> model -> variant table
-> checkpoint key maps -> official-constructor adapter.
"""

import re

import keras
from keras import ops

from visionzoo.backbones.base import ZooBackbone, build_classifier_top
from visionzoo.layers import (
    AvgPool2DNoPadCount,
    ConvDownsample,
    DropPath,
    Mlp,
    MlpHead,
    MultiHeadSelfAttention,
    PaddedDepthwiseConv2D,
    Scale,
    StarReLU,
)
from visionzoo.layers._util import make_norm

# --------------------------------------------------------------------------------------
# Family-only token mixers
# --------------------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="visionzoo")
class PoolingMixer(keras.layers.Layer):
    """PoolFormer token mixer: ``avgpool3x3(x) - x`` with ``count_include_pad=False``.

    Args:
        pool_size: int.
    """

    def __init__(self, pool_size=3, **kwargs):
        super().__init__(**kwargs)
        self.pool_size = pool_size
        self.pool = AvgPool2DNoPadCount(pool_size, strides=1, padding=pool_size // 2,
                                        name="pool")

    def build(self, input_shape):
        self.pool.build(input_shape)

    def call(self, x):
        return self.pool(x) - x

    def get_config(self):
        config = super().get_config()
        config.update(pool_size=self.pool_size)
        return config


@keras.saving.register_keras_serializable(package="visionzoo")
class RandomMixing(keras.layers.Layer):
    """RandFormer token mixer: a frozen (N, N) matrix mixing the N = H*W tokens.

    The matrix is part of the checkpoint (a frozen parameter), so it pins the grid:
    stage 3 has 14x14 and stage 4 7x7 tokens at 224 px.

    Args:
        num_tokens: int. N.
    """

    def __init__(self, num_tokens, **kwargs):
        super().__init__(**kwargs)
        self.num_tokens = num_tokens

    def build(self, input_shape):
        h, w = input_shape[1], input_shape[2]
        if h is None or w is None or h * w != self.num_tokens:
            raise ValueError(
                f"RandomMixing has a fixed {self.num_tokens}-token matrix but this stage "
                f"sees a {h}x{w} grid. RandFormer runs only at the input size its "
                "matrices were made for (224x224 for the published variants).")
        self.random_matrix = self.add_weight(
            name="random_matrix", shape=(self.num_tokens, self.num_tokens),
            initializer=_row_softmax_uniform, trainable=False)

    def call(self, x):
        shape = ops.shape(x)
        tokens = ops.reshape(x, (shape[0], self.num_tokens, shape[3]))
        mixed = ops.matmul(ops.cast(self.random_matrix, x.dtype), tokens)
        return ops.reshape(mixed, shape)

    def get_config(self):
        config = super().get_config()
        config.update(num_tokens=self.num_tokens)
        return config


def _row_softmax_uniform(shape, dtype=None):
    """The official init: softmax over rows of U(0, 1) noise."""
    return ops.softmax(keras.random.uniform(shape, dtype=dtype or "float32"), axis=-1)


@keras.saving.register_keras_serializable(package="visionzoo")
class SepConv(keras.layers.Layer):
    """ConvFormer token mixer (inverted separable conv, MobileNetV2 style).

    ``pwconv1 (2x, no bias) -> StarReLU -> depthwise 7x7 (no bias) -> pwconv2``.

    Args:
        expansion_ratio: float.
        kernel_size: int.
    """

    def __init__(self, expansion_ratio=2, kernel_size=7, **kwargs):
        super().__init__(**kwargs)
        self.expansion_ratio = expansion_ratio
        self.kernel_size = kernel_size
        self.act1 = StarReLU(name="act1")
        self.dwconv = PaddedDepthwiseConv2D(kernel_size, torch_padding=kernel_size // 2,
                                            use_bias=False, name="dwconv")

    def build(self, input_shape):
        dim = input_shape[-1]
        med = int(self.expansion_ratio * dim)
        self.pwconv1 = keras.layers.Dense(med, use_bias=False, name="pwconv1")
        self.pwconv2 = keras.layers.Dense(dim, use_bias=False, name="pwconv2")
        self.pwconv1.build(input_shape)
        med_shape = tuple(input_shape[:-1]) + (med,)
        self.act1.build(med_shape)
        self.dwconv.build(med_shape)
        self.pwconv2.build(med_shape)

    def call(self, x):
        return self.pwconv2(self.dwconv(self.act1(self.pwconv1(x))))

    def get_config(self):
        config = super().get_config()
        config.update(expansion_ratio=self.expansion_ratio, kernel_size=self.kernel_size)
        return config


# --------------------------------------------------------------------------------------
# Block and stage
# --------------------------------------------------------------------------------------

MIXERS = ("identity", "pooling", "random", "sepconv", "attention")


def _token_mixer(kind, x, name):
    if kind == "identity":
        return x
    if kind == "pooling":
        return PoolingMixer(3, name=name)(x)
    if kind == "random":
        return RandomMixing(int(x.shape[1]) * int(x.shape[2]) if x.shape[1] else -1,
                            name=name)(x)
    if kind == "sepconv":
        return SepConv(name=name)(x)
    if kind == "attention":
        dim = x.shape[-1]
        return MultiHeadSelfAttention(max(dim // 32, 1), 32, name=name)(x)
    raise ValueError(f"Unknown token mixer {kind!r}; expected one of {MIXERS}.")


def _residual(x, branch, layer_scale, res_scale, drop_path, name, index):
    if drop_path:
        branch = DropPath(drop_path, name=f"{name}-drop_path{index}")(branch)
    if layer_scale is not None:
        branch = Scale(layer_scale, name=f"{name}-layer_scale{index}")(branch)
    if res_scale is not None:
        x = Scale(res_scale, name=f"{name}-res_scale{index}")(x)
    return keras.layers.Add(name=f"{name}-add{index}")([x, branch])


def metaformer_block(x, mixer, norm, mlp_ratio, mlp_act, mlp_bias, layer_scale,
                     res_scale, drop_path, name):
    """``x = res(x) + ls(mixer(norm1(x)))``; ``x = res(x) + ls(mlp(norm2(x)))``."""
    dim = x.shape[-1]
    y = make_norm(norm, f"{name}-norm1")(x)
    y = _token_mixer(mixer, y, f"{name}-token_mixer")
    x = _residual(x, y, layer_scale, res_scale, drop_path, name, 1)
    y = make_norm(norm, f"{name}-norm2")(x)
    y = Mlp(int(mlp_ratio * dim), activation=mlp_act, use_bias=mlp_bias,
            name=f"{name}-mlp")(y)
    return _residual(x, y, layer_scale, res_scale, drop_path, name, 2)


# --------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------

_LN_NO_BIAS = {"type": "layernorm", "epsilon": 1e-6, "center": False}


@keras.saving.register_keras_serializable(package="visionzoo")
class MetaFormer(ZooBackbone):
    """MetaFormer backbone/classifier (PoolFormer v1 and the MetaFormer baselines).

    Args:
        depths: list of int. Blocks per stage.
        dims: list of int. Channels per stage.
        token_mixers: str or list of str per stage: "identity", "pooling", "random",
            "sepconv", "attention".
        block_norm: dict. Norm spec of the blocks: ``{"type": "groupnorm1"|"layernorm",
            "epsilon", "center"}``.
        mlp_act: str. "star_relu" (baselines) or "gelu" (PoolFormer v1).
        mlp_bias: bool.
        mlp_ratio: float.
        layer_scale_init_values: float, None or list per stage.
        res_scale_init_values: float, None or list per stage.
        stem_norm: dict or None. Norm after the stem conv.
        downsample_norm: dict or None. Norm before each downsampling conv.
        head_style: "v1" (GroupNorm on the map, then mean, then Linear), "linear"
            (mean, LayerNorm, Linear) or "mlp" (mean, LayerNorm, MlpHead).
        head_norm_epsilon: float. Epsilon of the MlpHead LayerNorm (official 1e-5).
        drop_path_rate: float. Stochastic depth, linear in block index.
        head_dropout: float.
        include_top, num_classes, pooling, classifier_activation, input_shape,
        input_tensor, name: as in ``keras.applications``.
    """

    def __init__(self, depths, dims, token_mixers="pooling", block_norm=None,
                 mlp_act="star_relu", mlp_bias=False, mlp_ratio=4,
                 layer_scale_init_values=None, res_scale_init_values=(None, None, 1.0, 1.0),
                 stem_norm=_LN_NO_BIAS, downsample_norm=_LN_NO_BIAS, head_style="linear",
                 head_norm_epsilon=1e-5, drop_path_rate=0.0, head_dropout=0.0,
                 include_top=True, num_classes=1000, pooling=None,
                 classifier_activation=None, input_shape=(None, None, 3),
                 input_tensor=None, name="metaformer", **kwargs):
        num_stages = len(depths)
        if len(dims) != num_stages:
            raise ValueError(f"depths ({len(depths)}) and dims ({len(dims)}) differ in length.")
        mixers = _per_stage(token_mixers, num_stages)
        layer_scales = _per_stage(layer_scale_init_values, num_stages)
        res_scales = _per_stage(res_scale_init_values, num_stages)
        block_norm = block_norm or {"type": "groupnorm1", "epsilon": 1e-6, "center": False}
        if head_style not in ("v1", "linear", "mlp"):
            raise ValueError(f"head_style must be 'v1', 'linear' or 'mlp', got {head_style!r}.")

        inputs, x = self._make_input(input_shape, input_tensor, min_size=32)
        total = sum(depths)
        x = ConvDownsample(dims[0], 7, 4, 2, post_norm=stem_norm, name="stem")(x)
        pyramid = {}
        block_index = 0
        for i, (depth, dim) in enumerate(zip(depths, dims)):
            if i > 0:
                x = ConvDownsample(dim, 3, 2, 1, pre_norm=downsample_norm,
                                   name=f"stages-{i}-downsample")(x)
            for j in range(depth):
                rate = drop_path_rate * block_index / max(total - 1, 1)
                x = metaformer_block(
                    x, mixers[i], block_norm, mlp_ratio, mlp_act, mlp_bias,
                    layer_scales[i], res_scales[i], rate, f"stages-{i}-blocks-{j}")
                block_index += 1
            pyramid[f"P{i + 2}"] = x

        if include_top:
            if head_style == "v1":
                x = make_norm({"type": "groupnorm1", "epsilon": 1e-5}, "head-norm")(x)
                x = keras.layers.GlobalAveragePooling2D(name="head-global_pool")(x)
            else:
                x = keras.layers.GlobalAveragePooling2D(name="head-global_pool")(x)
                x = make_norm({"type": "layernorm", "epsilon": 1e-6}, "head-norm")(x)
            if head_style == "mlp":
                x = MlpHead(num_classes, int(mlp_ratio * dims[-1]),
                            norm_epsilon=head_norm_epsilon, dropout=head_dropout,
                            name="head-fc")(x)
                x = build_classifier_top(x, None, classifier_activation)
            else:
                x = build_classifier_top(x, num_classes, classifier_activation,
                                         dropout=head_dropout)
        else:
            x = build_classifier_top(x, None, None, pooling=pooling)

        super().__init__(inputs=inputs, outputs=x, name=name, **kwargs)
        self.pyramid_outputs = pyramid
        self.depths = list(depths)
        self.dims = list(dims)
        self.token_mixers = _as_list(token_mixers)
        self.block_norm = block_norm
        self.mlp_act = mlp_act
        self.mlp_bias = mlp_bias
        self.mlp_ratio = mlp_ratio
        self.layer_scale_init_values = _as_list(layer_scale_init_values)
        self.res_scale_init_values = _as_list(res_scale_init_values)
        self.stem_norm = stem_norm
        self.downsample_norm = downsample_norm
        self.head_style = head_style
        self.head_norm_epsilon = head_norm_epsilon
        self.drop_path_rate = drop_path_rate
        self.head_dropout = head_dropout
        self._record_top_args(include_top, num_classes, pooling, classifier_activation,
                              input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            depths=self.depths, dims=self.dims, token_mixers=self.token_mixers,
            block_norm=self.block_norm, mlp_act=self.mlp_act, mlp_bias=self.mlp_bias,
            mlp_ratio=self.mlp_ratio, layer_scale_init_values=self.layer_scale_init_values,
            res_scale_init_values=self.res_scale_init_values, stem_norm=self.stem_norm,
            downsample_norm=self.downsample_norm, head_style=self.head_style,
            head_norm_epsilon=self.head_norm_epsilon, drop_path_rate=self.drop_path_rate,
            head_dropout=self.head_dropout)
        return config

    @property
    def classifier_key(self):
        """Checkpoint-key prefix of the final classifier (skipped for other class counts)."""
        return classifier_key({"head_style": self.head_style})


def _as_list(value):
    return list(value) if isinstance(value, tuple) else value


def _per_stage(value, n):
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"Expected {n} per-stage values, got {list(value)}.")
        return list(value)
    return [value] * n


# --------------------------------------------------------------------------------------
# Variant table (data)
# --------------------------------------------------------------------------------------

_GN1_NO_BIAS = {"type": "groupnorm1", "epsilon": 1e-6, "center": False}
_LN_NO_BIAS_BLOCK = {"type": "layernorm", "epsilon": 1e-6, "center": False}

_S = {"dims": [64, 128, 320, 512]}
_M = {"dims": [96, 192, 384, 768]}
_SIZES_V1 = {  # PoolFormer sizes (also IdentityFormer/RandFormer/PoolFormerV2)
    "s12": dict(_S, depths=[2, 2, 6, 2]),
    "s24": dict(_S, depths=[4, 4, 12, 4]),
    "s36": dict(_S, depths=[6, 6, 18, 6]),
    "m36": dict(_M, depths=[6, 6, 18, 6]),
    "m48": dict(_M, depths=[8, 8, 24, 8]),
}
_SIZES_CA = {  # ConvFormer / CAFormer sizes
    "s18": {"depths": [3, 3, 9, 3], "dims": [64, 128, 320, 512]},
    "s36": {"depths": [3, 12, 18, 3], "dims": [64, 128, 320, 512]},
    "m36": {"depths": [3, 12, 18, 3], "dims": [96, 192, 384, 576]},
    "b36": {"depths": [3, 12, 18, 3], "dims": [128, 256, 512, 768]},
}

_POOLFORMER_V1 = dict(
    token_mixers="pooling",
    block_norm={"type": "groupnorm1", "epsilon": 1e-5, "center": True},
    mlp_act="gelu", mlp_bias=True, res_scale_init_values=None,
    stem_norm=None, downsample_norm=None, head_style="v1")
_BASELINE_GN = dict(block_norm=_GN1_NO_BIAS, head_style="linear")
_BASELINE_LN = dict(block_norm=_LN_NO_BIAS_BLOCK, head_style="mlp")

_HF = "https://huggingface.co/sail/dl/resolve/main"
_GH_V1 = "https://github.com/sail-sg/poolformer/releases/download/v1.0"
_MF_CODE = "https://github.com/sail-sg/metaformer/blob/main/metaformer_baselines.py"
_PF_CODE = "https://github.com/sail-sg/poolformer/blob/main/models/poolformer.py"

# Published ImageNet-1k numbers from the official READMEs:
# (params in M as printed there, so its precision is the test's; GMACs at the default
# size; top-1 %). RandFormer prints "trainable + frozen random matrices".
_PUBLISHED = {
    "poolformer_s12": ("12", 1.8, 77.2), "poolformer_s24": ("21", 3.4, 80.3),
    "poolformer_s36": ("31", 5.0, 81.4), "poolformer_m36": ("56", 8.8, 82.1),
    "poolformer_m48": ("73", 11.6, 82.5),
    "identityformer_s12": ("11.9", 1.8, 74.6), "identityformer_s24": ("21.3", 3.4, 78.2),
    "identityformer_s36": ("30.8", 5.0, 79.3), "identityformer_m36": ("56.1", 8.8, 80.0),
    "identityformer_m48": ("73.3", 11.5, 80.4),
    "randformer_s12": ("11.9+0.2", 1.9, 76.6), "randformer_s24": ("21.3+0.5", 3.5, 78.2),
    "randformer_s36": ("30.8+0.7", 5.2, 79.5), "randformer_m36": ("56.1+0.7", 9.0, 81.2),
    "randformer_m48": ("73.3+0.9", 11.9, 81.4),
    "poolformerv2_s12": ("11.9", 1.8, 78.0), "poolformerv2_s24": ("21.3", 3.4, 80.7),
    "poolformerv2_s36": ("30.8", 5.0, 81.6), "poolformerv2_m36": ("56.1", 8.8, 82.2),
    "poolformerv2_m48": ("73.3", 11.5, 82.6),
    "convformer_s18": ("27", 3.9, 83.0), "convformer_s36": ("40", 7.6, 84.1),
    "convformer_m36": ("57", 12.8, 84.5), "convformer_b36": ("100", 22.6, 84.8),
    "caformer_s18": ("26", 4.1, 83.6), "caformer_s36": ("39", 8.0, 84.5),
    "caformer_m36": ("56", 13.2, 85.2), "caformer_b36": ("99", 23.2, 85.5),
    "convformer_s18_384": ("27", 11.6, 84.4), "convformer_s36_384": ("40", 22.4, 85.4),
    "convformer_m36_384": ("57", 37.7, 85.6), "convformer_b36_384": ("100", 66.5, 85.7),
    "caformer_s18_384": ("26", 13.4, 85.0), "caformer_s36_384": ("39", 26.0, 85.7),
    "caformer_m36_384": ("56", 42.0, 86.2), "caformer_b36_384": ("99", 72.2, 86.4),
}


def _variants():
    out = {}
    for size, arch in _SIZES_V1.items():
        ls = 1e-5 if size in ("s12", "s24") else 1e-6
        out[f"poolformer_{size}"] = dict(
            config=dict(arch, **_POOLFORMER_V1, layer_scale_init_values=ls),
            crop_pct=0.9 if size.startswith("s") else 0.95,
            weights={"in1k": {"url": f"{_GH_V1}/poolformer_{size}.pth.tar"}},
            code=_PF_CODE, timm=None)
        for sub, mixer in (("identityformer", "identity"), ("randformer", "random"),
                           ("poolformerv2", "pooling")):
            mixers = (["identity", "identity", "random", "random"]
                      if mixer == "random" else mixer)
            out[f"{sub}_{size}"] = dict(
                config=dict(arch, **_BASELINE_GN, token_mixers=mixers),
                crop_pct=1.0,
                weights={"in1k": {"url": f"{_HF}/{sub}/{sub}_{size}.pth"}},
                code=_MF_CODE, timm=f"{sub}_{size}" if sub == "poolformerv2" else None,
                fixed_input_size=mixer == "random")
    for size, arch in _SIZES_CA.items():
        for sub, mixers in (("convformer", "sepconv"),
                            ("caformer", ["sepconv", "sepconv", "attention", "attention"])):
            base = f"{sub}_{size}"
            config = dict(arch, **_BASELINE_LN, token_mixers=mixers)
            out[base] = dict(
                config=config, crop_pct=1.0, code=_MF_CODE, timm=base,
                weights={
                    "in1k": {"url": f"{_HF}/{sub}/{base}.pth"},
                    "in21ft1k": {"url": f"{_HF}/{sub}/{base}_in21ft1k.pth"},
                    "in21k": {"url": f"{_HF}/{sub}/{base}_in21k.pth", "num_classes": 21841},
                })
            out[f"{base}_384"] = dict(
                config=config, crop_pct=1.0, code=_MF_CODE, timm=base, input_size=384,
                weights={
                    "in1k": {"url": f"{_HF}/{sub}/{base}_384.pth"},
                    "in21ft1k": {"url": f"{_HF}/{sub}/{base}_384_in21ft1k.pth"},
                })
    for name, spec in out.items():
        params, macs, top1 = _PUBLISHED[name]
        spec["published"] = {"params_m": params, "gmacs": macs, "top1": top1}
    return out


VARIANTS = _variants()


MODEL_CLASS = MetaFormer
# CamelCase spellings for visionzoo.applications (name prefix -> class-style prefix).
DISPLAY_NAMES = {"poolformer": "PoolFormer", "poolformerv2": "PoolFormerV2",
                 "identityformer": "IdentityFormer", "randformer": "RandFormer",
                 "convformer": "ConvFormer", "caformer": "CAFormer"}
OFFICIAL_REPOS = ("sail-sg/poolformer", "sail-sg/metaformer")
TIMM_NOTES = {name: (
    "timm's poolformer v1 pools before its final norm (LayerNorm on the pooled vector) "
    "where the official model applies GroupNorm to the map and then pools; the two "
    "compute different functions, and visionzoo follows the official one. Verify it "
    "against the official fixture instead.") for name in VARIANTS if name.startswith("poolformer_")}


def build(config, **kwargs):
    """Builder used by the registry: ``config`` is a VARIANTS entry's ``config``."""
    return MetaFormer(**config, **kwargs)


def classifier_key(config):
    """Canonical name of the final classifier layer for a model ``config``."""
    return "head.fc.fc2" if config.get("head_style") == "mlp" else "head.fc"


def timm_overrides(config):
    """Constructor changes that make our model compute timm's function exactly."""
    return {"head_norm_epsilon": 1e-6} if config.get("head_style") == "mlp" else {}


# --------------------------------------------------------------------------------------
# Checkpoint key maps (data): official layouts -> our (timm-style) names.
# Applied in order; the first matching pattern renames a key. Tensor layouts
# (conv/linear transposes) are inferred by the conversion engine from the target.
# --------------------------------------------------------------------------------------

KEY_MAPS = {
    # sail-sg/metaformer (IdentityFormer, RandFormer, PoolFormerV2, ConvFormer, CAFormer)
    "official": [
        (r"^downsample_layers\.0\.conv\.", "stem.conv."),
        (r"^downsample_layers\.0\.post_norm\.", "stem.norm."),
        (r"^downsample_layers\.(\d+)\.pre_norm\.", r"stages.\1.downsample.norm."),
        (r"^downsample_layers\.(\d+)\.conv\.", r"stages.\1.downsample.conv."),
        (r"^stages\.(\d+)\.(\d+)\.", r"stages.\1.blocks.\2."),
        (r"^norm\.", "head.norm."),
        (r"^head\.", "head.fc."),
    ],
    # sail-sg/poolformer v1: network.{0,2,4,6} are stages, network.{1,3,5} downsamples.
    "official_v1": [
        (r"^patch_embed\.proj\.", "stem.conv."),
        (r"^network\.(\d+)\.proj\.", lambda m: f"stages.{(int(m[1]) + 1) // 2}.downsample.conv."),
        (r"^network\.(\d+)\.(\d+)\.layer_scale_(\d)$",
         lambda m: f"stages.{int(m[1]) // 2}.blocks.{m[2]}.layer_scale{m[3]}.scale"),
        (r"^network\.(\d+)\.(\d+)\.", lambda m: f"stages.{int(m[1]) // 2}.blocks.{m[2]}."),
        (r"^norm\.", "head.norm."),
        (r"^head\.", "head.fc."),
    ],
    # timm: our names already.
    "timm": [],
}


def detect_layout(keys):
    """Name the checkpoint layout from its keys (None if it is none of ours)."""
    keys = set(keys)
    if any(k.startswith("network.") or k.startswith("patch_embed.") for k in keys):
        return "official_v1"
    if any(k.startswith("downsample_layers.") for k in keys):
        return "official"
    if any(k.startswith("stem.") for k in keys):
        return "timm"
    return None


# --------------------------------------------------------------------------------------
# Official-constructor adapter: PoolFormer(...) / MetaFormer(...) arguments -> ours.
# --------------------------------------------------------------------------------------

_MIXER_NAMES = {"Identity": "identity", "Pooling": "pooling", "RandomMixing": "random",
                "SepConv": "sepconv", "Attention": "attention"}


def from_official_config(config):
    """Build kwargs for :class:`MetaFormer` from an official constructor's arguments.

    Accepts ``PoolFormer(layers, embed_dims, mlp_ratios, downsamples,
    layer_scale_init_value, num_classes, ...)`` and ``MetaFormer(depths, dims,
    token_mixers, norm_layers, head_fn, num_classes, ...)`` argument dicts. Module
    arguments may be given as their source text (``"nn.Identity"``,
    ``"[SepConv, SepConv, Attention, Attention]"``, ``"partial(LayerNormGeneral,
    normalized_dim=(1, 2, 3), eps=1e-6, bias=False)"``).
    """
    config = dict(config)
    if "layers" in config:  # PoolFormer v1
        ratios = set(config.get("mlp_ratios", [4]))
        if len(ratios) != 1:
            raise ValueError(f"Per-stage mlp_ratios are not supported: {config['mlp_ratios']}.")
        if not all(config.get("downsamples", [True])):
            raise ValueError("PoolFormer without downsampling between stages is not supported.")
        if config.get("pool_size", 3) != 3:
            raise ValueError("Only pool_size=3 is supported.")
        kwargs = dict(_POOLFORMER_V1, depths=list(config["layers"]),
                      dims=list(config["embed_dims"]), mlp_ratio=ratios.pop(),
                      layer_scale_init_values=(config.get("layer_scale_init_value", 1e-5)
                                               if config.get("use_layer_scale", True) else None))
    else:
        mixer_text = str(config.get("token_mixers", "nn.Identity"))
        found = [_MIXER_NAMES[m] for m in re.findall(
            r"\b(Identity|Pooling|RandomMixing|SepConv|Attention)\b", mixer_text)]
        if not found:
            raise ValueError(f"Unrecognised token_mixers {mixer_text!r}.")
        mixers = found[0] if len(found) == 1 else found
        norm_text = str(config.get("norm_layers", ""))
        gn = "normalized_dim=(1, 2, 3)" in norm_text.replace(" ", "").replace(
            "normalized_dim=(1,2,3)", "normalized_dim=(1, 2, 3)")
        mlp_head = "MlpHead" in str(config.get("head_fn", ""))
        kwargs = dict(depths=list(config["depths"]), dims=list(config["dims"]),
                      token_mixers=mixers,
                      block_norm=_GN1_NO_BIAS if gn else _LN_NO_BIAS_BLOCK,
                      head_style="mlp" if mlp_head else "linear")
        for key in ("layer_scale_init_values", "res_scale_init_values"):
            if key in config:
                kwargs[key] = config[key]
    if "num_classes" in config:
        kwargs["num_classes"] = int(config["num_classes"])
    return kwargs
