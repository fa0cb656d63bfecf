"""TFLite (LiteRT) export with builtin ops only, from any Keras backend.

    from visionzoo.export import to_tflite
    report = to_tflite(model, "caformer_s18.tflite", input_size=(224, 224))
    print(report.summary())

How it works:

1. **Static spatial size.** visionzoo models usually take ``(None, None, 3)`` inputs.
   A :class:`~visionzoo.backbones.base.ZooBackbone` is rebuilt from its config with
   ``input_shape=(H, W, C)`` and the weights are copied; any other single-input NHWC
   Keras model is traced at ``(H, W)`` as is. The batch dimension stays dynamic
   (shape signature ``[-1, H, W, C]``; the LiteRT signature runner resizes it). Only
   if tracing or converting with a dynamic batch fails (and not because of an
   unsupported op) is the file made with batch 1; ``ExportReport.input_shape`` then
   starts with 1 instead of None. Every visionzoo MetaFormer keeps a dynamic batch.
2. **Conversion** needs TensorFlow. Under the TensorFlow backend the model is written
   to a temporary SavedModel (``keras.export.ExportArchive``, one ``serving_default``
   endpoint with input ``images``) and converted with
   ``tf.lite.TFLiteConverter.from_saved_model``. Under JAX or torch the model is saved to a
   temporary ``.keras`` file and converted by ``python -m visionzoo.export`` running
   with ``KERAS_BACKEND=tensorflow`` (that process imports visionzoo's layers and
   backbone families so their registered classes resolve, and never imports torch).
3. **Builtin ops only.** The converter may use ``tf.lite.OpsSet.TFLITE_BUILTINS`` and
   nothing else, so a graph that would need a Flex (Select TF) op fails conversion
   with the converter's message. The written file is then loaded in
   ``ai_edge_litert.interpreter.Interpreter`` and every operator code is checked to be
   builtin (no CUSTOM, DELEGATE or Flex ops).
4. **Check.** The file runs on a check input (``check_input``, else the first
   calibration samples for int8, else seeded random normal of the export size with
   batch 2) and its outputs are compared with the Keras model's outputs in
   the active backend. For fp32 exports the target is
   ``max|Δ| <= 1e-3 * max|reference|``; a larger difference fails the export.
5. **Atomic output.** Bytes go to a temporary file next to ``path``, which replaces
   ``path`` only after every step succeeded; on failure it is removed and any
   existing file at ``path`` is left untouched.

Quantisation modes:

- ``None``: float32 weights and compute.
- ``"fp16"``: float16 weights (about half the size), dequantised to float32 at load
  time; compute stays float32. Outputs differ from fp32 by the weight rounding.
- ``"int8"``: post-training integer quantisation calibrated on
  ``representative_data``: int8 weights (per-channel) and int8 activations for every
  op that has a builtin int8 kernel. Because the op set is ``TFLITE_BUILTINS`` (not
  ``TFLITE_BUILTINS_INT8``), ops without an int8 kernel stay float32 behind
  QUANTIZE/DEQUANTIZE pairs rather than failing the export. The model's input and
  output tensors stay float32, so it is called exactly like the float model.
"""

import argparse
import dataclasses
import json
import math
import os
import subprocess
import sys
import tempfile
import uuid

import numpy as np

QUANTIZE_MODES = (None, "fp16", "int8")
FP32_RTOL = 1e-3  # fp32 parity target: max|Δ| <= FP32_RTOL * max|reference|
INPUT_NAME = "images"  # name of the LiteRT signature input
CHECK_BATCH = 2  # check-input batch: >1 so the dynamic batch dimension is exercised
CLI_CALIBRATION_SAMPLES = 8
_NON_BUILTIN = ("CUSTOM", "DELEGATE")


class ExportError(RuntimeError):
    """The model could not be exported as a builtin-only TFLite file that matches it."""


@dataclasses.dataclass
class ExportReport:
    """What :func:`to_tflite` wrote and how well the file matches the Keras model.

    Attributes:
        path: str. The written ``.tflite`` file.
        size_bytes: int. File size.
        quantize: None, "fp16" or "int8".
        input_shape: tuple. The file's input shape signature, ``(None, H, W, C)``
            (``None``: dynamic batch; ``1`` if only a batch-1 file would convert).
        max_abs_diff: float or None. Largest |TFLite - Keras| over all outputs on the
            check input (None when ``check=False``).
        ref_max_abs: float or None. Largest |Keras output| on the check input.
        op_names: list of str. Sorted set of the file's (builtin) operator names.
        int8_ops: int or None. For int8 exports, how many op instances run on int8
            tensors (the rest fall back to float32).
        num_ops: int. Op instances in the main subgraph.
    """

    path: str
    size_bytes: int
    quantize: str
    input_shape: tuple
    max_abs_diff: float = None
    ref_max_abs: float = None
    op_names: list = dataclasses.field(default_factory=list)
    int8_ops: int = None
    num_ops: int = 0

    @property
    def rel_diff(self):
        """``max_abs_diff / ref_max_abs`` (None without a check)."""
        if self.max_abs_diff is None or not self.ref_max_abs:
            return None
        return self.max_abs_diff / self.ref_max_abs

    def summary(self):
        """A few human-readable lines: file, size, input, parity and ops."""
        mode = self.quantize or "fp32"
        shape = "x".join("B" if d is None else str(d) for d in self.input_shape)
        lines = [f"{self.path}: {self.size_bytes / 2**20:.2f} MiB ({self.size_bytes} bytes), "
                 f"{mode}, input {shape}"]
        if self.input_shape and self.input_shape[0] is not None:
            lines[0] += " (fixed batch: the model did not convert with a dynamic one)"
        if self.max_abs_diff is None:
            lines.append("  check: skipped")
        else:
            rel = self.rel_diff
            rel_text = f" = {rel:.2e} x max|ref|" if rel is not None else ""
            lines.append(f"  max |tflite - keras| = {self.max_abs_diff:.3e} "
                         f"(max|ref| {self.ref_max_abs:.3e}{rel_text})")
        if self.int8_ops is not None:
            lines.append(f"  int8 ops: {self.int8_ops}/{self.num_ops}")
        lines.append(f"  ops ({len(self.op_names)} builtin kinds, {self.num_ops} ops): "
                     + ", ".join(self.op_names))
        return "\n".join(lines)


# --------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------


def to_tflite(model, path, *, quantize=None, representative_data=None, input_size=None,
              check=True, check_input=None):
    """Export a Keras model to a builtin-ops-only ``.tflite`` file, from any backend.

    Args:
        model: a single-input NHWC ``keras.Model`` (every visionzoo model qualifies).
        path: str or path-like. Output file; its folder is created if needed. Written
            atomically: a failed export leaves no file (and an existing one untouched).
        quantize: None (float32), "fp16" (float16 weights, float32 compute) or "int8"
            (int8 weights and activations where builtin int8 kernels exist, float32
            fallback elsewhere, float32 input/output tensors; see the module docstring).
        representative_data: calibration data, required for "int8": an array
            ``(N, H, W, C)`` of preprocessed samples, a list of such batches, or a
            callable returning an iterable of batches. A batch may also be a list or
            tuple whose first item is the images (``[x]`` as in TF's
            ``representative_dataset``, or ``(x, labels)``). Use a few hundred real
            images for good accuracy.
        input_size: (H, W) or None. Static spatial size of the file. Required when the
            model's height/width are dynamic; a ``ZooBackbone`` with another static
            size is rebuilt at this size.
        check: bool. Run the file in ai-edge-litert on ``check_input`` and compare it
            with the Keras model (fills ``max_abs_diff``). fp32 exports must reach
            ``max|Δ| <= 1e-3 * max|ref|`` or the export fails; quantized exports only
            report the difference. The builtin-op check runs regardless.
        check_input: array ``(B, H, W, C)`` or None. Default: seeded random normal of the
            export size with batch 2 (for "int8": the first representative samples).

    Returns:
        :class:`ExportReport`.

    Raises:
        ValueError: bad arguments (unknown ``quantize``, no ``representative_data`` for
            int8, dynamic H/W without ``input_size``, wrongly shaped data).
        ExportError: conversion failed (e.g. the graph needs a non-builtin op), the file
            contains non-builtin ops, or fp32 parity was missed.
    """
    return _export(model, path, quantize=quantize, representative_data=representative_data,
                   input_size=input_size, check=check, check_input=check_input)


def export_cli(args):
    """``visionzoo export NAME``: build a registered model and export it to TFLite.

    ``args`` (argparse namespace) has ``name``, ``format`` ("tflite"), ``quantize``
    (None/"fp16"/"int8"), ``input_size`` (None or [H, W]; default: the variant's
    ``input_size``), ``weights``, ``num_classes`` and ``out`` (default
    ``<name>[_fp16|_int8].tflite``). int8 from the command line is calibrated on
    seeded random images, which is enough to produce a working file but not an
    accurate one; a warning says so (use :func:`to_tflite` with real images).
    Prints the report and returns 0.
    """
    from visionzoo.registry import create_model, get_variant

    fmt = getattr(args, "format", "tflite") or "tflite"
    if fmt != "tflite":
        raise ValueError(f"Unsupported export format {fmt!r}; only 'tflite' is available.")
    quantize = getattr(args, "quantize", None)
    _check_quantize(quantize)
    variant = get_variant(args.name)
    if args.input_size:
        h, w = (int(v) for v in args.input_size)
    else:
        h = w = int(variant.input_size)
    model = create_model(args.name, weights=getattr(args, "weights", None),
                         num_classes=getattr(args, "num_classes", 1000),
                         input_shape=(h, w, 3))
    out = getattr(args, "out", None) or (
        f"{args.name}{'_' + quantize if quantize else ''}.tflite")
    representative = None
    if quantize == "int8":
        print(f"WARNING: calibrating int8 on {CLI_CALIBRATION_SAMPLES} seeded random "
              "images. The file works but its accuracy is not representative; for a "
              "usable int8 model call visionzoo.export.to_tflite(model, path, "
              "quantize='int8', representative_data=<a few hundred preprocessed real "
              "images>).", file=sys.stderr)
        representative = _random_images(CLI_CALIBRATION_SAMPLES, h, w, variant.mean,
                                        variant.std)
    report = _export(model, out, quantize=quantize, representative_data=representative,
                     input_size=(h, w), check=True, check_input=None, announce=False)
    print(report.summary())
    return 0


# --------------------------------------------------------------------------------------
# The export pipeline (caller's backend)
# --------------------------------------------------------------------------------------


def _export(model, path, *, quantize, representative_data, input_size, check, check_input,
            announce=True):
    import keras

    _check_quantize(quantize)
    if quantize == "int8" and representative_data is None:
        raise ValueError("quantize='int8' needs representative_data (calibration samples).")
    path = os.fspath(path)
    model, in_shape = _static_model(model, input_size)  # in_shape: static (H, W, C)
    rep = (None if representative_data is None
           else _representative_samples(representative_data, in_shape))
    if check:
        x = (_as_batch(check_input, in_shape, "check_input") if check_input is not None
             else rep[:4] if rep is not None
             else np.random.default_rng(0).standard_normal(
                 (CHECK_BATCH,) + in_shape).astype("float32"))
        reference = _keras_outputs(model, x)

    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    # A hidden, uniquely named sibling, created like any new file (umask permissions).
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{uuid.uuid4().hex[:12]}.partial")
    open(tmp, "xb").close()
    try:
        _convert(model, in_shape, quantize, rep, tmp)
        info = _inspect(tmp)
        report = ExportReport(path=path, size_bytes=os.path.getsize(tmp), quantize=quantize,
                              input_shape=info["input_shape"], op_names=info["op_names"],
                              int8_ops=info["int8_ops"] if quantize == "int8" else None,
                              num_ops=info["num_ops"])
        if check:
            outputs = _run_tflite(tmp, x)
            if len(outputs) != len(reference):
                raise ExportError(f"The TFLite file has {len(outputs)} outputs, the Keras "
                                  f"model {len(reference)}.")
            diff = 0.0
            for got, ref in zip(outputs, reference):
                if got.shape != ref.shape:
                    raise ExportError(f"TFLite output shape {got.shape} != Keras output "
                                      f"shape {ref.shape}.")
                diff = max(diff, float(np.max(np.abs(got - ref))))
            report.max_abs_diff = diff
            report.ref_max_abs = max(float(np.max(np.abs(r))) for r in reference)
            if not math.isfinite(diff):
                raise ExportError("Non-finite outputs on the check input (from the TFLite "
                                  "file or the Keras model); pass a realistic check_input.")
            if quantize is None and diff > FP32_RTOL * report.ref_max_abs + 1e-7:
                raise ExportError(
                    f"fp32 TFLite output differs from the Keras model by max|Δ| = "
                    f"{diff:.3e}, above the target {FP32_RTOL:g} x max|ref| = "
                    f"{FP32_RTOL * report.ref_max_abs:.3e}.")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    if announce and check:
        print(report.summary())
    return report


def _keras_outputs(model, x):
    """The model's outputs on ``x`` as a flat list of float32 arrays (inference mode).

    Under JAX the whole graph is jitted once (``stateless_call``): eager JAX compiles
    every op separately, which is several times slower for one batch.
    """
    import keras

    if keras.backend.backend() == "jax":
        import jax

        def forward(trainable, non_trainable, inputs):
            return model.stateless_call(trainable, non_trainable, _model_input(model, inputs),
                                        training=False)[0]

        out = jax.jit(forward)([v.value for v in model.trainable_variables],
                               [v.value for v in model.non_trainable_variables], x)
    else:
        out = model(_model_input(model, x), training=False)
    return [np.asarray(keras.ops.convert_to_numpy(t), dtype="float32")
            for t in keras.tree.flatten(out)]


def _model_input(model, x):
    """``x`` in the structure the functional model was built with (``[x]`` for models
    made as ``keras.Model([inputs], ...)``, which warn when given a bare tensor)."""
    return [x] if isinstance(getattr(model, "_inputs_struct", None), list) else x


def _check_quantize(quantize):
    if quantize not in QUANTIZE_MODES:
        raise ValueError(f"quantize must be None, 'fp16' or 'int8', got {quantize!r}.")


def _static_model(model, input_size):
    """``(model, (H, W, C))`` with a static export size.

    The model is ``model`` itself (already static, or traced at ``input_size``) or, for
    a ZooBackbone, a copy rebuilt at ``input_size`` with the same weights.
    """
    import keras

    if not isinstance(model, keras.Model) or len(model.inputs or []) != 1:
        raise ValueError("to_tflite needs a keras.Model with exactly one input.")
    shape = tuple(model.inputs[0].shape)
    if len(shape) != 4:
        raise ValueError(f"to_tflite exports NHWC image models; the input shape is {shape}.")
    h, w, c = shape[1:]
    if c is None:
        raise ValueError("The model's channel count must be known to export it.")
    if input_size is None:
        if h is None or w is None:
            raise ValueError(
                f"The model's input height/width are dynamic ({shape}); TFLite export "
                "needs a static size: pass input_size=(H, W), e.g. input_size=(224, 224).")
        return model, (h, w, c)
    if len(input_size) != 2:
        raise ValueError(f"input_size must be (H, W), got {input_size!r}.")
    size = tuple(int(v) for v in input_size)
    if (h, w) == size:
        return model, size + (c,)

    from visionzoo.backbones.base import ZooBackbone

    if isinstance(model, ZooBackbone):
        config = dict(model.get_config())
        config["input_shape"] = size + (c,)
        try:
            static = type(model).from_config(config)
            static.set_weights(model.get_weights())
        except ValueError as e:
            raise ValueError(
                f"Could not rebuild {model.name} at input size {size}: {e}") from e
        return static, size + (c,)
    if (h is None or h == size[0]) and (w is None or w == size[1]):
        return model, size + (c,)  # dynamic H/W: traced at ``size`` during conversion
    raise ValueError(
        f"The model's input is fixed at {(h, w)} and it is not a visionzoo model that "
        f"can be rebuilt, so it cannot be exported at input_size={size}.")


def _as_batch(data, in_shape, what):
    arr = np.asarray(data, dtype="float32")
    if arr.ndim == len(in_shape):
        arr = arr[None]
    if tuple(arr.shape[1:]) != tuple(in_shape):
        raise ValueError(f"{what} must have shape (N,) + {tuple(in_shape)}; got {arr.shape}.")
    return arr


def _representative_samples(data, in_shape):
    """Calibration data -> float32 array (N, H, W, C)."""
    source = data() if callable(data) else data
    if isinstance(source, np.ndarray) or hasattr(source, "__array__"):
        batches = [source]
    else:
        batches = list(source)
    samples = []
    for item in batches:
        if isinstance(item, (list, tuple)) and item:  # [x] (TF style) or (x, labels)
            item = item[0]
        if isinstance(item, dict) and len(item) == 1:
            item = next(iter(item.values()))
        samples.append(_as_batch(np.asarray(item), in_shape, "representative_data"))
    if not samples:
        raise ValueError("representative_data yielded no samples.")
    return np.concatenate(samples, axis=0)


def _random_images(n, h, w, mean, std, seed=0):
    """Seeded uniform random 'pixels' in [0, 1], normalised like the model's inputs."""
    rng = np.random.default_rng(seed)
    pixels = rng.random((n, h, w, 3), dtype=np.float32)
    return ((pixels - np.asarray(mean, "float32")) / np.asarray(std, "float32")
            ).astype("float32")


# --------------------------------------------------------------------------------------
# Conversion (TensorFlow backend only)
# --------------------------------------------------------------------------------------


class _UnsupportedOps(ExportError):
    """Conversion failed because the graph needs ops outside TFLITE_BUILTINS."""


def _convert(model, in_shape, quantize, representative, out_path):
    """Convert ``model`` at ``(batch,) + in_shape`` and write the bytes to ``out_path``.

    In process under the TensorFlow backend, else in a TensorFlow-backend subprocess.
    """
    import keras

    if keras.backend.backend() == "tensorflow":
        data = _convert_tf_any_batch(model, in_shape, quantize, representative)
        with open(out_path, "wb") as f:
            f.write(data)
    else:
        _convert_in_subprocess(model, in_shape, quantize, representative, out_path)


def _convert_tf_any_batch(model, in_shape, quantize, representative):
    """A dynamic-batch file if the model traces and converts that way, else batch 1.

    Graphs that need non-builtin ops fail at once (a fixed batch would not help).
    """
    try:
        return _convert_tf(model, in_shape, quantize, representative, batch=None)
    except _UnsupportedOps:
        raise
    except Exception as dynamic_error:
        try:
            return _convert_tf(model, in_shape, quantize, representative, batch=1)
        except Exception as e:
            raise ExportError(
                f"{e}\n(A dynamic-batch conversion failed before that with: "
                f"{type(dynamic_error).__name__}: {str(dynamic_error)[:2000]})") from e


def _convert_tf(model, in_shape, quantize, representative, batch=None):
    """TensorFlow-backend conversion. Returns the ``.tflite`` bytes.

    The model goes through a temporary SavedModel (``keras.export.ExportArchive`` with
    a ``serving_default`` endpoint whose input is named ``images``), which the
    converter freezes itself; this needs about half the peak memory of converting a
    graph whose weights were folded into constants beforehand.

    ``batch``: None (dynamic batch dimension) or a fixed batch size.
    """
    import keras
    import tensorflow as tf

    if keras.backend.backend() != "tensorflow":
        raise RuntimeError("_convert_tf needs the TensorFlow backend.")

    def serve(images):
        flat = keras.tree.flatten(model(_model_input(model, images), training=False))
        if len(flat) == 1:
            return flat[0]
        return {f"output_{i}": t for i, t in enumerate(flat)}

    with tempfile.TemporaryDirectory(prefix="visionzoo_savedmodel_") as saved:
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint(
            "serving_default", serve,
            input_signature=[keras.InputSpec(shape=(batch,) + tuple(in_shape),
                                             dtype="float32", name=INPUT_NAME)])
        archive.write_out(saved, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(saved)
        return _run_converter(converter, model.name, quantize, representative)


def _run_converter(converter, model_name, quantize, representative):
    """Builtin ops only, the quantisation settings, then ``convert()``."""
    import tensorflow as tf

    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantize == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantize == "int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        samples = np.asarray(representative, dtype="float32")

        def dataset():
            for i in range(len(samples)):
                yield [samples[i:i + 1]]

        converter.representative_dataset = dataset
        converter.inference_input_type = tf.float32
        converter.inference_output_type = tf.float32
    try:
        return converter.convert()
    except Exception as e:  # the converter raises its own ConverterError subclasses
        text = str(e)
        unsupported = any(k in text for k in (
            "TF Select ops", "Flex ops", "Custom ops", "neither a custom op nor a flex op"))
        error = _UnsupportedOps if unsupported else ExportError
        raise error(
            "TFLite conversion with builtin ops only (tf.lite.OpsSet.TFLITE_BUILTINS) "
            f"failed for {model_name}:\n{_short_converter_message(e)}") from e


def _short_converter_message(error):
    """The informative part of a converter error: the unsupported ops and the errors,
    without MLIR source-location dumps."""
    lines = [ln.rstrip() for ln in str(error).splitlines() if ln.strip()]
    keep = []
    for ln in lines:
        if "error:" in ln:
            keep.append(ln[ln.index("error:"):])
        elif ("ops:" in ln and ("Select" in ln or "Custom" in ln or "Flex" in ln)) or (
                ln.lstrip().startswith(("tf.", "tfl.")) and "(" in ln):
            keep.append(ln.strip())
    text = "\n".join(dict.fromkeys(keep or lines[-10:]))
    return text[:4000]


# --------------------------------------------------------------------------------------
# Backend hand-off: JAX/torch -> a TensorFlow-backend subprocess
# --------------------------------------------------------------------------------------


def _save_for_subprocess(model, work):
    """Write ``model`` into folder ``work`` for the conversion subprocess; returns the path.

    visionzoo models (registered classes from ``visionzoo.*`` with a JSON-able config)
    are written as ``model.json`` (registered class name + ``get_config()``) and
    ``weights.npz`` (``get_weights()``), which the subprocess rebuilds with
    ``from_config`` + ``set_weights``. This avoids Keras' own serialisation here,
    which imports TensorFlow into the calling process whenever it is installed (and
    TensorFlow imported before torchvision crashes this environment). Other models
    are saved as ``model.keras``.
    """
    import keras

    cls = type(model)
    registered = keras.saving.get_registered_name(cls)
    if (cls.__module__.startswith("visionzoo.") and ">" in registered
            and keras.saving.get_registered_object(registered) is cls):
        try:
            config_text = json.dumps({"registered_name": registered,
                                      "config": model.get_config()})
        except (TypeError, ValueError):
            config_text = None  # not JSON-able: fall back to .keras
        if config_text is not None:
            np.savez(os.path.join(work, "weights.npz"), *model.get_weights())
            path = os.path.join(work, "model.json")
            with open(path, "w") as f:
                f.write(config_text)
            return path
    path = os.path.join(work, "model.keras")
    try:
        model.save(path)
    except Exception as e:
        raise ExportError(
            f"Could not save {model.name} as .keras for conversion under the "
            f"TensorFlow backend: {e}") from e
    return path


def _load_in_subprocess(path):
    """Inverse of :func:`_save_for_subprocess` (TensorFlow backend)."""
    import keras

    if path.endswith(".json"):
        with open(path) as f:
            spec = json.load(f)
        cls = keras.saving.get_registered_object(spec["registered_name"])
        if cls is None:
            raise ExportError(f"Unknown model class {spec['registered_name']!r}.")
        model = cls.from_config(spec["config"])
        with np.load(os.path.join(os.path.dirname(path), "weights.npz")) as weights:
            model.set_weights([weights[f"arr_{i}"] for i in range(len(weights.files))])
        return model
    # safe_mode=False: the file was written moments ago by the parent process from the
    # user's in-memory model, so Lambda layers may be deserialised.
    return keras.saving.load_model(path, compile=False, safe_mode=False)


def _convert_in_subprocess(model, in_shape, quantize, representative, out_path):
    """Save ``model`` and convert it with ``KERAS_BACKEND=tensorflow`` in a subprocess."""
    with tempfile.TemporaryDirectory(prefix="visionzoo_export_") as work:
        model_path = _save_for_subprocess(model, work)
        cmd = [sys.executable, "-m", "visionzoo.export", "convert", model_path, out_path,
               "--input-shape", *(str(int(d)) for d in in_shape),
               "--error-file", os.path.join(work, "error.json")]
        if quantize:
            cmd += ["--quantize", quantize]
        if representative is not None:
            rep_path = os.path.join(work, "representative.npy")
            np.save(rep_path, np.asarray(representative, dtype="float32"))
            cmd += ["--representative", rep_path]
        env = dict(os.environ, KERAS_BACKEND="tensorflow")
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = os.pathsep.join(
            [package_root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            message = None
            error_file = os.path.join(work, "error.json")
            if os.path.exists(error_file):
                with open(error_file) as f:
                    message = json.load(f).get("message")
            if not message:
                tail = "\n".join(proc.stderr.strip().splitlines()[-20:])
                message = f"conversion subprocess exited with {proc.returncode}:\n{tail}"
            raise ExportError(message)


def _subprocess_main(argv=None):
    """``python -m visionzoo.export convert MODEL OUT.tflite --input-shape H W C``.

    ``MODEL`` is a ``.keras`` file or the ``model.json`` (+ ``weights.npz``) written by
    :func:`_save_for_subprocess`.

    Runs under ``KERAS_BACKEND=tensorflow``: loads the model (visionzoo's registered
    layers and families imported first; torch is never imported), converts it and
    writes OUT. On failure writes ``{"message": ...}`` to ``--error-file`` and exits 2.
    """
    p = argparse.ArgumentParser(prog="python -m visionzoo.export")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("convert", help="convert a saved model (TensorFlow backend)")
    c.add_argument("model")
    c.add_argument("out")
    c.add_argument("--input-shape", nargs=3, type=int, required=True, metavar=("H", "W", "C"))
    c.add_argument("--quantize", default=None, choices=["fp16", "int8"])
    c.add_argument("--representative", default=None, help=".npy of calibration samples")
    c.add_argument("--error-file", default=None)
    args = p.parse_args(argv)
    try:
        import keras

        if keras.backend.backend() != "tensorflow":
            raise ExportError("python -m visionzoo.export must run with "
                              "KERAS_BACKEND=tensorflow.")
        _import_registered_classes()
        model = _load_in_subprocess(args.model)
        rep = np.load(args.representative) if args.representative else None
        data = _convert_tf_any_batch(model, tuple(args.input_shape), args.quantize, rep)
        with open(args.out, "wb") as f:
            f.write(data)
    except Exception as e:
        message = str(e) if isinstance(e, ExportError) else f"{type(e).__name__}: {e}"
        if args.error_file:
            with open(args.error_file, "w") as f:
                json.dump({"message": message}, f)
        print(message, file=sys.stderr)
        return 2
    return 0


def _import_registered_classes():
    """Import visionzoo's layers and backbone families (registers their classes)."""
    import importlib

    import visionzoo.layers  # noqa: F401
    from visionzoo.registry import FAMILY_MODULES

    for name in FAMILY_MODULES:
        importlib.import_module(name)


# --------------------------------------------------------------------------------------
# Inspecting and running the file (ai-edge-litert; no TensorFlow needed)
# --------------------------------------------------------------------------------------


def _builtin_names():
    from ai_edge_litert import schema_py_generated as schema

    return {v: k for k, v in vars(schema.BuiltinOperator).items()
            if not k.startswith("_") and isinstance(v, int)}


def _inspect(path):
    """Operator names (all subgraphs), input shape signature and int8 op count.

    Raises ExportError if any operator is not a TFLite builtin (custom, Flex or
    delegate ops) or the interpreter cannot load the file.
    """
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    with open(path, "rb") as f:
        buf = f.read()
    names = _builtin_names()
    fb = schema.Model.GetRootAs(buf, 0)
    op_names, bad = set(), set()
    for i in range(fb.OperatorCodesLength()):
        code = fb.OperatorCodes(i)
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        name = names.get(builtin, f"UNKNOWN_{builtin}")
        if builtin == schema.BuiltinOperator.CUSTOM:
            custom = code.CustomCode()
            name = custom.decode() if custom else "CUSTOM"
            bad.add(name)
        elif name in _NON_BUILTIN or name.startswith("UNKNOWN_"):
            bad.add(name)
        op_names.add(name)
    if bad:
        raise ExportError(f"The TFLite file contains non-builtin ops: {sorted(bad)}.")
    try:
        # Without the default (XNNPACK) delegate, so ops are listed as themselves
        # rather than folded into DELEGATE nodes.
        interpreter = Interpreter(
            model_path=path,
            experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        interpreter.allocate_tensors()
    except Exception as e:
        raise ExportError(f"ai-edge-litert cannot load the exported file: {e}") from e
    details = interpreter._get_ops_details()
    runtime = {d["op_name"] for d in details}
    bad = {n for n in runtime if n in _NON_BUILTIN or n.startswith("Flex")
           or n not in names.values()}
    if bad:
        raise ExportError(f"The TFLite file runs non-builtin ops: {sorted(bad)}.")
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    int8_ops = sum(
        1 for d in details
        if any(tensors.get(i, {}).get("dtype") in (np.int8, np.int16)
               for i in list(d["outputs"])))
    inp = interpreter.get_input_details()[0]
    sig = [int(v) for v in inp.get("shape_signature", inp["shape"])]
    input_shape = tuple(None if v < 0 else v for v in sig)
    return {"op_names": sorted(op_names), "input_shape": input_shape,
            "int8_ops": int8_ops, "num_ops": len(details)}


def _run_tflite(path, x):
    """Run the file on batch ``x``; returns the list of outputs (in output_i order)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=path)
    signatures = interpreter.get_signature_list()
    x = np.asarray(x, dtype="float32")
    inp = interpreter.get_input_details()[0]
    fixed = int(inp.get("shape_signature", inp["shape"])[0])
    if fixed > 0 and len(x) != fixed:  # a fixed-batch file: run it chunk by chunk
        if len(x) % fixed:
            raise ValueError(f"The file takes batches of {fixed}; got {len(x)} samples.")
        chunks = [_run_tflite(path, x[i:i + fixed]) for i in range(0, len(x), fixed)]
        return [np.concatenate(parts, axis=0) for parts in zip(*chunks)]
    if signatures:
        key = next(iter(signatures))
        runner = interpreter.get_signature_runner(key)
        input_name = signatures[key]["inputs"][0]
        out = runner(**{input_name: x})
        keys = sorted(out, key=lambda k: (len(k), k))  # output_0, ..., output_10
        return [np.asarray(out[k], dtype="float32") for k in keys]
    # Files without a signature (not written by this module).
    interpreter.resize_tensor_input(inp["index"], x.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(inp["index"], x)
    interpreter.invoke()
    return [np.asarray(interpreter.get_tensor(o["index"]), dtype="float32")
            for o in interpreter.get_output_details()]


if __name__ == "__main__":
    sys.exit(_subprocess_main())
