"""SHViT: live timm parity, the official checkpoint layout, parameter counts, the deploy
(re-parameterised) form, pyramid outputs and TFLite."""

import re

import numpy as np
import pytest

import keras

import visionzoo
from visionzoo.backbones import shvit
from visionzoo.registry import get_variant, list_models
from visionzoo.weights import load_checkpoint
from visionzoo.weights.convert import CheckpointMismatchError, model_targets
from visionzoo.weights.verify import verify

from conftest import (BACKEND, assert_timm_parity, check_save_load_and_fit,
                     only_on_full_backend, requires_timm, timm_param_count)

MINI = dict(embed_dim=(16, 24, 32), depth=(1, 2, 1), partial_dim=(8, 8, 12),
            qk_dim=(4, 4, 4), types=("i", "s", "s"))


def _mini(**kw):
    return shvit.SHViT(**MINI, **kw)


def _randomize(model, seed=0):
    """Every variable re-drawn, BatchNorm statistics included (variances positive)."""
    rng = np.random.default_rng(seed)
    for v in model.weights:
        leaf = v.path.rsplit("/", 1)[-1]
        shape = tuple(v.shape)
        if leaf in ("moving_variance", "gamma"):
            value = rng.uniform(0.5, 1.5, shape)
        elif leaf in ("moving_mean", "beta", "bias"):
            value = rng.normal(0, 0.1, shape)
        else:
            fan_in = max(int(np.prod(shape[:-1])), 1)
            value = rng.normal(0, fan_in ** -0.5, shape)
        v.assign(value.astype("float32"))
    return model


def test_timm_parity_s1_every_backend():
    requires_timm()
    result = verify("timm:shvit_s1", verbose=False)
    print(result.table())
    assert result.ok, result.table()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["shvit_s2", "shvit_s3", "shvit_s4"])
def test_timm_parity_every_variant(name):
    only_on_full_backend()
    assert_timm_parity(name, batch=1)  # batch 2 is checked on the smallest variants


@pytest.mark.slow
@pytest.mark.parametrize("name", list_models("shvit*"))
def test_parameter_counts_and_gmacs(name):
    only_on_full_backend("parameter counts are backend-independent; checked")
    requires_timm()
    v = get_variant(name)
    info = visionzoo.model_info(name)
    assert info["params"] == timm_param_count(name)
    # The README truncates to 0.1M (11.48M prints as 11.4M, 16.59M as 16.5M).
    assert int(info["params"] / 1e5) / 10 == float(v.published["params_m"]), info["params"]
    assert abs(info["gmacs"] - v.published["gmacs"]) <= 0.01 * v.published["gmacs"], info


def _official_key(key):
    """timm key -> ysj9909/SHViT key (written from the official module tree)."""
    m = re.match(r"^stages\.(\d)\.downsample\.(\d)\.(.*)$", key)
    if m:
        stage, part, rest = int(m[1]), int(m[2]), m[3]
        where = {0: "0.0", 1: "0.1", 2: "1", 3: "2.0", 4: "2.1"}[part]
        return f"blocks{stage + 1}.{where}.{rest}"
    m = re.match(r"^stages\.(\d)\.blocks\.(\d+)\.(.*)$", key)
    if m:
        stage, index, rest = int(m[1]), int(m[2]), m[3]
        return f"blocks{stage + 1}.{index + (3 if stage else 0)}.{rest}"
    return key


def _torch_state(model):
    """Our weights as a torch-layout state dict under timm's names."""
    from visionzoo.weights.convert import torch_shape

    state = {}
    for name, (var, kind) in model_targets(model).items():
        value = keras.ops.convert_to_numpy(var)
        if var.path.endswith("kernel"):
            if kind == "conv":
                value = value.transpose(3, 2, 0, 1)
            elif kind == "depthwise":
                value = value.transpose(2, 3, 0, 1)
            elif kind == "dense":
                value = value.T
        assert value.shape == torch_shape(var.shape, kind, var.path.endswith("kernel"))
        state[name] = value
    return state


def test_official_layout_loads_like_timm_layout():
    source = _randomize(_mini(num_classes=5), seed=1)
    x = np.random.rand(2, 96, 96, 3).astype("float32")
    ref = source.predict(x, verbose=0)
    timm_state = _torch_state(source)
    official = {_official_key(k): v for k, v in timm_state.items()}
    # Official SE/1x1 weights sometimes come as 2-D matrices (build.py reshapes them).
    se = next(k for k in official if k.endswith("se.fc1.weight"))
    official[se] = official[se][:, :, 0, 0]
    assert any(k.startswith("blocks2.0.0.m.c") for k in official)
    assert any(k.startswith("blocks2.3.mixer") for k in official)
    official["blocks1.0.conv.m.bn.num_batches_tracked"] = np.array(3)
    for state, layout in ((timm_state, "timm"), (official, "official")):
        assert shvit.detect_layout(state) == layout
        target = _mini(num_classes=5)
        load_checkpoint(target, state)
        np.testing.assert_allclose(target.predict(x, verbose=0), ref, rtol=1e-5, atol=1e-5)


def test_mismatched_checkpoint_lists_keys_and_changes_nothing():
    model = _mini(num_classes=5)
    before = [keras.ops.convert_to_numpy(w).copy() for w in model.weights]
    state = _torch_state(_randomize(_mini(num_classes=5)))
    state.pop("stages.1.blocks.0.mixer.m.qkv.c.weight")
    state["stages.1.blocks.0.mixer.m.extra.weight"] = np.zeros(3, "float32")
    with pytest.raises(CheckpointMismatchError) as err:
        load_checkpoint(model, state)
    text = str(err.value)
    assert "stages.1.blocks.0.mixer.m.qkv.c.weight" in text
    assert "stages.1.blocks.0.mixer.m.extra.weight" in text
    for w, b in zip(model.weights, before):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(w), b)


def test_reparameterize_keeps_outputs_and_removes_batchnorm():
    model = _randomize(_mini(num_classes=7), seed=2)
    deploy = visionzoo.reparameterize(model)
    assert deploy.deploy and not model.deploy
    assert not any(isinstance(layer, keras.layers.BatchNormalization)
                   for layer in deploy.layers)
    # One conv per Conv+BN, no residual add around the depthwise convs.
    assert "stages-0-blocks-0-conv-add" not in [layer.name for layer in deploy.layers]
    assert deploy.count_params() < model.count_params()
    for side in (96, 130):
        x = np.random.rand(2, side, side, 3).astype("float32")
        ref = model.predict(x, verbose=0)
        out = deploy.predict(x, verbose=0)
        assert np.max(np.abs(out - ref)) <= 1e-5 * np.max(np.abs(ref))
    with pytest.raises(ValueError, match="already in deploy form"):
        visionzoo.reparameterize(deploy)
    with pytest.raises(TypeError, match="no deploy form"):
        visionzoo.reparameterize(keras.Sequential([keras.layers.Dense(2)]))


def test_reparameterize_equals_timm_fuse():
    requires_timm()
    only_on_full_backend("one backend is enough for the fused-timm comparison")
    import timm
    import torch

    from visionzoo.weights.timm_reference import randomize_

    ref = timm.create_model("shvit_s1").eval()
    randomize_(ref, 3)
    model = visionzoo.create_model("shvit_s1", input_shape=(224, 224, 3))
    load_checkpoint(model, {k: v.numpy() for k, v in ref.state_dict().items()})
    deploy = visionzoo.reparameterize(model)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        fused = ref.fuse()(x).numpy()
    out = deploy.predict(x.numpy().transpose(0, 2, 3, 1), verbose=0)
    assert np.max(np.abs(out - fused)) <= 1e-4 * np.max(np.abs(fused))


def test_pyramid_outputs_and_any_input_size():
    model = _mini(include_top=False)
    feats = model.features()
    outs = feats.predict(np.random.rand(1, 100, 60, 3).astype("float32"), verbose=0)
    # torch's k3 s2 p1 convs: ceil(n / 2) per stride-2 step.
    assert {k: v.shape for k, v in outs.items()} == {
        "P4": (1, 7, 4, 16), "P5": (1, 4, 2, 24), "P6": (1, 2, 1, 32)}
    assert _mini(include_top=False, pooling="avg").output.shape == (None, 32)
    with pytest.raises(ValueError, match="partial_dim"):
        shvit.SHViT(**dict(MINI, partial_dim=(8, 30, 12)))
    with pytest.raises(ValueError, match="types"):
        shvit.SHViT(**dict(MINI, types=("i", "x", "s")))


def test_keras_roundtrip_and_fit(tmp_path):
    model = _mini(num_classes=3)
    check_save_load_and_fit(model, tmp_path, 64, fit=False)
    # BatchNorm everywhere: judge training by the training-mode loss (the moving
    # statistics of 8 samples lag behind the batch statistics a few steps in).
    x = np.random.rand(8, 64, 64, 3).astype("float32")
    y = np.arange(8) % 3
    model.compile(optimizer=keras.optimizers.AdamW(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    losses = model.fit(x, y, epochs=6, batch_size=8, verbose=0).history["loss"]
    assert losses[-1] < losses[0], losses
    deploy = visionzoo.reparameterize(model)
    (tmp_path / "d").mkdir()
    check_save_load_and_fit(deploy, tmp_path / "d", 64, fit=False)


def test_tflite_export_both_forms(tmp_path):
    if BACKEND != "tensorflow":
        pytest.skip("exported on the TensorFlow backend (other backends hand off to it)")
    from test_export import assert_builtin_only

    model = _randomize(shvit.SHViT(**MINI, num_classes=10, input_shape=(128, 128, 3)))
    for form in (model, visionzoo.reparameterize(model)):
        path = tmp_path / f"shvit_{'deploy' if form.deploy else 'train'}.tflite"
        report = visionzoo.export.to_tflite(form, path)
        assert report.max_abs_diff <= 1e-4 * report.ref_max_abs, report.summary()
        assert_builtin_only(report, path)
