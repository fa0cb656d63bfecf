"""Fine-tune a model on labelled images: ``visionzoo train`` and :func:`finetune`.

    from visionzoo.training import finetune
    result = finetune("poolformerv2_s12", "tfds:beans", weights="in1k", epochs=10,
                      batch_size=32, learning_rate=5e-4, output_dir="runs/beans")
    print(result.best_val_accuracy, result.paths["tflite"])

The recipe is timm's fine-tuning one (see :mod:`visionzoo.training.recipe` and
:mod:`visionzoo.training.data`): AdamW with warm-up + cosine, label smoothing,
RandAugment / RandomErasing / MixUp / CutMix, stochastic depth, optional layer-wise
learning-rate decay, EMA of the weights, mixed precision, gradient clipping.

``output_dir`` receives:

- ``checkpoint/last.weights.h5`` + ``checkpoint/state.json``: model *and* optimizer state
  after the last finished epoch. Running the same call again resumes there and ends with
  the same weights an uninterrupted run would have (every epoch's data depends only on
  the seed and the epoch number).
- ``best.weights.h5``: the epoch with the best validation accuracy (EMA weights when
  ``ema_decay`` is set: validation runs on them).
- ``best.keras`` and ``best.tflite`` (float32, builtin ops only) at the end.
- ``history.csv`` and ``curves.png``: loss, accuracy and learning rate per epoch.
- ``summary.json``: the settings and the final figures.
"""

import contextlib
import csv
import dataclasses
import json
import os
import time

import numpy as np

from visionzoo.training.data import Augment, Preprocessing, _pair, load_image_data

_STATE = "state.json"
TFLITE_CHECK_IMAGES = 2048  # validation images the exported file is checked on
_LAST = "last.weights.h5"


@dataclasses.dataclass
class FinetuneResult:
    model: object
    history: dict
    best_epoch: int
    best_val_accuracy: float
    paths: dict
    summary: dict


def _atomic(path, write):
    """Write through a temporary file in the same folder, then rename: an interrupted
    save never leaves a half-written file behind. Keeps the suffix Keras insists on."""
    base, ext = os.path.splitext(path)
    if path.endswith(".weights.h5"):
        base, ext = path[: -len(".weights.h5")], ".weights.h5"
    tmp = f"{base}.tmp{ext}"
    write(tmp)
    os.replace(tmp, path)


def _save_json(path, obj):
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, default=float)

    _atomic(path, write)


def _ema_variables(model):
    opt = model.optimizer
    opt = getattr(opt, "inner_optimizer", opt)  # LossScaleOptimizer
    if not getattr(opt, "use_ema", False):
        return None
    return opt._model_variables_moving_average


def _seed_states(model):
    """The model's random-generator states (dropout, drop path): Keras does not save them
    with the weights, and a resumed run must draw the same masks."""
    return [v for v in model.non_trainable_variables
            if v.path.endswith("seed_generator_state")]


def _current_lr(model):
    opt = getattr(model.optimizer, "inner_optimizer", model.optimizer)
    lr = opt.learning_rate
    return float(np.asarray(lr.numpy() if hasattr(lr, "numpy") else lr))


def _progress_callback(out, state, monitor_val):
    """The bookkeeping callback: history rows, resumable checkpoint, best weights.
    (Defined on call: this module is imported by the CLI parser, without Keras.)"""
    import keras

    class Progress(keras.callbacks.Callback):
        def __init__(self, out, state, monitor_val):
            super().__init__()
            self.out, self.state, self.monitor_val = out, state, monitor_val

        def on_epoch_end(self, epoch, logs=None):
            row = {"epoch": epoch + 1, "learning_rate": _current_lr(self.model)}
            row.update({k: float(v) for k, v in (logs or {}).items()
                        if k != "learning_rate"})
            state = self.state
            state["history"].append(row)
            score = row.get("val_accuracy") if self.monitor_val else None
            if score is not None and score > state["best_val_accuracy"]:
                state["best_val_accuracy"], state["best_epoch"] = score, epoch + 1
                self._save_best()
            elif score is None:
                state["best_epoch"] = epoch + 1
                self._save_best()
            # Last: the model + optimizer state, then the json that points at it.
            ckpt = os.path.join(self.out, "checkpoint")
            _atomic(os.path.join(ckpt, _LAST), self.model.save_weights)
            state["epoch"] = epoch + 1
            state["seed_states"] = [np.asarray(v.value).tolist()
                                    for v in _seed_states(self.model)]
            _save_json(os.path.join(ckpt, _STATE), state)
            _write_history(self.out, state["history"])

        def _save_best(self):
            path = os.path.join(self.out, "best.weights.h5")
            ema = _ema_variables(self.model)
            if ema is None:
                _atomic(path, self.model.save_weights)
                return
            # Validation ran on the EMA weights: save those, then put the raw back.
            raw = [v.numpy() for v in self.model.trainable_variables]
            for v, a in zip(self.model.trainable_variables, ema):
                v.assign(a)
            try:
                _atomic(path, self.model.save_weights)
            finally:
                for v, value in zip(self.model.trainable_variables, raw):
                    v.assign(value)

    return Progress(out, state, monitor_val)


def _write_history(out, history):
    if not history:
        return
    keys = list(dict.fromkeys(k for row in history for k in row))

    def write(tmp):
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(history)

    _atomic(os.path.join(out, "history.csv"), write)


def plot_curves(history, path, title=None):
    """Loss, accuracy and learning rate per epoch as a PNG (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, metric in zip(axes[:2], ("loss", "accuracy")):
        for key, style in ((metric, "-"), (f"val_{metric}", "--")):
            values = [row.get(key) for row in history]
            if any(v is not None for v in values):
                ax.plot(epochs, values, style, marker="o", ms=3,
                        label="train" if key == metric else "validation")
        ax.set_title(metric)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    axes[2].plot(epochs, [row["learning_rate"] for row in history], marker="o", ms=3)
    axes[2].set_title("learning rate (end of epoch)")
    axes[2].set_xlabel("epoch")
    axes[2].grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _float32_copy(model):
    """The same model computing in float32 (for export after mixed-precision training)."""
    import keras

    def strip(obj):
        if isinstance(obj, dict):
            if obj.get("class_name") == "DTypePolicy" and isinstance(obj.get("config"), dict):
                name = obj["config"].get("name", "")
                if name.startswith("mixed_"):
                    return {**obj, "config": {**obj["config"], "name": "float32"}}
            return {k: strip(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [strip(v) for v in obj]
        if obj in ("mixed_bfloat16", "mixed_float16"):
            return "float32"
        return obj

    config = strip(keras.saving.serialize_keras_object(model))
    copy = keras.saving.deserialize_keras_object(config)
    copy.set_weights(model.get_weights())
    return copy


def _build_model(model, num_classes, image_size, channels, weights, drop_path_rate,
                 mixed_precision):
    import keras

    from visionzoo.training.recipe import float32_head, mixed_precision_scope

    if isinstance(model, str):
        from visionzoo.registry import create_model

        rate = 0.1 if drop_path_rate is None else drop_path_rate
        overrides = {"drop_path_rate": rate} if rate else {}
        with mixed_precision_scope(mixed_precision):
            built = create_model(model, weights=weights, num_classes=num_classes,
                                 input_shape=(*image_size, channels), **overrides)
        if mixed_precision not in (None, "float32"):
            float32_head(built)
        return built
    if callable(model) and not isinstance(model, keras.Model):
        with mixed_precision_scope(mixed_precision):  # built here: inside the distribution
            model = model()
        if mixed_precision not in (None, "float32"):
            float32_head(model)
    if not isinstance(model, keras.Model):
        raise TypeError(f"model must be a registered name, a keras.Model or a function "
                        f"returning one; got {type(model).__name__}.")
    if weights is not None or drop_path_rate is not None:
        raise ValueError("weights= and drop_path_rate= apply to a model name; build your "
                         "keras.Model with them instead.")
    if mixed_precision not in (None, "float32") and \
            model.dtype_policy.name != mixed_precision:
        raise ValueError(f"mixed_precision={mixed_precision!r} needs the model built under "
                         "that policy: pass a model name, or build it inside "
                         "visionzoo.training.recipe.mixed_precision_scope(...).")
    out = model.outputs[0].shape[-1] if getattr(model, "outputs", None) else None
    if out is not None and out != num_classes:
        raise ValueError(f"The model outputs {out} classes; the data has {num_classes}.")
    return model


def _distribution_scope(distribution, model):
    if distribution in (None, "none"):
        return contextlib.nullcontext()
    from visionzoo.training import distribution as dist

    return dist.scope(distribution, model=model if isinstance(model, str) else None)


def finetune(model, data, *, epochs=10, batch_size=32, image_size=None, learning_rate=5e-4,
             weights=None, output_dir="visionzoo_finetune", val_data=None, val_fraction=0.1,
             weight_decay=0.05, warmup_epochs=1.0, min_lr_ratio=0.0, label_smoothing=0.1,
             augment=None, drop_path_rate=None, layer_decay=None, ema_decay=None,
             mixed_precision=None, clip_norm=None, distribution=None, resume=True,
             export_tflite=True, crop_pct=None, seed=0, callbacks=(), verbose="auto",
             jit_compile="auto"):
    """Fine-tune ``model`` on ``data`` and export the best epoch (see the module docstring).

    Args:
        model: a registered name (built with ``weights``, the data's class count, the
            image size and ``drop_path_rate``), your own ``keras.Model`` (logits out), or
            a function returning one (called inside the distribution and mixed-precision
            scopes; needs ``image_size``).
        data: ``"tfds:<name>[:split]"``, a class-per-subfolder folder, an ``.npz`` file
            or ``(images, labels)`` arrays (:func:`visionzoo.training.data.load_image_data`).
        epochs, batch_size, learning_rate: the usual; ``learning_rate`` is the peak after
            ``warmup_epochs`` of linear warm-up, then cosine decay to
            ``min_lr_ratio * learning_rate``.
        image_size: int or (H, W); default the model's.
        weights: for a model name: None, a weights tag (``"in1k"``...) or a checkpoint.
        val_data, val_fraction: validation source, or the fraction held out.
        weight_decay: AdamW's decoupled decay (not on biases, norms, embeddings).
        label_smoothing: for the cross-entropy on one-hot (or mixed) targets.
        augment: :class:`~visionzoo.training.data.Augment`; None = timm-like defaults,
            ``Augment.none()`` = off.
        drop_path_rate: stochastic depth for a model name (default 0.1; a
            ``keras.Model`` keeps its own).
        layer_decay: None or e.g. 0.75: layer-wise learning-rate decay.
        ema_decay: None or e.g. 0.9998: keep and validate an EMA of the weights.
        mixed_precision: None, ``"mixed_bfloat16"`` or ``"mixed_float16"`` (the head,
            logits and loss stay float32; float16 adds Keras' loss scaling).
        clip_norm: None or a global gradient-norm cap.
        distribution: None, ``"data_parallel"`` or ``"model_parallel"``
            (:mod:`visionzoo.training.distribution`).
        resume: continue from ``output_dir/checkpoint`` when it is there.
        export_tflite: write ``best.tflite`` and check it on the validation images.
        crop_pct: evaluation centre-crop fraction; default the model's (1.0 for a
            ``keras.Model`` argument).
        callbacks: extra Keras callbacks.
    Returns:
        :class:`FinetuneResult`.
    """
    import keras

    from visionzoo.training.recipe import make_optimizer

    from visionzoo.training.recipe import MIXED_POLICIES

    # Argument checks first: a bad call writes nothing.
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1; got {epochs}, {batch_size}.")
    if mixed_precision not in (None, "float32", *MIXED_POLICIES):
        raise ValueError(f"mixed_precision must be None, 'float32' or one of "
                         f"{MIXED_POLICIES}; got {mixed_precision!r}.")
    if layer_decay is not None and not 0.0 < layer_decay <= 1.0:
        raise ValueError(f"layer_decay must be in (0, 1], got {layer_decay}.")
    if ema_decay is not None and not 0.0 < ema_decay < 1.0:
        raise ValueError(f"ema_decay must be in (0, 1), got {ema_decay}.")
    if distribution not in (None, "none"):
        from visionzoo.training.distribution import _check_mode

        _check_mode(distribution)
    out = os.fspath(output_dir)
    if isinstance(model, str):
        pre = Preprocessing.for_model(model, image_size, crop_pct)
    elif callable(model) and not isinstance(model, keras.Model):
        if not image_size:
            raise ValueError("image_size is needed when model is a function.")
        pre = Preprocessing(image_size=_pair(image_size),
                            crop_pct=1.0 if crop_pct is None else crop_pct)
    else:
        size = _pair(image_size) if image_size else tuple(model.inputs[0].shape[1:3])
        if None in size:
            raise ValueError("image_size is needed for a model with a dynamic input size.")
        pre = Preprocessing(image_size=size, crop_pct=1.0 if crop_pct is None else crop_pct,
                            channels=model.inputs[0].shape[-1])
    say = print if verbose else (lambda *a, **k: None)

    keras.utils.set_random_seed(seed)
    data_ = load_image_data(data, pre, batch_size=batch_size, val_source=val_data,
                            val_fraction=val_fraction,
                            augment=augment if augment is not None else Augment(),
                            seed=seed)
    steps = data_.steps_per_epoch
    state_path = os.path.join(out, "checkpoint", _STATE)
    state = {"epoch": 0, "best_epoch": 0, "best_val_accuracy": -1.0, "history": []}
    if resume and os.path.exists(state_path):
        with open(state_path) as f:
            state = json.load(f)
        say(f"Resuming {out} after epoch {state['epoch']}.")
    stale = os.path.exists(state_path) and not resume  # removed once training starts
    initial_epoch = int(state["epoch"])
    val_ds = data_.val_dataset()

    with _distribution_scope(distribution, model):
        net = _build_model(model, data_.num_classes, pre.image_size, pre.channels, weights,
                           drop_path_rate, mixed_precision)
        optimizer = make_optimizer(
            net, learning_rate, total_steps=epochs * steps,
            warmup_steps=int(round(warmup_epochs * steps)), weight_decay=weight_decay,
            layer_decay=layer_decay, ema_decay=ema_decay, clip_norm=clip_norm,
            min_lr_ratio=min_lr_ratio)
        top_k = min(5, data_.num_classes - 1)
        metrics = [keras.metrics.CategoricalAccuracy(name="accuracy")]
        if top_k > 1:
            metrics.append(keras.metrics.TopKCategoricalAccuracy(k=top_k, name=f"top{top_k}"))
        net.compile(optimizer=optimizer,
                    loss=keras.losses.CategoricalCrossentropy(
                        from_logits=True, label_smoothing=label_smoothing),
                    metrics=metrics, jit_compile=jit_compile)
        if initial_epoch:
            net.optimizer.build(net.trainable_variables)
            net.load_weights(os.path.join(out, "checkpoint", _LAST))
            for v, value in zip(_seed_states(net), state.get("seed_states", [])):
                v.assign(np.asarray(value, dtype=v.dtype))
        os.makedirs(os.path.join(out, "checkpoint"), exist_ok=True)
        if stale:
            os.remove(state_path)
        cbs = []
        if ema_decay:
            cbs.append(keras.callbacks.SwapEMAWeights(swap_on_epoch=False))
        cbs.append(_progress_callback(out, state, monitor_val=val_ds is not None))
        cbs.extend(callbacks)
        start = time.perf_counter()
        if initial_epoch < epochs:
            say(f"Training {net.name}: {data_.num_train} images, {data_.num_classes} "
                f"classes, {steps} steps/epoch, epochs {initial_epoch + 1}..{epochs}.")
            net.fit(data_.train_epochs(initial_epoch, epochs), epochs=epochs,
                    initial_epoch=initial_epoch, steps_per_epoch=steps,
                    validation_data=val_ds, callbacks=cbs, verbose=verbose, shuffle=False)
        train_seconds = time.perf_counter() - start

        best = os.path.join(out, "best.weights.h5")
        if os.path.exists(best):
            net.load_weights(best)
        best_val = None
        if val_ds is not None:
            best_val = float(net.evaluate(val_ds, verbose=0, return_dict=True)["accuracy"])

    paths = {"checkpoint": os.path.join(out, "checkpoint", _LAST), "best_weights": best,
             "history": os.path.join(out, "history.csv"),
             "curves": os.path.join(out, "curves.png"), "keras": os.path.join(out, "best.keras")}
    history = {k: [row.get(k) for row in state["history"]]
               for k in dict.fromkeys(k for row in state["history"] for k in row)}
    if state["history"]:
        plot_curves(state["history"], paths["curves"], title=f"{net.name} fine-tuning")
    export_model = net if mixed_precision in (None, "float32") else _float32_copy(net)
    _atomic(paths["keras"], export_model.save)
    summary = {"model": net.name, "data": data if isinstance(data, str) else "arrays",
               "num_classes": data_.num_classes, "class_names": data_.class_names,
               "num_train": data_.num_train, "num_val": data_.num_val, "epochs": epochs,
               "batch_size": batch_size, "image_size": list(pre.image_size),
               "learning_rate": learning_rate, "weight_decay": weight_decay,
               "label_smoothing": label_smoothing, "layer_decay": layer_decay,
               "ema_decay": ema_decay, "mixed_precision": mixed_precision,
               "drop_path_rate": drop_path_rate, "clip_norm": clip_norm,
               "augment": dataclasses.asdict(data_.augment),
               "backend": keras.backend.backend(), "train_seconds": train_seconds,
               "best_epoch": state["best_epoch"], "best_val_accuracy": best_val}
    if export_tflite:
        from visionzoo.export import to_tflite
        from visionzoo.training.demo import tflite_predict

        paths["tflite"] = os.path.join(out, "best.tflite")
        report = to_tflite(export_model, paths["tflite"], input_size=pre.image_size)
        summary["tflite_bytes"] = report.size_bytes
        if val_ds is not None:
            # Bounded: a large validation split would not fit in memory as one array.
            x_val, y_val = data_.val_arrays(limit=TFLITE_CHECK_IMAGES)
            pred = tflite_predict(paths["tflite"], x_val)
            keras_pred = export_model.predict(x_val, verbose=0, batch_size=batch_size)
            summary["tflite_checked_images"] = int(len(y_val))
            summary["tflite_val_accuracy"] = float(np.mean(pred.argmax(-1) == y_val))
            summary["tflite_agreement"] = float(np.mean(pred.argmax(-1) ==
                                                        keras_pred.argmax(-1)))
    _save_json(os.path.join(out, "summary.json"), summary)
    say(f"Best epoch {state['best_epoch']}: validation accuracy "
        f"{'-' if best_val is None else f'{100 * best_val:.2f}%'}"
        + (f", TFLite {100 * summary['tflite_val_accuracy']:.2f}%"
           if "tflite_val_accuracy" in summary else "") + f". Files in {out}/")
    return FinetuneResult(model=net, history=history, best_epoch=state["best_epoch"],
                          best_val_accuracy=best_val, paths=paths, summary=summary)


def train_cli(args):
    """``visionzoo train``: see ``visionzoo train --help``."""
    augment = Augment.none() if args.no_augment else Augment(
        hflip=args.hflip, randaugment=None if args.randaugment is None else
        tuple(args.randaugment), random_erasing=args.random_erasing, mixup=args.mixup,
        cutmix=args.cutmix)
    result = finetune(
        args.model, args.data, epochs=args.epochs, batch_size=args.batch_size,
        image_size=args.image_size, learning_rate=args.lr, weights=args.weights,
        output_dir=args.out, val_data=args.val_data, val_fraction=args.val_fraction,
        weight_decay=args.weight_decay, warmup_epochs=args.warmup_epochs,
        label_smoothing=args.label_smoothing, augment=augment,
        drop_path_rate=args.drop_path, layer_decay=args.layer_decay, ema_decay=args.ema,
        mixed_precision=args.mixed_precision, clip_norm=args.clip_norm,
        distribution=args.distribution, resume=not args.no_resume,
        export_tflite=not args.no_tflite, seed=args.seed)
    return 0 if result.best_epoch else 1


def add_train_arguments(s):
    """The ``visionzoo train`` arguments (shared by the CLI and ``python -m``)."""
    s.add_argument("model", help="a registered model name (visionzoo list)")
    s.add_argument("--data", required=True,
                   help="tfds:<name>[:split], a folder of class sub-folders, or an .npz "
                        "with images/labels")
    s.add_argument("--val-data", default=None, help="validation source (default: the "
                   "dataset's validation/test split, a val/ folder, or --val-fraction)")
    s.add_argument("--val-fraction", type=float, default=0.1)
    s.add_argument("--weights", default=None, help="weights tag (in1k...) or checkpoint")
    s.add_argument("--epochs", type=int, default=10)
    s.add_argument("--batch-size", type=int, default=32)
    s.add_argument("--image-size", type=int, default=None, help="default: the model's")
    s.add_argument("--lr", type=float, default=5e-4, help="peak learning rate")
    s.add_argument("--weight-decay", type=float, default=0.05)
    s.add_argument("--warmup-epochs", type=float, default=1.0)
    s.add_argument("--label-smoothing", type=float, default=0.1)
    s.add_argument("--drop-path", type=float, default=0.1, help="stochastic depth rate")
    s.add_argument("--layer-decay", type=float, default=None, help="e.g. 0.75")
    s.add_argument("--ema", type=float, default=None, help="EMA momentum, e.g. 0.9998")
    s.add_argument("--mixed-precision", default=None,
                   choices=["mixed_bfloat16", "mixed_float16"])
    s.add_argument("--clip-norm", type=float, default=None)
    s.add_argument("--hflip", type=float, default=0.5)
    s.add_argument("--randaugment", type=float, nargs=2, default=(2, 0.5),
                   metavar=("OPS", "MAGNITUDE"))
    s.add_argument("--random-erasing", type=float, default=0.25)
    s.add_argument("--mixup", type=float, default=0.8)
    s.add_argument("--cutmix", type=float, default=1.0)
    s.add_argument("--no-augment", action="store_true", help="all augmentation off")
    s.add_argument("--distribution", default=None,
                   choices=["data_parallel", "model_parallel"])
    s.add_argument("--out", default="visionzoo_finetune", help="output folder")
    s.add_argument("--no-resume", action="store_true", help="start over in --out")
    s.add_argument("--no-tflite", action="store_true", help="skip the TFLite export")
    s.add_argument("--seed", type=int, default=0)
    return s
