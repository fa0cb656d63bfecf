"""Inception Transformer (sail-sg/iFormer): the official fixture, the frequency ramp,
positional-embedding resizing against torch, other input sizes, checkpoints, parameter
counts, TFLite."""

import json

import numpy as np
import pytest

import keras

import visionzoo
from visionzoo.backbones import iformer
from visionzoo.layers.inception_mixer import (HighFrequencyMixer, InceptionMixer,
                                              nearest_upsample)
from visionzoo.registry import get_variant, list_models, model_info
from visionzoo.weights import load_checkpoint
from visionzoo.weights.convert import CheckpointMismatchError
from visionzoo.weights.verify import verify

from conftest import (BACKEND, check_save_load_and_fit, only_on_full_backend, parity_fixture,
                     published_count_ok, requires_timm)

FIXTURE = "iformer_mini"


def _np(x):
    return keras.ops.convert_to_numpy(x)


def _run(model, x):
    # A direct call: for one small batch it is much cheaper than predict()'s compile.
    return keras.tree.map_structure(_np, model(keras.ops.convert_to_tensor(x),
                                               training=False))


def _fixture():
    path = parity_fixture(FIXTURE)
    with open(path[:-4] + ".json") as f:
        meta = json.load(f)
    data = np.load(path)
    state = {k[6:]: data[k] for k in data.files if k.startswith("param/")}
    return path, meta, data, state


def _mini(**kw):
    """The fixture's configuration (random weights)."""
    config = dict(embed_dims=[24, 48, 72, 96], depths=[1, 1, 2, 2], num_heads=[2, 4, 6, 8],
                  attention_heads=[1, 2, 3, 5, 6, 7], num_classes=10)
    config.update(kw)
    return iformer.InceptionTransformer(**config)


# --------------------------------------------------------------------------------------
# Official fixture
# --------------------------------------------------------------------------------------


def test_official_fixture_parity():
    result = verify(parity_fixture(FIXTURE), verbose=False)
    print(result.table())
    assert result.ok, result.table()
    assert {r.output for r in result.rows} == {"output", "output_stage1", "output_stage2",
                                               "output_stage3", "output_stage4"}


def test_frequency_ramp_and_layer_scales():
    """attention_heads is indexed by the global block index; low channels are the last
    ``attention_heads[i] * head_dim``; layer scales only in stages 3-4; pooling 2/2/1/1."""
    _, meta, _, state = _fixture()
    model = iformer.InceptionTransformer(**iformer.from_official_config(meta["config"]),
                                         input_shape=(64, 64, 3))
    c = meta["config"]
    names = {lyr.name for lyr in model.layers}
    index = 0
    for s, (depth, dim, heads) in enumerate(zip(c["depths"], c["embed_dims"],
                                                c["num_heads"])):
        for j in range(depth):
            mixer = model.get_layer(f"blocks{s + 1}-{j}-attn")
            assert isinstance(mixer, InceptionMixer)
            low = c["attention_heads"][index] * (dim // heads)
            assert (mixer.low_dim, mixer.high_dim) == (low, dim - low)
            assert mixer.pool_size == (2 if s < 2 else 1)
            # The official tensors have exactly these widths.
            key = f"blocks{s + 1}.{j}.attn.low_mixer.qkv.weight"
            assert state[key].shape == (3 * low, low)
            assert (f"blocks{s + 1}-{j}-layer_scale_1" in names) == (s >= 2)
            index += 1


# --------------------------------------------------------------------------------------
# Layers against torch
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("out_hw", [(14, 14), (10, 12), (4, 5), (7, 7), (23, 9)])
def test_pos_embed_resize_matches_torch_bilinear(out_hw):
    """Our resize = torch ``F.interpolate(mode="bilinear")`` (align_corners=False), the
    official ``_get_pos_embed`` rule, both for static sizes (numpy matrices) and for
    sizes known only at run time (keras-ops matrices)."""
    requires_timm()
    import torch

    rng = np.random.default_rng(0)
    pos = rng.standard_normal((1, 7, 7, 5)).astype("float32")
    ref = torch.nn.functional.interpolate(
        torch.from_numpy(pos).permute(0, 3, 1, 2), size=out_hw, mode="bilinear",
        align_corners=False).permute(0, 2, 3, 1).numpy()
    layer = iformer.ResizablePositionEmbedding(7)
    layer.build((None, None, None, 5))
    layer.pos_embed.assign(pos)
    h, w = out_hw
    static = _np(layer.resized(h, w))
    dynamic = _np(layer.resized(keras.ops.convert_to_tensor(h),
                                keras.ops.convert_to_tensor(w)))
    assert static.shape == ref.shape == dynamic.shape
    np.testing.assert_allclose(static, ref, atol=1e-5)
    np.testing.assert_allclose(dynamic, ref, atol=1e-5)
    # Same grid: the stored tensor itself.
    np.testing.assert_array_equal(_np(layer.resized(7, 7)), pos)


def test_high_mixer_max_pool_border_and_upsample_match_torch():
    """Max-pool padding never wins (torch pads with -inf); nearest x2 = torch Upsample."""
    requires_timm()
    import torch

    rng = np.random.default_rng(1)
    x = -np.abs(rng.standard_normal((2, 6, 8, 4))).astype("float32") - 1.0  # all < 0
    layer = HighFrequencyMixer()
    layer.build(x.shape)
    for w in layer.weights:
        w.assign(rng.standard_normal(w.shape).astype("float32") * 0.5)
    xt = torch.from_numpy(x).permute(0, 3, 1, 2)
    cx = torch.nn.functional.conv2d(
        xt[:, :2], torch.from_numpy(_np(layer.conv1.kernel).transpose(3, 2, 0, 1)))
    dw = _np(layer.proj1.kernel)  # (3, 3, C, 1)
    cx = torch.nn.functional.conv2d(cx, torch.from_numpy(dw.transpose(2, 3, 0, 1)),
                                    padding=1, groups=4)
    px = torch.nn.functional.max_pool2d(xt[:, 2:], 3, 1, 1)
    px = torch.nn.functional.conv2d(
        px, torch.from_numpy(_np(layer.proj2.kernel).transpose(3, 2, 0, 1)),
        torch.from_numpy(_np(layer.proj2.bias)))
    ref = torch.cat([torch.nn.functional.gelu(cx), torch.nn.functional.gelu(px)], 1)
    np.testing.assert_allclose(_np(layer(x)), ref.permute(0, 2, 3, 1).numpy(), atol=1e-5)

    up = torch.nn.Upsample(scale_factor=2)(xt).permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(_np(nearest_upsample(keras.ops.convert_to_tensor(x), 2)),
                                  up)


# --------------------------------------------------------------------------------------
# Input sizes and pyramid
# --------------------------------------------------------------------------------------


def test_other_input_sizes_resize_pos_embeds_and_dynamic_sizes_agree():
    """A model stored at 224 runs at 160x192: every pos_embed is resized with torch's
    rule; a (None, None) model gives the same numbers as the static ones."""
    _, meta, data, state = _fixture()
    kwargs = iformer.from_official_config(meta["config"])
    static = iformer.InceptionTransformer(**kwargs, input_shape=(160, 192, 3))
    load_checkpoint(static, state)
    x = np.random.default_rng(0).standard_normal((2, 160, 192, 3)).astype("float32")
    feats = _run(static.features(), x)
    for level, dim in zip(["P2", "P3", "P4", "P5"], [24, 48, 72, 96]):
        stride = 2 ** int(level[1])
        assert feats[level].shape == (2, 160 // stride, 192 // stride, dim)
    pos = static.get_layer("pos_embed2")
    resize = iformer.bilinear_resize_matrix
    expect = np.einsum("ih,bhwc,jw->bijc", resize(20, 28), data["param/pos_embed2"],
                       resize(24, 28))
    np.testing.assert_allclose(_np(pos.resized(20, 24)), expect, atol=1e-5)

    dynamic = iformer.InceptionTransformer(**kwargs, input_shape=(None, None, 3))
    load_checkpoint(dynamic, state)
    out_static = _run(static, x)
    np.testing.assert_allclose(_run(dynamic, x), out_static, atol=2e-4)
    if BACKEND == "tensorflow":  # a graph with unknown H, W: the keras-ops resize path
        import tensorflow as tf

        graph = tf.function(lambda t: dynamic(t, training=False), input_signature=[
            tf.TensorSpec((None, None, None, 3), tf.float32)])
        assert graph.get_concrete_function().outputs[0].shape.as_list() == [None, 10]
        np.testing.assert_allclose(graph(x).numpy(), out_static, atol=2e-4)
    # At the stored size the dynamic model reproduces the official outputs.
    ref_out = _run(dynamic, data["input"].transpose(0, 2, 3, 1))
    assert np.abs(ref_out - data["output"]).max() <= meta["tolerance"]


def test_unsupported_input_size_is_refused():
    with pytest.raises(ValueError, match="multiples of 16"):
        _mini(input_shape=(200, 224, 3))


def test_keras_roundtrip_and_fit(tmp_path):
    # Tensor shapes of the fixture's blocks (JAX compiles one initializer per shape);
    # the 224-px positional embeddings are resized to the 64-px grids.
    model = _mini(depths=[1, 1, 1, 1], attention_heads=[1, 2, 3, 6], input_shape=(64, 64, 3),
                  num_classes=3, drop_path_rate=0.1)
    check_save_load_and_fit(model, tmp_path, 64)


# --------------------------------------------------------------------------------------
# Checkpoints and registry
# --------------------------------------------------------------------------------------


def test_incomplete_checkpoint_is_refused_and_model_unchanged():
    _, meta, _, state = _fixture()
    del state["blocks3.1.attn.low_mixer.qkv.bias"]
    state["blocks2.0.attn.conv_fuse.weight"] = np.zeros((72, 1, 5, 5), "float32")
    state["blocks2.0.layer_scale_1"] = np.ones((48,), "float32")  # stages 1-2 have none
    model = iformer.InceptionTransformer(**iformer.from_official_config(meta["config"]),
                                         input_shape=(64, 64, 3))
    before = [w.numpy().copy() for w in model.weights]
    with pytest.raises(CheckpointMismatchError) as err:
        load_checkpoint(model, state)
    text = str(err.value)
    for key in ("low_mixer.qkv.bias", "conv_fuse.weight", "blocks2.0.layer_scale_1"):
        assert key in text, text
    assert [k for k, _ in err.value.missing] == ["blocks3.1.attn.low_mixer.qkv.bias"]
    assert [k for k, *_ in err.value.misshaped] == ["blocks2.0.attn.conv_fuse.weight"]
    for w, b in zip(model.weights, before):
        np.testing.assert_array_equal(w.numpy(), b)


def test_registry_names_do_not_shadow_timm_and_info_says_so():
    names = list_models("inception_transformer*")
    assert names == sorted(f"inception_transformer_{s}{r}" for s in ("small", "base", "large")
                           for r in ("", "_384"))
    assert not list_models("iformer*")  # timm's iformer_* is another network
    v = get_variant("inception_transformer_base_384")
    assert v.input_size == 384 and v.config["img_size"] == 384 and v.timm is None
    assert v.weights["in1k"]["url"] == ("https://huggingface.co/sail/dl2/resolve/main/"
                                        "iformer/iformer_base_384.pth")
    info = model_info("inception_transformer_small", compute=False)
    assert "not timm's iformer" in info["note"]
    from visionzoo import applications

    assert applications.InceptionTransformerSmall_384.model_name == \
        "inception_transformer_small_384"
    with pytest.raises(ValueError, match="not in timm"):
        verify("timm:inception_transformer_small", verbose=False)


@pytest.mark.slow
@pytest.mark.parametrize("name", list_models("inception_transformer*"))
def test_parameter_counts_and_gmacs(name):
    only_on_full_backend("parameter counts are backend-independent; checked")
    from visionzoo.flops import count_macs

    v = get_variant(name)
    model = visionzoo.create_model(name, input_shape=(v.input_size, v.input_size, 3))
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    published = v.published["params_m"]
    if v.input_size == 384:
        # The README prints the 224 px count for the 384 px models too; theirs differ
        # only by the larger stored positional embeddings.
        grids = [(384 // 4 >> i) ** 2 - (224 // 4 >> i) ** 2 for i in range(4)]
        extra = sum(g * d for g, d in zip(grids, v.config["embed_dims"]))
        assert published_count_ok(trainable - extra, published), (trainable, published)
    else:
        assert published_count_ok(trainable, published), (trainable, published)
    gmacs = count_macs(model) / 1e9
    assert abs(gmacs - v.published["gmacs"]) <= 0.02 * v.published["gmacs"], gmacs


def test_tflite_export(tmp_path):
    if BACKEND != "tensorflow":
        pytest.skip("exported on the TensorFlow backend (other backends hand off to it)")
    from test_export import assert_builtin_only

    model = _mini(input_shape=(64, 64, 3), img_size=96)  # pos_embeds resized 24 -> 16
    path = tmp_path / "inception_transformer.tflite"
    report = visionzoo.export.to_tflite(model, path)
    print(sorted(report.op_names), report.max_abs_diff, report.ref_max_abs)
    assert report.max_abs_diff <= 1e-3 * report.ref_max_abs, report.summary()
    assert_builtin_only(report, path)
    assert {"MAX_POOL_2D", "AVERAGE_POOL_2D", "DEPTHWISE_CONV_2D", "GELU"} <= set(
        report.op_names)
