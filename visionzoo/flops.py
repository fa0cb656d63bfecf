"""Multiply-accumulate counts of a built Keras model (what papers call "FLOPs").

Counts convolutions, dense layers, attention matmuls and token-mixing matrices,
like fvcore (a custom layer reports its own activation-by-activation products through a
``matmul_macs(input_shape)`` method); element-wise ops, norms and pooling are not counted. Needs static
spatial input sizes.
"""

import keras


def _prod(shape):
    n = 1
    for d in shape:
        n *= int(d)
    return n


def count_macs(model):
    """Multiply-accumulates for one sample through ``model``."""
    from visionzoo.layers import MultiHeadSelfAttention

    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        in_shape = keras.tree.flatten(layer.input)[0].shape
        out_shape = keras.tree.flatten(layer.output)[0].shape
        # Every weight-bearing leaf of a composite layer runs at the output grid of
        # the layer (stride-1 blocks; a strided conv's cost is counted at its output).
        tokens = _prod(out_shape[1:-1])
        for sub in layer._flatten_layers(include_self=True, recursive=True):
            if getattr(sub, "_vz_skip_macs", False):  # e.g. runs once on a constant table
                continue
            if isinstance(sub, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D,
                                keras.layers.Dense)):
                total += tokens * _prod(sub.kernel.shape)
            elif isinstance(sub, MultiHeadSelfAttention):
                n = _prod(in_shape[1:-1])
                total += 2 * n * n * sub.num_heads * sub.head_dim
            elif type(sub).__name__ == "RandomMixing":
                total += sub.num_tokens * _prod(in_shape[1:])
            elif hasattr(sub, "matmul_macs"):  # attention products etc. of custom layers
                total += int(sub.matmul_macs(in_shape))
    return total
