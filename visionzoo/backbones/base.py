"""What every visionzoo backbone shares: input validation, the classifier top,
config round trips and the ``pyramid_outputs`` convention (keras-hub's
``{"P2": stride 4, ..., "P5": stride 32}``)."""

import keras


class ZooBackbone(keras.Model):
    """Base class of functional visionzoo models.

    Subclasses build a functional graph in ``__init__`` and call
    ``super().__init__(inputs=..., outputs=...)``; ``get_config`` returns the
    constructor arguments, so ``.keras`` files round-trip.
    """

    def _make_input(self, input_shape, input_tensor, min_size=32):
        """Return ``(model_inputs, x)``: the model's input(s) and the tensor to build on.

        Like keras.applications, an ``input_tensor`` that is an intermediate Keras
        tensor keeps the graph's original ``Input`` as the model input.
        """
        if input_tensor is not None:
            if not isinstance(input_tensor, keras.KerasTensor):
                input_tensor = keras.Input(tensor=input_tensor)
            input_shape = tuple(input_tensor.shape[1:])
        input_shape = tuple(input_shape) if input_shape is not None else (None, None, 3)
        if len(input_shape) != 3:
            raise ValueError(
                f"input_shape must be (height, width, channels), got {input_shape}.")
        h, w, c = input_shape
        if c is None:
            raise ValueError("The channel count of input_shape must be known.")
        for side, n in (("height", h), ("width", w)):
            if n is not None and n < min_size:
                raise ValueError(
                    f"Input {side} {n} is below this model's minimum of {min_size} "
                    f"pixels (input_shape={input_shape}).")
        if input_tensor is not None:
            sources = keras.utils.get_source_inputs(input_tensor)
            return (sources[0] if len(sources) == 1 else sources), input_tensor
        x = keras.Input(shape=input_shape, name="images")
        return x, x

    def _record_top_args(self, include_top, num_classes, pooling, classifier_activation,
                         input_shape):
        self.include_top = include_top
        self.num_classes = num_classes
        self.pooling = pooling
        self.classifier_activation = classifier_activation
        self.input_shape_arg = None if input_shape is None else tuple(input_shape)

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "include_top": self.include_top,
            "num_classes": self.num_classes,
            "pooling": self.pooling,
            "classifier_activation": self.classifier_activation,
            "input_shape": self.input_shape_arg,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def predict_on_batch(self, x):
        """As ``keras.Model.predict_on_batch``, with the same outputs
        (:mod:`visionzoo.inference`): on JAX without Keras' per-call write-back of every
        variable; on torch, from the second call with an input signature on, through a
        ``torch.export`` capture of the forward pass (plus ``torch.compile`` with
        ``jit_compile=True``) instead of Keras' eager layer calls."""
        from visionzoo.inference import predict_on_batch

        outputs = predict_on_batch(self, x)
        return super().predict_on_batch(x) if outputs is None else outputs

    def predict(self, x, *args, **kwargs):
        """As ``keras.Model.predict``; on JAX and torch each batch runs through the same
        cached function as :meth:`predict_on_batch` (:mod:`visionzoo.inference`)."""
        from visionzoo.inference import fast_predict

        with fast_predict(self):
            return super().predict(x, *args, **kwargs)

    def features(self):
        """A model from the input to ``pyramid_outputs`` (``features_only=True``)."""
        if not getattr(self, "pyramid_outputs", None):
            raise ValueError(f"{self.name} has no pyramid outputs.")
        return keras.Model(self.inputs, dict(self.pyramid_outputs),
                           name=f"{self.name}_features")


def build_classifier_top(x, num_classes, activation, dropout=0.0, pooling=None):
    """Pooling (when ``num_classes`` is None) or Dropout -> Dense(``head-fc``) -> activation.

    Layer names use "-" where torch module paths use "." (torch-backend Keras
    rejects dots in layer names); the converter maps one to the other.
    """
    if num_classes is None:
        if pooling == "avg":
            x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        elif pooling == "max":
            x = keras.layers.GlobalMaxPooling2D(name="max_pool")(x)
        elif pooling is not None:
            raise ValueError(f"pooling must be None, 'avg' or 'max', got {pooling!r}.")
    else:
        if dropout:
            x = keras.layers.Dropout(dropout, name="head-drop")(x)
        x = keras.layers.Dense(num_classes, name="head-fc")(x)
    if activation not in (None, "linear"):
        x = keras.layers.Activation(activation, name="predictions", dtype="float32")(x)
    return x
