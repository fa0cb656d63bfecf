"""Fine-tuning: data sources, the recipe's pieces, checkpoint/resume, outputs, CLI."""

import json
import os

import keras
import numpy as np
import pytest

from conftest import BACKEND
from visionzoo.training.data import Augment, Preprocessing, load_image_data
from visionzoo.training.finetune import finetune
from visionzoo.training.recipe import (LayerDecayAdamW, layer_decay_multipliers, layer_ids,
                                       make_optimizer)

PRE = Preprocessing(image_size=(16, 16), crop_pct=1.0)
TINY = {"depths": [1, 1], "dims": [8, 16], "token_mixers": "pooling",
        "block_norm": {"type": "groupnorm1", "epsilon": 1e-6, "center": False},
        "mlp_act": "gelu", "head_style": "linear", "res_scale_init_values": None}


def _digits(n=240):
    from sklearn.datasets import load_digits

    d = load_digits()
    pixels = (d.images[:n] * 16).clip(0, 255).astype(np.uint8)
    return pixels, d.target[:n]


def _tiny_model(num_classes=10, drop_path_rate=0.0):
    from visionzoo.backbones.metaformer import MetaFormer

    return MetaFormer(**TINY, drop_path_rate=drop_path_rate, num_classes=num_classes,
                      input_shape=(32, 32, 3), name="tiny")


def _h5_arrays(path):
    import h5py

    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()])
                     if isinstance(obj, h5py.Dataset) else None)
    return out


def _batches(ds):
    return [(x.numpy(), y.numpy()) for x, y in ds]


# -- data sources --------------------------------------------------------------------


def test_arrays_pipeline_is_deterministic_per_epoch():
    data = load_image_data(_digits(), PRE, batch_size=32, seed=3,
                           augment=Augment(randaugment=(1, 0.3), mixup=0.2, cutmix=0.5))
    assert data.num_classes == 10 and data.num_train + data.num_val == 240
    assert data.steps_per_epoch == data.num_train // 32
    spe = data.steps_per_epoch
    both = _batches(data.train_epochs(0, 2))  # epochs 0 and 1, as fit() gets them
    assert len(both) == 2 * spe
    a, b = both[spe:], _batches(data.train_dataset(1))  # epoch 1 again, as on resume
    x, y = a[0]
    assert x.shape == (32, 16, 16, 3) and x.dtype == np.float32 and y.shape == (32, 10)
    np.testing.assert_allclose(y.sum(-1), 1.0, rtol=1e-6)
    assert y.max(-1).min() < 1.0  # mixed targets
    for (xa, ya), (xb, yb) in zip(a, b):  # epoch 1 twice: identical
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    assert not np.array_equal(both[0][0], a[0][0])  # another epoch: other batches


def test_eval_pipeline_normalises_with_model_preprocessing():
    pixels, labels = _digits(60)
    pre = Preprocessing(image_size=(16, 16), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
                        crop_pct=1.0, interpolation="nearest")
    data = load_image_data((np.repeat(pixels[..., None], 3, -1), labels), pre,
                           batch_size=8, val_fraction=0.5, augment=Augment.none())
    x, y = data.val_arrays()
    assert x.shape == (data.num_val, 16, 16, 3)
    # Nearest 8 -> 16 doubles each pixel; (p/255 - 0.5) / 0.25.
    first = data._val.pixels[0]
    expect = (np.repeat(np.repeat(first, 2, 0), 2, 1) / 255.0 - 0.5) / 0.25
    np.testing.assert_allclose(x[0], expect, atol=1e-5)
    np.testing.assert_array_equal(y, data._val.labels)


def test_folder_source_with_train_val_subfolders(tmp_path):
    import cv2

    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("val", 2)):
        for cls in ("circle", "square"):
            os.makedirs(tmp_path / split / cls)
            for i in range(n):
                img = np.zeros((20, 24, 3), np.uint8)
                if cls == "circle":
                    cv2.circle(img, (12, 10), 6, (0, 0, 255), -1)  # BGR: red
                else:
                    cv2.rectangle(img, (6, 4), (18, 16), (255, 0, 0), -1)  # blue
                img[rng.integers(0, 20), rng.integers(0, 24)] = 255
                cv2.imwrite(str(tmp_path / split / cls / f"{i}.png"), img)
    (tmp_path / "train" / "circle" / "notes.txt").write_text("not an image")
    data = load_image_data(str(tmp_path), PRE, batch_size=4, augment=Augment.none())
    assert data.class_names == ["circle", "square"]
    assert (data.num_train, data.num_val) == (12, 4)
    x, y = data.val_arrays()
    assert x.shape == (4, 16, 16, 3) and list(y) == [0, 0, 1, 1]
    # Decoded as RGB: the circle is red, the square blue.
    mean = np.asarray(PRE.mean) * 255
    red = x[0] * np.asarray(PRE.std) * 255 + mean
    assert red[8, 8, 0] > 200 and red[8, 8, 2] < 50


def test_tfds_source_with_mock_data():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=40):
        data = load_image_data("tfds:mnist", PRE, batch_size=8, augment=Augment.none())
        assert data.num_classes == 10 and data.class_names[:2] == ["0", "1"]
        x, y = _batches(data.train_dataset(0))[0]
        assert x.shape == (8, 16, 16, 3) and y.shape == (8, 10)
        assert data.num_val == 40  # the test split
        sliced = load_image_data("tfds:mnist:train[:50%]", PRE, batch_size=4,
                                 augment=Augment.none())
        # An explicit split spec means no automatic validation split (mock_data ignores
        # the slice itself: every split has num_examples).
        assert sliced.num_train == 40 and sliced.num_val == 0


def test_bad_sources_say_what_is_wrong(tmp_path):
    with pytest.raises(FileNotFoundError, match="No data at"):
        load_image_data(str(tmp_path / "missing"), PRE)
    with pytest.raises(ValueError, match=r"\(N, H, W\[, C\]\)"):
        load_image_data((np.zeros((4, 8)), np.zeros(4, int)), PRE)
    with pytest.raises(ValueError, match="integer class ids"):
        load_image_data((np.zeros((4, 8, 8)), np.zeros(4)), PRE)
    np.savez(tmp_path / "d.npz", pics=np.zeros((4, 8, 8)))
    with pytest.raises(ValueError, match="'images' and 'labels'"):
        load_image_data(str(tmp_path / "d.npz"), PRE)
    with pytest.raises(ValueError, match="larger than"):
        load_image_data(_digits(20), PRE, batch_size=64)
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=4):
        with pytest.raises(ValueError, match="Did you mean 'mnist'"):
            load_image_data("tfds:mnistt", PRE)


# -- recipe ---------------------------------------------------------------------------


def test_layer_ids_follow_the_blocks():
    from visionzoo import create_model

    model = create_model("poolformerv2_s12", num_classes=5, input_shape=(32, 32, 3))
    ids, num_layers = layer_ids(model)
    assert num_layers == 12  # depths 2, 2, 6, 2
    assert ids["stem/conv/kernel"] == 0
    assert ids["stages-0-blocks-0-norm1/gamma"] == 1
    assert ids["stages-2-blocks-5-mlp/fc2/kernel"] == 10
    assert ids["stages-3-downsample/conv/kernel"] == 11  # with its stage's first block
    assert ids["head-fc/kernel"] == 13
    mult = layer_decay_multipliers(model, 0.5)
    assert mult["head-fc/kernel"] == 1.0 and mult["stem/conv/kernel"] == 0.5 ** 13


def test_layer_decay_scales_each_variables_step():
    """One AdamW step with layer decay moves every variable by exactly its multiplier
    times the undecayed step (Adam's first step is lr * g / (|g| + eps)), weight decay
    included."""
    keras.utils.set_random_seed(0)
    model = _tiny_model()
    x = np.random.default_rng(0).normal(size=(4, 32, 32, 3)).astype("float32")
    y = keras.utils.to_categorical([1, 2, 3, 4], 10)
    start = [v.numpy() for v in model.trainable_variables]
    deltas = {}
    for decay in (None, 0.5):
        for v, s in zip(model.trainable_variables, start):
            v.assign(s)
        opt = make_optimizer(model, 1e-2, total_steps=10, weight_decay=0.1, layer_decay=decay)
        assert isinstance(opt, LayerDecayAdamW) == (decay is not None)
        model.compile(optimizer=opt, loss=keras.losses.CategoricalCrossentropy(
            from_logits=True))
        model.train_on_batch(x, y)
        deltas[decay] = {v.path: v.numpy() - s
                         for v, s in zip(model.trainable_variables, start)}
    mult = layer_decay_multipliers(model, 0.5)
    assert min(mult.values()) == 0.125  # 2 blocks: stem 0.5**3, blocks 0.25, 0.5, head 1
    for path, d in deltas[None].items():
        if np.abs(d).max() > 1e-6:
            np.testing.assert_allclose(deltas[0.5][path], mult[path] * d, rtol=2e-3,
                                       atol=1e-9, err_msg=path)


def test_no_weight_decay_on_norms_biases_and_scales():
    model = _tiny_model()
    opt = make_optimizer(model, 1e-3, total_steps=10)
    decayed = {v.path for v in model.trainable_variables if opt._use_weight_decay(v)}
    assert decayed and all(len(v.shape) > 1 for v in model.trainable_variables
                           if v.path in decayed)
    assert "head-fc/kernel" in decayed and "head-fc/bias" not in decayed


# -- finetune ---------------------------------------------------------------------------


class _Interrupt(keras.callbacks.Callback):
    def __init__(self, epoch, batch):
        super().__init__()
        self.at = (epoch, batch)
        self.epoch = None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if (self.epoch, batch) == self.at:
            raise KeyboardInterrupt("simulated interruption")


def _run(out, callbacks=(), epochs=3):
    keras.utils.set_random_seed(0)
    return finetune(
        _tiny_model(drop_path_rate=0.2), _digits(), epochs=epochs, batch_size=32,
        learning_rate=3e-3, output_dir=out, val_fraction=0.2, ema_decay=0.9,
        # RandAugment's determinism is checked above (it takes ~15 s to trace on JAX).
        augment=Augment(hflip=0.5, randaugment=None, random_erasing=0.25, mixup=0.2,
                        cutmix=1.0),
        callbacks=callbacks, export_tflite=False, verbose=0, jit_compile=BACKEND == "jax")


def test_interrupted_run_resumes_to_the_same_weights(tmp_path):
    straight = _run(str(tmp_path / "straight"))
    with pytest.raises(KeyboardInterrupt):
        _run(str(tmp_path / "resumed"), callbacks=[_Interrupt(epoch=1, batch=2)])
    ckpt = tmp_path / "resumed" / "checkpoint"
    (ckpt / "epoch1.weights.h5").write_bytes((ckpt / "last.weights.h5").read_bytes())
    state = json.loads((tmp_path / "resumed" / "checkpoint" / "state.json").read_text())
    assert state["epoch"] == 1  # epoch 2 was cut short: nothing of it was kept
    assert not [f for f in os.listdir(tmp_path / "resumed" / "checkpoint") if ".tmp" in f]
    resumed = _run(str(tmp_path / "resumed"))
    assert [row["epoch"] for row in json.loads(
        (tmp_path / "resumed" / "checkpoint" / "state.json").read_text())["history"]] == [
        1, 2, 3]
    # The last checkpoints (model + optimizer + EMA after epoch 3) agree.
    last = [_h5_arrays(tmp_path / run / "checkpoint" / "last.weights.h5")
            for run in ("straight", "resumed")]
    assert last[0].keys() == last[1].keys() and len(last[0]) > 50
    moved = 0
    for key, value in last[0].items():
        np.testing.assert_allclose(last[1][key], value, rtol=1e-5, atol=1e-6, err_msg=key)
    first = _h5_arrays(tmp_path / "resumed" / "checkpoint" / "epoch1.weights.h5")
    moved = sum(not np.allclose(first[k], v, atol=1e-4) for k, v in last[0].items())
    assert moved > 20  # epochs 2-3 changed the weights: the comparison is not vacuous
    np.testing.assert_allclose(straight.history["loss"], resumed.history["loss"], rtol=1e-5)
    assert straight.best_epoch == resumed.best_epoch
    # The outputs a user gets at the end.
    out = tmp_path / "straight"
    for name in ("best.keras", "best.weights.h5", "history.csv", "curves.png",
                 "summary.json"):
        assert (out / name).stat().st_size > 0, name
    header = (out / "history.csv").read_text().splitlines()[0].split(",")
    assert {"epoch", "loss", "accuracy", "val_loss", "val_accuracy",
            "learning_rate"} <= set(header)
    reloaded = keras.saving.load_model(str(out / "best.keras"))
    x = np.random.default_rng(1).normal(size=(2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(reloaded.predict(x, verbose=0),
                               straight.model.predict(x, verbose=0), atol=1e-5)


def test_mixed_bfloat16_keeps_the_head_and_loss_in_float32(tmp_path):
    from visionzoo.training.recipe import float32_head, mixed_precision_scope

    with mixed_precision_scope("mixed_bfloat16"):
        model = _tiny_model()
    assert keras.config.dtype_policy().name == "float32"  # restored
    assert float32_head(model) == ["head-global_pool", "head-norm", "head-fc"]
    result = finetune(
        model, _digits(96), epochs=1, batch_size=16, output_dir=str(tmp_path),
        mixed_precision="mixed_bfloat16", layer_decay=0.8, clip_norm=1.0,
        augment=Augment.none(), export_tflite=False, verbose=0,
        jit_compile=BACKEND == "jax")
    model = result.model
    assert model.get_layer("stages-0-blocks-0-mlp").compute_dtype == "bfloat16"
    assert model.get_layer("head-fc").compute_dtype == "float32"
    assert all(v.dtype == "float32" for v in model.trainable_variables)
    x = np.random.default_rng(0).normal(size=(8, 32, 32, 3)).astype("float32")
    logits = model.predict(x, verbose=0)
    assert logits.dtype == np.float32 and np.isfinite(result.history["loss"]).all()
    saved = keras.saving.load_model(str(tmp_path / "best.keras"))  # a float32 copy
    assert saved.get_layer("stages-0-blocks-0-mlp").compute_dtype == "float32"
    reference = saved.predict(x, verbose=0)
    np.testing.assert_allclose(logits, reference, atol=0.05 * np.abs(reference).max())


def test_train_cli_writes_the_run_and_exports_tflite(tmp_path):
    if BACKEND != "tensorflow":
        pytest.skip("the CLI run and its TFLite export are checked on tensorflow")
    from visionzoo.cli import main

    pixels, labels = _digits(160)
    np.savez(tmp_path / "digits.npz", images=pixels, labels=labels)
    out = tmp_path / "run"
    code = main(["train", "poolformerv2_s12", "--data", str(tmp_path / "digits.npz"),
                 "--epochs", "1", "--batch-size", "16", "--image-size", "32",
                 "--lr", "1e-3", "--no-augment", "--out", str(out)])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_classes"] == 10 and summary["best_epoch"] == 1
    assert summary["tflite_bytes"] > 1e6
    assert summary["tflite_checked_images"] == summary["num_val"]
    assert summary["tflite_agreement"] >= 0.98  # the file predicts what Keras does
    assert abs(summary["tflite_val_accuracy"] - summary["best_val_accuracy"]) < 0.02
    assert (out / "best.tflite").exists() and (out / "curves.png").exists()


_PARALLEL = r"""
import json, sys
import numpy as np
import keras
from sklearn.datasets import load_digits
from visionzoo.backbones.metaformer import MetaFormer
from visionzoo.training.data import Augment
from visionzoo.training.finetune import finetune

TINY = json.loads(sys.argv[2])
d = load_digits()
data = ((d.images[:160] * 16).clip(0, 255).astype(np.uint8), d.target[:160])


def tiny():
    return MetaFormer(**TINY, num_classes=10, input_shape=(32, 32, 3), name="tiny")


runs = {}
for mode in (None, "data_parallel"):
    keras.utils.set_random_seed(0)
    r = finetune(tiny, data, epochs=2, batch_size=16, image_size=32,
                 learning_rate=1e-3, output_dir=sys.argv[1] + str(mode), val_fraction=0.2,
                 augment=Augment(hflip=0.5, randaugment=None, random_erasing=0.25,
                                 mixup=0.2, cutmix=0.0),
                 distribution=mode, export_tflite=False, verbose=0)
    if keras.backend.backend() == "jax":  # variables replicated over the mesh
        devices = len(r.model.trainable_variables[0].value.sharding.device_set)
    else:
        devices = r.model.distribute_strategy.num_replicas_in_sync
    runs[str(mode)] = {"loss": r.history["loss"], "val": r.history["val_loss"],
                       "devices": devices}
print("RESULT " + json.dumps(runs))
"""


def test_data_parallel_finetune_matches_one_device(tmp_path):
    """``finetune(distribution="data_parallel")`` on two virtual CPU devices (JAX
    DataParallel / TF MirroredStrategy) follows the single-device loss curve."""
    import subprocess
    import sys

    if BACKEND not in ("jax", "tensorflow"):
        pytest.skip("Keras 3 distributes training on JAX and TensorFlow only")
    env = dict(os.environ, KERAS_BACKEND=BACKEND, JAX_NUM_CPU_DEVICES="2",
               JAX_PLATFORMS="cpu")
    script = _PARALLEL
    if BACKEND == "tensorflow":
        script = ("from visionzoo.training.distribution import virtual_cpu_devices\n"
                  "virtual_cpu_devices(2)\n" + script)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    # No test module imported in there: conftest imports torch, which must not follow TF.
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path / "run"),
                           json.dumps(TINY)], cwd=root,
                          env=env, capture_output=True, text=True, timeout=900)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    runs = json.loads(lines[-1][len("RESULT "):])
    one, two = runs["None"], runs["data_parallel"]
    assert (one["devices"], two["devices"]) == (1, 2)
    np.testing.assert_allclose(two["loss"], one["loss"], rtol=1e-4)
    np.testing.assert_allclose(two["val"], one["val"], rtol=1e-4)


def test_bad_calls_write_nothing(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="mixed_precision"):
        finetune(_tiny_model(), _digits(), output_dir=str(out), mixed_precision="bf16")
    with pytest.raises(ValueError, match="Did you mean 'data_parallel'"):
        finetune(_tiny_model(), _digits(), output_dir=str(out), distribution="data_paralel")
    with pytest.raises(ValueError, match="layer_decay"):
        finetune(_tiny_model(), _digits(), output_dir=str(out), layer_decay=1.5)
    with pytest.raises(ValueError, match="poolformerv2_s12"):  # close-match hint
        finetune("poolformerv2_s13", _digits(), output_dir=str(out))
    with pytest.raises(ValueError, match="outputs 10 classes; the data has 3"):
        finetune(_tiny_model(), (_digits()[0], _digits()[1] % 3), output_dir=str(out))
    assert not out.exists()
