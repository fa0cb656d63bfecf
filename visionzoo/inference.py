"""A leaner ``predict_on_batch`` and ``predict`` for visionzoo models on the JAX backend.

Keras' JAX ``predict_on_batch`` gathers every variable's value into a state, runs the
jitted predict step with that state donated, and then assigns every value back to its
variable (``jax_state_sync``) -- a Python loop over all variables on every call. For
inference nothing changes, so that loop is pure overhead: about 0.4-1 ms per call for a
few hundred variables, which is 10-15 % of a small model's batch-1 latency (shvit_s1:
6.8 ms per call, 5.8 ms of it in XLA).

:func:`predict_on_batch` computes the same outputs through one cached ``jax.jit`` of
the model's forward pass under a :class:`keras.StatelessScope` that maps each variable
to its current value (nothing is donated or written back). It applies only when the
result is guaranteed to be what Keras would return: the JAX backend, no distribution
set, not ``run_eagerly``, ``jit_compile`` on, and the model's ``predict_step`` not
overridden. Otherwise it returns ``None`` and the caller falls back to Keras.

``model.predict()`` (through :class:`fast_predict`) keeps Keras' loop -- batching,
``steps_per_execution``, callbacks, progress bar -- and runs each batch through the same
cached function. Keras' own predict step is compiled with XLA's default settings, which
for shvit_s1 and ConvFormer at batch 8 made ``predict()`` about 1.4x slower per batch
than ``predict_on_batch``.

The compiled function is keyed on the model's variables (identity and order) and,
through ``jax.jit``, on the input's structure, shapes and dtypes, so changing weights
(``load_weights``, ``fit``, ``assign``) never reuses stale values: values are read at
every call.

**XLA:CPU library-fusion autotuning.** XLA:CPU hands matrix products to the YNNPACK
library and, by default, also fuses elementwise work and reductions around them into
those library calls. Which choice is fastest depends on the model and the batch: the
default is best for Swin and ConViT at batch 1, while dots on their own (XLA's own loops
doing the elementwise work) make shvit_s1 1.3x (batch 1) to 1.4x (batch 8) faster and
ConvFormer/CAFormer at batch 8 1.3-1.4x (a depthwise conv's taps otherwise get pulled
into the next product's fusion and its shifted inputs are materialised one by one). On
the CPU platform, the first call with a new input signature therefore compiles the
forward pass under each setting in :data:`CANDIDATES` (``xla_cpu_experimental_ynn_fusion_type``;
settings this jaxlib does not know are skipped), times two calls of each and keeps the
fastest; an alternative must beat XLA's default by :data:`SWITCH_MARGIN`. Later calls
with that signature use the kept function. The outputs differ from the default's by
float32 rounding only (~1e-6 relative). Set ``VISIONZOO_XLA_AUTOTUNE=0`` to always use
XLA's default (one compilation, results bit-equal to Keras' ``predict_on_batch``).
"""

import os
import time

import keras
import numpy as np

YNN_OPTION = "xla_cpu_experimental_ynn_fusion_type"
# Settings of YNN_OPTION tried by the autotuner (None: XLA's default), in this order.
CANDIDATES = (None, "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT",
              "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE")
SWITCH_MARGIN = 0.95  # an alternative is kept only if it takes < 95 % of the default's time
AUTOTUNE_ENV = "VISIONZOO_XLA_AUTOTUNE"


def _applies(model):
    if keras.backend.backend() != "jax":
        return False
    if model.run_eagerly or not model.jit_compile:
        return False
    if keras.distribution.distribution() is not None:
        return False
    if not model.built:
        return False
    from keras.src.backend.jax.trainer import JAXTrainer

    return type(model).predict_step is JAXTrainer.predict_step


def predict_on_batch(model, x):
    """``model.predict_on_batch(x)`` (NumPy outputs) or ``None`` when Keras' own path
    must be used (see the module docstring)."""
    if not _applies(model):
        return None
    variables = model.variables
    outputs = _run(model, variables, [v.value for v in variables], x)
    return keras.tree.map_structure(np.array, outputs)


class fast_predict:
    """Context manager used by ``ZooBackbone.predict``: while active (and when the fast
    path applies), Keras' ``predict()`` loop runs each batch through the same cached,
    autotuned ``jax.jit`` as :func:`predict_on_batch` instead of its own jitted
    ``predict_step``. Batching, ``steps_per_execution``, callbacks, the progress bar and
    the returned arrays are Keras' own; only the per-batch function differs. A smaller
    last batch reuses the setting tuned for the full batches (one compilation, as Keras'
    own loop would need) instead of being tuned again."""

    def __init__(self, model):
        self.model = model
        self.active = False
        self.saved = None

    def __enter__(self):
        model = self.model
        if not _applies(model):
            return self
        from keras.src.trainers.data_adapters import data_adapter_utils

        # The order of Keras' predict state: (trainable values, non-trainable values).
        variables = list(model.trainable_variables) + list(model.non_trainable_variables)

        def predict_step(state, data):
            x, _, _ = data_adapter_utils.unpack_x_y_sample_weight(data)
            values = list(state[0]) + list(state[1])
            return _run(model, variables, values, x, reuse_for_smaller_batch=True), state

        self.saved = model.predict_function
        model.predict_function = model._make_function(predict_step,
                                                      concatenate_outputs=True)
        self.active = True
        return self

    def __exit__(self, *exc):
        if self.active:
            # Keras' own function (if any) for its other entry points.
            self.model.predict_function = self.saved
            self.active = False
        return False


_MAX_VARIABLE_ORDERS = 4  # cached forward passes per model (variable lists seen)


def _run(model, variables, values, x, reuse_for_smaller_batch=False):
    """Outputs of the model's forward pass on ``x`` with ``values`` for ``variables``
    (JAX arrays), through a jitted function cached per variable list and input
    signature (autotuned on first use, see the module docstring)."""
    import jax

    # Plain __dict__ entry: not a tracked attribute, not part of the config.
    cache = model.__dict__.setdefault("_vz_fast_predict", {})
    key = tuple(map(id, variables))
    if key not in cache:
        if len(cache) >= _MAX_VARIABLE_ORDERS:
            cache.clear()

        def forward(values, inputs):
            with keras.StatelessScope(state_mapping=list(zip(variables, values))):
                return model(inputs, training=False)

        # (forward, {input signature: (jitted function, option)})
        cache[key] = (forward, {})
    forward, chosen = cache[key]
    leaves, treedef = jax.tree_util.tree_flatten(x)
    signature = (treedef, tuple((np.shape(a), np.result_type(a).str) for a in leaves))
    if signature in chosen:
        return chosen[signature][0](values, x)
    tuned = _tuned_for_larger_batch(chosen, signature) if reuse_for_smaller_batch else None
    if tuned is not None or not _autotuning():
        option = None if tuned is None else tuned[1]
        fn = (jax.jit(forward) if option is None
              else jax.jit(forward, compiler_options={YNN_OPTION: option}))
        chosen[signature] = (fn, option)
        return fn(values, x)
    fn, option, outputs = _autotune(forward, values, x)
    chosen[signature] = (fn, option)
    return outputs


def _tuned_for_larger_batch(chosen, signature):
    """The ``(function, option)`` entry of ``chosen`` whose signature differs from
    ``signature`` only by a larger leading (batch) dimension, else None."""
    treedef, leaves = signature
    for (other_treedef, other_leaves), entry in chosen.items():
        if other_treedef != treedef or len(other_leaves) != len(leaves):
            continue
        if all(len(s) == len(o) and len(s) > 0 and s[1:] == o[1:] and s[0] < o[0]
               and d == od for (s, d), (o, od) in zip(leaves, other_leaves)):
            return entry
    return None


def _autotuning():
    import jax

    return os.environ.get(AUTOTUNE_ENV, "1") != "0" and jax.default_backend() == "cpu"


def _autotune(forward, values, x, candidates=CANDIDATES, margin=SWITCH_MARGIN):
    """Compile ``forward`` under each YNN fusion setting in ``candidates``, time two
    calls of each (after the compiling one) and return ``(function, option, outputs)``
    of the fastest; a setting after the first must take under ``margin`` x the best
    time so far. Settings that fail to compile are skipped (the first must work)."""
    import jax

    best = None
    for option in candidates:
        fn = (jax.jit(forward) if option is None
              else jax.jit(forward, compiler_options={YNN_OPTION: option}))
        try:
            outputs = jax.block_until_ready(fn(values, x))
        except Exception:  # an option this jaxlib does not know
            if best is None:
                raise
            continue
        elapsed = min(_timed(fn, values, x) for _ in range(2))
        if best is None or elapsed < margin * best[0]:
            best = (elapsed, fn, option, outputs)
    return best[1], best[2], best[3]


def _timed(fn, values, x):
    import jax

    start = time.perf_counter()
    jax.block_until_ready(fn(values, x))
    return time.perf_counter() - start


def chosen_options(model):
    """``{input signature: YNN fusion setting}`` the autotuner kept for ``model`` (None:
    XLA's default), for inspection; empty before the first fast JAX call."""
    cache = model.__dict__.get("_vz_fast_predict") or {}
    return {sig: opt for _, chosen in cache.values() for sig, (_, opt) in chosen.items()}
