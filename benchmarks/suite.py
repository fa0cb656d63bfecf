"""Benchmark suite (issue 11): every backend, timm, TFLite and the machine's sgemm rate,
side by side in one run on one machine, into one long-format CSV.

    python benchmarks/suite.py                                  # default model list
    python benchmarks/suite.py shvit_s1 convit_tiny --batches 1 8 --repeats 7
    python benchmarks/suite.py --no-compile --no-litert --csv /tmp/quick.csv shvit_s1
    python benchmarks/make_table.py                             # -> docs/models.md + png

One parent process (this script; it imports neither Keras nor torch) runs, one after
another so that nothing competes for the cores, a child process per stage:

1. ``sgemm``: the machine's fp32 matmul rate, ``numpy.matmul`` and ``torch.mm`` of two
   N x N matrices (median GFLOP/s of the timed calls); the best of the two is the
   reference rate for the ``sgemm_fraction`` column.
   ``gemm``: the library matrix products our JAX models and timm's models get, on the
   shapes of a four-stage hierarchy's token MLPs (:data:`GEMM_SHAPES`, per batch):
   XLA:CPU (``jax.jit`` of ``x @ w + b``, the best of the YNN fusion settings
   :mod:`visionzoo.inference` autotunes among) against MKL (``torch.nn.functional.linear``).
   Where a model's time is mostly matrix products, this ratio bounds how far our JAX
   path can get ahead of timm.
2. ``ours`` once per Keras backend (``KERAS_BACKEND`` is fixed per process): each model
   and batch timed by :func:`visionzoo.bench.time_keras` (``predict_on_batch``: XLA jit
   on JAX, ``tf.function`` on TensorFlow, the ``torch.export``-captured graph on torch),
   fp32, random weights; on torch also with ``jit_compile=True`` (the captured graph
   under ``torch.compile``; timm's models only, ``--no-torch-compile`` skips it). The
   first backend's child also records the registry facts (params, GMACs, published
   top-1) so the table generator needs nothing but the CSV.
3. ``timm``: the same architecture in timm, eager and ``torch.compile`` (inductor,
   capped by ``--compile-timeout``), each in its own child by
   :func:`visionzoo.bench.time_timm` (torch never shares a process with TensorFlow).
4. ``tflite`` (TensorFlow backend): first XNNPACK's own rate on one fp32
   ``FULLY_CONNECTED`` op of each :data:`GEMM_SHAPES` shape at batch 1 (measurement
   ``tflite_gemm``, GFLOP/s per thread count): a file whose time is mostly such products
   cannot run faster than that rate allows, whoever converted it. Then
   ``visionzoo.export.to_tflite`` of each model with a
   fixed batch of 1 (``batch_size=1``, as litert-torch's files have) in fp32
   (parity-checked), fp16, dynamic (int8 weights, float activations) and int8
   (calibrated on a few random images: for the size only); file sizes. The fp32,
   dynamic and int8 files are kept for stage 6.
5. ``litert``: timm's model converted with ``litert_torch.convert`` (litert-torch),
   when litert-torch imports; otherwise rows say "unavailable" and why. That file is
   also quantised by ai-edge-quantizer's ``dynamic_wi8_afp32`` recipe (mode
   ``dynamic``), the counterpart of our dynamic files; both are kept for stage 6. timm's
   zero-initialised tensors are re-drawn first (the converter folds constant weights, which would delete whole residual branches). litert-torch 0.10
   would downgrade typing_extensions/anyio in the main environment, so it may be kept
   apart: ``pip install --target DIR --no-deps litert-torch litert-converter
   ai-edge-quantizer torchao jaxtyping wadler_lindig immutabledict multipledispatch
   ordered-set xdsl lark tabulate fire`` and ``--litert-path DIR`` (or
   ``$LITERT_TORCH_PATH``) puts DIR on this child's ``PYTHONPATH`` only.
6. ``tflite_time``: ``Interpreter.invoke`` latency in ai-edge-litert (XNNPACK) at batch
   1 with 1 and 2 threads of every kept file, in a child that loads neither TensorFlow
   nor torch. Per model and mode, our file and litert-torch's are timed interleaved (one
   call of each in turn, at least :data:`TFLITE_REPEATS` each): on this 2-core VM one
   file timed alone after the other moved by up to ~35 % between spells (convit_tiny's
   fp32 file at 1 thread: 36.9 ms in the run of 2026-12-07, 27.0 ms timed again
   minutes later), which decides a 0.8x target either way.
7. ``sgemm`` again at the end (the machine's load may have changed).

Every timing is the median (with p25/p75) of ``--repeats`` timed calls after the first
call and ``--warmup`` untimed ones. Every row records the 1-minute load average when
its measurement started, plus the machine and library versions. A measurement that
fails gets a row with an empty value and the reason in ``note``.

CSV columns (:data:`FIELDS`), one row per model x measurement:

- ``measurement``: ``throughput`` (img/s), ``tflite_latency`` (ms), ``tflite_size``
  (bytes), ``sgemm``, ``gemm`` and ``tflite_gemm`` (GFLOP/s, no model; ``gemm``'s and
  ``tflite_gemm``'s ``mode`` is ``MxKxN``), ``params`` (count), ``gmacs`` (GMAC at
  ``size``), ``top1_published`` (%);
- ``impl``: ``jax``/``tensorflow``/``torch`` (ours), ``torch-compile`` (ours on torch
  with ``jit_compile=True``), ``timm``, ``visionzoo`` or
  ``litert-torch`` (TFLite files), ``numpy``/``torch`` (sgemm), ``jax``/``torch``
  (gemm), ``xnnpack`` (tflite_gemm), ``registry``;
- ``mode``: how it ran (``jit``, ``tf.function``, ``torch.export`` (earlier runs:
  ``eager``), ``torch.export+torch.compile``, ``eager``/``torch.compile`` (timm),
  ``fp32``/``fp16``/``dynamic``/``int8`` for TFLite files);
- ``gflops_achieved`` = 2 x GMACs x img/s and ``sgemm_fraction`` = that / the best
  sgemm rate measured in the run, start or end (throughput rows with known GMACs).

The run prints the ratios the issue's targets are about (best backend vs timm,
TFLite vs litert-torch, sgemm fraction). Nothing here asserts a speed.
"""

import argparse
import csv
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from visionzoo import bench  # noqa: E402  (stdlib-only at import time)

FIELDS = (
    "run_id", "date", "model", "timm_model", "measurement", "impl", "mode", "batch", "size",
    "threads", "value", "unit", "p25", "p75", "repeats", "first_call_s",
    "gflops_achieved", "sgemm_fraction", "load1", "note",
    "cpu", "cores", "python", "numpy", "keras", "jax", "tensorflow", "torch", "timm",
    "ai_edge_litert", "litert_torch",
)

# One small model per family (and per version) that timm also has, then the small
# classifier of each family timm has not (no ratio).
MODELS = ("poolformerv2_s12", "convformer_s18", "caformer_s18",
          "swin_tiny_patch4_window7_224", "swinv2_tiny_window8_256", "shvit_s1",
          "convit_tiny", "hornet_tiny_7x7", "litv2_s", "inception_transformer_small",
          "svt_h_small")
BACKENDS = ("jax", "tensorflow", "torch")
OUR_MODES = {"jax": "jit", "tensorflow": "tf.function", "torch": "torch.export"}
# Our torch backend with ``jit_compile=True`` (captured graph + torch.compile): its own
# column, impl "torch-compile".
TORCH_COMPILE = "torch-compile"
QUANT_MODES = (None, "fp16", "dynamic", "int8")

_PACKAGES = {"numpy": ("numpy",), "keras": ("keras",), "jax": ("jax",),
             "tensorflow": ("tensorflow", "tensorflow-cpu"), "torch": ("torch",),
             "timm": ("timm",), "ai_edge_litert": ("ai-edge-litert",),
             "litert_torch": ("litert-torch",)}


# --------------------------------------------------------------------------------------
# Rows
# --------------------------------------------------------------------------------------


def _load1():
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def versions(extra_path=None):
    """Installed versions of the libraries the suite uses (package metadata only)."""
    out = {}
    for key, packages in _PACKAGES.items():
        out[key] = bench._version(*packages)
    if out["litert_torch"] == "n/a" and extra_path:
        # An install kept out of the main environment (--litert-path).
        for entry in os.listdir(extra_path) if os.path.isdir(extra_path) else ():
            if entry.startswith("litert_torch-") and entry.endswith(".dist-info"):
                out["litert_torch"] = entry[len("litert_torch-"):-len(".dist-info")]
    return out


def machine():
    return {"cpu": bench.cpu_model(), "cores": os.cpu_count(),
            "python": platform.python_version()}


def make_row(**fields):
    """A row with every :data:`FIELDS` key; ``load1`` is read now unless given."""
    row = dict.fromkeys(FIELDS)
    row["load1"] = _load1()
    row.update(fields)
    return row


def failed_row(reason, **fields):
    return make_row(note=str(reason)[:300], **fields)


def write_csv(rows, path):
    """Append ``rows`` to the CSV at ``path`` (header written when the file is new)."""
    bench.append_csv(rows, path, fieldnames=FIELDS)


def read_csv(paths):
    """Rows of one or more suite CSVs (strings; empty cells as None)."""
    if isinstance(paths, str):
        paths = [paths]
    rows = []
    for path in paths:
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                rows.append({k: (v if v != "" else None) for k, v in row.items()})
    return rows


def add_sgemm_fraction(rows, sgemm_gflops):
    """Fill ``gflops_achieved`` and ``sgemm_fraction`` of throughput rows, in place,
    from the model's ``gmacs`` rows (same model) and the machine's sgemm rate."""
    gmacs = {r["model"]: float(r["value"]) for r in rows
             if r["measurement"] == "gmacs" and r["value"] is not None}
    for r in rows:
        if r["measurement"] != "throughput" or r["value"] is None:
            continue
        g = gmacs.get(r["model"])
        if g is None:
            continue
        r["gflops_achieved"] = 2.0 * g * float(r["value"])
        if sgemm_gflops:
            r["sgemm_fraction"] = r["gflops_achieved"] / sgemm_gflops
    return rows


def _append_jsonl(path, row):
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


# --------------------------------------------------------------------------------------
# Stages (each runs in a child process)
# --------------------------------------------------------------------------------------


def sgemm(n=2048, repeats=10, warmup=2, lib="numpy", threads=None):
    """The machine's fp32 matmul rate: ``{"value", "p25", "p75"}`` in GFLOP/s of
    ``n x n @ n x n`` (2 n^3 flops per call), median of ``repeats`` timed calls."""
    threads = threads or bench.default_threads()
    if lib == "numpy":
        import numpy as np

        rng = np.random.default_rng(0)
        a = rng.standard_normal((n, n), dtype=np.float32)
        b = rng.standard_normal((n, n), dtype=np.float32)
        fn = lambda: np.matmul(a, b)  # noqa: E731
    elif lib == "torch":
        import torch

        torch.set_num_threads(threads)
        a, b = torch.randn(n, n), torch.randn(n, n)

        def fn():
            with torch.inference_mode():
                torch.mm(a, b)
    else:
        raise ValueError(f"lib must be 'numpy' or 'torch', got {lib!r}.")
    _, times = bench._time_calls(fn, repeats, warmup)
    flops = 2.0 * n ** 3
    rates = sorted(flops / max(t, 1e-12) / 1e9 for t in times)
    return {"value": bench._percentile(rates, 50), "p25": bench._percentile(rates, 25),
            "p75": bench._percentile(rates, 75)}


def stage_sgemm(args, out):
    for lib in ("numpy", "torch"):
        base = dict(measurement="sgemm", impl=lib, mode="matmul fp32", size=args.sgemm_n,
                    threads=bench.default_threads(), repeats=args.repeats, unit="GFLOP/s",
                    note=args.note)
        try:
            row = make_row(**base)
            row.update(sgemm(args.sgemm_n, args.repeats, args.warmup, lib))
        except Exception as e:  # noqa: BLE001 (record, keep going)
            row = failed_row(f"failed: {e!r}", **base)
        _append_jsonl(out, row)


# The token MLPs (ratio 4) of a four-stage 224-px hierarchy with widths 64/128/320/512,
# as in PoolFormer-S12/v2, ConvFormer-S18 and CAFormer-S18: (role, tokens, K, N); at
# batch b a product is (b x tokens) x K times K x N.
GEMM_SHAPES = (
    ("stage 1 MLP fc1", 3136, 64, 256), ("stage 1 MLP fc2", 3136, 256, 64),
    ("stage 2 MLP fc1", 784, 128, 512), ("stage 2 MLP fc2", 784, 512, 128),
    ("stage 3 MLP fc1", 196, 320, 1280), ("stage 3 MLP fc2", 196, 1280, 320),
    ("stage 4 MLP fc1", 49, 512, 2048), ("stage 4 MLP fc2", 49, 2048, 512),
)


def gemm_rate(m, k, n, lib, repeats=10, warmup=2, threads=None):
    """GFLOP/s (``{"value", "p25", "p75", "option"}``) of ``x @ w + b`` with ``x`` m x k
    and ``w`` k x n in fp32: ``lib="jax"`` is XLA:CPU, best median over the YNN fusion
    settings visionzoo's JAX path autotunes among (``option``: the kept one, None = XLA's
    default); ``lib="torch"`` is ``torch.nn.functional.linear`` (MKL)."""
    import numpy as np

    threads = threads or bench.default_threads()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((m, k), dtype=np.float32)
    w = rng.standard_normal((k, n), dtype=np.float32)
    b = rng.standard_normal((n,), dtype=np.float32)
    candidates = [None]
    if lib == "jax":
        import jax

        from visionzoo.inference import CANDIDATES, YNN_OPTION

        candidates = CANDIDATES
        xj, wj, bj = map(jax.device_put, (x, w, b))
    elif lib == "torch":
        import torch

        torch.set_num_threads(threads)
        xt, wt, bt = torch.from_numpy(x), torch.from_numpy(np.ascontiguousarray(w.T)), \
            torch.from_numpy(b)
    else:
        raise ValueError(f"lib must be 'jax' or 'torch', got {lib!r}.")
    best = None
    for option in candidates:
        if lib == "jax":
            try:
                f = jax.jit(lambda x, w, b: x @ w + b,
                            compiler_options=None if option is None else {YNN_OPTION: option})
                f(xj, wj, bj).block_until_ready()
            except Exception:  # noqa: BLE001 (a setting this jaxlib does not know)
                continue
            fn = lambda: f(xj, wj, bj).block_until_ready()  # noqa: E731
        else:
            def fn():
                with torch.inference_mode():
                    torch.nn.functional.linear(xt, wt, bt)
        _, times = bench._time_calls(fn, repeats, warmup)
        rates = sorted(2.0 * m * k * n / max(t, 1e-12) / 1e9 for t in times)
        result = {"value": bench._percentile(rates, 50), "p25": bench._percentile(rates, 25),
                  "p75": bench._percentile(rates, 75), "option": option}
        if best is None or result["value"] > best["value"]:
            best = result
    return best


def stage_gemm(args, out):
    import torch  # noqa: F401  (torch before anything else, as everywhere here)

    for batch in args.batches:
        for role, tokens, k, n in GEMM_SHAPES:
            m = batch * tokens
            for lib in ("jax", "torch"):
                base = dict(measurement="gemm", impl=lib, mode=f"{m}x{k}x{n}", batch=batch,
                            threads=bench.default_threads(), repeats=args.repeats,
                            unit="GFLOP/s")
                try:
                    row = make_row(**base)
                    rate = gemm_rate(m, k, n, lib, max(args.repeats, 10), args.warmup)
                    option = rate.pop("option")
                    row.update(rate)
                    row["note"] = role + (
                        "; XLA:CPU " + ("default" if option is None else option)
                        if lib == "jax" else "; MKL (torch.nn.functional.linear)")
                except Exception as e:  # noqa: BLE001 (record, keep going)
                    row = failed_row(f"failed: {e!r}", **base)
                _append_jsonl(out, row)


def stage_info(args, out):
    """Registry facts per model (params, GMACs at the default size, published top-1),
    with its timm name and input size; an unknown name is a failed row."""
    from visionzoo.registry import get_variant, model_info

    for name in args.models:
        try:
            v = get_variant(name)
            info = model_info(name)
        except Exception as e:  # noqa: BLE001
            _append_jsonl(out, failed_row(f"failed: {e!r}", model=name, measurement="params",
                                          impl="registry"))
            continue
        facts = (("params", info.get("params"), "count"),
                 ("gmacs", info.get("gmacs"), "GMAC"),
                 ("top1_published", (info.get("published") or {}).get("top1"), "%"))
        for what, value, unit in facts:
            _append_jsonl(out, make_row(model=name, timm_model=v.timm, measurement=what,
                                        impl="registry", size=v.input_size, value=value,
                                        unit=unit))


def stage_ours(args, out):
    """Our models on this process's Keras backend (``KERAS_BACKEND``)."""
    import keras

    backend = keras.backend.backend()
    from visionzoo.registry import get_variant

    jit = bool(getattr(args, "jit_compile", False))
    impl, mode = ((TORCH_COMPILE, "torch.export+torch.compile") if jit
                  else (backend, OUR_MODES.get(backend, "predict_on_batch")))
    for name in args.models:
        v = get_variant(name)
        for batch in args.batches:
            base = dict(model=name, timm_model=v.timm, measurement="throughput",
                        impl=impl, mode=mode,
                        batch=batch, size=v.input_size, repeats=args.repeats,
                        unit="img/s")
            row = make_row(**base)
            _log(f"{name} batch {batch} on {impl} (load {row['load1']})")
            try:
                r = bench.time_keras(name, batch, v.input_size, args.repeats, args.warmup,
                                     jit_compile=True if jit else None)
                row.update(value=r["ips"], p25=r["p25"], p75=r["p75"],
                           first_call_s=r["first_call_s"], threads=r["threads"],
                           note=r["method"])
            except Exception as e:  # noqa: BLE001
                row.update(note=f"failed: {e!r}"[:300])
            _append_jsonl(out, row)


def _time_interpreter(path, threads, repeats, warmup, x=None):
    """Median/p25/p75 ms of ``Interpreter.invoke`` (ai-edge-litert, XNNPACK)."""
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=path, num_threads=threads)
    details = it.get_input_details()
    it.allocate_tensors()
    rng = np.random.default_rng(0)
    for d in details:
        data = x if (x is not None and len(details) == 1) else rng.standard_normal(
            tuple(d["shape"])).astype(d["dtype"])
        it.set_tensor(d["index"], data)
    first, times = bench._time_calls(it.invoke, repeats, warmup)
    ms = sorted(1000.0 * t for t in times)
    return {"value": bench._percentile(ms, 50), "p25": bench._percentile(ms, 25),
            "p75": bench._percentile(ms, 75), "first_call_s": first}


def tflite_fc_file(m, k, n, path, seed=0):
    """Write a TFLite file holding one fp32 FULLY_CONNECTED op: ``x (m, k) @ w + b`` with
    constant random ``w (k, n)`` and ``b`` (TensorFlow backend: uses ``tf.lite``)."""
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    w = tf.constant(rng.standard_normal((k, n), dtype=np.float32))
    b = tf.constant(rng.standard_normal((n,), dtype=np.float32))

    @tf.function(input_signature=[tf.TensorSpec((m, k), tf.float32)])
    def fc(x):
        return tf.matmul(x, w) + b

    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [fc.get_concrete_function()], fc)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    with open(path, "wb") as f:
        f.write(converter.convert())
    return path


def stage_tflite_gemm(args, out, tmp):
    """XNNPACK's fully-connected rate (GFLOP/s) on the token-MLP shapes at batch 1, per
    thread count: the ceiling of a TFLite file whose time is mostly such products (ours
    and litert-torch's alike)."""
    for role, m, k, n in GEMM_SHAPES:
        for threads in args.tflite_threads:
            row = make_row(measurement="tflite_gemm", impl="xnnpack", mode=f"{m}x{k}x{n}",
                           batch=1, threads=threads, repeats=max(args.repeats, 10),
                           unit="GFLOP/s", note=f"{role}; one FULLY_CONNECTED op")
            try:
                path = os.path.join(tmp, f"fc_{m}x{k}x{n}.tflite")
                if not os.path.exists(path):
                    tflite_fc_file(m, k, n, path)
                ms = _time_interpreter(path, threads, max(args.repeats, 10), args.warmup)
                flops = 2.0 * m * k * n
                # GFLOP/s from the median/quartile times (the fastest call = p75 rate).
                row.update(value=flops / ms["value"] / 1e6, p25=flops / ms["p75"] / 1e6,
                           p75=flops / ms["p25"] / 1e6)
            except Exception as e:  # noqa: BLE001 (record, keep going)
                row.update(note=f"failed: {e!r}"[:300])
            _append_jsonl(out, row)


def stage_tflite(args, out):
    """XNNPACK's fully-connected rate on the models' product shapes, then our TFLite
    exports: sizes (fp32/fp16/dynamic/int8) and fp32, dynamic and int8 latency (1, 2
    threads; deferred to :func:`stage_tflite_time` when the run keeps its files)."""
    from visionzoo.export import example_inputs, to_tflite
    from visionzoo.registry import create_model, get_variant

    with tempfile.TemporaryDirectory() as tmp:
        _log("XNNPACK fully-connected rate on the models' product shapes")
        stage_tflite_gemm(args, out, tmp)
        for name in args.models:
            v = get_variant(name)
            common = dict(model=name, timm_model=v.timm, impl="visionzoo",
                          size=v.input_size, batch=1)
            try:
                model = create_model(name, input_shape=(v.input_size, v.input_size,
                                                        v.input_channels))
            except Exception as e:  # noqa: BLE001
                _append_jsonl(out, failed_row(f"failed: {e!r}", measurement="tflite_size",
                                              mode="fp32", unit="bytes", **common))
                continue
            for quantize in QUANT_MODES:
                mode = quantize or "fp32"
                path = os.path.join(tmp, f"{name}_{mode}.tflite")
                row = make_row(measurement="tflite_size", mode=mode, unit="bytes", **common)
                _log(f"{name}: TFLite export {mode} (load {row['load1']})")
                try:
                    kwargs = {}
                    if quantize == "int8":
                        kwargs["representative_data"] = example_inputs(model, 4, seed=1)
                    # A fixed batch of 1, like litert-torch's conversion (its sample
                    # input fixes every shape) and like an on-device app.
                    report = to_tflite(model, path, quantize=quantize, batch_size=1,
                                       check=quantize is None, **kwargs)
                    batch = report.input_shape[0] or "dynamic"
                    note = f"{report.num_ops} ops, batch {batch}"
                    if report.max_abs_diff is not None:
                        note += f", max|diff| {report.max_abs_diff:.1e}"
                    if report.int8_ops is not None:
                        note += f", {report.int8_ops} int8 ops"
                    if report.int8_weight_ops is not None:
                        note += f", {report.int8_weight_ops} ops with int8 weights"
                    row.update(value=report.size_bytes, note=note)
                except Exception as e:  # noqa: BLE001
                    row.update(note=f"failed: {e!r}"[:300])
                _append_jsonl(out, row)
                if quantize != "fp16" and row["value"] is not None:
                    # fp32 (the comparison with litert-torch), dynamic and int8 (what a
                    # phone app ships); an fp16 file runs as fp32 on x86 XNNPACK.
                    _latency_rows(out, path, args, common, mode)


def _latency_rows(out, path, args, common, mode):
    """Latency rows of the file at ``path``: timed now, or, when the run keeps its files
    (``args.files``, set by the parent), copied there and listed for
    :func:`stage_tflite_time`, which times every file of a model side by side."""
    files = getattr(args, "files", None)
    if files:
        import shutil

        kept = os.path.join(files, f"{common['model']}__{common['impl']}__{mode}.tflite")
        shutil.copyfile(path, kept)
        with open(os.path.join(files, PENDING), "a") as f:
            f.write(json.dumps({"path": kept, "mode": mode, "common": common}) + "\n")
        return
    for threads in args.tflite_threads:
        row = make_row(measurement="tflite_latency", mode=mode, threads=threads,
                       repeats=args.repeats, unit="ms", note="XNNPACK (ai-edge-litert)",
                       **common)
        try:
            row.update(_time_interpreter(path, threads, args.repeats, args.warmup))
        except Exception as e:  # noqa: BLE001
            row.update(note=f"failed: {e!r}"[:300])
        _append_jsonl(out, row)


PENDING = "pending.jsonl"  # files waiting for stage_tflite_time, in args.files


def time_interleaved(paths, threads, repeats, warmup):
    """``{path: {"value", "p25", "p75", "first_call_s"}}`` (ms) of ``Interpreter.invoke``
    (ai-edge-litert, XNNPACK) for several files, one call of each in turn per repeat, so
    that a slow spell of the machine falls on every file alike."""
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    rng = np.random.default_rng(0)
    interpreters, first = {}, {}
    for path in paths:
        it = Interpreter(model_path=path, num_threads=threads)
        it.allocate_tensors()
        for d in it.get_input_details():
            it.set_tensor(d["index"], rng.standard_normal(tuple(d["shape"])).astype(
                d["dtype"]))
        start = time.perf_counter()
        it.invoke()
        first[path] = time.perf_counter() - start
        interpreters[path] = it
    for _ in range(warmup):
        for it in interpreters.values():
            it.invoke()
    times = {path: [] for path in paths}
    for _ in range(repeats):
        for path, it in interpreters.items():
            start = time.perf_counter()
            it.invoke()
            times[path].append(1000.0 * (time.perf_counter() - start))
    out = {}
    for path, ms in times.items():
        ms = sorted(ms)
        out[path] = {"value": bench._percentile(ms, 50), "p25": bench._percentile(ms, 25),
                     "p75": bench._percentile(ms, 75), "first_call_s": first[path]}
    return out


def stage_tflite_time(args, out):
    """Latency of every TFLite file the run kept (ours and litert-torch's): per model and
    mode, the files are timed interleaved at each thread count, in a process that has
    loaded neither TensorFlow nor torch."""
    pending = os.path.join(args.files, PENDING)
    if not os.path.exists(pending):
        return
    groups = {}
    with open(pending) as f:
        for line in f:
            item = json.loads(line)
            groups.setdefault((item["common"]["model"], item["mode"]), []).append(item)
    repeats = max(args.repeats, TFLITE_REPEATS)
    for (model, mode), items in groups.items():
        impls = " and ".join(i["common"]["impl"] for i in items)
        for threads in args.tflite_threads:
            _log(f"{model}: TFLite {mode} latency at {threads}T ({impls} interleaved)")
            rows = [make_row(measurement="tflite_latency", mode=mode, threads=threads,
                             repeats=repeats, unit="ms", **i["common"],
                             note="XNNPACK (ai-edge-litert)"
                             + (f"; interleaved with {impls}" if len(items) > 1 else ""))
                    for i in items]
            try:
                stats = time_interleaved([i["path"] for i in items], threads, repeats,
                                         args.warmup)
                for row, item in zip(rows, items):
                    row.update(stats[item["path"]])
            except Exception as e:  # noqa: BLE001
                for row in rows:
                    row.update(note=f"failed: {e!r}"[:300])
            for row in rows:
                _append_jsonl(out, row)


def redraw_degenerate_params(model, seed=0):
    """Re-draw timm's all-zero (and norm) parameters of a random-weight torch model.

    timm zero-initialises some residual branches (e.g. the last BatchNorm's weight).
    litert-torch folds constant weights, so with such weights whole branches vanish
    from the converted file and its latency means nothing. Norm weights and running
    variances get U(0.5, 1.5), other all-zero tensors N(0, 0.02); returns how many
    tensors were changed.
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    changed = 0
    with torch.no_grad():
        for module in model.modules():
            norm = isinstance(module, (torch.nn.modules.batchnorm._BatchNorm,
                                       torch.nn.LayerNorm, torch.nn.GroupNorm))
            for key, t in list(module.named_parameters(recurse=False)) + list(
                    module.named_buffers(recurse=False)):
                if t is None or not t.is_floating_point():
                    continue
                if norm and key in ("weight", "running_var"):
                    t.copy_(torch.rand(t.shape, generator=gen) + 0.5)
                elif bool((t == 0).all()):
                    t.copy_(0.02 * torch.randn(t.shape, generator=gen))
                else:
                    continue
                changed += 1
    return changed


def stage_litert(args, out):
    """timm's model converted by litert-torch: fp32 file size and latency, then the same
    for that file quantised to int8 weights by ai-edge-quantizer (mode "dynamic")."""
    import timm  # torch world first (TensorFlow before torchvision crashes)
    import torch

    try:
        import litert_torch
    except Exception as e:  # noqa: BLE001
        reason = f"unavailable: litert-torch does not import ({e!r})"[:300]
        for name in args.models:
            _append_jsonl(out, failed_row(reason, model=name, measurement="tflite_latency",
                                          impl="litert-torch", mode="fp32", unit="ms"))
        return
    from visionzoo.registry import get_variant

    torch.set_num_threads(bench.default_threads())
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            v = get_variant(name)
            common = dict(model=name, timm_model=v.timm, impl="litert-torch",
                          size=v.input_size, batch=1)
            if not v.timm:
                continue
            row = make_row(measurement="tflite_size", mode="fp32", unit="bytes", **common)
            _log(f"{name}: litert-torch conversion of timm {v.timm} (load {row['load1']})")
            path = os.path.join(tmp, f"{name}_litert_torch.tflite")
            try:
                model = timm.create_model(v.timm, pretrained=False).eval()
                redrawn = redraw_degenerate_params(model)
                x = torch.randn(1, 3, v.input_size, v.input_size)
                start = time.perf_counter()
                litert_torch.convert(model, (x,)).export(path)
                row.update(value=os.path.getsize(path),
                           note=f"converted in {time.perf_counter() - start:.0f} s; "
                                f"{redrawn} zero/norm tensors re-drawn before conversion")
            except Exception as e:  # noqa: BLE001
                row.update(note=f"conversion failed: {e!r}"[:300])
            if _size_then_latency(out, row, path, args, common):
                _litert_dynamic(out, path, args, common)


def _size_then_latency(out, row, path, args, common):
    """Append the size ``row``; then the file's latency rows, or, if it has no size (the
    file was not made), one failed latency row with its reason. True if timed."""
    _append_jsonl(out, row)
    if row["value"] is None:
        _append_jsonl(out, failed_row(row["note"], measurement="tflite_latency",
                                      mode=row["mode"], unit="ms", **common))
        return False
    _latency_rows(out, path, args, common, row["mode"])
    return True


def _litert_dynamic(out, path, args, common):
    """litert-torch's file quantised by ai-edge-quantizer's ``dynamic_wi8_afp32`` recipe
    (int8 weights, float32 activations: LiteRT's own route to what our
    ``quantize="dynamic"`` writes): size and latency rows, mode "dynamic"."""
    row = make_row(measurement="tflite_size", mode="dynamic", unit="bytes", **common)
    dyn = path[:-len(".tflite")] + "_dynamic.tflite"
    try:
        from ai_edge_quantizer import quantizer, recipe

        qt = quantizer.Quantizer(path)
        qt.load_quantization_recipe(recipe.dynamic_wi8_afp32())
        qt.quantize().export_model(dyn, overwrite=True)
        row.update(value=os.path.getsize(dyn),
                   note="ai-edge-quantizer recipe dynamic_wi8_afp32 on the fp32 file")
    except Exception as e:  # noqa: BLE001
        row.update(note=f"quantisation failed: {e!r}"[:300])
    _size_then_latency(out, row, dyn, args, common)


STAGES = {"sgemm": stage_sgemm, "gemm": stage_gemm, "info": stage_info, "ours": stage_ours,
          "tflite": stage_tflite, "litert": stage_litert, "tflite_time": stage_tflite_time}
TFLITE_REPEATS = 15  # interleaved TFLite calls per file and thread count, at least


# --------------------------------------------------------------------------------------
# Parent
# --------------------------------------------------------------------------------------


def _log(message):
    print(f"[suite] {message}", file=sys.stderr, flush=True)


def run_stage(stage, args, env_extra=None, timeout=None, extra=()):
    """Run ``stage`` in a child process; its rows (also those written before a crash)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "rows.jsonl")
        cmd = [sys.executable, os.path.abspath(__file__), "_stage", stage, "--out", out,
               "--batches", *map(str, args.batches), "--repeats", str(args.repeats),
               "--warmup", str(args.warmup), "--sgemm-n", str(args.sgemm_n),
               "--tflite-threads", *map(str, args.tflite_threads), *extra,
               *(("--files", args.files) if getattr(args, "files", None) else ()),
               "--models", *args.models]
        env = dict(os.environ, **(env_extra or {}))
        try:
            proc = subprocess.run(cmd, env=env, cwd=ROOT, timeout=timeout)
            error = None if proc.returncode == 0 else f"exit code {proc.returncode}"
        except subprocess.TimeoutExpired:
            error = f"timed out after {timeout:.0f} s"
        rows = []
        if os.path.exists(out):
            with open(out) as f:
                rows = [json.loads(line) for line in f if line.strip()]
    if error:
        _log(f"stage {stage} {env_extra or ''}: {error}")
    return rows, error


def _timm_rows(args, info):
    """timm eager (and torch.compile) img/s of every model timm has, each batch;
    ``info``: model -> (timm name, input size)."""
    rows = []
    modes = [False] + ([True] if args.compile else [])
    for compile_ in modes:
        for name in args.models:
            timm_name, size = info.get(name, (None, None))
            if not timm_name:
                continue
            for batch in args.batches:
                mode = "torch.compile" if compile_ else "eager"
                row = make_row(model=name, timm_model=timm_name, measurement="throughput",
                               impl="timm", mode=mode, batch=batch, size=size,
                               repeats=args.repeats, unit="img/s")
                _log(f"{name}: timm {timm_name} {mode} batch {batch} (load {row['load1']})")
                r = bench.time_timm(timm_name, batch, size, args.repeats, args.warmup,
                                    compile=compile_,
                                    timeout=args.compile_timeout if compile_ else 1800)
                if "error" in r:
                    row["note"] = f"failed: {r['error']}"[:300]
                else:
                    row.update(value=r["ips"], p25=r["p25"], p75=r["p75"],
                               first_call_s=r["first_call_s"], threads=r["threads"])
                rows.append(row)
    return rows


def best_sgemm(rows):
    values = [float(r["value"]) for r in rows
              if r["measurement"] == "sgemm" and r["value"] is not None]
    return max(values) if values else None


def summarize(rows):
    """Plain-text ratios the issue's targets are about, from suite rows."""
    def val(r):
        return None if r["value"] is None else float(r["value"])

    lines = []
    sg = [r for r in rows if r["measurement"] == "sgemm" and r["value"] is not None]
    if sg:
        lines.append("sgemm GFLOP/s: " + ", ".join(
            f"{r['impl']} {float(r['value']):.1f} (load {r['load1']})" for r in sg))
    fc_peak = {}
    for r in rows:
        if r["measurement"] == "tflite_gemm" and val(r):
            t = int(r["threads"])
            fc_peak[t] = max(fc_peak.get(t, 0.0), val(r))
    if fc_peak:
        lines.append("XNNPACK best fully-connected GFLOP/s: " + ", ".join(
            f"{t}T {v:.1f}" for t, v in sorted(fc_peak.items())))
    lines.append("model / batch: best ours (backend) | timm eager | timm compile | "
                 "ratio vs best timm (target >= 1.25) | sgemm fraction")
    models = list(dict.fromkeys(r["model"] for r in rows if r["model"]))
    for name in models:
        mine = [r for r in rows if r["model"] == name and r["measurement"] == "throughput"]
        for batch in sorted({int(r["batch"]) for r in mine}):
            at = [r for r in mine if int(r["batch"]) == batch]
            ours = [r for r in at if r["impl"] in BACKENDS and val(r)]
            best = max(ours, key=val, default=None)
            timm = {r["mode"]: val(r) for r in at if r["impl"] == "timm"}
            ref = max((v for v in timm.values() if v), default=None)
            ratio = val(best) / ref if best and ref else None
            frac = best.get("sgemm_fraction") if best else None
            lines.append(
                f"  {name} b{batch}: "
                + (f"{val(best):.1f} ({best['impl']})" if best else "n/a")
                + f" | {_f(timm.get('eager'))} | {_f(timm.get('torch.compile'))} | "
                + (f"{ratio:.2f}x" + ("" if ratio >= 1.25 else " MISS") if ratio else "—")
                + f" | {_f(frac, 2)}")
        lat = {(r["impl"], r["threads"]): val(r) for r in rows
               if r["model"] == name and r["measurement"] == "tflite_latency"
               and r["mode"] == "fp32"}
        gmacs = next((val(r) for r in rows if r["model"] == name
                      and r["measurement"] == "gmacs" and val(r)), None)
        for threads in sorted({t for _, t in lat if t}, key=int):
            ours, theirs = lat.get(("visionzoo", threads)), lat.get(("litert-torch", threads))
            if ours:
                peak = fc_peak.get(int(threads))
                rate = (f"; ours {2e3 * gmacs / ours:.0f} GFLOP/s"
                        + (f" = {100 * 2e3 * gmacs / ours / peak:.0f} % of XNNPACK's best "
                           "FC rate" if peak else "") if gmacs else "")
                lines.append(f"  {name} TFLite {threads}T: ours {ours:.1f} ms, litert-torch "
                             f"{_f(theirs)} ms" + (f", ratio {ours / theirs:.2f} (target "
                                                   "<= 0.8)" if theirs else "") + rate)
    return "\n".join(lines)


def _f(value, digits=1):
    return "n/a" if value is None else f"{float(value):.{digits}f}"


def run_suite(args):
    """The parent: every stage in turn; all rows appended to ``args.csv`` at the end
    (also when a stage or the parent fails part-way, with what was measured)."""
    run_id = datetime.datetime.now().astimezone().strftime("%Y%m%dT%H%M%S")
    date = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    stamp = {"run_id": run_id, "date": date, **machine(), **versions(args.litert_path)}
    rows = []

    def keep(new):
        for r in new:
            r.update({k: v for k, v in stamp.items() if r.get(k) is None})
        rows.extend(new)

    try:
        # Registry facts first (in a child: the parent never imports Keras); unknown
        # names stop the run before minutes of timing.
        _log("registry facts")
        facts, error = run_stage("info", args, {"KERAS_BACKEND": args.backends[0]})
        bad = [r["model"] for r in facts if r["note"] and r["note"].startswith("failed")]
        if error or bad:
            raise SystemExit(f"suite: unknown or broken models {bad} "
                             f"({error or 'see log'})")
        keep(facts)
        info = {r["model"]: (r["timm_model"], r["size"]) for r in facts}
        keep(run_stage("sgemm", args, extra=("--note", "start of run"))[0])
        if args.gemm:
            _log("library matrix products on the models' shapes")
            keep(run_stage("gemm", args, {"KERAS_BACKEND": "jax"})[0])
        for backend in (args.backends if args.ours else ()):
            _log(f"our models on {backend}")
            keep(run_stage("ours", args, {"KERAS_BACKEND": backend},
                           timeout=args.stage_timeout)[0])
            if backend == "torch" and args.torch_compile:
                _log("our models on torch with jit_compile=True (torch.compile)")
                timm_models = [m for m in args.models if info.get(m, (None,))[0]]
                if timm_models:
                    keep(run_stage("ours", argparse.Namespace(**{**vars(args),
                                                                 "models": timm_models}),
                                   {"KERAS_BACKEND": backend}, timeout=args.stage_timeout,
                                   extra=("--jit-compile",))[0])
        if args.timm:
            keep(_timm_rows(args, info))
        with tempfile.TemporaryDirectory() as files:
            # TFLite files are made by the next two stages and timed by the third, side
            # by side per model.
            tfl_args = argparse.Namespace(**{**vars(args), "files": files})
            if args.tflite:
                _log("TFLite exports (TensorFlow backend)")
                keep(run_stage("tflite", tfl_args, {"KERAS_BACKEND": "tensorflow"},
                               timeout=args.stage_timeout)[0])
            if args.litert:
                _log("litert-torch conversions of the timm models")
                env = {"KERAS_BACKEND": "torch"}  # the registry must not load TensorFlow
                if args.litert_path:
                    env["PYTHONPATH"] = os.pathsep.join(
                        p for p in (args.litert_path, os.environ.get("PYTHONPATH")) if p)
                keep(run_stage("litert", tfl_args, env, timeout=args.stage_timeout)[0])
            if args.tflite or args.litert:
                _log("TFLite latency, each model's files interleaved")
                keep(run_stage("tflite_time", tfl_args, timeout=args.stage_timeout)[0])
        keep(run_stage("sgemm", args, extra=("--note", "end of run"))[0])
    finally:
        # Fractions against the best rate the machine showed in this run (start or end).
        add_sgemm_fraction(rows, best_sgemm(rows))
        if rows:
            write_csv(rows, args.csv)
    print(summarize(rows))
    print(f"\n{len(rows)} rows appended to {args.csv}; tables: "
          f"python benchmarks/make_table.py {os.path.relpath(args.csv, ROOT)}")
    return rows


def build_parser():
    p = argparse.ArgumentParser(prog="python benchmarks/suite.py",
                                description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="*", default=list(MODELS))
    p.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    p.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--sgemm-n", type=int, default=2048, help="matrix side for sgemm")
    p.add_argument("--tflite-threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--no-gemm", dest="gemm", action="store_false",
                   help="skip the XLA:CPU vs MKL matrix products on the models' shapes")
    p.add_argument("--no-ours", dest="ours", action="store_false",
                   help="skip our models on every backend")
    p.add_argument("--no-timm", dest="timm", action="store_false")
    p.add_argument("--no-compile", dest="compile", action="store_false",
                   help="skip timm under torch.compile (slow to compile)")
    p.add_argument("--compile-timeout", type=float, default=300,
                   help="seconds allowed for each torch.compile child")
    p.add_argument("--no-torch-compile", dest="torch_compile", action="store_false",
                   help="skip our torch backend with jit_compile=True (torch.export + "
                        "torch.compile; timm's models only, slow to compile)")
    p.add_argument("--no-tflite", dest="tflite", action="store_false")
    p.add_argument("--no-litert", dest="litert", action="store_false")
    p.add_argument("--litert-path", default=os.environ.get("LITERT_TORCH_PATH"),
                   help="extra PYTHONPATH folder holding litert-torch (default: "
                        "$LITERT_TORCH_PATH)")
    p.add_argument("--stage-timeout", type=float, default=3600)
    p.add_argument("--csv", default=None,
                   help="default: benchmarks/results/suite_<date>.csv (appended)")
    return p


def _stage_main(argv):
    p = argparse.ArgumentParser(prog="suite.py _stage")
    p.add_argument("stage", choices=sorted(STAGES))
    p.add_argument("--out", required=True)
    p.add_argument("--models", nargs="*", default=[])
    p.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--sgemm-n", type=int, default=2048)
    p.add_argument("--tflite-threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--note", default=None)
    p.add_argument("--jit-compile", action="store_true")
    p.add_argument("--files", default=None,
                   help="keep TFLite files here for the tflite_time stage")
    args = p.parse_args(argv)
    STAGES[args.stage](args, args.out)
    return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "_stage":
        return _stage_main(argv[1:])
    args = build_parser().parse_args(argv)
    if args.csv is None:
        args.csv = os.path.join(HERE, "results",
                                f"suite_{datetime.date.today().isoformat()}.csv")
    rows = run_suite(args)
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
