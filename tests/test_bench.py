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
