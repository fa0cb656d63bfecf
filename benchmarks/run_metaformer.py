"""MetaFormer inference-speed table for the README, on all three Keras backends.

    python benchmarks/run_metaformer.py                    # batch 8, 224 px, vs timm
    python benchmarks/run_metaformer.py --batches 8 1      # also batch 1
    python benchmarks/run_metaformer.py --models caformer_s18 --backends jax
    python benchmarks/run_metaformer.py --from-csv benchmarks/results/metaformer_<date>.csv

Times the smallest variant of each MetaFormer sub-family with ``visionzoo.bench``
(see its docstring for how each backend and timm are timed) in one child process per
backend (``KERAS_BACKEND`` set), run one after another so nothing competes for the
cores. timm's eager model is timed inside each backend's run, right after ours, so
every CSV row's ratio compares measurements taken a few seconds apart
(``--timm-once``: only in the first backend's run, to save time).

Writes ``benchmarks/results/metaformer_<date>.csv`` (appending) and prints a Markdown
table: one row per model and batch; our img/s per backend, timm's eager img/s (median
over the runs that timed it) and the best ratio = best of our backends / timm eager
(> 1: we are faster). Random weights, fp32, CPU. No speed is asserted.
"""

import argparse
import csv
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

MODELS = ("poolformer_s12", "identityformer_s12", "randformer_s12", "poolformerv2_s12",
          "convformer_s18", "caformer_s18")
BACKENDS = ("jax", "tensorflow", "torch")


def _worker(args):
    """Child: time ``args.models`` for every batch on this process's backend."""
    sys.path.insert(0, ROOT)
    from visionzoo.bench import append_csv, benchmark, format_table

    rows = []
    for batch in args.batches:
        got = []
        for name in args.models:
            try:
                got += benchmark([name], batch=batch, size=args.size, repeats=args.repeats,
                                 vs="timm" if args.vs_timm else None, compile=args.compile,
                                 verbose=True)
            except Exception as e:  # keep the other models' numbers
                print(f"[run_metaformer] {name} batch {batch} failed: {e!r}",
                      file=sys.stderr, flush=True)
        append_csv(got, args.csv)
        rows += got
        print(format_table(got), file=sys.stderr, flush=True)
    with open(args.json, "w") as f:
        json.dump(rows, f)
    return 0


def _fmt(value, digits=1):
    return "n/a" if value is None else f"{value:.{digits}f}"


def markdown(rows, backends):
    """The README table (Markdown) from the rows of every backend's run."""
    keys = []
    for r in rows:
        if (r["model"], r["batch"]) not in keys:
            keys.append((r["model"], r["batch"]))
    batches = {b for _, b in keys}
    cols = ["model"] + (["batch"] if len(batches) > 1 else [])
    cols += [f"{b} img/s" for b in backends] + ["timm eager img/s", "best ratio"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join(
        [":--"] * (len(cols) - len(backends) - 2) + ["--:"] * (len(backends) + 2)) + "|"]
    for model, batch in keys:
        mine = [r for r in rows if r["model"] == model and r["batch"] == batch]
        ours = {r["backend"]: r["ours_ips"] for r in mine}
        timm = [r["timm_eager_ips"] for r in mine if r["timm_eager_ips"]]
        timm_ips = statistics.median(timm) if timm else None
        best = max((v for v in ours.values() if v), default=None)
        ratio = best / timm_ips if best and timm_ips else None
        cells = [model] + ([str(batch)] if len(batches) > 1 else [])
        cells += [_fmt(ours.get(b)) for b in backends]
        has_timm = any(r["timm_model"] for r in mine)
        missing = "n/a" if has_timm else "—"
        cells += [_fmt(timm_ips) if timm_ips else missing,
                  _fmt(ratio, 2) + "×" if ratio else missing]
        lines.append("| " + " | ".join(cells) + " |")
    r0 = rows[0]
    loads = [r["load1"] for r in rows if r["load1"] is not None]
    lines += [
        "",
        f"CPU: {r0['cpu']}, {r0['cores']} CPUs, {r0['threads']} threads; fp32, random "
        f"weights, {r0['size']} px; median of {r0['repeats']} timed calls after warm-up. "
        f"keras {r0['keras']}, torch {r0['torch']}, timm {r0['timm']}, "
        f"python {r0['python']}; {r0['date'][:10]}. "
        + (f"1-min load average during the runs (the benchmark's own threads included): "
           f"{min(loads):.2f}–{max(loads):.2f}. "
           if loads else "")
        + (f"**The machine was shared (load up to {max(loads):.1f} on {r0['cores']} CPUs): "
           "torch-side numbers (timm and the torch backend) collapse under CPU "
           "contention, so treat them as lower bounds.** "
           if loads and r0["cores"] and max(loads) > r0["cores"] + 0.5 else "")
        + "Best ratio = fastest backend / timm eager (> 1: visionzoo is faster); "
          "— = timm has no equivalent model; n/a = not measured.",
    ]
    return "\n".join(lines)


_NUMERIC = ("batch", "size", "repeats", "threads", "cores", "ours_ips", "timm_eager_ips",
            "load1")


def rows_from_csv(path):
    """Rows of a results CSV, the latest per (model, backend, batch), numbers parsed."""
    latest = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            for key in _NUMERIC:
                text = row.get(key)
                row[key] = None if text in (None, "") else float(text)
                if key in ("batch", "size", "repeats", "threads", "cores") and row[key]:
                    row[key] = int(row[key])
            row["timm_model"] = row.get("timm_model") or None
            latest[(row["model"], row["backend"], row["batch"])] = row
    return list(latest.values())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    p.add_argument("--batches", nargs="+", type=int, default=[8])
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--no-timm", dest="vs_timm", action="store_false",
                   help="do not time timm")
    p.add_argument("--timm-once", action="store_true",
                   help="time timm only in the first backend's run")
    p.add_argument("--compile", action="store_true",
                   help="also time torch.compile of timm (minutes per model)")
    p.add_argument("--csv", default=None,
                   help="default: benchmarks/results/metaformer_<date>.csv")
    p.add_argument("--from-csv", default=None, metavar="CSV",
                   help="only print the table from an existing results CSV (the latest "
                        "row per model, backend and batch)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--json", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return _worker(args)
    if args.from_csv:
        rows = rows_from_csv(args.from_csv)
        present = [b for b in BACKENDS if any(r["backend"] == b for r in rows)]
        print(markdown(rows, present))
        return 0

    date = datetime.date.today().isoformat()
    csv_path = args.csv or os.path.join(HERE, "results", f"metaformer_{date}.csv")
    os.makedirs(os.path.dirname(os.path.abspath(csv_path)), exist_ok=True)
    rows, failed = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i, backend in enumerate(args.backends):
            out = os.path.join(tmp, f"{backend}.json")
            cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--json", out,
                   "--csv", csv_path, "--size", str(args.size), "--repeats",
                   str(args.repeats), "--models", *args.models,
                   "--batches", *map(str, args.batches)]
            if not args.vs_timm or (args.timm_once and i > 0):
                cmd.append("--no-timm")
            if args.compile:
                cmd.append("--compile")
            env = dict(os.environ, KERAS_BACKEND=backend)
            print(f"[run_metaformer] backend {backend} ...", file=sys.stderr, flush=True)
            proc = subprocess.run(cmd, env=env, cwd=ROOT)
            if proc.returncode != 0 or not os.path.exists(out):
                failed.append(backend)
                continue
            with open(out) as f:
                rows += json.load(f)
    if not rows:
        print("no results", file=sys.stderr)
        return 1
    print(markdown(rows, args.backends))
    print(f"\nrows appended to {os.path.relpath(csv_path, ROOT)}", file=sys.stderr)
    if failed:
        print(f"backends that failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
