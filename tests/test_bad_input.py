"""Bad input gets a clear error and leaves the model as it was.

Unknown names, too-small inputs, wrong channel counts, checkpoints of other models,
single missing/extra/mis-shaped tensors, corrupted/truncated files, unsafe pickles and
classifier-size changes. Checkpoints come from a mini MetaFormer (PoolFormerV2 layout,
depths 1-1-1-1) exported to timm layout by :func:`timm_state`, so every file is small.
"""

import torch  # noqa: F401  (torch/torchvision before TensorFlow: see conftest.py)
import torchvision  # noqa: F401

import random
import re
import warnings

import keras
import numpy as np
import pytest

import visionzoo
from visionzoo.backbones.metaformer import VARIANTS, MetaFormer
from visionzoo.registry import UnknownModelError, get_variant
from visionzoo.weights import load_checkpoint
from visionzoo.weights.convert import (CheckpointMismatchError, model_targets,
                                       plan_assignments)
from visionzoo.weights.readers import CheckpointReadError

MINI = {"depths": [1, 1, 1, 1], "dims": [16, 32, 48, 64]}
SHAPE = (64, 64, 3)


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def mini_model(variant="poolformerv2_s12", num_classes=10, **kwargs):
    """A depths-1-1-1-1 model with ``variant``'s architecture switches."""
    config = dict(VARIANTS[variant]["config"], **MINI)
    config.update(kwargs)
    return MetaFormer(**config, num_classes=num_classes, input_shape=SHAPE)


def timm_state(model, seed=None):
    """``model``'s variables as a timm-layout ``{key: float32 array}`` state dict.

    The inverse of the converter: Conv2D ``(kh,kw,I,O)->(O,I,kh,kw)``, depthwise
    ``(kh,kw,C,M)->(C*M,1,kh,kw)``, Dense ``(I,O)->(O,I)``. With ``seed``, values are
    replaced by random numbers of the same shapes, so they differ from any fresh init.
    """
    rng = None if seed is None else np.random.default_rng(seed)
    state = {}
    for name, (variable, kind) in model_targets(model).items():
        a = keras.ops.convert_to_numpy(variable)
        is_kernel = variable.path.split("/")[-1] in ("kernel", "depthwise_kernel")
        if is_kernel and kind == "conv":
            a = a.transpose(3, 2, 0, 1)
        elif is_kernel and kind == "depthwise":
            kh, kw, c, m = a.shape
            a = a.reshape(kh, kw, c * m, 1).transpose(2, 3, 0, 1)
        elif is_kernel and kind == "dense":
            a = a.T
        if rng is not None:
            a = rng.standard_normal(a.shape)
        state[name] = np.ascontiguousarray(a, dtype=np.float32)
    return state


def snapshot(model):
    return [keras.ops.convert_to_numpy(w).copy() for w in model.weights]


def assert_unchanged(model, before):
    after = snapshot(model)
    assert len(after) == len(before)
    for w, a, b in zip(model.weights, after, before):
        np.testing.assert_array_equal(a, b, err_msg=f"{w.path} changed")


def save(state, path):
    """Write a state dict as ``.pth`` (torch.save) or ``.safetensors``."""
    path = str(path)
    if path.endswith(".safetensors"):
        from safetensors.numpy import save_file

        save_file(state, path)
    else:
        torch.save({k: torch.from_numpy(v) for k, v in state.items()}, path)
    return path


def sections(message):
    """Split a CheckpointMismatchError message into {"missing"|"unexpected"|"mis-shaped": text}."""
    out, current = {}, None
    for line in message.splitlines():
        head = re.match(r"  (missing|unexpected|mis-shaped)\b", line)
        if head:
            current = head.group(1)
            out[current] = ""
        elif current and line.startswith("    "):
            out[current] += line.strip() + "\n"
    return out


@pytest.fixture(scope="module")
def mini_ckpt(tmp_path_factory):
    """A 1000-class mini PoolFormerV2 state dict with random values, and its .pth path."""
    state = timm_state(mini_model(num_classes=1000), seed=1)
    path = save(state, tmp_path_factory.mktemp("ckpt") / "mini.pth")
    return state, path


# --------------------------------------------------------------------------------------
# Names and shapes
# --------------------------------------------------------------------------------------


def test_unknown_model_name_suggests_close_matches():
    with pytest.raises(UnknownModelError, match=r"Unknown model 'caformer_s81'.*caformer_s18"):
        visionzoo.create_model("caformer_s81")
    with pytest.raises(UnknownModelError, match=r"Did you mean.*'poolformerv2_s12'"):
        get_variant("poolformer_v2_s12")
    with pytest.raises(UnknownModelError, match=r"list_models"):
        get_variant("definitely_not_a_model")


def test_input_below_minimum_names_the_minimum():
    with pytest.raises(ValueError, match=r"height 16 is below .*minimum of 32"):
        visionzoo.create_model("poolformerv2_s12", input_shape=(16, 16, 3))
    with pytest.raises(ValueError, match=r"width 20 is below .*minimum of 32"):
        visionzoo.create_model("poolformerv2_s12", input_shape=(64, 20, 3))


def test_wrong_channel_count_with_pretrained_weights(mini_ckpt):
    _, path = mini_ckpt
    with pytest.raises(ValueError, match=r"expect 3 input channels.*has 1"):
        visionzoo.create_model("poolformerv2_s12", weights=path, input_shape=(64, 64, 1),
                               **MINI)


def test_missing_checkpoint_file_and_unknown_tag(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"No checkpoint file"):
        visionzoo.create_model("poolformerv2_s12", weights=str(tmp_path / "nope.pth"))
    with pytest.raises(ValueError, match=r"Unknown weights 'in22k'.*in1k"):
        visionzoo.create_model("poolformerv2_s12", weights="in22k")


# --------------------------------------------------------------------------------------
# Checkpoints that do not fit
# --------------------------------------------------------------------------------------


def test_checkpoint_of_a_deeper_model_is_refused():
    """An s24-like checkpoint (two blocks in stage 0) into an s12-like model."""
    model = mini_model()
    state = timm_state(mini_model(depths=[2, 1, 1, 1]), seed=2)
    before = snapshot(model)
    with pytest.raises(CheckpointMismatchError) as info:
        load_checkpoint(model, state)
    parts = sections(str(info.value))
    assert set(parts) == {"unexpected"}
    assert "stages.0.blocks.1.mlp.fc1.weight (64, 16)" in parts["unexpected"]
    assert all(k.startswith("stages.0.blocks.1.") for k, _ in info.value.unexpected)
    assert "left unchanged" in str(info.value)
    assert_unchanged(model, before)


def test_convformer_checkpoint_into_poolformerv2_is_refused(tmp_path):
    """Another family member's layout: separable-conv mixers and an MLP head."""
    model = mini_model()
    path = save(timm_state(mini_model("convformer_s18"), seed=3),
                tmp_path / "convformer_mini.safetensors")
    before = snapshot(model)
    with pytest.raises(CheckpointMismatchError) as info:
        load_checkpoint(model, path)
    parts = sections(str(info.value))
    assert set(parts) == {"missing", "unexpected"}
    assert parts["missing"] == "head.fc.weight (10, 64)\nhead.fc.bias (10,)\n"
    assert "head.fc.fc1.weight (256, 64)" in parts["unexpected"]
    assert "stages.3.blocks.0.token_mixer.pwconv1.weight (128, 64)" in parts["unexpected"]
    assert {k for k, _ in info.value.missing} == {"head.fc.weight", "head.fc.bias"}
    assert_unchanged(model, before)


CASES = {
    # case: (edit the state dict, section, text that must appear there)
    "missing": (lambda s: s.pop("stages.2.blocks.0.res_scale1.scale"),
                "missing", "stages.2.blocks.0.res_scale1.scale (48,)"),
    "extra": (lambda s: s.__setitem__("stages.0.blocks.0.mlp.fc3.weight",
                                      np.ones((4, 4), np.float32)),
              "unexpected", "stages.0.blocks.0.mlp.fc3.weight (4, 4)"),
    "misshaped": (lambda s: s.__setitem__("stages.1.downsample.conv.weight",
                                          np.ones((32, 16, 5, 5), np.float32)),
                  "mis-shaped", "stages.1.downsample.conv.weight: checkpoint (32, 16, 5, 5) "
                                "vs model (32, 16, 3, 3) (torch layout)"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_one_bad_tensor_is_named_in_its_section(case):
    edit, section, text = CASES[case]
    model = mini_model()
    state = timm_state(model, seed=4)
    edit(state)
    before = snapshot(model)
    with pytest.raises(CheckpointMismatchError) as info:
        load_checkpoint(model, state)
    parts = sections(str(info.value))
    assert list(parts) == [section], str(info.value)
    assert parts[section] == text + "\n"
    assert_unchanged(model, before)
    # The rest of the checkpoint is fine: without the bad tensor it loads.
    load_checkpoint(model, timm_state(model, seed=4))


def test_depthwise_kernel_with_another_channel_count_is_misshaped():
    """A depthwise kernel that cannot be regrouped is reported, not a numpy crash."""
    model = mini_model("convformer_s18")
    key = "stages.0.blocks.0.token_mixer.dwconv.weight"
    state = timm_state(model, seed=5)
    assert state[key].shape == (32, 1, 7, 7)
    state[key] = np.ones((30, 1, 7, 7), np.float32)
    before = snapshot(model)
    with pytest.raises(CheckpointMismatchError) as info:
        load_checkpoint(model, state)
    assert sections(str(info.value)) == {
        "mis-shaped": f"{key}: checkpoint (30, 1, 7, 7) vs model (32, 1, 7, 7) (torch layout)\n"}
    del state[key]
    with pytest.raises(CheckpointMismatchError) as info:
        load_checkpoint(model, state)
    assert sections(str(info.value)) == {"missing": f"{key} (32, 1, 7, 7)\n"}
    assert_unchanged(model, before)


def test_two_checkpoint_keys_for_one_variable_are_refused():
    """Keys that rename to the same variable must not silently overwrite each other."""
    model = mini_model()
    state = timm_state(model, seed=6)
    state["old_stem.conv.bias"] = state["stem.conv.bias"] + 1
    with pytest.raises(CheckpointMismatchError) as info:
        plan_assignments(model, state, key_map=[(r"^old_stem\.", "stem.")], layout="test")
    assert info.value.unexpected == [("old_stem.conv.bias (a second tensor for stem.conv.bias)",
                                      (16,))]
    assert not info.value.missing and not info.value.misshaped


def test_checkpoint_of_an_unknown_layout_is_refused():
    model = mini_model()
    before = snapshot(model)
    state = {"conv1.weight": np.ones((64, 3, 7, 7), np.float32),
             "fc.weight": np.ones((10, 64), np.float32)}
    with pytest.raises(ValueError, match=r"not in a layout MetaFormer knows.*conv1\.weight"):
        load_checkpoint(model, state)
    assert_unchanged(model, before)


# --------------------------------------------------------------------------------------
# Files that are not checkpoints
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_corrupted_or_truncated_file(tmp_path, mini_ckpt, suffix, damage):
    state, _ = mini_ckpt
    good = save(state, tmp_path / f"good{suffix}")
    data = open(good, "rb").read()
    if damage == "garbage":
        data = random.Random(0).randbytes(len(data))
    elif damage == "truncated":
        data = data[:len(data) - 1000]  # header intact, tensor data cut short
    else:
        data = b""
    bad = tmp_path / f"bad{suffix}"
    bad.write_bytes(data)
    model = mini_model(num_classes=1000)
    before = snapshot(model)
    with pytest.raises(CheckpointReadError, match=r"not a readable .*(corrupted|truncated)"):
        load_checkpoint(model, bad)
    assert_unchanged(model, before)


CALLED = []


def _side_effect():
    """What a malicious pickle would run on load; the safe reader never calls it."""
    CALLED.append(True)
    return "pwned"


class Exploit:
    def __reduce__(self):
        return (_side_effect, ())


class TrainerState:
    """An arbitrary Python object, as training scripts like to save."""

    def __init__(self):
        self.epoch = 3


@pytest.mark.parametrize("payload", ["wrapped_object", "object_in_state_dict", "reduce"])
def test_pickle_with_python_objects_is_refused(tmp_path, mini_ckpt, payload):
    state, _ = mini_ckpt
    tensors = {k: torch.from_numpy(v) for k, v in state.items()}
    obj = {"wrapped_object": {"model": TrainerState()},
           "object_in_state_dict": dict(tensors, trainer=TrainerState()),
           "reduce": dict(tensors, **{"head.fc.bias": Exploit()})}[payload]
    path = tmp_path / "unsafe.pth"
    torch.save(obj, path)
    model = mini_model(num_classes=1000)
    before = snapshot(model)
    with pytest.raises(CheckpointReadError,
                       match=r"refused to unpickle.*weights_only=True.*(TrainerState|_side_effect)"):
        load_checkpoint(model, path)
    assert not CALLED
    assert_unchanged(model, before)


def test_safetensors_bfloat16_is_read(tmp_path, mini_ckpt):
    """bfloat16 tensors (numpy has no such dtype) load, widened to float32."""
    from safetensors.torch import save_file

    state, _ = mini_ckpt
    bf16 = {k: torch.from_numpy(v).to(torch.bfloat16) for k, v in state.items()}
    path = str(tmp_path / "bf16.safetensors")
    save_file(bf16, path)
    model = mini_model(num_classes=1000)
    load_checkpoint(model, path)
    loaded = timm_state(model)
    for key, value in bf16.items():
        np.testing.assert_array_equal(loaded[key], value.float().numpy(), err_msg=key)


# --------------------------------------------------------------------------------------
# Classifier size changes
# --------------------------------------------------------------------------------------


def test_other_class_count_loads_all_but_the_classifier(mini_ckpt):
    state, path = mini_ckpt
    with pytest.warns(UserWarning, match=r"1000 classes but the model has 10.*'head\.fc'"):
        model = visionzoo.create_model("poolformerv2_s12", weights=path, num_classes=10,
                                       input_shape=SHAPE, **MINI)
    loaded = timm_state(model)
    assert loaded["head.fc.weight"].shape == (10, 64)
    for key, value in state.items():
        if not key.startswith("head.fc."):
            np.testing.assert_array_equal(loaded[key], value, err_msg=key)


def test_other_class_count_is_an_error_when_asked(mini_ckpt):
    state, _ = mini_ckpt
    model = mini_model(num_classes=10)
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"1000 classes but the model has 10.*include_top=False"):
        load_checkpoint(model, state, on_class_mismatch="error")
    assert_unchanged(model, before)


def test_headless_model_loads_a_full_checkpoint(mini_ckpt):
    state, path = mini_ckpt
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        model = visionzoo.create_model("poolformerv2_s12", weights=path, include_top=False,
                                       pooling="avg", input_shape=SHAPE, **MINI)
    loaded = timm_state(model)
    assert not any(k.startswith("head.") for k in loaded)
    for key, value in loaded.items():
        np.testing.assert_array_equal(value, state[key], err_msg=key)
    assert tuple(model.output.shape) == (None, 64)
