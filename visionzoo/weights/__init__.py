"""Checkpoint loading, conversion, downloads and the parity harness.

Heavy imports (keras, torch) happen inside the functions, so ``python -m`` helpers in
this package stay light.
"""

import importlib
import os
import warnings


def family_module(model):
    """The family module that defines ``type(model)`` (it holds the key maps)."""
    module = importlib.import_module(type(model).__module__)
    if not hasattr(module, "KEY_MAPS"):
        raise TypeError(f"{type(model).__name__} is not a visionzoo family model.")
    return module


def load_checkpoint(model, source, *, layout=None, on_class_mismatch="error"):
    """Load an official, timm or Keras checkpoint into ``model``, strictly.

    Args:
        model: a visionzoo model (not a ``features_only`` wrapper).
        source: path (``.pth/.pt/.bin/.pth.tar/.safetensors/.npz/.weights.h5``) or a
            ``{name: array}`` dict in an official or timm layout.
        layout: str or None. Force a layout of the family's ``KEY_MAPS``.
        on_class_mismatch: "error" or "skip". What to do when the checkpoint's
            classifier has another class count than the model: raise, or leave the
            classifier freshly initialised (with a warning).

    Raises:
        CheckpointMismatchError: tensors missing, unexpected or mis-shaped; the model
            is left unchanged.
    """
    from visionzoo.weights.convert import assign, plan_assignments, rename_keys
    from visionzoo.weights.readers import read_checkpoint

    if isinstance(source, (str, os.PathLike)) and os.fspath(source).endswith(".weights.h5"):
        return _load_keras_weights(model, os.fspath(source))
    state = read_checkpoint(source) if isinstance(source, (str, os.PathLike)) else dict(source)
    family = family_module(model)
    layout = layout or family.detect_layout(state.keys())
    if layout is None or layout not in family.KEY_MAPS:
        sample = ", ".join(list(state)[:5]) or "(no tensors)"
        raise ValueError(
            f"This checkpoint is not in a layout {type(model).__name__} knows "
            f"({', '.join(family.KEY_MAPS)}); its first keys are: {sample}. "
            "The model was left unchanged.")
    key_map = family.KEY_MAPS[layout]
    skip, allow_missing = [], []
    if not getattr(model, "include_top", True):
        skip.append("head")
    else:
        classifier = model.classifier_key
        renamed = rename_keys(state.keys(), key_map)
        ckpt_classes = [state[k].shape[0] for k, n in renamed.items()
                        if n == f"{classifier}.bias"]
        if ckpt_classes and ckpt_classes[0] != model.num_classes:
            message = (f"The checkpoint's classifier has {ckpt_classes[0]} classes but the "
                       f"model has {model.num_classes}")
            if on_class_mismatch == "error":
                raise ValueError(message + "; build it with that many classes, or use "
                                 "include_top=False. The model was left unchanged.")
            warnings.warn(message + f": '{classifier}' was not loaded and keeps its fresh "
                          "initialisation (fine-tune it).", stacklevel=3)
            skip.append(classifier)
            allow_missing.append(classifier)
    adapt = getattr(family, "adapt_state", None)
    if adapt is not None:  # e.g. resize relative-position tables to the model's windows
        state = adapt(model, state, rename_keys(state.keys(), key_map))
    plan = plan_assignments(model, state, key_map, layout,
                            ignore=getattr(family, "IGNORE_KEYS", ()),
                            skip_prefixes=skip, allow_missing_prefixes=allow_missing)
    assign(plan)
    return model


def _load_keras_weights(model, path):
    """Load a Keras ``.weights.h5`` into a clone first, so a failure changes nothing."""
    clone = type(model).from_config(model.get_config())
    try:
        clone.load_weights(path)
    except Exception as e:
        raise ValueError(f"{path} does not fit {model.name}: {e} The model was left "
                         "unchanged.") from e
    for target, value in zip(model.weights, clone.weights):
        target.assign(value)
    return model


def verify(target, **kwargs):
    """Run the parity harness; see :func:`visionzoo.weights.verify.verify`."""
    from visionzoo.weights.verify import verify as _verify

    return _verify(target, **kwargs)
