"""Inference throughput (images/s) of visionzoo models, optionally next to timm.

    visionzoo bench caformer_s18 poolformerv2_s12 --batch 8 --vs timm --csv bench.csv
    visionzoo bench dit_s_2 --vs diffusers      # DiT denoiser steps/s vs diffusers
    python -m visionzoo.bench caformer_s18 --vs timm --compile     # + torch.compile timm

How each side is timed (fp32, random weights, random input, CPU):

* **Ours, on the active Keras backend**, through ``model.predict_on_batch(x)`` with a
  NumPy batch -- what a user calls, conversions in and out included:

  - ``jax``: one cached ``jax.jit`` of the forward pass (:mod:`visionzoo.inference`),
    which on CPU autotunes XLA's YNN library fusion at the first call (so
    ``ours_first_call_s`` includes compiling three variants);
  - ``tensorflow``: Keras wraps the predict step in a ``tf.function`` (graph mode).
    Keras leaves XLA off on CPU (``jit_compile="auto"``) and so do we, unless
    ``jit_compile=True`` is passed;
  - ``torch``: the forward pass captured once by ``torch.export`` and run as that graph
    under ``torch.no_grad()`` (:mod:`visionzoo.inference`: Keras' eager step runs the
    first call, the second captures); with ``jit_compile=True`` the captured graph is
    also compiled by ``torch.compile`` (inductor) on the first call. We also wrap the
    timed loop in ``torch.inference_mode()`` (it skips version-counter and view
    tracking; no-op for the numbers' meaning).

  The first call (tracing / compilation) is timed separately as ``ours_first_call_s``
  (torch without ``jit_compile``: the first two calls, eager then capture), then
  ``warmup`` more calls are run untimed, then ``repeats`` timed calls.
* **timm** (``vs="timm"``) runs in a child process, ``python -m visionzoo.bench _timm``,
  so that torch/torchvision are never imported next to TensorFlow (which crashes with
  TF 2.21 + torchvision 0.29) and so the two sides never compete for cores: the child
  runs only after our timing has finished. It times the same architecture
  (``get_variant(name).timm``) on the same batch and input size, NCHW, in eager mode
  under ``torch.inference_mode()``; with ``compile=True`` a second child times
  ``torch.compile(model)`` (inductor), capped by ``compile_timeout`` seconds and
  recorded as "n/a" with the reason when it fails or times out.
* **diffusers** (``vs="diffusers"``, DiT only): the same way, ``python -m
  visionzoo.bench _diffusers`` times ``diffusers.DiTTransformer2DModel`` built with the
  variant's depth, width, heads, patch size, channels and classes (random weights) on
  the same batch: Gaussian latents NCHW, integer timesteps and class labels. The
  figures go to the ``timm_*`` fields (``timm_model`` names diffusers).

DiT and other multi-input models: ``size`` is the latent side (32 for ``dit_*``, the
256-px setting) and the input is one array per model input
(:func:`visionzoo.export.example_inputs`: Gaussian latents with the registered channel
count, integer timesteps in [0, 1000) as float32, int32 labels); "img/s" is then
denoiser evaluations (one sampling step of one image) per second.

Threads: every side uses all the CPUs this process may run on by default
(``os.sched_getaffinity``). TensorFlow and XLA (JAX) size their pools to the machine
on their own; torch (timm and the torch backend) is set with ``torch.set_num_threads``.
A non-default ``threads`` is applied to torch, to TensorFlow when its runtime has not
started yet, and not to JAX. The count actually in use is reported in ``threads``.

Each timed call gives ``batch / seconds`` images/s; a row reports the median and the
25th/75th percentiles of those ``repeats`` values. Nothing here asserts a speed.
Numbers from a shared machine are only as good as its load: every row records the
1-minute load average seen when its measurement started (it includes this benchmark's
own threads, so about one per CPU is expected). Under contention torch's thread pool
(timm and the torch backend) degrades far more than TensorFlow's or XLA's: a wide
p25-p75 spread is the sign.
"""

import argparse
import csv
import datetime
import importlib.metadata
import json
import os
import platform
import signal
import subprocess
import sys
import time

# Row fields, in CSV column order.
CSV_FIELDS = (
    "date", "model", "backend", "batch", "size", "repeats", "threads", "method",
    "ours_ips", "ours_p25", "ours_p75", "ours_first_call_s",
    "timm_model", "timm_eager_ips", "timm_eager_p25", "timm_eager_p75",
    "timm_compile_ips", "timm_compile_p25", "timm_compile_p75", "timm_compile_first_call_s",
    "timm_note", "ratio_eager", "ratio_compile",
    "cpu", "cores", "load1", "python", "keras", "backend_version", "torch", "timm",
)

_BACKEND_PACKAGES = {"tensorflow": ("tensorflow", "tensorflow-cpu"), "jax": ("jax",),
                     "torch": ("torch",), "numpy": ("numpy",)}


# --------------------------------------------------------------------------------------
# Machine, versions, statistics
# --------------------------------------------------------------------------------------


def default_threads():
    """CPUs this process may run on (the thread count every side uses by default)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def cpu_model():
    """CPU model name from ``/proc/cpuinfo`` (``platform.processor()`` elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(*packages):
    """Installed version of the first of ``packages`` found (metadata only: no import)."""
    for package in packages:
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "n/a"


def environment(backend):
    """Machine and library facts recorded with every row."""
    try:
        load1 = round(os.getloadavg()[0], 2)
    except OSError:
        load1 = None
    return {
        "cpu": cpu_model(), "cores": os.cpu_count(), "load1": load1,
        "python": platform.python_version(), "keras": _version("keras"),
        "backend_version": _version(*_BACKEND_PACKAGES.get(backend, (backend,))),
        "torch": _version("torch"), "timm": _version("timm"),
    }


def _percentile(sorted_values, q):
    """Linear-interpolated percentile ``q`` (0..100) of an ascending list."""
    if not sorted_values:
        raise ValueError("No values.")
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def throughput_stats(seconds, batch):
    """``{"ips", "p25", "p75"}`` images/s over per-call wall times ``seconds``."""
    rates = sorted(batch / max(t, 1e-12) for t in seconds)
    return {"ips": _percentile(rates, 50), "p25": _percentile(rates, 25),
            "p75": _percentile(rates, 75)}


def _time_calls(fn, repeats, warmup):
    """Time ``fn()``: (first-call seconds, [seconds of each of ``repeats`` calls])."""
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return first, times


# --------------------------------------------------------------------------------------
# Our side (active Keras backend, in this process)
# --------------------------------------------------------------------------------------


def time_keras(name, batch, size, repeats=10, warmup=2, threads=None, seed=0,
               jit_compile=None):
    """Time ``visionzoo.create_model(name)`` on the active backend (see module doc).
    ``jit_compile`` (None: Keras' default for the backend) sets ``model.jit_compile``.

    The input is :func:`visionzoo.export.example_inputs` of the model at ``size`` (its
    registered channel count): one NHWC batch for image models, one array per input for
    multi-input models such as DiT (latents, timesteps, labels).

    Returns ``{"backend", "method", "threads", "ips", "p25", "p75", "first_call_s"}``.
    """
    import keras

    from visionzoo.registry import create_model

    backend = keras.backend.backend()
    threads = threads or default_threads()
    # Thread pools first: TensorFlow's can only be sized before its runtime starts.
    if backend == "torch":
        import torch

        torch.set_num_threads(threads)
        used_threads = torch.get_num_threads()
        method = ("predict_on_batch (torch.export graph"
                  + (" + torch.compile inductor" if jit_compile else "")
                  + ", no_grad) in torch.inference_mode")
    elif backend == "tensorflow":
        import tensorflow as tf

        if threads != default_threads():
            try:
                tf.config.threading.set_intra_op_parallelism_threads(threads)
            except RuntimeError:  # runtime already started: keep its pool
                pass
        used_threads = tf.config.threading.get_intra_op_parallelism_threads() or (
            default_threads())
        method = ("predict_on_batch (tf.function, "
                  + ("XLA" if jit_compile else "no XLA") + ")")
    elif backend == "jax":
        used_threads = default_threads()  # XLA's CPU pool: one thread per CPU
        method = "predict_on_batch (jax.jit)"
    else:
        used_threads = default_threads()
        method = "predict_on_batch"

    from visionzoo.export import example_inputs
    from visionzoo.registry import get_variant

    channels = get_variant(name).input_channels
    model = create_model(name, input_shape=(size, size, channels))
    # Image models: seeded standard-normal images. Multi-input models get one array per
    # input (DiT: Gaussian latents, integer timesteps in [0, 1000) and class labels).
    x = example_inputs(model, batch, seed, input_size=(size, size))
    if jit_compile is not None:
        model.jit_compile = jit_compile
    if backend == "torch":
        with torch.inference_mode():
            eager = 0.0
            if not model.jit_compile:
                start = time.perf_counter()
                model.predict_on_batch(x)  # Keras' eager call; the next one captures
                eager = time.perf_counter() - start
            first, times = _time_calls(lambda: model.predict_on_batch(x), repeats, warmup)
            first += eager
    else:
        first, times = _time_calls(lambda: model.predict_on_batch(x), repeats, warmup)
    stats = throughput_stats(times, batch)
    return {"backend": backend, "method": method, "threads": used_threads,
            "first_call_s": first, **stats}


# --------------------------------------------------------------------------------------
# timm side (child process: torch world only)
# --------------------------------------------------------------------------------------


def _timm_worker(argv):
    """``python -m visionzoo.bench _timm MODEL --batch B --size S ...``: print JSON.

    Imports only torch and timm. The JSON (last stdout line) holds ``ips``, ``p25``,
    ``p75``, ``first_call_s``, ``threads`` and ``mode``; on failure ``error``.
    """
    p = argparse.ArgumentParser(prog="python -m visionzoo.bench _timm")
    p.add_argument("model")
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--size", type=int, required=True)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--compile", action="store_true", help="time torch.compile(model)")
    args = p.parse_args(argv)

    import timm
    import torch

    torch.set_num_threads(args.threads or default_threads())
    model = timm.create_model(args.model, pretrained=False).eval()
    x = torch.randn(args.batch, 3, args.size, args.size)
    mode = "eager"
    if args.compile:
        model = torch.compile(model)
        mode = "torch.compile"
    with torch.inference_mode():
        first, times = _time_calls(lambda: model(x), args.repeats, args.warmup)
    result = {"mode": mode, "threads": torch.get_num_threads(), "first_call_s": first,
              **throughput_stats(times, args.batch)}
    print(json.dumps(result))
    return 0


def _kill_group(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()


def time_timm(timm_name, batch, size, repeats=10, warmup=2, threads=None, compile=False,
              timeout=None):
    """Time timm model ``timm_name`` in a child process.

    Returns the child's result dict, or ``{"error": reason}`` when it failed or ran
    longer than ``timeout`` seconds (the child and anything it started are killed).
    """
    cmd = [sys.executable, "-m", "visionzoo.bench", "_timm", timm_name,
           "--batch", str(batch), "--size", str(size), "--repeats", str(repeats),
           "--warmup", str(warmup), "--threads", str(threads or default_threads())]
    if compile:
        cmd.append("--compile")
    return _run_child(cmd, timeout)


def _run_child(cmd, timeout):
    """Run a timing child; its last JSON stdout line, or ``{"error": reason}``."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        proc.communicate()
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (err or out).strip().splitlines()
        reason = tail[-1] if tail else f"exit code {proc.returncode}"
        return {"error": reason[:300]}
    return json.loads(lines[-1])


# --------------------------------------------------------------------------------------
# diffusers side, for DiT (child process: torch world only)
# --------------------------------------------------------------------------------------

DIFFUSERS_DIT = "diffusers.DiTTransformer2DModel"


def diffusers_dit_config(variant, size):
    """``DiTTransformer2DModel`` constructor arguments for a registered DiT variant at
    latent side ``size`` (same depth, width, heads, patch, channels and classes), or
    None for other families."""
    if not variant.family.endswith(".dit"):
        return None
    c = variant.config
    channels = c.get("in_channels", 4)
    return {"num_attention_heads": c["num_heads"],
            "attention_head_dim": c["hidden_size"] // c["num_heads"],
            "in_channels": channels,
            "out_channels": 2 * channels if c.get("learn_sigma", True) else channels,
            "num_layers": c["depth"], "sample_size": int(size),
            "patch_size": c["patch_size"],
            "num_embeds_ada_norm": c.get("num_classes", 1000)}


def _diffusers_worker(argv):
    """``python -m visionzoo.bench _diffusers CONFIG_JSON --batch B ...``: print JSON.

    Imports only torch and diffusers; times ``DiTTransformer2DModel(**config)`` (random
    weights) on Gaussian latents ``(B, C, S, S)``, integer timesteps in [0, 1000) and
    labels in [0, classes), eager or ``torch.compile``, under ``torch.inference_mode()``.
    """
    p = argparse.ArgumentParser(prog="python -m visionzoo.bench _diffusers")
    p.add_argument("config", help="JSON of DiTTransformer2DModel arguments")
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--compile", action="store_true")
    args = p.parse_args(argv)

    import torch
    from diffusers import DiTTransformer2DModel

    torch.set_num_threads(args.threads or default_threads())
    config = json.loads(args.config)
    model = DiTTransformer2DModel(**config).eval()
    gen = torch.Generator().manual_seed(0)
    side = config["sample_size"]
    x = torch.randn(args.batch, config["in_channels"], side, side, generator=gen)
    t = torch.randint(0, 1000, (args.batch,), generator=gen)
    y = torch.randint(0, config["num_embeds_ada_norm"], (args.batch,), generator=gen)
    mode = "eager"
    forward = model
    if args.compile:
        forward = torch.compile(model)
        mode = "torch.compile"
    with torch.inference_mode():
        first, times = _time_calls(
            lambda: forward(x, timestep=t, class_labels=y).sample, args.repeats, args.warmup)
    result = {"mode": mode, "threads": torch.get_num_threads(), "first_call_s": first,
              **throughput_stats(times, args.batch)}
    print(json.dumps(result))
    return 0


def time_diffusers_dit(config, batch, repeats=10, warmup=2, threads=None, compile=False,
                       timeout=None):
    """Time diffusers' ``DiTTransformer2DModel(**config)`` in a child process (see
    :func:`time_timm` for the result)."""
    cmd = [sys.executable, "-m", "visionzoo.bench", "_diffusers", json.dumps(config),
           "--batch", str(batch), "--repeats", str(repeats), "--warmup", str(warmup),
           "--threads", str(threads or default_threads())]
    if compile:
        cmd.append("--compile")
    return _run_child(cmd, timeout)


# --------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------


def benchmark(names, batch=8, size=None, repeats=10, vs=None, compile=False, threads=None,
              warmup=2, compile_timeout=900, verbose=False, jit_compile=None):
    """Measure inference images/s of each model in ``names`` on the active backend.

    Args:
        names: list of str (or one str). Registered model names.
        batch: int. Images per call.
        size: int or None. Input side; None = each model's default size.
        repeats: int. Timed calls; the row reports their median and p25/p75.
        vs: None, "timm" or "diffusers". Also time the reference implementation on the
            same batch and size, in a child process, after ours: timm's model (where
            the registry names one), or for DiT diffusers' ``DiTTransformer2DModel``
            with the variant's configuration (random weights; the ``timm_*`` fields
            then hold diffusers' figures and ``timm_model`` is
            ``"diffusers.DiTTransformer2DModel"``).
        compile: bool. With ``vs``, also time ``torch.compile`` of the reference model
            (costs a compilation per model; "n/a" when it fails).
        threads: int or None. Thread count (default: all usable CPUs).
        warmup: int. Untimed calls after the first one.
        compile_timeout: float. Seconds allowed for the ``torch.compile`` child.
        verbose: bool. Print progress to stderr.
        jit_compile: bool or None. Sets our model's ``jit_compile`` (None: Keras'
            default for the backend; on torch, True adds ``torch.compile``).

    Returns:
        A list with one flat dict per model, keys :data:`CSV_FIELDS`. Speeds are
        images/s; ``ratio_eager``/``ratio_compile`` are ours / timm (> 1: we are
        faster); timm fields are None when not measured (``timm_note`` says why).
    """
    from visionzoo.registry import get_variant

    if isinstance(names, str):
        names = [names]
    if vs not in (None, "timm", "diffusers"):
        raise ValueError(f"vs must be None, 'timm' or 'diffusers', got {vs!r}.")
    if batch < 1 or repeats < 1:
        raise ValueError("batch and repeats must be >= 1.")
    variants = [get_variant(n) for n in names]  # unknown names fail before any timing
    threads = threads or default_threads()
    date = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    import keras

    rows = []
    for v in variants:
        side = size or v.input_size
        row = dict.fromkeys(CSV_FIELDS)
        row.update(environment(keras.backend.backend()))
        row.update(date=date, model=v.name, batch=batch, size=side, repeats=repeats)
        if verbose:
            _log(f"{v.name}: ours on {keras.backend.backend()}, batch {batch}, {side}px "
                 f"(load {row['load1']})")
        ours = time_keras(v.name, batch, side, repeats, warmup, threads,
                          jit_compile=jit_compile)
        row.update(backend=ours["backend"], method=ours["method"], threads=ours["threads"],
                   ours_ips=ours["ips"], ours_p25=ours["p25"], ours_p75=ours["p75"],
                   ours_first_call_s=ours["first_call_s"])
        if vs == "timm":
            _add_timm(row, v, batch, side, repeats, warmup, threads, compile,
                      compile_timeout, verbose)
        elif vs == "diffusers":
            _add_diffusers(row, v, batch, side, repeats, warmup, threads, compile,
                           compile_timeout, verbose)
        rows.append(row)
    return rows


def _add_reference(row, label, timer, compile, timeout, verbose, notes):
    """Time a reference (``timer(compile=..., timeout=...)`` -> ips/p25/p75 or error)
    eager and, with ``compile``, under ``torch.compile``; fill ``row``'s reference
    columns (named ``timm_*`` for every reference) and its note."""
    if verbose:
        _log(f"{label} eager")
    eager = timer(compile=False, timeout=None)
    if "error" in eager:
        notes.append(f"eager failed: {eager['error']}")
    else:
        row.update(timm_eager_ips=eager["ips"], timm_eager_p25=eager["p25"],
                   timm_eager_p75=eager["p75"], ratio_eager=row["ours_ips"] / eager["ips"])
    if compile:
        if verbose:
            _log(f"{label} torch.compile (cap {timeout:.0f} s)")
        comp = timer(compile=True, timeout=timeout)
        if "error" in comp:
            notes.append(f"compile n/a: {comp['error']}")
        else:
            row.update(timm_compile_ips=comp["ips"], timm_compile_p25=comp["p25"],
                       timm_compile_p75=comp["p75"],
                       timm_compile_first_call_s=comp["first_call_s"],
                       ratio_compile=row["ours_ips"] / comp["ips"])
    else:
        notes.append("compile not run")
    row["timm_note"] = "; ".join(notes)


def _add_timm(row, variant, batch, size, repeats, warmup, threads, compile, timeout, verbose):
    if not variant.timm:
        row["timm_note"] = "timm has no counterpart"
        return
    row["timm_model"] = variant.timm

    def timer(compile, timeout):
        if compile:
            return time_timm(variant.timm, batch, size, repeats, warmup, threads,
                             compile=True, timeout=timeout)
        return time_timm(variant.timm, batch, size, repeats, warmup, threads)

    _add_reference(row, f"{variant.name}: timm {variant.timm}", timer, compile, timeout,
                   verbose, [])


def _add_diffusers(row, variant, batch, size, repeats, warmup, threads, compile, timeout,
                   verbose):
    config = diffusers_dit_config(variant, size)
    if config is None:
        row["timm_note"] = "diffusers has no counterpart"
        return
    row["timm_model"] = DIFFUSERS_DIT

    def timer(compile, timeout):
        if compile:
            return time_diffusers_dit(config, batch, repeats, warmup, threads, compile=True,
                                      timeout=timeout)
        return time_diffusers_dit(config, batch, repeats, warmup, threads)

    notes = [f"reference: diffusers {_version('diffusers')} DiTTransformer2DModel, same "
             "configuration, random weights"]
    _add_reference(row, f"{variant.name}: {DIFFUSERS_DIT}", timer, compile, timeout,
                   verbose, notes)


def _log(message):
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------


def _num(value, digits=1):
    return "n/a" if value is None else f"{value:.{digits}f}"


def format_table(rows):
    """A plain-text table of :func:`benchmark` rows plus the machine/version header."""
    if not rows:
        return "(no results)"
    r0 = rows[0]
    diffusers = any(r["timm_model"] == DIFFUSERS_DIT for r in rows)
    head = [f"machine: {r0['cpu']}, {r0['cores']} CPUs, {r0['threads']} threads, "
            f"load {r0['load1']} at start",
            f"versions: python {r0['python']}, keras {r0['keras']}, "
            + ("" if r0["backend"] == "torch" else f"{r0['backend']} {r0['backend_version']}, ")
            + f"torch {r0['torch']}, timm {r0['timm']}",
            f"date: {r0['date']}; ours timed with {r0['method']}",
            "img/s = median over timed calls [p25-p75]; ratio = ours / "
            + ("reference (timm, or diffusers for DiT)" if diffusers else "timm")]
    loads = [r["load1"] for r in rows if r["load1"] is not None]
    # The load includes this benchmark's own threads (up to one per CPU), hence + 0.5.
    if loads and r0["cores"] and max(loads) > r0["cores"] + 0.5:
        head.append(f"WARNING: load average up to {max(loads):.1f} on {r0['cores']} CPUs: "
                    "the machine was busy; torch (timm and the torch backend) slows "
                    "down sharply under contention")
    ref = "ref" if diffusers else "timm"
    cols = ("model", "backend", "batch", "size", "ours img/s", f"{ref} eager",
            f"{ref} compile", "ratio eager", "ratio compile")
    body = []
    for r in rows:
        ours = f"{_num(r['ours_ips'])} [{_num(r['ours_p25'])}-{_num(r['ours_p75'])}]"
        if r["timm_model"] is None:
            eager = comp = "n/a"
        else:
            eager = _num(r["timm_eager_ips"])
            comp = _num(r["timm_compile_ips"])
        body.append((r["model"], r["backend"], str(r["batch"]), str(r["size"]), ours,
                     eager, comp, _num(r["ratio_eager"], 2), _num(r["ratio_compile"], 2)))
    widths = [max(len(c), *(len(b[i]) for b in body)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(b, widths)) for b in body]
    notes = [f"  {r['model']}: {r['timm_note']}" for r in rows if r.get("timm_note")]
    return "\n".join(head + [""] + lines + (["", "notes:"] + notes if notes else []))


def append_csv(rows, path, fieldnames=None):
    """Append ``rows`` to the CSV at ``path``, writing the header if the file is new.
    Columns: ``fieldnames`` (default: ``CSV_FIELDS``, the ``visionzoo bench`` ones)."""
    new = not os.path.exists(path) or os.path.getsize(path) == 0
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fieldnames or CSV_FIELDS,
                                extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerows(rows)


def bench_cli(args):
    """Run :func:`benchmark` for the ``visionzoo bench`` command; print the table.

    Reads ``args.names``, ``batch``, ``size``, ``repeats``, ``vs``, ``csv`` and, when
    present, ``compile``, ``threads``, ``compile_timeout``, ``jit_compile`` and ``json``.
    A model that fails is reported and skipped; the exit code is then 1.
    """
    from visionzoo.registry import get_variant

    for name in args.names:  # fail fast on typos, before minutes of timing
        get_variant(name)
    rows, failed = [], 0
    for name in args.names:
        try:
            rows += benchmark([name], batch=args.batch, size=args.size,
                              repeats=args.repeats, vs=args.vs,
                              compile=getattr(args, "compile", False),
                              threads=getattr(args, "threads", None),
                              compile_timeout=getattr(args, "compile_timeout", 900),
                              verbose=True,
                              jit_compile=getattr(args, "jit_compile", None))
        except (ValueError, RuntimeError) as e:
            failed += 1
            print(f"visionzoo bench: {name}: {e}", file=sys.stderr)
    print(format_table(rows))
    if args.csv and rows:
        append_csv(rows, args.csv)
        print(f"appended {len(rows)} row(s) to {args.csv}")
    if getattr(args, "json", None):
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 1 if failed else 0


def build_parser():
    """Parser of ``python -m visionzoo.bench`` (``visionzoo bench`` plus extras)."""
    p = argparse.ArgumentParser(prog="python -m visionzoo.bench",
                                description=__doc__.splitlines()[0])
    p.add_argument("names", nargs="+")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=None, help="input side (default: model's)")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--vs", default=None, choices=["timm", "diffusers"],
                   help="also time the reference: timm, or diffusers for DiT")
    p.add_argument("--csv", default=None, help="append results to this CSV")
    p.add_argument("--compile", action="store_true",
                   help="with --vs, also time torch.compile of it (slow to compile)")
    p.add_argument("--compile-timeout", type=float, default=900,
                   help="seconds allowed for each torch.compile run")
    p.add_argument("--threads", type=int, default=None, help="default: all usable CPUs")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    return p


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "_timm":
        return _timm_worker(argv[1:])
    if argv and argv[0] == "_diffusers":
        return _diffusers_worker(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return bench_cli(args)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"visionzoo bench: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
