"""The model registry: variant tables -> builders. The only place names are resolved."""

import dataclasses
import difflib
import fnmatch
import importlib
import os

# Family modules; each defines VARIANTS, build(config, **kw), KEY_MAPS, detect_layout,
# from_official_config and OFFICIAL_REPOS.
FAMILY_MODULES = (
    "visionzoo.backbones.metaformer",
    "visionzoo.backbones.swin",
    "visionzoo.backbones.litv2",
    "visionzoo.backbones.convit",
    "visionzoo.backbones.shvit",
    "visionzoo.backbones.svt",
    "visionzoo.backbones.dit",
    "visionzoo.backbones.iformer",
    "visionzoo.backbones.hornet",
    "visionzoo.backbones.maxim",
    "visionzoo.backbones.flatformer",
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class UnknownModelError(ValueError):
    """No registered model has that name."""


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    family: str
    config: dict
    input_size: int = 224
    crop_pct: float = 0.875
    interpolation: str = "bicubic"
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    weights: dict = dataclasses.field(default_factory=dict)
    code: str = ""
    timm: str = None
    published: dict = dataclasses.field(default_factory=dict)
    fixed_input_size: bool = False
    license: str = "apache-2.0"
    # "classification" (ImageNet-style classifiers: keras.applications functions, the
    # model table), or another task ("restoration", "generation", ...).
    task: str = "classification"
    note: str = ""  # e.g. "not timm's iformer_*": shown by model_info
    input_channels: int = 3  # 4 for DiT's VAE latents

    @property
    def module(self):
        return importlib.import_module(self.family)


_REGISTRY = None


def _registry():
    global _REGISTRY
    if _REGISTRY is None:
        reg = {}
        for family in FAMILY_MODULES:
            module = importlib.import_module(family)
            for name, spec in module.VARIANTS.items():
                fields = {k: v for k, v in spec.items()
                          if k in {f.name for f in dataclasses.fields(Variant)}}
                reg[name] = Variant(name=name, family=family, **fields)
        _REGISTRY = reg
    return _REGISTRY


def list_models(pattern=None, pretrained=False, task=None):
    """Sorted model names, optionally filtered by a glob ``pattern`` (``"caformer_*"``),
    by having weights (``pretrained=True``) and by ``task`` (``"classification"``,
    ``"restoration"``, ``"generation"``...)."""
    names = sorted(_registry())
    if pattern:
        names = [n for n in names if fnmatch.fnmatch(n, pattern)]
    if pretrained:
        names = [n for n in names if _registry()[n].weights]
    if task:
        names = [n for n in names if _registry()[n].task == task]
    return names


def get_variant(name):
    """The :class:`Variant` called ``name``; unknown names raise with close matches."""
    reg = _registry()
    if name in reg:
        return reg[name]
    close = difflib.get_close_matches(name, list(reg), n=5, cutoff=0.6)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise UnknownModelError(
        f"Unknown model {name!r}.{hint} See visionzoo.list_models() for all {len(reg)}.")


def model_info(name, compute=True):
    """Facts about a model: parameters, GMACs at the default size, preprocessing,
    reference code, weight sources and their licence, and published numbers.

    With ``compute=True`` the model is built (no weights) to count parameters and
    multiply-accumulates; otherwise only the table's data is returned.
    """
    v = get_variant(name)
    info = {
        "name": v.name,
        "family": v.family.rsplit(".", 1)[-1],
        "default_input_size": (v.input_size, v.input_size, v.input_channels),
        "fixed_input_size": v.fixed_input_size,
        "preprocessing": {"mean": v.mean, "std": v.std, "crop_pct": v.crop_pct,
                          "interpolation": v.interpolation, "scale": "pixels / 255"},
        "reference_code": v.code,
        "timm_name": v.timm,
        "weights": {tag: dict(spec) for tag, spec in v.weights.items()},
        "weights_license": v.license,
        "published": dict(v.published),
        "note": v.note,
    }
    if compute:
        from visionzoo.flops import count_macs

        model = create_model(name, input_shape=(v.input_size, v.input_size, v.input_channels))
        # Like torch's parameters(): BatchNorm running statistics are buffers, not params.
        stats = [w for w in model.non_trainable_weights
                 if w.path.rsplit("/", 1)[-1] in ("moving_mean", "moving_variance")]
        info["buffers"] = int(sum(_size(w) for w in stats))
        info["params"] = int(sum(_size(w) for w in model.weights)) - info["buffers"]
        info["trainable_params"] = int(sum(_size(w) for w in model.trainable_weights))
        info["gmacs"] = round(count_macs(model) / 1e9, 3)
    return info


def _size(w):
    n = 1
    for d in w.shape:
        n *= int(d)
    return n


def _resolve_weights(v, weights):
    """Return (kind, value, spec): ("tag", tag, spec) or ("file", path, {})."""
    if weights is None:
        return None, None, {}
    if isinstance(weights, (str, os.PathLike)):
        text = os.fspath(weights)
        if text in v.weights:
            return "tag", text, v.weights[text]
        if text == "imagenet" and "in1k" in v.weights:
            return "tag", "in1k", v.weights["in1k"]
        if os.path.isfile(text):
            return "file", text, {}
        if os.sep in text or "." in os.path.basename(text):
            raise FileNotFoundError(f"No checkpoint file at {text!r}.")
        tags = ", ".join(repr(t) for t in v.weights) or "none"
        raise ValueError(
            f"Unknown weights {text!r} for {v.name}: expected None, a file path, or one of "
            f"its tags ({tags}; 'imagenet' means 'in1k').")
    raise TypeError(f"weights must be None, a tag or a path, got {type(weights).__name__}.")


def fetch_weights(name, tag="in1k", progress=True):
    """Download (hash-checked, cached) the checkpoint ``tag`` of model ``name``."""
    from visionzoo.weights.download import download

    v = get_variant(name)
    _, _, spec = _resolve_weights(v, tag)
    return download(spec["url"], sha256=spec.get("sha256"),
                    filename=spec.get("filename") or f"{name}.{tag}.{_ext(spec['url'])}",
                    progress=progress)


def _ext(url):
    base = os.path.basename(url)
    return base.split(".", 1)[1] if "." in base else "bin"


def create_model(name, *, weights=None, num_classes=None, include_top=True, input_shape=None,
                 pooling=None, classifier_activation=None, features_only=False, **overrides):
    """Build a registered model, optionally with weights.

    Args:
        name: str. A name from :func:`list_models`.
        weights: None, a weights tag of the model (``"in1k"``, ``"in21ft1k"``, ...;
            ``"imagenet"`` = ``"in1k"``), or a checkpoint path (official or timm layout,
            ``.pth/.pt/.bin/.safetensors/.npz/.weights.h5``).
        num_classes: int or None. Classifier size; None means the checkpoint's (1000
            for ImageNet-1k tags, 21841 for ``in21k``; 1000 without weights). When it
            differs from the checkpoint's, the classifier is left freshly initialised
            and a warning says so (timm's behaviour); every other tensor must match.
        include_top: bool. Keep the classification head.
        input_shape: (H, W, C) or None. Default: dynamic H, W (fixed-size models: the
            default size).
        pooling: None, "avg" or "max" when ``include_top=False``.
        classifier_activation: None (logits), "softmax", ...
        features_only: bool. Return a model whose outputs are ``pyramid_outputs``.
        **overrides: constructor arguments of the family's model (``drop_path_rate``...).
    """
    v = get_variant(name)
    kind, value, spec = _resolve_weights(v, weights)
    if input_shape is None:
        c = v.input_channels
        input_shape = ((v.input_size, v.input_size, c) if v.fixed_input_size
                       else (None, None, c))
    if kind and input_shape[-1] != v.input_channels:
        raise ValueError(
            f"Pretrained weights for {name} expect {v.input_channels} input channels; "
            f"input_shape {tuple(input_shape)} has {input_shape[-1]}.")
    if v.fixed_input_size and tuple(input_shape[:2]) != (v.input_size, v.input_size):
        raise ValueError(
            f"{name} only runs at {v.input_size}x{v.input_size} (its token-mixing "
            f"matrices are tied to that grid); got input_shape {tuple(input_shape)}.")
    if features_only:
        include_top = False
    # Fetch before building: a failed download should not cost a model build.
    path = fetch_weights(name, value) if kind == "tag" else value
    config = dict(v.config)
    config.update(overrides)
    source = path
    if num_classes is None:
        num_classes = spec.get("num_classes", 1000)  # None: not published, read the file
        if kind is not None and not os.fspath(path).endswith(".weights.h5"):
            source, found = _read_with_class_count(v.module, config, path)
            num_classes = found or num_classes
        num_classes = int(num_classes or 1000)
    model = v.module.build(config, include_top=include_top, num_classes=num_classes,
                           pooling=pooling, classifier_activation=classifier_activation,
                           input_shape=tuple(input_shape), name=name)
    if source is not None:
        from visionzoo.weights import load_checkpoint

        load_checkpoint(model, source, on_class_mismatch="skip")
    return model.features() if features_only else model


def _read_with_class_count(module, config, path):
    """Read a checkpoint file once; return it and its classifier's class count."""
    from visionzoo.weights.convert import rename_keys
    from visionzoo.weights.readers import read_checkpoint

    state = read_checkpoint(path)
    layout = module.detect_layout(state.keys())
    if layout is None or not hasattr(module, "classifier_key"):
        return state, None
    target = module.classifier_key(config) + ".bias"
    for key, new in rename_keys(state.keys(), module.KEY_MAPS[layout]).items():
        if new == target:
            return state, int(state[key].shape[0])
    return state, None


def reparameterize(model):
    """The deploy (inference) form of ``model``: a new model with the same outputs whose
    training-time branches are folded into single layers (Conv+BN -> Conv, ...).

    Supported by families that define it (SHViT); others raise ``TypeError``.
    """
    module = importlib.import_module(type(model).__module__)
    fn = getattr(module, "reparameterize", None)
    if fn is None:
        raise TypeError(f"{type(model).__name__} has no deploy form to reparameterize into "
                        "(it has no foldable training-time branches).")
    return fn(model)
