"""``visionzoo demo``: train a small MetaFormer on handwritten digits, export it to
TFLite (float32, dynamic-range int8 and int8) and run the files.

    from visionzoo.training.demo import demo
    results = demo(out="visionzoo_demo")      # about a few minutes on 2 CPU cores

or ``visionzoo demo [--epochs N] [--out DIR] [--seed N]`` from a shell. Any Keras
backend works (``KERAS_BACKEND=jax|tensorflow|torch``); TFLite conversion runs under
TensorFlow (in a subprocess for JAX and torch, see :mod:`visionzoo.export`).

The steps:

1. **Data.** scikit-learn's bundled digits (1797 grey 8x8 images, 10 classes, no
   download) are split stratified into train / validation / test (72 / 8 / 20 %).
   Pixels ``0..16`` are divided by 16 (-> ``[0, 1]``), upsampled bilinearly to
   32x32 (the MetaFormer minimum; the stride-4 stem then sees an 8x8 token grid,
   one token per original pixel), repeated to 3 channels and normalised with the
   ImageNet mean/std, the preprocessing of the ImageNet-pretrained MetaFormers, so
   the same pipeline serves a pretrained variant. Training batches are shifted at
   random by up to 3 px (zero padding) as augmentation.
2. **Model.** A 3-stage PoolFormerV2-style :class:`~visionzoo.backbones.metaformer.MetaFormer`
   (pooling token mixer, GroupNorm(1) blocks without bias, linear head; depths
   2-2-2, dims 32-64-128, ~0.44 M parameters), trained from scratch: ImageNet
   variants are 12 M+ parameters and would not train in minutes on a CPU. The MLPs
   use GELU (PoolFormer v1's activation) rather than the baselines' StarReLU:
   StarReLU squares its input, and int8 post-training quantisation of those
   activations cost 1-9 accuracy points in our runs where GELU costs under 1.
3. **Training.** AdamW (weight decay 0.05, batch 32) with linear warm-up and cosine decay,
   sparse categorical cross-entropy on logits, accuracy; Keras ``fit`` with the
   progress bar and validation on the held-out slice of the training data.
4. **Export.** :func:`visionzoo.export.to_tflite` writes a float32 file, a
   dynamic-range file (int8 weights, float32 activations quantised at run time; no
   calibration) and an int8 file (post-training quantisation calibrated on 256
   training images).
5. **TFLite evaluation.** The files run in ``ai_edge_litert`` on the test split:
   accuracy, agreement with the Keras predictions, median single-image latency with
   1 and 2 threads, file size.
6. **Outputs** in ``out``: ``digits_metaformer.keras``, ``digits_fp32.tflite``,
   ``digits_dynamic.tflite``, ``digits_int8.tflite``, ``predictions.png`` (test digits
   labelled by the int8 model; needs Pillow, skipped without it) and ``results.json`` with every figure.
"""

import contextlib
import json
import os
import sys
import time

import keras
import numpy as np

from visionzoo.registry import IMAGENET_MEAN, IMAGENET_STD

IMAGE_SIZE = 32
NUM_CLASSES = 10
DEFAULT_EPOCHS = 20
QUICK_EPOCHS = 8
BATCH_SIZE = 32
LEARNING_RATE = 2e-3
WEIGHT_DECAY = 0.05
WARMUP_FRACTION = 0.1
TEST_FRACTION = 0.2
TFLITE_MODES = ("fp32", "dynamic", "int8")  # file names digits_<mode>.tflite
VAL_FRACTION = 0.1  # of the training part
SHIFT_PIXELS = 3
QUICK_SHIFT_PIXELS = 1  # milder augmentation converges in fewer epochs
CALIBRATION_SAMPLES = 256
# Under the torch backend, training runs on one intra-op thread: this model is too small
# to gain much from more (measured: 0.029 s/step on 2 threads vs 0.038 on 1, idle
# machine), while multi-threaded torch CPU kernels stall badly when the cores are
# shared with other work (0.4-1.8 s/step on a loaded 2-core machine; a 20-epoch run
# took 285 s instead of 48 s). None leaves torch's setting alone.
TORCH_TRAIN_THREADS = 1
ACCURACY_TARGET = 0.95
TFLITE_TOLERANCE = 0.01  # |TFLite accuracy - Keras accuracy| must stay within 1 point

MODEL_DESCRIPTION = ("PoolFormerV2-style MetaFormer, 3 stages: pooling mixer, "
                     "GroupNorm(1) blocks, GELU MLP, linear head")
MODEL_CONFIG = {
    "depths": [2, 2, 2],
    "dims": [32, 64, 128],
    "token_mixers": "pooling",
    "block_norm": {"type": "groupnorm1", "epsilon": 1e-6, "center": False},
    "mlp_act": "gelu",  # not StarReLU: see the module docstring (int8)
    "head_style": "linear",
    "res_scale_init_values": None,
}


# --------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------


def load_digit_splits(image_size=IMAGE_SIZE, seed=0, test_fraction=TEST_FRACTION,
                      val_fraction=VAL_FRACTION):
    """scikit-learn's digits, split stratified and upsampled.

    Args:
        image_size: int. Side of the upsampled images.
        seed: int. Seed of both splits.
        test_fraction: float. Held-out test share of all images.
        val_fraction: float. Validation share of the remaining training images.

    Returns:
        dict with ``"train"``, ``"val"`` and ``"test"``, each a pair ``(pixels,
        labels)``: pixels float32 ``(N, image_size, image_size, 1)`` in ``[0, 1]``
        (not yet normalised, see :func:`preprocess`), labels int32 ``(N,)``.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = digits.images.astype("float32") / 16.0  # 0..16 -> [0, 1]
    labels = digits.target.astype("int32")
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=test_fraction, stratify=labels, random_state=seed)
    x_train, x_val, y_train, y_val = train_test_split(
        x_train, y_train, test_size=val_fraction, stratify=y_train, random_state=seed)
    return {name: (upsample(x, image_size), y) for name, x, y in (
        ("train", x_train, y_train), ("val", x_val, y_val), ("test", x_test, y_test))}


def upsample(images, image_size):
    """``(N, h, w)`` grey images in ``[0, 1]`` -> ``(N, S, S, 1)``, bilinear."""
    x = keras.ops.image.resize(np.asarray(images, "float32")[..., None],
                               (image_size, image_size), interpolation="bilinear")
    return np.clip(keras.ops.convert_to_numpy(x), 0.0, 1.0).astype("float32")


def preprocess(pixels):
    """``(N, S, S, 1)`` pixels in ``[0, 1]`` -> 3-channel ImageNet-normalised float32."""
    rgb = np.repeat(np.asarray(pixels, "float32"), 3, axis=-1)
    mean = np.asarray(IMAGENET_MEAN, "float32")
    std = np.asarray(IMAGENET_STD, "float32")
    return ((rgb - mean) / std).astype("float32")


class ShiftedDigits(keras.utils.PyDataset):
    """Training batches: reshuffled every epoch, each image shifted at random by up to
    ``shift`` pixels (zero padding), then :func:`preprocess`-ed.

    Args:
        pixels: float32 ``(N, S, S, 1)`` in ``[0, 1]``.
        labels: int ``(N,)``.
        batch_size: int.
        shift: int. Largest shift in pixels along each axis (0: no augmentation).
        seed: int.
    """

    def __init__(self, pixels, labels, batch_size=BATCH_SIZE, shift=SHIFT_PIXELS, seed=0,
                 **kwargs):
        super().__init__(**kwargs)
        self.pixels = pixels
        self.labels = labels
        self.batch_size = batch_size
        self.shift = shift
        self.rng = np.random.default_rng(seed)
        self.order = self.rng.permutation(len(pixels))

    def __len__(self):
        return -(-len(self.pixels) // self.batch_size)

    def __getitem__(self, index):
        idx = self.order[index * self.batch_size:(index + 1) * self.batch_size]
        batch = self.pixels[idx]
        s = self.shift
        if s:
            size_h, size_w = batch.shape[1:3]
            padded = np.pad(batch, ((0, 0), (s, s), (s, s), (0, 0)))
            offsets = self.rng.integers(0, 2 * s + 1, size=(len(batch), 2))
            batch = np.stack([padded[i, dy:dy + size_h, dx:dx + size_w]
                              for i, (dy, dx) in enumerate(offsets)])
        return preprocess(batch), self.labels[idx]

    def on_epoch_end(self):
        self.order = self.rng.permutation(len(self.pixels))


# --------------------------------------------------------------------------------------
# Model and training
# --------------------------------------------------------------------------------------


def build_model(image_size=IMAGE_SIZE, num_classes=NUM_CLASSES, config=None):
    """The demo's MetaFormer (``MODEL_CONFIG`` unless ``config`` is given), logits out."""
    from visionzoo.backbones.metaformer import MetaFormer

    config = dict(MODEL_CONFIG if config is None else config)
    return MetaFormer(**config, num_classes=num_classes,
                      input_shape=(image_size, image_size, 3), name="digits_metaformer")


def compile_model(model, total_steps, learning_rate=LEARNING_RATE,
                  weight_decay=WEIGHT_DECAY, warmup_fraction=WARMUP_FRACTION):
    """AdamW with linear warm-up then cosine decay to 0 over ``total_steps``;
    sparse categorical cross-entropy on logits; accuracy."""
    warmup = max(1, int(warmup_fraction * total_steps))
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0, decay_steps=max(1, total_steps - warmup),
        warmup_target=learning_rate, warmup_steps=warmup)
    model.compile(
        optimizer=keras.optimizers.AdamW(learning_rate=schedule, weight_decay=weight_decay),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"])
    return model


@contextlib.contextmanager
def torch_threads(n):
    """Run the block with ``n`` torch intra-op threads under the torch backend (restored
    afterwards); a no-op under other backends or when ``n`` is None."""
    if keras.backend.backend() != "torch" or not n:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# --------------------------------------------------------------------------------------
# TFLite evaluation
# --------------------------------------------------------------------------------------


def _to_input_dtype(x, detail):
    """Float batch -> the tensor's dtype (quantised with its scale/zero point if integer)."""
    dtype = detail["dtype"]
    if np.issubdtype(dtype, np.integer):
        scale, zero_point = detail["quantization"]
        info = np.iinfo(dtype)
        q = np.round(x / scale + zero_point)
        return np.clip(q, info.min, info.max).astype(dtype)
    return x.astype(dtype)


def _from_output_dtype(y, detail):
    """Output tensor -> float32 (dequantised if integer)."""
    if np.issubdtype(detail["dtype"], np.integer):
        scale, zero_point = detail["quantization"]
        return (y.astype("float32") - zero_point) * scale
    return y.astype("float32")


def _interpreter(path, batch, num_threads=None):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=os.fspath(path), num_threads=num_threads)
    inp = interpreter.get_input_details()[0]
    shape = (batch,) + tuple(int(d) for d in inp["shape"][1:])
    interpreter.resize_tensor_input(inp["index"], shape)
    interpreter.allocate_tensors()
    return interpreter, interpreter.get_input_details()[0], interpreter.get_output_details()[0]


def tflite_predict(path, images, batch_size=64, num_threads=None):
    """Logits of a ``.tflite`` classifier on ``images`` (float32, already preprocessed).

    Runs in ``ai_edge_litert`` batch by batch (the last batch is zero padded);
    integer input/output tensors are (de)quantised with their own parameters.
    """
    images = np.asarray(images, "float32")
    interpreter, inp, out = _interpreter(path, batch_size, num_threads)
    logits = []
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        n = len(batch)
        if n < batch_size:
            batch = np.concatenate([batch, np.zeros((batch_size - n,) + batch.shape[1:],
                                                    "float32")])
        interpreter.set_tensor(inp["index"], _to_input_dtype(batch, inp))
        interpreter.invoke()
        logits.append(_from_output_dtype(interpreter.get_tensor(out["index"]), out)[:n])
    return np.concatenate(logits)


def tflite_latency_ms(path, images, num_threads=1, runs=100, warmup=10):
    """Median wall time in ms of one single-image inference (set input, invoke, read
    output) over ``runs`` runs cycling through ``images``."""
    images = np.asarray(images, "float32")
    interpreter, inp, out = _interpreter(path, 1, num_threads)
    times = []
    for i in range(warmup + runs):
        x = _to_input_dtype(images[i % len(images)][None], inp)
        start = time.perf_counter()
        interpreter.set_tensor(inp["index"], x)
        interpreter.invoke()
        interpreter.get_tensor(out["index"])
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return 1000.0 * float(np.median(times))


# --------------------------------------------------------------------------------------
# Picture
# --------------------------------------------------------------------------------------


def save_prediction_grid(pixels, labels, predictions, path, title, columns=8, rows=4,
                         cell=48):
    """A PNG of test digits with predicted labels (wrong ones first, in red with the
    true label in brackets). Returns ``path``, or None when Pillow is not installed."""
    try:
        from PIL import Image, ImageDraw, ImageFont
    except ImportError:
        return None
    pixels = np.asarray(pixels, "float32")[..., 0]
    wrong = np.flatnonzero(predictions != labels)
    right = np.flatnonzero(predictions == labels)
    count = columns * rows
    chosen = np.concatenate([wrong[:count // 2], right])[:count]
    try:
        font = ImageFont.load_default(size=13)
    except TypeError:  # Pillow < 10.1
        font = ImageFont.load_default()
    label_h, top = 18, 22
    canvas = Image.new("RGB", (columns * cell, top + rows * (cell + label_h)), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 4), title, fill="black", font=font)
    for k, i in enumerate(chosen):
        r, c = divmod(k, columns)
        grey = (255 * (1.0 - np.clip(pixels[i], 0, 1))).astype("uint8")  # dark ink
        tile = Image.fromarray(grey, "L").resize((cell - 4, cell - 4), Image.NEAREST)
        x0, y0 = c * cell + 2, top + r * (cell + label_h)
        canvas.paste(tile.convert("RGB"), (x0, y0))
        ok = predictions[i] == labels[i]
        text = f"{predictions[i]}" if ok else f"{predictions[i]} ({labels[i]})"
        draw.text((x0 + 2, y0 + cell - 3), text, font=font,
                  fill=(0, 128, 0) if ok else (200, 0, 0))
    canvas.save(path)
    return path


# --------------------------------------------------------------------------------------
# The demo
# --------------------------------------------------------------------------------------


def demo(epochs=None, out="visionzoo_demo", seed=0, verbose=1, quick=False):
    """Train, export and run the digits MetaFormer; write everything to ``out``.

    Args:
        epochs: int or None. Training epochs (default ``DEFAULT_EPOCHS``, or
            ``QUICK_EPOCHS`` with ``quick``).
        out: str. Output folder (created).
        seed: int. Seeds the splits, the augmentation and Keras' initialisation.
        verbose: 0 (silent) or 1 (step headers, progress bar, figures).
        quick: bool. Fewer epochs (``QUICK_EPOCHS``), milder augmentation, fewer
            latency runs and one thread count: a fast check of the pipeline (about
            96-97 % test accuracy rather than 97.5-98.6 %).

    Returns:
        dict of the measured figures (also written to ``out/results.json``):
        ``keras.test_accuracy``, ``tflite.fp32`` / ``tflite.dynamic`` / ``tflite.int8``
        with ``path``,
        ``size_bytes``, ``test_accuracy``, ``agreement_with_keras``,
        ``latency_ms`` (per thread count), ``export_seconds``, ``max_abs_diff``;
        ``checks`` (accuracy target, TFLite within 1 point) and ``wall_seconds``.
        If the export fails, ``tflite["error"]`` holds the message.
    """
    start = time.time()
    epochs = int(epochs) if epochs is not None else (QUICK_EPOCHS if quick else DEFAULT_EPOCHS)
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}.")
    os.makedirs(out, exist_ok=True)
    say = print if verbose else (lambda *a, **k: None)
    steps = 5
    results = {"backend": keras.backend.backend(), "keras_version": keras.__version__,
               "seed": seed, "epochs": epochs, "quick": bool(quick),
               "image_size": IMAGE_SIZE, "out": os.path.abspath(out)}

    say(f"[1/{steps}] Data: scikit-learn digits -> {IMAGE_SIZE}x{IMAGE_SIZE}x3, "
        "ImageNet mean/std")
    keras.utils.set_random_seed(seed)
    splits = load_digit_splits(IMAGE_SIZE, seed=seed)
    (train_px, y_train), (val_px, y_val), (test_px, y_test) = (
        splits["train"], splits["val"], splits["test"])
    x_val, x_test = preprocess(val_px), preprocess(test_px)
    results["data"] = {"train": len(y_train), "val": len(y_val), "test": len(y_test)}
    say(f"      train {len(y_train)} / val {len(y_val)} / test {len(y_test)} images "
        f"(stratified, seed {seed})")

    say(f"[2/{steps}] Model and training ({keras.backend.backend()} backend)")
    model = build_model(IMAGE_SIZE)
    params = int(model.count_params())
    results["model"] = {"description": MODEL_DESCRIPTION, "config": MODEL_CONFIG,
                        "params": params}
    say(f"      {MODEL_DESCRIPTION}")
    say(f"      depths {MODEL_CONFIG['depths']}, dims {MODEL_CONFIG['dims']}: "
        f"{params:,} parameters")
    shift = QUICK_SHIFT_PIXELS if quick else SHIFT_PIXELS
    train_data = ShiftedDigits(train_px, y_train, BATCH_SIZE, shift, seed=seed)
    compile_model(model, total_steps=epochs * len(train_data))
    results["training"] = {"batch_size": BATCH_SIZE, "learning_rate": LEARNING_RATE,
                           "weight_decay": WEIGHT_DECAY, "warmup_fraction": WARMUP_FRACTION,
                           "shift_pixels": shift, "steps": epochs * len(train_data)}
    say(f"      AdamW lr {LEARNING_RATE:g} (warm-up + cosine), weight decay "
        f"{WEIGHT_DECAY:g}, batch {BATCH_SIZE}, {epochs} epochs, shifts <= "
        f"{shift} px")
    t = time.time()
    with torch_threads(TORCH_TRAIN_THREADS):
        history = model.fit(train_data, epochs=epochs, validation_data=(x_val, y_val),
                            verbose=1 if verbose else 0)
        fit_seconds = time.time() - t
        logits = keras.ops.convert_to_numpy(model.predict(x_test, batch_size=256,
                                                          verbose=0))
    keras_pred = np.argmax(logits, axis=-1)
    keras_acc = float(np.mean(keras_pred == y_test))
    model_path = os.path.join(out, "digits_metaformer.keras")
    model.save(model_path)
    results["keras"] = {"test_accuracy": keras_acc,
                        "val_accuracy": float(history.history["val_accuracy"][-1]),
                        "train_accuracy": float(history.history["accuracy"][-1]),
                        "fit_seconds": fit_seconds, "model_path": model_path}
    say(f"      Keras test accuracy: {100 * keras_acc:.2f}% "
        f"({int(np.sum(keras_pred == y_test))}/{len(y_test)}), fit {fit_seconds:.0f}s")

    say(f"[3/{steps}] Export to TFLite (fp32, dynamic-range int8, int8 calibrated on "
        f"{CALIBRATION_SAMPLES} training images)")
    tflite = {}
    results["tflite"] = tflite
    calibration = preprocess(train_px[:CALIBRATION_SAMPLES])
    try:
        from visionzoo.export import to_tflite

        for mode in TFLITE_MODES:
            quantize = None if mode == "fp32" else mode
            t = time.time()
            path = os.path.join(out, f"digits_{mode}.tflite")
            with contextlib.ExitStack() as stack:
                if not verbose:  # to_tflite prints its report
                    stack.enter_context(contextlib.redirect_stdout(
                        stack.enter_context(open(os.devnull, "w"))))
                report = to_tflite(model, path, quantize=quantize,
                                   representative_data=(calibration if quantize == "int8"
                                                        else None),
                                   input_size=(IMAGE_SIZE, IMAGE_SIZE))
            tflite[mode] = {"path": report.path, "size_bytes": int(report.size_bytes),
                            "export_seconds": time.time() - t,
                            "max_abs_diff": report.max_abs_diff,
                            "int8_ops": report.int8_ops,
                            "int8_weight_ops": report.int8_weight_ops,
                            "num_ops": report.num_ops}
    except Exception as e:  # noqa: BLE001 - reported, and results are still written
        tflite["error"] = f"{type(e).__name__}: {e}"
        say(f"      export failed: {tflite['error']}", file=sys.stderr)

    say(f"[4/{steps}] Run the TFLite files (ai-edge-litert) on the test split")
    thread_counts = (1,) if quick else (1, 2)
    runs = 20 if quick else 200
    for mode in TFLITE_MODES:
        if mode not in tflite:
            continue
        entry = tflite[mode]
        pred = np.argmax(tflite_predict(entry["path"], x_test), axis=-1)
        entry["test_accuracy"] = float(np.mean(pred == y_test))
        entry["agreement_with_keras"] = float(np.mean(pred == keras_pred))
        entry["latency_ms"] = {f"{n}_thread{'s' if n > 1 else ''}":
                               tflite_latency_ms(entry["path"], x_test, n, runs=runs)
                               for n in thread_counts}
        entry["predictions"] = pred
        lat = ", ".join(f"{v:.3f} ms ({k.replace('_', ' ')})"
                        for k, v in entry["latency_ms"].items())
        say(f"      {mode}: accuracy {100 * entry['test_accuracy']:.2f}% "
            f"(agrees with Keras on {100 * entry['agreement_with_keras']:.1f}%), "
            f"{entry['size_bytes'] / 1024:.0f} KiB, median latency {lat}")

    say(f"[5/{steps}] Outputs")
    if "int8" in tflite:
        shown, who = tflite["int8"]["predictions"], "int8 TFLite"
    else:
        shown, who = keras_pred, "Keras"
    picture = save_prediction_grid(
        test_px, y_test, shown, os.path.join(out, "predictions.png"),
        title=f"{who} on held-out digits (red: wrong, true label in brackets)")
    results["picture"] = picture
    if picture is None:
        say("      Pillow is not installed: predictions.png skipped")
    for mode in TFLITE_MODES:
        if mode in tflite:
            del tflite[mode]["predictions"]

    checks = {"keras_accuracy_target": keras_acc >= ACCURACY_TARGET}
    for mode in TFLITE_MODES:
        if mode in tflite:
            checks[f"{mode}_within_1pt"] = bool(
                abs(tflite[mode]["test_accuracy"] - keras_acc) <= TFLITE_TOLERANCE + 1e-9)
    checks["export"] = "error" not in tflite
    results["checks"] = checks
    results["wall_seconds"] = time.time() - start
    results_path = os.path.join(out, "results.json")
    with open(results_path, "w") as f:
        json.dump(results, f, indent=2)
    for path in (model_path, *(tflite[m]["path"] for m in TFLITE_MODES if m in tflite),
                 picture, results_path):
        if path:
            say(f"      {path}")
    _print_summary(results, say)
    return results


def _print_summary(results, say):
    keras_acc = results["keras"]["test_accuracy"]
    say(f"\nSummary ({results['backend']}, {results['epochs']} epochs, "
        f"{results['model']['params']:,} params, {results['wall_seconds']:.0f}s wall):")
    say(f"  Keras          test accuracy {100 * keras_acc:6.2f}%")
    for mode in TFLITE_MODES:
        entry = results["tflite"].get(mode)
        if entry:
            say(f"  TFLite {mode:7s} test accuracy {100 * entry['test_accuracy']:6.2f}%  "
                f"{entry['size_bytes'] / 1024:7.0f} KiB  "
                f"{entry['latency_ms']['1_thread']:.3f} ms/image (1 thread)")
    if "error" in results["tflite"]:
        say(f"  TFLite export failed: {results['tflite']['error']}")
    checks = results["checks"]
    if not checks["keras_accuracy_target"]:
        say(f"  note: below the {100 * ACCURACY_TARGET:.0f}% target; train longer "
            f"(--epochs, default {DEFAULT_EPOCHS})")
    for mode in TFLITE_MODES:
        if checks.get(f"{mode}_within_1pt") is False:
            say(f"  WARNING: TFLite {mode} accuracy is more than 1 point from Keras'")


def run_demo(args):
    """``visionzoo demo`` entry point: ``args`` has ``epochs`` (None: default),
    ``out`` and ``seed``. Returns 0 when the export worked and every TFLite file is
    within 1 accuracy point of the Keras model, else 1."""
    results = demo(epochs=getattr(args, "epochs", None),
                   out=getattr(args, "out", None) or "visionzoo_demo",
                   seed=getattr(args, "seed", 0) or 0, verbose=1,
                   quick=getattr(args, "quick", False))
    checks = results["checks"]
    ok = checks["export"] and all(v for k, v in checks.items() if k.endswith("_within_1pt"))
    return 0 if ok else 1
