"""Swin Transformer v1 and v2.

References:
- v1: Liu et al., ICCV 2021; microsoft/Swin-Transformer ``models/swin_transformer.py``.
- v2: Liu et al., CVPR 2022; ``models/swin_transformer_v2.py`` (residual post-norm,
  cosine attention with a clamped learned temperature, continuous position bias from a
  log-spaced coordinate MLP, PatchMerging reduction-then-norm).

Layer names follow timm's module paths (``patch_embed.proj``, ``layers.1.downsample``
at the *start* of a stage, ``layers.2.blocks.3.attn.qkv``, ``head.fc``), so timm state
dicts map one-to-one; the official layout (downsample at the *end* of a stage, ``head``)
is renamed by ``KEY_MAPS["official"]``. Derived buffers (``relative_position_index``,
``relative_coords_table``, ``attn_mask``) are rebuilt, never loaded.

Input sizes. The window masks are constants of the grid, so a model is built for one
static input size (``input_shape=(None, None, 3)`` means the variant's default size;
pass another size to build for it). At every stage Swin's rule applies per axis: a grid
no larger than the window becomes a single window without shift. Larger grids that are
not multiples of the window are zero-padded at the bottom/right after ``norm1``, then
shifted, partitioned and masked on the padded grid (the official detection backbone's
scheme), so ``pyramid_outputs`` work at any size; odd grids are padded before patch
merging, and an input that is not a multiple of the patch size is padded too.
Loading a checkpoint made for another window resizes v1 relative-position tables
(bicubic, as timm); v2's position bias is a function of coordinates and needs nothing.

The file reads top to bottom: block -> model -> variant table -> key maps -> adapters.
"""

import keras

from visionzoo.backbones.base import ZooBackbone, build_classifier_top
from visionzoo.layers import LayerNorm, Mlp, residual_add
from visionzoo.layers.window import (
    PatchMerging,
    WindowAttention,
    clamp_window,
    resize_relative_bias_table,
)

# --------------------------------------------------------------------------------------
# Block
# --------------------------------------------------------------------------------------


def swin_block(x, num_heads, window_size, shift_size, mlp_ratio, qkv_bias, version,
               pretrained_window_size, drop_path, name):
    """v1: ``x + attn(norm1(x))``, ``x + mlp(norm2(x))``;
    v2: ``x + norm1(attn(x))``, ``x + norm2(mlp(x))``."""
    dim = x.shape[-1]
    attn = WindowAttention(num_heads, window_size, shift_size, qkv_bias=qkv_bias,
                           cosine=version == 2,
                           pretrained_window_size=pretrained_window_size,
                           name=f"{name}-attn")
    mlp = Mlp(int(dim * mlp_ratio), activation="gelu", name=f"{name}-mlp")
    norm1 = LayerNorm(epsilon=1e-5, name=f"{name}-norm1")
    norm2 = LayerNorm(epsilon=1e-5, name=f"{name}-norm2")
    y = norm1(attn(x)) if version == 2 else attn(norm1(x))
    x = residual_add(x, y, drop_path, name, 1)
    y = norm2(mlp(x)) if version == 2 else mlp(norm2(x))
    return residual_add(x, y, drop_path, name, 2)


# --------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="visionzoo")
class SwinTransformer(ZooBackbone):
    """Swin Transformer (v1 or v2) backbone/classifier.

    Args:
        embed_dim: int. Channels of stage 1 (doubled per stage).
        depths: list of int. Blocks per stage.
        num_heads: list of int. Heads per stage.
        window_size: int. Target window (clamped per stage, see the module docstring).
        version: 1 or 2.
        pretrained_window_sizes: list of int per stage (v2): the windows the continuous
            position bias was pre-trained with; 0 = the stage's own window.
        patch_size: int.
        mlp_ratio: float.
        qkv_bias: bool.
        img_size: int or (h, w). The size built when ``input_shape`` leaves H/W open.
        drop_path_rate: float. Stochastic depth, linear over all blocks.
        head_dropout: float.
        include_top, num_classes, pooling, classifier_activation, input_shape,
        input_tensor, name: as in ``keras.applications``.
    """

    def __init__(self, embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24),
                 window_size=7, version=1, pretrained_window_sizes=(0, 0, 0, 0),
                 patch_size=4, mlp_ratio=4.0, qkv_bias=True, img_size=224,
                 drop_path_rate=0.0, head_dropout=0.0, include_top=True, num_classes=1000,
                 pooling=None, classifier_activation=None, input_shape=None,
                 input_tensor=None, name="swin", **kwargs):
        if version not in (1, 2):
            raise ValueError(f"version must be 1 or 2, got {version!r}.")
        if len(depths) != len(num_heads):
            raise ValueError(f"depths ({len(depths)}) and num_heads ({len(num_heads)}) "
                             "differ in length.")
        if len(pretrained_window_sizes) != len(depths):
            raise ValueError("pretrained_window_sizes needs one entry per stage.")
        default = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        shape = tuple(input_shape) if input_shape is not None else (None, None, 3)
        if input_tensor is None and len(shape) == 3 and (shape[0] is None or shape[1] is None):
            # The masks are grid constants: open sizes mean the default size.
            shape = (shape[0] or default[0], shape[1] or default[1], shape[2])
        inputs, x = self._make_input(shape, input_tensor, min_size=32)
        h, w = x.shape[1], x.shape[2]
        if h is None or w is None:
            raise ValueError("Swin needs a static input height and width (its window "
                             f"masks depend on them); got input shape {tuple(x.shape)}.")

        pad_h, pad_w = -h % patch_size, -w % patch_size
        if pad_h or pad_w:
            x = keras.layers.ZeroPadding2D(((0, pad_h), (0, pad_w)),
                                           name="patch_embed-pad")(x)
        x = keras.layers.Conv2D(embed_dim, patch_size, strides=patch_size,
                                name="patch_embed-proj")(x)
        x = LayerNorm(epsilon=1e-5, name="patch_embed-norm")(x)

        total = sum(depths)
        block_index = 0
        pyramid = {}
        for i, (depth, heads) in enumerate(zip(depths, num_heads)):
            if i > 0:
                x = PatchMerging(embed_dim * 2 ** i, norm_first=version == 1,
                                 name=f"layers-{i}-downsample")(x)
            grid = (x.shape[1], x.shape[2])
            for j in range(depth):
                window, shift = clamp_window(grid, window_size,
                                             window_size // 2 if j % 2 else 0)
                rate = drop_path_rate * block_index / max(total - 1, 1)
                x = swin_block(x, heads, window, shift, mlp_ratio, qkv_bias, version,
                               pretrained_window_sizes[i], rate, f"layers-{i}-blocks-{j}")
                block_index += 1
            pyramid[f"P{i + 2}"] = x

        x = LayerNorm(epsilon=1e-5, name="norm")(x)
        if include_top:
            x = keras.layers.GlobalAveragePooling2D(name="head-global_pool")(x)
            x = build_classifier_top(x, num_classes, classifier_activation,
                                     dropout=head_dropout)
        else:
            x = build_classifier_top(x, None, None, pooling=pooling)

        super().__init__(inputs=inputs, outputs=x, name=name, **kwargs)
        self.pyramid_outputs = pyramid
        self.embed_dim = embed_dim
        self.depths = list(depths)
        self.num_heads_per_stage = list(num_heads)
        self.window_size = window_size
        self.version = version
        self.pretrained_window_sizes = list(pretrained_window_sizes)
        self.patch_size = patch_size
        self.mlp_ratio = mlp_ratio
        self.qkv_bias = qkv_bias
        self.img_size = img_size
        self.drop_path_rate = drop_path_rate
        self.head_dropout = head_dropout
        self._record_top_args(include_top, num_classes, pooling, classifier_activation,
                              input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            embed_dim=self.embed_dim, depths=self.depths, num_heads=self.num_heads_per_stage,
            window_size=self.window_size, version=self.version,
            pretrained_window_sizes=self.pretrained_window_sizes,
            patch_size=self.patch_size, mlp_ratio=self.mlp_ratio, qkv_bias=self.qkv_bias,
            img_size=self.img_size, drop_path_rate=self.drop_path_rate,
            head_dropout=self.head_dropout)
        return config

    @property
    def classifier_key(self):
        return "head.fc"


# --------------------------------------------------------------------------------------
# Variant table (data)
# --------------------------------------------------------------------------------------

_SIZES = {
    "tiny": {"embed_dim": 96, "depths": [2, 2, 6, 2], "num_heads": [3, 6, 12, 24]},
    "small": {"embed_dim": 96, "depths": [2, 2, 18, 2], "num_heads": [3, 6, 12, 24]},
    "base": {"embed_dim": 128, "depths": [2, 2, 18, 2], "num_heads": [4, 8, 16, 32]},
    "large": {"embed_dim": 192, "depths": [2, 2, 18, 2], "num_heads": [6, 12, 24, 48]},
}

_V1_STORE = "https://github.com/SwinTransformer/storage/releases/download"
_V1_CODE = ("https://github.com/microsoft/Swin-Transformer/blob/main/models/"
            "swin_transformer.py")
_V2_CODE = ("https://github.com/microsoft/Swin-Transformer/blob/main/models/"
            "swin_transformer_v2.py")

# name: (size, window, img_size, pretrained windows, {tag: official file}, published
# (params M as printed, GFLOPs(=GMACs), top-1)), from the official README; None where it
# prints nothing (the 192 px ImageNet-22k pre-training checkpoints).
_TABLE = {
    "swin_tiny_patch4_window7_224": ("tiny", 7, 224, None, {
        "in1k": "v1.0.0/swin_tiny_patch4_window7_224.pth",
        "in22k_ft_in1k": "v1.0.8/swin_tiny_patch4_window7_224_22kto1k_finetune.pth",
        "in22k": "v1.0.8/swin_tiny_patch4_window7_224_22k.pth"}, ("28", 4.5, 81.2)),
    "swin_small_patch4_window7_224": ("small", 7, 224, None, {
        "in1k": "v1.0.0/swin_small_patch4_window7_224.pth",
        "in22k_ft_in1k": "v1.0.8/swin_small_patch4_window7_224_22kto1k_finetune.pth",
        "in22k": "v1.0.8/swin_small_patch4_window7_224_22k.pth"}, ("50", 8.7, 83.2)),
    "swin_base_patch4_window7_224": ("base", 7, 224, None, {
        "in1k": "v1.0.0/swin_base_patch4_window7_224.pth",
        "in22k_ft_in1k": "v1.0.0/swin_base_patch4_window7_224_22kto1k.pth",
        "in22k": "v1.0.0/swin_base_patch4_window7_224_22k.pth"}, ("88", 15.4, 83.5)),
    "swin_base_patch4_window12_384": ("base", 12, 384, None, {
        "in1k": "v1.0.0/swin_base_patch4_window12_384.pth",
        "in22k_ft_in1k": "v1.0.0/swin_base_patch4_window12_384_22kto1k.pth",
        "in22k": "v1.0.0/swin_base_patch4_window12_384_22k.pth"}, ("88", 47.1, 84.5)),
    "swin_large_patch4_window7_224": ("large", 7, 224, None, {
        "in22k_ft_in1k": "v1.0.0/swin_large_patch4_window7_224_22kto1k.pth",
        "in22k": "v1.0.0/swin_large_patch4_window7_224_22k.pth"}, ("197", 34.5, 86.3)),
    "swin_large_patch4_window12_384": ("large", 12, 384, None, {
        "in22k_ft_in1k": "v1.0.0/swin_large_patch4_window12_384_22kto1k.pth",
        "in22k": "v1.0.0/swin_large_patch4_window12_384_22k.pth"}, ("197", 103.9, 87.3)),
    "swinv2_tiny_window8_256": ("tiny", 8, 256, None, {
        "in1k": "v2.0.0/swinv2_tiny_patch4_window8_256.pth"}, ("28", 5.9, 81.8)),
    "swinv2_tiny_window16_256": ("tiny", 16, 256, None, {
        "in1k": "v2.0.0/swinv2_tiny_patch4_window16_256.pth"}, ("28", 6.6, 82.8)),
    "swinv2_small_window8_256": ("small", 8, 256, None, {
        "in1k": "v2.0.0/swinv2_small_patch4_window8_256.pth"}, ("50", 11.5, 83.7)),
    "swinv2_small_window16_256": ("small", 16, 256, None, {
        "in1k": "v2.0.0/swinv2_small_patch4_window16_256.pth"}, ("50", 12.6, 84.1)),
    "swinv2_base_window8_256": ("base", 8, 256, None, {
        "in1k": "v2.0.0/swinv2_base_patch4_window8_256.pth"}, ("88", 20.3, 84.2)),
    "swinv2_base_window16_256": ("base", 16, 256, None, {
        "in1k": "v2.0.0/swinv2_base_patch4_window16_256.pth"}, ("88", 21.8, 84.6)),
    "swinv2_base_window12_192": ("base", 12, 192, None, {
        "in22k": "v2.0.0/swinv2_base_patch4_window12_192_22k.pth"}, ("88", None, None)),
    "swinv2_base_window12to16_192to256": ("base", 16, 256, [12, 12, 12, 6], {
        "in22k_ft_in1k": "v2.0.0/swinv2_base_patch4_window12to16_192to256_22kto1k_ft.pth"},
        ("88", 21.8, 86.2)),
    "swinv2_base_window12to24_192to384": ("base", 24, 384, [12, 12, 12, 6], {
        "in22k_ft_in1k": "v2.0.0/swinv2_base_patch4_window12to24_192to384_22kto1k_ft.pth"},
        ("88", 54.7, 87.1)),
    "swinv2_large_window12_192": ("large", 12, 192, None, {
        "in22k": "v2.0.0/swinv2_large_patch4_window12_192_22k.pth"}, ("197", None, None)),
    "swinv2_large_window12to16_192to256": ("large", 16, 256, [12, 12, 12, 6], {
        "in22k_ft_in1k": "v2.0.0/swinv2_large_patch4_window12to16_192to256_22kto1k_ft.pth"},
        ("197", 47.5, 86.9)),
    "swinv2_large_window12to24_192to384": ("large", 24, 384, [12, 12, 12, 6], {
        "in22k_ft_in1k": "v2.0.0/swinv2_large_patch4_window12to24_192to384_22kto1k_ft.pth"},
        ("197", 115.4, 87.6)),
}

_TIMM_TAGS = {"in1k": "ms_in1k", "in22k_ft_in1k": "ms_in22k_ft_in1k", "in22k": "ms_in22k"}


def _variants():
    out = {}
    for name, (size, window, img, pretrained, files, published) in _TABLE.items():
        version = 2 if name.startswith("swinv2") else 1
        config = dict(_SIZES[size], window_size=window, version=version, img_size=img)
        if pretrained:
            config["pretrained_window_sizes"] = list(pretrained)
        weights = {}
        for tag, path in files.items():
            hub = f"timm/{name}.{_TIMM_TAGS[tag]}"
            spec = {"url": f"https://huggingface.co/{hub}/resolve/main/model.safetensors",
                    "official_url": f"{_V1_STORE}/{path}"}
            if tag == "in22k":
                spec["num_classes"] = 21841
            weights[tag] = spec
        params, gflops, top1 = published
        out[name] = dict(
            config=config, input_size=img, crop_pct=1.0 if img == 384 else 0.9,
            weights=weights, code=_V2_CODE if version == 2 else _V1_CODE, timm=name,
            published={k: v for k, v in (("params_m", params), ("gmacs", gflops),
                                         ("top1", top1)) if v is not None},
            license="mit")
    return out


VARIANTS = _variants()

MODEL_CLASS = SwinTransformer
DISPLAY_NAMES = {"swin": "Swin", "swinv2": "SwinV2"}
OFFICIAL_REPOS = ("microsoft/Swin-Transformer",)
TIMM_NOTES = {}


def application_name(model_name):
    """``swin_tiny_patch4_window7_224`` -> ``SwinTinyPatch4Window7_224``;
    ``swinv2_base_window12to16_192to256`` -> ``SwinV2BaseWindow12to16_192to256``."""
    prefix, *parts = model_name.split("_")
    out = DISPLAY_NAMES[prefix]
    for part in parts:
        out += f"_{part}" if part[0].isdigit() else part[0].upper() + part[1:]
    return out


def build(config, **kwargs):
    """Builder used by the registry: ``config`` is a VARIANTS entry's ``config``."""
    return SwinTransformer(**config, **kwargs)


def classifier_key(config):
    return "head.fc"


# --------------------------------------------------------------------------------------
# Checkpoint key maps (data)
# --------------------------------------------------------------------------------------

KEY_MAPS = {
    # microsoft/Swin-Transformer: PatchMerging at the end of stage i -> start of i+1.
    "official": [
        (r"^layers\.(\d+)\.downsample\.",
         lambda m: f"layers.{int(m[1]) + 1}.downsample."),
        (r"^head\.", "head.fc."),
    ],
    "timm": [],
}
# Derived buffers, rebuilt from the grid (official checkpoints store them).
IGNORE_KEYS = (r"relative_position_index$", r"relative_coords_table$", r"attn_mask$",
               r"\.k_bias$")


def detect_layout(keys):
    keys = set(keys)
    if not any(k.startswith("patch_embed.") for k in keys):
        return None
    if any(k.startswith("layers.0.downsample.") for k in keys):
        return "official"
    if any(k.startswith("head.") and not k.startswith("head.fc.") for k in keys):
        return "official"
    return "timm"


def adapt_state(model, state, renamed):
    """Resize v1 relative-position tables made for another window (timm's rule)."""
    from visionzoo.weights.convert import model_targets

    targets = model_targets(model)
    out = dict(state)
    for key, name in renamed.items():
        if not name.endswith("relative_position_bias_table") or name not in targets:
            continue
        variable = targets[name][0]
        value = state[key]
        if tuple(value.shape) == tuple(variable.shape) or value.shape[1:] != variable.shape[1:]:
            continue
        layer_path = name[: -len(".relative_position_bias_table")]
        attn = _layer_by_canonical_name(model, layer_path)
        out[key] = resize_relative_bias_table(value, attn.window_size)
    return out


def _layer_by_canonical_name(model, dotted):
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if layer.name.replace("-", ".") == dotted:
            return layer
    raise KeyError(dotted)


# --------------------------------------------------------------------------------------
# Official-constructor adapter
# --------------------------------------------------------------------------------------


def from_official_config(config):
    """Kwargs for :class:`SwinTransformer` from ``SwinTransformer(...)`` /
    ``SwinTransformerV2(...)`` constructor arguments (or the yaml's MODEL.SWIN[V2])."""
    c = {k.lower(): v for k, v in dict(config).items()}
    kwargs = {}
    for ours, theirs in (("embed_dim", "embed_dim"), ("depths", "depths"),
                         ("num_heads", "num_heads"), ("window_size", "window_size"),
                         ("patch_size", "patch_size"), ("mlp_ratio", "mlp_ratio"),
                         ("qkv_bias", "qkv_bias"), ("img_size", "img_size"),
                         ("num_classes", "num_classes")):
        if theirs in c:
            kwargs[ours] = c[theirs]
    if "pretrained_window_sizes" in c:
        kwargs["version"] = 2
        kwargs["pretrained_window_sizes"] = list(c["pretrained_window_sizes"])
    if c.get("ape"):
        raise ValueError("Absolute position embeddings (ape=True) are not supported.")
    if c.get("in_chans", 3) != 3:
        raise ValueError("Only 3-channel official configs are supported.")
    return kwargs
