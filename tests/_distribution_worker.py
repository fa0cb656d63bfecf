"""Multi-device checks of visionzoo.training.distribution, run in a fresh process.

    KERAS_BACKEND=jax JAX_NUM_CPU_DEVICES=2 python tests/_distribution_worker.py \
        jax_data_parallel jax_model_parallel
    KERAS_BACKEND=tensorflow python tests/_distribution_worker.py tf_mirrored

A subprocess because the device count is fixed when jax (or TensorFlow) initialises,
which the test process has already done. Each case trains or runs a tiny MetaFormer
(LayerNorm/GroupNorm, a SepConv stage and an attention stage, no BatchNorm) once on one
device and once distributed over two, from the same weights on the same fixed batches,
and measures how far apart they end up. The last stdout line is
``RESULT <json>``: per case, ``ok`` plus the measurements, or the traceback. Torch is
never imported here (TensorFlow and torchvision in one process crash).
"""

import json
import os
import sys
import time
import traceback

CASES = ("jax_data_parallel", "jax_model_parallel", "tf_mirrored")
STEPS = 5
BATCH = 16  # the global batch; 8 per device over 2 devices

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(BATCH, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 4, size=(BATCH,)).astype("int32")
    return x, y


def _tiny():
    from visionzoo.backbones.metaformer import MetaFormer

    return MetaFormer(depths=[1, 1], dims=[32, 64], token_mixers=["sepconv", "attention"],
                      res_scale_init_values=None, num_classes=4, input_shape=(32, 32, 3))


def _train(model, weights, x, y, steps=STEPS):
    """``steps`` optimizer steps on the same global batch (one batch per epoch, no
    shuffling): the per-step losses and the final weights."""
    import keras

    model.set_weights(weights)
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.01, momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(x, y, batch_size=BATCH, epochs=steps, shuffle=False, verbose=0)
    return [float(v) for v in history.history["loss"]], model.get_weights()


def _compare(plain, dist, init):
    """How far the distributed run ended from the single-device one (and how far the
    weights moved at all, so a zero difference is not a run that changed nothing)."""
    (loss_a, w_a), (loss_b, w_b) = plain, dist
    loss_a, loss_b = np.array(loss_a), np.array(loss_b)
    weight_abs = max(float(np.max(np.abs(a - b))) for a, b in zip(w_a, w_b))
    weight_rel = max(float(np.max(np.abs(a - b) / (np.abs(a) + 1e-3))) for a, b in zip(w_a, w_b))
    moved = max(float(np.max(np.abs(a - b))) for a, b in zip(w_a, init))
    return {
        "loss_plain": loss_a.tolist(), "loss_dist": loss_b.tolist(),
        "loss_max_abs_diff": float(np.max(np.abs(loss_a - loss_b))),
        "loss_max_rel_diff": float(np.max(np.abs(loss_a - loss_b) / np.abs(loss_a))),
        "weight_max_abs_diff": weight_abs, "weight_max_rel_diff": weight_rel,
        "weight_max_update": moved,
    }


def jax_data_parallel():
    import jax
    import keras
    import keras.src.backend.jax.trainer as jax_trainer

    from visionzoo.training import distribution

    assert keras.backend.backend() == "jax"
    assert jax.device_count() == 2, jax.devices()
    x, y = _data()
    keras.utils.set_random_seed(0)
    plain_model = _tiny()
    init = plain_model.get_weights()
    plain = _train(plain_model, init, x, y)

    # Record how Keras places each batch on the devices (the trainer looks the function
    # up on the module at every step).
    lib = jax_trainer.jax_distribution_lib
    original, seen = lib.distribute_data_input, []

    def recording(per_process_batch, layout, batch_dim_name):
        out = original(per_process_batch, layout, batch_dim_name)
        seen.append((tuple(out.sharding.spec), len(out.sharding.device_set),
                     sorted({tuple(s.data.shape) for s in out.addressable_shards})))
        return out

    lib.distribute_data_input = recording
    try:
        with distribution.scope("data_parallel") as dist:
            assert isinstance(dist, keras.distribution.DataParallel), dist
            model = _tiny()
            dist_run = _train(model, init, x, y)
            var_devices = {len(v.value.sharding.device_set) for v in model.weights}
            opt_devices = {len(v.value.sharding.device_set) for v in model.optimizer.variables}
    finally:
        lib.distribute_data_input = original
    assert keras.distribution.distribution() is None, "scope() left a distribution set"
    images = [s for s in seen if len(s[2][0]) == 4]
    assert images, f"fit never distributed a batch: {seen}"
    spec, ndev, shard_shapes = images[0]
    assert spec[0] == "batch" and ndev == 2, images[0]
    assert shard_shapes == [(BATCH // 2, 32, 32, 3)], shard_shapes  # each device: half
    assert var_devices == {2} and opt_devices == {2}, (var_devices, opt_devices)
    out = _compare(plain, dist_run, init)
    out.update(batch_spec=[str(a) for a in spec], batch_shard_shapes=shard_shapes,
               variable_devices=sorted(var_devices))
    return out


def jax_model_parallel():
    import jax
    import keras

    from visionzoo.training import distribution

    assert jax.device_count() == 2, jax.devices()
    x, y = _data()
    keras.utils.set_random_seed(1)
    plain_model = _tiny()
    init = plain_model.get_weights()
    expected = plain_model.predict(x, batch_size=BATCH, verbose=0)
    plain = _train(plain_model, init, x, y, steps=2)

    with distribution.scope("model_parallel", model=plain_model, mesh_shape=(1, 2)) as dist:
        assert isinstance(dist, keras.distribution.ModelParallel), dist
        model = _tiny()
        model.set_weights(init)
        specs = {v.path: tuple(v.value.sharding.spec) for v in model.weights}
        shards = {v.path: sorted({tuple(s.data.shape) for s in v.value.addressable_shards})
                  for v in model.weights}
        got = model.predict(x, batch_size=BATCH, verbose=0)
        dist_run = _train(model, init, x, y, steps=2)
        opt_specs = {v.path: tuple(v.value.sharding.spec) for v in model.optimizer.variables}

    plan = distribution.sharding_plan(plain_model, 2)
    sharded = {p: s for p, s in specs.items() if any(a is not None for a in s)}
    for path, axes in plan.items():  # each planned kernel is sharded as planned ...
        assert specs[path] == axes, (path, specs[path], axes)
    assert set(sharded) == set(plan), set(sharded) ^ set(plan)  # ... and nothing else
    wanted = {
        "stages-1-blocks-0-token_mixer/qkv/kernel": (None, "model"),
        "stages-1-blocks-0-token_mixer/proj/kernel": ("model", None),
        "stages-1-blocks-0-mlp/fc1/kernel": (None, "model"),
        "stages-1-blocks-0-mlp/fc2/kernel": ("model", None),
        "stages-0-blocks-0-mlp/fc1/kernel": (None, "model"),
        "stages-0-blocks-0-token_mixer/pwconv1/kernel": (None, "model"),
    }
    for path, axes in wanted.items():
        assert specs[path] == axes, (path, specs[path])
    qkv = "stages-1-blocks-0-token_mixer/qkv/kernel"
    assert shards[qkv] == [(64, 96)], shards[qkv]  # (64, 192) split in two columns
    out = _compare(plain, dist_run, init)
    out.update(
        output_max_abs_diff=float(np.max(np.abs(got - expected))),
        sharded=sorted(sharded), n_variables=len(specs),
        optimizer_sharded=sorted(p for p, s in opt_specs.items() if any(a is not None for a in s)))
    return out


def tf_mirrored():
    import keras

    from visionzoo.training import distribution

    assert keras.backend.backend() == "tensorflow"
    names = distribution.virtual_cpu_devices(2)  # before TF initialises
    import tensorflow as tf

    assert len(names) == 2, names
    x, y = _data()
    keras.utils.set_random_seed(0)
    plain_model = _tiny()
    init = plain_model.get_weights()
    plain = _train(plain_model, init, x, y)

    with distribution.scope("data_parallel", devices=["cpu:0", "cpu:1"]) as strategy:
        assert isinstance(strategy, tf.distribute.MirroredStrategy), strategy
        replicas = strategy.num_replicas_in_sync
        model = _tiny()
        seen = []
        original = model.train_step

        def recording(data):  # runs once per replica, at trace time
            replica = tf.distribute.get_replica_context().replica_id_in_sync_group
            seen.append((replica.device, data[0].shape[0]))
            return original(data)

        model.train_step = recording
        dist_run = _train(model, init, x, y)
        mirrored = [type(v.value).__name__ for v in model.trainable_weights[:3]]
        per_replica = [len(v.value.values) for v in model.trainable_weights]
    assert replicas == 2, replicas
    assert set(per_replica) == {2}, set(per_replica)
    assert len({device for device, _ in seen}) == 2, seen  # traced on both replicas ...
    assert {rows for _, rows in seen} == {BATCH // 2}, seen  # ... each with half the batch
    out = _compare(plain, dist_run, init)
    out.update(num_replicas_in_sync=replicas, variable_types=mirrored,
               replica_batches=sorted([device, rows] for device, rows in seen))
    return out


def main(cases):
    results = {}
    for case in cases:
        if case not in CASES:
            raise SystemExit(f"unknown case {case!r}; expected one of {CASES}")
        start = time.time()
        try:
            results[case] = {"ok": True, **globals()[case]()}
        except Exception:  # reported per case, so one failure does not hide the others
            results[case] = {"ok": False, "error": traceback.format_exc()}
        results[case]["seconds"] = round(time.time() - start, 1)
    results["torch_imported"] = "torch" in sys.modules
    print("RESULT " + json.dumps(results), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
