"""The fine-tuning recipe: optimizer, schedule, layer-wise learning-rate decay, EMA,
mixed precision. What timm's ``train.py`` and keras-hub fine-tuning do, in Keras terms.

- AdamW, linear warm-up then cosine decay (``keras.optimizers.schedules.CosineDecay``),
  weight decay off for 1-D tensors (biases, norms, layer scales) and position/token
  embeddings (timm's ``no_weight_decay``), optional global-norm gradient clipping.
- Layer-wise learning-rate decay (BEiT/timm ``layer_decay``): the stem learns at
  ``lr * decay**(L+1)``, block ``i`` (counted across stages) at ``lr * decay**(L+1-i)``,
  the head at ``lr``. :func:`layer_ids` finds the blocks from the variable paths
  (``stages-2-blocks-3-…``, ``layers-1-blocks-0-…``, ``blocks-7-…``).
- Exponential moving average of the weights: Keras' own ``use_ema`` on the optimizer,
  evaluated with ``keras.callbacks.SwapEMAWeights``.
- Mixed precision: :func:`mixed_precision_scope` builds the model under
  ``mixed_bfloat16``/``mixed_float16`` and :func:`float32_head` keeps the classifier (and
  so the logits and the loss) in float32.
"""

import contextlib
import re

import keras

NO_DECAY_NAMES = ("pos_embed", "cls_token", "dist_token", "absolute_pos",
                  "relative_position_bias_table", "pos_block")

_BLOCK = re.compile(r"(?:^|[-/])(?:stages|layers|levels)[-_](\d+)(?:[-_].*?)?[-_]blocks?[-_](\d+)"
                    r"|(?:^|[-/])(?:stages|layers|levels)[-_](\d+)"
                    r"|(?:^|[-/])blocks[-_](\d+)")


def layer_ids(model):
    """Map each trainable variable path to its layer-decay group id and return
    ``(ids, num_layers)``: 0 for everything before the first block (stem, patch and
    position embeddings), ``1..num_layers`` for the blocks in order, ``num_layers + 1``
    for everything after the last block (final norm, head)."""
    keys, order = {}, []
    variables = model.trainable_variables
    for v in variables:
        m = _BLOCK.search(v.path)
        if m is None:
            keys[v.path] = None
            continue
        if m.group(1) is not None:
            key = (int(m.group(1)), int(m.group(2)))
        elif m.group(3) is not None:  # a stage's downsampling: with its first block
            key = (int(m.group(3)), -1)
        else:
            key = (0, int(m.group(4)))
        keys[v.path] = key
        order.append(key)
    blocks = sorted({k for k in order if k[1] >= 0})
    if not blocks:
        raise ValueError(
            f"layer_decay: found no blocks in {model.name}'s variable paths (expected "
            "'stages-<i>-blocks-<j>', 'layers-<i>-blocks-<j>' or 'blocks-<j>').")
    rank = {k: i + 1 for i, k in enumerate(blocks)}
    first_of_stage = {}
    for k in blocks:
        first_of_stage.setdefault(k[0], rank[k])
    num_layers = len(blocks)
    ids, seen_block = {}, False
    for v in variables:
        key = keys[v.path]
        if key is None:
            ids[v.path] = num_layers + 1 if seen_block else 0
        else:
            seen_block = True
            ids[v.path] = rank.get(key) or first_of_stage.get(key[0], 1)
    return ids, num_layers


def layer_decay_multipliers(model, decay):
    """``{variable path: learning-rate multiplier}`` for layer-wise decay ``decay``."""
    ids, num_layers = layer_ids(model)
    return {path: float(decay ** (num_layers + 1 - i)) for path, i in ids.items()}


@keras.saving.register_keras_serializable(package="visionzoo")
class LayerDecayAdamW(keras.optimizers.AdamW):
    """AdamW whose learning rate (and so its decoupled weight decay, as in timm's
    parameter groups) is scaled per variable by ``lr_multipliers[variable.path]``.

    Works on every backend (the per-variable update is Keras' own Adam step); under
    torch it forgoes Keras' fused multi-tensor AdamW.
    """

    def __init__(self, lr_multipliers=None, **kwargs):
        super().__init__(**kwargs)
        self.lr_multipliers = dict(lr_multipliers or {})

    def build(self, var_list):
        super().build(var_list)
        self._multipliers = [float(self.lr_multipliers.get(v.path, 1.0)) for v in var_list]

    def _apply_weight_decay(self, variables):
        pass  # applied in update_step, with each variable's own learning rate

    def update_step(self, gradient, variable, learning_rate):
        scale = self._multipliers[self._get_variable_index(variable)]
        learning_rate = keras.ops.cast(learning_rate, variable.dtype) * scale
        if self.weight_decay and self._use_weight_decay(variable):
            wd = keras.ops.cast(self.weight_decay, variable.dtype)
            variable.assign(variable - variable * wd * learning_rate)
        super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        config = super().get_config()
        config["lr_multipliers"] = self.lr_multipliers
        return config


def warmup_cosine(learning_rate, total_steps, warmup_steps, min_lr_ratio=0.0):
    """Linear warm-up from 0 to ``learning_rate`` over ``warmup_steps``, then cosine decay
    to ``min_lr_ratio * learning_rate`` at ``total_steps``."""
    warmup_steps = int(min(max(warmup_steps, 0), max(total_steps - 1, 0)))
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup_steps else learning_rate,
        decay_steps=max(1, int(total_steps) - warmup_steps), alpha=min_lr_ratio,
        warmup_target=learning_rate if warmup_steps else None, warmup_steps=warmup_steps)


def make_optimizer(model, learning_rate, total_steps, warmup_steps=0, weight_decay=0.05,
                   layer_decay=None, ema_decay=None, clip_norm=None, min_lr_ratio=0.0):
    """AdamW (β 0.9/0.999, ε 1e-8 as torch) for ``model``'s trainable variables.

    Args:
        layer_decay: None or a factor in (0, 1], e.g. 0.75 (:func:`layer_ids`).
        ema_decay: None or the EMA momentum, e.g. 0.9998 (Keras ``use_ema``).
        clip_norm: None or a global gradient-norm cap.
    """
    kwargs = dict(learning_rate=warmup_cosine(learning_rate, total_steps, warmup_steps,
                                              min_lr_ratio),
                  weight_decay=weight_decay, beta_1=0.9, beta_2=0.999, epsilon=1e-8,
                  global_clipnorm=clip_norm)
    if ema_decay:
        if not 0.0 < ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1), got {ema_decay}.")
        kwargs.update(use_ema=True, ema_momentum=float(ema_decay))
    if layer_decay is not None:
        if not 0.0 < layer_decay <= 1.0:
            raise ValueError(f"layer_decay must be in (0, 1], got {layer_decay}.")
        opt = LayerDecayAdamW(lr_multipliers=layer_decay_multipliers(model, layer_decay),
                              **kwargs)
    else:
        opt = keras.optimizers.AdamW(**kwargs)
    no_decay = [v for v in model.trainable_variables
                if len(v.shape) <= 1 or any(n in v.path for n in NO_DECAY_NAMES)]
    opt.exclude_from_weight_decay(var_list=no_decay)
    return opt


MIXED_POLICIES = ("mixed_bfloat16", "mixed_float16")


@contextlib.contextmanager
def mixed_precision_scope(policy):
    """Build layers under ``policy`` (None/"float32" = unchanged); restores the global
    policy afterwards."""
    if policy in (None, "float32"):
        yield
        return
    if policy not in MIXED_POLICIES:
        raise ValueError(f"mixed_precision must be None, 'float32' or one of "
                         f"{MIXED_POLICIES}; got {policy!r}.")
    before = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(before)


def float32_head(model, prefixes=("head",)):
    """Compute the classifier layers (names starting with ``prefixes``) in float32, so
    logits, softmax and the loss are float32 under a mixed policy. Returns their names."""
    names = []
    for layer in model.layers:
        if layer.name.startswith(prefixes):
            for sub in layer._flatten_layers(include_self=True):
                sub.dtype_policy = keras.DTypePolicy("float32")
            names.append(layer.name)
    return names
