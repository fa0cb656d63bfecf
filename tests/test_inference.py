"""visionzoo.inference: the JAX and torch predict_on_batch paths give Keras' outputs, see
weight changes, and stand aside wherever they cannot be sure to (TensorFlow,
distribution, run_eagerly, an overridden predict_step, code torch.export cannot trace)."""

import keras
import numpy as np
import pytest

import visionzoo
from visionzoo import inference

JAX = keras.backend.backend() == "jax"
TORCH = keras.backend.backend() == "torch"


def _keras(model, x):
    return keras.Model.predict_on_batch(model, x)


@pytest.fixture(scope="module")
def model():
    return visionzoo.create_model("shvit_s1", input_shape=(64, 64, 3), num_classes=7)


@pytest.fixture(autouse=True)
def no_autotune(request, monkeypatch):
    """XLA's default fusion settings (bit-equal to Keras' path) unless a test opts in."""
    if "autotune" not in request.node.name:
        monkeypatch.setenv(inference.AUTOTUNE_ENV, "0")


def test_same_outputs_as_keras(model):
    x = np.random.default_rng(0).standard_normal((2, 64, 64, 3)).astype("float32")
    ours = model.predict_on_batch(x)
    assert isinstance(ours, np.ndarray) and ours.flags.writeable and ours.shape == (2, 7)
    np.testing.assert_array_equal(ours, _keras(model, x))
    # torch: the first call with a signature is Keras' own, the second captures.
    fast = inference.predict_on_batch(model, x)
    assert (fast is not None) == (JAX or TORCH)
    if JAX or TORCH:
        np.testing.assert_array_equal(fast, ours)
    # Another batch size: a new trace, same agreement.
    x3 = x[:1]
    np.testing.assert_array_equal(model.predict_on_batch(x3), _keras(model, x3))


def test_sees_new_weights_and_trainability(model):
    x = np.random.default_rng(1).standard_normal((1, 64, 64, 3)).astype("float32")
    before = model.predict_on_batch(x)
    head = model.get_layer("head-l")
    old = [w.copy() for w in head.get_weights()]
    try:
        head.set_weights([w + 0.5 for w in old])
        after = model.predict_on_batch(x)
        assert np.abs(after - before).max() > 1e-3
        np.testing.assert_array_equal(after, _keras(model, x))
        # Moving variables between trainable and non-trainable must not remap values.
        model.get_layer("head-bn").trainable = False
        np.testing.assert_array_equal(model.predict_on_batch(x), _keras(model, x))
    finally:
        model.get_layer("head-bn").trainable = True
        head.set_weights(old)
    np.testing.assert_allclose(model.predict_on_batch(x), before, rtol=0, atol=0)


def test_current_values_are_keras_values_in_and_out_of_scopes(model):
    # Read from storage outside scopes; inside a stateless or autocast scope, Keras'
    # ``value`` (the scope's value / the cast) -- each case must equal ``v.value``.
    from keras.src.backend.common.variables import AutocastScope

    variables = model.variables
    plain = inference._current_values(variables)
    assert all(a is b.value for a, b in zip(plain, variables))
    kernel = model.get_layer("head-l").kernel
    replaced = keras.ops.ones(kernel.shape)
    with keras.StatelessScope(state_mapping=[(kernel, replaced)]):
        scoped = inference._current_values(variables)
        expected = [v.value for v in variables]
    index = next(i for i, v in enumerate(variables) if v is kernel)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(scoped[index]), 1.0)
    assert all(np.array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))
               for a, b in zip(scoped, expected))
    with AutocastScope("float16"):
        cast = inference._current_values(variables)
    assert keras.backend.standardize_dtype(cast[index].dtype) == "float16"


def test_multi_input_model():
    dit = visionzoo.create_model("dit_s_2", input_size=8, num_classes=10)
    from visionzoo.export import example_inputs

    xs = example_inputs(dit, 2, 0, input_size=(8, 8))
    ref = _keras(dit, xs)
    np.testing.assert_array_equal(dit.predict_on_batch(xs), ref)
    np.testing.assert_array_equal(dit.predict_on_batch(xs), ref)  # torch: captured
    if TORCH:
        assert len(inference.torch_captured(dit)) == 1


def test_stands_aside(model):
    x = np.zeros((1, 64, 64, 3), "float32")
    model.run_eagerly = True
    try:
        assert inference.predict_on_batch(model, x) is None
        np.testing.assert_allclose(model.predict_on_batch(x), _keras(model, x),
                                   rtol=1e-5, atol=1e-5)
    finally:
        model.run_eagerly = False

    class Custom(visionzoo.backbones.base.ZooBackbone):
        def predict_step(self, *args):
            out = super().predict_step(*args)
            return out

    inputs = keras.Input((4,))
    custom = Custom(inputs=inputs, outputs=keras.layers.Dense(2)(inputs))
    assert inference.predict_on_batch(custom, np.ones((1, 4), "float32")) is None
    assert custom.predict_on_batch(np.ones((1, 4), "float32")).shape == (1, 2)
    if JAX:
        import jax

        devices = jax.devices()
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
        try:
            assert inference.predict_on_batch(model, x) is None
        finally:
            keras.distribution.set_distribution(None)
        assert inference.predict_on_batch(model, x) is not None


def _second_candidate_fastest(monkeypatch):
    """Make the autotuner's timing pretend the second candidate it tries is by far the
    fastest (each candidate still runs); returns the list of timed functions."""
    tried = []
    real = inference._timed

    def timed(fn, values, inputs):
        tried.append(fn)
        real(fn, values, inputs)
        return 0.1 if len({id(f) for f in tried}) == 2 else 1.0

    monkeypatch.setattr(inference, "_timed", timed)
    return tried


@pytest.mark.skipif(not JAX, reason="the XLA:CPU autotuner is JAX-only")
def test_autotune_keeps_the_fastest_setting_and_close_outputs(monkeypatch):
    """The first call per input signature tries every YNN fusion setting and keeps the
    fastest; later calls reuse it; outputs match Keras' within float32 rounding."""
    monkeypatch.delenv(inference.AUTOTUNE_ENV, raising=False)
    model = visionzoo.create_model("shvit_s1", input_shape=(64, 64, 3), num_classes=7)
    x = np.random.default_rng(2).standard_normal((2, 64, 64, 3)).astype("float32")
    ref = _keras(model, x)
    tried = _second_candidate_fastest(monkeypatch)
    out = model.predict_on_batch(x)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    assert len({id(f) for f in tried}) == len(inference.CANDIDATES)
    assert list(inference.chosen_options(model).values()) == [inference.CANDIDATES[1]]
    count = len(tried)
    again = model.predict_on_batch(x)  # same signature: no new trials
    assert len(tried) == count
    np.testing.assert_array_equal(again, out)
    model.predict_on_batch(x[:1])  # new signature: tuned again
    assert len(tried) == 2 * count and len(inference.chosen_options(model)) == 2


@pytest.mark.skipif(not JAX, reason="the XLA:CPU autotuner is JAX-only")
def test_autotune_margin_and_unknown_settings(monkeypatch):
    """An alternative must beat the default by the margin; a setting this jaxlib does
    not know is skipped, not an error; VISIONZOO_XLA_AUTOTUNE=0 compiles once."""
    import jax

    def forward(values, inputs):
        return inputs @ values[0]

    values, x = [np.eye(3, dtype="float32")], np.ones((2, 3), "float32")
    times = iter([1.0, 1.0, 0.97, 0.97])  # 3 % faster: within the margin
    monkeypatch.setattr(inference, "_timed", lambda *a: next(times))
    fn, option, out = inference._autotune(
        forward, values, x, candidates=(None, "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"))
    assert option is None
    np.testing.assert_array_equal(np.asarray(out), x)
    monkeypatch.setattr(inference, "_timed", lambda *a: 1.0)
    fn, option, _ = inference._autotune(forward, values, x,
                                        candidates=(None, "NOT_A_FUSION_TYPE"))
    assert option is None
    np.testing.assert_array_equal(np.asarray(fn(values, x)), x)
    with pytest.raises(Exception):
        inference._autotune(forward, values, x, candidates=("NOT_A_FUSION_TYPE",))
    monkeypatch.setenv(inference.AUTOTUNE_ENV, "0")
    assert not inference._autotuning()
    monkeypatch.setenv(inference.AUTOTUNE_ENV, "1")
    assert inference._autotuning() == (jax.default_backend() == "cpu")


class _CountBatches(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.batches = 0

    def on_predict_batch_end(self, batch, logs=None):
        self.batches += 1


def test_predict_same_outputs_as_keras():
    """``predict()`` keeps Keras' loop (batches, a smaller last batch, callbacks,
    steps_per_execution, (x, y) data) and, on JAX, runs the fast path."""
    model = visionzoo.create_model("shvit_s1", input_shape=(64, 64, 3), num_classes=7)
    x = np.random.default_rng(3).standard_normal((5, 64, 64, 3)).astype("float32")
    ref = keras.Model.predict(model, x, batch_size=2, verbose=0)
    assert model.predict_function is not None  # Keras' own, built by the line above
    keras_fn = model.predict_function
    counter = _CountBatches()
    ours = model.predict(x, batch_size=2, verbose=0, callbacks=[counter])
    assert counter.batches == 3 and ours.shape == (5, 7)
    np.testing.assert_array_equal(ours, ref)
    assert model.predict_function is keras_fn  # restored for Keras' other entry points
    signatures = inference.chosen_options(model)
    # JAX: the full batches and the last one compiled once each, through our cache.
    assert len(signatures) == (2 if JAX else 0)
    labelled = ((x[i:i + 2], np.zeros(len(x[i:i + 2]))) for i in range(0, 5, 2))
    np.testing.assert_array_equal(model.predict(labelled, verbose=0), ref)
    if keras.backend.backend() != "torch":  # torch-backend Keras allows only 1
        model.compile(steps_per_execution=2)
        np.testing.assert_array_equal(model.predict(x, batch_size=2, verbose=0), ref)
    # Weights changed between calls are seen.
    head = model.get_layer("head-l")
    old = [w.copy() for w in head.get_weights()]
    head.set_weights([w + 0.5 for w in old])
    changed = model.predict(x, batch_size=2, verbose=0)
    assert np.abs(changed - ref).max() > 1e-3
    np.testing.assert_array_equal(changed, keras.Model.predict(model, x, batch_size=2,
                                                               verbose=0))
    model.run_eagerly = True  # Keras' path: same outputs up to eager rounding
    np.testing.assert_allclose(model.predict(x, batch_size=2, verbose=0), changed,
                               rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not JAX, reason="the XLA:CPU autotuner is JAX-only")
def test_predict_autotune_tunes_once_and_reuses_for_the_last_batch(monkeypatch):
    monkeypatch.delenv(inference.AUTOTUNE_ENV, raising=False)
    model = visionzoo.create_model("shvit_s1", input_shape=(64, 64, 3), num_classes=7)
    x = np.random.default_rng(4).standard_normal((5, 64, 64, 3)).astype("float32")
    ref = keras.Model.predict(model, x, batch_size=2, verbose=0)
    tried = _second_candidate_fastest(monkeypatch)
    out = model.predict(x, batch_size=2, verbose=0)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    # Tuned once (batch 2); the last batch of 1 reused the kept setting untimed.
    assert len({id(f) for f in tried}) == len(inference.CANDIDATES)
    assert list(inference.chosen_options(model).values()) == [inference.CANDIDATES[1]] * 2
    count = len(tried)
    model.predict(x, batch_size=2, verbose=0)
    assert len(tried) == count
    # predict_on_batch with a new batch size is tuned on its own.
    model.predict_on_batch(x[:3])
    assert len(tried) == 2 * count


@pytest.mark.skipif(not TORCH, reason="torch.export capture is the torch backend's path")
def test_torch_capture_same_outputs_and_new_weights(monkeypatch):
    """The first call with a signature runs Keras' path, the second captures the
    forward pass with torch.export; captured outputs equal Keras' (float32 and float64
    inputs, inside torch.inference_mode), weight changes are seen, Keras' own path still
    works afterwards, and VISIONZOO_TORCH_CAPTURE=0 turns it off."""
    import torch

    model = visionzoo.create_model("shvit_s1", input_shape=(64, 64, 3), num_classes=7)
    x = np.random.default_rng(5).standard_normal((2, 64, 64, 3)).astype("float32")
    ref = _keras(model, x)
    assert inference.predict_on_batch(model, x) is None  # first sight: Keras' path
    assert inference.torch_captured(model) == []
    out = inference.predict_on_batch(model, x)
    assert out is not None and isinstance(out, np.ndarray) and out.shape == (2, 7)
    np.testing.assert_array_equal(out, ref)
    assert len(inference.torch_captured(model)) == 1
    with torch.inference_mode():
        np.testing.assert_array_equal(model.predict_on_batch(x), ref)
    np.testing.assert_array_equal(_keras(model, x), ref)  # the model is intact
    head = model.get_layer("head-l")
    old = [w.copy() for w in head.get_weights()]
    head.set_weights([w + 0.5 for w in old])
    changed = model.predict_on_batch(x)
    assert np.abs(changed - ref).max() > 1e-3
    np.testing.assert_array_equal(changed, _keras(model, x))
    head.set_weights(old)
    flipped = x[:, :, ::-1]  # negative strides, as a flip augmentation gives
    for _ in range(2):
        np.testing.assert_array_equal(model.predict_on_batch(flipped),
                                      _keras(model, flipped))
    x64 = x.astype("float64")
    ref64 = _keras(model, x64)
    for _ in range(2):
        np.testing.assert_array_equal(model.predict_on_batch(x64), ref64)
    assert len(inference.torch_captured(model)) == 2  # float32 (plain and flipped), float64
    monkeypatch.setenv(inference.TORCH_CAPTURE_ENV, "0")
    assert inference.predict_on_batch(model, x) is None
    np.testing.assert_array_equal(model.predict_on_batch(x), ref)


@pytest.mark.skipif(not TORCH, reason="torch.export capture is the torch backend's path")
def test_torch_capture_failure_falls_back_with_a_warning(monkeypatch):
    import torch

    model = visionzoo.create_model("shvit_s1", input_shape=(64, 64, 3), num_classes=7)
    x = np.random.default_rng(6).standard_normal((1, 64, 64, 3)).astype("float32")
    ref = _keras(model, x)
    attempts = []

    def fail(*args, **kwargs):
        attempts.append(1)
        raise RuntimeError("cannot trace this\nsecond line")

    monkeypatch.setattr(torch.export, "export", fail)
    model.predict_on_batch(x)
    with pytest.warns(UserWarning, match="could not capture.*cannot trace this"):
        np.testing.assert_array_equal(model.predict_on_batch(x), ref)
    np.testing.assert_array_equal(model.predict_on_batch(x), ref)
    assert len(attempts) == 1 and inference.torch_captured(model) == []


def _tiny_backbone():
    """A small conv/BatchNorm/GELU/pool/Dense ZooBackbone with non-trivial weights."""
    from visionzoo.backbones.base import ZooBackbone

    inputs = keras.Input((16, 16, 3))
    h = keras.layers.Conv2D(8, 3, padding="same")(inputs)
    h = keras.layers.BatchNormalization(epsilon=1e-5)(h)
    h = keras.layers.Activation("gelu")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    model = ZooBackbone(inputs=inputs, outputs=keras.layers.Dense(5)(h))
    rng = np.random.default_rng(8)
    model.set_weights([rng.standard_normal(w.shape).astype("float32") * 0.5 + 1
                       if w.ndim == 1 else rng.standard_normal(w.shape).astype("float32")
                       for w in model.get_weights()])
    return model


@pytest.mark.skipif(not TORCH, reason="torch.export capture is the torch backend's path")
def test_torch_capture_follows_training():
    """fit() updates the parameters (and BatchNorm's moving statistics) in place: the
    captured graph computes with the new values."""
    model = _tiny_backbone()
    x = np.random.default_rng(9).standard_normal((4, 16, 16, 3)).astype("float32")
    before = _keras(model, x)
    model.predict_on_batch(x)
    np.testing.assert_array_equal(model.predict_on_batch(x), before)
    assert len(inference.torch_captured(model)) == 1
    model.compile(optimizer=keras.optimizers.SGD(0.05),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, np.array([0, 1, 2, 3]), epochs=2, batch_size=4, verbose=0)
    after = model.predict_on_batch(x)
    assert np.isfinite(after).all() and np.abs(after - before).max() > 1e-3
    np.testing.assert_array_equal(after, _keras(model, x))


@pytest.mark.skipif(not TORCH, reason="torch.export capture is the torch backend's path")
def test_torch_jit_compile_captures_and_compiles_on_the_first_call():
    """``jit_compile=True`` on torch: the captured graph compiled by torch.compile
    (inductor) from the first call, outputs within float32 rounding of Keras'. (A small
    conv/norm/GELU/attention-free backbone: inductor's compile time grows with the graph.)"""
    model, rng = _tiny_backbone(), np.random.default_rng(7)
    x = rng.standard_normal((2, 16, 16, 3)).astype("float32")
    ref = _keras(model, x)
    model.jit_compile = True
    out = inference.predict_on_batch(model, x)
    assert out is not None and len(inference.torch_captured(model)) == 1
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    np.testing.assert_allclose(model.predict_on_batch(x), out, rtol=0, atol=0)
