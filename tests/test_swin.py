"""Swin v1/v2: shared window layers, live timm parity (default and other input sizes),
official/timm checkpoint layouts, table resizing, any input size, TFLite export."""

import numpy as np
import pytest

import keras

import visionzoo
from visionzoo.backbones import swin
from visionzoo.layers.window import (
    PatchMerging,
    WindowAttention,
    clamp_window,
    relative_position_index,
    resize_relative_bias_table,
    roll_2d,
    shifted_window_mask,
    window_partition,
    window_reverse,
)
from visionzoo.registry import get_variant, list_models
from visionzoo.weights import load_checkpoint
from visionzoo.weights.convert import CheckpointMismatchError
from visionzoo.weights.verify import verify

from conftest import (BACKEND, check_save_load_and_fit, published_count_ok, requires_timm,
                      timm_param_count)

FULL_PARITY_BACKEND = "torch"
SMALLEST = ["swin_tiny_patch4_window7_224", "swinv2_tiny_window8_256"]


def _np(x):
    return keras.ops.convert_to_numpy(x)


# --------------------------------------------------------------------------------------
# Window building blocks
# --------------------------------------------------------------------------------------


def _partition_6d(x, wh, ww):
    """The reference's 6-D formulation, in numpy."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // wh, wh, w // ww, ww, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, wh * ww, c)


@pytest.mark.parametrize("window", [(7, 7), (2, 4), (4, 2)])
def test_window_partition_and_reverse(window):
    wh, ww = window
    x = np.random.rand(2, 4 * wh, 3 * ww, 5).astype("float32")
    windows = _np(window_partition(x, window))
    np.testing.assert_array_equal(windows, _partition_6d(x, wh, ww))
    np.testing.assert_array_equal(_np(window_reverse(windows, window, 4 * wh, 3 * ww)), x)
    with pytest.raises(ValueError, match="divisible by the window"):
        window_partition(np.zeros((1, 5, 6, 2), "float32"), 4)


def test_roll_2d_equals_numpy_roll():
    x = np.random.rand(2, 9, 7, 3).astype("float32")
    for shift in [(3, -2), (-3, 3), (0, 5), (9, 0)]:
        np.testing.assert_array_equal(_np(roll_2d(x, *shift)), np.roll(x, shift, axis=(1, 2)))


def test_clamp_rule_per_axis():
    assert clamp_window((56, 56), 7, 3) == ((7, 7), (3, 3))
    assert clamp_window((7, 7), 7, 3) == ((7, 7), (0, 0))
    assert clamp_window((7, 14), 7, 3) == ((7, 7), (0, 3))
    assert clamp_window((4, 6), 8, 4) == ((4, 6), (0, 0))


def test_mask_and_index_equal_timm_buffers():
    requires_timm()
    import timm

    model = timm.create_model("swin_tiny_patch4_window7_224", img_size=(160, 224))
    for stage in model.layers:
        for block in stage.blocks:
            np.testing.assert_array_equal(relative_position_index(block.window_size),
                                          block.attn.relative_position_index.numpy())
            if any(block.shift_size):
                h, w = block.input_resolution
                hp = -(-h // block.window_size[0]) * block.window_size[0]
                wp = -(-w // block.window_size[1]) * block.window_size[1]
                np.testing.assert_array_equal(
                    shifted_window_mask(hp, wp, block.window_size, block.shift_size),
                    block.attn_mask.numpy())


@pytest.mark.parametrize("old, new", [(7, 12), (7, 8), (12, 24), (7, 5)])
def test_resize_table_equals_timm(old, new):
    requires_timm()
    import torch
    from timm.layers.pos_embed_rel import resize_rel_pos_bias_table

    table = np.random.rand((2 * old - 1) ** 2, 3).astype("float32")
    ours = resize_relative_bias_table(table, new)
    ref = resize_rel_pos_bias_table(torch.from_numpy(table), (new, new),
                                    ((2 * new - 1) ** 2, 3)).numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    np.testing.assert_array_equal(resize_relative_bias_table(table, old), table)


def test_window_attention_padding_masks_only_through_the_window():
    """On a grid that is not a multiple of the window, each output token depends only on
    tokens of its own (padded, shifted) window: perturbing a far-away token changes
    nothing."""
    layer = WindowAttention(2, 4, 2)
    x = np.random.rand(1, 10, 10, 8).astype("float32")
    y = _np(layer(x))
    x2 = x.copy()
    x2[0, 9, 9] += 5.0  # bottom-right corner
    y2 = _np(layer(x2))
    changed = np.abs(y2 - y).max(-1)[0] > 1e-6
    assert changed[9, 9] and not changed[0, 0] and not changed[4, 4]
    assert y.shape == x.shape


def test_patch_merging_odd_grid_and_order():
    x = np.random.rand(1, 5, 3, 4).astype("float32")
    layer = PatchMerging(out_dim=16)
    layer.build(x.shape)
    layer.reduction.kernel.assign(np.eye(16, dtype="float32"))
    layer.norm.gamma.assign(np.ones(16, "float32"))
    out = _np(layer(x))
    assert out.shape == (1, 3, 2, 16)
    pad = np.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
    cat = np.concatenate([pad[:, 0::2, 0::2], pad[:, 1::2, 0::2], pad[:, 0::2, 1::2],
                          pad[:, 1::2, 1::2]], -1)
    mean = cat.mean(-1, keepdims=True)
    ref = (cat - mean) / np.sqrt(cat.var(-1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(out, ref, atol=1e-5)


# --------------------------------------------------------------------------------------
# Parity against live timm
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SMALLEST)
@pytest.mark.parametrize("size", [None, "other"])
def test_timm_parity_smallest_every_backend(name, size):
    requires_timm()
    if size == "other":  # non-square, and (v2) a padded + shifted stage
        size = (224, 448) if name.startswith("swin_") else (128, 192)
    result = verify(f"timm:{name}", size=size, verbose=False)
    print(result.table())
    assert result.ok, result.table()


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in list_models("swin*") if n not in SMALLEST])
def test_timm_parity_every_variant(name):
    if BACKEND != FULL_PARITY_BACKEND:
        pytest.skip(f"full-size variants are checked on the {FULL_PARITY_BACKEND} backend")
    requires_timm()
    # One image: batch 2 is checked on the smallest variants, on every backend.
    result = verify(f"timm:{name}", verbose=False, batch=1)
    print(result.table())
    assert result.ok, result.table()


def _mini_timm(name, **kw):
    import timm

    from visionzoo.weights.timm_reference import randomize_

    model = timm.create_model(name, depths=(2, 2, 2, 2), embed_dim=32, num_heads=(1, 2, 4, 8),
                              **kw).eval()
    randomize_(model, 0)
    return model, {k: v.numpy() for k, v in model.state_dict().items()}


def _mini_ours(name, **kw):
    config = dict(swin.VARIANTS[name]["config"], depths=[2, 2, 2, 2], embed_dim=32,
                  num_heads=[1, 2, 4, 8])
    config.update(kw)
    return swin.SwinTransformer(**config)


def _to_official(state, model):
    """timm layout -> the microsoft/Swin-Transformer layout (with its stored buffers)."""
    import re

    out = {}
    for k, v in state.items():
        k = re.sub(r"^layers\.(\d+)\.downsample\.",
                   lambda m: f"layers.{int(m[1]) - 1}.downsample.", k)
        out[k.replace("head.fc.", "head.")] = v
    for i, stage in enumerate(model.layers):
        for j, block in enumerate(stage.blocks):
            prefix = f"layers.{i}.blocks.{j}"
            out[f"{prefix}.attn.relative_position_index"] = (
                block.attn.relative_position_index.numpy())
            if block.attn_mask is not None:
                out[f"{prefix}.attn_mask"] = block.attn_mask.numpy()
    return out


@pytest.mark.parametrize("name", SMALLEST)
def test_official_layout_loads_like_timm_layout(name):
    requires_timm()
    import torch

    ref_model, state = _mini_timm(name)
    size = get_variant(name).input_size
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = ref_model(x).numpy()
    official = _to_official(state, ref_model)
    assert swin.detect_layout(official) == "official"
    assert swin.detect_layout(state) == "timm"
    model = _mini_ours(name)
    load_checkpoint(model, official)
    out = model.predict(x.numpy().transpose(0, 2, 3, 1), verbose=0)
    assert np.abs(out - ref).max() <= 1e-4 * np.abs(ref).max()


def test_checkpoint_for_another_window_is_resized_like_timm():
    """A window-7 checkpoint into a window-8 model: tables are resized as timm's
    ``set_window_size`` does, and the outputs agree with timm's resized model."""
    requires_timm()
    import torch

    ref_model, state = _mini_timm("swin_tiny_patch4_window7_224", img_size=256)
    ref_model.set_input_size(img_size=(256, 256), window_size=8)
    x = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = ref_model(x).numpy()
    model = _mini_ours("swin_tiny_patch4_window7_224", window_size=8, img_size=256)
    load_checkpoint(model, state)
    table = model.get_layer("layers-0-blocks-0-attn").relative_position_bias_table
    assert tuple(table.shape) == (15 * 15, 1)
    out = model.predict(x.numpy().transpose(0, 2, 3, 1), verbose=0)
    assert np.abs(out - ref).max() <= 1e-4 * np.abs(ref).max()


def test_incomplete_checkpoint_is_refused_and_model_unchanged():
    model = _mini_ours("swinv2_tiny_window8_256", num_classes=10)
    before = [w.numpy().copy() for w in model.weights]
    state = {}
    from visionzoo.weights.convert import canonical_name

    for v in model.weights:
        state[canonical_name(v.path)] = np.ones(tuple(v.shape), "float32")
    state.pop("layers.2.blocks.1.attn.logit_scale")
    state["layers.0.blocks.0.attn.cpb_mlp.0.weight"] = np.zeros((512, 3), "float32")
    with pytest.raises(CheckpointMismatchError) as err:
        load_checkpoint(model, {k: v for k, v in state.items()})
    text = str(err.value)
    assert "layers.2.blocks.1.attn.logit_scale" in text and "cpb_mlp.0.weight" in text
    for w, b in zip(model.weights, before):
        np.testing.assert_array_equal(w.numpy(), b)


# --------------------------------------------------------------------------------------
# Model behaviour
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SMALLEST)
def test_any_input_size_pyramid_outputs(name):
    # 100x150: patch padding, odd grids before merging, windows padded and masked.
    model = _mini_ours(name, input_shape=(100, 150, 3), include_top=False)
    feats = model.features()
    out = feats.predict(np.random.rand(2, 100, 150, 3).astype("float32"), verbose=0)
    expected = {"P2": (25, 38), "P3": (13, 19), "P4": (7, 10), "P5": (4, 5)}
    for level, (h, w) in expected.items():
        dim = 32 * 2 ** (int(level[1]) - 2)
        assert out[level].shape == (2, h, w, dim), level
        assert np.isfinite(out[level]).all()


def test_open_input_shape_means_the_default_size():
    model = visionzoo.create_model("swin_tiny_patch4_window7_224", depths=[1, 1, 1, 1])
    assert tuple(model.input_shape) == (None, 224, 224, 3)
    model = visionzoo.create_model("swinv2_tiny_window8_256", depths=[1, 1, 1, 1],
                                   input_shape=(192, 320, 3), num_classes=3)
    assert model.predict(np.zeros((1, 192, 320, 3), "float32"), verbose=0).shape == (1, 3)


def test_include_top_false_and_pooling():
    model = _mini_ours("swin_tiny_patch4_window7_224", include_top=False, pooling="avg")
    assert model.output.shape == (None, 256)
    model = _mini_ours("swin_tiny_patch4_window7_224", include_top=False)
    assert model.output.shape == (None, 7, 7, 256)


def test_keras_save_load_and_fit(tmp_path):
    # Both versions round-trip; the fit check uses v1 (v2's post-norm blocks on 8 random
    # images need a schedule to lower the loss reliably within a few epochs).
    for name in SMALLEST:
        model = _mini_ours(name, num_classes=3, input_shape=(64, 64, 3), drop_path_rate=0.1)
        check_save_load_and_fit(model, tmp_path, 64, learning_rate=2e-4,
                                fit=name.startswith("swin_"))


def test_registry_and_applications():
    names = set(list_models("swin*"))
    for size in ["tiny", "small", "base", "large"]:
        assert f"swin_{size}_patch4_window7_224" in names
    assert {"swin_base_patch4_window12_384", "swin_large_patch4_window12_384",
            "swinv2_base_window12_192", "swinv2_large_window12to24_192to384"} <= names
    for size in ["tiny", "small", "base"]:
        assert {f"swinv2_{size}_window8_256", f"swinv2_{size}_window16_256"} <= names
    from visionzoo import applications

    assert applications.SwinTinyPatch4Window7_224.model_name == "swin_tiny_patch4_window7_224"
    assert (applications.SwinV2BaseWindow12to16_192to256.model_name
            == "swinv2_base_window12to16_192to256")
    v = get_variant("swinv2_base_window12to16_192to256")
    assert v.config["pretrained_window_sizes"] == [12, 12, 12, 6]
    assert v.weights["in22k_ft_in1k"]["url"].endswith("model.safetensors")
    assert get_variant("swin_large_patch4_window7_224").weights["in22k"]["num_classes"] == 21841




@pytest.mark.slow
@pytest.mark.parametrize("name", list_models("swin*"))
def test_parameter_counts_and_gmacs(name):
    if BACKEND != FULL_PARITY_BACKEND:
        pytest.skip(f"parameter counts are backend-independent; run on {FULL_PARITY_BACKEND}")
    requires_timm()
    from visionzoo.flops import count_macs

    v = get_variant(name)
    model = visionzoo.create_model(name)
    count = sum(int(np.prod(w.shape)) for w in model.weights)
    assert count == timm_param_count(name, num_classes=model.num_classes)
    assert published_count_ok(count, v.published["params_m"]), (count, v.published)
    gmacs, published = count_macs(model) / 1e9, v.published.get("gmacs")
    if published is None:  # the README prints no FLOPs for the 192 px 22k checkpoints
        return
    assert abs(gmacs - published) <= max(0.1, 0.02 * published), (gmacs, published)


# --------------------------------------------------------------------------------------
# TFLite
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SMALLEST)
def test_tflite_builtins_only_with_parity(name, tmp_path):
    if BACKEND != "tensorflow":
        pytest.skip("the full-size export runs on the TensorFlow backend (other backends "
                    "hand off to it; tests/test_export.py covers that path)")
    from test_export import assert_builtin_only, xnnpack_outside

    # One full-size conversion per model (each takes 15-40 s here): v1 with the default
    # dynamic batch, v2 with batch 1. Both versions share the window partition and the
    # patch merging, so each form is checked on the code of both.
    model = visionzoo.create_model(name)
    batch_size = None if name.startswith("swin_") else 1
    path = tmp_path / f"{name}.tflite"
    report = visionzoo.export.to_tflite(model, path, batch_size=batch_size)
    assert report.input_shape[0] == batch_size
    assert report.max_abs_diff <= 1e-3 * report.ref_max_abs, report.summary()
    assert_builtin_only(report, path)
    assert "TRANSPOSE" in report.op_names and not any("Flex" in o for o in report.op_names)
    if batch_size == 1:
        # Patch merging's 2x2 phases come from unit-stride slices when exported: strided
        # ones would run outside XNNPACK and cut a batch-1 file into 4 partitions.
        assert xnnpack_outside(path) == (1, []), xnnpack_outside(path)


@pytest.mark.parametrize("shape", [(2, 8, 6, 5), (1, 4, 4, 3)])
def test_patch_merging_phases_same_when_traced_for_tflite(shape):
    """The unit-stride form PatchMerging traces for TFLite gives the strided slices'
    values exactly, on every backend."""
    from visionzoo.layers.lowering import tflite_tracing
    from visionzoo.layers.window import _phases_on_channels

    x = np.random.default_rng(0).standard_normal(shape).astype("float32")
    plain = _np(_phases_on_channels(x))
    with tflite_tracing():
        traced = _np(_phases_on_channels(x))
    ref = np.concatenate([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2],
                          x[:, 1::2, 1::2]], axis=-1)
    np.testing.assert_array_equal(plain, ref)
    np.testing.assert_array_equal(traced, ref)
