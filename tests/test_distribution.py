"""visionzoo.training.distribution: multi-device training via Keras' distribution API
(JAX) and tf.distribute (TensorFlow).

The multi-device runs happen in a subprocess (tests/_distribution_worker.py) with two
virtual CPU devices: the device count is fixed when jax/TensorFlow initialise, which this
process has already done. Each subprocess runs once per CI run: the JAX one in the
jax-backend run of the suite, the TensorFlow one in the tensorflow run. The single-process
tests (bad input, layout map) run on every backend.
"""

import json
import os
import pathlib
import subprocess
import sys
import types

import keras
import numpy as np
import pytest
from conftest import BACKEND

from visionzoo.training import distribution
from visionzoo.training.distribution import DistributionError, scope

WORKER = pathlib.Path(__file__).with_name("_distribution_worker.py")
ROOT = WORKER.parents[1]

# Measured (2 virtual CPU devices, 5 SGD+momentum steps on a 16-image global batch):
# JAX DataParallel: loss 2.4e-7 abs / 1.0e-7 rel, weights 1.2e-7 abs; ModelParallel:
# loss 4.8e-7 abs, weights 1.2e-7 abs, outputs 9.5e-7 abs; TF MirroredStrategy: loss
# 6e-8 abs / 4.4e-7 rel, weights 1.2e-7 abs. Bounds: ~10x the measurement.
LOSS_RTOL, LOSS_ATOL = 1e-5, 1e-6
WEIGHT_ATOL = 1e-6
OUTPUT_ATOL = 1e-5


def _run_worker(backend, cases):
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2")
    if backend == "jax":  # existing XLA_FLAGS (e.g. conftest's) are kept as they are
        env.update(JAX_NUM_CPU_DEVICES="2", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, str(WORKER), *cases], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, (
        f"worker exited {proc.returncode}\nstdout:\n{proc.stdout[-4000:]}\n"
        f"stderr:\n{proc.stderr[-4000:]}")
    results = json.loads(lines[-1][len("RESULT "):])
    assert not results.pop("torch_imported"), "the worker must not import torch"
    return results


def _case(results, name):
    result = results[name]
    assert result["ok"], f"{name} failed in the worker:\n{result['error']}"
    return result


@pytest.fixture(scope="module")
def jax_results():
    if BACKEND != "jax":
        pytest.skip("the JAX two-device run happens once, in the jax-backend run")
    return _run_worker("jax", ["jax_data_parallel", "jax_model_parallel"])


@pytest.fixture(scope="module")
def tf_results():
    if BACKEND != "tensorflow":
        pytest.skip("the TensorFlow two-device run happens once, in the tensorflow-backend run")
    return _run_worker("tensorflow", ["tf_mirrored"])


def _assert_same_training(r):
    np.testing.assert_allclose(r["loss_dist"], r["loss_plain"], rtol=LOSS_RTOL, atol=LOSS_ATOL)
    assert r["weight_max_abs_diff"] <= WEIGHT_ATOL, r["weight_max_abs_diff"]
    # not vacuous: training moved the weights by far more than the tolerance
    assert r["weight_max_update"] > 1000 * WEIGHT_ATOL, r["weight_max_update"]
    assert r["loss_plain"][-1] != r["loss_plain"][0]


# --------------------------------------------------------------------------------------
# Two devices (subprocess)
# --------------------------------------------------------------------------------------


def test_jax_data_parallel_matches_one_device(jax_results):
    r = _case(jax_results, "jax_data_parallel")
    _assert_same_training(r)
    # the worker saw fit put half of each global batch on each of the two devices,
    # and every model and optimizer variable replicated on both
    assert r["batch_spec"][0] == "batch"
    assert r["batch_shard_shapes"] == [[8, 32, 32, 3]]
    assert r["variable_devices"] == [2]


def test_jax_model_parallel_shards_attention_and_mlp(jax_results):
    r = _case(jax_results, "jax_model_parallel")
    for kernel in ("stages-1-blocks-0-token_mixer/qkv/kernel",
                   "stages-1-blocks-0-token_mixer/proj/kernel",
                   "stages-1-blocks-0-mlp/fc1/kernel", "stages-1-blocks-0-mlp/fc2/kernel"):
        assert kernel in r["sharded"], r["sharded"]
    assert len(r["sharded"]) < r["n_variables"]  # norms, biases, stem, head replicated
    assert any("qkv_kernel" in p for p in r["optimizer_sharded"]), r["optimizer_sharded"]
    assert r["output_max_abs_diff"] <= OUTPUT_ATOL, r["output_max_abs_diff"]
    _assert_same_training(r)


def test_tf_mirrored_strategy_matches_one_device(tf_results):
    r = _case(tf_results, "tf_mirrored")
    assert r["num_replicas_in_sync"] == 2
    assert set(r["variable_types"]) == {"MirroredVariable"}, r["variable_types"]
    assert [rows for _, rows in r["replica_batches"]] == [8, 8], r["replica_batches"]
    _assert_same_training(r)


# --------------------------------------------------------------------------------------
# Bad input (this process, every backend)
# --------------------------------------------------------------------------------------


def test_none_is_a_no_op():
    with scope(None) as dist:
        assert dist is None
        assert keras.distribution.distribution() is None


def test_unknown_mode_lists_modes_and_suggests():
    with pytest.raises(DistributionError, match="Did you mean 'data_parallel'") as info:
        with scope("data_paralel"):
            pass
    assert "'model_parallel'" in str(info.value)
    with pytest.raises(DistributionError, match="valid modes") as info:
        with scope("pipeline"):
            pass
    assert "Did you mean" not in str(info.value)


@pytest.mark.skipif(BACKEND != "torch", reason="the torch-backend error")
def test_torch_backend_says_use_jax_or_tensorflow():
    for mode in ("data_parallel", "model_parallel"):
        with pytest.raises(DistributionError, match="torch backend.*jax.*tensorflow"):
            with scope(mode, model="caformer_s18"):
                pass
    with pytest.raises(DistributionError, match="torch"):
        distribution.virtual_cpu_devices(2)


@pytest.mark.skipif(BACKEND == "torch", reason="torch has no distribution at all")
def test_too_few_devices_says_how_to_get_virtual_ones():
    with pytest.raises(DistributionError, match="at least 2 devices") as info:
        with scope("data_parallel", devices=["cpu:0"]):
            pass
    assert "JAX_NUM_CPU_DEVICES=2" in str(info.value)
    assert "set_logical_device_configuration" in str(info.value)
    assert keras.distribution.distribution() is None


@pytest.mark.skipif(BACKEND != "tensorflow", reason="the TensorFlow model_parallel error")
def test_model_parallel_is_jax_only():
    with pytest.raises(DistributionError, match="jax backend.*DTensor"):
        with scope("model_parallel", model="caformer_s18"):
            pass


@pytest.mark.skipif(BACKEND != "jax", reason="model_parallel runs on JAX")
def test_model_parallel_needs_a_model_and_a_valid_mesh():
    with pytest.raises(DistributionError, match="needs model="):
        with scope("model_parallel", devices=["cpu:0", "cpu:0"]):
            pass
    with pytest.raises(DistributionError, match="needs 4 devices"):
        with scope("model_parallel", model="x", devices=["cpu:0", "cpu:0"], mesh_shape=(2, 2)):
            pass


# --------------------------------------------------------------------------------------
# Layout map (this process, every backend; no devices needed)
# --------------------------------------------------------------------------------------


def _mesh(model_axis=2):
    devices = [f"cpu:{i}" for i in range(model_axis)]  # names only; never placed
    return keras.distribution.DeviceMesh(shape=(1, model_axis), axis_names=("batch", "model"),
                                         devices=devices)


def _fake_model(shapes):
    return types.SimpleNamespace(weights=[types.SimpleNamespace(path=p, shape=s)
                                          for p, s in shapes.items()])


def _axes(lm, path):
    layout = lm[path]
    return None if layout is None else layout.axes


def test_layout_map_megatron_rules_and_shape_checks():
    model = _fake_model({
        "layers-0-blocks-0-attn/qkv/kernel": (96, 288),
        "layers-0-blocks-0-attn/qkv/bias": (288,),
        "layers-0-blocks-0-attn/proj/kernel": (96, 96),
        "layers-0-blocks-0-mlp/fc1/kernel": (96, 384),
        "layers-0-blocks-0-mlp/fc2/kernel": (384, 96),
        "block1-0-mlp-fc1/kernel": (64, 512),                 # SVT spelling
        "blocks1-0-attn/proj/kernel": (1, 1, 160, 96),        # iFormer 1x1 conv
        "blocks-0-mlp/fc1/kernel": (6, 9),                    # 9 % 2: stays replicated
        "blocks-0-attn/proj/kernel": (7, 8),                  # 7 % 2: stays replicated
        "layers-0-blocks-0-norm1/gamma": (96,),
        "head-fc/kernel": (768, 1000),
    })
    lm = distribution.layout_map(model, _mesh(2))
    assert isinstance(lm, keras.distribution.LayoutMap)
    assert _axes(lm, "layers-0-blocks-0-attn/qkv/kernel") == (None, "model")
    assert _axes(lm, "layers-0-blocks-0-attn/proj/kernel") == ("model", None)
    assert _axes(lm, "layers-0-blocks-0-mlp/fc1/kernel") == (None, "model")
    assert _axes(lm, "layers-0-blocks-0-mlp/fc2/kernel") == ("model", None)
    assert _axes(lm, "block1-0-mlp-fc1/kernel") == (None, "model")
    assert _axes(lm, "blocks1-0-attn/proj/kernel") == (None, None, "model", None)
    assert _axes(lm, "blocks-0-mlp/fc1/kernel") == (None, None)
    assert _axes(lm, "blocks-0-attn/proj/kernel") == (None, None)
    for replicated in ("layers-0-blocks-0-attn/qkv/bias", "layers-0-blocks-0-norm1/gamma",
                       "head-fc/kernel"):
        assert lm[replicated] is None
    # the regexes apply to variables the map was not built from (another depth, say)
    assert _axes(lm, "layers-3-blocks-17-mlp/fc2/kernel") == ("model", None)
    # a 3-way model axis: 96, 288, 384 and 9 split; 512, 160 and 7 do not
    lm3 = distribution.layout_map(model, _mesh(3))
    assert _axes(lm3, "layers-0-blocks-0-mlp/fc2/kernel") == ("model", None)
    assert _axes(lm3, "block1-0-mlp-fc1/kernel") == (None, None)
    assert _axes(lm3, "blocks1-0-attn/proj/kernel") == (None, None, None, None)
    assert distribution.sharding_plan(model, 3).keys() == {
        "layers-0-blocks-0-attn/qkv/kernel", "layers-0-blocks-0-attn/proj/kernel",
        "layers-0-blocks-0-mlp/fc1/kernel", "layers-0-blocks-0-mlp/fc2/kernel",
        "blocks-0-mlp/fc1/kernel"}


def test_layout_map_on_a_real_model_is_valid_and_documented():
    from _distribution_worker import _tiny

    model = _tiny()
    lm = distribution.layout_map(model, _mesh(2))
    sharded = 0
    for v in model.weights:
        layout = lm[v.path]  # raises if two patterns match one path
        if layout is None or all(a is None for a in layout.axes):
            continue
        sharded += 1
        assert len(layout.axes) == len(v.shape), v.path
        assert v.shape[layout.axes.index("model")] % 2 == 0, v.path
    assert sharded == 8  # qkv, proj, pwconv1, pwconv2, 2x (fc1, fc2)
    for pattern, _, _ in distribution.MEGATRON_RULES:  # the docstring table is complete
        assert f"``{pattern}``" in distribution.__doc__, pattern


def test_layout_map_needs_a_model_axis():
    mesh = keras.distribution.DeviceMesh(shape=(2,), axis_names=("batch",),
                                         devices=["cpu:0", "cpu:1"])
    with pytest.raises(DistributionError, match="'model' axis"):
        distribution.layout_map(_fake_model({}), mesh)
