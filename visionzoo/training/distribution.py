"""Multi-device training with Keras' own distribution API and TensorFlow strategies.

Build, compile *and* fit the model inside :func:`scope`::

    import keras, visionzoo
    from visionzoo.training import distribution

    with distribution.scope("data_parallel"):    # JAX: DataParallel; TF: MirroredStrategy
        model = visionzoo.create_model("caformer_s18", num_classes=10)
        model.compile(optimizer="adamw", loss=keras.losses.SparseCategoricalCrossentropy(
            from_logits=True))
        model.fit(x, y, batch_size=64)           # the global batch, split over the devices

    name = "swin_base_patch4_window7_224"
    with distribution.scope("model_parallel", model=name):    # JAX only
        model = visionzoo.create_model(name)      # attention/MLP kernels split 2 ways
        ...

Modes
-----
==================  ==========================================  ==========================
mode                JAX                                         TensorFlow
==================  ==========================================  ==========================
``None``            no-op                                       no-op
``data_parallel``   ``keras.distribution.DataParallel``         ``tf.distribute.``
                                                                ``MirroredStrategy``
``model_parallel``  ``keras.distribution.ModelParallel`` on a    not supported (below)
                    ``("batch", "model")`` mesh with
                    :func:`layout_map`
==================  ==========================================  ==========================

The torch backend has no Keras distribution (Keras 3.15): use JAX or TensorFlow. Model
parallelism is JAX only: Keras' TensorFlow path for ``ModelParallel`` goes through
DTensor, which in Keras 3.15 is a prototype that does not actually shard variables.
Data parallelism keeps the semantics of single-device training: the global batch given
to ``fit`` is split over the devices and the gradients are averaged, so the loss
trajectory is that of one device up to float summation order (the batch size must be
divisible by the number of devices).

Devices
-------
At least two devices are needed. On a CPU-only machine, make virtual CPU devices:

* JAX: set ``JAX_NUM_CPU_DEVICES=2`` (or
  ``XLA_FLAGS=--xla_force_host_platform_device_count=2``) before jax is imported, or call
  :func:`virtual_cpu_devices` before jax first touches a device (it sets
  ``jax.config.update("jax_num_cpu_devices", n)``).
* TensorFlow: :func:`virtual_cpu_devices` splits the CPU into logical devices with
  ``tf.config.set_logical_device_configuration``; it must run before TF initialises its
  runtime (before any op or device listing).

Model-parallel layout (Megatron-style)
--------------------------------------
:func:`layout_map` shards the big matrices of the transformer blocks over the mesh's
``"model"`` axis: the layer that widens the features is split along its output columns
(*column-parallel*, Dense kernel layout ``(None, "model")``), the layer that narrows
them back along its input rows (*row-parallel*, ``("model", None)``), so the pair needs
one reduction. Patterns are ``re.fullmatch``-ed against ``variable.path``; every other
variable (norms, biases, embeddings, convolutions, heads, relative-position tables)
is replicated.

======  ================================================  ==============================
split   pattern (``variable.path``)                       variables (families)
======  ================================================  ==============================
column  ``.*attn/(qkv|qk|q|kv|v|h_qkv|l_q|l_kv)/kernel``  attention input projections:
                                                          Swin(V2), DiT, ConViT, SVT,
                                                          LITv2
column  ``.*(token|low)_mixer/qkv/kernel``                CAFormer attention, iFormer
                                                          low-frequency mixer
column  ``.*token_mixer/pwconv1/kernel``                  ConvFormer SepConv expansion
column  ``.*mlp[-/]fc1/kernel``                           MLP expansion (all families)
column  ``.*adaLN_modulation-1/kernel``                   DiT adaLN modulation (~1/3 of
                                                          a DiT block's parameters)
row     ``.*attn/(proj|h_proj|l_proj)/kernel``            attention output projections
row     ``.*token_mixer/(proj|pwconv2)/kernel``           CAFormer attention output,
                                                          ConvFormer SepConv projection
row     ``.*mlp[-/]fc2/kernel``                           MLP projection
======  ================================================  ==============================

With a 2-way model axis this puts 95% of the parameters of swin_base / litv2_b /
swinv2_base in sharded variables, ~100% of dit_xl_2, 98% of convit_base, 89% of
caformer_b36, 90% of svt_h_large, 91% of inception_transformer_base.

Shapes are checked against the real variables: a kernel whose split dimension is not
divisible by the ``"model"`` axis size stays replicated, and a matching kernel that is a
convolution (iFormer's 1x1 ``attn/proj``) is split on the same channel axis
(last = output, second-to-last = input). Those variables get exact-path entries in the
map, which Keras looks up before the patterns. The sharding is an annotation for XLA's
SPMD partitioner: it changes where parameters live and what is communicated, never the
result (a fused ``qkv`` kernel split 2 ways is not head-aligned, so XLA reshuffles its
output before the attention; still correct, just not the cheapest possible layout).
"""

import contextlib
import difflib
import math
import re

MODES = ("data_parallel", "model_parallel")
BATCH_AXIS = "batch"
MODEL_AXIS = "model"

COLUMN, ROW = "column", "row"
# (pattern, split, what it matches): the table of the module docstring.
MEGATRON_RULES = (
    (r".*attn/(qkv|qk|q|kv|v|h_qkv|l_q|l_kv)/kernel", COLUMN, "attention input projections"),
    (r".*(token|low)_mixer/qkv/kernel", COLUMN, "MetaFormer/iFormer attention qkv"),
    (r".*token_mixer/pwconv1/kernel", COLUMN, "ConvFormer SepConv expansion"),
    (r".*mlp[-/]fc1/kernel", COLUMN, "MLP expansion"),
    (r".*adaLN_modulation-1/kernel", COLUMN, "DiT adaLN modulation"),
    (r".*attn/(proj|h_proj|l_proj)/kernel", ROW, "attention output projections"),
    (r".*token_mixer/(proj|pwconv2)/kernel", ROW, "MetaFormer attention/SepConv output"),
    (r".*mlp[-/]fc2/kernel", ROW, "MLP projection"),
)

_TORCH_MESSAGE = (
    "Multi-device training is not available on the torch backend: Keras 3.15 has no "
    "torch distribution. Use KERAS_BACKEND=jax (DataParallel, ModelParallel) or "
    "KERAS_BACKEND=tensorflow (MirroredStrategy).")


class DistributionError(ValueError):
    """A distribution request that cannot be met (mode, backend or devices)."""


def _backend():
    import keras

    return keras.backend.backend()


def _check_mode(mode):
    if mode in MODES:
        return mode
    hint = difflib.get_close_matches(str(mode), MODES, n=1, cutoff=0.5)
    hint = f" Did you mean {hint[0]!r}?" if hint else ""
    raise DistributionError(
        f"Unknown distribution mode {mode!r}; valid modes: None, "
        f"{', '.join(repr(m) for m in MODES)}.{hint}")


def _no_distribution(backend):
    return f"No Keras distribution on the {backend!r} backend; use jax or tensorflow."


def _too_few(mode, found):
    return DistributionError(
        f"{mode} needs at least 2 devices; found {len(found)} "
        f"({', '.join(map(str, found)) or 'none'}). "
        "On a CPU-only machine make virtual CPU devices: with JAX, set JAX_NUM_CPU_DEVICES=2 "
        "(or XLA_FLAGS=--xla_force_host_platform_device_count=2) before jax is imported; "
        "with TensorFlow, call visionzoo.training.distribution.virtual_cpu_devices(2) "
        "(tf.config.set_logical_device_configuration) before TensorFlow initialises.")


# --------------------------------------------------------------------------------------
# Devices
# --------------------------------------------------------------------------------------


def virtual_cpu_devices(n):
    """Split the host CPU into ``n`` virtual devices and return their names.

    TensorFlow: logical CPU devices via ``tf.config.set_logical_device_configuration``;
    this must run before TensorFlow initialises its runtime (any op, any device
    listing), otherwise a RuntimeError says so (unless there are already ``n``).

    JAX: the device count is fixed when jax first initialises its CPU backend. Setting
    ``JAX_NUM_CPU_DEVICES=n`` in the environment before ``import jax`` (Keras imports it
    at import time on the jax backend) always works; this function instead sets
    ``jax.config.update("jax_num_cpu_devices", n)``, which works as long as nothing has
    asked jax for a device yet.

    Other backends: a DistributionError (no Keras distribution there).
    """
    n = int(n)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}.")
    backend = _backend()
    if backend == "tensorflow":
        import tensorflow as tf

        cpus = tf.config.list_physical_devices("CPU")
        try:
            tf.config.set_logical_device_configuration(
                cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(n)])
        except RuntimeError as e:
            existing = tf.config.list_logical_devices("CPU")
            if len(existing) >= n:
                return [d.name for d in existing]
            raise RuntimeError(
                f"TensorFlow is already initialised with {len(existing)} CPU device(s); "
                f"call virtual_cpu_devices({n}) first thing, before any TensorFlow op or "
                "model is created.") from e
        return [d.name for d in tf.config.list_logical_devices("CPU")]
    if backend == "jax":
        import jax

        try:
            jax.config.update("jax_num_cpu_devices", n)
        except RuntimeError as e:
            found = jax.devices("cpu")
            if len(found) >= n:
                return [f"cpu:{d.id}" for d in found]
            raise RuntimeError(
                f"jax already initialised its CPU backend with {len(found)} device(s); set "
                f"JAX_NUM_CPU_DEVICES={n} in the environment before Python imports jax.") from e
        return [f"cpu:{d.id}" for d in jax.devices("cpu")]
    if backend == "torch":
        raise DistributionError(_TORCH_MESSAGE)
    raise DistributionError(_no_distribution(backend))


def _jax_devices(devices):
    import keras

    return list(devices) if devices is not None else keras.distribution.list_devices()


def _tf_device_name(device):
    name = str(device)
    return name if name.startswith("/") else "/" + name  # "cpu:0" (Keras' spelling) -> "/cpu:0"


def _tf_devices(devices):
    if devices is not None:
        return [_tf_device_name(d) for d in devices]
    import tensorflow as tf

    found = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
    return [d.name for d in found]


# --------------------------------------------------------------------------------------
# Layout map
# --------------------------------------------------------------------------------------


def _split_axis(split, rank):
    """Index of the sharded dimension: last (outputs) for column, -2 (inputs) for row."""
    return rank - 1 if split == COLUMN else rank - 2


def _layout(split, rank):
    axes = [None] * rank
    axes[_split_axis(split, rank)] = MODEL_AXIS
    return tuple(axes)


def _match_rule(path):
    hits = [(pattern, split) for pattern, split, _ in MEGATRON_RULES if re.fullmatch(pattern, path)]
    if len(hits) > 1:  # the rules are written to be disjoint; keep them so
        raise AssertionError(f"{path} matches several layout rules: {hits}")
    return hits[0] if hits else (None, None)


def _model_variables(model_or_name):
    """(path, shape) of every variable of a model, or of a registered model built here."""
    if isinstance(model_or_name, str):
        import keras

        from visionzoo.registry import create_model

        previous = keras.distribution.distribution()
        keras.distribution.set_distribution(None)  # a plain build, only to read shapes
        try:
            model = create_model(model_or_name)
            out = [(v.path, tuple(v.shape)) for v in model.weights]
        finally:
            keras.distribution.set_distribution(previous)
        del model
        return out
    weights = getattr(model_or_name, "weights", None)
    if weights is None:
        raise TypeError("layout_map needs a visionzoo model name or a built Keras model; "
                        f"got {type(model_or_name).__name__}.")
    return [(v.path, tuple(v.shape)) for v in weights]


def _plan(variables, model_axis_size):
    plan = {}
    for path, shape in variables:
        _, split = _match_rule(path)
        if split is None or len(shape) < 2:
            continue
        if shape[_split_axis(split, len(shape))] % model_axis_size:
            continue
        plan[path] = _layout(split, len(shape))
    return plan


def sharding_plan(model_or_name, model_axis_size):
    """``{path: axes}`` of the variables the Megatron rules shard (the rest replicate).

    Variables that match a rule but cannot be split (split dimension not divisible by
    ``model_axis_size``, rank < 2) are left out, i.e. replicated.
    """
    return _plan(_model_variables(model_or_name), int(model_axis_size))


def layout_map(model_or_name, device_mesh):
    """Megatron-style ``keras.distribution.LayoutMap`` for a visionzoo model.

    Args:
        model_or_name: a registered model name (built once here, outside any
            distribution, to read variable shapes) or a built Keras model with the
            same variable paths as the one that will be built under the distribution.
        device_mesh: ``keras.distribution.DeviceMesh`` with a ``"model"`` axis.

    Returns:
        A LayoutMap holding the patterns of the module docstring (rank-2 layouts) and
        exact-path entries for matching variables that need another layout: replicated
        when the split dimension is not divisible by the model axis, split on the
        channel axis for convolution kernels. Use it as
        ``ModelParallel(layout_map=..., batch_dim_name="batch")``.
    """
    import keras

    if MODEL_AXIS not in device_mesh.axis_names:
        raise DistributionError(
            f"The device mesh needs a {MODEL_AXIS!r} axis; its axes are "
            f"{tuple(device_mesh.axis_names)}.")
    size = device_mesh.shape[list(device_mesh.axis_names).index(MODEL_AXIS)]
    variables = _model_variables(model_or_name)
    plan = _plan(variables, size)
    lm = keras.distribution.LayoutMap(device_mesh)
    for pattern, split, _ in MEGATRON_RULES:
        lm[pattern] = _layout(split, 2)
    for path, shape in variables:
        _, split = _match_rule(path)
        if split is None:
            continue
        wanted = plan.get(path, (None,) * len(shape))
        if wanted != _layout(split, 2):  # the pattern's own layout would be wrong here
            lm[path] = wanted
    return lm


# --------------------------------------------------------------------------------------
# Scope
# --------------------------------------------------------------------------------------


@contextlib.contextmanager
def scope(mode=None, *, devices=None, model=None, mesh_shape=None):
    """Context manager for multi-device training; build, compile and fit inside it.

    Args:
        mode: None (no-op), ``"data_parallel"`` or ``"model_parallel"`` (JAX only).
        devices: device list; default all devices of the preferred type (GPU/TPU, else
            CPU). JAX takes Keras' ``"cpu:0"`` spelling or jax devices; TensorFlow takes
            ``"/gpu:0"``, ``"/device:CPU:1"`` or ``"cpu:0"``.
        model: ``"model_parallel"`` only: the model name (or a built model with the same
            variable paths) whose variable shapes :func:`layout_map` reads.
        mesh_shape: ``"model_parallel"`` only: ``(batch, model)`` mesh shape; default
            ``(n // 2, 2)`` over the first ``2 * (n // 2)`` devices.

    Yields:
        The ``keras.distribution.Distribution`` (JAX), the ``tf.distribute.Strategy``
        (TensorFlow), or None for ``mode=None``.
    """
    if mode is None:
        yield None
        return
    mode = _check_mode(mode)
    backend = _backend()
    if backend == "torch":
        raise DistributionError(_TORCH_MESSAGE)
    if backend not in ("jax", "tensorflow"):
        raise DistributionError(_no_distribution(backend))

    if mode == "data_parallel":
        if backend == "jax":
            import keras

            found = _jax_devices(devices)
            if len(found) < 2:
                raise _too_few(mode, found)
            dist = keras.distribution.DataParallel(devices=found)
            with dist.scope():
                yield dist
        else:
            found = _tf_devices(devices)
            if len(found) < 2:
                raise _too_few(mode, found)
            import tensorflow as tf

            strategy = tf.distribute.MirroredStrategy(found)
            with strategy.scope():
                yield strategy
        return

    # model_parallel
    if backend != "jax":
        raise DistributionError(
            "model_parallel needs the jax backend: Keras' TensorFlow ModelParallel path "
            "(DTensor) is a prototype in Keras 3.15 and shards nothing. Use "
            "KERAS_BACKEND=jax, or mode='data_parallel' on TensorFlow.")
    if model is None:
        raise DistributionError(
            "model_parallel needs model=: a visionzoo model name (or a built model) whose "
            "variables decide the layout, e.g. "
            "scope('model_parallel', model='swin_base_patch4_window7_224').")
    import keras

    found = _jax_devices(devices)
    if len(found) < 2:
        raise _too_few(mode, found)
    if mesh_shape is None:
        mesh_shape = (len(found) // 2, 2)
    mesh_shape = tuple(int(s) for s in mesh_shape)
    if len(mesh_shape) != 2 or min(mesh_shape) < 1:
        raise DistributionError(
            f"mesh_shape must be two positive ints (batch, model); got {mesh_shape}.")
    if math.prod(mesh_shape) > len(found):
        raise DistributionError(
            f"mesh_shape {mesh_shape} needs {math.prod(mesh_shape)} devices; found {len(found)}.")
    mesh = keras.distribution.DeviceMesh(
        shape=mesh_shape, axis_names=(BATCH_AXIS, MODEL_AXIS),
        devices=found[:math.prod(mesh_shape)])
    dist = keras.distribution.ModelParallel(
        layout_map=layout_map(model, mesh), batch_dim_name=BATCH_AXIS)
    with dist.scope():
        yield dist
