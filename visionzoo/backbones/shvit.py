"""SHViT: single-head vision transformer with a memory-efficient macro design
(Yun & Ro, CVPR 2024).

Reference: ysj9909/SHViT ``model/shvit.py`` and ``model/build.py``; timm's ``shvit.py``
computes the same function with the stages re-keyed (``stages.i.downsample/blocks``).

- Stem of four 3x3 stride-2 Conv+BN (ReLU between, none after the last): stride 16.
- Three stages at strides 16, 32 and 64. A block is ``Residual(DW3x3+BN)``, a mixer
  (identity in stage 1, single-head self-attention (SHSA) after), ``Residual(FFN)``.
- SHSA attends with one head over the first ``partial_dim`` channels only
  (GroupNorm(1) -> 1x1 Conv+BN to q, k (``qk_dim`` each) and v); the other channels pass
  through; ReLU -> 1x1 Conv+BN projects the concatenation.
- Between stages: ``Residual(DW)``, ``Residual(FFN)``, a patch merging (1x1 to 4x,
  DW3x3 stride 2, squeeze-excite, 1x1), then ``Residual(DW)``, ``Residual(FFN)``.
- Head: global average pool -> BatchNorm1d -> Linear.

Deploy form: :func:`reparameterize` (also ``visionzoo.reparameterize``) folds every
Conv+BN into one conv, the residual depthwise convs' identity into their centre tap, and
the head's BatchNorm into its Linear, as the official ``replace_batchnorm`` / timm's
``fuse()`` do; the outputs are unchanged.

SHViT is fully convolutional apart from global attention over all tokens, so it runs at
any input size (the official S4 is trained at 256).
"""


import keras
import numpy as np
from keras import ops

from visionzoo.backbones.base import ZooBackbone, build_classifier_top
from visionzoo.layers import GroupNorm1, PaddedConv2D, PaddedDepthwiseConv2D
from visionzoo.layers.fusion import (add_identity_to_depthwise, bn_tuple,
                                     fold_bn_after_conv, fold_bn_before_dense)
from visionzoo.layers.squeeze_excite import squeeze_excite

# --------------------------------------------------------------------------------------
# Family-only layers and blocks
# --------------------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="visionzoo")
class ChannelSlice(keras.layers.Layer):
    """``x[..., start:stop]`` (``stop=None``: to the end)."""

    def __init__(self, start=0, stop=None, **kwargs):
        super().__init__(**kwargs)
        self.start = start
        self.stop = stop

    def call(self, x):
        return x[..., self.start:self.stop]

    def compute_output_shape(self, input_shape):
        c = input_shape[-1]
        stop = c if self.stop is None else self.stop
        return tuple(input_shape[:-1]) + (stop - self.start,)

    def get_config(self):
        config = super().get_config()
        config.update(start=self.start, stop=self.stop)
        return config


@keras.saving.register_keras_serializable(package="visionzoo")
class SingleHeadAttention(keras.layers.Layer):
    """One attention head over all positions of an NHWC ``qkv`` map.

    The channels of the input are ``[q (qk_dim), k (qk_dim), v (rest)]``; the output
    is ``softmax(q k^T * qk_dim**-0.5) v`` reshaped back to ``(B, H, W, v channels)``.
    """

    def __init__(self, qk_dim, **kwargs):
        super().__init__(**kwargs)
        self.qk_dim = qk_dim

    def call(self, qkv):
        d = self.qk_dim
        v_dim = qkv.shape[-1] - 2 * d
        # Static sizes where known: a TFLite file then has no SHAPE/PACK ops.
        dynamic = ops.shape(qkv)
        shape = [dynamic[i] if qkv.shape[i] is None else qkv.shape[i] for i in range(3)]
        batch = -1 if qkv.shape[1] is not None and qkv.shape[2] is not None else shape[0]
        tokens = ops.reshape(qkv, (batch, shape[1] * shape[2], qkv.shape[-1]))
        q, k, v = tokens[..., :d], tokens[..., d:2 * d], tokens[..., 2 * d:]
        attn = ops.matmul(q, ops.transpose(k, (0, 2, 1))) * (d ** -0.5)
        attn = ops.softmax(attn, axis=-1)
        out = ops.matmul(attn, v)
        return ops.reshape(out, (batch, shape[1], shape[2], v_dim))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (input_shape[-1] - 2 * self.qk_dim,)

    def matmul_macs(self, input_shape):
        n = int(np.prod(input_shape[1:-1]))
        return n * n * (self.qk_dim + input_shape[-1] - 2 * self.qk_dim)

    def get_config(self):
        config = super().get_config()
        config.update(qk_dim=self.qk_dim)
        return config


def conv_bn(x, filters, kernel_size, name, strides=1, depthwise=False, deploy=False):
    """Conv (no bias, torch padding ``k // 2``) + BatchNorm(eps 1e-5): ``{name}-c``,
    ``{name}-bn``; in the deploy form one conv with bias, ``{name}-c``."""
    pad = kernel_size // 2
    if depthwise:
        x = PaddedDepthwiseConv2D(kernel_size, strides=strides, torch_padding=pad,
                                  use_bias=deploy, name=f"{name}-c")(x)
    else:
        x = PaddedConv2D(filters, kernel_size, strides=strides, torch_padding=pad,
                         use_bias=deploy, name=f"{name}-c")(x)
    if deploy:
        return x
    return keras.layers.BatchNormalization(epsilon=1e-5, momentum=0.9, name=f"{name}-bn")(x)


def residual_dwconv(x, name, deploy):
    """``x + BN(DW3x3(x))``; in the deploy form one DW3x3 whose centre tap holds the
    identity (``{name}-m-c``)."""
    if deploy:
        return conv_bn(x, None, 3, f"{name}-m", depthwise=True, deploy=True)
    y = conv_bn(x, None, 3, f"{name}-m", depthwise=True)
    return keras.layers.Add(name=f"{name}-add")([x, y])


def residual_ffn(x, name, deploy):
    """``x + Conv1x1+BN(ReLU(Conv1x1+BN(x)))`` with a 2x hidden width."""
    dim = x.shape[-1]
    y = conv_bn(x, 2 * dim, 1, f"{name}-m-pw1", deploy=deploy)
    y = keras.layers.ReLU(name=f"{name}-m-act")(y)
    y = conv_bn(y, dim, 1, f"{name}-m-pw2", deploy=deploy)
    return keras.layers.Add(name=f"{name}-add")([x, y])


def shsa(x, qk_dim, pdim, name, deploy):
    """Single-head self-attention on the first ``pdim`` channels (residual included)."""
    dim = x.shape[-1]
    x1 = ChannelSlice(0, pdim, name=f"{name}-m-split_attn")(x)
    x2 = ChannelSlice(pdim, None, name=f"{name}-m-split_pass")(x)
    x1 = GroupNorm1(epsilon=1e-5, name=f"{name}-m-pre_norm")(x1)
    qkv = conv_bn(x1, 2 * qk_dim + pdim, 1, f"{name}-m-qkv", deploy=deploy)
    x1 = SingleHeadAttention(qk_dim, name=f"{name}-m-attn")(qkv)
    y = keras.layers.Concatenate(name=f"{name}-m-concat")([x1, x2])
    y = keras.layers.ReLU(name=f"{name}-m-proj-0")(y)
    y = conv_bn(y, dim, 1, f"{name}-m-proj-1", deploy=deploy)
    return keras.layers.Add(name=f"{name}-add")([x, y])


def basic_block(x, mixer, qk_dim, pdim, name, deploy):
    x = residual_dwconv(x, f"{name}-conv", deploy)
    if mixer == "s":
        x = shsa(x, qk_dim, pdim, f"{name}-mixer", deploy)
    x = residual_ffn(x, f"{name}-ffn", deploy)
    return x


def patch_merging(x, out_dim, name, deploy):
    hidden = 4 * x.shape[-1]
    x = conv_bn(x, hidden, 1, f"{name}-conv1", deploy=deploy)
    x = keras.layers.ReLU(name=f"{name}-act1")(x)
    x = conv_bn(x, hidden, 3, f"{name}-conv2", strides=2, depthwise=True, deploy=deploy)
    x = keras.layers.ReLU(name=f"{name}-act2")(x)
    x = squeeze_excite(x, 0.25, name=f"{name}-se")
    return conv_bn(x, out_dim, 1, f"{name}-conv3", deploy=deploy)


def downsample(x, out_dim, name, deploy):
    """The transition stored as ``stages.i.downsample.{0..4}`` (timm)."""
    x = residual_dwconv(x, f"{name}-0", deploy)
    x = residual_ffn(x, f"{name}-1", deploy)
    x = patch_merging(x, out_dim, f"{name}-2", deploy)
    x = residual_dwconv(x, f"{name}-3", deploy)
    return residual_ffn(x, f"{name}-4", deploy)


# --------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="visionzoo")
class SHViT(ZooBackbone):
    """SHViT classifier / backbone.

    Args:
        embed_dim: three ints. Stage widths.
        depth: three ints. Blocks per stage.
        partial_dim: three ints. Channels the single head attends over.
        qk_dim: three ints. Query/key width (16 in every published model).
        types: three of "i" (identity mixer) / "s" (SHSA).
        deploy: bool. Build the fused inference form (see :func:`reparameterize`).
        head_dropout: float. Dropout before the head (timm's ``drop_rate``).
        include_top, num_classes, pooling, classifier_activation, input_shape,
        input_tensor, name: as in ``keras.applications``. ``pyramid_outputs`` holds
        ``P4``, ``P5``, ``P6`` (strides 16, 32, 64).
    """

    def __init__(self, embed_dim=(128, 224, 320), depth=(2, 4, 5), partial_dim=(32, 48, 68),
                 qk_dim=(16, 16, 16), types=("i", "s", "s"), deploy=False, head_dropout=0.0,
                 include_top=True, num_classes=1000, pooling=None,
                 classifier_activation=None, input_shape=None, input_tensor=None,
                 name="shvit", **kwargs):
        n = len(embed_dim)
        if not (len(depth) == len(partial_dim) == len(qk_dim) == len(types) == n):
            raise ValueError("embed_dim, depth, partial_dim, qk_dim and types need one entry "
                             "per stage.")
        bad = [t for t in types if t not in ("i", "s")]
        if bad:
            raise ValueError(f"types must be 'i' (identity) or 's' (SHSA), got {bad}.")
        for pdim, dim in zip(partial_dim, embed_dim):
            if not 0 < pdim < dim:
                raise ValueError(f"partial_dim {pdim} must lie between 0 and its stage "
                                 f"width {dim}.")
        if embed_dim[0] % 8:
            raise ValueError(f"embed_dim[0] must be a multiple of 8 (the stem widths are "
                             f"C/8, C/4, C/2), got {embed_dim[0]}.")
        inputs, x = self._make_input(input_shape, input_tensor, min_size=16)

        c0 = embed_dim[0]
        for i, width in enumerate((c0 // 8, c0 // 4, c0 // 2, c0)):
            if i:
                x = keras.layers.ReLU(name=f"patch_embed-{2 * i - 1}")(x)
            x = conv_bn(x, width, 3, f"patch_embed-{2 * i}", strides=2, deploy=deploy)

        pyramid = {}
        for i in range(n):
            if i and embed_dim[i] != embed_dim[i - 1]:
                x = downsample(x, embed_dim[i], f"stages-{i}-downsample", deploy)
            for j in range(depth[i]):
                x = basic_block(x, types[i], qk_dim[i], partial_dim[i],
                                f"stages-{i}-blocks-{j}", deploy)
            pyramid[f"P{i + 4}"] = x

        if include_top:
            x = keras.layers.GlobalAveragePooling2D(name="avgpool")(x)
            if head_dropout:
                x = keras.layers.Dropout(head_dropout, name="head-drop")(x)
            if not deploy:
                x = keras.layers.BatchNormalization(epsilon=1e-5, momentum=0.9,
                                                    name="head-bn")(x)
            x = keras.layers.Dense(num_classes, name="head-l")(x)
            if classifier_activation not in (None, "linear"):
                x = keras.layers.Activation(classifier_activation, name="predictions",
                                            dtype="float32")(x)
        else:
            x = build_classifier_top(x, None, None, pooling=pooling)

        super().__init__(inputs=inputs, outputs=x, name=name, **kwargs)
        self.pyramid_outputs = pyramid
        self.embed_dim = list(embed_dim)
        self.depth = list(depth)
        self.partial_dim = list(partial_dim)
        self.qk_dim = list(qk_dim)
        self.types = list(types)
        self.deploy = deploy
        self.head_dropout = head_dropout
        self._record_top_args(include_top, num_classes, pooling, classifier_activation,
                              input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(embed_dim=self.embed_dim, depth=self.depth,
                      partial_dim=self.partial_dim, qk_dim=self.qk_dim, types=self.types,
                      deploy=self.deploy, head_dropout=self.head_dropout)
        return config

    @property
    def classifier_key(self):
        return "head.l"


# --------------------------------------------------------------------------------------
# Deploy form
# --------------------------------------------------------------------------------------


def reparameterize(model):
    """The deploy form of a (trained) SHViT: a new model, same outputs, no BatchNorm.

    Every ``Conv+BN`` becomes one conv with bias, each ``x + BN(DW3x3(x))`` one
    depthwise conv (identity in the centre tap), and the head's ``BN -> Linear`` one
    Dense. The input model is not modified.
    """
    if not isinstance(model, SHViT):
        raise TypeError(f"reparameterize expects an SHViT model, got {type(model).__name__}.")
    if model.deploy:
        raise ValueError(f"{model.name} is already in deploy form.")
    config = dict(model.get_config(), deploy=True)
    fused = SHViT.from_config(config)
    source = {layer.name: layer for layer in model.layers}
    value = ops.convert_to_numpy
    for layer in fused.layers:
        if not layer.weights:
            continue
        name = layer.name
        if name == "head-l":
            w, b = fold_bn_before_dense(bn_tuple(source["head-bn"]),
                                        value(source[name].kernel), value(source[name].bias))
            layer.set_weights([w, b])
        elif name.endswith("-c") and f"{name[:-2]}-bn" in source:
            conv = source[name]
            depthwise = isinstance(conv, keras.layers.DepthwiseConv2D)
            kernel = value(conv.kernel)
            w, b = fold_bn_after_conv(kernel, None, bn_tuple(source[f"{name[:-2]}-bn"]),
                                      depthwise=depthwise)
            if depthwise and name.endswith("-m-c") and f"{name[:-4]}-add" in source:
                w = add_identity_to_depthwise(w)  # Residual(DW+BN) -> one DW conv
            layer.set_weights([w, b])
        else:  # GroupNorm, squeeze-excite: copied as they are
            layer.set_weights(source[name].get_weights())
    return fused


# --------------------------------------------------------------------------------------
# Variant table (data)
# --------------------------------------------------------------------------------------

_CODE = "https://github.com/ysj9909/SHViT/blob/main/model/shvit.py"
_RELEASE = "https://github.com/ysj9909/SHViT/releases/download/v1.0"
# Official README: embed_dim, depth, partial_dim, input size, params (M), FLOPs (M),
# ImageNet-1k top-1.
_TABLE = {
    "shvit_s1": ((128, 224, 320), (2, 4, 5), (32, 48, 68), 224, "6.3", 241, 72.8),
    "shvit_s2": ((128, 308, 448), (2, 4, 5), (32, 66, 96), 224, "11.4", 366, 75.2),
    "shvit_s3": ((192, 352, 448), (3, 5, 5), (48, 75, 96), 224, "14.2", 601, 77.4),
    "shvit_s4": ((224, 336, 448), (4, 7, 6), (48, 72, 96), 256, "16.5", 986, 79.4),
}


def _variants():
    out = {}
    for name, (dims, depth, pdims, size, params, mflops, top1) in _TABLE.items():
        out[name] = dict(
            config={"embed_dim": list(dims), "depth": list(depth), "partial_dim": list(pdims),
                    "qk_dim": [16, 16, 16], "types": ["i", "s", "s"]},
            input_size=size, crop_pct=0.875,
            weights={"in1k": {
                "url": f"https://huggingface.co/timm/{name}.in1k/resolve/main/"
                       "model.safetensors",
                "official_url": f"{_RELEASE}/{name}.pth"}},
            code=_CODE, timm=name, license="mit",
            published={"params_m": params, "gmacs": mflops / 1000, "top1": top1})
    return out


VARIANTS = _variants()
MODEL_CLASS = SHViT
DISPLAY_NAMES = {"shvit": "SHViT"}
OFFICIAL_REPOS = ("ysj9909/SHViT",)
TIMM_NOTES = {}


def build(config, **kwargs):
    return SHViT(**config, **kwargs)


def classifier_key(config):
    return "head.l"


def application_name(model_name):
    return "SHViT" + model_name.split("_")[1].upper()


# --------------------------------------------------------------------------------------
# Checkpoint key maps (data). timm's layout is ours. The official one keeps stages as
# ``blocks1..3``; the transition into stage k (k = 2, 3) is stored at the head of
# ``blocks{k}``: ``.0.0`` / ``.0.1`` (Residual DW / FFN at the old width), ``.1`` (patch
# merging), ``.2.0`` / ``.2.1`` (at the new width); its blocks follow from index 3.
# --------------------------------------------------------------------------------------


def _official_to_ours(match):
    stage, index, inner = int(match[1]) - 1, int(match[2]), match[3]
    if stage == 0 or index >= 3:
        return f"stages.{stage}.blocks.{index - (3 if stage else 0)}.{inner or ''}"
    if index == 1:
        return f"stages.{stage}.downsample.2.{inner or ''}"
    return f"stages.{stage}.downsample.{3 * (index // 2) + int(inner[:-1])}."


KEY_MAPS = {
    "timm": [],
    "official": [(r"^blocks([123])\.(\d+)\.(\d+\.)?", _official_to_ours)],
}
IGNORE_KEYS = (r"num_batches_tracked$",)


def detect_layout(keys):
    keys = set(keys)
    if not any(k.startswith("patch_embed.0.c.") for k in keys):
        return None
    if any(k.startswith("blocks1.") for k in keys):
        return "official"
    if any(k.startswith("stages.") for k in keys):
        return "timm"
    return None


def from_official_config(config):
    """Kwargs for :class:`SHViT` from ``SHViT(...)`` constructor arguments."""
    c = dict(config)
    if c.get("distillation"):
        raise ValueError("Distillation heads (distillation=True) are not supported; the "
                         "released checkpoints have none.")
    down = c.get("down_ops")
    if down is not None and [d[0] for d in down] not in (["subsample", "subsample", ""],):
        raise ValueError(f"Only the official down_ops are supported, got {down}.")
    kwargs = {}
    for key in ("embed_dim", "depth", "partial_dim", "qk_dim", "types", "num_classes"):
        if key in c:
            kwargs[key] = list(c[key]) if isinstance(c[key], (list, tuple)) else c[key]
    return kwargs


