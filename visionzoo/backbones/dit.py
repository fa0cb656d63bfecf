"""DiT: scalable diffusion models with transformers (Peebles & Xie, ICCV 2023), and the
group-attention variant of GroupDiff (Mo et al., 2025) as options of the same model.

Reference: facebookresearch/DiT ``models.py`` (``DiT``, ``DiT_{S,B,L,XL}_{2,4,8}``);
GroupDiff: ``models/denoiser.py`` (``Denoiser``) of adobe-research/GroupDiff.

The model is a denoiser with three inputs (four with a sample embedder):

- ``latents`` ``(B, H, W, C)`` NHWC (the official model takes NCHW);
- ``timesteps`` ``(B,)`` float32 diffusion step indices of the *original* 1000-step
  process (fractional values allowed);
- ``labels`` ``(B,)`` int32 class labels; ``num_classes`` is the null class used for
  classifier-free guidance;
- ``sample_ids`` ``(B,)`` int32, only when ``max_group_size > 0``: the index of each image
  in the sample-embedding table (GroupDiff).

and one output ``(B, H, W, 2C)`` (``learn_sigma``) whose channels ``[:C]`` are the
predicted noise and ``[C:]`` the variance interpolation ``v`` in ``[-1, 1]`` (see
:mod:`visionzoo.training.diffusion`), or ``(B, H, W, C)`` without learned sigma.

Architecture (official names in brackets):

- Patch embedding: ``p x p`` convolution with stride ``p`` [``x_embedder.proj``], plus the
  fixed 2-D sine-cosine position table [``pos_embed``, stored in official checkpoints;
  here a constant computed for the model's grid and checked against the checkpoint].
- Conditioning ``c = t_emb + y_emb (+ s_emb)``: 256 sinusoidal timestep features
  ``[cos, sin]`` -> Linear -> SiLU -> Linear [``t_embedder.mlp.0/2``], a label table with
  a null row [``y_embedder.embedding_table``], for GroupDiff a sample table
  [``sample_embedder.embedding_table``].
- adaLN-Zero blocks: ``SiLU(c) -> Linear(D, 6D)`` gives shift/scale/gate for attention and
  MLP [``blocks.i.adaLN_modulation.1``]; ``x += gate * Attn(LN(x) * (1 + scale) + shift)``
  and the same for the MLP (GELU, tanh approximation); LayerNorms without affine
  parameters, eps 1e-6; timm attention with a fused qkv (bias) [``blocks.i.attn``].
- Final layer: adaLN with 2 chunks, ``Linear(D, p*p*out)`` [``final_layer``], unpatchify.

Group attention (``group_size = M > 1``): the batch holds groups of ``M`` consecutive
images (rows ``g*M ... g*M + M - 1`` are group ``g``; the batch must be a multiple of
``M``). Only self-attention sees the group: the tokens of its ``M`` images are
concatenated, ``(B*M, T, D) -> (B, M*T, D)``, and split back; everything else (adaLN,
MLP, final layer) runs per image with per-image timesteps and labels. This is
GroupDiff's ``Denoiser``; it flattens groups ``(b m)`` in the same order.

Checkpoint layouts (:func:`detect_layout`): ``official`` (``DiT-XL-2-256x256.pt``, a bare
state dict), ``groupdiff`` (the same names under ``denoiser.``) and ``diffusers``
(``DiTTransformer2DModel``: separate q/k/v projections, merged here, and a copy of the
timestep/label embedders in every block, which must be identical). Diffusers' DiT differs
numerically from the official one in two details, which are constructor options here:
its timestep frequencies use ``freq_shift=1`` and its MLP LayerNorm uses ``norm_eps``
(1e-5 by default); :func:`from_diffusers_config` sets both. Loading diffusers weights into
an official configuration computes the official function.

The position table is computed for the input grid, so any static input size that is a
multiple of ``p`` works (the published models run at 32x32 and 64x64 latents).
"""

import keras
import numpy as np
from keras import ops

from visionzoo.backbones.base import ZooBackbone
from visionzoo.layers import Mlp, MultiHeadSelfAttention
from visionzoo.layers.adaln import (AdaLNModulate, FixedPositionEmbedding, GatedResidual,
                                    LabelEmbedding, TimestepFrequencies, sincos_2d_table)

# --------------------------------------------------------------------------------------
# Family-only layers
# --------------------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="visionzoo")
class GroupTokens(keras.layers.Layer):
    """``(B*M, T, D) <-> (B, M*T, D)``: concatenate (``merge=True``) or split the tokens
    of the ``M`` consecutive images of each group."""

    def __init__(self, group_size, merge=True, **kwargs):
        super().__init__(**kwargs)
        self.group_size = group_size
        self.merge = merge

    def call(self, x):
        n, d = x.shape[1], x.shape[2]
        if self.merge:
            return ops.reshape(x, (-1, self.group_size * n, d))
        return ops.reshape(x, (-1, n // self.group_size, d))

    def compute_output_shape(self, input_shape):
        n = input_shape[1]
        n = n * self.group_size if self.merge else n // self.group_size
        return (None, n, input_shape[2])

    def get_config(self):
        config = super().get_config()
        config.update(group_size=self.group_size, merge=self.merge)
        return config


@keras.saving.register_keras_serializable(package="visionzoo")
class Unpatchify(keras.layers.Layer):
    """``(B, h*w, p*p*C)`` tokens -> ``(B, h*p, w*p, C)``; the token channels are ordered
    ``(p_row, p_col, C)`` as in the official ``unpatchify``. Transposes stay 4-D."""

    def __init__(self, patch_size, grid, channels, **kwargs):
        super().__init__(**kwargs)
        self.patch_size = patch_size
        self.grid = tuple(int(g) for g in grid)
        self.channels = channels

    def call(self, x):
        p, (h, w), c = self.patch_size, self.grid, self.channels
        x = ops.reshape(x, (-1, w, p, p * c))           # (B*h, w, p_row, p_col*C)
        x = ops.transpose(x, (0, 2, 1, 3))              # (B*h, p_row, w, p_col*C)
        return ops.reshape(x, (-1, h * p, w * p, c))

    def compute_output_shape(self, input_shape):
        p, (h, w) = self.patch_size, self.grid
        return (input_shape[0], h * p, w * p, self.channels)

    def get_config(self):
        config = super().get_config()
        config.update(patch_size=self.patch_size, grid=list(self.grid), channels=self.channels)
        return config


def dit_block(x, c_act, num_heads, mlp_ratio, group_size, mlp_norm_eps, name):
    dim = x.shape[-1]
    mod = keras.layers.Dense(6 * dim, name=f"{name}-adaLN_modulation-1")(c_act)
    h = AdaLNModulate(0, 6, epsilon=1e-6, name=f"{name}-norm1")([x, mod])
    if group_size > 1:
        h = GroupTokens(group_size, merge=True, name=f"{name}-group")(h)
    h = MultiHeadSelfAttention(num_heads, dim // num_heads, qkv_bias=True, proj_bias=True,
                               name=f"{name}-attn")(h)
    if group_size > 1:
        h = GroupTokens(group_size, merge=False, name=f"{name}-ungroup")(h)
    x = GatedResidual(2, 6, name=f"{name}-gate1")([x, h, mod])
    h = AdaLNModulate(3, 6, epsilon=mlp_norm_eps, name=f"{name}-norm2")([x, mod])
    h = Mlp(int(dim * mlp_ratio), activation="gelu_tanh", name=f"{name}-mlp")(h)
    return GatedResidual(5, 6, name=f"{name}-gate2")([x, h, mod])


# --------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="visionzoo")
class DiT(ZooBackbone):
    """DiT denoiser (and GroupDiff's group-attention denoiser).

    Args:
        input_size: int. Latent side used when ``input_shape`` gives no size (32 for
            256-px images through the SD VAE).
        patch_size: int.
        in_channels: int. Latent channels (4).
        hidden_size, depth, num_heads, mlp_ratio: transformer width, blocks, heads, MLP
            ratio.
        class_dropout_prob: float. Training-time label drop to the null class; > 0 adds
            the null row to the label table.
        num_classes: int.
        learn_sigma: bool. Output ``2 * in_channels`` channels (noise + variance ``v``).
        frequency_dim: int. Sinusoidal timestep features (256).
        timestep_freq_shift: float. 0 (official); 1 reproduces diffusers.
        mlp_norm_eps: float. Epsilon of the pre-MLP LayerNorm (1e-6 official; diffusers
            uses its ``norm_eps``).
        group_size: int. Images per group that attend to each other (1: plain DiT).
        max_group_size: int. Rows of the sample-embedding table (0: none; GroupDiff).
        input_shape: (H, W, C) or None. Static H, W (multiples of ``patch_size``); C must
            be ``in_channels`` (3, the registry's image default, is read as "the model's
            own channel count").
        include_top, pooling, classifier_activation: accepted for the registry's
            signature; a denoiser has no classifier (``pooling`` and
            ``classifier_activation`` must stay None).
    """

    def __init__(self, input_size=32, patch_size=2, in_channels=4, hidden_size=1152,
                 depth=28, num_heads=16, mlp_ratio=4.0, class_dropout_prob=0.1,
                 num_classes=1000, learn_sigma=True, frequency_dim=256,
                 timestep_freq_shift=0.0, mlp_norm_eps=1e-6, group_size=1,
                 max_group_size=0, include_top=False, pooling=None,
                 classifier_activation=None, input_shape=None, input_tensor=None,
                 name="dit", **kwargs):
        if pooling is not None or classifier_activation not in (None, "linear"):
            raise ValueError("DiT is a denoiser without a classifier: pooling and "
                             "classifier_activation must be None.")
        if input_tensor is not None:
            raise ValueError("DiT builds its own inputs (latents, timesteps, labels); "
                             "input_tensor is not supported.")
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads "
                             f"{num_heads}.")
        if hidden_size % 4:
            raise ValueError(f"hidden_size must be divisible by 4 (the 2-D position table), "
                             f"got {hidden_size}.")
        shape = tuple(input_shape) if input_shape is not None else (None, None, in_channels)
        if len(shape) != 3:
            raise ValueError(f"input_shape must be (height, width, channels), got {shape}.")
        h, w, c = shape
        if c is not None and c != in_channels:
            if c != 3:
                raise ValueError(f"input_shape has {c} channels but the model takes "
                                 f"in_channels={in_channels}.")
        h, w = h or input_size, w or input_size
        if h % patch_size or w % patch_size:
            raise ValueError(f"DiT needs a static input size that is a multiple of the patch "
                             f"size {patch_size}; got {h}x{w}.")
        if group_size < 1 or (max_group_size and group_size > max_group_size):
            raise ValueError(f"group_size must be >= 1 and <= max_group_size when a sample "
                             f"table is used; got {group_size} and {max_group_size}.")
        grid = (h // patch_size, w // patch_size)
        out_channels = 2 * in_channels if learn_sigma else in_channels

        latents = keras.Input(shape=(h, w, in_channels), name="latents")
        timesteps = keras.Input(shape=(), dtype="float32", name="timesteps")
        labels = keras.Input(shape=(), dtype="int32", name="labels")
        inputs = [latents, timesteps, labels]

        x = keras.layers.Conv2D(hidden_size, patch_size, strides=patch_size,
                                name="x_embedder-proj")(latents)
        x = keras.layers.Reshape((grid[0] * grid[1], hidden_size), name="x_embedder-flatten")(x)
        x = FixedPositionEmbedding(grid, name="pos_embed")(x)

        t = TimestepFrequencies(frequency_dim, freq_shift=timestep_freq_shift,
                                name="t_embedder-freq")(timesteps)
        t = keras.layers.Dense(hidden_size, name="t_embedder-mlp-0")(t)
        t = keras.layers.Activation("silu", name="t_embedder-mlp-1")(t)
        t = keras.layers.Dense(hidden_size, name="t_embedder-mlp-2")(t)
        y = LabelEmbedding(num_classes, hidden_size, class_dropout_prob,
                           name="y_embedder")(labels)
        cond = [t, y]
        if max_group_size:
            sample_ids = keras.Input(shape=(), dtype="int32", name="sample_ids")
            inputs.append(sample_ids)
            cond.append(LabelEmbedding(max_group_size, hidden_size, 0.0,
                                       name="sample_embedder")(sample_ids))
        c = keras.layers.Add(name="cond")(cond)
        # Every adaLN_modulation starts with SiLU(c): computed once, shared.
        c_act = keras.layers.Activation("silu", name="cond_silu")(c)

        for i in range(depth):
            x = dit_block(x, c_act, num_heads, mlp_ratio, group_size, mlp_norm_eps,
                          f"blocks-{i}")
        mod = keras.layers.Dense(2 * hidden_size, name="final_layer-adaLN_modulation-1")(c_act)
        x = AdaLNModulate(0, 2, epsilon=1e-6, name="final_layer-norm_final")([x, mod])
        x = keras.layers.Dense(patch_size * patch_size * out_channels,
                               name="final_layer-linear")(x)
        x = Unpatchify(patch_size, grid, out_channels, name="unpatchify")(x)

        super().__init__(inputs=inputs, outputs=x, name=name, **kwargs)
        self.pyramid_outputs = {}
        self.input_size = input_size
        self.patch_size = patch_size
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.hidden_size = hidden_size
        self.depth = depth
        self.num_heads = num_heads
        self.mlp_ratio = mlp_ratio
        self.class_dropout_prob = class_dropout_prob
        self.learn_sigma = learn_sigma
        self.frequency_dim = frequency_dim
        self.timestep_freq_shift = timestep_freq_shift
        self.mlp_norm_eps = mlp_norm_eps
        self.group_size = group_size
        self.max_group_size = max_group_size
        self.null_class = num_classes
        self._record_top_args(False, num_classes, None, None, input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(input_size=self.input_size, patch_size=self.patch_size,
                      in_channels=self.in_channels, hidden_size=self.hidden_size,
                      depth=self.depth, num_heads=self.num_heads, mlp_ratio=self.mlp_ratio,
                      class_dropout_prob=self.class_dropout_prob,
                      learn_sigma=self.learn_sigma, frequency_dim=self.frequency_dim,
                      timestep_freq_shift=self.timestep_freq_shift,
                      mlp_norm_eps=self.mlp_norm_eps, group_size=self.group_size,
                      max_group_size=self.max_group_size)
        return config

    @property
    def classifier_key(self):
        return None


# --------------------------------------------------------------------------------------
# Variant table (data)
# --------------------------------------------------------------------------------------

_CODE = "https://github.com/facebookresearch/DiT/blob/main/models.py"
_WEIGHTS = "https://dl.fbaipublicfiles.com/DiT/models/DiT-XL-2-{0}x{0}.pt"
# size: depth, width, heads, published params (M), Gflops at 256 px for p = 8/4/2 and
# FID-50K after 400K iterations (no guidance), paper Table 4.
_SIZES = {
    "s": (12, 384, 6, "33", (0.36, 1.41, 6.06), (153.6, 100.4, 68.4)),
    "b": (12, 768, 12, "130", (1.42, 5.56, 23.0), (122.7, 68.4, 43.5)),
    "l": (24, 1024, 16, "458", (5.01, 19.7, 80.7), (118.9, 45.6, 23.3)),
    "xl": (28, 1152, 16, "675", (7.39, 29.1, 118.6), (106.4, 43.0, 19.5)),
}


def _variants():
    out = {}
    for size, (depth, width, heads, params, gflops, fids) in _SIZES.items():
        for index, patch in enumerate((8, 4, 2)):
            name = f"dit_{size}_{patch}"
            weights = {}
            if name == "dit_xl_2":
                weights = {
                    "in1k_256": {"url": _WEIGHTS.format(256), "num_classes": 1000,
                                 "input_size": 32, "filename": "DiT-XL-2-256x256.pt",
                                 "fid50k_cfg1.5": 2.27, "is_cfg1.5": 278.24},
                    "in1k_512": {"url": _WEIGHTS.format(512), "num_classes": 1000,
                                 "input_size": 64, "filename": "DiT-XL-2-512x512.pt",
                                 "fid50k_cfg1.5": 3.04, "is_cfg1.5": 240.82},
                }
            out[name] = dict(
                config={"depth": depth, "hidden_size": width, "num_heads": heads,
                        "patch_size": patch, "input_size": 32, "in_channels": 4,
                        "learn_sigma": True, "class_dropout_prob": 0.1},
                input_size=32, input_channels=4, crop_pct=1.0, interpolation="bicubic",
                mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                weights=weights, code=_CODE, timm=None, license="cc-by-nc-4.0",
                task="generation",
                published={"params_m": params, "gflops": gflops[index],
                           "fid50k_400k": fids[index], "image_size": 256,
                           "latent_scale": 0.18215})
    return out


VARIANTS = _variants()
MODEL_CLASS = DiT
DISPLAY_NAMES = {"dit": "DiT"}
OFFICIAL_REPOS = ("facebookresearch/DiT", "adobe-research/GroupDiff")
TIMM_NOTES = {name: "DiT is a diffusion denoiser, not in timm; verify it against the "
                    "official fixture (../shared/parity/dit_mini.npz) or diffusers."
              for name in VARIANTS}


def build(config, **kwargs):
    kwargs.pop("include_top", None)
    return DiT(**config, **kwargs)


def application_name(model_name):
    return "DiT" + "".join(part.upper() for part in model_name.split("_")[1:])


# --------------------------------------------------------------------------------------
# Checkpoint layouts (data) and adapters
# --------------------------------------------------------------------------------------

_TABLES = (r"^(y_embedder|sample_embedder)\.embedding_table\.weight$", r"\1.embedding_table")
KEY_MAPS = {
    "official": [_TABLES],
    "groupdiff": [(r"^denoiser\.(y_embedder|sample_embedder)\.embedding_table\.weight$",
                   r"\1.embedding_table"),
                  (r"^denoiser\.", "")],
    # adapt_state renames diffusers keys to the official ones first.
    "diffusers": [_TABLES],
}
IGNORE_KEYS = ()

_DIFFUSERS_BLOCK = (
    ("norm1.linear.", "adaLN_modulation.1."),
    ("attn1.to_out.0.", "attn.proj."),
    ("ff.net.0.proj.", "mlp.fc1."),
    ("ff.net.2.", "mlp.fc2."),
)
_DIFFUSERS_EMB = {
    "norm1.emb.timestep_embedder.linear_1.": "t_embedder.mlp.0.",
    "norm1.emb.timestep_embedder.linear_2.": "t_embedder.mlp.2.",
    "norm1.emb.class_embedder.embedding_table.": "y_embedder.embedding_table.",
}
_DIFFUSERS_TOP = {"pos_embed.proj.": "x_embedder.proj.", "pos_embed.pos_embed": "pos_embed",
                  "proj_out_1.": "final_layer.adaLN_modulation.1.",
                  "proj_out_2.": "final_layer.linear."}


def _from_diffusers(state):
    """diffusers ``DiTTransformer2DModel`` names -> official DiT names (q/k/v merged,
    the per-block copies of the embedders checked equal and kept once)."""
    out, shared = {}, {}
    for key, value in state.items():
        new = None
        for old, rep in _DIFFUSERS_TOP.items():
            if key.startswith(old):
                new = rep + key[len(old):]
        if new is None and key.startswith("transformer_blocks."):
            _, index, rest = key.split(".", 2)
            for old, rep in _DIFFUSERS_EMB.items():
                if rest.startswith(old):
                    name = rep + rest[len(old):]
                    if name in shared and not np.array_equal(np.asarray(shared[name][1]),
                                                             np.asarray(value)):
                        raise ValueError(
                            f"{key} differs from {shared[name][0]}: this port shares one "
                            "timestep/label embedder across blocks (as the official DiT "
                            "does), but the diffusers checkpoint has different copies. The "
                            "model was left unchanged.")
                    shared.setdefault(name, (key, value))
                    new = ""
                    break
            if new is None and rest.startswith("attn1.to_q."):
                leaf = rest[len("attn1.to_q."):]
                parts = [state.get(f"transformer_blocks.{index}.attn1.to_{n}.{leaf}")
                         for n in "qkv"]
                if all(p is not None for p in parts):
                    new = f"blocks.{index}.attn.qkv.{leaf}"
                    value = np.concatenate([np.asarray(p) for p in parts], axis=0)
            elif new is None and rest.startswith(("attn1.to_k.", "attn1.to_v.")):
                leaf = rest.split(".", 2)[2]
                if f"transformer_blocks.{index}.attn1.to_q.{leaf}" in state:
                    new = ""  # merged into qkv with to_q
            if new is None:
                for old, rep in _DIFFUSERS_BLOCK:
                    if rest.startswith(old):
                        new = f"blocks.{index}.{rep}{rest[len(old):]}"
                        break
        if new == "":
            continue
        out[new if new is not None else key] = value
    for name, (_, value) in shared.items():
        out[name] = value
    return out


def adapt_state(model, state, renamed):
    """Convert diffusers names; check and drop the stored sine-cosine ``pos_embed``."""
    if any(k.startswith("transformer_blocks.") for k in state):
        state = _from_diffusers(state)
    out = {}
    for key, value in state.items():
        if key in ("pos_embed", "denoiser.pos_embed"):
            table = np.asarray(value, np.float32).reshape(-1, np.shape(value)[-1])
            side = int(round(np.sqrt(table.shape[0])))
            if side * side != table.shape[0] or not np.allclose(
                    table, sincos_2d_table(table.shape[1], side, side), atol=1e-5):
                raise ValueError(f"{key} is not the fixed 2-D sine-cosine table this port "
                                 "computes; the model was left unchanged.")
            continue
        out[key] = value
    return out


def detect_layout(keys):
    keys = set(keys)
    if "x_embedder.proj.weight" in keys and "final_layer.linear.weight" in keys:
        return "official"
    if "denoiser.x_embedder.proj.weight" in keys:
        return "groupdiff"
    if "pos_embed.proj.weight" in keys and "proj_out_2.weight" in keys:
        return "diffusers"
    return None


def from_official_config(config):
    """Kwargs for :class:`DiT` from official ``DiT(...)`` or GroupDiff
    ``Denoiser.Config`` arguments."""
    c = dict(config)
    kwargs = {}
    for key in ("input_size", "patch_size", "in_channels", "hidden_size", "depth",
                "num_heads", "mlp_ratio", "class_dropout_prob", "num_classes", "learn_sigma",
                "max_group_size"):
        if key in c:
            kwargs[key] = c[key]
    if "max_group_size" in c:  # GroupDiff: fixed label-drop row, group attention
        kwargs["class_dropout_prob"] = 0.1
        if c.get("learn_sigma", True) and not c.get("output_sigma", False):
            raise ValueError("GroupDiff with output_sigma=False drops the variance channels; "
                             "this port always returns them (slice [..., :in_channels]).")
    return kwargs


def from_diffusers_config(config):
    """Kwargs for :class:`DiT` from a diffusers ``DiTTransformer2DModel`` config: the
    same function as diffusers (timestep ``freq_shift=1``, its MLP ``norm_eps``)."""
    c = dict(config)
    heads = c.get("num_attention_heads", 16)
    in_channels = c.get("in_channels", 4)
    out_channels = c.get("out_channels") or in_channels
    if out_channels not in (in_channels, 2 * in_channels):
        raise ValueError(f"out_channels {out_channels} is neither in_channels nor twice it.")
    if c.get("norm_type", "ada_norm_zero") != "ada_norm_zero":
        raise ValueError("Only norm_type='ada_norm_zero' (DiT) is supported.")
    if c.get("activation_fn", "gelu-approximate") != "gelu-approximate":
        raise ValueError("Only activation_fn='gelu-approximate' (DiT) is supported.")
    return {"input_size": c.get("sample_size", 32), "patch_size": c.get("patch_size", 2),
            "in_channels": in_channels, "hidden_size": heads * c.get("attention_head_dim", 72),
            "depth": c.get("num_layers", 28), "num_heads": heads, "mlp_ratio": 4.0,
            "num_classes": c.get("num_embeds_ada_norm", 1000), "class_dropout_prob": 0.1,
            "learn_sigma": out_channels == 2 * in_channels, "timestep_freq_shift": 1.0,
            "mlp_norm_eps": c.get("norm_eps", 1e-5)}


def verify_fixture(arrays, meta):
    """Rows ``(name, ours, reference, tolerance)`` for a ``dit_mini``/``groupdiff_mini``
    fixture (``arrays``: the npz contents, ``meta``: its json). Multi-input models need
    this hook: the generic fixture check feeds a single image input."""
    from visionzoo.weights import load_checkpoint

    state = {k[len("param/"):]: v for k, v in arrays.items() if k.startswith("param/")}
    tol = meta.get("tolerance")

    def nhwc(x):
        return np.asarray(x, np.float32).transpose(0, 2, 3, 1)

    def run(model, *inputs):
        dtypes = ("float32", "float32") + ("int32",) * (len(inputs) - 2)
        out = model.predict_on_batch([np.asarray(x).astype(d) for x, d in zip(inputs, dtypes)])
        return np.asarray(ops.convert_to_numpy(out)).transpose(0, 3, 1, 2)

    rows = []
    if arrays["input"].ndim == 5:  # GroupDiff: (N, M, C, H, W)
        n, m = arrays["input_t"].shape
        model = DiT(**from_official_config(meta["config"]), group_size=m)
        load_checkpoint(model, state)
        x = nhwc(arrays["input"].reshape((n * m,) + arrays["input"].shape[2:]))
        for ids, key in (("input_sample_ids", "output"),
                         ("input_fixed_sample_ids", "output_fixed_ids")):
            if key in arrays:
                out = run(model, x, arrays["input_t"].reshape(-1),
                          arrays["input_y"].reshape(-1), arrays[ids].reshape(-1))
                rows.append((key, out.reshape(arrays[key].shape), arrays[key], tol))
        return rows
    model = DiT(**from_official_config(meta["config"]))
    load_checkpoint(model, state)
    rows.append(("output", run(model, nhwc(arrays["input"]), arrays["input_t"],
                               arrays["input_y"]), arrays["output"], tol))
    if "output_cfg" in arrays:  # the official forward_with_cfg: guidance on 3 channels
        x = nhwc(arrays["input_cfg_x"])
        half = x[: len(x) // 2]
        out = run(model, np.concatenate([half, half]), arrays["input_cfg_t"],
                  arrays["input_cfg_y"])
        scale = float(meta.get("inputs", {}).get("cfg_scale", 4.0))
        b = len(out) // 2
        mixed = out[b:, :3] + scale * (out[:b, :3] - out[b:, :3])
        guided = np.concatenate([np.concatenate([mixed, mixed]), out[:, 3:]], axis=1)
        rows.append(("output_cfg", guided, arrays["output_cfg"], tol))
    return rows
