"""Necks on a backbone's ``pyramid_outputs``: FPN (with RetinaNet's extra levels), PAN
and the pyramid pooling module. Functional builders: each takes and returns
``{level: tensor}`` (level n = stride 2**n) and names its layers under ``name``."""

import keras

from visionzoo.heads.common import AdaptiveAveragePool, ResizeLike, conv_module


def fpn(features, channels=256, extra_levels=0, extra_from="input", norm=False,
        activation="relu", name="neck"):
    """Feature pyramid network (Lin et al. 2017) as mmdet's ``FPN``.

    1x1 lateral convs, top-down nearest upsampling + add, 3x3 output convs (no norm or
    activation unless ``norm``). ``extra_levels`` stride-2 3x3 convs add levels above the
    last: from the last *input* map (``extra_from="input"``, RetinaNet's
    ``add_extra_convs="on_input"``) or from the last output; a ReLU precedes every extra
    conv after the first, as in mmdet. With ``norm`` every conv is followed by
    BatchNorm and ``activation``.
    """
    act = activation if norm else None
    levels = sorted(features)
    laterals = {}
    for lvl in levels:
        laterals[lvl] = conv_module(features[lvl], channels, 1, f"{name}-lateral{lvl}",
                                    norm=norm, activation=act)
    for lower, upper in zip(reversed(levels[:-1]), reversed(levels[1:])):
        up = ResizeLike("nearest", name=f"{name}-up{upper}")([laterals[upper],
                                                              laterals[lower]])
        laterals[lower] = keras.layers.Add(name=f"{name}-merge{lower}")([laterals[lower], up])
    outputs = {lvl: conv_module(laterals[lvl], channels, 3, f"{name}-out{lvl}", norm=norm,
                                activation=act)
               for lvl in levels}
    source = features[levels[-1]] if extra_from == "input" else outputs[levels[-1]]
    for i in range(extra_levels):
        lvl = levels[-1] + 1 + i
        if i:
            source = keras.layers.ReLU(name=f"{name}-extra{lvl}-relu")(source)
        source = conv_module(source, channels, 3, f"{name}-extra{lvl}", strides=2, norm=norm,
                             activation=None)
        outputs[lvl] = source
    return outputs


def pan(features, channels=256, norm=True, activation="relu", name="neck"):
    """Path aggregation network (Liu et al. 2018): an FPN, then a bottom-up path
    ``N_{i+1} = conv3x3(conv3x3_s2(N_i) + P_{i+1})`` (conv-BN-``activation`` modules)."""
    top_down = fpn(features, channels, norm=norm, activation=activation, name=f"{name}-fpn")
    levels = sorted(top_down)
    outputs = {levels[0]: top_down[levels[0]]}
    for prev, lvl in zip(levels[:-1], levels[1:]):
        down = conv_module(outputs[prev], channels, 3, f"{name}-down{lvl}", strides=2,
                           activation=activation)
        down = ResizeLike("nearest", name=f"{name}-align{lvl}")([down, top_down[lvl]])
        merged = keras.layers.Add(name=f"{name}-merge_up{lvl}")([down, top_down[lvl]])
        outputs[lvl] = conv_module(merged, channels, 3, f"{name}-out_up{lvl}",
                                   activation=activation)
    return outputs


def pyramid_pooling(x, channels=512, scales=(1, 2, 3, 6), name="ppm"):
    """PSPNet's pyramid pooling module as UperNet uses it: adaptive average pools to
    ``scales``, 1x1 ConvModule each, bilinear back up, concatenated with ``x``, then a
    3x3 ConvModule bottleneck to ``channels``."""
    branches = [x]
    for s in scales:
        y = AdaptiveAveragePool(s, name=f"{name}-pool{s}")(x)
        y = conv_module(y, channels, 1, f"{name}-branch{s}")
        branches.append(ResizeLike("bilinear", name=f"{name}-up{s}")([y, x]))
    y = keras.layers.Concatenate(name=f"{name}-concat")(branches)
    return conv_module(y, channels, 3, f"{name}-bottleneck")
