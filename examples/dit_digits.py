"""Train a small pixel-space DiT on scikit-learn's digits and sample each class.

    KERAS_BACKEND=jax python examples/dit_digits.py [--epochs 200] [--out dit_digits]

1. Data: the 1797 bundled 8x8 digits (no download), pixels 0..16 scaled to [-1, 1]; one
   channel. A held-out fifth trains a separate digits classifier (scikit-learn logistic
   regression) that later labels the generated samples.
2. Model: :class:`visionzoo.backbones.dit.DiT` on the pixels themselves: 2x2 patches
   (16 tokens), width 128, 4 adaLN-Zero blocks, learned sigma, 10 classes plus the null
   class (label drop 0.1 in training, for classifier-free guidance).
3. Training: :class:`visionzoo.training.diffusion.DiffusionTrainer` (linear betas, 1000
   steps, noise MSE + variational-bound term, AdamW with an EMA of the weights) through
   ``fit()``, EMA momentum ``--ema``. After ``fit`` the model holds the EMA weights; it
   is saved as ``dit_digits.keras``.
4. Sampling: DDPM over 100 respaced steps with guidance scale ``--cfg`` (``x_0`` clipped
   to [-1, 1], pixel data), ``--per-class`` samples per class.
5. Evidence: the classifier labels the samples; the share that matches the requested class
   is printed per class and overall, and ``samples.png`` (one row per class) is written
   to ``--out`` with ``results.json``.
"""

import argparse
import json
import os
import time

import numpy as np

import keras

from visionzoo.backbones.dit import DiT
from visionzoo.training.demo import torch_threads
from visionzoo.training.diffusion import DiffusionTrainer, GaussianDiffusion


def load_digits_split(seed):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = digits.images.astype("float32")  # (N, 8, 8), 0..16
    return train_test_split(x, digits.target, test_size=0.2, stratify=digits.target,
                            random_state=seed)


def fit_classifier(x, y):
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(max_iter=2000)
    clf.fit(x.reshape(len(x), -1) / 16.0, y)
    return clf


def save_grid(samples, path, scale=4):
    """(classes, per_class, 8, 8) in [0, 16] -> a PNG grid (needs Pillow)."""
    try:
        from PIL import Image
    except ImportError:
        print("Pillow not installed: no PNG written")
        return None
    rows, cols = samples.shape[:2]
    grid = np.ones((rows * 9 + 1, cols * 9 + 1), "float32") * 16
    for r in range(rows):
        for c in range(cols):
            grid[1 + r * 9:1 + r * 9 + 8, 1 + c * 9:1 + c * 9 + 8] = samples[r, c]
    img = (255 - np.clip(grid / 16.0, 0, 1) * 255).astype("uint8")
    Image.fromarray(img).resize((img.shape[1] * scale, img.shape[0] * scale),
                                Image.NEAREST).save(path)
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", default="100", help="sampling respacing (e.g. 100, ddim50)")
    parser.add_argument("--sampler", default="ddpm", choices=["ddpm", "ddim"])
    parser.add_argument("--cfg", type=float, default=2.0)
    parser.add_argument("--per-class", type=int, default=10)
    parser.add_argument("--out", default="dit_digits")
    parser.add_argument("--ema", type=float, default=0.999,
                        help="EMA momentum (0.999 needs the full 200 epochs: Keras starts the "
                             "average at the first step's weights; use ~0.995 for short runs)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    keras.utils.set_random_seed(args.seed)

    x_train, x_test, y_train, y_test = load_digits_split(args.seed)
    clf = fit_classifier(x_train, y_train)
    clf_acc = float(clf.score(x_test.reshape(len(x_test), -1) / 16.0, y_test))
    print(f"digits classifier accuracy on held-out real digits: {clf_acc:.3f}")

    images = (x_train / 8.0 - 1.0)[..., None]  # [-1, 1], (N, 8, 8, 1)
    model = DiT(input_size=8, patch_size=2, in_channels=1, hidden_size=128, depth=4,
                num_heads=4, num_classes=10, class_dropout_prob=0.1, name="dit_digits")
    print(f"{model.count_params():,} parameters")
    trainer = DiffusionTrainer(model, GaussianDiffusion(), seed=args.seed)
    # EMA: DiT uses 0.9999 over 400K steps. The average starts from the first step's
    # weights, so its momentum must suit the run: 0.995 forgets them within ~1000 steps.
    trainer.compile(learning_rate=1e-3, ema_momentum=args.ema)
    start = time.time()
    with torch_threads(1):  # faster under torch on a small shared CPU; else a no-op
        history = trainer.fit({"images": images, "labels": y_train},
                              batch_size=args.batch_size, epochs=args.epochs, verbose=2)
    train_s = time.time() - start
    model.save(os.path.join(args.out, "dit_digits.keras"))  # the EMA weights

    classes = np.repeat(np.arange(10), args.per_class)
    diffusion = GaussianDiffusion(timestep_respacing=args.steps)
    start = time.time()
    with torch_threads(1):
        samples = diffusion.sample(model, labels=classes, shape=(8, 8, 1),
                                   sampler=args.sampler, cfg_scale=args.cfg,
                                   clip_denoised=True, seed=args.seed)
    sample_s = time.time() - start
    pixels = (samples[..., 0] + 1.0) * 8.0  # back to 0..16
    predicted = clf.predict(np.clip(pixels, 0, 16).reshape(len(pixels), -1) / 16.0)
    match = predicted == classes
    per_class = {int(c): float(match[classes == c].mean()) for c in range(10)}
    print("class-match share per class:", {c: round(v, 2) for c, v in per_class.items()})
    print(f"samples labelled as the requested class: {match.mean():.3f} "
          f"({match.sum()}/{len(match)}; chance 0.1)")
    png = save_grid(pixels.reshape(10, args.per_class, 8, 8),
                    os.path.join(args.out, "samples.png"))
    results = {"backend": keras.backend.backend(), "epochs": args.epochs,
               "final_loss": float(history.history["loss"][-1]),
               "first_loss": float(history.history["loss"][0]), "train_seconds": train_s,
               "ema": args.ema, "sampler": args.sampler, "steps": args.steps, "cfg_scale": args.cfg,
               "sample_seconds": sample_s, "classifier_accuracy_real": clf_acc,
               "class_match_share": float(match.mean()), "class_match_per_class": per_class,
               "grid": png, "parameters": int(model.count_params())}
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
