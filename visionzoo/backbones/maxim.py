"""MAXIM: multi-axis MLP for image restoration (Tu et al., CVPR 2022).

Reference: google-research/maxim ``maxim/models/maxim.py`` (``MAXIM``, ``Model``) and
``maxim/run_eval.py`` (padding, ``num_supervision_scales=3``, output ``preds[-1][-1]``).

A multi-stage U-Net. Each stage: 3x3 input convs at 1, 1/2, 1/4 scale (fused with the
previous stage's SAM features by cross-gating blocks from stage 2 on); ``depth`` encoder
blocks (1x1 conv, ``num_groups`` x (multi-axis gMLP + RCAB), long skip, cross-gating with
the previous stage's encoder+decoder features, 4x4/2 conv down); bottleneck blocks
(multi-axis gMLP + RDCAB); cross-gating of the multi-scale encoder features with the
global feature; decoder blocks (2x2/2 transposed conv up + encoder block on the
resampled skip signals); a supervised-attention module (non-final stages) or a 3x3
output conv (final stage) plus the input image at that scale.

Layers carry the official Flax module names (``stage_0_encoder_block_0/Conv_0``,
``UpSampleRatio_17/Conv_0``...), so official ``.npz`` checkpoints convert by renaming
``/``-paths; see :func:`adapt_state`.

Sizes. Every block/grid partition must divide its feature map, so inputs must be
multiples of ``size_multiple`` (64 for the published variants: the bottleneck at 1/8
scale is split into 8x8 blocks). The token-mixing weights depend only on block/grid
sizes, so the same weights run at every size; the Keras graph is built for one static
size. :func:`restore` runs any image as the official evaluation does (reflect-pad to
even, then symmetrically to a multiple of ``size_multiple``, run, centre-crop), building
a same-weights model at the padded size when needed.

Numerics as Flax: LayerNorm eps 1e-6 and the tanh GELU (the official ``nn.gelu``).
"""

import math

import keras
import numpy as np

from visionzoo.backbones.base import ZooBackbone
from visionzoo.layers.maxim_blocks import (RCAB, RDCAB, CrossGatingBlock, MaximLayer,
                                           MultiAxisGmlpBlock, SupervisedAttention,
                                           UpSampleRatio, nearest_downscale)

# --------------------------------------------------------------------------------------
# Family-only blocks
# --------------------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="visionzoo")
class NearestDownscale(keras.layers.Layer):
    """The official multi-scale input images: ``jax.image.resize(x, 1/factor, nearest)``."""

    def __init__(self, factor, **kwargs):
        super().__init__(**kwargs)
        self.factor = factor

    def call(self, x):
        return nearest_downscale(x, self.factor)

    def compute_output_shape(self, s):
        return (s[0], None if s[1] is None else s[1] // self.factor,
                None if s[2] is None else s[2] // self.factor, s[3])

    def get_config(self):
        config = super().get_config()
        config.update(factor=self.factor)
        return config


@keras.saving.register_keras_serializable(package="visionzoo")
class UNetEncoderBlock(MaximLayer):
    """Encoder block: ``[x, skip?, enc?, dec?]`` -> ``[x_down, x]`` (or ``x`` when
    ``downsample=False``).

    concat(x, skip) -> 1x1 conv (``Conv_0``) -> ``num_groups`` x (multi-axis gMLP
    ``SplitHeadMultiAxisGmlpLayer_{i}`` + RCAB ``channel_attention_block_1{i}``) + long
    skip; with ``cross_gating`` a cross-gating block gated by ``enc + dec``; with
    ``downsample`` a 4x4/2 conv (``Conv_1``, one pixel of zero padding per side).
    """

    def __init__(self, features, block_size, grid_size, num_groups=1, lrelu_slope=0.2,
                 block_gmlp_factor=2, grid_gmlp_factor=2, input_proj_factor=2,
                 channels_reduction=4, dropout_rate=0.0, downsample=True,
                 use_global_mlp=True, use_bias=True, has_skip=False, cross_gating=False,
                 **kwargs):
        super().__init__(**kwargs)
        self.features = features
        self.block_size = tuple(block_size)
        self.grid_size = tuple(grid_size)
        self.num_groups = num_groups
        self.lrelu_slope = lrelu_slope
        self.block_gmlp_factor = block_gmlp_factor
        self.grid_gmlp_factor = grid_gmlp_factor
        self.input_proj_factor = input_proj_factor
        self.channels_reduction = channels_reduction
        self.dropout_rate = dropout_rate
        self.downsample = downsample
        self.use_global_mlp = use_global_mlp
        self.use_bias = use_bias
        self.has_skip = has_skip
        self.cross_gating = cross_gating
        self.conv_in = keras.layers.Conv2D(features, 1, use_bias=use_bias, name="Conv_0")
        self.mixers, self.rcabs = [], []
        for i in range(num_groups):
            if use_global_mlp:
                self.mixers.append(MultiAxisGmlpBlock(
                    self.block_size, self.grid_size, block_gmlp_factor, grid_gmlp_factor,
                    input_proj_factor, use_bias, dropout_rate,
                    name=f"SplitHeadMultiAxisGmlpLayer_{i}"))
            self.rcabs.append(RCAB(features, channels_reduction, lrelu_slope, use_bias,
                                   name=f"channel_attention_block_1{i}"))
        if cross_gating:
            self.cgb = CrossGatingBlock(features, self.block_size, self.grid_size,
                                        upsample_y=False, use_bias=use_bias,
                                        dropout_rate=dropout_rate, name="cross_gating_block")
        if downsample:
            self.conv_down = keras.layers.Conv2D(features, 4, strides=2, padding="valid",
                                                 use_bias=use_bias, name="Conv_1")

    def build(self, input_shape):
        shapes = [tuple(s) for s in input_shape] if isinstance(input_shape[0], (list, tuple)) \
            else [tuple(input_shape)]
        x = shapes.pop(0)
        if self.has_skip:
            x = x[:-1] + (x[-1] + shapes.pop(0)[-1],)
        x = self._build_child(self.conv_in, x)
        for i in range(self.num_groups):
            if self.use_global_mlp:
                self._build_child(self.mixers[i], x)
            self._build_child(self.rcabs[i], x)
        if self.cross_gating:
            self._build_child(self.cgb, [x, shapes[0]])
        if self.downsample:
            padded = (x[0], x[1] + 2, x[2] + 2, x[3])
            self._build_child(self.conv_down, padded)

    def compute_output_shape(self, input_shape):
        x = tuple(input_shape[0]) if isinstance(input_shape[0], (list, tuple)) \
            else tuple(input_shape)
        x = x[:-1] + (self.features,)
        if not self.downsample:
            return x
        return [(x[0], x[1] // 2, x[2] // 2, x[3]), x]

    def call(self, inputs, training=None):
        inputs = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
        x = inputs.pop(0)
        if self.has_skip:
            x = keras.ops.concatenate([x, inputs.pop(0)], axis=-1)
        x = self.conv_in(x)
        shortcut = x
        for i in range(self.num_groups):
            if self.use_global_mlp:
                x = self.mixers[i](x, training=training)
            x = self.rcabs[i](x)
        x = x + shortcut
        if self.cross_gating:
            enc, dec = inputs
            x = self.cgb([x, enc + dec], training=training)[0]
        if not self.downsample:
            return x
        padded = keras.ops.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        return [self.conv_down(padded), x]

    def get_config(self):
        config = super().get_config()
        config.update(features=self.features, block_size=list(self.block_size),
                      grid_size=list(self.grid_size), num_groups=self.num_groups,
                      lrelu_slope=self.lrelu_slope, block_gmlp_factor=self.block_gmlp_factor,
                      grid_gmlp_factor=self.grid_gmlp_factor,
                      input_proj_factor=self.input_proj_factor,
                      channels_reduction=self.channels_reduction,
                      dropout_rate=self.dropout_rate, downsample=self.downsample,
                      use_global_mlp=self.use_global_mlp, use_bias=self.use_bias,
                      has_skip=self.has_skip, cross_gating=self.cross_gating)
        return config


@keras.saving.register_keras_serializable(package="visionzoo")
class UNetDecoderBlock(MaximLayer):
    """Decoder block: ``[x, bridge]`` -> 2x2/2 transposed conv (``ConvTranspose_0``) ->
    encoder block ``UNetEncoderBlock_0`` (no downsampling) on concat(x, bridge).

    As in the official code the inner encoder block uses ``input_proj_factor=2``
    whatever the model's setting."""

    def __init__(self, features, block_size, grid_size, num_groups=1, lrelu_slope=0.2,
                 block_gmlp_factor=2, grid_gmlp_factor=2, channels_reduction=4,
                 dropout_rate=0.0, use_global_mlp=True, use_bias=True, **kwargs):
        super().__init__(**kwargs)
        self.features = features
        self.block_size = tuple(block_size)
        self.grid_size = tuple(grid_size)
        self.num_groups = num_groups
        self.lrelu_slope = lrelu_slope
        self.block_gmlp_factor = block_gmlp_factor
        self.grid_gmlp_factor = grid_gmlp_factor
        self.channels_reduction = channels_reduction
        self.dropout_rate = dropout_rate
        self.use_global_mlp = use_global_mlp
        self.use_bias = use_bias
        self.up = keras.layers.Conv2DTranspose(features, 2, strides=2, padding="same",
                                               use_bias=use_bias, name="ConvTranspose_0")
        self.block = UNetEncoderBlock(
            features, self.block_size, self.grid_size, num_groups, lrelu_slope,
            block_gmlp_factor, grid_gmlp_factor, 2, channels_reduction, dropout_rate,
            downsample=False, use_global_mlp=use_global_mlp, use_bias=use_bias,
            has_skip=True, name="UNetEncoderBlock_0")

    def build(self, input_shape):
        up = self._build_child(self.up, tuple(input_shape[0]))
        self._build_child(self.block, [up, tuple(input_shape[1])])

    def compute_output_shape(self, input_shape):
        x = input_shape[0]
        return (x[0], x[1] * 2, x[2] * 2, self.features)

    def call(self, inputs, training=None):
        x, bridge = inputs
        return self.block([self.up(x), bridge], training=training)

    def get_config(self):
        config = super().get_config()
        config.update(features=self.features, block_size=list(self.block_size),
                      grid_size=list(self.grid_size), num_groups=self.num_groups,
                      lrelu_slope=self.lrelu_slope, block_gmlp_factor=self.block_gmlp_factor,
                      grid_gmlp_factor=self.grid_gmlp_factor,
                      channels_reduction=self.channels_reduction,
                      dropout_rate=self.dropout_rate, use_global_mlp=self.use_global_mlp,
                      use_bias=self.use_bias)
        return config


@keras.saving.register_keras_serializable(package="visionzoo")
class BottleneckBlock(MaximLayer):
    """Bottleneck: 1x1 conv (``input_proj``) -> ``num_groups`` x (multi-axis gMLP +
    RDCAB ``channel_attention_block_1_{i}``) + long skip."""

    def __init__(self, features, block_size, grid_size, num_groups=1, block_gmlp_factor=2,
                 grid_gmlp_factor=2, input_proj_factor=2, channels_reduction=4,
                 dropout_rate=0.0, use_bias=True, **kwargs):
        super().__init__(**kwargs)
        self.features = features
        self.block_size = tuple(block_size)
        self.grid_size = tuple(grid_size)
        self.num_groups = num_groups
        self.block_gmlp_factor = block_gmlp_factor
        self.grid_gmlp_factor = grid_gmlp_factor
        self.input_proj_factor = input_proj_factor
        self.channels_reduction = channels_reduction
        self.dropout_rate = dropout_rate
        self.use_bias = use_bias
        self.conv_in = keras.layers.Conv2D(features, 1, use_bias=use_bias, name="input_proj")
        self.mixers = [MultiAxisGmlpBlock(self.block_size, self.grid_size, block_gmlp_factor,
                                          grid_gmlp_factor, input_proj_factor, use_bias,
                                          dropout_rate, name=f"SplitHeadMultiAxisGmlpLayer_{i}")
                       for i in range(num_groups)]
        self.rdcabs = [RDCAB(features, channels_reduction, use_bias, dropout_rate,
                             name=f"channel_attention_block_1_{i}") for i in range(num_groups)]

    def build(self, input_shape):
        x = self._build_child(self.conv_in, tuple(input_shape))
        for mixer, rdcab in zip(self.mixers, self.rdcabs):
            self._build_child(mixer, x)
            self._build_child(rdcab, x)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.features,)

    def call(self, x, training=None):
        x = self.conv_in(x)
        shortcut = x
        for mixer, rdcab in zip(self.mixers, self.rdcabs):
            x = mixer(x, training=training)
            x = rdcab(x, training=training)
        return x + shortcut

    def get_config(self):
        config = super().get_config()
        config.update(features=self.features, block_size=list(self.block_size),
                      grid_size=list(self.grid_size), num_groups=self.num_groups,
                      block_gmlp_factor=self.block_gmlp_factor,
                      grid_gmlp_factor=self.grid_gmlp_factor,
                      input_proj_factor=self.input_proj_factor,
                      channels_reduction=self.channels_reduction,
                      dropout_rate=self.dropout_rate, use_bias=self.use_bias)
        return config


# --------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------

DEFAULT_SIZE = 256


def size_multiple(depth=3, high_res_stages=2, block_size_hr=(16, 16), block_size_lr=(8, 8),
                  grid_size_hr=(16, 16), **_):
    """Smallest side every block/grid partition of a MAXIM config divides (64 for the
    published variants)."""
    m = 2 ** depth * math.lcm(*block_size_lr)
    for i in range(depth):
        block = block_size_hr if i < high_res_stages else block_size_lr
        grid = grid_size_hr if i < high_res_stages else block_size_lr
        m = math.lcm(m, 2 ** i * math.lcm(*block, *grid))
    return m


@keras.saving.register_keras_serializable(package="visionzoo")
class MAXIM(ZooBackbone):
    """MAXIM restoration model: ``(B, H, W, 3)`` images in [0, 1] -> restored images.

    Args are the official ``MAXIM`` attributes (same defaults); the published variants
    (``maxim_s1`` ... ``maxim_m3``) set ``features``, ``num_stages``, ``num_groups=2``,
    ``num_bottleneck_blocks=2`` and ``num_supervision_scales=3``. As in the official
    code, levels ``>= high_res_stages`` and the bottleneck use ``block_size_lr`` for both
    block and grid sizes (``grid_size_lr`` is accepted and unused).

    Extra args:
        all_outputs: bool. Output every stage's images at every supervised scale
            (``[stage0_coarsest, ..., stageN_full]``, the official ``outputs`` flattened,
            for multi-scale supervision) instead of only the final full-size image.
        input_shape: (H, W, 3). Static; H and W multiples of :attr:`size_multiple`.
            ``None`` sizes become 256.
    """

    include_top = False  # a restoration model has no classifier

    def __init__(self, features=64, depth=3, num_stages=2, num_groups=1, use_bias=True,
                 num_supervision_scales=1, lrelu_slope=0.2, use_global_mlp=True,
                 use_cross_gating=True, high_res_stages=2, block_size_hr=(16, 16),
                 block_size_lr=(8, 8), grid_size_hr=(16, 16), grid_size_lr=(8, 8),
                 num_bottleneck_blocks=1, block_gmlp_factor=2, grid_gmlp_factor=2,
                 input_proj_factor=2, channels_reduction=4, num_outputs=3, dropout_rate=0.0,
                 all_outputs=False, input_shape=None, input_tensor=None, name="maxim",
                 **kwargs):
        if num_supervision_scales > depth:
            raise ValueError("num_supervision_scales cannot exceed depth.")
        args = dict(features=features, depth=depth, num_stages=num_stages,
                    num_groups=num_groups, use_bias=use_bias,
                    num_supervision_scales=num_supervision_scales, lrelu_slope=lrelu_slope,
                    use_global_mlp=use_global_mlp, use_cross_gating=use_cross_gating,
                    high_res_stages=high_res_stages, block_size_hr=list(block_size_hr),
                    block_size_lr=list(block_size_lr), grid_size_hr=list(grid_size_hr),
                    grid_size_lr=list(grid_size_lr),
                    num_bottleneck_blocks=num_bottleneck_blocks,
                    block_gmlp_factor=block_gmlp_factor, grid_gmlp_factor=grid_gmlp_factor,
                    input_proj_factor=input_proj_factor,
                    channels_reduction=channels_reduction, num_outputs=num_outputs,
                    dropout_rate=dropout_rate, all_outputs=all_outputs)
        multiple = size_multiple(depth, high_res_stages, block_size_hr, block_size_lr,
                                 grid_size_hr)
        shape = tuple(input_shape) if input_shape is not None else (None, None, 3)
        if input_tensor is None:
            shape = (shape[0] or DEFAULT_SIZE, shape[1] or DEFAULT_SIZE, shape[2])
        inputs, image = self._make_input(shape, input_tensor, min_size=multiple)
        h, w = image.shape[1], image.shape[2]
        if h is None or w is None or h % multiple or w % multiple:
            raise ValueError(
                f"MAXIM needs a static input height and width that are multiples of "
                f"{multiple} (its block/grid partitions); got {h}x{w}. Use "
                "visionzoo.backbones.maxim.restore() for other sizes (it pads and crops "
                "as the official evaluation does).")

        def sizes(i):
            block = block_size_hr if i < high_res_stages else block_size_lr
            grid = grid_size_hr if i < high_res_stages else block_size_lr
            return tuple(block), tuple(grid)

        common = dict(num_groups=num_groups, block_gmlp_factor=block_gmlp_factor,
                      grid_gmlp_factor=grid_gmlp_factor, channels_reduction=channels_reduction,
                      dropout_rate=dropout_rate, use_bias=use_bias)
        up_index = [0]
        conv_index = [0]

        def upsample_ratio(x, feats, ratio):
            layer = UpSampleRatio(feats, ratio, use_bias, name=f"UpSampleRatio_{up_index[0]}")
            up_index[0] += 1
            return layer(x)

        def auto_conv(x, feats, kernel):  # official unnamed convs (no-cross-gating path)
            layer = keras.layers.Conv2D(feats, kernel, padding="same", use_bias=use_bias,
                                        name=f"Conv_{conv_index[0]}")
            conv_index[0] += 1
            return layer(x)

        shortcuts = [image] + [NearestDownscale(2 ** i, name=f"input_scale_{i}")(image)
                               for i in range(1, num_supervision_scales)]
        outputs_all, sam_features, encs_prev, decs_prev = [], [], [], []
        for s in range(num_stages):
            x_scales = []
            for i in range(num_supervision_scales):
                feats = 2 ** i * features
                x_scale = keras.layers.Conv2D(feats, 3, padding="same", use_bias=use_bias,
                                              name=f"stage_{s}_input_conv_{i}")(shortcuts[i])
                if s > 0:
                    block, grid = sizes(i)
                    if use_cross_gating:
                        x_scale = CrossGatingBlock(
                            feats, block, grid, upsample_y=False, use_bias=use_bias,
                            dropout_rate=dropout_rate,
                            name=f"stage_{s}_input_fuse_sam_{i}")([x_scale, sam_features.pop()])[0]
                    else:
                        x_scale = keras.layers.Conv2D(
                            feats, 1, use_bias=use_bias, name=f"stage_{s}_input_catconv_{i}")(
                                keras.layers.Concatenate()([x_scale, sam_features.pop()]))
                x_scales.append(x_scale)

            encs, x = [], x_scales[0]
            for i in range(depth):
                block, grid = sizes(i)
                block_inputs = [x]
                has_skip = i < num_supervision_scales
                if has_skip:
                    block_inputs.append(x_scales[i])
                if s > 0:
                    block_inputs += [encs_prev.pop(), decs_prev.pop()]
                x, bridge = UNetEncoderBlock(
                    2 ** i * features, block, grid, lrelu_slope=lrelu_slope,
                    input_proj_factor=input_proj_factor, downsample=True,
                    use_global_mlp=use_global_mlp, has_skip=has_skip, cross_gating=s > 0,
                    name=f"stage_{s}_encoder_block_{i}", **common)(block_inputs)
                encs.append(bridge)

            for i in range(num_bottleneck_blocks):
                x = BottleneckBlock(
                    2 ** (depth - 1) * features, tuple(block_size_lr), tuple(block_size_lr),
                    input_proj_factor=input_proj_factor, name=f"stage_{s}_global_block_{i}",
                    **common)(x)
            global_feature = x

            skip_features = []
            for i in reversed(range(depth)):
                block, grid = sizes(i)
                feats = 2 ** i * features
                signal = keras.layers.Concatenate(name=f"stage_{s}_cross_gating_signal_{i}")(
                    [upsample_ratio(enc, feats, 2.0 ** (j - i)) for j, enc in enumerate(encs)])
                if use_cross_gating:
                    skips, global_feature = CrossGatingBlock(
                        feats, block, grid, upsample_y=True, use_bias=use_bias,
                        dropout_rate=dropout_rate,
                        name=f"stage_{s}_cross_gating_block_{i}")([signal, global_feature])
                else:
                    skips = auto_conv(auto_conv(signal, feats, 1), feats, 3)
                skip_features.append(skips)

            outputs, decs, sam_features = [], [], []
            for i in reversed(range(depth)):
                block, grid = sizes(i)
                feats = 2 ** i * features
                signal = keras.layers.Concatenate(name=f"stage_{s}_decoder_signal_{i}")(
                    [upsample_ratio(skip, feats, 2.0 ** (depth - j - 1 - i))
                     for j, skip in enumerate(skip_features)])
                x = UNetDecoderBlock(feats, block, grid, lrelu_slope=lrelu_slope,
                                     use_global_mlp=use_global_mlp,
                                     name=f"stage_{s}_decoder_block_{i}", **common)([x, signal])
                decs.append(x)
                if i < num_supervision_scales:
                    if s < num_stages - 1:
                        sam, out = SupervisedAttention(
                            feats, num_outputs, use_bias,
                            name=f"stage_{s}_supervised_attention_module_{i}")([x, shortcuts[i]])
                        sam_features.append(sam)
                    else:
                        out = keras.layers.Conv2D(num_outputs, 3, padding="same",
                                                  use_bias=use_bias,
                                                  name=f"stage_{s}_output_conv_{i}")(x)
                        if num_outputs == shortcuts[i].shape[-1]:
                            out = keras.layers.Add(name=f"stage_{s}_output_{i}")(
                                [out, shortcuts[i]])
                    outputs.append(out)
            encs_prev, decs_prev = encs[::-1], decs
            outputs_all.append(outputs)

        flat = [o for stage in outputs_all for o in stage]
        super().__init__(inputs=inputs, outputs=flat if all_outputs else flat[-1], name=name,
                         **kwargs)
        self.config_args = args
        self.size_multiple = multiple
        self.output_names_all = [f"stage{s}_scale{k}" for s, stage in enumerate(outputs_all)
                                 for k in range(len(stage))]
        self.input_shape_arg = None if input_shape is None else tuple(input_shape)

    def get_config(self):
        return {"name": self.name, "trainable": self.trainable, **self.config_args,
                "input_shape": self.input_shape_arg}

    def with_input_size(self, height, width, all_outputs=None):
        """A model with these weights at another static input size."""
        config = self.get_config()
        config["input_shape"] = (height, width, self.input_shape[-1])
        if all_outputs is not None:
            config["all_outputs"] = all_outputs
        clone = type(self).from_config(config)
        for target, value in zip(clone.weights, self.weights):
            target.assign(keras.ops.convert_to_numpy(value))  # a copy, not a shared buffer
        return clone


# --------------------------------------------------------------------------------------
# Any-size inference as the official evaluation runs it
# --------------------------------------------------------------------------------------


def pad_for_model(image, multiple=64):
    """``run_eval.py``'s padding of one ``(H, W, C)`` image: reflect-pad bottom/right to
    even sizes, then symmetric reflect padding to a multiple of ``multiple``. Returns the
    padded image and the crop box ``(top, left, height, width)`` of the original."""
    image = np.asarray(image, np.float32)
    h, w = image.shape[:2]
    image = np.pad(image, ((0, h % 2), (0, w % 2), (0, 0)), mode="reflect")
    he, we = image.shape[:2]

    def extra(n):
        return (((n + multiple) // multiple) * multiple - n) if n % multiple else 0

    ph, pw = extra(he), extra(we)
    image = np.pad(image, ((ph // 2, ph // 2), (pw // 2, pw // 2), (0, 0)), mode="reflect")
    nh, nw = image.shape[:2]
    return image, (nh // 2 - he // 2, nw // 2 - we // 2, h, w)


def restore(model, image, batch_size=1):
    """Restore ``(H, W, 3)`` or ``(B, H, W, 3)`` images (floats in [0, 1]) of any size.

    Pads as ``run_eval.py`` does (:func:`pad_for_model`), runs ``model`` (or a model with
    its weights built at the padded size, when that differs from the model's static
    size) and crops back. Returns float32 arrays of the input's shape (not clipped).
    """
    array = np.asarray(image, np.float32)
    single = array.ndim == 3
    batch = array[None] if single else array
    padded, boxes = zip(*(pad_for_model(im, model.size_multiple) for im in batch))
    padded = np.stack(padded)
    run = model
    if tuple(model.input_shape[1:3]) != padded.shape[1:3] or model.config_args["all_outputs"]:
        run = model.with_input_size(padded.shape[1], padded.shape[2], all_outputs=False)
    if keras.backend.backend() == "jax":  # one jitted function beats op-by-op dispatch
        out = run.predict(padded, batch_size=batch_size, verbose=0)
    else:  # eager: no (XLA) compilation of the whole graph for a few images
        out = np.concatenate([keras.ops.convert_to_numpy(run(padded[i:i + batch_size],
                                                             training=False))
                              for i in range(0, len(padded), batch_size)])
    out = keras.ops.convert_to_numpy(out)
    top, left, h, w = boxes[0]
    out = out[:, top:top + h, left:left + w]
    return out[0] if single else out


# --------------------------------------------------------------------------------------
# Variants (data)
# --------------------------------------------------------------------------------------

_CODE = "https://github.com/google-research/maxim/blob/main/maxim/models/maxim.py"
_CKPT = "https://storage.googleapis.com/gresearch/maxim/ckpt/{}/checkpoint.npz"
# name: (features, num_stages, params (official code comment), GFLOPs (same comment))
_TABLE = {
    "maxim_s1": (32, 1, 6108515, 93.163716608),
    "maxim_s2": (32, 2, 13353830, 206.743273472),
    "maxim_s3": (32, 3, 20599145, 320.3219456),
    "maxim_m1": (64, 1, 19361219, 308.495712256),
    "maxim_m2": (64, 2, 40839110, 675.25541888),
    "maxim_m3": (64, 3, 62317001, 1042.014666752),
}
# Official task checkpoints (README table; run_eval.py: S-3 for denoising/deblurring,
# S-2 for deraining/dehazing/enhancement): tag -> (model, "<Task>/<Dataset>", PSNR, SSIM).
_WEIGHTS = {
    "sidd": ("maxim_s3", "Denoising/SIDD", 39.96, 0.960),
    "gopro": ("maxim_s3", "Deblurring/GoPro", 32.86, 0.961),
    "reds": ("maxim_s3", "Deblurring/REDS", 28.93, 0.865),
    "realblur_r": ("maxim_s3", "Deblurring/RealBlur_R", 39.45, 0.962),
    "realblur_j": ("maxim_s3", "Deblurring/RealBlur_J", 32.84, 0.935),
    "rain13k": ("maxim_s2", "Deraining/Rain13k", 33.24, 0.933),
    "raindrop": ("maxim_s2", "Deraining/Raindrop", 31.87, 0.935),
    "sots_indoor": ("maxim_s2", "Dehazing/SOTS-Indoor", 38.11, 0.991),
    "sots_outdoor": ("maxim_s2", "Dehazing/SOTS-Outdoor", 34.19, 0.985),
    "lol": ("maxim_s2", "Enhancement/LOL", 23.43, 0.863),
    "fivek": ("maxim_s2", "Enhancement/FiveK", 26.15, 0.945),
}


def _variants():
    out = {}
    for name, (features, stages, params, gflops) in _TABLE.items():
        weights = {tag: {"url": _CKPT.format(path), "source": f"gs://gresearch/maxim/ckpt/"
                         f"{path}/checkpoint.npz", "task": path.split("/")[0].lower(),
                         "dataset": path.split("/")[1], "psnr": psnr, "ssim": ssim,
                         "filename": f"maxim_{path.replace('/', '_').lower()}.npz"}
                   for tag, (model, path, psnr, ssim) in _WEIGHTS.items() if model == name}
        out[name] = dict(
            config={"features": features, "depth": 3, "num_stages": stages,
                    "num_groups": 2, "num_bottleneck_blocks": 2, "block_gmlp_factor": 2,
                    "grid_gmlp_factor": 2, "input_proj_factor": 2, "channels_reduction": 4,
                    "num_supervision_scales": 3, "num_outputs": 3},
            input_size=DEFAULT_SIZE, crop_pct=1.0, interpolation="bilinear",
            mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), weights=weights, code=_CODE,
            license="apache-2.0", task="restoration",
            published={"official_code_params": params, "gflops": gflops,
                       "params_m": f"{params / 1e6:.2f}"})
    return out


VARIANTS = _variants()
MODEL_CLASS = MAXIM
DISPLAY_NAMES = {"maxim": "MAXIM"}
OFFICIAL_REPOS = ("google-research/maxim",)
TIMM_NOTES = {name: "MAXIM is a restoration model (not in timm); verify it against the "
                    "official fixtures ../shared/parity/maxim_mini.npz and "
                    "maxim_cross_gating_mini.npz." for name in VARIANTS}


def build(config, include_top=None, num_classes=None, pooling=None,
          classifier_activation=None, **kwargs):
    """Build from a variant config; the classification arguments of the registry are
    accepted and ignored (MAXIM has no classifier)."""
    return MAXIM(**config, **kwargs)


# --------------------------------------------------------------------------------------
# Checkpoints: official Flax ``.npz`` (flattened ``/`` paths, under ``opt/target/`` in
# the released files; ``param/`` is stripped by the reader for the parity fixtures).
# Our variable paths are the Flax paths, so conversion renames ``/`` -> ``.``,
# ``kernel``/``scale`` -> ``weight`` and brings each tensor to the engine's (torch)
# layout: Conv (kh, kw, I, O) -> (O, I, kh, kw), Dense (I, O) -> (O, I); token-mixing
# matrices are stored as in Flax; ConvTranspose kernels become Keras Conv2DTranspose
# kernels, which needs a spatial flip as well as the axis swap.
# --------------------------------------------------------------------------------------

KEY_MAPS = {"flax": []}  # adapt_state produces canonical names
IGNORE_KEYS = ()
_PREFIX = "opt/target/"


def flax_to_keras_convtranspose(kernel):
    """Flax ``nn.ConvTranspose`` kernel ``(kh, kw, in, out)`` (``transpose_kernel=False``,
    which computes ``out[2i+a] = x[i] @ K[1-a]`` for 2x2/2 'SAME') -> the equivalent
    Keras ``Conv2DTranspose`` kernel ``(kh, kw, out, in)``."""
    return np.ascontiguousarray(np.asarray(kernel)[::-1, ::-1].transpose(0, 1, 3, 2))


def _canonical(key):
    parts = key.split("/")
    if parts[-1] in ("kernel", "scale"):
        parts[-1] = "weight"
    return ".".join(parts)


def adapt_state(model, state, renamed=None):
    """Official Flax names/layouts -> canonical names in the engine's layouts.

    Keys outside ``opt/target/`` in a released checkpoint (optimizer state) are dropped,
    as ``run_eval.get_params`` does.
    """
    from visionzoo.weights.convert import model_targets

    if any(k.startswith(_PREFIX) for k in state):
        state = {k[len(_PREFIX):]: v for k, v in state.items() if k.startswith(_PREFIX)}
    targets = model_targets(model)
    out = {}
    for key, value in state.items():
        name = _canonical(key)
        array = np.asarray(value)
        target = targets.get(name)
        if target is not None and key.endswith("/kernel"):
            variable, kind = target
            if isinstance(_owner(model, variable), keras.layers.Conv2DTranspose):
                array = flax_to_keras_convtranspose(array) if array.ndim == 4 else array
            elif kind == "conv" and array.ndim == 4:
                array = array.transpose(3, 2, 0, 1)
            elif kind == "dense" and array.ndim == 2:
                array = array.T
        out[name] = array
    return out


def _owner(model, variable):
    if not hasattr(model, "_vz_owner_cache"):
        cache = {}
        for layer in model._flatten_layers(include_self=False, recursive=True):
            for v in layer._trainable_variables + layer._non_trainable_variables:
                cache[id(v)] = layer
        model._vz_owner_cache = cache
    return model._vz_owner_cache.get(id(variable))


def detect_layout(keys):
    keys = list(keys)
    if any(k.startswith(_PREFIX) for k in keys):
        return "flax"
    if any(k.startswith("stage_0_") and k.endswith(("/kernel", "/scale")) for k in keys):
        return "flax"
    return None


def load_flax_params(model, state):
    """Load Flax parameters (official names, optional ``opt/target/`` prefix) into any
    Keras model or layer built from these blocks (e.g. a single
    :class:`~visionzoo.layers.maxim_blocks.CrossGatingBlock` wrapped in a model), strictly.
    """
    from visionzoo.weights.convert import assign, plan_assignments

    assign(plan_assignments(model, adapt_state(model, state), (), "flax"))
    return model


def from_official_config(config):
    """Kwargs for :class:`MAXIM` from the official ``Model(**config)`` arguments
    (``variant`` "S-1" ... "M-3" is expanded like ``Model`` does)."""
    c = dict(config)
    variant = c.pop("variant", None)
    if variant:
        name = "maxim_" + variant.replace("-", "").lower()
        for k, v in VARIANTS[name]["config"].items():
            if k not in ("num_supervision_scales", "num_outputs"):
                c.setdefault(k, v)
    allowed = set(MAXIM.__init__.__code__.co_varnames)
    unknown = set(c) - allowed
    if unknown:
        raise ValueError(f"Unknown MAXIM config keys: {sorted(unknown)}.")
    return {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in c.items()}
