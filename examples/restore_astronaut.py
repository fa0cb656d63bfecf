"""Denoise/deblur scikit-image's astronaut with MAXIM, before and after a short fine-tune.

    python examples/restore_astronaut.py [--model compact|maxim_s1|...] [--steps 400]
                                         [--weights sidd] [--out maxim_astronaut]

The astronaut (downscaled to 128x128) is blurred (3x3 Gaussian) and corrupted with
seeded Gaussian noise (sigma 0.08). The model is fine-tuned with the restoration recipe
(Charbonnier + frequency loss, AdamW with cosine decay) on random 64x64 crops of *other*
scikit-image photos (coffee, chelsea, rocket) corrupted the same way with fresh noise, so
the astronaut is never trained on. PSNR/SSIM on the astronaut are printed for the
corrupted input, the model before and after fine-tuning; before/after PNGs are written
to ``--out``.

``--model compact`` (the default) is a small MAXIM that trains from scratch on a CPU in
about five minutes: the same blocks (multi-axis gated MLP, cross-gating, RCAB, SAM) with
16 features, depth 2, one stage and 8x8 blocks/grids (0.22M parameters). Registered
variants (``maxim_s1`` ... ``maxim_m3``) work too, with official weights via
``--weights`` (downloads the checkpoint); they are far slower to fine-tune on a CPU.
From scratch, the output convolutions are zeroed so that the model starts as the
identity (its output is the corrupted input).
"""

import argparse
import os
import time

import numpy as np


def _blur(img):
    k = np.array([1.0, 2.0, 1.0]) / 4.0
    p = np.pad(img, ((1, 1), (1, 1), (0, 0)), mode="reflect")
    rows = k[0] * p[:-2] + k[1] * p[1:-1] + k[2] * p[2:]
    return k[0] * rows[:, :-2] + k[1] * rows[:, 1:-1] + k[2] * rows[:, 2:]


def corrupt(img, rng, sigma=0.08):
    """Blur then add Gaussian noise; float32 in [0, 1]."""
    noisy = _blur(img) + sigma * rng.standard_normal(img.shape)
    return np.clip(noisy, 0, 1).astype("float32")


def _downscale(img, factor):
    h, w = img.shape[0] // factor * factor, img.shape[1] // factor * factor
    return img[:h, :w].reshape(h // factor, factor, w // factor, factor, 3).mean(axis=(1, 3))


def training_batches(rng, batch, size=64):
    from skimage import data

    photos = [_downscale(getattr(data, n)().astype("float32") / 255.0, 2)
              for n in ("coffee", "chelsea", "rocket")]
    while True:
        clean = []
        for _ in range(batch):
            p = photos[rng.integers(len(photos))]
            i = rng.integers(p.shape[0] - size)
            j = rng.integers(p.shape[1] - size)
            crop = p[i:i + size, j:j + size]
            if rng.random() < 0.5:
                crop = crop[:, ::-1]
            clean.append(crop)
        clean = np.stack(clean).astype("float32")
        yield np.stack([corrupt(c, rng) for c in clean]), clean


def scores(pred, target):
    from visionzoo.training.restoration import psnr, ssim
    import keras

    pred = np.clip(pred, 0, 1)[None]
    return (float(keras.ops.convert_to_numpy(psnr(target[None], pred))[0]),
            float(keras.ops.convert_to_numpy(ssim(target[None], pred))[0]))


def save_png(img, path):
    from PIL import Image

    Image.fromarray((np.clip(img, 0, 1) * 255 + 0.5).astype("uint8")).save(path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="compact",
                        help="'compact' (small from-scratch MAXIM) or a registered variant")
    parser.add_argument("--weights", default=None, help="official tag (downloads), or path")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="maxim_astronaut")
    args = parser.parse_args(argv)

    import keras
    from skimage import data

    import visionzoo
    from visionzoo.backbones.maxim import restore
    from visionzoo.training.restoration import compile_for_restoration

    keras.utils.set_random_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    os.makedirs(args.out, exist_ok=True)
    clean = _downscale(data.astronaut().astype("float32") / 255.0, 4)  # 128x128
    noisy = corrupt(clean, np.random.default_rng(1234))
    save_png(clean, os.path.join(args.out, "astronaut_clean.png"))
    save_png(noisy, os.path.join(args.out, "astronaut_corrupted.png"))
    print(f"backend {keras.backend.backend()}, model {args.model}, weights {args.weights}")
    print("corrupted input : PSNR %.2f dB  SSIM %.4f" % scores(noisy, clean))

    if args.model == "compact":
        from visionzoo.backbones.maxim import MAXIM

        model = MAXIM(features=16, depth=2, num_stages=1, num_groups=1,
                      num_supervision_scales=1, block_size_hr=(8, 8), block_size_lr=(4, 4),
                      grid_size_hr=(8, 8), grid_size_lr=(4, 4), input_shape=(64, 64, 3),
                      name="maxim_compact")
    else:
        model = visionzoo.create_model(args.model, weights=args.weights,
                                       input_shape=(64, 64, 3))
    if args.weights is None:
        # From scratch the random output convs add a large random residual to the input;
        # zero them so that the model starts as the identity (output = corrupted input).
        for layer in model.layers:
            if "_output_conv_" in layer.name:
                for w in layer.weights:
                    w.assign(np.zeros(w.shape, "float32"))
    print(f"{model.count_params():,} parameters")
    before = restore(model, noisy)
    save_png(before, os.path.join(args.out, "astronaut_restored_before.png"))
    print("before fine-tune: PSNR %.2f dB  SSIM %.4f" % scores(before, clean))

    compile_for_restoration(model, learning_rate=args.lr, steps=args.steps)
    batches = training_batches(rng, args.batch)
    start = time.time()
    history = model.fit(batches, steps_per_epoch=args.steps, epochs=1, verbose=0)
    print(f"fine-tuned {args.steps} steps of {args.batch} 64x64 crops in "
          f"{time.time() - start:.0f}s (final train loss {history.history['loss'][-1]:.4f})")
    after = restore(model, noisy)
    save_png(after, os.path.join(args.out, "astronaut_restored_after.png"))
    print("after fine-tune : PSNR %.2f dB  SSIM %.4f" % scores(after, clean))
    print(f"images written to {args.out}/")


if __name__ == "__main__":
    main()
