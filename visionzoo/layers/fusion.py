"""Folding BatchNorm into neighbouring linear layers (deploy-form re-parameterisation).

All functions take and return numpy arrays in Keras layouts:
``Conv2D`` kernels ``(kh, kw, in, out)``, ``DepthwiseConv2D`` kernels
``(kh, kw, C, 1)``, ``Dense`` kernels ``(in, out)``. ``bn`` is the tuple
``(gamma, beta, moving_mean, moving_variance, epsilon)`` of an inference-mode BatchNorm.
"""

import keras
import numpy as np


def batchnorm_affine(bn):
    """The per-channel ``(scale, shift)`` with ``BN(x) = x * scale + shift``."""
    gamma, beta, mean, var, eps = bn
    scale = np.asarray(gamma, np.float64) / np.sqrt(np.asarray(var, np.float64) + eps)
    shift = np.asarray(beta, np.float64) - np.asarray(mean, np.float64) * scale
    return scale, shift


def fold_bn_after_conv(kernel, bias, bn, depthwise=False):
    """``BN(conv(x) + bias)`` as one conv: returns ``(kernel, bias)``."""
    scale, shift = batchnorm_affine(bn)
    k = np.asarray(kernel, np.float64)
    if depthwise:  # (kh, kw, C, multiplier): output channel c*m + j
        mult = k.shape[3]
        k = k * scale.reshape(k.shape[2], mult)
    else:
        k = k * scale
    b = shift if bias is None else np.asarray(bias, np.float64) * scale + shift
    return k.astype(np.float32), b.astype(np.float32)


def fold_bn_before_dense(bn, kernel, bias):
    """``dense(BN(x))`` as one dense layer: returns ``(kernel, bias)``."""
    scale, shift = batchnorm_affine(bn)
    k = np.asarray(kernel, np.float64)
    b = shift @ k + (0.0 if bias is None else np.asarray(bias, np.float64))
    return (k * scale[:, None]).astype(np.float32), b.astype(np.float32)


def add_identity_to_depthwise(kernel):
    """``x + dwconv(x)`` as one depthwise conv: 1 added at the centre tap (odd kernels,
    multiplier 1, "same" padding)."""
    k = np.array(kernel, np.float32, copy=True)
    kh, kw, _, mult = k.shape
    if kh % 2 == 0 or kw % 2 == 0 or mult != 1:
        raise ValueError(f"An identity folds only into odd, multiplier-1 depthwise kernels; "
                         f"got shape {k.shape}.")
    k[kh // 2, kw // 2, :, 0] += 1.0
    return k


def bn_tuple(layer):
    """``(gamma, beta, mean, var, eps)`` of a ``keras.layers.BatchNormalization``."""
    c = layer.moving_mean.shape[0]
    value = keras.ops.convert_to_numpy
    gamma = value(layer.gamma) if layer.scale else np.ones(c, np.float32)
    beta = value(layer.beta) if layer.center else np.zeros(c, np.float32)
    return (gamma, beta, value(layer.moving_mean), value(layer.moving_variance),
            layer.epsilon)
