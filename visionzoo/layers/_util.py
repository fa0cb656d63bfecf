"""Small helpers for building sublayers from specs."""

import keras

from visionzoo.layers.activations import GELU, SquaredReLU, StarReLU
from visionzoo.layers.norms import GroupNorm1, LayerNorm

_ACTIVATIONS = {
    "gelu": lambda name: GELU(name=name),
    "gelu_tanh": lambda name: GELU(approximate=True, name=name),
    "star_relu": lambda name: StarReLU(name=name),
    "squared_relu": lambda name: SquaredReLU(name=name),
    "relu": lambda name: keras.layers.ReLU(name=name),
    "identity": lambda name: keras.layers.Identity(name=name),
}


def make_activation(spec, name):
    """Return an activation layer for ``spec`` ("gelu", "star_relu", ...)."""
    if spec not in _ACTIVATIONS:
        raise ValueError(
            f"Unknown activation {spec!r}; expected one of {sorted(_ACTIVATIONS)}.")
    return _ACTIVATIONS[spec](name)


def make_norm(spec, name):
    """Return a norm layer for ``spec`` = {"type": "layernorm"|"groupnorm1", "epsilon", "center"}."""
    kind = spec.get("type", "layernorm")
    eps = spec.get("epsilon", 1e-5)
    center = spec.get("center", True)
    if kind == "layernorm":
        return LayerNorm(epsilon=eps, center=center, name=name)
    if kind == "groupnorm1":
        return GroupNorm1(epsilon=eps, center=center, name=name)
    raise ValueError(f"Unknown norm type {kind!r}; expected 'layernorm' or 'groupnorm1'.")
