"""HorNet: Efficient High-Order Spatial Interactions with Recursive Gated Convolutions
(Rao et al., NeurIPS 2022).

Reference: raoyongming/HorNet ``hornet.py`` (classification; not in timm).

- Stem: 4x4/4 conv -> LayerNorm (eps 1e-6). Between stages: LayerNorm -> 2x2/2 conv.
- Block: ``x + gamma1 * gnConv(LN(x))``, then ``x + gamma2 * fc2(GELU(fc1(LN(x))))``
  (ConvNeXt-style MLP, ratio 4; exact GELU; every LayerNorm eps 1e-6 with bias).
- gnConv orders 2, 3, 4, 5 in stages 1-4, scale 1/3. The "7x7" variants use a depthwise
  7x7 conv inside gnConv; the "GF" variants replace it in stages 3-4 by a global-local
  filter (:class:`visionzoo.layers.gnconv.GlobalLocalFilter`, FFT written as real DFT
  matrices) whose complex weights fit the 224 px grids (14x8, 7x4) or 384 px (24x13,
  12x7); other input sizes resize them (bilinear, align_corners=True) like the official
  code. Checkpoint filters stored at another grid than the model's configuration are
  resized the same way on load (the official fine-tuning loader's rule).
- Head: global mean -> LayerNorm -> Linear.

Any input size >= 32 runs (strided convs floor like torch's); batch is dynamic.
``pyramid_outputs`` P2..P5 are the outputs of each stage's last block.
``include_top=False``: ``pooling=None`` returns the last stage's map (the final
LayerNorm, which acts on the pooled vector, is then not part of the model and its
checkpoint tensors are dropped on load); ``pooling="avg"``/``"max"`` returns
``LayerNorm(pool(map))`` (``"avg"`` is the official ``forward_features``).

The file reads top to bottom: family block -> model -> variant table -> key maps ->
official-constructor adapter.
"""

import re

import keras
import numpy as np

from visionzoo.backbones.base import ZooBackbone, build_classifier_top
from visionzoo.layers import GELU, LayerNorm, Scale, residual_add
from visionzoo.layers.gnconv import GnConv, interpolation_matrix

EPS = 1e-6

# --------------------------------------------------------------------------------------
# Family block
# --------------------------------------------------------------------------------------


def hornet_block(x, order, scale, global_filter, kernel_size, mlp_ratio, layer_scale,
                 drop_path, name):
    """One HorNet ``Block`` in a functional graph (official module names)."""
    dim = x.shape[-1]
    y = LayerNorm(epsilon=EPS, name=f"{name}-norm1")(x)
    y = GnConv(order, scale, kernel_size=kernel_size, global_filter=global_filter,
               epsilon=EPS, name=f"{name}-gnconv")(y)
    if layer_scale > 0:
        y = Scale(layer_scale, name=f"{name}-gamma1")(y)
    x = residual_add(x, y, drop_path, name, 1)
    y = LayerNorm(epsilon=EPS, name=f"{name}-norm2")(x)
    y = keras.layers.Dense(int(mlp_ratio * dim), name=f"{name}-pwconv1")(y)
    y = GELU(name=f"{name}-act")(y)
    y = keras.layers.Dense(dim, name=f"{name}-pwconv2")(y)
    if layer_scale > 0:
        y = Scale(layer_scale, name=f"{name}-gamma2")(y)
    return residual_add(x, y, drop_path, name, 2)


# --------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="visionzoo")
class HorNet(ZooBackbone):
    """HorNet backbone/classifier.

    Args:
        base_dim: int. Stage-1 channels; stages have ``base_dim * [1, 2, 4, 8]``.
        depths: list of 4 ints. Blocks per stage.
        orders: list of 4 ints. gnConv order per stage.
        gnconv_scale: float. gnConv's ``s`` (1/3 in every published variant).
        global_filter: list of 4 entries, each None (depthwise conv) or ``[h, w]``: the
            stored complex-weight grid of that stage's global-local filter.
        kernel_size: int. gnConv depthwise kernel (7).
        mlp_ratio: float.
        layer_scale_init_value: float. Initial ``gamma1``/``gamma2``; 0 removes them.
        drop_path_rate: float. Linear over all blocks.
        include_top, num_classes, pooling, classifier_activation, input_shape,
        input_tensor, name: as in ``keras.applications``.
    """

    def __init__(self, base_dim=64, depths=(2, 3, 18, 2), orders=(2, 3, 4, 5),
                 gnconv_scale=1.0 / 3.0, global_filter=(None, None, None, None),
                 kernel_size=7, mlp_ratio=4.0, layer_scale_init_value=1e-6,
                 drop_path_rate=0.0, include_top=True, num_classes=1000, pooling=None,
                 classifier_activation=None, input_shape=None, input_tensor=None,
                 name="hornet", **kwargs):
        n = len(depths)
        if not (len(orders) == len(global_filter) == n):
            raise ValueError(f"depths, orders and global_filter need one entry per stage; "
                             f"got {len(depths)}, {len(orders)}, {len(global_filter)}.")
        global_filter = [None if g is None else [int(v) for v in g] for g in global_filter]
        dims = [base_dim * 2 ** i for i in range(n)]
        for dim, order in zip(dims, orders):
            if dim % 2 ** (order - 1):
                raise ValueError(f"Stage width {dim} is not divisible by 2**(order-1) = "
                                 f"{2 ** (order - 1)} (order {order}).")
        inputs, x = self._make_input(input_shape, input_tensor, min_size=32)

        total = sum(depths)
        index = 0
        pyramid = {}
        for i in range(n):
            if i == 0:
                x = keras.layers.Conv2D(dims[0], 4, strides=4, name="downsample_layers-0-0")(x)
                x = LayerNorm(epsilon=EPS, name="downsample_layers-0-1")(x)
            else:
                x = LayerNorm(epsilon=EPS, name=f"downsample_layers-{i}-0")(x)
                x = keras.layers.Conv2D(dims[i], 2, strides=2,
                                        name=f"downsample_layers-{i}-1")(x)
            for j in range(depths[i]):
                rate = drop_path_rate * index / max(total - 1, 1)
                x = hornet_block(x, orders[i], gnconv_scale, global_filter[i], kernel_size,
                                 mlp_ratio, layer_scale_init_value, rate, f"stages-{i}-{j}")
                index += 1
            pyramid[f"P{i + 2}"] = x

        if include_top:
            x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
            x = LayerNorm(epsilon=EPS, name="norm")(x)
            x = build_classifier_top(x, num_classes, classifier_activation)
        else:
            x = build_classifier_top(x, None, None, pooling=pooling)
            if pooling is not None:
                x = LayerNorm(epsilon=EPS, name="norm")(x)

        super().__init__(inputs=inputs, outputs=x, name=name, **kwargs)
        self.pyramid_outputs = pyramid
        self.base_dim = base_dim
        self.depths = list(depths)
        self.orders = list(orders)
        self.gnconv_scale = gnconv_scale
        self.global_filter = global_filter
        self.kernel_size = kernel_size
        self.mlp_ratio = mlp_ratio
        self.layer_scale_init_value = layer_scale_init_value
        self.drop_path_rate = drop_path_rate
        self._record_top_args(include_top, num_classes, pooling, classifier_activation,
                              input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(base_dim=self.base_dim, depths=self.depths, orders=self.orders,
                      gnconv_scale=self.gnconv_scale, global_filter=self.global_filter,
                      kernel_size=self.kernel_size, mlp_ratio=self.mlp_ratio,
                      layer_scale_init_value=self.layer_scale_init_value,
                      drop_path_rate=self.drop_path_rate)
        return config

    @property
    def classifier_key(self):
        return "head.fc"


# --------------------------------------------------------------------------------------
# Variant table (data)
# --------------------------------------------------------------------------------------

_BASE_DIMS = {"tiny": 64, "small": 96, "base": 128, "large": 192}
_COMMON = {"depths": [2, 3, 18, 2], "orders": [2, 3, 4, 5], "gnconv_scale": 1.0 / 3.0}
# Global-filter weight grids (stages 3-4) of the GF variants, per training resolution.
_GF_GRIDS = {224: [None, None, [14, 8], [7, 4]], 384: [None, None, [24, 13], [12, 7]]}
_CLOUD = "https://cloud.tsinghua.edu.cn/f/{}/?dl=1"
_CODE = "https://github.com/raoyongming/HorNet/blob/main/hornet.py"
# Official README: name: (size, GF?, input size, weights tag, Tsinghua Cloud file id,
# params (M, as printed), GFLOPs (fvcore MACs), ImageNet-1k top-1 or None).
# The large models are ImageNet-22k checkpoints (about 10.5k classes, see below; no
# top-1 published).
_TABLE = {
    "hornet_tiny_7x7": ("tiny", False, 224, "in1k", "bac9690c72944d19aca1", "22", 4.0, 82.8),
    "hornet_tiny_gf": ("tiny", True, 224, "in1k", "460e759c82324ea6bfa3", "23", 3.9, 83.0),
    "hornet_small_7x7": ("small", False, 224, "in1k", "8ef64277da0e469ea857", "50", 8.8, 83.8),
    "hornet_small_gf": ("small", True, 224, "in1k", "959603ca287d4c09ad49", "50", 8.7, 84.0),
    "hornet_base_7x7": ("base", False, 224, "in1k", "13a748487711492e9704", "87", 15.6, 84.2),
    "hornet_base_gf": ("base", True, 224, "in1k", "c212d1d8a3914b47a5c1", "88", 15.5, 84.3),
    "hornet_large_7x7": ("large", False, 224, "in22k", "c2fc23caae084a3aa73d", "209", 34.8,
                         None),
    "hornet_large_gf": ("large", True, 224, "in22k", "8600206ebdfa485f98d0", "211", 34.7,
                        None),
    "hornet_large_gf_img384": ("large", True, 384, "in22k", "eec48d5eca5a48d98fd2", "216",
                               101.8, None),
}


def _variants():
    out = {}
    for name, (size, gf, img, tag, file_id, params, gflops, top1) in _TABLE.items():
        config = dict(_COMMON, base_dim=_BASE_DIMS[size],
                      global_filter=_GF_GRIDS[img] if gf else [None] * 4)
        spec = {"url": _CLOUD.format(file_id), "filename": f"{name}.{tag}.pth"}
        if tag == "in22k":
            # Not 21841: the README's parameter counts (209/211/216M) fit a 1536-wide
            # head of ~10.3k-10.6k classes (ImageNet-21K-P-like) for all three models,
            # and the repo's in1k_to_21k_map.pth indexes up to 10458. The exact count is
            # unpublished, so it is read from the checkpoint when it is loaded.
            spec["num_classes"] = None
        published = {"params_m": params, "gmacs": gflops}
        if top1 is not None:
            published["top1"] = top1
        out[name] = dict(config=config, input_size=img, crop_pct=1.0 if img == 384 else 0.875,
                         interpolation="bicubic", weights={tag: spec}, code=_CODE, timm=None,
                         published=published, license="mit")
    return out


VARIANTS = _variants()

MODEL_CLASS = HorNet
DISPLAY_NAMES = {"hornet": "HorNet"}
OFFICIAL_REPOS = ("raoyongming/HorNet",)
TIMM_NOTES = {name: "HorNet is not in timm; verify it against the official fixtures "
                    "(../shared/parity/hornet_7x7_mini.npz, hornet_gf_mini.npz)."
              for name in VARIANTS}


def application_name(model_name):
    """``hornet_tiny_7x7`` -> ``HorNetTiny7x7``, ``hornet_base_gf`` -> ``HorNetBaseGF``,
    ``hornet_large_gf_img384`` -> ``HorNetLargeGF_384``."""
    _, size, kind, *rest = model_name.split("_")
    out = "HorNet" + size.capitalize() + ("GF" if kind == "gf" else kind)
    for part in rest:
        out += "_" + part[3:] if part.startswith("img") else part.capitalize()
    return out


def build(config, **kwargs):
    """Builder used by the registry: ``config`` is a VARIANTS entry's ``config``."""
    return HorNet(**config, **kwargs)


def classifier_key(config):
    return "head.fc"


# --------------------------------------------------------------------------------------
# Checkpoint key maps (data): raoyongming/HorNet -> ours
# --------------------------------------------------------------------------------------

KEY_MAPS = {
    "official": [
        (r"^head\.", "head.fc."),
        (r"^(stages\.\d+\.\d+\.gamma[12])$", r"\1.scale"),
    ],
}
IGNORE_KEYS = (r"num_batches_tracked$",)


def detect_layout(keys):
    keys = set(keys)
    if "downsample_layers.0.0.weight" in keys and any(".gnconv.proj_in." in k for k in keys):
        return "official"
    return None


def adapt_state(model, state, renamed):
    """Fit an official state dict to ``model`` before the strict conversion:

    - global-filter ``complex_weight`` tensors stored at another grid (e.g. 224-px
      weights into the 384-px configuration) are resized to the model's grid, bilinear
      with ``align_corners=True``, as the official ``main.py`` does when fine-tuning;
    - the final ``norm`` is dropped when the model ends at the feature map (it
      normalises the pooled vector, so ``include_top=False, pooling=None`` has no place
      for it).
    """
    from visionzoo.weights.convert import model_targets

    names = {layer.name for layer in model.layers}
    targets = model_targets(model)
    out = {}
    for key, value in state.items():
        name = renamed[key]
        if name.startswith("norm.") and "norm" not in names:
            continue
        if name.endswith(".complex_weight") and name in targets:
            shape = tuple(targets[name][0].shape)
            if (np.ndim(value) == 4 and tuple(np.shape(value)) != shape
                    and np.shape(value)[0] == shape[0] and np.shape(value)[3] == 2):
                value = resize_complex_weight(np.asarray(value, "float32"), shape[1:3])
        out[key] = value
    return out


def resize_complex_weight(weight, grid):
    """``(C, h, w, 2)`` -> ``(C, grid[0], grid[1], 2)``: bilinear, ``align_corners=True``."""
    r_h = interpolation_matrix(int(grid[0]), weight.shape[1])
    r_w = interpolation_matrix(int(grid[1]), weight.shape[2])
    out = np.einsum("ih,chwz,jw->cijz", r_h, weight.astype("float64"), r_w)
    return out.astype("float32")


# --------------------------------------------------------------------------------------
# Official-constructor adapter
# --------------------------------------------------------------------------------------

_PARTIAL_ARG = re.compile(r"(\w+)\s*=\s*([\w./]+)")


def _parse_gnconv(spec):
    """``"partial(gnconv, order=4, s=1/3, h=14, w=8, gflayer=GlobalLocalFilter)"`` or the
    same as a dict -> (order, s, [h, w] or None)."""
    if isinstance(spec, str):
        args = dict(_PARTIAL_ARG.findall(spec))
    else:
        args = {k: str(v) for k, v in dict(spec).items()}
    order = int(args.get("order", 5))
    s_text = args.get("s", "1.0")
    if "/" in s_text:
        num, den = s_text.split("/")
        s = float(num) / float(den)
    else:
        s = float(s_text)
    gf = args.get("gflayer")
    if gf not in (None, "None") and "GlobalLocalFilter" not in gf:
        raise ValueError(f"Unsupported gflayer {gf!r} (only GlobalLocalFilter).")
    grid = None
    if gf not in (None, "None"):
        grid = [int(args.get("h", 14)), int(args.get("w", 8))]
    return order, s, grid


def from_official_config(config):
    """Kwargs for :class:`HorNet` from ``HorNet(...)`` constructor arguments (``gnconv``
    given as the factories' ``partial(gnconv, ...)`` strings or dicts)."""
    c = dict(config)
    if c.get("block", "Block") not in ("Block", None):
        raise ValueError(f"Unsupported block {c['block']!r} (only Block).")
    kwargs = {}
    for key in ("base_dim", "depths", "drop_path_rate", "layer_scale_init_value",
                "num_classes"):
        if key in c:
            kwargs[key] = list(c[key]) if isinstance(c[key], (list, tuple)) else c[key]
    if "in_chans" in c and int(c["in_chans"]) != 3:
        raise ValueError("Only 3 input channels are supported by from_official_config.")
    kwargs.setdefault("depths", [3, 3, 9, 3])  # HorNet's own defaults
    kwargs.setdefault("base_dim", 96)
    specs = c.get("gnconv")
    if specs is None:  # the class default: gnconv(order=5, s=1.0) everywhere
        specs = ["partial(gnconv, order=5, s=1.0)"] * len(kwargs["depths"])
    if specs is not None:
        if isinstance(specs, (str, dict)):
            specs = [specs] * len(kwargs.get("depths", [0, 0, 0, 0]))
        parsed = [_parse_gnconv(s) for s in specs]
        scales = {s for _, s, _ in parsed}
        if len(scales) != 1:
            raise ValueError(f"Per-stage gnConv scales differ ({sorted(scales)}); "
                             "HorNet here takes one.")
        kwargs["orders"] = [o for o, _, _ in parsed]
        kwargs["gnconv_scale"] = scales.pop()
        kwargs["global_filter"] = [g for _, _, g in parsed]
    return kwargs
