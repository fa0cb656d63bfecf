"""Generate the model table (docs/models.md) and the top-1 vs. latency plot
(docs/top1_vs_latency.png) from benchmark-suite CSVs -- never hand-edited numbers.

    python benchmarks/make_table.py                  # newest benchmarks/results/suite_*.csv
    python benchmarks/make_table.py benchmarks/results/suite_2026-11-23.csv [more.csv ...]
    python benchmarks/make_table.py RUN.csv --md /tmp/models.md --png /tmp/plot.png

Reads only the CSV(s) written by ``benchmarks/suite.py`` (see its docstring for the
columns): the registry facts (params, GMACs, published top-1) are rows of the CSV too,
so this script imports neither Keras nor any backend. With several CSVs or runs, each
cell shows the latest run's measurement that has a value (else the latest failure).
Numbers are printed as measured (rounded for display only); a measurement that is
missing or failed is shown as "—" and failures are listed with their reason.
"""

import argparse
import glob
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from suite import BACKENDS, TORCH_COMPILE, read_csv  # noqa: E402  (stdlib only)

# Our throughput columns: each Keras backend, then torch with jit_compile=True.
OURS = BACKENDS + (TORCH_COMPILE,)

DASH = "—"
REGENERATE = ("LITERT_TORCH_PATH=<litert-torch dir> python benchmarks/suite.py && "
              "python benchmarks/make_table.py benchmarks/results/suite_<date>.csv")
TIMM_TARGET = 1.25   # best backend img/s / timm img/s, issue 11
TFLITE_TARGET = 0.8  # our TFLite ms / litert-torch ms, issue 11
SGEMM_TARGET = 0.5   # achieved GFLOP/s / machine sgemm, matmul-bound models


def _num(value):
    return None if value in (None, "") else float(value)


def _fmt(value, digits=1, suffix=""):
    value = _num(value)
    return DASH if value is None else f"{value:.{digits}f}{suffix}"


def latest(rows):
    """``{(model, measurement, impl, mode, batch, threads): row}``: per key, the row of
    the latest run that has a value, else the latest row (a failure, for its note)."""
    best = {}
    for r in sorted(rows, key=lambda r: r.get("run_id") or ""):  # stable: file order
        key = (r["model"], r["measurement"], r["impl"], r["mode"], r["batch"], r["threads"])
        old = best.get(key)
        if old is None or r["value"] is not None or old["value"] is None:
            best[key] = r
    return best


class Results:
    """Lookup over the latest suite rows."""

    def __init__(self, rows):
        self.rows = rows
        self.cells = latest(rows)
        # Our backends have one mode each; a newer run's mode supersedes an older one's
        # (torch: "torch.export" over "eager"). timm's and TFLite's modes are distinct
        # measurements and all stay.
        newest = {}
        for key, r in self.cells.items():
            if key[1] == "throughput" and key[2] in OURS:
                group = (key[0], key[2], key[4], key[5])
                rank = (r["value"] is not None, r.get("run_id") or "")
                if group not in newest or rank > newest[group][0]:
                    newest[group] = (rank, key)
        keep = {key for _, key in newest.values()}
        self.cells = {key: r for key, r in self.cells.items()
                      if not (key[1] == "throughput" and key[2] in OURS) or key in keep}
        self.models = list(dict.fromkeys(r["model"] for r in rows if r["model"]))
        self.batches = sorted({int(r["batch"]) for r in rows
                               if r["measurement"] == "throughput" and r["batch"]})
        self.threads = sorted({int(r["threads"]) for r in rows
                               if r["measurement"] == "tflite_latency" and r["threads"]})

    def row(self, model, measurement, impl, mode=None, batch=None, threads=None):
        """The matching row of the latest run (e.g. torch's ``torch.export`` rows over
        older ``eager`` ones when ``mode`` is not given); rows with a value first."""
        found = None
        for key, r in self.cells.items():
            if key[:3] != (model, measurement, impl):
                continue
            if mode is not None and key[3] != mode:
                continue
            if batch is not None and (key[4] is None or int(key[4]) != batch):
                continue
            if threads is not None and (key[5] is None or int(key[5]) != threads):
                continue
            rank = (r["value"] is not None, r.get("run_id") or "")
            if found is None or rank > found[0]:
                found = (rank, r)
        return None if found is None else found[1]

    def value(self, *args, **kwargs):
        r = self.row(*args, **kwargs)
        return None if r is None else _num(r["value"])

    def fact(self, model, measurement):
        return self.value(model, measurement, "registry")

    def timm_name(self, model):
        for r in self.rows:
            if r["model"] == model and r.get("timm_model"):
                return r["timm_model"]
        return None

    def ours(self, model, batch):
        """``{backend: img/s}`` of our throughput rows with a value."""
        out = {}
        for b in OURS:
            v = self.value(model, "throughput", b, batch=batch)
            if v is not None:
                out[b] = v
        return out

    def best_ours(self, model, batch):
        ours = self.ours(model, batch)
        if not ours:
            return None, None
        backend = max(ours, key=ours.get)
        return backend, ours[backend]

    def timm(self, model, batch, mode):
        return self.value(model, "throughput", "timm", mode=mode, batch=batch)

    def best_timm(self, model, batch):
        values = [v for v in (self.timm(model, batch, "eager"),
                              self.timm(model, batch, "torch.compile")) if v]
        return max(values) if values else None

    def timm_ratio(self, model, batch):
        _, best = self.best_ours(model, batch)
        ref = self.best_timm(model, batch)
        return best / ref if best and ref else None

    def tflite_ratio(self, model, threads):
        ours = self.value(model, "tflite_latency", "visionzoo", "fp32", threads=threads)
        theirs = self.value(model, "tflite_latency", "litert-torch", "fp32",
                            threads=threads)
        return ours / theirs if ours and theirs else None

    def fc_peak(self, threads, like=None):
        """The best ``tflite_gemm`` GFLOP/s (XNNPACK, one FULLY_CONNECTED op) at
        ``threads``: from the run of row ``like`` when it measured one, else from any run
        on ``like``'s machine (any run without ``like``); None if never measured."""
        rows = [r for r in self.rows if r["measurement"] == "tflite_gemm"
                and r["value"] is not None and r["threads"] not in (None, "")
                and int(r["threads"]) == threads]
        if like is not None:
            same_run = [r for r in rows if r.get("run_id") == like.get("run_id")]
            rows = same_run or [r for r in rows if r.get("cpu") == like.get("cpu")]
        values = [_num(r["value"]) for r in rows]
        return max(values) if values else None

    def tflite_rate(self, model, threads, impl="visionzoo"):
        """``(GFLOP/s, share of fc_peak)`` of ``model``'s fp32 TFLite file at ``threads``
        (2 x GMACs per call; the share is None without a fully-connected rate)."""
        r = self.row(model, "tflite_latency", impl, "fp32", threads=threads)
        gmacs = self.fact(model, "gmacs")
        ms = _num(r["value"]) if r else None
        if not ms or not gmacs:
            return None, None
        rate = 2e3 * gmacs / ms
        peak = self.fc_peak(threads, r)
        return rate, (rate / peak if peak else None)

    def best_sgemm(self, run_id):
        """The best sgemm GFLOP/s measured in run ``run_id`` (start or end), or None."""
        values = [_num(r["value"]) for r in self.rows if r["measurement"] == "sgemm"
                  and r["value"] is not None and r.get("run_id") == run_id]
        return max(values) if values else None

    def sgemm(self):
        """``[(impl, GFLOP/s, note, load, cpu)]`` of every sgemm row with a value."""
        return [(r["impl"], _num(r["value"]), r["note"], r["load1"], r.get("cpu"))
                for r in self.rows if r["measurement"] == "sgemm" and r["value"] is not None]

    def machines(self):
        """``{(cpu, cores): sorted measurements shown in the tables from that machine}``
        (over the latest rows with a value; registry facts left out)."""
        out = {}
        for r in self.cells.values():
            if r["value"] is None or r["impl"] == "registry":
                continue
            out.setdefault((r.get("cpu") or "n/a", r.get("cores") or "n/a"),
                           set()).add(r["measurement"])
        return {k: sorted(v) for k, v in out.items()}

    def needed(self, model, batch):
        """What the timm target asks of ``model`` at ``batch``: ``(img/s, fraction of the
        run's sgemm rate that img/s implies, the fraction timm's best mode reached)``;
        fractions are None when GMACs or sgemm are missing."""
        ref = self.best_timm(model, batch)
        if not ref:
            return None, None, None
        ips = TIMM_TARGET * ref
        gmacs = self.fact(model, "gmacs")
        timm_rows = [r for r in (self.row(model, "throughput", "timm", mode=mode,
                                          batch=batch)
                                 for mode in ("eager", "torch.compile"))
                     if r is not None and _num(r["value"]) == ref]
        sgemm = self.best_sgemm(timm_rows[0].get("run_id")) if timm_rows else None
        if not gmacs or not sgemm:
            return ips, None, None
        return ips, 2 * gmacs * ips / sgemm, 2 * gmacs * ref / sgemm


def _mib(value):
    value = _num(value)
    return DASH if value is None else f"{value / 2**20:.1f}"


def _table(header, body, align):
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join(":--" if a == "l" else "--:" for a in align) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return lines


def _machines(res, r0):
    """The machine line: one machine, or each machine with what the tables take from it
    (runs on different machines are never compared within a ratio by the suite: each
    ratio's two sides come from one run or from runs on one machine)."""
    machines = res.machines()
    if len(machines) <= 1:
        return f"**Machine:** {r0.get('cpu') or 'n/a'}, {r0.get('cores') or 'n/a'} CPUs; "
    return ("**Machines:** " + "; ".join(
        f"{cpu}, {cores} CPUs ({', '.join(what)})" for (cpu, cores), what in
        machines.items()) + ". Compare figures only within one machine; ")


def _header(res, sources):
    r0 = res.rows[0]
    loads = [float(r["load1"]) for r in res.rows if r.get("load1")]
    runs = sorted({r["date"] for r in res.rows if r.get("date")})
    versions = ", ".join(f"{label} {r0.get(key) or 'n/a'}" for label, key in (
        ("python", "python"), ("numpy", "numpy"), ("keras", "keras"), ("jax", "jax"),
        ("tensorflow", "tensorflow"), ("torch", "torch"), ("timm", "timm"),
        ("ai-edge-litert", "ai_edge_litert"), ("litert-torch", "litert_torch")))
    sg = res.sgemm()
    lines = [
        "# Model table",
        "",
        "<!-- Generated by benchmarks/make_table.py from "
        + ", ".join(os.path.relpath(s, ROOT) for s in sources)
        + ". Do not edit by hand: regenerate. -->",
        "",
        f"**Generated** from `{', '.join(os.path.relpath(s, ROOT) for s in sources)}` "
        f"(benchmark run{'s' if len(runs) > 1 else ''} {', '.join(runs) or 'n/a'}). "
        f"Regenerate with `{REGENERATE}` (or only the last step, from the committed CSV).",
        "",
        _machines(res, r0)
        + (f"1-minute load average during the run {min(loads):.2f}–{max(loads):.2f} "
           "(the benchmark's own threads included)" if loads else "load not recorded")
        + ". **Versions:** " + versions + ".",
        "",
        "**Machine sgemm** (fp32 N×N matmul, measured in the same run): "
        + ("; ".join(f"{impl} {v:.1f} GFLOP/s ({note or ''}, load {load}"
                     + (f", {cpu}" if len(res.machines()) > 1 else "") + ")"
                     for impl, v, note, load, cpu in sg) if sg else DASH) + ".",
        "",
        "All numbers: fp32, random weights, CPU, each model at its default input size; "
        "median of the timed calls after warm-up. Ours = `predict_on_batch` (JAX: XLA "
        "jit; TensorFlow: tf.function; torch: the forward pass captured by `torch.export` "
        "(runs before 2026-11-24l: eager); torch-compile: torch with `jit_compile=True`, "
        "the captured graph under `torch.compile`). timm in its own process, eager and "
        "`torch.compile` (inductor). GFLOPs = 2 × GMACs. "
        + (f"**The machine was shared (load up to {max(loads):.1f} on "
           f"{r0.get('cores')} CPUs): numbers are noisy.** "
           if loads and r0.get("cores") and max(loads) > float(r0["cores"]) + 0.5 else "")
        + f"{DASH} = not measured or failed (reasons at the end).",
    ]
    return lines


def _models_table(res):
    body = []
    for m in res.models:
        params, gmacs = res.fact(m, "params"), res.fact(m, "gmacs")
        body.append([m, res.timm_name(m) or DASH,
                     DASH if params is None else f"{params / 1e6:.1f}",
                     _fmt(gmacs, 2), DASH if gmacs is None else f"{2 * gmacs:.2f}",
                     _fmt(res.fact(m, "top1_published"))])
    return _table(["model", "timm name", "params (M)", "GMACs", "GFLOPs",
                   "top-1 % (published)"], body, "llrrrr")


def _throughput_table(res, batch):
    body = []
    for m in res.models:
        ours = res.ours(m, batch)
        backend, best = res.best_ours(m, batch)
        eager = res.timm(m, batch, "eager")
        ratio_eager = best / eager if best and eager else None
        ratio = res.timm_ratio(m, batch)
        best_row = res.row(m, "throughput", backend, batch=batch) if backend else None
        gflops = _num(best_row["gflops_achieved"]) if best_row else None
        sgemm = res.best_sgemm(best_row.get("run_id")) if best_row else None
        frac = gflops / sgemm if gflops and sgemm else None
        body.append([m] + [_fmt(ours.get(b)) for b in OURS]
                    + [_fmt(eager), _fmt(res.timm(m, batch, "torch.compile")),
                       _fmt(ratio_eager, 2, "×"),
                       _fmt(ratio, 2, "×") + ("" if ratio is None or ratio >= TIMM_TARGET
                                              else " ✗"),
                       _fmt(gflops), DASH if frac is None else f"{100 * frac:.0f} %"])
    header = (["model"] + [f"{b}" for b in OURS]
              + ["timm eager", "timm compile", "best / timm eager",
                 f"best / best timm (target ≥ {TIMM_TARGET}×)", "best GFLOP/s",
                 "% of sgemm"])
    return _table(header, body, "l" + "r" * (len(header) - 1))


def _tflite_table(res):
    body = []
    for m in res.models:
        cells = [m]
        for impl in ("visionzoo", "litert-torch"):
            cells += [_fmt(res.value(m, "tflite_latency", impl, "fp32", threads=t))
                      for t in res.threads]
        for t in res.threads:
            ratio = res.tflite_ratio(m, t)
            cells.append(_fmt(ratio, 2, "×") + ("" if ratio is None or ratio <= TFLITE_TARGET
                                                else " ✗"))
        for t in res.threads:
            rate, share = res.tflite_rate(m, t)
            cells.append(_fmt(rate, 0) + ("" if share is None else f" ({100 * share:.0f} %)"))
        cells += [_fmt(res.value(m, "tflite_latency", "visionzoo", "int8", threads=t))
                  for t in res.threads]
        cells += [_mib(res.value(m, "tflite_size", "visionzoo", mode=q))
                  for q in ("fp32", "fp16", "int8")]
        cells.append(_mib(res.value(m, "tflite_size", "litert-torch", mode="fp32")))
        body.append(cells)
    header = (["model"] + [f"ours {t}T ms" for t in res.threads]
              + [f"litert-torch {t}T ms" for t in res.threads]
              + [f"ours / litert-torch {t}T" for t in res.threads]
              + [f"ours {t}T GFLOP/s (% of FC peak)" for t in res.threads]
              + [f"ours int8 {t}T ms" for t in res.threads]
              + ["ours fp32 MiB", "ours fp16 MiB", "ours int8 MiB", "litert-torch MiB"])
    return _table(header, body, "l" + "r" * (len(header) - 1))


def _dynamic_table(res):
    """Dynamic-range files (int8 weights, float32 activations): ours against litert-torch's
    file quantised by ai-edge-quantizer, and against our own fp32 file. None without
    dynamic rows."""
    if not any(r["measurement"] == "tflite_latency" and r["mode"] == "dynamic"
               for r in res.rows):
        return None
    body = []
    for m in res.models:
        ours = {t: res.value(m, "tflite_latency", "visionzoo", "dynamic", threads=t)
                for t in res.threads}
        theirs = {t: res.value(m, "tflite_latency", "litert-torch", "dynamic", threads=t)
                  for t in res.threads}
        fp32 = {t: res.value(m, "tflite_latency", "visionzoo", "fp32", threads=t)
                for t in res.threads}
        cells = [m] + [_fmt(ours[t]) for t in res.threads]
        cells += [_fmt(theirs[t]) for t in res.threads]
        for t in res.threads:
            ratio = ours[t] / theirs[t] if ours[t] and theirs[t] else None
            cells.append(_fmt(ratio, 2, "×") + (
                "" if ratio is None or ratio <= TFLITE_TARGET else " ✗"))
        cells += [_fmt(fp32[t] / ours[t] if ours[t] and fp32[t] else None, 2, "×")
                  for t in res.threads]
        cells += [_mib(res.value(m, "tflite_size", impl, mode="dynamic"))
                  for impl in ("visionzoo", "litert-torch")]
        body.append(cells)
    header = (["model"] + [f"ours {t}T ms" for t in res.threads]
              + [f"litert-torch {t}T ms" for t in res.threads]
              + [f"ours / litert-torch {t}T" for t in res.threads]
              + [f"speed-up over our fp32 {t}T" for t in res.threads]
              + ["ours MiB", "litert-torch MiB"])
    return _table(header, body, "l" + "r" * (len(header) - 1))


def _gemm_table(res):
    """XLA:CPU (our JAX path) vs MKL (timm's) on the models' matrix-product shapes."""
    cells = {}
    for r in res.cells.values():
        if r["measurement"] == "gemm" and r["value"] is not None:
            cells[(int(r["batch"]), r["mode"], r["impl"])] = r
    def role(r):
        return (r["note"] or "").split(";")[0]

    keys = sorted({(b, mode) for b, mode, _ in cells},
                  key=lambda bm: (bm[0], min(role(r) for (b, m, _), r in cells.items()
                                             if (b, m) == bm)))
    body, ratios = [], {}
    for b, mode in keys:
        xla, mkl = cells.get((b, mode, "jax")), cells.get((b, mode, "torch"))
        ratio = (_num(xla["value"]) / _num(mkl["value"])) if xla and mkl else None
        if ratio is not None:
            ratios.setdefault(b, []).append(ratio)
        body.append([role(xla or mkl), str(b), mode.replace("x", "×"), _fmt(xla and xla["value"], 0),
                     _fmt(mkl and mkl["value"], 0), _fmt(ratio, 2)])
    if not body:
        return []
    lines = _table(["product", "batch", "M×K×N", "XLA:CPU (JAX)", "MKL (torch)",
                    "XLA ÷ MKL"], body, ["l", "r", "l", "r", "r", "r"])
    medians = []
    for b, values in sorted(ratios.items()):
        values = sorted(values)
        mid = len(values) // 2
        med = values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2
        medians.append(f"batch {b} {med:.2f}")
    lines += ["", "GFLOP/s of `x @ w + b` in fp32: XLA:CPU under the best of the YNN fusion "
              "settings our JAX path autotunes among, MKL through "
              "`torch.nn.functional.linear` (the library behind torch's fp32 matrix products on "
              "this CPU, so behind timm's). Median "
              "XLA ÷ MKL: " + ", ".join(medians) + ". For a model whose time is mostly "
              "these products, this ratio bounds our JAX path against timm's before anything "
              "else is counted."]
    return lines


def _fc_table(res):
    """XNNPACK's fully-connected rate per product shape and thread count."""
    cells = {}
    for r in res.cells.values():
        if r["measurement"] == "tflite_gemm" and r["value"] is not None:
            cells[(r["mode"], int(r["threads"]))] = r
    if not cells:
        return []
    threads = sorted({t for _, t in cells})
    modes = list(dict.fromkeys(mode for mode, _ in cells))
    body = []
    for mode in modes:
        any_row = next(cells[(mode, t)] for t in threads if (mode, t) in cells)
        body.append([(any_row["note"] or "").split(";")[0], mode.replace("x", "×")]
                    + [_fmt(cells[(mode, t)]["value"] if (mode, t) in cells else None, 0)
                       for t in threads])
    lines = _table(["product", "M×K×N"] + [f"XNNPACK {t}T GFLOP/s" for t in threads],
                   body, "ll" + "r" * len(threads))
    lines += ["", "One fp32 `FULLY_CONNECTED` op (`x @ w + b`, constant weights) timed in "
              "ai-edge-litert with XNNPACK, batch 1, in the same run as the model files: the "
              "rate a TFLite file's products get, whoever wrote the file. The table's "
              "\"% of FC peak\" is a file's GFLOP/s (2 × GMACs per call) over the best of "
              "these rates at that thread count, measured in the same run as the file's "
              "latency (this table shows the latest run's); a file near 100 % runs its "
              "model's FLOPs about as fast as this runtime multiplies matrices."]
    return lines


def _targets(res):
    lines = []
    misses = []
    for m in res.models:
        for b in res.batches:
            ratio = res.timm_ratio(m, b)
            if ratio is not None and ratio < TIMM_TARGET:
                ips, frac, timm_frac = res.needed(m, b)
                need = (f"; {TIMM_TARGET}× would be {ips:.1f} img/s = {100 * frac:.0f} % "
                        f"of sgemm (timm's best mode runs at {100 * timm_frac:.0f} %)"
                        if frac is not None else "")
                misses.append(f"  - {m}, batch {b}: {ratio:.2f}×{need}")
    lines.append(f"- Below {TIMM_TARGET}× the best timm img/s on our best backend:"
                 + ("" if misses else " none."))
    lines += misses
    if misses:
        lines.append("  (\"% of sgemm\" = 2 × GMACs × img/s over the run's best fp32 "
                     "matmul rate. A model also spends time outside matmuls, so a share "
                     "near 100 % is out of reach in fp32 on this machine.)")
    fractions = []
    for m in res.models:
        b = max(res.batches) if res.batches else None
        backend, _ = res.best_ours(m, b) if b else (None, None)
        r = res.row(m, "throughput", backend, batch=b) if backend else None
        gflops = _num(r["gflops_achieved"]) if r else None
        sgemm = res.best_sgemm(r.get("run_id")) if r else None
        if gflops and sgemm:
            frac = gflops / sgemm
            fractions.append(f"{m} {100 * frac:.0f} %"
                             + ("" if frac >= SGEMM_TARGET else " ✗"))
    if fractions:
        lines.append(f"- Share of sgemm on our best backend at batch {max(res.batches)} "
                     f"(target ≥ {100 * SGEMM_TARGET:.0f} % for matmul-bound models): "
                     + ", ".join(fractions) + ".")
    slow = []
    for m in res.models:
        for t in res.threads:
            ratio = res.tflite_ratio(m, t)
            if ratio is None or ratio <= TFLITE_TARGET:
                continue
            theirs = res.value(m, "tflite_latency", "litert-torch", "fp32", threads=t)
            gmacs = res.fact(m, "gmacs")
            peak = res.fc_peak(t, res.row(m, "tflite_latency", "visionzoo", "fp32",
                                          threads=t))
            need = ""
            if gmacs and theirs:
                ms = TFLITE_TARGET * theirs
                rate = 2e3 * gmacs / ms
                need = f"; {TFLITE_TARGET}× would be {ms:.1f} ms = {rate:.0f} GFLOP/s"
                if peak:
                    _, share = res.tflite_rate(m, t)
                    need += (f" = {100 * rate / peak:.0f} % of XNNPACK's best "
                             f"fully-connected rate at {t}T ({peak:.0f}); ours runs at "
                             f"{100 * share:.0f} %")
            slow.append(f"  - {m}, {t}T: {ratio:.2f}×{need}")
    lines.append(f"- TFLite latency above {TFLITE_TARGET}× litert-torch's:"
                 + ("" if slow else " none."))
    lines += slow
    return lines


def _failures(res):
    lines = []
    for r in res.cells.values():
        if r["value"] is None and r["measurement"] not in ("sgemm", "gemm", "tflite_gemm"):
            what = " ".join(str(x) for x in (r["measurement"], r["impl"], r["mode"],
                                             f"b{r['batch']}" if r["batch"] else None,
                                             f"{r['threads']}T" if r["threads"] else None)
                            if x)
            lines.append(f"- {r['model'] or 'machine'} — {what}: {r['note'] or 'no value'}")
    return lines


def markdown(rows, sources):
    """The text of docs/models.md for suite ``rows`` read from ``sources``."""
    res = Results(rows)
    lines = _header(res, sources)
    lines += ["", "## Models", ""] + _models_table(res)
    for batch in res.batches:
        lines += ["", f"## Throughput, batch {batch} (images/s)", ""]
        lines += _throughput_table(res, batch)
    lines += ["", "\"% of sgemm\" = best backend's achieved GFLOP/s (2 × GMACs × img/s) "
              "over the best sgemm rate the machine showed in the same run (start or end) "
              f"(target ≥ {100 * SGEMM_TARGET:.0f} % for matmul-bound models)."]
    gemm = _gemm_table(res)
    if gemm:
        lines += ["", "## Matrix products: XLA:CPU vs MKL on the models' shapes", ""] + gemm
    if res.threads:
        lines += ["", "## TFLite (batch 1, XNNPACK in ai-edge-litert; fp32 unless marked "
                  "int8)", ""]
        lines += _tflite_table(res)
        fixed = [r for r in res.rows if r["measurement"] == "tflite_size"
                 and r["impl"] == "visionzoo" and "batch 1" in (r.get("note") or "")]
        batch = ("fixed batch 1, `batch_size=1`" if fixed
                 else "dynamic batch, resized to 1 at run time")
        lines += ["", f"Ours: `visionzoo.export.to_tflite` ({batch}; builtin ops; int8 "
                  "calibrated on a few random images: its size and speed are what a calibrated "
                  "file has, its accuracy is not measured here). litert-torch: "
                  "timm's model (fixed batch 1) "
                  "converted by `litert_torch.convert` (zero-initialised tensors re-drawn "
                  "first, so no branch is folded away)."
                  + (" Each model's files (ours and litert-torch's, per mode) were timed "
                     "interleaved in one process, one call of each in turn, so a slow "
                     "spell of the machine falls on both sides alike."
                     if any("interleaved" in (r.get("note") or "") for r in res.rows
                            if r["measurement"] == "tflite_latency") else "")]
        fc = _fc_table(res)
        if fc:
            lines += ["", "## XNNPACK fully-connected rate on the models' shapes", ""] + fc
        dynamic = _dynamic_table(res)
        if dynamic:
            lines += ["", "## TFLite dynamic-range int8 (int8 weights, float32 activations; "
                      "batch 1, XNNPACK)", ""] + dynamic
            lines += ["", "Ours: `to_tflite(..., quantize=\"dynamic\")` (no calibration "
                      "data). litert-torch: its fp32 file above quantised by ai-edge-"
                      "quantizer's `dynamic_wi8_afp32` recipe. Both run XNNPACK's "
                      "dynamically quantised int8 products; outputs differ from fp32 by "
                      "the weight and per-row activation rounding."]
    lines += ["", "## Targets (issue 11)", ""] + _targets(res)
    failures = _failures(res)
    if failures:
        lines += ["", "## Missing measurements", ""] + failures
    lines += ["", "![published top-1 vs. measured latency](top1_vs_latency.png)", ""]
    return "\n".join(lines)


def plot(rows, path):
    """Published top-1 vs. measured batch-1 latency (best backend, TFLite 1 thread)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    res = Results(rows)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    series = (("best Keras backend, batch 1", "o", lambda m: (
        1000.0 / res.best_ours(m, 1)[1]) if res.best_ours(m, 1)[1] else None),
        ("TFLite fp32, 1 thread", "s", lambda m: res.value(
            m, "tflite_latency", "visionzoo", "fp32", threads=1)))
    plotted = 0
    for label, marker, latency in series:
        xs, ys, names = [], [], []
        for m in res.models:
            top1, ms = res.fact(m, "top1_published"), latency(m)
            if top1 is not None and ms:
                xs.append(ms)
                ys.append(top1)
                names.append(m)
        if xs:
            ax.scatter(xs, ys, marker=marker, label=label)
            plotted += len(xs)
            if marker == "o":
                for x, y, n in zip(xs, ys, names):
                    ax.annotate(n, (x, y), textcoords="offset points", xytext=(4, 4),
                                fontsize=7)
    ax.set_xscale("log")
    plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(plain)
    ax.tick_params(axis="x", which="minor", labelsize=7)
    ax.set_xlabel("measured latency, ms (log scale)")
    ax.set_ylabel("published ImageNet top-1 %")
    r0 = rows[0] if rows else {}
    ax.set_title(f"visionzoo: top-1 vs. latency — {r0.get('cpu') or ''}, "
                 f"{(r0.get('date') or '')[:10]}", fontsize=9)
    if plotted:
        ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return plotted


def newest_csv():
    found = sorted(glob.glob(os.path.join(HERE, "results", "suite_*.csv")))
    if not found:
        raise SystemExit("no benchmarks/results/suite_*.csv: run benchmarks/suite.py")
    return found[-1]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("csv", nargs="*", help="suite CSVs (default: the newest)")
    p.add_argument("--md", default=os.path.join(ROOT, "docs", "models.md"))
    p.add_argument("--png", default=os.path.join(ROOT, "docs", "top1_vs_latency.png"))
    args = p.parse_args(argv)
    sources = [os.path.abspath(c) for c in (args.csv or [newest_csv()])]
    rows = read_csv(sources)
    if not rows:
        raise SystemExit("no rows in " + ", ".join(sources))
    text = markdown(rows, sources)
    os.makedirs(os.path.dirname(os.path.abspath(args.md)), exist_ok=True)
    with open(args.md, "w") as f:
        f.write(text)
    plot(rows, args.png)
    print(f"wrote {args.md} and {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
