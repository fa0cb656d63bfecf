"""Building blocks shared by every visionzoo family.

Every layer here is a serializable Keras layer (registered under the ``visionzoo``
package), built from ``keras.ops`` only and numerically equal to the PyTorch module
it replaces (explicit epsilons, exact GELU, torch-style padding and pooling).
"""

from visionzoo.layers.activations import GELU, SquaredReLU, StarReLU
from visionzoo.layers.attention import MultiHeadSelfAttention
from visionzoo.layers.conv import (DepthwiseConv2D, PaddedConv2D, PaddedDepthwiseConv2D,
                                    depthwise_conv)
from visionzoo.layers.downsample import ConvDownsample
from visionzoo.layers.gnconv import GlobalLocalFilter, GnConv
from visionzoo.layers.inception_mixer import HighFrequencyMixer, InceptionMixer, LowFrequencyMixer
from visionzoo.layers.dtcwt import DTCWTForward, DTCWTInverse
from visionzoo.layers.mlp import Mlp, MlpHead
from visionzoo.layers.norms import GroupNorm1, LayerNorm
from visionzoo.layers.pooling import AvgPool2DNoPadCount
from visionzoo.layers.regularization import DropPath, Scale, residual_add
from visionzoo.layers.window import PatchMerging, WindowAttention

__all__ = [
    "AvgPool2DNoPadCount",
    "ConvDownsample",
    "DTCWTForward",
    "DepthwiseConv2D",
    "DTCWTInverse",
    "DropPath",
    "GELU",
    "GlobalLocalFilter",
    "GnConv",
    "GroupNorm1",
    "HighFrequencyMixer",
    "InceptionMixer",
    "LayerNorm",
    "LowFrequencyMixer",
    "Mlp",
    "MlpHead",
    "MultiHeadSelfAttention",
    "PatchMerging",
    "PaddedConv2D",
    "PaddedDepthwiseConv2D",
    "Scale",
    "SquaredReLU",
    "StarReLU",
    "WindowAttention",
    "depthwise_conv",
    "residual_add",
]
