"""The digits demo pipeline, shortened: train a few epochs, export fp32, dynamic-range
and int8 TFLite, run them, check that the figures hang together.

The full-length run (``visionzoo demo``, >= 95 % test accuracy) takes minutes and is
not part of the test suite.
"""

import json
import os
import subprocess
import sys

import keras
import pytest

pytest.importorskip("sklearn")
pytest.importorskip("ai_edge_litert")

from visionzoo.training import demo as demo_module  # noqa: E402


UNOPTIMISED = "--xla_backend_optimization_level=0"  # set by conftest.py for the JAX run


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    if keras.backend.backend() == "jax" and UNOPTIMISED in os.environ.get("XLA_FLAGS", ""):
        # The demo is run-time bound (training epochs), unlike the rest of the JAX run,
        # which conftest.py speeds up by compiling without LLVM optimisation: under that
        # flag it takes ~150 s instead of ~35 s. Run it as a user would, in a child
        # process with XLA's normal settings, and read the results file it writes.
        env = dict(os.environ, KERAS_BACKEND="jax",
                   XLA_FLAGS=os.environ["XLA_FLAGS"].replace(UNOPTIMISED, "").strip())
        code = ("import sys; from visionzoo.training import demo; "
                "demo.demo(out=sys.argv[1], seed=0, verbose=0, quick=True)")
        subprocess.run([sys.executable, "-c", code, str(out)], env=env, check=True,
                       timeout=900)
        with open(out / "results.json") as f:
            return out, json.load(f)
    results = demo_module.demo(out=str(out), seed=0, verbose=0, quick=True)
    return out, results


def test_outputs_written(quick_run):
    out, results = quick_run
    for name in ("digits_metaformer.keras", "digits_fp32.tflite", "digits_dynamic.tflite",
                 "digits_int8.tflite", "results.json"):
        assert (out / name).is_file(), name
    if results["picture"] is not None:
        assert (out / "predictions.png").stat().st_size > 0
    with open(out / "results.json") as f:
        saved = json.load(f)
    assert saved["keras"]["test_accuracy"] == pytest.approx(results["keras"]["test_accuracy"])
    assert saved["epochs"] == demo_module.QUICK_EPOCHS
    assert saved["data"] == {"train": 1293, "val": 144, "test": 360}


def test_figures_consistent(quick_run):
    out, results = quick_run
    keras_acc = results["keras"]["test_accuracy"]
    assert keras_acc > 0.5, "a few epochs should be far above chance (10 %)"
    assert results["model"]["params"] > 0
    tflite = results["tflite"]
    assert "error" not in tflite, tflite.get("error")
    for mode in ("fp32", "dynamic", "int8"):
        entry = tflite[mode]
        assert entry["size_bytes"] == os.path.getsize(entry["path"])
        assert abs(entry["test_accuracy"] - keras_acc) <= 0.01 + 1e-9, (mode, entry,
                                                                       keras_acc)
        assert entry["latency_ms"]["1_thread"] > 0
    assert tflite["fp32"]["agreement_with_keras"] >= 0.99
    for mode in ("dynamic", "int8"):
        assert tflite[mode]["size_bytes"] < 0.5 * tflite["fp32"]["size_bytes"], mode
    assert tflite["dynamic"]["int8_weight_ops"] > 0
    assert all(results["checks"][k] for k in ("export", "fp32_within_1pt",
                                              "dynamic_within_1pt", "int8_within_1pt"))


def test_tflite_predict_quantised_io(tmp_path):
    """The int8-I/O path of the TFLite helpers: (de)quantisation round trip."""
    import numpy as np

    detail = {"dtype": np.int8, "quantization": (0.05, -3)}
    x = np.array([[-1.0, 0.0, 0.5, 100.0]], "float32")
    q = demo_module._to_input_dtype(x, detail)
    assert q.dtype == np.int8 and q.tolist() == [[-23, -3, 7, 127]]
    back = demo_module._from_output_dtype(q, detail)
    assert np.allclose(back[0, :3], x[0, :3], atol=0.025)
