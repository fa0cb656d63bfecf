"""ConViT: soft convolutional inductive biases (d'Ascoli et al., ICML 2021).

Reference: facebookresearch/convit ``convit.py`` (timm's ``convit.py`` has the same
state-dict layout).

- 16x16 patch embedding, learned absolute position embedding on the patch tokens.
- The first ``local_up_to_layer`` (10) blocks use gated positional self-attention
  (:class:`~visionzoo.layers.gpsa.GatedPositionalSelfAttention`) on patch tokens only;
  the class token is prepended right before the first plain multi-head self-attention
  block, as in the official model.
- Pre-norm blocks (LayerNorm eps 1e-6), exact-GELU MLP, final LayerNorm, the class
  token goes to the classifier.

The position embedding and the GPSA relative-position table are tied to the 14x14 patch
grid, so ConViT runs at 224x224 only (like the official model and timm).
"""

import keras
from keras import ops

from visionzoo.backbones.base import ZooBackbone
from visionzoo.layers import LayerNorm, Mlp, MultiHeadSelfAttention, residual_add
from visionzoo.layers.gpsa import GatedPositionalSelfAttention

# --------------------------------------------------------------------------------------
# Family-only layers
# --------------------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="visionzoo")
class ClassToken(keras.layers.Layer):
    """Prepend a learned ``(1, 1, C)`` token to ``(B, N, C)`` tokens."""

    def build(self, input_shape):
        self.token = self.add_weight(name="token", shape=(1, 1, input_shape[-1]),
                                     initializer=keras.initializers.TruncatedNormal(stddev=0.02))

    def call(self, x):
        token = ops.cast(self.token, x.dtype) + ops.zeros_like(x[:, :1])
        return ops.concatenate([token, x], axis=1)

    def compute_output_shape(self, input_shape):
        n = input_shape[1]
        return (input_shape[0], None if n is None else n + 1, input_shape[2])


@keras.saving.register_keras_serializable(package="visionzoo")
class PositionEmbedding(keras.layers.Layer):
    """Add a learned ``(1, N, C)`` embedding to ``(B, N, C)`` tokens."""

    def build(self, input_shape):
        self.embedding = self.add_weight(
            name="embedding", shape=(1, input_shape[1], input_shape[2]),
            initializer=keras.initializers.TruncatedNormal(stddev=0.02))

    def call(self, x):
        return x + ops.cast(self.embedding, x.dtype)


@keras.saving.register_keras_serializable(package="visionzoo")
class TokenSlice(keras.layers.Layer):
    """``x[:, 0]`` (``part="class"``) or ``x[:, 1:]`` (``part="patches"``)."""

    def __init__(self, part="class", **kwargs):
        super().__init__(**kwargs)
        self.part = part

    def call(self, x):
        if self.part == "class":
            # x[:, :1] then a reshape: the same values, but a slice that keeps its axis,
            # which LiteRT's XNNPACK delegate takes (x[:, 0] would run outside it).
            return ops.reshape(x[:, :1], (-1, x.shape[-1]))
        return x[:, 1:]

    def compute_output_shape(self, input_shape):
        if self.part == "class":
            return (input_shape[0], input_shape[2])
        n = input_shape[1]
        return (input_shape[0], None if n is None else n - 1, input_shape[2])

    def get_config(self):
        config = super().get_config()
        config.update(part=self.part)
        return config


def convit_block(x, use_gpsa, num_heads, mlp_ratio, qkv_bias, drop_path, name):
    dim = x.shape[-1]
    y = LayerNorm(epsilon=1e-6, name=f"{name}-norm1")(x)
    if use_gpsa:
        y = GatedPositionalSelfAttention(num_heads, qkv_bias=qkv_bias, name=f"{name}-attn")(y)
    else:
        y = MultiHeadSelfAttention(num_heads, dim // num_heads, qkv_bias=qkv_bias,
                                   proj_bias=True, name=f"{name}-attn")(y)
    x = residual_add(x, y, drop_path, name, 1)
    y = LayerNorm(epsilon=1e-6, name=f"{name}-norm2")(x)
    y = Mlp(int(dim * mlp_ratio), activation="gelu", name=f"{name}-mlp")(y)
    return residual_add(x, y, drop_path, name, 2)


# --------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="visionzoo")
class ConViT(ZooBackbone):
    """ConViT classifier / token backbone.

    Args:
        embed_dim: int. Token width (the official ``embed_dim * num_heads``).
        depth: int. Blocks.
        num_heads: int.
        local_up_to_layer: int. Number of leading GPSA blocks.
        mlp_ratio: float.
        qkv_bias: bool.
        patch_size: int.
        img_size: int. The one input size (position tables are tied to it).
        drop_path_rate: float. Linear over blocks.
        head_dropout: float.
        include_top, num_classes, pooling, classifier_activation, input_shape,
        input_tensor, name: as in ``keras.applications``; without the top the output is
        the normalised token sequence (class token first), or with ``pooling="avg"`` /
        ``"max"`` the pooled patch tokens, or ``pooling="token"`` the class token.
    """

    def __init__(self, embed_dim=192, depth=12, num_heads=4, local_up_to_layer=10,
                 mlp_ratio=4.0, qkv_bias=False, patch_size=16, img_size=224,
                 drop_path_rate=0.0, head_dropout=0.0, include_top=True, num_classes=1000,
                 pooling=None, classifier_activation=None, input_shape=None,
                 input_tensor=None, name="convit", **kwargs):
        shape = tuple(input_shape) if input_shape is not None else (img_size, img_size, 3)
        if input_tensor is None and tuple(shape[:2]) in ((None, None),):
            shape = (img_size, img_size, shape[2])
        inputs, x = self._make_input(shape, input_tensor, min_size=patch_size)
        if tuple(x.shape[1:3]) != (img_size, img_size):
            raise ValueError(f"ConViT runs at {img_size}x{img_size} only (its position "
                             f"embedding and GPSA tables are tied to that grid); got "
                             f"{tuple(x.shape[1:3])}.")
        if pooling not in (None, "avg", "max", "token"):
            raise ValueError(f"pooling must be None, 'avg', 'max' or 'token', got {pooling!r}.")
        x = keras.layers.Conv2D(embed_dim, patch_size, strides=patch_size,
                                name="patch_embed-proj")(x)
        side = img_size // patch_size
        x = keras.layers.Reshape((side * side, embed_dim), name="patch_embed-flatten")(x)
        x = PositionEmbedding(name="pos_embed")(x)
        for i in range(depth):
            if i == local_up_to_layer:
                x = ClassToken(name="cls_token")(x)
            rate = drop_path_rate * i / max(depth - 1, 1)
            x = convit_block(x, i < local_up_to_layer, num_heads, mlp_ratio, qkv_bias, rate,
                             f"blocks-{i}")
        if local_up_to_layer >= depth:
            x = ClassToken(name="cls_token")(x)
        x = LayerNorm(epsilon=1e-6, name="norm")(x)
        if include_top:
            x = TokenSlice("class", name="head-token")(x)
            if head_dropout:
                x = keras.layers.Dropout(head_dropout, name="head-drop")(x)
            x = keras.layers.Dense(num_classes, name="head-fc")(x)
            if classifier_activation not in (None, "linear"):
                x = keras.layers.Activation(classifier_activation, name="predictions",
                                            dtype="float32")(x)
        elif pooling == "token":
            x = TokenSlice("class", name="token_pool")(x)
        elif pooling in ("avg", "max"):
            patches = TokenSlice("patches", name="patch_tokens")(x)
            pool = (keras.layers.GlobalAveragePooling1D if pooling == "avg"
                    else keras.layers.GlobalMaxPooling1D)
            x = pool(name=f"{pooling}_pool")(patches)

        super().__init__(inputs=inputs, outputs=x, name=name, **kwargs)
        self.pyramid_outputs = {}
        self.embed_dim = embed_dim
        self.depth = depth
        self.num_heads = num_heads
        self.local_up_to_layer = local_up_to_layer
        self.mlp_ratio = mlp_ratio
        self.qkv_bias = qkv_bias
        self.patch_size = patch_size
        self.img_size = img_size
        self.drop_path_rate = drop_path_rate
        self.head_dropout = head_dropout
        self._record_top_args(include_top, num_classes, pooling, classifier_activation,
                              input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(embed_dim=self.embed_dim, depth=self.depth, num_heads=self.num_heads,
                      local_up_to_layer=self.local_up_to_layer, mlp_ratio=self.mlp_ratio,
                      qkv_bias=self.qkv_bias, patch_size=self.patch_size,
                      img_size=self.img_size, drop_path_rate=self.drop_path_rate,
                      head_dropout=self.head_dropout)
        return config

    @property
    def classifier_key(self):
        return "head.fc"


# --------------------------------------------------------------------------------------
# Variant table (data)
# --------------------------------------------------------------------------------------

_CODE = "https://github.com/facebookresearch/convit/blob/main/convit.py"
# heads, and the paper's Table 1: params (M), GFLOPs, ImageNet top-1. The paper's
# figures are rounded down (27.8M prints as 27M) and its FLOPs leave out the attention
# products (q@k, attn@v), which visionzoo's counter includes.
_TABLE = {"tiny": (4, "6", 1.0, 73.1), "small": (9, "27", 5.4, 81.3),
          "base": (16, "86", 17.0, 82.4)}


def _variants():
    out = {}
    for size, (heads, params, gflops, top1) in _TABLE.items():
        name = f"convit_{size}"
        out[name] = dict(
            config={"embed_dim": 48 * heads, "num_heads": heads, "depth": 12,
                    "local_up_to_layer": 10},
            input_size=224, crop_pct=0.875, fixed_input_size=True,
            weights={"in1k": {
                "url": f"https://huggingface.co/timm/{name}.fb_in1k/resolve/main/"
                       "model.safetensors",
                "official_url": f"https://dl.fbaipublicfiles.com/convit/{name}.pth"}},
            code=_CODE, timm=name, license="apache-2.0",
            published={"params_m": params, "gmacs": gflops, "top1": top1})
    return out


VARIANTS = _variants()
MODEL_CLASS = ConViT
DISPLAY_NAMES = {"convit": "ConViT"}
OFFICIAL_REPOS = ("facebookresearch/convit",)
TIMM_NOTES = {}


def build(config, **kwargs):
    return ConViT(**config, **kwargs)


def classifier_key(config):
    return "head.fc"


# --------------------------------------------------------------------------------------
# Checkpoint key maps (data): official and timm share one layout.
# --------------------------------------------------------------------------------------

_COMMON = [
    (r"^cls_token$", "cls_token.token"),
    (r"^pos_embed$", "pos_embed.embedding"),
    (r"^head\.", "head.fc."),
]
KEY_MAPS = {"official": _COMMON, "timm": _COMMON}
IGNORE_KEYS = (r"rel_indices$",)


def detect_layout(keys):
    keys = set(keys)
    if "cls_token" in keys and any(".attn.gating_param" in k for k in keys):
        return "timm"
    return None


def from_official_config(config):
    c = dict(config)
    kwargs = {"embed_dim": c.get("embed_dim", 48) * c.get("num_heads", 12)}
    for key in ("depth", "num_heads", "local_up_to_layer", "mlp_ratio", "qkv_bias",
                "patch_size", "img_size", "num_classes"):
        if key in c:
            kwargs[key] = c[key]
    return kwargs
