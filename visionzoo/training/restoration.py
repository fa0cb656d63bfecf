"""Image-restoration training recipe: losses and metrics (MAXIM, and any image-to-image
model whose outputs and targets are NHWC images in [0, 1]).

    from visionzoo.training.restoration import compile_for_restoration
    compile_for_restoration(model, learning_rate=2e-4)
    model.fit(noisy, clean, epochs=...)

Loss (MAXIM paper, Sec. 4 / Eq. 7, per output): Charbonnier ``sqrt((x - y)^2 + eps^2)``
(eps 1e-3) plus ``frequency_weight`` (0.1) times the L1 distance of the 2-D Fourier
transforms, ``mean(|Re F(x) - Re F(y)| + |Im F(x) - Im F(y)|)`` with the orthonormal
FFT (``norm="ortho"``: divided by ``sqrt(H*W)``, so the weight does not depend on the crop
size). The official training code is not released; this is our reading of
``||F(x) - F(y)||_1``; unnormalised FFTs (as some ports use) make the term ~``sqrt(H*W)``
times larger and dominate the loss. The FFT is ``keras.ops.fft2`` (training only; nothing is exported).
For multi-stage, multi-scale supervision build the model with ``all_outputs=True`` and
pass one target per output (:func:`multiscale_targets`); Keras sums the per-output losses.

Metrics: :class:`PSNR` (dB, ``max_val`` 1) and :class:`SSIM` (Wang et al. 2004: 11x11
Gaussian window, sigma 1.5, K1 0.01, K2 0.03, valid filtering, mean over channels, as
``tf.image.ssim`` and ``skimage``'s ``gaussian_weights=True, use_sample_covariance=False``).
"""

import keras
import numpy as np
from keras import ops

from visionzoo.layers.conv import depthwise_conv


@keras.saving.register_keras_serializable(package="visionzoo")
class RestorationLoss(keras.losses.Loss):
    """Charbonnier + ``frequency_weight`` x L1 of the 2-D FFT difference."""

    def __init__(self, epsilon=1e-3, frequency_weight=0.1, name="restoration_loss",
                 **kwargs):
        super().__init__(name=name, **kwargs)
        self.epsilon = epsilon
        self.frequency_weight = frequency_weight

    def call(self, y_true, y_pred):
        y_true = ops.cast(y_true, "float32")
        y_pred = ops.cast(y_pred, "float32")
        diff = y_pred - y_true
        axes = tuple(range(1, len(diff.shape)))
        loss = ops.mean(ops.sqrt(ops.square(diff) + self.epsilon ** 2), axis=axes)
        if self.frequency_weight:
            # (B, H, W, C) -> (B, C, H, W): fft2 works on the last two axes.
            d = ops.transpose(diff, (0, 3, 1, 2))
            real, imag = ops.fft2((d, ops.zeros_like(d)))
            scale = float(d.shape[-1] * d.shape[-2]) ** 0.5  # orthonormal FFT
            freq = ops.mean(ops.abs(real) + ops.abs(imag), axis=axes) / scale
            loss = loss + self.frequency_weight * freq
        return loss

    def get_config(self):
        config = super().get_config()
        config.update(epsilon=self.epsilon, frequency_weight=self.frequency_weight)
        return config


def psnr(y_true, y_pred, max_val=1.0):
    """Per-image PSNR in dB of NHWC batches."""
    y_true = ops.cast(y_true, "float32")
    y_pred = ops.cast(y_pred, "float32")
    mse = ops.mean(ops.square(y_true - y_pred), axis=(1, 2, 3))
    return 10.0 * ops.log10(max_val ** 2 / ops.maximum(mse, 1e-12))


def _gaussian_window(size=11, sigma=1.5):
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-(x ** 2) / (2 * sigma ** 2))
    g /= g.sum()
    return np.outer(g, g)


def ssim(y_true, y_pred, max_val=1.0, filter_size=11, sigma=1.5, k1=0.01, k2=0.03):
    """Per-image SSIM of NHWC batches (mean over the valid positions and channels)."""
    y_true = ops.cast(y_true, "float32")
    y_pred = ops.cast(y_pred, "float32")
    c = y_true.shape[-1]
    kernel = np.tile(_gaussian_window(filter_size, sigma)[:, :, None, None], (1, 1, c, 1))
    kernel = ops.convert_to_tensor(kernel.astype("float32"))

    def blur(t):
        return depthwise_conv(t, kernel, strides=1, padding="valid")

    mu_x, mu_y = blur(y_true), blur(y_pred)
    sxx = blur(y_true * y_true) - mu_x * mu_x
    syy = blur(y_pred * y_pred) - mu_y * mu_y
    sxy = blur(y_true * y_pred) - mu_x * mu_y
    c1, c2 = (k1 * max_val) ** 2, (k2 * max_val) ** 2
    value = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / (
        (mu_x * mu_x + mu_y * mu_y + c1) * (sxx + syy + c2))
    return ops.mean(value, axis=(1, 2, 3))


class _MeanOverImages(keras.metrics.Metric):
    def __init__(self, fn, max_val=1.0, name=None, **kwargs):
        super().__init__(name=name, **kwargs)
        self.fn = fn
        self.max_val = max_val
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")

    def update_state(self, y_true, y_pred, sample_weight=None):
        values = self.fn(y_true, y_pred, max_val=self.max_val)
        self.total.assign_add(ops.sum(values))
        self.count.assign_add(ops.cast(ops.shape(values)[0], "float32"))

    def result(self):
        return self.total / ops.maximum(self.count, 1.0)

    def reset_state(self):
        self.total.assign(0.0)
        self.count.assign(0.0)

    def get_config(self):
        return {"name": self.name, "max_val": self.max_val}


@keras.saving.register_keras_serializable(package="visionzoo")
class PSNR(_MeanOverImages):
    """Mean per-image PSNR (dB) over the images seen."""

    def __init__(self, max_val=1.0, name="psnr", **kwargs):
        super().__init__(psnr, max_val=max_val, name=name, **kwargs)


@keras.saving.register_keras_serializable(package="visionzoo")
class SSIM(_MeanOverImages):
    """Mean per-image SSIM over the images seen (images of at least 11x11)."""

    def __init__(self, max_val=1.0, name="ssim", **kwargs):
        super().__init__(ssim, max_val=max_val, name=name, **kwargs)


def multiscale_targets(images, num_stages, num_scales):
    """Targets for a MAXIM model built with ``all_outputs=True``: per stage, the clean
    images at 1/2^(num_scales-1) ... 1/1 (coarsest first, as the outputs), downscaled
    like the model's multi-scale inputs (nearest, ``jax.image.resize`` convention)."""
    images = np.asarray(images, np.float32)
    scales = []
    for k in reversed(range(num_scales)):
        f = 2 ** k
        scales.append(images[:, f // 2::f, f // 2::f] if f > 1 else images)
    return [t for _ in range(num_stages) for t in scales]


def compile_for_restoration(model, learning_rate=2e-4, weight_decay=1e-4,
                            frequency_weight=0.1, steps=None, jit_compile="auto",
                            **compile_kwargs):
    """Compile ``model`` with AdamW (cosine decay over ``steps`` when given), the
    Charbonnier + frequency loss and PSNR/SSIM metrics (on the last output when the
    model has several). ``compile_kwargs`` go to ``model.compile`` (``run_eagerly``...)."""
    lr = learning_rate
    if steps:
        lr = keras.optimizers.schedules.CosineDecay(learning_rate, steps, alpha=1e-3)
    n_out = len(model.outputs)
    loss = RestorationLoss(frequency_weight=frequency_weight)
    metrics = [PSNR(), SSIM()]
    model.compile(optimizer=keras.optimizers.AdamW(lr, weight_decay=weight_decay),
                  loss=[loss] * n_out if n_out > 1 else loss,
                  metrics=[[] for _ in range(n_out - 1)] + [metrics] if n_out > 1 else metrics,
                  jit_compile=jit_compile, **compile_kwargs)
    return model
