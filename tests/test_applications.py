"""visionzoo.applications: generated keras.applications-style functions, their
argument checks, weights loading from files/tags, preprocess_input and
decode_predictions. Runs on every Keras backend; builds only small models at 64 px."""

import importlib.util
import inspect
import json
import os
import re

import keras
import numpy as np
import pytest

from visionzoo import applications, registry
from visionzoo.weights import load_checkpoint
from visionzoo.weights.convert import model_targets

SIZE = 64
SHAPE = (SIZE, SIZE, 3)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JSON_PATH = os.path.join(ROOT, "visionzoo", "data", "imagenet_class_index.json")

EXPECTED_PARAMS = [
    ("include_top", True), ("weights", None), ("input_tensor", None), ("input_shape", None),
    ("pooling", None), ("classes", 1000), ("classifier_activation", "softmax"), ("name", None),
]


def _images(n=2, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (n,) + SHAPE).astype("float32")


def _predict(model, x):
    # A direct call: for one small batch it is much cheaper than predict()'s compile.
    return keras.ops.convert_to_numpy(model(keras.ops.convert_to_tensor(x), training=False))


def _save_timm_npz(model, path):
    """Write ``model``'s weights as a timm-layout state dict (torch tensor layouts)."""
    state = {}
    for name, (variable, kind) in model_targets(model).items():
        value = keras.ops.convert_to_numpy(variable)
        if variable.path.split("/")[-1] == "kernel":
            if kind == "conv":
                value = value.transpose(3, 2, 0, 1)
            elif kind == "dense":
                value = value.T
        assert kind != "depthwise", "extend _save_timm_npz for depthwise kernels"
        state[name] = value
    np.savez(path, **state)


def _no_network(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("nothing should be downloaded")

    monkeypatch.setattr(registry, "fetch_weights", fail)
    import visionzoo.weights.download as download

    monkeypatch.setattr(download, "download", fail)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A random PoolFormerV2S12 at 64 px, its outputs, and its weights in two formats."""
    tmp = tmp_path_factory.mktemp("applications")
    model = applications.PoolFormerV2S12(input_shape=SHAPE)
    x = _images()
    h5 = str(tmp / "poolformerv2_s12.weights.h5")
    model.save_weights(h5)
    npz = str(tmp / "poolformerv2_s12_timm.npz")
    _save_timm_npz(model, npz)
    return {"model": model, "x": x, "y": _predict(model, x), "h5": h5, "npz": npz}


# --------------------------------------------------------------------------------------
# Generated functions
# --------------------------------------------------------------------------------------


# One test per group rather than parametrised cases: the shared conftest clears the
# Keras session after every test, which costs more than these checks themselves.
NAME_CASES = [
    ("caformer_s18", "CAFormerS18"),
    ("caformer_s18_384", "CAFormerS18_384"),
    ("convformer_b36_384", "ConvFormerB36_384"),
    ("poolformerv2_m48", "PoolFormerV2M48"),
    ("poolformer_s12", "PoolFormerS12"),
    ("identityformer_s24", "IdentityFormerS24"),
    ("randformer_m36", "RandFormerM36"),
]


def test_application_names():
    for model_name, expected in NAME_CASES:
        assert applications.application_name(model_name) == expected
        assert applications.APPLICATIONS[expected] == model_name


def test_every_variant_has_an_application():
    names = registry.list_models(task="classification")
    assert len(applications.APPLICATIONS) == len(names)
    exported = set(dir(applications))
    for model_name in names:
        function_name = applications.application_name(model_name)
        fn = getattr(applications, function_name)
        assert fn.__name__ == function_name
        assert fn.model_name == model_name
        assert function_name in applications.__all__ and function_name in exported
        params = inspect.signature(fn).parameters
        assert [(p.name, p.default) for p in params.values()] == EXPECTED_PARAMS
        assert all(p.kind is p.POSITIONAL_OR_KEYWORD for p in params.values())
        variant = registry.get_variant(model_name)
        doc = fn.__doc__
        assert f"``{model_name}``" in doc and f"{variant.input_size}x{variant.input_size}" in doc
        if "top1" in variant.published:  # 22k-only checkpoints publish no top-1
            assert f"{variant.published['top1']}%" in doc
        assert all(repr(tag) in doc for tag in variant.weights)
    from visionzoo.applications import CAFormerS18_384, PoolFormerV2M48  # noqa: F401


def test_all_variants_use_imagenet_normalisation():
    # preprocess_input is module-level, so it must fit every registered model.
    for model_name in registry.list_models(task="classification"):
        v = registry.get_variant(model_name)
        assert tuple(v.mean) == registry.IMAGENET_MEAN and tuple(v.std) == registry.IMAGENET_STD


# --------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------


def test_classifier_output(reference):
    model, y = reference["model"], reference["y"]
    assert model.name == "poolformerv2_s12"
    assert tuple(model.input_shape) == (None,) + SHAPE
    assert y.shape == (2, 1000)
    assert np.all(y >= 0)
    np.testing.assert_allclose(y.sum(axis=1), 1.0, atol=1e-5)


def test_no_top_pooling():
    x = _images(1)
    for pooling, shape in [(None, (2, 2, 512)), ("avg", (512,)), ("max", (512,))]:
        model = applications.IdentityFormerS12(include_top=False, pooling=pooling,
                                               input_shape=SHAPE, name=f"features_{pooling}")
        assert model.name == f"features_{pooling}"
        out = _predict(model, x)
        assert out.shape == (1,) + shape, pooling
        if pooling is not None:
            last = model.get_layer("stages-3-blocks-1-add2").output
            fmap = _predict(keras.Model(model.inputs, last), x)
            reduce = np.mean if pooling == "avg" else np.max
            np.testing.assert_allclose(out, reduce(fmap, axis=(1, 2)), rtol=1e-4, atol=1e-4)


def test_input_tensor_and_dynamic_default():
    inputs = keras.Input(SHAPE)
    model = applications.IdentityFormerS12(input_tensor=inputs, classifier_activation=None,
                                           classes=7)
    assert model.inputs[0] is inputs
    assert _predict(model, _images(1)).shape == (1, 7)


def test_intermediate_input_tensor_keeps_the_original_input():
    """keras.applications semantics: the model starts at the graph's own Input."""
    inputs = keras.Input(SHAPE)
    scaled = keras.layers.Rescaling(1 / 255.0)(inputs)
    model = applications.PoolFormerV2S12(input_tensor=scaled, classes=3)
    assert model.inputs[0] is inputs
    wrapped = keras.Model(inputs, model.output)  # connected end to end
    assert _predict(wrapped, _images(2)).shape == (2, 3)


# --------------------------------------------------------------------------------------
# Argument checks: all raise before anything is built or downloaded
# --------------------------------------------------------------------------------------


ERROR_CASES = [  # (function, kwargs, regex of the ValueError)
    ("PoolFormerV2S12", dict(weights="imagenet", classes=10),
     r"classes` should be 1000.*Received: classes=10"),
    ("CAFormerS18", dict(weights="in21k"), r"classes` should be 21841"),
    ("CAFormerS18", dict(weights="in21k", classes=21841, classifier_activation="relu"),
     r"Only `None` and `softmax`.*relu"),
    ("PoolFormerV2S12", dict(weights="imagenet", classifier_activation="sigmoid"),
     r"Only `None` and `softmax`"),
    ("PoolFormerV2S12", dict(pooling="sum"), r"`pooling`.*None, 'avg' or 'max'.*'sum'"),
    ("PoolFormerV2S12", dict(weights="in1kk"), r"'in1k'.*Received: weights='in1kk'.*"
                                              r"Did you mean 'in1k'"),
    ("CAFormerS18", dict(weights="in21kft1k"), r"'in21ft1k'.*Did you mean"),
    ("PoolFormerV2S12", dict(weights="/no/such/file.pth"), r"No file exists"),
    ("PoolFormerV2S12", dict(weights=3), r"`weights` argument"),
    ("PoolFormerV2S12", dict(weights="imagenet", input_shape=(SIZE, SIZE, 1)),
     r"3 channels.*\(64, 64, 1\)"),
    ("PoolFormerV2S12", dict(input_shape=(16, SIZE, 3)), r"at least 32x32"),
    ("PoolFormerV2S12", dict(input_shape=(SIZE, SIZE)), r"three integers"),
    ("RandFormerS12", dict(input_shape=SHAPE), r"only runs at 224x224"),
    ("PoolFormerV2S12", dict(classes=0), r"positive integer"),
    ("PoolFormerV2S12", dict(input_shape=(96, 96, 3), input_tensor="tensor"), r"disagree"),
]


def test_argument_errors(monkeypatch):
    _no_network(monkeypatch)

    def no_build(*args, **kw):
        raise AssertionError("the model should not be built")

    for fn, kwargs, match in ERROR_CASES:
        variant = registry.get_variant(getattr(applications, fn).model_name)
        monkeypatch.setattr(variant.module, "build", no_build)
        if kwargs.get("input_tensor") == "tensor":
            kwargs = dict(kwargs, input_tensor=keras.Input(SHAPE))
        with pytest.raises(ValueError, match=match):
            getattr(applications, fn)(**kwargs)


def test_file_weights_need_three_channels(reference, monkeypatch):
    _no_network(monkeypatch)
    with pytest.raises(ValueError, match="3 channels"):
        applications.PoolFormerV2S12(weights=reference["npz"], input_shape=(SIZE, SIZE, 1))


# --------------------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------------------


def test_weights_from_keras_file(reference):
    model = applications.PoolFormerV2S12(weights=reference["h5"], input_shape=SHAPE)
    np.testing.assert_allclose(_predict(model, reference["x"]), reference["y"],
                               rtol=1e-5, atol=1e-6)


def test_weights_from_timm_layout_file(reference):
    model = applications.PoolFormerV2S12(weights=reference["npz"], input_shape=SHAPE,
                                         classifier_activation=None)
    logits = _predict(model, reference["x"])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(keras.ops.softmax(logits)),
                               reference["y"], rtol=1e-4, atol=1e-6)


def test_weights_tag_resolves_through_fetch_weights(reference, monkeypatch):
    calls = []

    def fake_fetch(name, tag="in1k", progress=True):
        calls.append((name, tag))
        return reference["npz"]

    monkeypatch.setattr(registry, "fetch_weights", fake_fetch)
    model = applications.PoolFormerV2S12(weights="imagenet", include_top=False,
                                         pooling="avg", input_shape=SHAPE)
    assert calls == [("poolformerv2_s12", "in1k")]
    features = keras.Model(reference["model"].inputs,
                           reference["model"].get_layer("head-global_pool").output)
    np.testing.assert_allclose(_predict(model, reference["x"]),
                               _predict(features, reference["x"]), rtol=1e-4, atol=1e-5)


def test_class_mismatch_with_file_is_an_error(reference):
    with pytest.raises(ValueError, match="1000 classes but the model has 10"):
        applications.PoolFormerV2S12(weights=reference["npz"], classes=10, input_shape=SHAPE)
    # The same load on an existing 10-class model raises and leaves it untouched.
    model = applications.PoolFormerV2S12(classes=10, input_shape=SHAPE)
    before = [keras.ops.convert_to_numpy(w).copy() for w in model.weights]
    with pytest.raises(ValueError, match="left unchanged"):
        load_checkpoint(model, reference["npz"], on_class_mismatch="error")
    for b, w in zip(before, model.weights):
        np.testing.assert_array_equal(b, keras.ops.convert_to_numpy(w))


# --------------------------------------------------------------------------------------
# preprocess_input / decode_predictions
# --------------------------------------------------------------------------------------

MEAN = np.array(registry.IMAGENET_MEAN)
STD = np.array(registry.IMAGENET_STD)


def test_preprocess_input_numpy():
    x = np.random.default_rng(1).integers(0, 256, (2, 4, 5, 3)).astype("uint8")
    original = x.copy()
    out = applications.preprocess_input(x)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    np.testing.assert_allclose(out, (x / 255.0 - MEAN) / STD, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(x, original)
    white = applications.preprocess_input(np.full((1, 1, 3), 255.0, "float32"))
    np.testing.assert_allclose(white[0, 0], (1 - MEAN) / STD, rtol=1e-6)
    first = applications.preprocess_input(x.transpose(0, 3, 1, 2), data_format="channels_first")
    np.testing.assert_allclose(first, out.transpose(0, 3, 1, 2), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="3 channels"):
        applications.preprocess_input(np.zeros((1, 4, 4, 1)))
    with pytest.raises(ValueError, match="data_format"):
        applications.preprocess_input(x, data_format="nhwc")


def test_preprocess_input_tensor():
    x = np.random.default_rng(2).uniform(0, 255, (2, 3, 4, 4)).astype("float32")
    out = applications.preprocess_input(keras.ops.convert_to_tensor(x),
                                        data_format="channels_first")
    assert keras.ops.is_tensor(out)
    expected = (x / 255.0 - MEAN[:, None, None]) / STD[:, None, None]
    np.testing.assert_allclose(keras.ops.convert_to_numpy(out), expected, rtol=1e-5, atol=1e-5)


def test_decode_predictions():
    preds = np.zeros((3, 1000), "float32")
    preds[0, 0] = 1.0
    preds[1, 281] = 1.0
    preds[2, [5, 17, 999]] = [0.2, 0.7, 0.1]
    decoded = applications.decode_predictions(preds, top=3)
    assert len(decoded) == 3 and all(len(d) == 3 for d in decoded)
    assert decoded[0][0] == ("n01440764", "tench", 1.0)
    assert decoded[1][0][1] == "tabby" and decoded[1][0][2] == 1.0
    assert [d[1] for d in decoded[2]] == ["jay", "electric_ray", "toilet_tissue"]
    assert [d[2] for d in decoded[2]] == pytest.approx([0.7, 0.2, 0.1])
    as_tensor = applications.decode_predictions(keras.ops.convert_to_tensor(preds[:1]), top=1)
    assert as_tensor == [[("n01440764", "tench", 1.0)]]
    with pytest.raises(ValueError, match=r"\(2, 10\)"):
        applications.decode_predictions(np.zeros((2, 10)))
    with pytest.raises(ValueError, match=r"\(1000,\)"):
        applications.decode_predictions(np.zeros(1000))


def test_class_index_json():
    with open(JSON_PATH, encoding="utf-8") as f:
        raw = json.load(f)
    assert sorted(raw, key=int) == [str(i) for i in range(1000)]
    wnids = [raw[str(i)][0] for i in range(1000)]
    assert len(set(wnids)) == 1000 and all(re.fullmatch(r"n\d{8}", w) for w in wnids)
    assert raw["2"] == ["n01484850", "great_white_shark"]
    assert all(" " not in name for _, name in raw.values())
    index = applications.imagenet_class_index()
    assert index[281] == ("n02123045", "tabby")


def test_class_index_json_is_reproducible():
    pytest.importorskip("timm")
    spec = importlib.util.spec_from_file_location(
        "make_imagenet_class_index", os.path.join(ROOT, "tools", "make_imagenet_class_index.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert tool.main(["--check", "--output", JSON_PATH]) == 0
