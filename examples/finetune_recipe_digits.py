"""Fine-tune a registered architecture on scikit-learn's digits with the full recipe.

    KERAS_BACKEND=jax python examples/finetune_recipe_digits.py   # or tensorflow / torch
    python examples/finetune_recipe_digits.py --model caformer_s18 --epochs 40

What ``visionzoo train`` does, from Python: AdamW with warm-up + cosine decay, label
smoothing, RandAugment / RandomErasing / MixUp / CutMix (Keras layers), stochastic depth,
layer-wise learning-rate decay, an EMA of the weights, gradient clipping, resumable
checkpoints, then the best epoch exported to ``.keras`` and TFLite (checked on the
held-out images). The backbone is the full ``poolformerv2_s12`` (11.9M parameters, the
shape of the ImageNet checkpoint) at 32x32; pass ``--weights in1k`` to start from the
ImageNet weights (a download) instead of from scratch.

The digits are 8x8 grey images: upsampled to 32x32 RGB, no horizontal flips (a flipped
digit is another symbol), a lighter RandAugment than Keras' default (its equalise and
solarise operations wipe out near-binary images).
"""

import argparse
import json

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from visionzoo.training.data import Augment
from visionzoo.training.finetune import finetune

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--model", default="poolformerv2_s12")
p.add_argument("--weights", default=None, help="e.g. in1k (downloads the checkpoint)")
p.add_argument("--epochs", type=int, default=30)
p.add_argument("--batch-size", type=int, default=64)
p.add_argument("--lr", type=float, default=2e-3)
p.add_argument("--mixed-precision", default=None, choices=["mixed_bfloat16", "mixed_float16"])
p.add_argument("--out", default="digits_finetune")
args = p.parse_args()

digits = load_digits()
pixels = (digits.images * 16).clip(0, 255).astype(np.uint8)  # 0..16 -> 0..255
train_px, test_px, y_train, y_test = train_test_split(
    pixels, digits.target, test_size=0.2, stratify=digits.target, random_state=0)

result = finetune(
    args.model, (train_px, y_train), val_data=(test_px, y_test), weights=args.weights,
    image_size=32, crop_pct=1.0, epochs=args.epochs, batch_size=args.batch_size,
    learning_rate=args.lr, weight_decay=0.05, warmup_epochs=2, label_smoothing=0.1,
    augment=Augment(hflip=0.0, randaugment=(1, 0.15), random_erasing=0.25, mixup=0.2,
                    cutmix=1.0, switch_prob=0.5),
    drop_path_rate=0.1, layer_decay=0.75, ema_decay=0.998, clip_norm=1.0,
    mixed_precision=args.mixed_precision, output_dir=args.out, verbose=2)

summary = result.summary
print(json.dumps({k: summary[k] for k in ("model", "backend", "best_epoch",
                                           "best_val_accuracy", "tflite_val_accuracy",
                                           "train_seconds")}, indent=1))
print(f"Curves: {result.paths['curves']}; TFLite: {result.paths['tflite']}")
