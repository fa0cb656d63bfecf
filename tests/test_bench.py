"""``visionzoo.bench``: result structure only (speeds are never asserted).

Runs on the active Keras backend (``KERAS_BACKEND``); the timm side always runs in a
child process, so this file is safe on TensorFlow too.
"""

import csv
import math

import pytest

from visionzoo import bench


def _positive(value):
    return isinstance(value, float) and math.isfinite(value) and value > 0


def _check_ours(row, model, batch, size, repeats):
    assert set(row) == set(bench.CSV_FIELDS)
    assert row["model"] == model
    assert (row["batch"], row["size"], row["repeats"]) == (batch, size, repeats)
    assert row["backend"] in ("jax", "tensorflow", "torch", "numpy")
    assert row["method"] and isinstance(row["threads"], int) and row["threads"] >= 1
    for key in ("ours_ips", "ours_p25", "ours_p75", "ours_first_call_s"):
        assert _positive(row[key]), (key, row[key])
    assert row["ours_p25"] <= row["ours_ips"] <= row["ours_p75"]
    assert row["cpu"] and row["cores"] >= 1 and row["keras"] and row["date"]


def test_benchmark_ours_only(tmp_path):
    rows = bench.benchmark(["poolformerv2_s12"], batch=2, size=64, repeats=2)
    assert len(rows) == 1
    row = rows[0]
    _check_ours(row, "poolformerv2_s12", 2, 64, 2)
    assert row["timm_model"] is None and row["timm_eager_ips"] is None
    assert row["ratio_eager"] is None

    table = bench.format_table(rows)
    assert "poolformerv2_s12" in table and "img/s" in table

    path = tmp_path / "out" / "bench.csv"
    bench.append_csv(rows, str(path))
    bench.append_csv(rows, str(path))  # header written once
    with open(path, newline="") as f:
        read = list(csv.DictReader(f))
    assert len(read) == 2 and read[0]["model"] == "poolformerv2_s12"
    assert list(read[0]) == list(bench.CSV_FIELDS)


def test_benchmark_vs_timm():
    rows = bench.benchmark("poolformerv2_s12", batch=1, size=64, repeats=2, vs="timm")
    row = rows[0]
    _check_ours(row, "poolformerv2_s12", 1, 64, 2)
    assert row["timm_model"] == "poolformerv2_s12"
    for key in ("timm_eager_ips", "timm_eager_p25", "timm_eager_p75", "ratio_eager"):
        assert _positive(row[key]), (key, row[key], row["timm_note"])
    assert row["timm_compile_ips"] is None and "compile not run" in row["timm_note"]
    assert math.isclose(row["ratio_eager"], row["ours_ips"] / row["timm_eager_ips"])


def test_no_timm_counterpart_is_noted():
    # timm's poolformer v1 computes another function, so the registry names none; no
    # child process is started for it.
    rows = bench.benchmark(["poolformer_s12"], batch=1, size=32, repeats=1, vs="timm")
    assert rows[0]["size"] == 32
    assert rows[0]["timm_model"] is None and "no counterpart" in rows[0]["timm_note"]
    assert rows[0]["ratio_eager"] is None


def test_bad_arguments():
    with pytest.raises(ValueError, match="Unknown model"):
        bench.benchmark(["poolformerv2_s99"], repeats=1)
    with pytest.raises(ValueError, match="vs must be"):
        bench.benchmark(["poolformerv2_s12"], vs="onnx")


def test_stats_and_child_timeout():
    stats = bench.throughput_stats([1.0, 0.5, 0.25], batch=2)
    assert stats == {"ips": 4.0, "p25": 3.0, "p75": 6.0}
    # A child over its time cap is killed and reported, not raised.
    result = bench.time_timm("poolformerv2_s12", batch=1, size=32, repeats=1, timeout=0.01)
    assert "timed out" in result["error"]


def test_benchmark_multi_input_dit():
    """DiT's denoiser takes [latents, timesteps, labels]: the bench feeds one array per
    input (its latent channels, not 3) and times it like any model."""
    rows = bench.benchmark(["dit_s_8"], batch=2, size=16, repeats=1, warmup=0)
    _check_ours(rows[0], "dit_s_8", 2, 16, 1)
    with pytest.raises(ValueError, match="vs must be"):
        bench.benchmark(["dit_s_8"], vs="official")


def test_diffusers_reference_for_dit():
    from visionzoo.registry import get_variant

    config = bench.diffusers_dit_config(get_variant("dit_b_4"), 32)
    assert config == {"num_attention_heads": 12, "attention_head_dim": 64, "in_channels": 4,
                      "out_channels": 8, "num_layers": 12, "sample_size": 32,
                      "patch_size": 4, "num_embeds_ada_norm": 1000}
    assert bench.diffusers_dit_config(get_variant("poolformerv2_s12"), 224) is None
    row = dict.fromkeys(bench.CSV_FIELDS)  # no child process for a classifier
    bench._add_diffusers(row, get_variant("poolformerv2_s12"), 1, 32, 1, 0, 1, False, 10,
                         False)
    assert row["timm_model"] is None and "no counterpart" in row["timm_note"]
    # The child process itself, on a tiny configuration (imports torch + diffusers only).
    pytest.importorskip("diffusers")
    tiny = dict(config, num_attention_heads=2, attention_head_dim=16, num_layers=1,
                sample_size=8, num_embeds_ada_norm=10)
    result = bench.time_diffusers_dit(tiny, batch=2, repeats=2, warmup=0, timeout=300)
    assert "error" not in result, result
    assert _positive(result["ips"]) and result["mode"] == "eager"
    assert result["p25"] <= result["ips"] <= result["p75"]


# --------------------------------------------------------------------------------------
# benchmarks/suite.py and benchmarks/make_table.py (no timm child, no timing asserted)
# --------------------------------------------------------------------------------------

import os  # noqa: E402
import sys  # noqa: E402
import types  # noqa: E402

_BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "benchmarks")


@pytest.fixture(scope="module")
def suite_modules():
    sys.path.insert(0, _BENCHMARKS)
    try:
        import make_table
        import suite
    finally:
        sys.path.remove(_BENCHMARKS)
    return suite, make_table


def _synthetic_rows(suite):
    stamp = dict(run_id="20260101T000000", date="2026-01-01T00:00:00+00:00",
                 cpu="Test CPU 9000", cores=2, python="3.11.7", keras="3.15.1",
                 jax="0.10.2", tensorflow="2.21.0", torch="2.14.1", timm="1.0.31",
                 ai_edge_litert="2.3.0", litert_torch="unavailable", load1=0.5)
    r = lambda **kw: suite.make_row(**{**stamp, **kw})  # noqa: E731
    return [
        r(model="alpha_s", timm_model="alpha_s", measurement="params", impl="registry",
          value=12345678, unit="count"),
        r(model="alpha_s", timm_model="alpha_s", measurement="gmacs", impl="registry",
          value=1.5, unit="GMAC"),
        r(model="alpha_s", timm_model="alpha_s", measurement="top1_published",
          impl="registry", value=79.3, unit="%"),
        r(model="beta_t", measurement="params", impl="registry", value=5000000,
          unit="count"),
        r(model="beta_t", measurement="gmacs", impl="registry", value=0.5, unit="GMAC"),
        r(model="beta_t", measurement="top1_published", impl="registry", value=72.1,
          unit="%"),
        r(measurement="sgemm", impl="numpy", mode="matmul fp32", value=100.0,
          unit="GFLOP/s", note="start of run"),
        r(model="alpha_s", timm_model="alpha_s", measurement="throughput", impl="jax",
          mode="jit", batch=1, value=123.4, unit="img/s"),
        r(model="alpha_s", timm_model="alpha_s", measurement="throughput",
          impl="tensorflow", mode="tf.function", batch=1, value=98.7, unit="img/s"),
        r(model="alpha_s", timm_model="alpha_s", measurement="throughput", impl="torch",
          mode="eager", batch=1, note="failed: RuntimeError('boom')", unit="img/s"),
        r(model="alpha_s", timm_model="alpha_s", measurement="throughput", impl="timm",
          mode="eager", batch=1, value=111.1, unit="img/s"),
        r(model="beta_t", measurement="throughput", impl="jax", mode="jit", batch=1,
          value=456.7, unit="img/s"),
        # torch: this run's captured-graph row wins over an older run's eager row.
        r(model="beta_t", measurement="throughput", impl="torch", mode="torch.export",
          batch=1, value=55.5, unit="img/s"),
        {**r(model="beta_t", measurement="throughput", impl="torch", mode="eager",
             batch=1, value=44.4, unit="img/s"), "run_id": "20251231T000000"},
        r(model="beta_t", measurement="throughput", impl="torch-compile",
          mode="torch.export+torch.compile", batch=1, value=77.7, unit="img/s"),
        r(model="alpha_s", timm_model="alpha_s", measurement="tflite_latency",
          impl="visionzoo", mode="fp32", batch=1, threads=1, value=8.8, unit="ms"),
        r(model="alpha_s", timm_model="alpha_s", measurement="tflite_size",
          impl="visionzoo", mode="fp32", batch=1, value=3 * 2**20, unit="bytes"),
        r(model="alpha_s", timm_model="alpha_s", measurement="tflite_latency",
          impl="visionzoo", mode="int8", batch=1, threads=1, value=2.4, unit="ms"),
        r(model="alpha_s", timm_model="alpha_s", measurement="tflite_latency",
          impl="visionzoo", mode="dynamic", batch=1, threads=1, value=2.2, unit="ms"),
        r(model="alpha_s", timm_model="alpha_s", measurement="tflite_latency",
          impl="litert-torch", mode="dynamic", batch=1, threads=1, value=2.5, unit="ms"),
        r(model="alpha_s", timm_model="alpha_s", measurement="tflite_size",
          impl="visionzoo", mode="dynamic", batch=1, value=0.8 * 2**20, unit="bytes"),
        r(model="alpha_s", timm_model="alpha_s", measurement="tflite_size",
          impl="litert-torch", mode="dynamic", batch=1, value=0.9 * 2**20, unit="bytes"),
        r(measurement="gemm", impl="jax", mode="49x512x2048", batch=1, value=120.0,
          unit="GFLOP/s", note="stage 4 MLP fc1; XLA:CPU default"),
        r(measurement="gemm", impl="torch", mode="49x512x2048", batch=1, value=240.0,
          unit="GFLOP/s", note="stage 4 MLP fc1; MKL (torch.nn.functional.linear)"),
        r(measurement="gemm", impl="jax", mode="196x320x1280", batch=1, value=270.0,
          unit="GFLOP/s", note="stage 3 MLP fc1; XLA:CPU default"),
        r(measurement="gemm", impl="torch", mode="196x320x1280", batch=1, value=300.0,
          unit="GFLOP/s", note="stage 3 MLP fc1; MKL (torch.nn.functional.linear)"),
        r(measurement="gemm", impl="jax", mode="392x512x2048", batch=8,
          unit="GFLOP/s", note="failed: RuntimeError('gemm boom')"),
        r(model="alpha_s", timm_model="alpha_s", measurement="tflite_latency",
          impl="litert-torch", mode="fp32", batch=1, threads=1, value=9.0, unit="ms"),
        r(measurement="tflite_gemm", impl="xnnpack", mode="196x320x1280", batch=1,
          threads=1, value=400.0, unit="GFLOP/s",
          note="stage 3 MLP fc1; one FULLY_CONNECTED op"),
        r(measurement="tflite_gemm", impl="xnnpack", mode="49x512x2048", batch=1,
          threads=1, value=350.0, unit="GFLOP/s",
          note="stage 4 MLP fc1; one FULLY_CONNECTED op"),
        r(measurement="tflite_gemm", impl="xnnpack", mode="3136x64x256", batch=1,
          threads=1, unit="GFLOP/s", note="failed: RuntimeError('fc boom')"),
    ]


def test_make_table_from_synthetic_csv(tmp_path, suite_modules):
    suite, make_table = suite_modules
    rows = suite.add_sgemm_fraction(_synthetic_rows(suite), 100.0)
    path = str(tmp_path / "suite.csv")
    suite.write_csv(rows, path)
    md, png = tmp_path / "docs" / "models.md", tmp_path / "docs" / "plot.png"
    assert make_table.main([path, "--md", str(md), "--png", str(png)]) == 0
    text = md.read_text()
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    # Measured numbers appear as in the CSV; the registry facts too.
    for number in ("123.4", "98.7", "111.1", "456.7", "8.8", "79.3", "72.1", "12.3",
                   "1.50", "3.00", "3.0"):
        assert number in text, number
    assert "Test CPU 9000" in text and "torch 2.14.1" in text and "2026-01-01" in text
    assert "python benchmarks/make_table.py" in text  # how to regenerate
    # Missing / failed measurements are a dash; failures listed with their reason.
    line = next(x for x in text.splitlines() if x.startswith("| alpha_s | 123.4"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    # torch failed, torch-compile and timm compile not run
    assert cells[3] == "—" and cells[4] == "—" and cells[6] == "—"
    assert cells[7] == f"{123.4 / 111.1:.2f}×"  # best / timm eager
    assert cells[8] == f"{123.4 / 111.1:.2f}× ✗"  # below the 1.25x target
    # % of sgemm: 2 * 1.5 GMAC * 123.4 img/s / 100 GFLOP/s.
    assert cells[10] == f"{100 * 2 * 1.5 * 123.4 / 100:.0f} %"
    beta = next(x for x in text.splitlines() if x.startswith("| beta_t | 456.7"))
    bcells = [c.strip() for c in beta.strip("|").split("|")]
    assert bcells[1:5] == ["456.7", "—", "55.5", "77.7"], bcells
    assert "44.4" not in text
    assert "boom" in text
    # The target section says what 1.25x would take: img/s and the share of sgemm.
    need = 1.25 * 111.1
    assert (f"alpha_s, batch 1: {123.4 / 111.1:.2f}×; 1.25× would be {need:.1f} img/s = "
            f"{100 * 2 * 1.5 * need / 100:.0f} % of sgemm (timm's best mode runs at "
            f"{100 * 2 * 1.5 * 111.1 / 100:.0f} %)") in text
    assert "at batch 1 (target ≥ 50 % for matmul-bound models): alpha_s " in text
    # TFLite: fp32 latency in the ours/litert-torch columns, the file's GFLOP/s (2 x 1.5
    # GMAC / 8.8 ms) and its share of XNNPACK's best fully-connected rate (400), int8.
    tfl = next(x for x in text.splitlines() if x.startswith("| alpha_s | 8.8"))
    tcells = [c.strip() for c in tfl.strip("|").split("|")]
    rate = 2e3 * 1.5 / 8.8
    assert tcells[1:6] == ["8.8", "9.0", f"{8.8 / 9.0:.2f}× ✗",
                           f"{rate:.0f} ({100 * rate / 400:.0f} %)", "2.4"], tcells
    # XNNPACK's fully-connected rates: one row per shape; a failed one is not a model cell.
    assert "| stage 3 MLP fc1 | 196×320×1280 | 400 |" in text
    assert "| stage 4 MLP fc1 | 49×512×2048 | 350 |" in text
    assert "fc boom" not in text
    # The TFLite target says what 0.8x of litert-torch's 9.0 ms would take.
    need = 2e3 * 1.5 / (0.8 * 9.0)
    assert (f"  - alpha_s, 1T: {8.8 / 9.0:.2f}×; 0.8× would be {0.8 * 9.0:.1f} ms = "
            f"{need:.0f} GFLOP/s = {100 * need / 400:.0f} % of XNNPACK's best "
            f"fully-connected rate at 1T (400); ours runs at {100 * rate / 400:.0f} %") in text
    # Dynamic-range files: ours vs litert-torch's quantised file, and the gain over fp32.
    assert "## TFLite dynamic-range int8" in text
    dyn = next(x for x in text.splitlines() if x.startswith("| alpha_s | 2.2"))
    dcells = [c.strip() for c in dyn.strip("|").split("|")]
    assert dcells[1:] == ["2.2", "2.5", f"{2.2 / 2.5:.2f}× ✗", f"{8.8 / 2.2:.2f}×",
                          "0.8", "0.9"], dcells
    beta = next(x for x in text.splitlines() if x.startswith("| beta_t | 456.7"))
    assert beta.count("—") >= 5  # no timm counterpart, no other backend
    # XLA:CPU vs MKL on the models' shapes: rows in stage order, ratio, median per batch.
    gemm = [x for x in text.splitlines() if x.startswith("| stage ") and x.count("|") == 7]
    assert gemm == ["| stage 3 MLP fc1 | 1 | 196×320×1280 | 270 | 300 | 0.90 |",
                    "| stage 4 MLP fc1 | 1 | 49×512×2048 | 120 | 240 | 0.50 |"]
    assert "Median XLA ÷ MKL: batch 1 0.70." in text
    assert "gemm boom" not in text  # the machine's library rates are not model cells


def test_suite_gemm_stage(tmp_path, suite_modules, monkeypatch):
    """The XLA:CPU vs MKL stage: one row per library, shape and batch, with the
    product's role and the kept XLA setting in the note."""
    suite, _ = suite_modules
    pytest.importorskip("jax")
    monkeypatch.setattr(suite, "GEMM_SHAPES", (("tiny fc", 16, 32, 64),))
    out = str(tmp_path / "rows.jsonl")
    args = types.SimpleNamespace(batches=[1, 2], repeats=1, warmup=0)
    suite.stage_gemm(args, out)
    with open(out) as f:
        rows = [suite.json.loads(line) for line in f]
    assert [(r["impl"], r["mode"], r["batch"]) for r in rows] == [
        ("jax", "16x32x64", 1), ("torch", "16x32x64", 1),
        ("jax", "32x32x64", 2), ("torch", "32x32x64", 2)]
    for r in rows:
        assert r["measurement"] == "gemm" and r["unit"] == "GFLOP/s"
        assert _positive(r["value"]) and r["p25"] <= r["value"] <= r["p75"]
        assert r["note"].startswith("tiny fc; ")
    assert "XLA:CPU" in rows[0]["note"] and "MKL" in rows[1]["note"]
    with pytest.raises(ValueError, match="lib must be"):
        suite.gemm_rate(4, 4, 4, "numpy")


def test_suite_tflite_gemm_stage(tmp_path, suite_modules, monkeypatch):
    """XNNPACK's fully-connected rate: a one-op file per shape, one row per thread count,
    GFLOP/s from the timed calls (the quartiles swap sides: the fastest call is the
    highest rate)."""
    import keras

    if keras.config.backend() != "tensorflow":
        pytest.skip("the TFLite stage runs on the TensorFlow backend")
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    suite, _ = suite_modules
    monkeypatch.setattr(suite, "GEMM_SHAPES", (("tiny fc", 16, 32, 64),))
    out = str(tmp_path / "rows.jsonl")
    args = types.SimpleNamespace(tflite_threads=[1, 2], repeats=1, warmup=0)
    suite.stage_tflite_gemm(args, out, str(tmp_path))
    with open(out) as f:
        rows = [suite.json.loads(line) for line in f]
    assert [(r["measurement"], r["impl"], r["mode"], r["threads"]) for r in rows] == [
        ("tflite_gemm", "xnnpack", "16x32x64", 1), ("tflite_gemm", "xnnpack", "16x32x64", 2)]
    for r in rows:
        assert _positive(r["value"]) and r["p25"] <= r["value"] <= r["p75"]
        assert r["unit"] == "GFLOP/s" and r["note"].startswith("tiny fc; ")
    interpreter = Interpreter(
        model_path=str(tmp_path / "fc_16x32x64.tflite"),
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interpreter.allocate_tensors()
    assert [d["op_name"] for d in interpreter._get_ops_details()] == ["FULLY_CONNECTED"]


def test_suite_tflite_files_timed_side_by_side(tmp_path, suite_modules):
    """With the run's file folder set, a latency request keeps a copy of the file and
    lists it; the tflite_time stage then times each model's files interleaved, one row
    per file and thread count (a model with one file gets no "interleaved" note)."""
    import json

    import keras

    if keras.config.backend() != "tensorflow":
        pytest.skip("making the TFLite files needs the TensorFlow backend")
    suite, _ = suite_modules
    files, work = tmp_path / "files", tmp_path / "work"
    files.mkdir()
    work.mkdir()
    args = types.SimpleNamespace(tflite_threads=[1, 2], repeats=3, warmup=0,
                                 files=str(files))
    out = str(tmp_path / "rows.jsonl")
    for model, impl, shape in (("m", "visionzoo", (8, 16, 32)),
                               ("m", "litert-torch", (8, 16, 48)),
                               ("solo", "visionzoo", (4, 8, 8))):
        path = suite.tflite_fc_file(*shape, str(work / f"{model}_{impl}.tflite"))
        common = dict(model=model, timm_model=None, impl=impl, size=8, batch=1)
        suite._latency_rows(out, path, args, common, "fp32")
    assert not os.path.exists(out)  # nothing timed yet
    kept = sorted(p.name for p in files.glob("*.tflite"))
    assert kept == ["m__litert-torch__fp32.tflite", "m__visionzoo__fp32.tflite",
                    "solo__visionzoo__fp32.tflite"]
    suite.stage_tflite_time(args, out)
    with open(out) as f:
        rows = [json.loads(line) for line in f]
    assert [(r["model"], r["impl"], r["threads"]) for r in rows] == [
        ("m", "visionzoo", 1), ("m", "litert-torch", 1),
        ("m", "visionzoo", 2), ("m", "litert-torch", 2),
        ("solo", "visionzoo", 1), ("solo", "visionzoo", 2)]
    for r in rows:
        assert r["measurement"] == "tflite_latency" and r["mode"] == "fp32"
        assert r["unit"] == "ms" and r["repeats"] == suite.TFLITE_REPEATS
        assert _positive(r["value"]) and r["p25"] <= r["value"] <= r["p75"]
        assert ("interleaved with visionzoo and litert-torch" in r["note"]) == (
            r["model"] == "m")
    # The helper on its own: one entry per file, each timed.
    stats = suite.time_interleaved([str(files / k) for k in kept], 1, 2, 0)
    assert sorted(stats) == sorted(str(files / k) for k in kept)
    assert all(_positive(v["value"]) and v["first_call_s"] > 0 for v in stats.values())


def test_suite_csv_writer_and_sgemm(tmp_path, suite_modules):
    suite, _ = suite_modules
    rate = suite.sgemm(n=64, repeats=1, warmup=0)
    assert _positive(rate["value"]) and rate["p25"] <= rate["value"] <= rate["p75"]
    out = str(tmp_path / "rows.jsonl")
    args = types.SimpleNamespace(models=["poolformerv2_s12"], batches=[1], repeats=1,
                                 warmup=0)
    suite.stage_ours(args, out)  # our model on the active backend, 1 repeat
    with open(out) as f:
        rows = [suite.json.loads(line) for line in f]
    assert len(rows) == 1
    row = rows[0]
    assert row["measurement"] == "throughput" and row["impl"] in suite.BACKENDS
    assert _positive(float(row["value"])) and row["unit"] == "img/s"
    rows.append(suite.make_row(model="poolformerv2_s12", measurement="gmacs",
                               impl="registry", value=1.812))
    rows.append(suite.make_row(measurement="sgemm", impl="numpy", value=rate["value"]))
    suite.add_sgemm_fraction(rows, suite.best_sgemm(rows))
    assert math.isclose(row["gflops_achieved"], 2 * 1.812 * row["value"])
    assert math.isclose(row["sgemm_fraction"], row["gflops_achieved"] / rate["value"])
    path = str(tmp_path / "suite.csv")
    suite.write_csv(rows, path)
    suite.write_csv(rows[:1], path)  # appends; header written once
    back = suite.read_csv(path)
    assert len(back) == 4 and list(back[0]) == list(suite.FIELDS)
    assert float(back[0]["value"]) == row["value"] and back[2]["model"] is None


def test_suite_size_then_latency(tmp_path, suite_modules, monkeypatch):
    """A TFLite file's size row is followed by its latency rows, or, when the file was
    not made, by one failed latency row carrying the reason (mode kept)."""
    import json

    suite, _ = suite_modules
    timed = []
    monkeypatch.setattr(suite, "_latency_rows",
                        lambda out, path, args, common, mode: timed.append((path, mode)))
    out = tmp_path / "rows.jsonl"
    common = dict(model="m", timm_model="m", impl="litert-torch", size=224, batch=1)
    ok = suite.make_row(measurement="tflite_size", mode="dynamic", unit="bytes",
                        value=123, **common)
    assert suite._size_then_latency(str(out), ok, "m.tflite", None, common) is True
    bad = suite.make_row(measurement="tflite_size", mode="dynamic", unit="bytes",
                         note="quantisation failed: boom", **common)
    assert suite._size_then_latency(str(out), bad, "x.tflite", None, common) is False
    assert timed == [("m.tflite", "dynamic")]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["measurement"], r["mode"], r["value"]) for r in rows] == [
        ("tflite_size", "dynamic", 123), ("tflite_size", "dynamic", None),
        ("tflite_latency", "dynamic", None)]
    assert "boom" in rows[2]["note"] and rows[2]["unit"] == "ms"


def test_make_table_names_each_machine_and_what_came_from_it(tmp_path, suite_modules):
    """Rows from runs on two machines: the header lists both and which measurements the
    tables take from each (so nobody compares across them unknowingly)."""
    suite, make_table = suite_modules
    rows = suite.add_sgemm_fraction(_synthetic_rows(suite), 100.0)
    rows.append({**rows[-1], **suite.make_row(
        run_id="20260102T000000", date="2026-01-02T00:00:00+00:00", cpu="Other CPU",
        cores=2, model="beta_t", measurement="tflite_latency", impl="visionzoo",
        mode="fp32", batch=1, threads=1, value=5.5, unit="ms")})
    path = str(tmp_path / "suite.csv")
    suite.write_csv(rows, path)
    md = tmp_path / "models.md"
    assert make_table.main([path, "--md", str(md), "--png", str(tmp_path / "p.png")]) == 0
    text = md.read_text()
    assert "**Machines:**" in text and "Other CPU, 2 CPUs (tflite_latency)" in text
    assert "Test CPU 9000, 2 CPUs (" in text and "Compare figures only within" in text
