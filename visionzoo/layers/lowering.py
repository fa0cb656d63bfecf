"""Trace-time switch for graph forms that only the TFLite export should use.

Some operations have several exact formulations whose speed depends on the runtime.
:func:`visionzoo.export.to_tflite` traces the model inside :func:`tflite_tracing`, and
layers ask :func:`is_tflite_tracing` to pick the form that runs fastest under LiteRT's
XNNPACK delegate. Everywhere else (training, ``predict``, JAX/torch/TF graphs) the
default form is used. The switch is read while tracing, so it costs nothing at run time.

A file's weights are constants, and the converter folds most arithmetic on constants, but
not all of it (``SOFTMAX`` for one). A layer whose TFLite form needs such a weights-only
value defines ``tflite_constants()`` (NumPy arrays from its current weights, computed
eagerly); :func:`tflite_tracing` given the model evaluates those before the trace and
:func:`traced_constants` hands them to the layer inside it.
"""

import contextlib
import threading

_STATE = threading.local()


@contextlib.contextmanager
def tflite_tracing(model=None):
    """Within this block, layers trace their TFLite-friendly forms. With ``model``, the
    ``tflite_constants()`` of each of its layers that has one are evaluated first (call
    this outside any traced function, where weights can be read)."""
    constants = {}
    if model is not None:
        for layer in model._flatten_layers(include_self=False, recursive=True):
            if callable(getattr(layer, "tflite_constants", None)):
                constants[id(layer)] = layer.tflite_constants()
    previous = (getattr(_STATE, "active", False), getattr(_STATE, "constants", {}))
    _STATE.active, _STATE.constants = True, constants
    try:
        yield
    finally:
        _STATE.active, _STATE.constants = previous


def is_tflite_tracing():
    """True inside :func:`tflite_tracing` (on this thread)."""
    return getattr(_STATE, "active", False)


def traced_constants(layer):
    """The ``tflite_constants()`` of ``layer`` evaluated by :func:`tflite_tracing`, or
    None (not tracing for TFLite, or traced without the model)."""
    if not is_tflite_tracing():
        return None
    return getattr(_STATE, "constants", {}).get(id(layer))
