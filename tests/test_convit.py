"""ConViT: GPSA layer, live timm parity, parameter counts, fixed size, TFLite."""

import keras
import numpy as np
import pytest

import visionzoo
from visionzoo.backbones import convit
from visionzoo.layers.gpsa import GatedPositionalSelfAttention, relative_patch_features
from visionzoo.registry import get_variant, list_models
from visionzoo.weights.verify import verify

from conftest import (BACKEND, assert_timm_parity, check_save_load_and_fit,
                     only_on_full_backend, requires_timm, timm_param_count)



def test_relative_features_equal_timm():
    requires_timm()
    import timm

    model = timm.create_model("convit_tiny")
    ref = model.blocks[0].attn.get_rel_indices(196)[0].numpy()
    np.testing.assert_array_equal(relative_patch_features(14), ref)


def test_timm_parity_tiny_every_backend():
    requires_timm()
    result = verify("timm:convit_tiny", verbose=False)
    print(result.table())
    assert result.ok, result.table()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["convit_small", "convit_base"])
def test_timm_parity_every_variant(name):
    only_on_full_backend()
    assert_timm_parity(name, batch=1)  # batch 2 is checked on the smallest variants


@pytest.mark.slow
@pytest.mark.parametrize("name", list_models("convit*"))
def test_parameter_counts_and_gmacs(name):
    only_on_full_backend("parameter counts are backend-independent; checked")
    requires_timm()
    from visionzoo.flops import count_macs

    v = get_variant(name)
    model = visionzoo.create_model(name)
    count = sum(int(np.prod(w.shape)) for w in model.weights)
    assert count == timm_param_count(name)
    # The paper rounds down to whole millions (27.8M -> "27M", 5.7M -> "6M").
    assert abs(count / 1e6 - float(v.published["params_m"])) < 1.0, count
    # Its FLOPs leave out the attention products; ours count them (2 * N^2 * C a block).
    n, dim, depth = 196, model.embed_dim, model.depth
    local = model.local_up_to_layer
    attention = 2 * dim * (local * n * n + (depth - local) * (n + 1) ** 2)
    gmacs = (count_macs(model) - attention) / 1e9
    assert abs(gmacs - v.published["gmacs"]) <= 0.08 * v.published["gmacs"], gmacs


def _mini(**kw):
    return convit.ConViT(embed_dim=32, depth=3, num_heads=2, local_up_to_layer=2,
                         img_size=64, **kw)


def test_gpsa_tflite_form_equals_the_layer():
    """Inside ``tflite_tracing(model)`` GPSA runs its TFLite form (precomputed gated
    positional map, scale folded onto the queries): the same values on every backend,
    with weights re-drawn so that no gate sits at its initial value."""
    from visionzoo.layers.lowering import tflite_tracing, traced_constants

    model = _mini(num_classes=4)
    rng = np.random.default_rng(0)
    model.set_weights([rng.standard_normal(w.shape).astype("float32") * 0.5
                       for w in model.get_weights()])
    x = rng.standard_normal((2, 64, 64, 3)).astype("float32")
    gpsa = [layer for layer in model._flatten_layers()
            if isinstance(layer, GatedPositionalSelfAttention)]
    assert len(gpsa) == 2
    plain = keras.ops.convert_to_numpy(model(x, training=False))
    with tflite_tracing(model):
        assert all(traced_constants(layer) is not None for layer in gpsa)
        traced = keras.ops.convert_to_numpy(model(x, training=False))
    assert traced_constants(gpsa[0]) is None
    np.testing.assert_allclose(traced, plain, rtol=1e-5, atol=1e-5 * np.abs(plain).max())
    constants = gpsa[0].tflite_constants()
    gate = 1.0 / (1.0 + np.exp(-keras.ops.convert_to_numpy(gpsa[0].gating_param)))
    np.testing.assert_allclose(constants["patch_gate"].ravel(), 1.0 - gate, rtol=1e-6)
    # Each head's positional map sums to its gate over the keys.
    np.testing.assert_allclose(constants["positional"].sum(-1),
                               np.broadcast_to(gate[None, :, None], (1, 2, 16)),
                               rtol=1e-5)


def test_class_token_enters_before_first_mhsa_block():
    model = _mini(num_classes=4)
    names = [layer.name for layer in model.layers]
    assert names.index("cls_token") == names.index("blocks-2-norm1") - 1
    assert model.get_layer("blocks-1-attn").output.shape == (None, 16, 32)
    assert model.get_layer("blocks-2-attn").output.shape == (None, 17, 32)


def test_fixed_input_size_and_heads():
    with pytest.raises(ValueError, match="only runs at 224x224"):
        visionzoo.create_model("convit_tiny", input_shape=(256, 256, 3))
    assert _mini(include_top=False).output.shape == (None, 17, 32)
    assert _mini(include_top=False, pooling="avg").output.shape == (None, 32)
    assert _mini(include_top=False, pooling="token").output.shape == (None, 32)
    with pytest.raises(ValueError, match="pooling"):
        _mini(include_top=False, pooling="mean")


def test_keras_roundtrip_and_fit(tmp_path):
    check_save_load_and_fit(_mini(num_classes=3, drop_path_rate=0.1), tmp_path, 64)


def test_tflite_export(tmp_path):
    if BACKEND != "tensorflow":
        pytest.skip("exported on the TensorFlow backend (other backends hand off to it)")
    from test_export import assert_builtin_only, xnnpack_outside

    model = visionzoo.create_model("convit_tiny")
    path = tmp_path / "convit_tiny.tflite"
    report = visionzoo.export.to_tflite(model, path, batch_size=1)
    assert report.max_abs_diff <= 1e-3 * report.ref_max_abs, report.summary()
    assert_builtin_only(report, path)
    # The class-token slice keeps its axis: XNNPACK runs the whole batch-1 file.
    assert xnnpack_outside(path) == (1, []), xnnpack_outside(path)
    # One SOFTMAX per block (12: the attention scores); the gated positional maps of the
    # 10 GPSA blocks are constants in the file, not 10 more SOFTMAX ops per inference.
    assert _op_counts(path)["SOFTMAX"] == 12


def _op_counts(path):
    import collections

    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(
        model_path=str(path),
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interpreter.allocate_tensors()
    return collections.Counter(d["op_name"] for d in interpreter._get_ops_details())
