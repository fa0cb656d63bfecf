"""TFLite export: builtin ops only, parity in ai-edge-litert, quantisation, errors, CLI.

Runs under every backend (``KERAS_BACKEND=jax|tensorflow|torch pytest``). Under JAX
and torch each export goes through the TensorFlow-backend subprocess, so those runs
cover fewer sub-families to stay quick.
"""

import os
import sys

import keras
import numpy as np
import pytest

from visionzoo import export
from visionzoo.backbones.metaformer import VARIANTS, MetaFormer
from visionzoo.export import ExportError, ExportReport, to_tflite

BACKEND = keras.backend.backend()
IN_PROCESS = BACKEND == "tensorflow"

# One registered variant per MetaFormer sub-family (its config minus depths/dims).
SUBFAMILIES = {
    "poolformer": "poolformer_s12",
    "identityformer": "identityformer_s12",
    "randformer": "randformer_s12",
    "poolformerv2": "poolformerv2_s12",
    "convformer": "convformer_s18",
    "caformer": "caformer_s18",
}
# Under JAX/torch (subprocess conversion) only these run, to keep CI time down.
SUBPROCESS_SUBSET = ("caformer", "randformer")
NON_BUILTIN = ("CUSTOM", "DELEGATE")


def mini(subfamily, seed=0):
    """A 4-block, narrow MetaFormer of ``subfamily``; returns (model, side).

    RandFormer's mixing matrices are tied to the grid, so it is built at 224x224;
    the others keep dynamic H/W and are exported at 64x64.
    """
    keras.utils.set_random_seed(seed)
    config = {k: v for k, v in VARIANTS[SUBFAMILIES[subfamily]]["config"].items()
              if k not in ("depths", "dims")}
    side = 224 if subfamily == "randformer" else 64
    shape = (side, side, 3) if subfamily == "randformer" else (None, None, 3)
    model = MetaFormer(depths=[1, 1, 1, 1], dims=[16, 32, 48, 64], num_classes=10,
                       input_shape=shape, name=f"mini_{subfamily}", **config)
    return model, side


def images(n, side, seed):
    """Image-like inputs: blocky low-frequency structure plus fine noise, so different
    samples give clearly different logits (a constant output cannot look right)."""
    rng = np.random.default_rng(seed)
    coarse = rng.standard_normal((n, side // 8, side // 8, 3)).astype("float32")
    coarse = np.repeat(np.repeat(coarse, 8, axis=1), 8, axis=2)
    return coarse + 0.3 * rng.standard_normal((n, side, side, 3)).astype("float32")


def runtime_ops(path):
    """Op names as ai-edge-litert's interpreter sees them (no default delegate)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    it = Interpreter(model_path=str(path),
                     experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    it.allocate_tensors()
    return {d["op_name"] for d in it._get_ops_details()}


def run_file(path, x):
    """Run the file through its signature runner on batch ``x``."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path))
    key, sig = next(iter(it.get_signature_list().items()))
    out = it.get_signature_runner(key)(**{sig["inputs"][0]: x.astype("float32")})
    assert len(out) == 1
    return next(iter(out.values()))


def keras_out(model, x):
    if BACKEND == "jax":  # one jitted graph: much faster than op-by-op eager compiles
        import jax

        out = jax.jit(lambda tv, ntv, t: model.stateless_call(tv, ntv, t, training=False)[0])(
            [v.value for v in model.trainable_variables],
            [v.value for v in model.non_trainable_variables], x)
        return np.asarray(out)
    return keras.ops.convert_to_numpy(model(x, training=False))


def assert_builtin_only(report, path):
    ops = runtime_ops(path)
    assert ops, "no ops listed"
    bad = {o for o in ops | set(report.op_names)
           if o in NON_BUILTIN or o.startswith("Flex") or not o.isupper()}
    assert not bad, f"non-builtin ops: {bad}"
    assert ops <= set(report.op_names)


def xnnpack_outside(path):
    """(partitions, names of ops at partition boundaries that XNNPACK did not take)
    for the file under LiteRT's default XNNPACK delegate. A file the delegate runs
    whole gives ``(1, [])``."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path), num_threads=1)
    it.allocate_tensors()
    ops = it._get_ops_details()
    delegates = [o for o in ops if o["op_name"] == "DELEGATE"]
    ins = {i for d in delegates for i in d["inputs"]}
    outs = {i for d in delegates for i in d["outputs"]}
    outside = sorted(o["op_name"] for o in ops if o["op_name"] != "DELEGATE" and (
        set(o["outputs"]) & ins or set(o["inputs"]) & outs))
    return len(delegates), outside


def n_params(model):
    return sum(int(np.prod(w.shape)) for w in model.weights)


# --------------------------------------------------------------------------------------
# 1. fp32 parity per sub-family
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("subfamily", list(SUBFAMILIES))
def test_fp32_parity_builtin_only(subfamily, tmp_path):
    if not IN_PROCESS and subfamily not in SUBPROCESS_SUBSET:
        pytest.skip(f"{BACKEND}: subprocess conversion, only {SUBPROCESS_SUBSET} run")
    model, side = mini(subfamily)
    path = tmp_path / f"{subfamily}.tflite"
    tf_loaded_before = "tensorflow" in sys.modules
    report = to_tflite(model, path, input_size=(side, side))
    if not IN_PROCESS and not tf_loaded_before:
        # The hand-off must not pull TensorFlow into a JAX/torch process.
        assert "tensorflow" not in sys.modules

    assert isinstance(report, ExportReport)
    assert path.is_file() and report.size_bytes == path.stat().st_size > 0
    assert report.quantize is None
    assert report.input_shape == (None, side, side, 3)  # batch stays dynamic
    assert report.max_abs_diff <= 1e-3 * report.ref_max_abs, report.summary()
    assert report.ref_max_abs > 0
    assert_builtin_only(report, path)
    assert "max |tflite - keras|" in report.summary()
    assert [f for f in os.listdir(tmp_path)] == [path.name]  # no temp files left

    # Independent run at another batch size (exercises the dynamic batch dimension).
    x = images(3, side, seed=7)
    ref = keras_out(model, x)
    got = run_file(path, x)
    assert got.shape == ref.shape == (3, 10)
    assert np.max(np.abs(got - ref)) <= 1e-3 * np.max(np.abs(ref))


# --------------------------------------------------------------------------------------
# 2. Quantised exports
# --------------------------------------------------------------------------------------


@pytest.mark.skipif(not IN_PROCESS, reason="one more conversion; the quantize option's "
                    "hand-off to the subprocess is covered by the int8 test on this backend")
def test_fp16_export(tmp_path):
    model, side = mini("caformer")
    path = tmp_path / "m_fp16.tflite"
    report = to_tflite(model, path, quantize="fp16", input_size=(side, side))
    assert report.quantize == "fp16"
    assert_builtin_only(report, path)
    assert "DEQUANTIZE" in report.op_names  # fp16 weights expanded at load time
    # float16 weights: well under the 4 bytes/parameter of an fp32 file.
    assert report.size_bytes < 0.7 * 4 * n_params(model)
    assert report.max_abs_diff <= 2e-2 * report.ref_max_abs, report.summary()


def test_int8_export_close_to_float(tmp_path):
    model, side = mini("caformer")
    path = tmp_path / "m_int8.tflite"
    calib = images(16, side, seed=1)
    report = to_tflite(model, path, quantize="int8", input_size=(side, side),
                       representative_data=lambda: (calib[i:i + 4] for i in range(0, 16, 4)))
    assert report.quantize == "int8"
    assert_builtin_only(report, path)
    assert {"QUANTIZE", "DEQUANTIZE"} <= set(report.op_names)
    assert report.int8_ops > report.num_ops // 3, report.summary()
    assert report.size_bytes < 0.5 * 4 * n_params(model)  # int8 weights

    # Held-out samples: the int8 file must follow the float model sample by sample.
    x = images(8, side, seed=2)
    ref = keras_out(model, x)
    got = run_file(path, x)
    assert np.max(np.abs(got - ref)) <= 0.3 * np.max(np.abs(ref))
    # Correlation of the per-sample deviations from the batch mean: a file that
    # ignored its input (or scrambled classes) would score near 0.
    rc, gc = ref - ref.mean(0), got - got.mean(0)
    assert np.std(rc) > 0.1 * np.mean(np.abs(ref))  # samples really differ
    corr = float((rc * gc).sum() / np.sqrt((rc ** 2).sum() * (gc ** 2).sum()))
    assert corr >= 0.9, corr


@pytest.mark.skipif(not IN_PROCESS, reason="one more conversion; the quantize option's "
                    "hand-off to the subprocess is covered by the int8 test on this backend")
def test_dynamic_export_int8_weights_float_activations(tmp_path):
    model, side = mini("caformer")
    path = tmp_path / "m_dynamic.tflite"
    report = to_tflite(model, path, quantize="dynamic", input_size=(side, side))
    assert report.quantize == "dynamic"
    assert_builtin_only(report, path)
    # Weight-only quantisation: no calibrated QUANTIZE steps, float activations, and
    # every product (FULLY_CONNECTED, CONV_2D) reads int8 weights.
    assert "QUANTIZE" not in report.op_names
    assert report.int8_ops is None
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
    it = Interpreter(model_path=str(path), experimental_op_resolver_type=(
        OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES))
    it.allocate_tensors()
    dtypes = {t["index"]: t["dtype"] for t in it.get_tensor_details()}
    ops = it._get_ops_details()
    int8_in = [d for d in ops if any(dtypes.get(i) == np.int8 for i in d["inputs"])]
    products = [d for d in ops if d["op_name"] in ("FULLY_CONNECTED", "CONV_2D")]
    with_int8 = [d for d in products if d in int8_in]
    assert products and len(with_int8) >= len(products) // 2, report.summary()
    # Only the products XNNPACK runs dynamically quantised keep int8 weights; the
    # depthwise convs (the mini CAFormer's SepConv stages) get theirs back in float32.
    assert any(d["op_name"] == "DEPTHWISE_CONV_2D" for d in ops)
    assert len(int8_in) == len(with_int8) == report.int8_weight_ops, [
        d["op_name"] for d in int8_in]
    assert all(dtypes[o] == np.float32 for d in products for o in d["outputs"])
    assert report.size_bytes < 0.5 * 4 * n_params(model)  # int8 weights
    assert "ops with int8 weights" in report.summary()

    # Held-out samples: close to the float model sample by sample (no calibration).
    x = images(8, side, seed=2)
    ref = keras_out(model, x)
    got = run_file(path, x)
    assert got.shape == ref.shape
    assert np.max(np.abs(got - ref)) <= 0.1 * np.max(np.abs(ref))
    rc, gc = ref - ref.mean(0), got - got.mean(0)
    assert np.std(rc) > 0.1 * np.mean(np.abs(ref))  # samples really differ
    corr = float((rc * gc).sum() / np.sqrt((rc ** 2).sum() * (gc ** 2).sum()))
    assert corr >= 0.98, corr

    # Calibration data would be silently unused: refused, nothing written.
    with pytest.raises(ValueError, match="dynamic.*representative_data"):
        to_tflite(model, tmp_path / "other.tflite", quantize="dynamic",
                  input_size=(side, side), representative_data=images(4, side, seed=1))
    assert sorted(os.listdir(tmp_path)) == [path.name]


class StaticBatchFlatten(keras.layers.Layer):
    """Flattens with the *static* batch size, so it cannot trace with a dynamic batch."""

    def call(self, x):
        return keras.ops.reshape(x, (x.shape[0], -1))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], int(np.prod(input_shape[1:])))


@pytest.mark.skipif(not IN_PROCESS, reason="test-only layer; the subprocess cannot load it")
def test_batch_one_fallback(tmp_path):
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(4, 3, strides=4, name="conv")(inputs)
    x = StaticBatchFlatten(name="flatten")(x)
    model = keras.Model(inputs, keras.layers.Dense(5, name="fc")(x))
    path = tmp_path / "m.tflite"
    report = to_tflite(model, path)  # static model: no input_size needed
    assert report.input_shape == (1, 32, 32, 3)
    assert "fixed batch" in report.summary()
    assert report.max_abs_diff <= 1e-3 * report.ref_max_abs  # checked sample by sample


def test_fixed_batch_size(tmp_path):
    """batch_size=N writes a file with that fixed batch: no runtime shape ops, the same
    outputs, chunked checks for larger inputs; int8 calibrates on batches of N. Works
    from every backend (JAX/torch hand the batch size to the subprocess)."""
    model, side = mini("caformer")
    dynamic = to_tflite(model, tmp_path / "dyn.tflite", input_size=(side, side))
    fixed = to_tflite(model, tmp_path / "b1.tflite", input_size=(side, side), batch_size=1)
    assert dynamic.input_shape == (None, side, side, 3)
    assert fixed.input_shape == (1, side, side, 3)
    assert fixed.max_abs_diff <= 1e-3 * fixed.ref_max_abs, fixed.summary()
    assert_builtin_only(fixed, tmp_path / "b1.tflite")
    assert fixed.num_ops < dynamic.num_ops, (fixed.num_ops, dynamic.num_ops)
    assert not {"SHAPE", "PACK"} & set(fixed.op_names), fixed.op_names
    x = images(1, side, seed=9)
    np.testing.assert_allclose(run_file(tmp_path / "b1.tflite", x), keras_out(model, x),
                               atol=1e-3 * np.max(np.abs(keras_out(model, x))))
    if IN_PROCESS:  # one more conversion; the batch plumbing is backend-free
        calib = images(6, side, seed=1)
        q = to_tflite(model, tmp_path / "b2_int8.tflite", input_size=(side, side),
                      batch_size=2, quantize="int8", representative_data=calib)
        assert q.input_shape == (2, side, side, 3) and q.int8_ops > 0
    with pytest.raises(ValueError, match="batch_size"):
        to_tflite(model, tmp_path / "bad.tflite", input_size=(side, side), batch_size=0)
    with pytest.raises(ValueError, match="multiple of 2"):
        to_tflite(model, tmp_path / "bad.tflite", input_size=(side, side), batch_size=2,
                  check_input=images(3, side, seed=1))
    with pytest.raises(ValueError, match="at least"):
        to_tflite(model, tmp_path / "bad.tflite", input_size=(side, side), batch_size=4,
                  quantize="int8", representative_data=images(2, side, seed=1))
    assert not (tmp_path / "bad.tflite").exists()


def depthwise_filters(path):
    """Filter shapes (kh, kw) of every DEPTHWISE_CONV_2D in the file (no delegate)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    it = Interpreter(model_path=str(path), experimental_op_resolver_type=(
        OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES))
    shapes = {t["index"]: tuple(t["shape"]) for t in it.get_tensor_details()}
    return [shapes[op["inputs"][1]][1:3] for op in it._get_ops_details()
            if op["op_name"] == "DEPTHWISE_CONV_2D"]


def test_large_depthwise_kernels_export_as_bands(tmp_path):
    """Depthwise kernels above 25 taps (XNNPACK's slow path) are written as bands of at
    most 25 taps: ConvFormer's 7x7 becomes 3x7 + 3x7 + 1x7, a strided 9x9 four bands,
    a 5x5 stays whole; the file matches the model. From every backend (the subprocess
    traces the same way)."""
    from visionzoo.layers import DepthwiseConv2D, PaddedDepthwiseConv2D

    keras.utils.set_random_seed(3)
    inputs = keras.Input((20, 20, 8))
    a = PaddedDepthwiseConv2D(7, torch_padding=3, use_bias=False)(inputs)
    b = DepthwiseConv2D(9, strides=2, padding="same")(a)
    c = DepthwiseConv2D(5, padding="same")(b)
    model = keras.Model(inputs, c)
    path = tmp_path / "dw.tflite"
    report = to_tflite(model, path, batch_size=1)
    assert report.max_abs_diff <= 1e-5 * report.ref_max_abs, report.summary()
    assert_builtin_only(report, path)
    filters = depthwise_filters(path)
    assert sorted(filters) == sorted([(3, 7), (3, 7), (1, 7), (2, 9), (2, 9), (2, 9),
                                      (2, 9), (1, 9), (5, 5)]), filters
    x = np.random.default_rng(4).standard_normal((1, 20, 20, 8)).astype("float32")
    np.testing.assert_allclose(run_file(path, x), keras_out(model, x),
                               atol=1e-5 * np.max(np.abs(keras_out(model, x))))


@pytest.mark.skipif(not IN_PROCESS, reason="one more conversion; the logic is backend-free")
def test_multi_output_features_model(tmp_path):
    model, side = mini("convformer")
    features = model.features()  # dict P2..P5, dynamic H/W, not a ZooBackbone
    report = to_tflite(features, tmp_path / "f.tflite", input_size=(side, side))
    assert report.input_shape == (None, side, side, 3)
    assert report.max_abs_diff <= 1e-3 * report.ref_max_abs, report.summary()


def test_handoff_files_for_zoo_models(tmp_path):
    """visionzoo models go to the subprocess as config JSON + weights (no Keras
    serialisation, which would import TensorFlow here); the round trip is exact."""
    model, side = mini("caformer")
    path = export._save_for_subprocess(model, str(tmp_path))
    assert path.endswith("model.json")
    assert sorted(os.listdir(tmp_path)) == ["model.json", "weights.npz"]
    rebuilt = export._load_in_subprocess(path)  # same loader, in this backend
    x = images(2, side, seed=3)
    np.testing.assert_allclose(keras_out(rebuilt, x), keras_out(model, x), rtol=0, atol=1e-6)


# --------------------------------------------------------------------------------------
# 3. Errors and atomic output
# --------------------------------------------------------------------------------------


def test_dynamic_size_without_input_size_raises(tmp_path):
    model, _ = mini("poolformerv2")
    with pytest.raises(ValueError, match=r"dynamic.*input_size"):
        to_tflite(model, tmp_path / "m.tflite")
    assert os.listdir(tmp_path) == []


def test_bad_arguments_raise(tmp_path):
    model, side = mini("poolformerv2")
    with pytest.raises(ValueError, match="quantize"):
        to_tflite(model, tmp_path / "m.tflite", quantize="int4", input_size=(side, side))
    with pytest.raises(ValueError, match="representative_data"):
        to_tflite(model, tmp_path / "m.tflite", quantize="int8", input_size=(side, side))
    with pytest.raises(ValueError, match="representative_data"):
        to_tflite(model, tmp_path / "m.tflite", quantize="int8", input_size=(side, side),
                  representative_data=np.zeros((2, 32, 32, 3), "float32"))
    assert os.listdir(tmp_path) == []


def test_non_builtin_op_fails_cleanly(tmp_path):
    """A graph needing a Flex op (erf) fails conversion with the op's name; the file
    already at the target path is left as it was and no temporary file remains."""
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    # __import__ keeps the lambda self-contained when it is deserialised in the
    # TensorFlow-backend subprocess (JAX/torch runs).
    x = keras.layers.Lambda(lambda t: __import__("keras").ops.erf(t),
                            output_shape=(30, 30, 4), name="erf")(x)
    model = keras.Model(inputs, x)
    path = tmp_path / "m.tflite"
    path.write_bytes(b"previous export")
    with pytest.raises(ExportError, match="Erf"):
        to_tflite(model, path)
    assert path.read_bytes() == b"previous export"
    assert os.listdir(tmp_path) == ["m.tflite"]


def test_failure_after_partial_write_leaves_nothing(tmp_path, monkeypatch):
    def half_written(model, in_shape, quantize, representative, out_path, batch_size=None):
        with open(out_path, "wb") as f:
            f.write(b"TFL3 half a model")
        raise RuntimeError("converter died")

    monkeypatch.setattr(export, "_convert", half_written)
    model, side = mini("poolformerv2")
    with pytest.raises(RuntimeError, match="converter died"):
        to_tflite(model, tmp_path / "out" / "m.tflite", input_size=(side, side))
    assert os.listdir(tmp_path / "out") == []


@pytest.mark.skipif(not IN_PROCESS, reason="one more conversion; the logic is backend-free")
def test_parity_failure_removes_file(tmp_path, monkeypatch):
    real_run = export._run_tflite
    monkeypatch.setattr(export, "_run_tflite",
                        lambda path, x: [o + 1.0 for o in real_run(path, x)])
    model, side = mini("identityformer")
    with pytest.raises(ExportError, match="fp32 TFLite output differs"):
        to_tflite(model, tmp_path / "m.tflite", input_size=(side, side))
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------------------
# 4. Command line
# --------------------------------------------------------------------------------------


def test_cli_export_writes_file(tmp_path, monkeypatch, capsys):
    from visionzoo.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["export", "poolformerv2_s12", "--input-size", "64", "64",
                 "--num-classes", "10"]) == 0
    out = capsys.readouterr().out
    path = tmp_path / "poolformerv2_s12.tflite"  # default name
    assert path.is_file() and path.stat().st_size > 1_000_000
    assert "max |tflite - keras|" in out and "CONV_2D" in out and "Bx64x64x3" in out
    assert os.listdir(tmp_path) == [path.name]


@pytest.mark.skipif(not IN_PROCESS, reason="one more conversion; covered on tensorflow")
def test_cli_int8_warns_and_writes(tmp_path, capsys):
    from visionzoo.cli import main

    out_path = tmp_path / "q.tflite"
    assert main(["export", "poolformerv2_s12", "--input-size", "64", "64",
                 "--num-classes", "10", "--quantize", "int8", "--out", str(out_path)]) == 0
    captured = capsys.readouterr()
    assert "random images" in captured.err and "real" in captured.err
    assert "--quantize dynamic" in captured.err  # the no-calibration alternative
    assert out_path.is_file()
    assert "int8 ops:" in captured.out


@pytest.mark.skipif(not IN_PROCESS, reason="one more conversion; covered on tensorflow")
def test_cli_dynamic_needs_no_calibration(tmp_path, capsys):
    from visionzoo.cli import main

    out_path = tmp_path / "d.tflite"
    assert main(["export", "poolformerv2_s12", "--input-size", "64", "64",
                 "--num-classes", "10", "--quantize", "dynamic", "--out", str(out_path)]) == 0
    captured = capsys.readouterr()
    assert "calibrat" not in captured.err
    assert out_path.is_file()
    assert "dynamic" in captured.out and "ops with int8 weights:" in captured.out


# --------------------------------------------------------------------------------------
# 5. Multi-input models (DiT's denoiser is tested in test_dit.py on every backend)
# --------------------------------------------------------------------------------------


def two_input_model(dynamic_second=False):
    """Image (dynamic H/W) + integer index into a 7-row table; built from a dict."""
    img = keras.Input((None, None, 3), name="image")
    idx = keras.Input((None,) if dynamic_second else (), dtype="int32", name="index")
    x = keras.layers.GlobalAveragePooling2D(name="pool")(
        keras.layers.Conv2D(4, 3, strides=2, name="conv")(img))
    e = keras.layers.Embedding(7, 4, name="table")(idx)
    if dynamic_second:
        e = keras.layers.GlobalAveragePooling1D(name="mean")(e)
    return keras.Model({"index": idx, "image": img}, keras.layers.Add(name="add")([x, e]))


def test_multi_input_specs_examples_and_errors(tmp_path):
    keras.utils.set_random_seed(0)
    model = two_input_model()
    img, idx = export.example_inputs(model, batch=64, input_size=(16, 16))
    assert img.shape == (64, 16, 16, 3) and img.dtype == np.float32
    assert idx.dtype == np.int32 and 0 <= idx.min() and idx.max() < 7  # the table's rows
    assert len(set(idx.tolist())) >= 5
    _, specs = export._static_model(model, (16, 16))
    assert [(s["name"], s["shape"], s["dtype"]) for s in specs] == [
        ("image", [16, 16, 3], "float32"), ("index", [], "int32")]
    # Calibration data: one batch (list or dict), batches, (inputs, targets), callables.
    batch = [img[:4], idx[:4]]
    for data in (batch, {"image": img[:4], "index": idx[:4]},
                 [batch, {"image": img[4:8], "index": idx[4:8]}],
                 lambda: iter([(batch, np.zeros(4)), (batch, np.zeros(4))])):
        rep = export._representative_inputs(data, specs)
        assert [r.dtype for r in rep] == [np.float32, np.int32] and len(rep[0]) in (4, 8)
    with pytest.raises(ValueError, match="non-integer"):
        export._as_inputs([img[:2], np.array([0.5, 2.0])], specs, "check_input")
    with pytest.raises(ValueError, match="no entry for input 'index'"):
        export._as_inputs({"image": img[:2]}, specs, "check_input")
    with pytest.raises(ValueError, match="different batch sizes"):
        export._as_inputs([img[:2], idx[:3]], specs, "check_input")
    with pytest.raises(ValueError, match="dynamic dimension"):
        to_tflite(two_input_model(dynamic_second=True), tmp_path / "m.tflite",
                  input_size=(16, 16))
    assert os.listdir(tmp_path) == []


@pytest.mark.skipif(not IN_PROCESS, reason="one more conversion; test_dit covers JAX/torch")
def test_multi_input_export(tmp_path):
    keras.utils.set_random_seed(0)
    model = two_input_model()
    path = tmp_path / "two.tflite"
    report = to_tflite(model, path, input_size=(16, 16))
    assert report.inputs == [("image", (None, 16, 16, 3), "float32"),
                             ("index", (None,), "int32")]
    assert report.max_abs_diff <= 1e-3 * report.ref_max_abs, report.summary()
    assert_builtin_only(report, path)
    from ai_edge_litert.interpreter import Interpreter

    img, idx = images(3, 16, seed=5), np.array([6, 0, 3], "int32")
    got = Interpreter(model_path=str(path)).get_signature_runner()(image=img, index=idx)
    ref = keras.ops.convert_to_numpy(model({"image": img, "index": idx}))
    assert np.max(np.abs(got["output_0"] - ref)) <= 1e-3 * np.max(np.abs(ref))


@pytest.mark.skipif(not IN_PROCESS, reason="one more conversion; the dynamic mode's "
                    "hand-off is covered by test_dynamic_export_int8_weights_float_activations")
def test_dynamic_export_two_inputs_table_and_depthwise(tmp_path):
    """Dynamic-range file of a model with an embedding table, a depthwise conv and a
    dense layer, each large enough (>= 1024 weights) for the converter to quantise: it
    loads, keeps its signature, follows Keras, and only the dense/conv products keep
    int8 weights."""
    keras.utils.set_random_seed(0)
    img = keras.Input((None, None, 3), name="image")
    idx = keras.Input((), dtype="int32", name="index")
    x = keras.layers.Conv2D(64, 3, name="conv")(img)
    x = keras.layers.DepthwiseConv2D(7, padding="same", name="dw")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dense(64, name="fc")(x)
    e = keras.layers.Embedding(300, 64, name="table")(idx)
    model = keras.Model({"index": idx, "image": img}, keras.layers.Add(name="add")([x, e]))
    path = tmp_path / "two_dynamic.tflite"
    report = to_tflite(model, path, quantize="dynamic", input_size=(16, 16))
    assert report.inputs == [("image", (None, 16, 16, 3), "float32"),
                             ("index", (None,), "int32")]
    assert_builtin_only(report, path)
    assert report.int8_weight_ops >= 2, report.summary()  # conv and fc (and DEQUANTIZE)
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    it = Interpreter(model_path=str(path), experimental_op_resolver_type=(
        OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES))
    it.allocate_tensors()
    dtypes = {t["index"]: t["dtype"] for t in it.get_tensor_details()}
    int8_in = sorted(d["op_name"] for d in it._get_ops_details()
                     if any(dtypes.get(i) == np.int8 for i in d["inputs"]))
    # The table stays int8 through GATHER (int8 rows out) and DEQUANTIZE: not hybrid ops,
    # so left alone; the depthwise conv got float32 weights back.
    assert int8_in == ["CONV_2D", "DEQUANTIZE", "FULLY_CONNECTED", "GATHER"], int8_in

    img_x, idx_x = images(3, 16, seed=5), np.array([299, 0, 17], "int32")
    got = Interpreter(model_path=str(path)).get_signature_runner()(image=img_x, index=idx_x)
    ref = keras.ops.convert_to_numpy(model({"image": img_x, "index": idx_x}))
    assert np.max(np.abs(got["output_0"] - ref)) <= 0.05 * np.max(np.abs(ref))
