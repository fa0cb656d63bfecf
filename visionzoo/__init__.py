"""visionzoo: modern vision architectures as ordinary Keras 3 models.

    import visionzoo
    visionzoo.list_models("caformer_*")
    model = visionzoo.create_model("caformer_s18", weights="in1k")

Nothing heavy is imported until it is used.
"""

__version__ = "0.1.0"

_LAZY = {
    "create_model": ("visionzoo.registry", "create_model"),
    "list_models": ("visionzoo.registry", "list_models"),
    "model_info": ("visionzoo.registry", "model_info"),
    "get_variant": ("visionzoo.registry", "get_variant"),
    "reparameterize": ("visionzoo.registry", "reparameterize"),
    "create_detector": ("visionzoo.heads.detection", "create_detector"),
    "create_segmenter": ("visionzoo.heads.segmentation", "create_segmenter"),
    "heads": ("visionzoo.heads", None),
    "UnknownModelError": ("visionzoo.registry", "UnknownModelError"),
    "load_checkpoint": ("visionzoo.weights", "load_checkpoint"),
    "verify": ("visionzoo.weights", "verify"),
    "applications": ("visionzoo.applications", None),
    "export": ("visionzoo.export", None),
    "layers": ("visionzoo.layers", None),
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'visionzoo' has no attribute {name!r}")
    import importlib

    module_name, attr = _LAZY[name]
    module = importlib.import_module(module_name)
    value = module if attr is None else getattr(module, attr)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
