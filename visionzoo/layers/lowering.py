"""Trace-time switch for graph forms that only the TFLite export should use.

Some operations have several exact formulations whose speed depends on the runtime.
:func:`visionzoo.export.to_tflite` traces the model inside :func:`tflite_tracing`, and
layers ask :func:`is_tflite_tracing` to pick the form that runs fastest under LiteRT's
XNNPACK delegate. Everywhere else (training, ``predict``, JAX/torch/TF graphs) the
default form is used. The switch is read while tracing, so it costs nothing at run time.
"""

import contextlib
import threading

_STATE = threading.local()


@contextlib.contextmanager
def tflite_tracing():
    """Within this block, layers trace their TFLite-friendly forms."""
    previous = getattr(_STATE, "active", False)
    _STATE.active = True
    try:
        yield
    finally:
        _STATE.active = previous


def is_tflite_tracing():
    """True inside :func:`tflite_tracing` (on this thread)."""
    return getattr(_STATE, "active", False)
