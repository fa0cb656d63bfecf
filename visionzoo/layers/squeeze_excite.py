"""Squeeze-and-excitation (Hu et al., 2018) as timm's ``SEModule`` computes it."""

import keras


def make_divisible(value, divisor=8, min_value=None, round_limit=0.9):
    """Round ``value`` to a multiple of ``divisor`` without losing more than 10 %
    (the MobileNet/timm rule: 308 -> 312, 56 -> 56, 20 -> 24)."""
    min_value = min_value or divisor
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < round_limit * value:
        rounded += divisor
    return rounded


def squeeze_excite(x, rd_ratio=0.25, rd_divisor=8, name="se"):
    """``x * sigmoid(fc2(relu(fc1(mean_hw(x)))))`` with 1x1 convolutions with bias.

    Layer names: ``{name}-pool``, ``{name}-fc1``, ``{name}-act``, ``{name}-fc2``,
    ``{name}-gate`` and ``{name}-scale``, so timm's ``se.fc1/fc2`` tensors map by name.
    The reduced width is ``make_divisible(C * rd_ratio, rd_divisor)``.
    """
    channels = x.shape[-1]
    reduced = make_divisible(channels * rd_ratio, rd_divisor)
    s = keras.layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}-pool")(x)
    s = keras.layers.Conv2D(reduced, 1, name=f"{name}-fc1")(s)
    s = keras.layers.ReLU(name=f"{name}-act")(s)
    s = keras.layers.Conv2D(channels, 1, name=f"{name}-fc2")(s)
    s = keras.layers.Activation("sigmoid", name=f"{name}-gate")(s)
    return keras.layers.Multiply(name=f"{name}-scale")([x, s])
