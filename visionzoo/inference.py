"""A leaner ``predict_on_batch`` for visionzoo models on the JAX backend.

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
    import jax

    variables = model.variables
    key = tuple(map(id, variables))
    cache = model.__dict__.get("_vz_fast_predict")
    if cache is None or cache[0] != key:

        def forward(values, inputs):
            with keras.StatelessScope(state_mapping=list(zip(variables, values))):
                return model(inputs, training=False)

        # (variables key, forward, {input signature: (jitted function, option)})
        cache = (key, forward, {})
        # Plain __dict__ entry: not a tracked attribute, not part of the config.
        model.__dict__["_vz_fast_predict"] = cache
    _, forward, chosen = cache
    values = [v.value for v in variables]
    leaves, treedef = jax.tree_util.tree_flatten(x)
    signature = (treedef, tuple((np.shape(a), np.result_type(a).str) for a in leaves))
    if signature in chosen:
        outputs = chosen[signature][0](values, x)
    elif not _autotuning():
        chosen[signature] = (jax.jit(forward), None)
        outputs = chosen[signature][0](values, x)
    else:
        fn, option, outputs = _autotune(forward, values, x)
        chosen[signature] = (fn, option)
    return keras.tree.map_structure(np.array, outputs)


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
    XLA's default), for inspection; empty before the first JAX ``predict_on_batch``."""
    cache = model.__dict__.get("_vz_fast_predict")
    return {} if cache is None else {sig: opt for sig, (_, opt) in cache[2].items()}
