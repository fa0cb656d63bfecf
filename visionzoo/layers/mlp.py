"""Channel MLPs (dense and 1x1-conv forms) and the MetaFormer MLP head."""

import keras

from visionzoo.layers._util import make_activation
from visionzoo.layers.norms import LayerNorm


@keras.saving.register_keras_serializable(package="visionzoo")
class Mlp(keras.layers.Layer):
    """``fc1 -> act -> drop -> fc2 -> drop`` on the last axis.

    Works on (B, N, C) and (B, H, W, C). ``conv_form=True`` stores the projections as
    1x1 ``Conv2D`` kernels (B, H, W, C inputs only), the layout of models that use
    ``nn.Conv2d(..., 1)``; the function is the same.

    Args:
        hidden_dim: int. Width of the hidden layer.
        out_dim: int or None. Output width (default: input width).
        activation: str. "gelu" (exact), "star_relu", "squared_relu", "relu", ...
        use_bias: bool.
        dropout: float. Dropout after the activation and after fc2.
        conv_form: bool. Use 1x1 convolutions instead of Dense.
    """

    def __init__(self, hidden_dim, out_dim=None, activation="gelu", use_bias=True,
                 dropout=0.0, conv_form=False, **kwargs):
        super().__init__(**kwargs)
        self.hidden_dim = hidden_dim
        self.out_dim = out_dim
        self.activation = activation
        self.use_bias = use_bias
        self.dropout = dropout
        self.conv_form = conv_form
        self.act = make_activation(activation, "act")
        self.drop = keras.layers.Dropout(dropout, name="drop")

    def _proj(self, units, name):
        if self.conv_form:
            return keras.layers.Conv2D(units, 1, use_bias=self.use_bias, name=name)
        return keras.layers.Dense(units, use_bias=self.use_bias, name=name)

    def build(self, input_shape):
        out_dim = self.out_dim or input_shape[-1]
        self.fc1 = self._proj(self.hidden_dim, "fc1")
        self.fc2 = self._proj(out_dim, "fc2")
        self.fc1.build(input_shape)
        hidden_shape = tuple(input_shape[:-1]) + (self.hidden_dim,)
        self.act.build(hidden_shape)
        self.fc2.build(hidden_shape)

    def call(self, x, training=None):
        x = self.act(self.fc1(x))
        x = self.drop(x, training=training)
        x = self.fc2(x)
        return self.drop(x, training=training)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.out_dim or input_shape[-1],)

    def get_config(self):
        config = super().get_config()
        config.update(hidden_dim=self.hidden_dim, out_dim=self.out_dim,
                      activation=self.activation, use_bias=self.use_bias,
                      dropout=self.dropout, conv_form=self.conv_form)
        return config


@keras.saving.register_keras_serializable(package="visionzoo")
class MlpHead(keras.layers.Layer):
    """MetaFormer classifier head: ``fc1 -> act -> LayerNorm -> dropout -> fc2``.

    Args:
        num_classes: int.
        hidden_dim: int. Width of fc1 (4x the input width in ConvFormer/CAFormer).
        activation: str. "squared_relu" in the official head.
        norm_epsilon: float. 1e-5 in the official head (timm uses 1e-6).
        dropout: float. Dropout before fc2.
        use_bias: bool.
    """

    def __init__(self, num_classes, hidden_dim, activation="squared_relu",
                 norm_epsilon=1e-5, dropout=0.0, use_bias=True, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.hidden_dim = hidden_dim
        self.activation = activation
        self.norm_epsilon = norm_epsilon
        self.dropout = dropout
        self.use_bias = use_bias
        self.fc1 = keras.layers.Dense(hidden_dim, use_bias=use_bias, name="fc1")
        self.act = make_activation(activation, "act")
        self.norm = LayerNorm(epsilon=norm_epsilon, name="norm")
        self.drop = keras.layers.Dropout(dropout, name="drop")
        self.fc2 = keras.layers.Dense(num_classes, use_bias=use_bias, name="fc2")

    def build(self, input_shape):
        self.fc1.build(input_shape)
        hidden_shape = tuple(input_shape[:-1]) + (self.hidden_dim,)
        self.norm.build(hidden_shape)
        self.fc2.build(hidden_shape)

    def call(self, x, training=None):
        x = self.norm(self.act(self.fc1(x)))
        return self.fc2(self.drop(x, training=training))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.num_classes,)

    def get_config(self):
        config = super().get_config()
        config.update(num_classes=self.num_classes, hidden_dim=self.hidden_dim,
                      activation=self.activation, norm_epsilon=self.norm_epsilon,
                      dropout=self.dropout, use_bias=self.use_bias)
        return config
