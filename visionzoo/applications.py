"""``keras.applications``-style functions for every registered model.

    from visionzoo.applications import CAFormerS18, preprocess_input, decode_predictions

    model = CAFormerS18(weights="imagenet")
    preds = model.predict(preprocess_input(images))      # images: (N, 224, 224, 3), 0..255
    decode_predictions(preds, top=3)

One function per classification model of :func:`visionzoo.list_models`, generated from the
registry when this module is imported. The function name is the variant name in
class style: the prefix before the first ``_`` is spelled as the family module's
``DISPLAY_NAMES`` says, the rest is upper-cased, and a ``_`` is kept before a pure
number (``caformer_s18`` -> ``CAFormerS18``, ``poolformerv2_m48`` ->
``PoolFormerV2M48``, ``caformer_s18_384`` -> ``CAFormerS18_384``).

Every function has the ``keras.applications`` signature and argument checks::

    CAFormerS18(include_top=True, weights=None, input_tensor=None, input_shape=None,
                pooling=None, classes=1000, classifier_activation="softmax", name=None)

Differences from :func:`visionzoo.create_model`, on purpose, to match
``keras.applications``: ``classifier_activation`` defaults to ``"softmax"``, and
pretrained weights with ``include_top=True`` require ``classes`` to equal the
checkpoint's class count (``create_model`` instead keeps a fresh classifier and
warns). ``weights`` defaults to ``None`` (``keras.applications``: ``"imagenet"``),
so building a model never downloads anything unless asked to.

``preprocess_input`` and ``decode_predictions`` work like their
``keras.applications.<family>`` namesakes; class names come from the bundled
``visionzoo/data/imagenet_class_index.json`` (no download).
"""

import difflib
import functools
import importlib.resources
import json
import os

import keras
import numpy as np
from keras import ops

from visionzoo import registry

__all__ = ["decode_predictions", "preprocess_input"]  # + one name per variant, below

_CHECKPOINT_CLASSES = 1000  # a weights tag without "num_classes" is an ImageNet-1k head
_MIN_SIZE = 32


# --------------------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------------------


def application_name(model_name):
    """The class-style function name of a registered model (``"CAFormerS18_384"``).

    The prefix before the first ``_`` is looked up in the family module's
    ``DISPLAY_NAMES`` (falling back to ``str.capitalize``), the remaining
    ``_``-separated parts are upper-cased and joined, and a ``_`` is kept before a
    part that is a pure number.
    """
    variant = registry.get_variant(model_name)
    if hasattr(variant.module, "application_name"):
        out = variant.module.application_name(model_name)
        if not out.isidentifier():
            raise RuntimeError(f"{model_name!r} gives the invalid function name {out!r}.")
        return out
    prefix, _, rest = model_name.partition("_")
    display = getattr(variant.module, "DISPLAY_NAMES", {})
    out = display.get(prefix) or prefix.capitalize()
    for part in rest.split("_") if rest else []:
        out += f"_{part}" if part.isdigit() else part.upper()
    if not out.isidentifier():
        raise RuntimeError(f"{model_name!r} gives the invalid function name {out!r}; "
                           "fix the family's DISPLAY_NAMES.")
    return out


# --------------------------------------------------------------------------------------
# Argument checks (keras.applications semantics, keras-like messages)
# --------------------------------------------------------------------------------------


def _resolve_weights(variant, weights):
    """Return ``(kind, value, checkpoint_classes)``: kind is None, "tag" or "file"."""
    if weights is None:
        return None, None, None
    if isinstance(weights, (str, os.PathLike)):
        text = os.fspath(weights)
        if text == "imagenet" and "in1k" in variant.weights:
            text = "in1k"
        if text in variant.weights:
            spec = variant.weights[text]
            count = spec.get("num_classes", _CHECKPOINT_CLASSES)  # None: not published
            return "tag", text, None if count is None else int(count)
        if os.path.isfile(text):
            return "file", text, None
    tags = list(variant.weights)
    choices = ["'imagenet'/'in1k'" if t == "in1k" else repr(t) for t in tags]
    hint = ""
    if isinstance(weights, str):
        close = difflib.get_close_matches(weights, tags + ["imagenet"], n=3, cutoff=0.5)
        if close:
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?"
        elif os.sep in weights or "." in os.path.basename(weights):
            hint = " (No file exists at that path.)"
    raise ValueError(
        "The `weights` argument should be either `None` (random initialization), "
        f"one of the weights tags of {variant.name} ({', '.join(choices) or 'none'}), "
        "or the path to a checkpoint file to be loaded. "
        f"Received: weights={weights!r}.{hint}")


def _check_activation(classifier_activation):
    """Only ``None`` and softmax are allowed on top of pretrained classifiers."""
    if classifier_activation is None:
        return
    try:
        fn = keras.activations.get(classifier_activation)
    except (ValueError, TypeError):
        fn = None
    if fn not in (keras.activations.softmax, keras.activations.linear):
        raise ValueError(
            "Only `None` and `softmax` activations are allowed for the "
            "`classifier_activation` argument when using pretrained weights, with "
            f"`include_top=True`; Received: classifier_activation={classifier_activation!r}")


def _tensor_shape(input_tensor):
    try:
        shape = tuple(input_tensor.shape)
    except AttributeError as e:
        raise ValueError("`input_tensor` must be a Keras tensor (from `keras.Input`); "
                         f"Received: input_tensor={input_tensor!r}") from e
    if len(shape) != 4:
        raise ValueError("`input_tensor` must have shape (batch, height, width, channels); "
                         f"Received a tensor of shape {shape}.")
    return tuple(None if d is None else int(d) for d in shape[1:])


def _input_shape(variant, input_shape, input_tensor, pretrained):
    """The (H, W, C) to build with, after keras.applications' checks."""
    if input_tensor is not None:
        tensor_shape = _tensor_shape(input_tensor)
        if input_shape is not None:
            given = tuple(input_shape)
            if len(given) != 3 or any(a is not None and b is not None and a != b
                                      for a, b in zip(given, tensor_shape)):
                raise ValueError(
                    "`input_shape` and `input_tensor` disagree: input_shape="
                    f"{given}, input_tensor has shape {tensor_shape} (without the batch "
                    "axis). Pass only one of them.")
        input_shape = tensor_shape
    if input_shape is None:
        size = variant.input_size
        input_shape = (size, size, 3) if variant.fixed_input_size else (None, None, 3)
    input_shape = tuple(None if d is None else int(d) for d in input_shape)
    if len(input_shape) != 3:
        raise ValueError("`input_shape` must be a tuple of three integers (height, width, "
                         f"channels); Received: input_shape={input_shape}")
    h, w, c = input_shape
    if pretrained and c != 3:
        raise ValueError("The input must have 3 channels when pretrained weights are "
                         f"loaded; Received: input_shape={input_shape}")
    if c is None:
        raise ValueError(f"The channel count must be known; Received: input_shape={input_shape}")
    if (h is not None and h < _MIN_SIZE) or (w is not None and w < _MIN_SIZE):
        raise ValueError(f"Input size must be at least {_MIN_SIZE}x{_MIN_SIZE}; "
                         f"Received: input_shape={input_shape}")
    if variant.fixed_input_size and (h, w) != (variant.input_size, variant.input_size):
        raise ValueError(
            f"{variant.name} only runs at {variant.input_size}x{variant.input_size} (its "
            "token-mixing matrices are tied to that grid); Received: "
            f"input_shape={input_shape}")
    return input_shape


# --------------------------------------------------------------------------------------
# The generic builder behind every application function
# --------------------------------------------------------------------------------------


def build_application(model_name, include_top=True, weights=None, input_tensor=None,
                      input_shape=None, pooling=None, classes=1000,
                      classifier_activation="softmax", name=None):
    """Build registered model ``model_name`` with ``keras.applications`` semantics.

    The generated functions (``CAFormerS18``, ...) call this; see their docstrings.
    Every argument is checked before anything is built or downloaded.
    """
    variant = registry.get_variant(model_name)
    if include_top not in (True, False):
        raise ValueError(
            f"`include_top` must be True or False; Received: include_top={include_top!r}")
    include_top = bool(include_top)
    kind, value, ckpt_classes = _resolve_weights(variant, weights)
    if pooling not in (None, "avg", "max"):
        raise ValueError("The `pooling` argument should be one of None, 'avg' or 'max'; "
                         f"Received: pooling={pooling!r}")
    if isinstance(classes, bool) or not isinstance(classes, (int, np.integer)) or classes < 1:
        raise ValueError(f"`classes` must be a positive integer; Received: classes={classes!r}")
    classes = int(classes)
    if include_top and ckpt_classes is not None and classes != ckpt_classes:
        raise ValueError(
            f"If using `weights={weights!r}` with `include_top=True`, `classes` should be "
            f"{ckpt_classes} (the checkpoint's class count); Received: classes={classes}. "
            "Use include_top=False and add your own classifier, or "
            "visionzoo.create_model(..., num_classes=...) to fine-tune a new one.")
    if kind is not None and include_top:
        _check_activation(classifier_activation)
    shape = _input_shape(variant, input_shape, input_tensor, pretrained=kind is not None)

    model = variant.module.build(
        dict(variant.config), include_top=include_top, num_classes=classes,
        pooling=pooling, classifier_activation=classifier_activation,
        input_shape=shape, input_tensor=input_tensor, name=name or model_name)
    if kind is not None:
        from visionzoo.weights import load_checkpoint

        path = registry.fetch_weights(model_name, value) if kind == "tag" else value
        load_checkpoint(model, path, on_class_mismatch="error")
    return model


_SIGNATURE_DOC = """\
Instantiates the {display} architecture (visionzoo ``{name}``).

{facts}

Args:
    include_top: bool. Whether to include the classification head.
    weights: ``None`` (random initialization, the default), ``"imagenet"``
        (= ``"in1k"``), one of the weights tags above, or the path to a
        checkpoint file (official or timm layout, or a Keras ``.weights.h5``).
        Tags download once (hash-checked, cached).
    input_tensor: optional Keras tensor (output of ``keras.Input()``) to use as
        the image input of the model.
    input_shape: optional ``(height, width, channels)``, default
        ``{default_shape}``. Height and width must be at least {min_size};
        pretrained weights need 3 channels.{fixed_note}
    pooling: ``None``, ``"avg"`` or ``"max"``: global pooling of the last feature
        map when ``include_top=False`` (``None`` returns the 4D map).
    classes: int. Number of classes of the classifier. With pretrained weights
        and ``include_top=True`` it must be the checkpoint's class count
        ({ckpt_classes}).
    classifier_activation: ``None`` (logits), ``"softmax"`` (default) or any
        Keras activation; with pretrained weights and ``include_top=True`` only
        ``None`` and ``"softmax"`` are allowed.
    name: the model's name (default ``"{name}"``).

Returns:
    A ``{model_class}`` (a functional ``keras.Model``).

Feed it RGB images scaled by :func:`visionzoo.applications.preprocess_input`
(pixels / 255, then ImageNet mean/std); read ImageNet-1k predictions with
:func:`visionzoo.applications.decode_predictions`.
"""


def _docstring(model_name, display):
    v = registry.get_variant(model_name)
    pub = v.published or {}
    size = v.input_size
    facts = []
    if "params_m" in pub:
        facts.append(f"Parameters: {pub['params_m']}M (as published)")
    if "top1" in pub:
        facts.append(f"ImageNet-1k top-1: {pub['top1']}% (as published)")
    if "gmacs" in pub:
        facts.append(f"GMACs: {pub['gmacs']} at {size}x{size}")
    facts.append(f"Default input size: {size}x{size}"
                 + (" (fixed: the only size it runs at)" if v.fixed_input_size else ""))
    tags = ", ".join(
        f"``{t!r}``" + (f" ({s['num_classes']} classes)" if "num_classes" in s else "")
        for t, s in v.weights.items()) or "none"
    facts.append(f"Weights tags: {tags}")
    if v.code:
        facts.append(f"Reference code: {v.code}")
    ckpt = sorted({int(s.get("num_classes", _CHECKPOINT_CLASSES)) for s in v.weights.values()
                   if s.get("num_classes", _CHECKPOINT_CLASSES) is not None})
    default_shape = (size, size, 3) if v.fixed_input_size else (None, None, 3)
    fixed_note = (f" This model only runs at {size}x{size}." if v.fixed_input_size else
                  f" Any size works; the weights were trained at {size}x{size}.")
    model_class = getattr(getattr(v.module, "MODEL_CLASS", None), "__name__", "keras.Model")
    return _SIGNATURE_DOC.format(
        display=display, name=model_name, facts="\n".join(f"- {f}" for f in facts),
        default_shape=default_shape, min_size=_MIN_SIZE, fixed_note=fixed_note,
        ckpt_classes=" or ".join(map(str, ckpt)) or "1000", model_class=model_class)


def _make_application(model_name, function_name):
    def application(include_top=True, weights=None, input_tensor=None, input_shape=None,
                    pooling=None, classes=1000, classifier_activation="softmax", name=None):
        return build_application(
            model_name, include_top=include_top, weights=weights, input_tensor=input_tensor,
            input_shape=input_shape, pooling=pooling, classes=classes,
            classifier_activation=classifier_activation, name=name)

    application.__name__ = function_name
    application.__qualname__ = function_name
    application.__module__ = __name__
    application.__doc__ = _docstring(model_name, function_name)
    application.model_name = model_name
    return application


def _register_all():
    seen = {}
    for model_name in registry.list_models(task="classification"):
        function_name = application_name(model_name)
        if function_name in seen or function_name in globals():
            raise RuntimeError(
                f"{model_name!r} and {seen.get(function_name, 'a module attribute')!r} "
                f"both map to {function_name!r}.")
        seen[function_name] = model_name
        globals()[function_name] = _make_application(model_name, function_name)
        __all__.append(function_name)
    return seen


#: ``{function name: registered model name}`` for every generated application.
APPLICATIONS = _register_all()


# --------------------------------------------------------------------------------------
# Pre- and post-processing
# --------------------------------------------------------------------------------------


def preprocess_input(x, data_format=None):
    """Scale RGB images for visionzoo ImageNet models ("torch" mode).

    ``x / 255``, then ``(x - mean) / std`` per channel with the ImageNet mean
    ``(0.485, 0.456, 0.406)`` and std ``(0.229, 0.224, 0.225)`` that every
    MetaFormer variant was trained with (``visionzoo.get_variant(name).mean/std``).

    Args:
        x: images with values in ``[0, 255]``, shape ``(..., H, W, 3)``
            (channels last) or ``(..., 3, H, W)`` (channels first): a NumPy array
            (or anything ``np.asarray`` accepts) or a backend/Keras tensor.
        data_format: ``"channels_last"``, ``"channels_first"`` or None
            (``keras.config.image_data_format()``).

    Returns:
        A float NumPy array for NumPy input (the input is not modified), otherwise
        a tensor of the same backend.
    """
    data_format = data_format or keras.config.image_data_format()
    if data_format not in ("channels_last", "channels_first"):
        raise ValueError("`data_format` should be 'channels_last' or 'channels_first'; "
                         f"Received: data_format={data_format!r}")
    is_tensor = not isinstance(x, np.ndarray) and (
        isinstance(x, keras.KerasTensor) or ops.is_tensor(x))
    if not is_tensor:
        x = np.asarray(x)
    axis = -1 if data_format == "channels_last" else -3
    if len(x.shape) < 3 or x.shape[axis] != 3:
        raise ValueError(
            f"preprocess_input expects RGB images with 3 channels on axis {axis} "
            f"({data_format}); Received an input of shape {tuple(x.shape)}.")
    bshape = (3,) if axis == -1 else (3, 1, 1)
    mean = np.reshape(np.asarray(registry.IMAGENET_MEAN) * 255.0, bshape)
    std = np.reshape(np.asarray(registry.IMAGENET_STD) * 255.0, bshape)
    if not is_tensor:
        dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else keras.config.floatx()
        return ((x.astype(dtype) - mean.astype(dtype)) / std.astype(dtype)).astype(dtype)
    dtype = x.dtype if "float" in str(x.dtype) else keras.config.floatx()
    x = ops.cast(x, dtype)
    return (x - ops.convert_to_tensor(mean, dtype)) / ops.convert_to_tensor(std, dtype)


@functools.lru_cache(maxsize=1)
def imagenet_class_index():
    """``{index: (wnid, class_name)}`` of ImageNet-1k, read once from the bundled JSON."""
    resource = importlib.resources.files("visionzoo") / "data" / "imagenet_class_index.json"
    with resource.open("r", encoding="utf-8") as f:
        raw = json.load(f)
    return {int(k): (v[0], v[1]) for k, v in raw.items()}


def decode_predictions(preds, top=5):
    """Decode ImageNet-1k predictions into ``(wnid, class_name, score)`` tuples.

    Works offline: class names come from the bundled
    ``visionzoo/data/imagenet_class_index.json`` (Keras' format and spelling, e.g.
    ``("n01484850", "great_white_shark")``).

    Args:
        preds: array or tensor of shape ``(samples, 1000)`` (probabilities or logits).
        top: int. How many classes to return per sample.

    Returns:
        One list per sample of ``top`` tuples ``(wnid, class_name, score)``, highest
        score first (ties: lower class index first).
    """
    index = imagenet_class_index()
    preds = np.asarray(ops.convert_to_numpy(preds) if ops.is_tensor(preds) else preds)
    if preds.ndim != 2 or preds.shape[1] != len(index):
        raise ValueError(
            "`decode_predictions` expects a batch of predictions (i.e. a 2D array of "
            f"shape (samples, {len(index)})). Received array with shape: {preds.shape}")
    if isinstance(top, bool) or not isinstance(top, (int, np.integer)) or top < 1:
        raise ValueError(f"`top` must be a positive integer; Received: top={top!r}")
    results = []
    for row in preds:
        order = np.argsort(-row, kind="stable")[:top]
        results.append([index[int(i)] + (float(row[i]),) for i in order])
    return results
