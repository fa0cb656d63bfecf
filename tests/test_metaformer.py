"""MetaFormer family: parity (official fixtures, live timm), parameter counts,
pyramid outputs, any input size."""

import numpy as np
import pytest

import keras

import visionzoo
from visionzoo.backbones import metaformer
from visionzoo.registry import get_variant, list_models
from visionzoo.weights.verify import verify

from conftest import (BACKEND, parity_fixture, published_count_ok, requires_timm,
                      timm_param_count)

FIXTURES = ["poolformer_v1_mini", "identityformer_mini", "randformer_mini", "poolformerv2_mini"]
SMALLEST = ["poolformerv2_s12", "convformer_s18", "caformer_s18"]
# This family's variants only (other families have their own test files).
FAMILY_MODELS = [n for n in list_models() if get_variant(n).module is metaformer]
TIMM_VARIANTS = sorted({get_variant(n).timm for n in FAMILY_MODELS if get_variant(n).timm})
# Every timm-backed variant runs on one backend (torch-backend Keras runs eagerly, which
# is the quickest for one forward pass of a large model); the smallest ones on all three.
FULL_PARITY_BACKEND = "torch"


@pytest.mark.parametrize("fixture", FIXTURES)
def test_official_fixture_parity(fixture):
    result = verify(parity_fixture(fixture), verbose=False)
    print(result.table())
    assert result.ok, result.table()
    assert {r.output for r in result.rows} == {"output", "output_stage1", "output_stage2",
                                               "output_stage3", "output_stage4"}


@pytest.mark.parametrize("name", SMALLEST)
def test_timm_parity_smallest_every_backend(name):
    requires_timm()
    result = verify(f"timm:{name}", size=(64, 96), verbose=False)
    print(result.table())
    assert result.ok, result.table()


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in TIMM_VARIANTS if n not in SMALLEST])
def test_timm_parity_every_variant(name):
    if BACKEND != FULL_PARITY_BACKEND:
        pytest.skip(f"full-size variants are checked on the {FULL_PARITY_BACKEND} backend")
    requires_timm()
    # One image: batch 2 is checked on the smallest variants, on every backend.
    result = verify(f"timm:{name}", size=(64, 64), verbose=False, batch=1)
    print(result.table())
    assert result.ok, result.table()


def test_verify_cli_batch_option(capsys):
    """``visionzoo verify timm:... --batch 1`` checks one image (the full-size variants'
    tests use that); a batch below one is refused before anything is built."""
    requires_timm()
    from visionzoo.cli import main

    assert main(["verify", "timm:poolformerv2_s12", "--size", "64", "80", "--batch", "1"]) == 0
    table = capsys.readouterr().out
    assert "(1, 1000)" in table and table.rstrip().endswith("PASS"), table
    with pytest.raises(ValueError, match="batch must be >= 1"):
        verify("timm:poolformerv2_s12", batch=0, verbose=False)


def test_timm_reference_subprocess_batch(tmp_path):
    """The torch-only child process ``verify`` uses when TensorFlow was imported first
    gives the in-process reference exactly, for the requested batch and size."""
    if BACKEND != FULL_PARITY_BACKEND:
        pytest.skip(f"backend-independent (torch side only); run on {FULL_PARITY_BACKEND}")
    requires_timm()
    import subprocess
    import sys

    from visionzoo.weights.timm_reference import reference

    out = tmp_path / "ref.npz"
    subprocess.run([sys.executable, "-m", "visionzoo.weights.timm_reference",
                    "poolformerv2_s12", str(out), "--size", "64", "48", "--batch", "3",
                    "--seed", "5"], check=True, timeout=300)
    x, y, state, _ = reference("poolformerv2_s12", (64, 48), seed=5, batch=3)
    with np.load(out) as data:
        assert data["input"].shape == (3, 3, 64, 48)
        np.testing.assert_array_equal(data["input"], x)
        np.testing.assert_array_equal(data["output"], y)
        assert sorted(k[6:] for k in data.files if k.startswith("param/")) == sorted(state)


def test_timm_v1_is_refused_with_reason():
    with pytest.raises(ValueError, match="different functions"):
        verify("timm:poolformer_s12", verbose=False)




@pytest.mark.slow
@pytest.mark.parametrize("name", FAMILY_MODELS)
def test_parameter_counts_match_published_and_timm(name):
    if BACKEND != FULL_PARITY_BACKEND:
        pytest.skip(f"parameter counts are backend-independent; run on {FULL_PARITY_BACKEND}")
    v = get_variant(name)
    model = visionzoo.create_model(name, input_shape=(v.input_size, v.input_size, 3))
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    frozen = sum(int(np.prod(w.shape)) for w in model.non_trainable_weights)
    published = v.published["params_m"]
    if "+" in published:  # RandFormer: trainable + frozen random matrices
        p_train, p_frozen = published.split("+")
        assert published_count_ok(trainable, p_train), (trainable, published)
        assert published_count_ok(frozen, p_frozen), (frozen, published)
    else:
        assert frozen == 0
        assert published_count_ok(trainable, published), (trainable, published)
    timm_name = v.timm or (name if name.startswith("poolformer_") else None)
    if timm_name:
        assert trainable == timm_param_count(timm_name)
    # Multiply-accumulates at the default size agree with the published GFLOPs, printed
    # with one decimal; the papers' counters differ by up to 0.1 G on element-wise ops
    # (PoolFormer-M48: 11.6 published for v1, 11.5 for the same MACs in v2).
    from visionzoo.flops import count_macs

    gmacs, published_gmacs = count_macs(model) / 1e9, v.published["gmacs"]
    assert abs(gmacs - published_gmacs) <= max(0.1, 0.015 * published_gmacs), (
        gmacs, published_gmacs)


def _mini(name, **kw):
    config = dict(metaformer.VARIANTS[name]["config"], depths=[1, 1, 1, 1], dims=[16, 32, 48, 64])
    return metaformer.MetaFormer(**config, **kw)


@pytest.mark.parametrize("name", ["poolformer_s12", "poolformerv2_s12", "caformer_s18"])
def test_any_input_size_and_dynamic_batch(name):
    model = _mini(name, num_classes=7)
    for shape in [(1, 32, 32, 3), (3, 61, 97, 3)]:
        y = model.predict(np.random.rand(*shape).astype("float32"), verbose=0)
        assert y.shape == (shape[0], 7)


def test_pyramid_outputs_and_features_only():
    model = _mini("convformer_s18", num_classes=5, input_shape=(96, 128, 3))
    assert list(model.pyramid_outputs) == ["P2", "P3", "P4", "P5"]
    feats = model.features()
    out = feats.predict(np.zeros((2, 96, 128, 3), "float32"), verbose=0)
    for level, dim in zip(["P2", "P3", "P4", "P5"], [16, 32, 48, 64]):
        stride = 2 ** int(level[1])
        assert out[level].shape == (2, 96 // stride, 128 // stride, dim)
    full = visionzoo.create_model("poolformerv2_s12", features_only=True)
    assert set(full.output) == {"P2", "P3", "P4", "P5"}


def test_include_top_false_pooling_and_activation():
    assert _mini("caformer_s18", include_top=False, input_shape=(64, 64, 3)).output.shape == (
        None, 2, 2, 64)
    assert _mini("caformer_s18", include_top=False, pooling="avg").output.shape == (None, 64)
    assert _mini("caformer_s18", include_top=False, pooling="max").output.shape == (None, 64)
    m = _mini("poolformer_s12", num_classes=4, classifier_activation="softmax")
    y = m.predict(np.random.rand(2, 32, 32, 3).astype("float32"), verbose=0)
    np.testing.assert_allclose(y.sum(-1), 1.0, rtol=1e-5)
    with pytest.raises(ValueError, match="pooling"):
        _mini("caformer_s18", include_top=False, pooling="mean")


def test_keras_save_load_roundtrip(tmp_path):
    model = _mini("caformer_s18", num_classes=3)
    x = np.random.rand(2, 64, 64, 3).astype("float32")
    y = model.predict(x, verbose=0)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), y, atol=1e-5)
    assert loaded.get_config() == model.get_config()


def test_fit_one_step_decreases_loss():
    model = _mini("convformer_s18", num_classes=3, drop_path_rate=0.1)
    model.compile(optimizer=keras.optimizers.AdamW(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = np.random.rand(8, 32, 32, 3).astype("float32")
    y = np.arange(8) % 3
    first = model.evaluate(x, y, verbose=0)
    model.fit(x, y, epochs=5, batch_size=8, verbose=0)
    assert model.evaluate(x, y, verbose=0) < first


def test_registry_lists_every_published_variant():
    names = set(list_models())
    for size in ["s12", "s24", "s36", "m36", "m48"]:
        for sub in ["poolformer", "poolformerv2", "identityformer", "randformer"]:
            assert f"{sub}_{size}" in names
    for size in ["s18", "s36", "m36", "b36"]:
        for sub in ["convformer", "caformer"]:
            assert {f"{sub}_{size}", f"{sub}_{size}_384"} <= names
    assert list_models("caformer_s*") == ["caformer_s18", "caformer_s18_384", "caformer_s36",
                                         "caformer_s36_384"]


def test_model_info_reports_measured_figures():
    info = visionzoo.model_info("poolformerv2_s12")
    assert info["params"] == 11_891_712
    assert abs(info["gmacs"] - 1.8) < 0.05
    assert info["preprocessing"]["crop_pct"] == 1.0
    assert info["weights"]["in1k"]["url"].endswith("poolformerv2_s12.pth")
    assert "metaformer" in info["reference_code"]
