"""Pieces every head uses: conv modules, resizing, adaptive pooling, level selection."""

import re

import keras
import numpy as np
from keras import ops


class RestoresCompile:
    """For models with their own ``compile``: Keras skips recompiling such models on
    ``load_model`` (with a warning). Their ``compile`` takes the standard arguments, so
    the saved compile config can be replayed, optimizer state included."""

    def compile_from_config(self, config):
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)
        if getattr(self, "optimizer", None) is not None and self.built:
            self.optimizer.build(self.trainable_variables)


def conv_module(x, filters, kernel_size, name, strides=1, norm=True, activation="relu"):
    """mmcv's ``ConvModule``: Conv (bias only without a norm) -> BatchNorm -> ReLU.

    Same-size padding for odd kernels at stride 1; stride-2 convs pad symmetrically
    like torch (``padding=k // 2``).
    """
    pad = kernel_size // 2
    if strides > 1 and pad:
        x = keras.layers.ZeroPadding2D(pad, name=f"{name}-pad")(x)
        padding = "valid"
    else:
        padding = "same"
    x = keras.layers.Conv2D(filters, kernel_size, strides=strides, padding=padding,
                            use_bias=not norm, name=f"{name}-conv")(x)
    if norm:
        x = keras.layers.BatchNormalization(epsilon=1e-5, momentum=0.9, name=f"{name}-bn")(x)
    if activation:
        x = keras.layers.Activation(activation, name=f"{name}-act")(x)
    return x


@keras.saving.register_keras_serializable(package="visionzoo")
class ResizeLike(keras.layers.Layer):
    """Resize ``x`` to the spatial size of ``reference`` (or to a fixed ``size``).

    ``interpolation="bilinear"`` follows torch's ``align_corners=False`` (half-pixel
    centres, no antialiasing); ``"nearest"`` picks ``floor(i * in / out)`` like torch's
    default nearest mode.
    """

    def __init__(self, interpolation="bilinear", size=None, **kwargs):
        super().__init__(**kwargs)
        self.interpolation = interpolation
        self.size = None if size is None else tuple(size)

    def _target(self, shapes):
        if self.size is not None:
            return self.size
        ref = shapes[1]
        return ref[1], ref[2]

    def call(self, inputs):
        x = inputs[0] if isinstance(inputs, (list, tuple)) else inputs
        shapes = [t.shape for t in inputs] if isinstance(inputs, (list, tuple)) else [x.shape]
        h, w = self._target(shapes)
        if (x.shape[1], x.shape[2]) == (h, w):
            return x
        if self.interpolation == "nearest":
            rows = np.floor(np.arange(h) * x.shape[1] / h).astype("int32")
            cols = np.floor(np.arange(w) * x.shape[2] / w).astype("int32")
            return ops.take(ops.take(x, rows, axis=1), cols, axis=2)
        return ops.image.resize(x, (h, w), interpolation=self.interpolation,
                                antialias=False)

    def compute_output_shape(self, input_shape):
        if isinstance(input_shape, (list, tuple)) and isinstance(input_shape[0],
                                                                 (list, tuple)):
            x, shapes = input_shape[0], input_shape
        else:
            x, shapes = input_shape, [input_shape]
        h, w = self._target(shapes)
        return (x[0], h, w, x[3])

    def get_config(self):
        config = super().get_config()
        config.update(interpolation=self.interpolation,
                      size=None if self.size is None else list(self.size))
        return config


def adaptive_pool_matrix(length, bins):
    """``(bins, length)`` averaging matrix of torch's adaptive average pooling."""
    m = np.zeros((bins, length), np.float32)
    for i in range(bins):
        start = (i * length) // bins
        end = -((-(i + 1) * length) // bins)
        m[i, start:end] = 1.0 / (end - start)
    return m


@keras.saving.register_keras_serializable(package="visionzoo")
class AdaptiveAveragePool(keras.layers.Layer):
    """torch's ``AdaptiveAvgPool2d(bins)`` on static NHWC maps, as two small matmuls
    (works in every backend's graph mode and in TFLite, unlike a dynamic pool)."""

    def __init__(self, bins, **kwargs):
        super().__init__(**kwargs)
        self.bins = int(bins)

    def call(self, x):
        h, w = x.shape[1], x.shape[2]
        ph = ops.convert_to_tensor(adaptive_pool_matrix(h, self.bins), x.dtype)
        pw = ops.convert_to_tensor(adaptive_pool_matrix(w, self.bins), x.dtype)
        return ops.einsum("ih,bhwc,jw->bijc", ph, x, pw)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.bins, self.bins, input_shape[3])

    def get_config(self):
        config = super().get_config()
        config.update(bins=self.bins)
        return config


def pyramid_levels(backbone):
    """``{level: tensor}`` of a backbone's ``pyramid_outputs`` ("P3" -> 3), sorted."""
    outputs = getattr(backbone, "pyramid_outputs", None)
    if not outputs:
        raise ValueError(f"{backbone.name} has no pyramid outputs; detection and "
                         "segmentation heads need a hierarchical backbone (e.g. Swin, "
                         "MetaFormer, LITv2, SHViT, SVT).")
    levels = {}
    for key, tensor in outputs.items():
        m = re.fullmatch(r"P(\d+)", key)
        if not m:
            raise ValueError(f"Unexpected pyramid key {key!r}; expected 'P<level>'.")
        levels[int(m[1])] = tensor
    for level, tensor in levels.items():
        if tensor.shape[1] is None or tensor.shape[2] is None:
            raise ValueError("Heads need a backbone built for a static input size; pass "
                             "input_shape=(H, W, 3).")
    return dict(sorted(levels.items()))
