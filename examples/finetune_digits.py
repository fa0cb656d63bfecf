"""Train a small MetaFormer on scikit-learn's digits, export it to TFLite, run it.

    KERAS_BACKEND=jax python examples/finetune_digits.py   # or tensorflow / torch

The same steps as ``visionzoo demo`` (visionzoo/training/demo.py), written out with
the library's pieces so you can swap in your own data or model. To fine-tune a
pretrained variant instead, replace ``build_model`` with e.g.
``visionzoo.create_model("poolformerv2_s12", weights="in1k", num_classes=10,
input_shape=(64, 64, 3))`` (a download, and far slower on a CPU).
"""

import numpy as np

from visionzoo.export import to_tflite
from visionzoo.training.demo import (
    ShiftedDigits,
    build_model,
    compile_model,
    load_digit_splits,
    preprocess,
    tflite_latency_ms,
    tflite_predict,
    torch_threads,
)

SIZE, EPOCHS = 32, 20

# 1. Data: stratified train/val/test, 8x8 -> 32x32, 3 channels, ImageNet mean/std.
splits = load_digit_splits(SIZE, seed=0)
(train_px, y_train), (val_px, y_val), (test_px, y_test) = (
    splits["train"], splits["val"], splits["test"])
x_val, x_test = preprocess(val_px), preprocess(test_px)
train_data = ShiftedDigits(train_px, y_train, batch_size=32, shift=3)  # augmented

# 2. Model: a 3-stage PoolFormerV2-style MetaFormer; AdamW + warm-up/cosine.
model = build_model(SIZE)
print(f"{model.count_params():,} parameters")
compile_model(model, total_steps=EPOCHS * len(train_data))
with torch_threads(1):  # faster under torch on a small shared CPU; else a no-op
    model.fit(train_data, epochs=EPOCHS, validation_data=(x_val, y_val))
keras_acc = np.mean(np.argmax(model.predict(x_test, verbose=0), -1) == y_test)
print(f"Keras test accuracy: {100 * keras_acc:.2f}%")

# 3. Export: float32, and int8 calibrated on a few hundred training images.
fp32 = to_tflite(model, "digits_fp32.tflite", input_size=(SIZE, SIZE))
int8 = to_tflite(model, "digits_int8.tflite", quantize="int8",
                 representative_data=preprocess(train_px[:256]), input_size=(SIZE, SIZE))

# 4. Run both files with ai-edge-litert.
for report in (fp32, int8):
    acc = np.mean(np.argmax(tflite_predict(report.path, x_test), -1) == y_test)
    ms = tflite_latency_ms(report.path, x_test, num_threads=1)
    print(f"{report.path}: {100 * acc:.2f}%, {report.size_bytes / 1024:.0f} KiB, "
          f"{ms:.3f} ms/image")
