"""TFLite (LiteRT) export with builtin ops only, from any Keras backend.

    from visionzoo.export import to_tflite
    report = to_tflite(model, "caformer_s18.tflite", input_size=(224, 224))
    print(report.summary())

    # Multi-input models (e.g. the DiT denoiser: latents, timesteps, labels) work the same
    # way; check inputs and calibration data are a list (model.inputs order) or a dict.
    report = to_tflite(visionzoo.create_model("dit_s_2"), "dit_s_2.tflite")

How it works:

1. **Static sizes.** visionzoo image models usually take ``(None, None, 3)`` inputs.
   A :class:`~visionzoo.backbones.base.ZooBackbone` is rebuilt from its config with
   ``input_shape=(H, W, C)`` and the weights are copied; any other Keras model whose
   first input is NHWC is traced at ``(H, W)`` as is. ``input_size`` only sets the
   first input's height and width: every other dimension of every input (apart from
   the batch) must already be static. The batch dimension stays dynamic (shape
   signature ``[-1, ...]``; the LiteRT signature runner resizes it). Only if tracing or
   converting with a dynamic batch fails (and not because of an unsupported op) is the
   file made with batch 1; ``ExportReport.input_shape`` then starts with 1 instead of
   None. Every visionzoo MetaFormer keeps a dynamic batch.
2. **Inputs.** A single-input model gets one signature input named ``images``. A model
   with several inputs gets one signature input per Keras input, named after it
   (``latents``, ``timesteps``, ``labels`` for DiT) with its dtype (integer inputs stay
   integer); call the file's signature runner with those keyword arguments.
3. **Conversion** needs TensorFlow. Under the TensorFlow backend the model is written
   to a temporary SavedModel (``keras.export.ExportArchive``, one ``serving_default``
   endpoint) and converted with ``tf.lite.TFLiteConverter.from_saved_model``. Under JAX
   or torch the model is saved (config JSON + weights for visionzoo models, else a
   ``.keras`` file) and converted by ``python -m visionzoo.export`` running with
   ``KERAS_BACKEND=tensorflow`` (that process imports visionzoo's layers and backbone
   families so their registered classes resolve, and never imports torch).
4. **Builtin ops only.** The converter may use ``tf.lite.OpsSet.TFLITE_BUILTINS`` and
   nothing else, so a graph that would need a Flex (Select TF) op fails conversion
   with the converter's message. The written file is then loaded in
   ``ai_edge_litert.interpreter.Interpreter`` and every operator code is checked to be
   builtin (no CUSTOM, DELEGATE or Flex ops).
5. **Check.** The file runs on a check input (``check_input``, else the first
   calibration samples for int8, else :func:`example_inputs`: seeded random normal
   float inputs of the export size with batch 2, and for inputs the model feeds to a
   label/embedding table or a diffusion-timestep embedding, integer indices in the
   table's range or timesteps in ``[0, 1000)``) and its outputs are compared with the
   Keras model's outputs in the active backend. For fp32 exports the target is
   ``max|Δ| <= 1e-3 * max|reference|``; a larger difference fails the export.
6. **Atomic output.** Bytes go to a temporary file next to ``path``, which replaces
   ``path`` only after every step succeeded; on failure it is removed and any
   existing file at ``path`` is left untouched.

Quantisation modes:

- ``None``: float32 weights and compute.
- ``"fp16"``: float16 weights (about half the size), dequantised to float32 at load
  time; compute stays float32. Outputs differ from fp32 by the weight rounding.
- ``"dynamic"``: dynamic-range quantisation: int8 weights (per channel) for the
  fully connected and convolution layers, float32 activations that the runtime
  quantises on the fly for each product; no calibration data. About a quarter of the
  fp32 size, and on x86 XNNPACK the fastest file (its dynamically quantised product
  kernels run int8 dot products): poolformerv2_s12 27 -> 7.4 ms, swin_tiny 73 -> 24 ms
  at 1 thread here. Outputs differ from fp32 by the weight rounding and the per-row
  activation rounding (about 1-3 % of max|output| on random-weight models).
- ``"int8"``: post-training integer quantisation calibrated on
  ``representative_data``: int8 weights (per-channel) and int8 activations for every
  op that has a builtin int8 kernel. Because the op set is ``TFLITE_BUILTINS`` (not
  ``TFLITE_BUILTINS_INT8``), ops without an int8 kernel stay float32 behind
  QUANTIZE/DEQUANTIZE pairs rather than failing the export. The model's input and
  output tensors keep their dtypes (float32 stays float32), so it is called exactly
  like the float model.
"""

import argparse
import dataclasses
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import uuid

import numpy as np

QUANTIZE_MODES = (None, "fp16", "dynamic", "int8")
FP32_RTOL = 1e-3  # fp32 parity target: max|Δ| <= FP32_RTOL * max|reference|
INPUT_NAME = "images"  # name of the LiteRT signature input of single-input models
CHECK_BATCH = 2  # check-input batch: >1 so the dynamic batch dimension is exercised
CLI_CALIBRATION_SAMPLES = 8
DIFFUSION_STEPS = 1000  # timestep range of example inputs for timestep embeddings
_NON_BUILTIN = ("CUSTOM", "DELEGATE")


class ExportError(RuntimeError):
    """The model could not be exported as a builtin-only TFLite file that matches it."""


def _shape_text(shape):
    return "x".join("B" if d is None else str(d) for d in shape) or "scalar"


@dataclasses.dataclass
class ExportReport:
    """What :func:`to_tflite` wrote and how well the file matches the Keras model.

    Attributes:
        path: str. The written ``.tflite`` file.
        size_bytes: int. File size.
        quantize: None, "fp16", "dynamic" or "int8".
        input_shape: tuple. The shape signature of the file's (first) input, e.g.
            ``(None, H, W, C)`` (``None``: dynamic batch; ``1`` if only a batch-1 file
            would convert).
        max_abs_diff: float or None. Largest |TFLite - Keras| over all outputs on the
            check input (None when ``check=False``).
        ref_max_abs: float or None. Largest |Keras output| on the check input.
        op_names: list of str. Sorted set of the file's (builtin) operator names.
        int8_ops: int or None. For int8 exports, how many op instances run on int8
            tensors (the rest fall back to float32).
        int8_weight_ops: int or None. For dynamic exports, how many op instances read
            an int8 weight and give float32 results: the FULLY_CONNECTED/CONV_2D
            products, plus a DEQUANTIZE per int8-stored table (e.g. an embedding).
        num_ops: int. Op instances in the main subgraph.
        inputs: list of ``(name, shape_signature, dtype)``, one per input in the Keras
            model's input order: the signature runner's keyword arguments.
    """

    path: str
    size_bytes: int
    quantize: str
    input_shape: tuple
    max_abs_diff: float = None
    ref_max_abs: float = None
    op_names: list = dataclasses.field(default_factory=list)
    int8_ops: int = None
    int8_weight_ops: int = None
    num_ops: int = 0
    inputs: list = dataclasses.field(default_factory=list)

    @property
    def rel_diff(self):
        """``max_abs_diff / ref_max_abs`` (None without a check)."""
        if self.max_abs_diff is None or not self.ref_max_abs:
            return None
        return self.max_abs_diff / self.ref_max_abs

    def summary(self):
        """A few human-readable lines: file, size, input(s), parity and ops."""
        mode = self.quantize or "fp32"
        if len(self.inputs) > 1:
            shape = "inputs " + ", ".join(f"{name} {_shape_text(s)} {dtype}"
                                          for name, s, dtype in self.inputs)
            fixed = any(s and s[0] is not None for _, s, _ in self.inputs)
        else:
            shape = "input " + _shape_text(self.input_shape)
            fixed = bool(self.input_shape) and self.input_shape[0] is not None
        lines = [f"{self.path}: {self.size_bytes / 2**20:.2f} MiB ({self.size_bytes} bytes), "
                 f"{mode}, {shape}"]
        if fixed:
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
        if self.int8_weight_ops is not None:
            lines.append(f"  ops with int8 weights: {self.int8_weight_ops}/{self.num_ops}")
        lines.append(f"  ops ({len(self.op_names)} builtin kinds, {self.num_ops} ops): "
                     + ", ".join(self.op_names))
        return "\n".join(lines)


# --------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------


def to_tflite(model, path, *, quantize=None, representative_data=None, input_size=None,
              batch_size=None, check=True, check_input=None):
    """Export a Keras model to a builtin-ops-only ``.tflite`` file, from any backend.

    Args:
        model: a ``keras.Model`` with known inputs: every visionzoo model, including
            multi-input ones such as the DiT denoiser (``[latents, timesteps, labels]``).
        path: str or path-like. Output file; its folder is created if needed. Written
            atomically: a failed export leaves no file (and an existing one untouched).
        quantize: None (float32), "fp16" (float16 weights, float32 compute), "dynamic"
            (int8 weights, float32 activations quantised at run time; no calibration
            data; smallest and fastest on XNNPACK, see the module docstring) or "int8"
            (int8 weights and activations where builtin int8 kernels exist, float32
            fallback elsewhere, input/output tensors keep their dtypes; see the module
            docstring).
        representative_data: calibration data, required for "int8". Single-input
            models: an array ``(N, H, W, C)`` of preprocessed samples, a list of such
            batches, or a callable returning an iterable of batches; a batch may also
            be a list or tuple whose first item is the images (``[x]`` as in TF's
            ``representative_dataset``, or ``(x, labels)``). Multi-input models: one
            batch given as a list of arrays in ``model.inputs`` order or a dict keyed by
            input name, or an iterable (or callable returning one) of such batches
            (each may also be wrapped as ``(inputs, targets)``). Use a few hundred real
            samples for good accuracy.
        input_size: (H, W) or None. Static spatial size of the file's first (NHWC)
            input. Required when its height/width are dynamic; a ``ZooBackbone`` with
            another static size is rebuilt at this size.
        batch_size: None (dynamic batch dimension) or an int: a file with that fixed
            batch, what an on-device app usually wants. A fixed batch lets the converter
            drop the runtime shape arithmetic (``SHAPE``/``GATHER``/``PACK`` ops) a
            dynamic batch needs; for poolformerv2_s12 that is 597 -> 321 ops and ~20 %
            lower XNNPACK latency at batch 1.
        check: bool. Run the file in ai-edge-litert on ``check_input`` and compare it
            with the Keras model (fills ``max_abs_diff``). fp32 exports must reach
            ``max|Δ| <= 1e-3 * max|ref|`` or the export fails; quantized exports only
            report the difference. The builtin-op check runs regardless.
        check_input: None, an array ``(B, H, W, C)`` (single input), or for several
            inputs a list (``model.inputs`` order) or dict (by input name) of batches.
            Integer inputs must get integer values. Default: :func:`example_inputs`
            with batch 2 (for "int8": the first representative samples).

    Returns:
        :class:`ExportReport`.

    Raises:
        ValueError: bad arguments (unknown ``quantize``, no ``representative_data`` for
            int8 or any for "dynamic", dynamic sizes without ``input_size``, wrongly
            shaped or typed data).
        ExportError: conversion failed (e.g. the graph needs a non-builtin op), the file
            contains non-builtin ops, or fp32 parity was missed.
    """
    return _export(model, path, quantize=quantize, representative_data=representative_data,
                   input_size=input_size, batch_size=batch_size, check=check,
                   check_input=check_input)


def example_inputs(model, batch=None, seed=0, input_size=None):
    """Seeded, representative inputs for ``model`` (what export checks and bench use).

    - float inputs: standard normal, except inputs the model feeds to a diffusion
      timestep embedding (``TimestepFrequencies``), which get integer steps in
      ``[0, 1000)`` (as float32);
    - integer inputs: indices in ``[0, rows)`` of the table the model feeds them to (a
      ``LabelEmbedding``, null class included, or a ``keras.layers.Embedding``); zeros
      when the model uses them otherwise.

    Args:
        model: a ``keras.Model``.
        batch: int or None. Default 2, rounded up to a multiple of ``model.group_size``
            for group-attention models.
        seed: int.
        input_size: (H, W) or None, for a model whose first input has dynamic H/W.

    Returns:
        One array for a single-input model, else a list in ``model.inputs`` order.
    """
    specs = _input_specs(model, input_size)
    arrays = _example_arrays(model, specs, batch, seed)
    return arrays[0] if len(arrays) == 1 else arrays


def export_cli(args):
    """``visionzoo export NAME``: build a registered model and export it to TFLite.

    ``args`` (argparse namespace) has ``name``, ``format`` ("tflite"), ``quantize``
    (None/"fp16"/"int8"), ``input_size`` (None or [H, W]; default: the variant's
    ``input_size``), ``batch_size`` (None: dynamic; or a fixed batch, e.g. 1 for a
    phone), ``weights``, ``num_classes`` and ``out`` (default
    ``<name>[_fp16|_int8].tflite``). Multi-input models (DiT) export with one signature
    input per model input. int8 from the command line is calibrated on seeded random
    inputs (:func:`example_inputs`; for image models, random images normalised like the
    model's inputs), which is enough to produce a working file but not an accurate one;
    a warning says so (use :func:`to_tflite` with real data). Prints the report and
    returns 0.
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
    channels = int(getattr(variant, "input_channels", 3) or 3)
    model = create_model(args.name, weights=getattr(args, "weights", None),
                         num_classes=getattr(args, "num_classes", 1000),
                         input_shape=(h, w, channels))
    out = getattr(args, "out", None) or (
        f"{args.name}{'_' + quantize if quantize else ''}.tflite")
    representative = None
    if quantize == "int8":
        images = len(model.inputs) == 1 and channels == 3
        print(f"WARNING: calibrating int8 on {CLI_CALIBRATION_SAMPLES} seeded random "
              f"{'images' if images else 'inputs'}. The file works but its accuracy is not "
              "representative; for a usable int8 model call visionzoo.export.to_tflite("
              "model, path, quantize='int8', representative_data=<a few hundred "
              "preprocessed real samples>), or export with --quantize dynamic (int8 "
              "weights, float activations: no calibration, and faster on XNNPACK).",
              file=sys.stderr)
        if images:
            representative = _random_images(CLI_CALIBRATION_SAMPLES, h, w, variant.mean,
                                            variant.std)
        else:
            representative = example_inputs(model, CLI_CALIBRATION_SAMPLES,
                                            input_size=(h, w))
    report = _export(model, out, quantize=quantize, representative_data=representative,
                     input_size=(h, w), batch_size=getattr(args, "batch_size", None),
                     check=True, check_input=None, announce=False)
    print(report.summary())
    return 0


# --------------------------------------------------------------------------------------
# The export pipeline (caller's backend)
# --------------------------------------------------------------------------------------


def _check_batch_size(batch_size, model=None):
    if batch_size is None:
        return None
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or (
            batch_size < 1):
        raise ValueError(f"batch_size must be None (dynamic) or a positive int; got "
                         f"{batch_size!r}.")
    group = getattr(model, "group_size", 1) or 1
    if batch_size % group:
        raise ValueError(f"batch_size={batch_size} must be a multiple of the model's "
                         f"group_size ({group}).")
    return int(batch_size)


def _export(model, path, *, quantize, representative_data, input_size, check, check_input,
            batch_size=None, announce=True):
    _check_quantize(quantize)
    batch_size = _check_batch_size(batch_size, model)
    if quantize == "int8" and representative_data is None:
        raise ValueError("quantize='int8' needs representative_data (calibration samples).")
    if quantize == "dynamic" and representative_data is not None:
        raise ValueError("quantize='dynamic' takes no representative_data: its activations "
                         "are quantised at run time. Use quantize='int8' for a file "
                         "calibrated on samples.")
    path = os.fspath(path)
    # specs: one {"name", "shape" (static, no batch), "dtype"} per input, in model order
    model, specs = _static_model(model, input_size)
    rep = (None if representative_data is None
           else _representative_inputs(representative_data, specs))
    if rep is not None and batch_size and len(rep[0]) < batch_size:
        raise ValueError(f"representative_data has {len(rep[0])} samples; a file with "
                         f"batch_size={batch_size} needs at least that many.")
    if check:
        step = batch_size or 1
        xs = (_as_inputs(check_input, specs, "check_input") if check_input is not None
              else [r[:max(4 // step, 1) * step] for r in rep] if rep is not None
              else _example_arrays(model, specs, batch_size, 0))
        if batch_size and len(xs[0]) % batch_size:
            raise ValueError(f"check_input has {len(xs[0])} samples; a file with "
                             f"batch_size={batch_size} needs a multiple of {batch_size}.")
        reference = _keras_outputs(model, xs)

    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    # A hidden, uniquely named sibling, created like any new file (umask permissions).
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{uuid.uuid4().hex[:12]}.partial")
    open(tmp, "xb").close()
    try:
        _convert(model, specs, quantize, rep, tmp, batch_size)
        info = _inspect(tmp)
        names = [s["name"] for s in specs]
        if sorted(info["inputs"]) != sorted(names):
            raise ExportError(f"The TFLite file's inputs {sorted(info['inputs'])} are not "
                              f"the model's {names}.")
        report = ExportReport(
            path=path, size_bytes=os.path.getsize(tmp), quantize=quantize,
            input_shape=info["inputs"][names[0]][0], op_names=info["op_names"],
            int8_ops=info["int8_ops"] if quantize == "int8" else None,
            int8_weight_ops=info["int8_weight_ops"] if quantize == "dynamic" else None,
            num_ops=info["num_ops"],
            inputs=[(n,) + tuple(info["inputs"][n]) for n in names])
        if check:
            outputs = _run_tflite(tmp, dict(zip(names, xs)))
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


def _keras_outputs(model, xs):
    """The model's outputs on inputs ``xs`` (list, model input order) as a flat list of
    float32 arrays (inference mode).

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
                               [v.value for v in model.non_trainable_variables], list(xs))
    else:
        out = model(_model_input(model, xs), training=False)
    return [np.asarray(keras.ops.convert_to_numpy(t), dtype="float32")
            for t in keras.tree.flatten(out)]


def _model_input(model, xs):
    """Inputs ``xs`` (a list in ``model.inputs`` order) packed in the structure the
    functional model was built with: a bare tensor, ``[x]`` for models made as
    ``keras.Model([inputs], ...)`` (which warn when given a bare tensor), a list or a
    dict."""
    import keras

    xs = list(xs)
    struct = getattr(model, "_inputs_struct", None)
    if struct is not None:
        return keras.tree.pack_sequence_as(struct, xs)
    return xs[0] if len(xs) == 1 else xs


def _check_quantize(quantize):
    if quantize not in QUANTIZE_MODES:
        raise ValueError(f"quantize must be None, 'fp16', 'dynamic' or 'int8', got "
                         f"{quantize!r}.")


def _dtype_name(dtype):
    import keras

    return keras.backend.standardize_dtype(dtype)


def _signature_names(model):
    """Signature input names: ``images`` for one input, else the Keras input names
    (made valid identifiers and unique)."""
    if len(model.inputs) == 1:
        return [INPUT_NAME]
    names, used = [], set()
    for i, t in enumerate(model.inputs):
        base = re.sub(r"\W", "_", str(getattr(t, "name", "") or "").split(":")[0])
        base = base or f"input_{i}"
        if base[0].isdigit():
            base = f"input_{base}"
        name, k = base, 1
        while name in used:
            k += 1
            name = f"{base}_{k}"
        used.add(name)
        names.append(name)
    return names


def _static_model(model, input_size):
    """``(model, specs)`` with static export sizes.

    The model is ``model`` itself (already static, or traced at ``input_size``) or, for
    a ZooBackbone, a copy rebuilt at ``input_size`` with the same weights. ``specs``
    holds one ``{"name", "shape", "dtype"}`` per input (``shape`` without the batch).
    """
    import keras

    inputs = getattr(model, "inputs", None) if isinstance(model, keras.Model) else None
    if not inputs:
        raise ValueError("to_tflite needs a keras.Model with known inputs (a functional "
                         "model, or a built Sequential one).")
    first = tuple(inputs[0].shape)
    if input_size is not None:
        if len(input_size) != 2:
            raise ValueError(f"input_size must be (H, W), got {input_size!r}.")
        if len(first) != 4:
            raise ValueError(f"input_size sets the height and width of an NHWC image input; "
                             f"the model's first input has shape {first}.")
    if len(first) == 4:
        h, w, c = first[1:]
        if c is None:
            raise ValueError("The model's channel count must be known to export it.")
        if input_size is None:
            if h is None or w is None:
                raise ValueError(
                    f"The model's input height/width are dynamic ({first}); TFLite export "
                    "needs a static size: pass input_size=(H, W), e.g. "
                    "input_size=(224, 224).")
        else:
            size = tuple(int(v) for v in input_size)
            if (h, w) != size:
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
                    model = static
                elif not ((h is None or h == size[0]) and (w is None or w == size[1])):
                    raise ValueError(
                        f"The model's input is fixed at {(h, w)} and it is not a visionzoo "
                        f"model that can be rebuilt, so it cannot be exported at "
                        f"input_size={size}.")
                # else dynamic H/W: traced at ``size`` during conversion
    return model, _input_specs(model, input_size)


def _input_specs(model, input_size=None):
    """One ``{"name", "keras_name", "shape", "dtype"}`` per input of ``model``
    (``shape`` without the batch); ``input_size`` fills the first input's dynamic H/W.
    Raises ValueError for any other dynamic dimension."""
    import keras

    inputs = getattr(model, "inputs", None) if isinstance(model, keras.Model) else None
    if not inputs:
        raise ValueError("to_tflite needs a keras.Model with known inputs (a functional "
                         "model, or a built Sequential one).")
    shapes = [tuple(t.shape) for t in inputs]
    if input_size is not None and len(shapes[0]) == 4:
        if len(input_size) != 2:
            raise ValueError(f"input_size must be (H, W), got {input_size!r}.")
        size = tuple(int(v) for v in input_size)
        for i in (0, 1):
            if shapes[0][1 + i] is not None and shapes[0][1 + i] != size[i]:
                raise ValueError(f"The model's first input {shapes[0]} does not take "
                                 f"input_size={size}.")
        shapes[0] = (shapes[0][0],) + size + (shapes[0][3],)
    names = _signature_names(model)
    specs = []
    for t, shape, name in zip(model.inputs, shapes, names):
        if not shape or any(d is None for d in shape[1:]):
            raise ValueError(
                f"Input {name!r} of shape {shape} has a dynamic dimension besides the "
                "batch; TFLite export needs static sizes (input_size only sets the first "
                "input's height/width).")
        specs.append({"name": name, "keras_name": str(getattr(t, "name", name)),
                      "shape": [int(d) for d in shape[1:]], "dtype": _dtype_name(t.dtype)})
    return specs


def _as_array(data, spec, what):
    """One input's batch: shape ``(N,) + spec shape`` (a single sample gains the batch
    axis), cast to the input's dtype; integer inputs refuse non-integer values."""
    arr = np.asarray(data)
    shape = tuple(spec["shape"])
    if arr.ndim == len(shape):
        arr = arr[None]
    if tuple(arr.shape[1:]) != shape:
        raise ValueError(f"{what} must have shape (N,) + {shape}; got {arr.shape}.")
    dtype = np.dtype(spec["dtype"])
    if np.issubdtype(dtype, np.integer) and not (np.issubdtype(arr.dtype, np.integer)
                                                 or arr.dtype == bool):
        if not (np.issubdtype(arr.dtype, np.number) and np.all(np.isfinite(arr))
                and np.array_equal(arr, np.round(arr))):
            raise ValueError(f"{what} feeds the {spec['dtype']} input {spec['name']!r}; "
                             f"got non-integer values of dtype {arr.dtype}.")
    return arr.astype(dtype)


def _as_inputs(data, specs, what):
    """``data`` for all inputs -> list of arrays in input order (equal batch sizes).

    One input: an array. Several: a list/tuple in input order, or a dict keyed by
    signature or Keras input name.
    """
    if len(specs) == 1:
        if isinstance(data, dict) and len(data) == 1:
            data = next(iter(data.values()))
        return [_as_array(data, specs[0], what)]
    names = [s["name"] for s in specs]
    if isinstance(data, dict):
        items = []
        for s in specs:
            key = s["name"] if s["name"] in data else s.get("keras_name")
            if key not in data:
                raise ValueError(f"{what} has no entry for input {s['name']!r} (keys "
                                 f"{sorted(data)}; inputs {names}).")
            items.append(data[key])
        extra = set(data) - {s["name"] for s in specs} - {s.get("keras_name") for s in specs}
        if extra:
            raise ValueError(f"{what} has entries {sorted(extra)} that are not inputs of "
                             f"the model ({names}).")
    elif isinstance(data, (list, tuple)) and len(data) == len(specs):
        items = list(data)
    else:
        raise ValueError(f"{what} for a model with {len(specs)} inputs must be a list of "
                         f"{len(specs)} arrays in model.inputs order {names}, or a dict "
                         "keyed by input name.")
    arrays = [_as_array(item, s, f"{what}[{s['name']!r}]") for item, s in zip(items, specs)]
    sizes = {len(a) for a in arrays}
    if len(sizes) != 1:
        raise ValueError(f"{what}: the inputs have different batch sizes "
                         f"{[len(a) for a in arrays]}.")
    return arrays


def _is_one_batch(data, specs):
    if isinstance(data, dict):
        return True
    return (isinstance(data, (list, tuple)) and len(data) == len(specs)
            and all(isinstance(d, np.ndarray) or np.isscalar(d) or hasattr(d, "__array__")
                    for d in data))


def _representative_inputs(data, specs):
    """Calibration data -> list of arrays (one per input, all with N samples)."""
    source = data() if callable(data) else data
    single = len(specs) == 1
    if single and (isinstance(source, np.ndarray) or hasattr(source, "__array__")):
        batches = [source]
    elif not single and _is_one_batch(source, specs):
        batches = [source]
    else:
        batches = list(source)
    parts = []
    for item in batches:
        if single:
            if isinstance(item, (list, tuple)) and item:  # [x] (TF style) or (x, labels)
                item = item[0]
        elif (isinstance(item, (list, tuple)) and item
              and isinstance(item[0], (dict, list, tuple))):  # (inputs, targets)
            item = item[0]
        parts.append(_as_inputs(item, specs, "representative_data"))
    if not parts:
        raise ValueError("representative_data yielded no samples.")
    return [np.concatenate(p, axis=0) for p in zip(*parts)]


def _table_rows(layer):
    """Rows of the lookup table ``layer`` indexes with its input, or None."""
    from visionzoo.layers.adaln import LabelEmbedding

    import keras

    if isinstance(layer, LabelEmbedding):
        return int(layer.rows)
    if isinstance(layer, keras.layers.Embedding):
        return int(layer.input_dim)
    return None


def _consumers(model, tensor):
    """The layers of ``model`` that take the Keras tensor ``tensor`` as an input."""
    found = []
    for layer in model.layers:
        for node in getattr(layer, "_inbound_nodes", []):
            if any(t is tensor for t in getattr(node, "input_tensors", [])):
                found.append(layer)
                break
    return found


def _example_arrays(model, specs, batch, seed):
    """See :func:`example_inputs`; returns a list in input order."""
    from visionzoo.layers.adaln import TimestepFrequencies

    if batch is None:
        batch = CHECK_BATCH
        group = getattr(model, "group_size", 1)
        if isinstance(group, int) and group > 1:
            batch = group * math.ceil(CHECK_BATCH / group)
    rng = np.random.default_rng(seed)
    arrays = []
    for tensor, spec in zip(model.inputs, specs):
        shape = (batch,) + tuple(spec["shape"])
        dtype = np.dtype(spec["dtype"])
        layers = _consumers(model, tensor) if len(specs) > 1 else []
        if np.issubdtype(dtype, np.integer):
            rows = [r for r in (_table_rows(l) for l in layers) if r]
            arr = rng.integers(0, min(rows), shape) if rows else np.zeros(shape)
        elif any(isinstance(l, TimestepFrequencies) for l in layers):
            arr = rng.integers(0, DIFFUSION_STEPS, shape)
        else:
            arr = rng.standard_normal(shape)
        arrays.append(arr.astype(dtype))
    return arrays


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


def _convert(model, specs, quantize, representative, out_path, batch_size=None):
    """Convert ``model`` with inputs ``specs`` (batch prepended) and write the bytes to
    ``out_path``.

    In process under the TensorFlow backend, else in a TensorFlow-backend subprocess.
    """
    import keras

    if keras.backend.backend() == "tensorflow":
        data = _convert_tf_any_batch(model, specs, quantize, representative, batch_size)
        with open(out_path, "wb") as f:
            f.write(data)
    else:
        _convert_in_subprocess(model, specs, quantize, representative, out_path, batch_size)


def _convert_tf_any_batch(model, specs, quantize, representative, batch_size=None):
    """A dynamic-batch file if the model traces and converts that way, else batch 1.
    With ``batch_size`` set: that fixed batch.

    Graphs that need non-builtin ops fail at once (a fixed batch would not help).
    """
    if batch_size:
        return _convert_tf(model, specs, quantize, representative, batch=batch_size)
    try:
        return _convert_tf(model, specs, quantize, representative, batch=None)
    except _UnsupportedOps:
        raise
    except Exception as dynamic_error:
        try:
            return _convert_tf(model, specs, quantize, representative, batch=1)
        except Exception as e:
            raise ExportError(
                f"{e}\n(A dynamic-batch conversion failed before that with: "
                f"{type(dynamic_error).__name__}: {str(dynamic_error)[:2000]})") from e


def _convert_tf(model, specs, quantize, representative, batch=None):
    """TensorFlow-backend conversion. Returns the ``.tflite`` bytes.

    The model goes through a temporary SavedModel (``keras.export.ExportArchive`` with
    a ``serving_default`` endpoint, one argument per input, named as in ``specs``),
    which the converter freezes itself; this needs about half the peak memory of
    converting a graph whose weights were folded into constants beforehand.

    ``batch``: None (dynamic batch dimension) or a fixed batch size.
    """
    import keras
    import tensorflow as tf

    if keras.backend.backend() != "tensorflow":
        raise RuntimeError("_convert_tf needs the TensorFlow backend.")

    def serve(*args):
        flat = keras.tree.flatten(model(_model_input(model, args), training=False))
        if len(flat) == 1:
            return flat[0]
        return {f"output_{i}": t for i, t in enumerate(flat)}

    from visionzoo.layers.lowering import tflite_tracing

    with tempfile.TemporaryDirectory(prefix="visionzoo_savedmodel_") as saved:
        archive = keras.export.ExportArchive()
        archive.track(model)
        # Layers trace their XNNPACK-friendly forms (visionzoo.layers.lowering); the
        # check below compares the file with the model's ordinary forms.
        with tflite_tracing(model):
            archive.add_endpoint(
                "serving_default", serve,
                input_signature=[keras.InputSpec(shape=(batch,) + tuple(s["shape"]),
                                                 dtype=s["dtype"], name=s["name"])
                                 for s in specs])
            archive.write_out(saved, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(saved)
        return _run_converter(converter, model.name, quantize, representative, specs,
                              batch or 1)


def _run_converter(converter, model_name, quantize, representative, specs, batch=1):
    """Builtin ops only, the quantisation settings, then ``convert()``."""
    import tensorflow as tf

    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantize == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantize == "dynamic":
        # Optimize.DEFAULT without a representative dataset: weight-only int8
        # ("dynamic range") quantisation; activations stay float32 in the file.
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif quantize == "int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        arrays = [np.asarray(a, dtype=s["dtype"]) for a, s in zip(representative, specs)]

        def dataset():
            for i in range(0, len(arrays[0]) - batch + 1, batch):
                if len(arrays) == 1:
                    yield [arrays[0][i:i + batch]]
                else:  # keyed by signature input name
                    yield {s["name"]: a[i:i + batch] for s, a in zip(specs, arrays)}

        converter.representative_dataset = dataset
        converter.inference_input_type = tf.float32
        converter.inference_output_type = tf.float32
    try:
        data = converter.convert()
    except Exception as e:  # the converter raises its own ConverterError subclasses
        text = str(e)
        unsupported = any(k in text for k in (
            "TF Select ops", "Flex ops", "Custom ops", "neither a custom op nor a flex op"))
        error = _UnsupportedOps if unsupported else ExportError
        raise error(
            "TFLite conversion with builtin ops only (tf.lite.OpsSet.TFLITE_BUILTINS) "
            f"failed for {model_name}:\n{_short_converter_message(e)}") from e
    if quantize == "dynamic":
        data = _float_weights_outside_products(data)
    return data


# Ops whose dynamically quantised (int8-weight) form XNNPACK runs; see
# _float_weights_outside_products.
DYNAMIC_INT8_OPS = ("FULLY_CONNECTED", "CONV_2D")


def _float_weights_outside_products(data):
    """Give every op other than :data:`DYNAMIC_INT8_OPS` its constant weights back in
    float32 (the int8 values times their scales) in a dynamic-range file.

    The converter's dynamic-range pass also gives depthwise convolutions int8 weights.
    XNNPACK has no dynamically quantised depthwise kernel, so each one runs in TFLite's
    hybrid kernel and cuts the delegated graph: convformer_s18's file ran as 19 XNNPACK
    partitions in 48 ms (1 thread); with float depthwise weights it is one partition
    and 25 ms. The weights keep their int8 rounding; only the activations of those ops
    stay unquantised. Only hybrid ops (an int8 constant input, float32 outputs) are
    rewritten: an int8-stored table read by GATHER (int8 rows out) and expanded by
    DEQUANTIZE stays as it is. ``data``: the converter's flatbuffer; returns the
    rewritten one.
    """
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(data), 0)
    names = _builtin_names()
    # DEQUANTIZE turns an int8 constant into float32 itself and must keep its int8 input.
    keep = {code for code, name in names.items()
            if name in DYNAMIC_INT8_OPS + ("DEQUANTIZE", "QUANTIZE")}
    users = {}
    for sg in model.subgraphs or []:
        for t in sg.tensors or []:
            users[t.buffer] = users.get(t.buffer, 0) + 1
    changed = 0
    for sg in model.subgraphs or []:
        done = set()
        for op in sg.operators or []:
            code = model.operatorCodes[op.opcodeIndex]
            if max(code.builtinCode, code.deprecatedBuiltinCode) in keep:
                continue
            outputs = [sg.tensors[i] for i in (op.outputs if op.outputs is not None else [])
                       if i >= 0]
            if not outputs or any(t.type != schema.TensorType.FLOAT32 for t in outputs):
                continue  # only hybrid ops (int8 weights, float32 results) are rewritten
            for index in op.inputs if op.inputs is not None else []:
                if index < 0 or index in done:
                    continue
                tensor = sg.tensors[index]
                q = tensor.quantization
                buffer = model.buffers[tensor.buffer] if tensor.buffer else None
                if (tensor.type != schema.TensorType.INT8 or buffer is None
                        or buffer.data is None or len(buffer.data) == 0 or q is None
                        or q.scale is None or len(q.scale) == 0):
                    continue  # not a constant int8 weight
                values = np.asarray(buffer.data, np.uint8).view(np.int8).reshape(
                    [int(d) for d in tensor.shape])
                shape = [1] * values.ndim
                if len(q.scale) > 1:
                    shape[q.quantizedDimension] = -1
                zero = np.zeros(len(q.scale), np.float32) if q.zeroPoint is None else (
                    np.asarray(q.zeroPoint, np.float32))
                floats = ((values.astype(np.float32) - zero.reshape(shape))
                          * np.asarray(q.scale, np.float32).reshape(shape))
                new = np.frombuffer(floats.astype(np.float32).tobytes(), np.uint8)
                if users.get(tensor.buffer, 0) > 1:  # shared: give this tensor its own
                    model.buffers.append(schema.BufferT())
                    users[tensor.buffer] -= 1
                    tensor.buffer = len(model.buffers) - 1
                    users[tensor.buffer] = 1
                model.buffers[tensor.buffer].data = new
                tensor.type = schema.TensorType.FLOAT32
                tensor.quantization = None
                done.add(index)
                changed += 1
    if not changed:
        return data
    builder = flatbuffers.Builder(len(data) + 4096)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


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


def _convert_in_subprocess(model, specs, quantize, representative, out_path,
                           batch_size=None):
    """Save ``model`` and convert it with ``KERAS_BACKEND=tensorflow`` in a subprocess."""
    with tempfile.TemporaryDirectory(prefix="visionzoo_export_") as work:
        model_path = _save_for_subprocess(model, work)
        specs_path = os.path.join(work, "inputs.json")
        with open(specs_path, "w") as f:
            json.dump(specs, f)
        cmd = [sys.executable, "-m", "visionzoo.export", "convert", model_path, out_path,
               "--inputs", specs_path, "--error-file", os.path.join(work, "error.json")]
        if quantize:
            cmd += ["--quantize", quantize]
        if batch_size:
            cmd += ["--batch-size", str(batch_size)]
        if representative is not None:
            rep_path = os.path.join(work, "representative.npz")
            np.savez(rep_path, *[np.asarray(a, dtype=s["dtype"])
                                 for a, s in zip(representative, specs)])
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
    """``python -m visionzoo.export convert MODEL OUT.tflite --inputs INPUTS.json``.

    ``MODEL`` is a ``.keras`` file or the ``model.json`` (+ ``weights.npz``) written by
    :func:`_save_for_subprocess`; ``INPUTS.json`` the list of input specs
    (``{"name", "shape", "dtype"}``, shape without the batch) in model input order;
    ``--representative`` an ``.npz`` with one array per input (``arr_0``, ...).

    Runs under ``KERAS_BACKEND=tensorflow``: loads the model (visionzoo's registered
    layers and families imported first; torch is never imported), converts it and
    writes OUT. On failure writes ``{"message": ...}`` to ``--error-file`` and exits 2.
    """
    p = argparse.ArgumentParser(prog="python -m visionzoo.export")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("convert", help="convert a saved model (TensorFlow backend)")
    c.add_argument("model")
    c.add_argument("out")
    c.add_argument("--inputs", required=True, help="JSON list of input specs")
    c.add_argument("--quantize", default=None, choices=["fp16", "dynamic", "int8"])
    c.add_argument("--representative", default=None, help=".npz of calibration inputs")
    c.add_argument("--error-file", default=None)
    c.add_argument("--batch-size", type=int, default=None)
    args = p.parse_args(argv)
    try:
        import keras

        if keras.backend.backend() != "tensorflow":
            raise ExportError("python -m visionzoo.export must run with "
                              "KERAS_BACKEND=tensorflow.")
        with open(args.inputs) as f:
            specs = json.load(f)
        _import_registered_classes()
        model = _load_in_subprocess(args.model)
        if len(model.inputs) != len(specs):
            raise ExportError(f"The reloaded model has {len(model.inputs)} inputs; "
                              f"expected {len(specs)}.")
        rep = None
        if args.representative:
            with np.load(args.representative) as data:
                rep = [data[f"arr_{i}"] for i in range(len(specs))]
        data = _convert_tf_any_batch(model, specs, args.quantize, rep, args.batch_size)
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
    """Operator names (all subgraphs), input signatures and int8 op count.

    ``inputs`` maps each signature input name to ``(shape_signature, dtype)`` (``None``
    for a dynamic dimension). Raises ExportError if any operator is not a TFLite
    builtin (custom, Flex or delegate ops) or the interpreter cannot load the file.
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
    def dtypes(indices):
        return [tensors.get(i, {}).get("dtype") for i in list(indices) if i >= 0]

    int8_ops = sum(1 for d in details if any(t in (np.int8, np.int16)
                                             for t in dtypes(d["outputs"])))
    # Dynamic-range ops: an int8 (weight) input, float32 outputs.
    int8_weight_ops = sum(1 for d in details
                          if np.int8 in dtypes(d["inputs"])
                          and dtypes(d["outputs"]) and all(
                              t == np.float32 for t in dtypes(d["outputs"])))
    signatures = interpreter.get_signature_list()
    if signatures:
        key = next(iter(signatures))
        by_name = interpreter.get_signature_runner(key).get_input_details()
    else:  # not written by this module
        by_name = {d["name"]: d for d in interpreter.get_input_details()}
    inputs = {}
    for name, d in by_name.items():
        sig = [int(v) for v in d.get("shape_signature", d["shape"])]
        inputs[name] = (tuple(None if v < 0 else v for v in sig), np.dtype(d["dtype"]).name)
    return {"op_names": sorted(op_names), "inputs": inputs, "int8_ops": int8_ops,
            "int8_weight_ops": int8_weight_ops, "num_ops": len(details)}


def _run_tflite(path, feeds):
    """Run the file on ``feeds`` (dict signature input name -> batch, or one array for a
    single-input file); returns the list of outputs (in output_i order)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=path)
    signatures = interpreter.get_signature_list()
    if not signatures:  # files without a signature (not written by this module)
        x = next(iter(feeds.values())) if isinstance(feeds, dict) else feeds
        inp = interpreter.get_input_details()[0]
        x = np.asarray(x, dtype=inp["dtype"])
        interpreter.resize_tensor_input(inp["index"], x.shape)
        interpreter.allocate_tensors()
        interpreter.set_tensor(inp["index"], x)
        interpreter.invoke()
        return [np.asarray(interpreter.get_tensor(o["index"]), dtype="float32")
                for o in interpreter.get_output_details()]
    key = next(iter(signatures))
    names = signatures[key]["inputs"]
    if not isinstance(feeds, dict):
        feeds = {names[0]: feeds} if len(names) == 1 else None
    if feeds is None or sorted(feeds) != sorted(names):
        raise ValueError(f"The file's inputs are {sorted(names)}; got "
                         f"{'one array' if feeds is None else sorted(feeds)}.")
    runner = interpreter.get_signature_runner(key)
    details = runner.get_input_details()
    feeds = {n: np.asarray(feeds[n], dtype=details[n]["dtype"]) for n in names}
    n = len(next(iter(feeds.values())))
    fixed = max(int(details[k].get("shape_signature", details[k]["shape"])[0])
                if len(details[k]["shape"]) else -1 for k in names)
    if fixed > 0 and n != fixed:  # a fixed-batch file: run it chunk by chunk
        if n % fixed:
            raise ValueError(f"The file takes batches of {fixed}; got {n} samples.")
        chunks = [_run_tflite(path, {k: v[i:i + fixed] for k, v in feeds.items()})
                  for i in range(0, n, fixed)]
        return [np.concatenate(parts, axis=0) for parts in zip(*chunks)]
    out = runner(**feeds)
    keys = sorted(out, key=lambda k: (len(k), k))  # output_0, ..., output_10
    return [np.asarray(out[k], dtype="float32") for k in keys]


if __name__ == "__main__":
    sys.exit(_subprocess_main())
