"""visionzoo.inference: the JAX predict_on_batch path gives Keras' outputs, sees weight
changes, and stands aside wherever it cannot be sure to (other backends, distribution,
run_eagerly, an overridden predict_step)."""

import keras
import numpy as np
import pytest

import visionzoo
from visionzoo import inference

JAX = keras.backend.backend() == "jax"


def _keras(model, x):
    return keras.Model.predict_on_batch(model, x)


@pytest.fixture(scope="module")
def model():
    return visionzoo.create_model("shvit_s1", input_shape=(64, 64, 3), num_classes=7)


def test_same_outputs_as_keras(model):
    x = np.random.default_rng(0).standard_normal((2, 64, 64, 3)).astype("float32")
    ours = model.predict_on_batch(x)
    assert isinstance(ours, np.ndarray) and ours.flags.writeable and ours.shape == (2, 7)
    np.testing.assert_array_equal(ours, _keras(model, x))
    fast = inference.predict_on_batch(model, x)
    assert (fast is not None) == JAX
    if JAX:
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


def test_multi_input_model():
    dit = visionzoo.create_model("dit_s_2", input_size=8, num_classes=10)
    from visionzoo.export import example_inputs

    xs = example_inputs(dit, 2, 0, input_size=(8, 8))
    np.testing.assert_array_equal(dit.predict_on_batch(xs), _keras(dit, xs))


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
