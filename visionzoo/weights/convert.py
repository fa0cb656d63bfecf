"""The conversion engine: official/timm state dicts -> Keras variables, strictly.

A family declares, as data, an ordered list of ``(pattern, replacement)`` renames
per checkpoint layout (``KEY_MAPS``). After renaming, every checkpoint key must
name exactly one model variable in *canonical* form: the variable's path with
``/`` -> ``.`` and Keras' variable names in torch spelling (``kernel``/``gamma``
-> ``weight``, ``beta`` -> ``bias``, ``moving_mean``/``moving_variance`` ->
``running_mean``/``running_var``). Tensor layouts are converted from the target
layer's type (Conv2D ``(O,I,kh,kw)->(kh,kw,I,O)``, depthwise ``(C,1,kh,kw)->
(kh,kw,C,1)``, Dense ``(O,I[,1,1])->(I,O)``).

Nothing is assigned unless every model variable is filled and every checkpoint
tensor is used; otherwise :class:`CheckpointMismatchError` lists what is missing,
unexpected and mis-shaped, and the model is left as it was.
"""

import re

import keras
import numpy as np

_VAR_NAMES = {"kernel": "weight", "gamma": "weight", "beta": "bias",
              "depthwise_kernel": "weight", "moving_mean": "running_mean",
              "moving_variance": "running_var"}


class CheckpointMismatchError(ValueError):
    """The checkpoint does not cover the model exactly. Nothing was loaded."""

    def __init__(self, model_name, layout, missing, unexpected, misshaped):
        self.missing = missing
        self.unexpected = unexpected
        self.misshaped = misshaped
        lines = [f"Checkpoint does not match model {model_name!r} (layout {layout!r}); "
                 "the model was left unchanged."]

        def section(title, rows):
            if rows:
                lines.append(f"  {title} ({len(rows)}):")
                lines.extend(f"    {r}" for r in rows[:40])
                if len(rows) > 40:
                    lines.append(f"    ... and {len(rows) - 40} more")

        section("missing: model weights the checkpoint does not fill",
                [f"{k} {tuple(s)}" for k, s in missing])
        section("unexpected: checkpoint tensors the model has no place for",
                [f"{k} {tuple(s)}" for k, s in unexpected])
        section("mis-shaped", [f"{k}: checkpoint {tuple(a)} vs model {tuple(b)} (torch layout)"
                               for k, a, b in misshaped])
        super().__init__("\n".join(lines))


def canonical_name(path):
    """``stages-0-blocks-0-mlp/fc1/kernel`` -> ``stages.0.blocks.0.mlp.fc1.weight``.

    Layer names use "-" for torch's "." (the torch backend rejects dots in names).
    """
    parts = path.split("/")
    parts[-1] = _VAR_NAMES.get(parts[-1], parts[-1])
    return ".".join(parts).replace("-", ".")


def _layer_kind(layer):
    declared = getattr(layer, "torch_layout", None)  # custom layers holding a conv kernel
    if declared:
        return declared
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return "depthwise"
    if isinstance(layer, keras.layers.Conv2D):
        return "conv"
    if isinstance(layer, keras.layers.Dense):
        return "dense"
    return "other"


def model_targets(model):
    """``{canonical name: (variable, kind)}`` for every variable of ``model``."""
    kinds = {}
    for layer in model._flatten_layers(include_self=False, recursive=True):
        for v in list(layer._trainable_variables) + list(layer._non_trainable_variables):
            kinds[id(v)] = _layer_kind(layer)
    targets = {}
    for v in model.weights:
        name = canonical_name(v.path)
        if name in targets:
            raise RuntimeError(f"Two model variables share the name {name!r}.")
        targets[name] = (v, kinds.get(id(v), "other"))
    return targets


def torch_shape(var_shape, kind, is_kernel):
    """The torch-layout shape a checkpoint tensor should have for this variable."""
    s = tuple(var_shape)
    if not is_kernel:
        return s
    if kind == "conv":
        return (s[3], s[2], s[0], s[1])
    if kind == "depthwise":
        return (s[2] * s[3], 1, s[0], s[1])
    if kind == "dense":
        return (s[1], s[0])
    return s


def to_keras_layout(array, var_shape, kind, is_kernel):
    """Convert a torch-layout tensor to the variable's layout, or return None."""
    a = np.asarray(array)
    target = tuple(var_shape)
    if is_kernel and kind == "conv":
        if a.ndim == 2:  # Linear weight into a 1x1 conv
            a = a[:, :, None, None]
        if a.ndim != 4:
            return None
        a = a.transpose(2, 3, 1, 0)
    elif is_kernel and kind == "depthwise":
        if a.ndim != 4 or a.shape[1] != 1:
            return None
        c = a.shape[0]
        if len(target) != 4 or c != target[2] * target[3]:
            return None
        a = a.transpose(2, 3, 0, 1).reshape(a.shape[2], a.shape[3], target[2], c // target[2])
    elif is_kernel and kind == "dense":
        if a.ndim == 4 and a.shape[2:] == (1, 1):  # 1x1 conv weight into a Dense
            a = a[:, :, 0, 0]
        if a.ndim != 2:
            return None
        a = a.T
    elif a.shape != target and a.size == int(np.prod(target)) and (
            tuple(d for d in a.shape if d != 1) == tuple(d for d in target if d != 1)):
        a = a.reshape(target)  # e.g. (C, 1, 1) layer scales
    if a.shape != target:
        return None
    return a


def rename_keys(keys, key_map):
    """Apply the first matching ``(pattern, replacement)`` of ``key_map`` to each key."""
    compiled = [(re.compile(p), r) for p, r in key_map]
    out = {}
    for key in keys:
        new = key
        for pattern, repl in compiled:
            if pattern.search(key):
                new = pattern.sub(repl, key, count=1)
                break
        out[key] = new
    return out


def plan_assignments(model, state, key_map=(), layout="?", ignore=(), skip_prefixes=(),
                     allow_missing_prefixes=()):
    """Match ``state`` to ``model``; return ``[(variable, array)]`` or raise.

    Args:
        ignore: regexes of checkpoint keys to drop (derivable buffers).
        skip_prefixes: canonical prefixes whose checkpoint tensors are dropped (for
            example the classifier when the class count differs, or the head when
            ``include_top=False``).
        allow_missing_prefixes: canonical prefixes of model variables that may stay
            unfilled (a new classifier).
    """
    targets = model_targets(model)
    renamed = rename_keys(state.keys(), key_map)
    ignore = [re.compile(p) for p in ignore]

    def under(name, prefixes):
        return any(name == p or name.startswith(p + ".") for p in prefixes)

    plan, unexpected, misshaped, used = [], [], [], set()
    for key, value in state.items():
        if any(p.search(key) for p in ignore):
            continue
        name = renamed[key]
        if under(name, skip_prefixes):
            continue
        if name not in targets:
            unexpected.append((key, np.shape(value)))
            continue
        if name in used:  # two checkpoint keys rename to one variable
            unexpected.append((f"{key} (a second tensor for {name})", np.shape(value)))
            continue
        variable, kind = targets[name]
        is_kernel = variable.path.split("/")[-1] in ("kernel", "depthwise_kernel")
        array = to_keras_layout(value, variable.shape, kind, is_kernel)
        if array is None:
            misshaped.append((key, np.shape(value), torch_shape(variable.shape, kind, is_kernel)))
            used.add(name)
            continue
        plan.append((variable, array))
        used.add(name)
    missing = [(n, torch_shape(v.shape, k,
                               v.path.split("/")[-1] in ("kernel", "depthwise_kernel")))
               for n, (v, k) in targets.items()
               if n not in used and not under(n, allow_missing_prefixes)]
    if missing or unexpected or misshaped:
        raise CheckpointMismatchError(model.name, layout, missing, unexpected, misshaped)
    return plan


def assign(plan):
    for variable, array in plan:
        variable.assign(array.astype(variable.dtype) if hasattr(array, "astype") else array)
