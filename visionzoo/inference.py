"""A leaner ``predict_on_batch`` and ``predict`` for visionzoo models on the JAX and
torch backends (the torch path: see "torch backend" further down this file).

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
import weakref

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
    if keras.backend.backend() == "torch":
        return _torch_predict_on_batch(model, x)
    if not _applies(model):
        return None
    variables = model.variables
    outputs = _run(model, variables, _current_values(variables), x)
    return keras.tree.map_structure(np.array, outputs)


def _current_values(variables):
    """``[v.value for v in variables]``, read from each variable's own storage when no
    stateless or autocast scope is active (``value`` then returns exactly that storage;
    reading it directly is ~10x cheaper: shvit_s1's 397 variables 0.28 -> 0.02 ms)."""
    from keras.src.backend.common.stateless_scope import in_stateless_scope
    from keras.src.backend.common.variables import get_autocast_scope

    if in_stateless_scope() or get_autocast_scope() is not None:
        return [v.value for v in variables]
    values = [v._value for v in variables]
    if any(value is None for value in values):  # not initialised: Keras' placeholder
        return [v.value for v in variables]
    return values


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
        if keras.backend.backend() == "torch":
            return self._enter_torch()
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

    def _enter_torch(self):
        model = self.model
        if not _torch_applies(model):
            return self
        from keras.src.trainers.data_adapters import data_adapter_utils

        model.make_predict_function()
        keras_step = model.predict_function

        def predict_function(data):
            x, _, _ = data_adapter_utils.unpack_x_y_sample_weight(data[0])
            outputs = _torch_forward(model, x)
            return keras_step(data) if outputs is None else outputs

        self.saved = model.predict_function
        model.predict_function = predict_function
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


# --- torch backend -------------------------------------------------------------------
#
# Keras' torch backend runs a model eagerly: every layer call goes through Keras' Python
# machinery (argument conversion, dtype policies, name scopes, the functional graph walk)
# before torch sees an op. For inference that overhead repeats unchanged on every call,
# and for small models it is most of the time (shvit_s1 at batch 1: ~70 ms per call, of
# which the torch ops take ~30).
#
# ``predict_on_batch`` therefore captures the forward pass once per input signature with
# ``torch.export`` (non-strict: it runs the model's Python code once and records the
# aten ops it issues) and runs the captured graph afterwards. The graph refers to the
# model's own parameters, which Keras updates in place (``assign``, ``load_weights``,
# ``set_weights``, optimizers), so weight changes are seen. Capturing takes a few
# seconds, so the first call with a new signature goes through Keras' path and the
# second captures; when capture fails (code torch.export cannot trace), that signature
# keeps Keras' path and a warning says why. With ``jit_compile=True`` (set through
# ``model.compile``; Keras' default on torch is False) the captured graph is also
# compiled by ``torch.compile`` (inductor), which takes tens of seconds once but fuses
# the elementwise work. Set ``VISIONZOO_TORCH_CAPTURE=0`` to always use Keras' path.

TORCH_CAPTURE_ENV = "VISIONZOO_TORCH_CAPTURE"
TORCH_CAPTURE_AFTER = 1  # calls on Keras' path per input signature before capturing
_FAILED = "failed"
_TORCH_CACHE = weakref.WeakKeyDictionary()  # model -> {key: calls seen | graph | _FAILED}


def _torch_applies(model):
    if os.environ.get(TORCH_CAPTURE_ENV, "1") == "0":
        return False
    if model.run_eagerly or not model.built:
        return False
    if keras.distribution.distribution() is not None:
        return False
    from keras.src.backend.torch.trainer import TorchTrainer

    return type(model).predict_step is TorchTrainer.predict_step


def _torch_inputs(x):
    """``(signature, tensors)`` for ``x`` (a structure of arrays/tensors), or
    ``(None, None)`` when a leaf is neither (Keras' path handles those)."""
    import torch
    from keras.src.backend.torch.core import get_device
    from torch.utils import _pytree

    leaves, spec = _pytree.tree_flatten(x)
    tensors, parts = [], []
    for leaf in leaves:
        if isinstance(leaf, np.ndarray) and leaf.dtype.kind in "biuf":
            # Contiguous first: torch rejects negative strides (x[:, ::-1], a flip).
            leaf = torch.as_tensor(np.ascontiguousarray(leaf), device=get_device())
        elif not isinstance(leaf, torch.Tensor):
            return None, None
        tensors.append(leaf)
        parts.append((tuple(leaf.shape), str(leaf.dtype), str(leaf.device)))
    return (str(spec), tuple(parts)), _pytree.tree_unflatten(tensors, spec)


class _Forward:
    """The model's inference call as a ``torch.nn.Module`` (built lazily: torch is
    imported only on the torch backend)."""

    @staticmethod
    def wrap(model):
        import torch

        class Forward(torch.nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def forward(self, inputs):
                if self.inner._call_has_training_arg:
                    return self.inner(inputs, training=False)
                return self.inner(inputs)

        return Forward(model)


def _torch_capture(model, inputs):
    """The exported (and, with ``jit_compile``, compiled) forward pass for ``inputs``."""
    import torch

    with torch.inference_mode(False), torch.no_grad():
        program = torch.export.export(_Forward.wrap(model), (inputs,), strict=False)
    fn = program.module()
    if model.jit_compile:
        fn = torch.compile(fn)
    return fn


def _torch_predict_on_batch(model, x):
    outputs = _torch_forward(model, x)
    if outputs is None:
        return None
    return keras.tree.map_structure(keras.ops.convert_to_numpy, outputs)


def _torch_forward(model, x):
    """The model's inference outputs on ``x`` (torch tensors) through the captured
    graph for ``x``'s signature, or None when Keras' path must run this call."""
    import warnings

    import torch

    if not _torch_applies(model):
        return None
    signature, inputs = _torch_inputs(x)
    if signature is None:
        return None
    # Not in the model's __dict__: torch.export restores module attributes it saw
    # before tracing, which would drop an entry added while it ran.
    cache = _TORCH_CACHE.setdefault(model, {})
    key = (tuple(map(id, model.variables)), bool(model.jit_compile), signature)
    entry = cache.get(key, 0)
    if entry == _FAILED:
        return None
    if isinstance(entry, int):
        # With jit_compile the user asked for compilation: capture on the first call
        # (Keras' own jit path would torch.compile the eager model, graph breaks and all).
        if entry < TORCH_CAPTURE_AFTER and not model.jit_compile:
            cache[key] = entry + 1
            return None
        try:
            entry = _torch_capture(model, inputs)
            with torch.no_grad():
                outputs = entry(inputs)
        except Exception as error:  # code torch.export cannot trace: Keras' path
            cache[key] = _FAILED
            message = (str(error).strip().splitlines() or [""])[0][:200]
            warnings.warn(
                f"{model.name}: torch.export could not capture the forward pass "
                f"({type(error).__name__}: {message}); predict keeps Keras' eager "
                "path for these inputs.", stacklevel=3)
            return None
        cache[key] = entry
        return outputs
    with torch.no_grad():
        return entry(inputs)


def torch_captured(model):
    """Input signatures whose forward pass ``predict_on_batch`` runs as a captured
    torch graph (for inspection; empty before the second call with a signature)."""
    cache = _TORCH_CACHE.get(model) or {}
    return [key[2] for key, entry in cache.items()
            if not isinstance(entry, int) and entry != _FAILED]
