"""FlatFormer: flattened window attention for point clouds (Liu et al., CVPR 2023).

Reference: mit-han-lab/flatformer ``mmdet3d/models/middle_encoders/flatformer.py``
(``FlatFormer``, the middle encoder of its ``DynamicCenterPoint`` detector).

The encoder runs on pillar voxels. Each sample's voxels are sorted along four
window-based orderings (``x``, ``x_shift``, ``y``, ``y_shift``: boustrophedon over windows
of ``window_shape`` and inside them, the ``_shift`` ones with the windows moved by half a
window), cut into equal-size groups of ``group_size`` consecutive voxels, and every group
attends within itself. A block = four post-norm layers, one per ordering:
``x = LN(x + MHA(q = k = x + pe, v = x))``, ``x = LN(x + fc2(gelu(fc1(x))))``, with a fixed
sine-cosine encoding ``pe`` of the voxel's ``(x, y)``.

Batch layout (static shapes for ``jit``/TFLite): ``voxels`` (B, V, C), ``coords`` (B, V, 2)
int32 ``(y, x)`` and ``mask`` (B, V) per sample, ``V`` = the voxel budget. Each sample's
valid voxels are sorted and padded to a multiple of ``group_size`` exactly as the
official ``flat2win`` does (the padding slots repeat the tokens ``group_size`` positions
earlier and take part in attention); the remaining slots form spare groups whose
results are dropped, and invalid voxels output zeros. All of it is ``argsort`` +
``take`` (TFLite ``TOPK_V2``/``GATHER``), with no loop over groups, windows or samples.

Weights keep the official ``nn.MultiheadAttention`` layout (``in_proj_weight`` (3C, C),
``in_proj_bias``, ``out_proj``); layer names follow the official module paths, so the
official state dict (under ``middle_encoder.`` in detector checkpoints) loads by name.

Numerics as torch: LayerNorm eps 1e-5, exact GELU.
"""

import math

import keras
import numpy as np
from keras import ops

from visionzoo.backbones.base import ZooBackbone
from visionzoo.heads import center3d
# The detector's losses and decoding live in visionzoo.heads.center3d; they stay
# importable from here as before.
from visionzoo.heads.center3d import (bev_nms, center_heatmap_loss, center_losses,  # noqa: F401
                                      center_regression_loss, decode_centers,
                                      rotated_iou_matrix)
from visionzoo.layers.activations import GELU
from visionzoo.layers.voxel import BEVScatter, PillarVoxelizer, PointFeatureNet, batched_take

ORDERINGS = ("x", "x_shift", "y", "y_shift")

# --------------------------------------------------------------------------------------
# Family-only blocks
# --------------------------------------------------------------------------------------


def window_sort_keys(coords, sparse_shape, window_shape, shifted):
    """The official ``FlattenedWindowMapping`` sort keys ``(vx, vy)`` of ``(y, x)`` coords
    (int32, within one sample; the official batch offset is not needed per sample).

    Windows are visited in a boustrophedon over the window grid, and voxels inside a
    window in a boustrophedon too; ``vx`` runs along x first, ``vy`` along y first.
    """
    size_x, size_y = sparse_shape[0], sparse_shape[1]
    wx, wy = window_shape[0], window_shape[1]
    n1 = 2 * (math.ceil(size_x / wx) + 1)  # doubled as in get_window_coors_shift
    m1 = 2 * (math.ceil(size_y / wy) + 1)
    n2, m2 = 2 * wx, 2 * wy
    y, x = coords[..., 0], coords[..., 1]
    if shifted:
        x, y = x + wx // 2, y + wy // 2
    x1, y1, x2, y2 = x // wx, y // wy, x % wx, y % wy

    def sign(v):  # (-1) ** v for v >= 0
        return 1 - 2 * (v % 2)

    vx = (n1 * y1 + sign(y1) * x1) * n2 * m2 + sign(y1) * (m2 * x2 + sign(x2) * y2)
    vy = (m1 * x1 + sign(x1) * y1) * m2 * n2 + sign(x1) * (n2 * y2 + sign(y2) * x2)
    return vx, vy


def _key_bound(sparse_shape, window_shape):
    """An int larger than every valid sort key (invalid voxels sort after it)."""
    wx, wy = window_shape[0], window_shape[1]
    n1 = 2 * (math.ceil(sparse_shape[0] / wx) + 1)
    m1 = 2 * (math.ceil(sparse_shape[1] / wy) + 1)
    return (n1 * m1 + n1 + m1 + 2) * (2 * wx) * (2 * wy)


def group_slot_sources(count, num_slots, group_size):
    """For each group slot ``j`` of a sample with ``count`` valid voxels: the position
    (in sorted order) of the voxel it holds.

    The official ``flat2win`` pads the sample to ``p = ceil(count / g) * g`` slots; slot
    ``j < count`` holds voxel ``j``, a padding slot ``count <= j < p`` repeats the voxel
    ``g`` positions earlier (``j - g``). Samples with fewer than ``g`` voxels (where the
    official slicing breaks) repeat their voxels cyclically (``j mod count``). Slots from
    ``p`` on belong to spare groups and hold voxel 0 (their results are dropped).

    Args: ``count`` (B, 1) int32; returns (B, num_slots) int32.
    """
    g = group_size
    j = ops.expand_dims(ops.arange(num_slots, dtype="int32"), 0)
    padded = ((count + g - 1) // g) * g
    repeat = ops.where(j - g >= 0, j - g, j % ops.maximum(count, 1))
    return ops.where(j < count, j, ops.where(j < padded, repeat, 0))


@keras.saving.register_keras_serializable(package="visionzoo")
class FlattenedWindowMapping(keras.layers.Layer):
    """``[coords (B, V, 2) (y, x), mask (B, V)]`` -> ``[gather (B, 4, S), scatter (B, 4, V)]``.

    For each ordering in ``x, x_shift, y, y_shift``: ``gather[b, k, j]`` is the voxel that
    group slot ``j`` holds (``S = ceil(V / g) * g`` slots = ``ceil(V / g)`` groups), and
    ``scatter[b, k, v]`` the slot whose result voxel ``v`` takes (the inverse).

    Args:
        sparse_shape: ``(size_x, size_y, size_z)`` of the voxel grid (official order).
        window_shape: ``(wx, wy, wz)``.
        group_size: int.
    """

    def __init__(self, sparse_shape, window_shape, group_size, **kwargs):
        super().__init__(**kwargs)
        self.sparse_shape = tuple(int(v) for v in sparse_shape)
        self.window_shape = tuple(int(v) for v in window_shape)
        self.group_size = int(group_size)

    def call(self, inputs):
        coords, mask = inputs
        coords = ops.cast(coords, "int32")
        valid = ops.cast(mask, "bool")
        v = ops.shape(coords)[1]
        g = self.group_size
        num_slots = ((v + g - 1) // g) * g
        count = ops.sum(ops.cast(valid, "int32"), axis=1, keepdims=True)
        sources = group_slot_sources(count, num_slots, g)
        bound = _key_bound(self.sparse_shape, self.window_shape)
        spare = bound + ops.expand_dims(ops.arange(v, dtype="int32"), 0)
        gathers, scatters = [], []
        for shifted in (False, True):
            vx, vy = window_sort_keys(coords, self.sparse_shape, self.window_shape, shifted)
            for key in (vx, vy):
                key = ops.where(valid, key, spare)  # invalid voxels last, in index order
                order = ops.cast(ops.argsort(key, axis=1), "int32")
                gathers.append(ops.take_along_axis(order, sources, axis=1))
                scatters.append(ops.cast(ops.argsort(order, axis=1), "int32"))
        # (vx, vy, vx_shift, vy_shift) -> the official order x, x_shift, y, y_shift
        perm = (0, 2, 1, 3)
        return [ops.stack([gathers[i] for i in perm], axis=1),
                ops.stack([scatters[i] for i in perm], axis=1)]

    def compute_output_spec(self, inputs):
        coords = inputs[0]
        b, v = coords.shape[0], coords.shape[1]
        s = None if v is None else -(-v // self.group_size) * self.group_size
        return [keras.KerasTensor((b, 4, s), "int32"), keras.KerasTensor((b, 4, v), "int32")]

    def get_config(self):
        config = super().get_config()
        config.update(sparse_shape=list(self.sparse_shape),
                      window_shape=list(self.window_shape), group_size=self.group_size)
        return config


@keras.saving.register_keras_serializable(package="visionzoo")
class FlatFormerPositionEmbedding(keras.layers.Layer):
    """The official fixed ``PositionalEmbedding``: coords (B, V, 2) ``(y, x)`` -> (B, V, C).

    Per axis ``L = (C // 4) * 2`` features ``p / T**(2 * (i // 2) / L)``, sine at even and
    cosine at odd ``i``; ``[pe_x, pe_y]`` zero-padded to ``C``. ``normalize_pos`` scales
    coordinates to ``p / size * 2 * 3.1415`` first (the official constant).
    """

    def __init__(self, dim, sparse_shape, normalize_pos=False, temperature=10000, **kwargs):
        super().__init__(**kwargs)
        self.dim = int(dim)
        self.sparse_shape = tuple(int(v) for v in sparse_shape)
        self.normalize_pos = normalize_pos
        self.temperature = temperature

    def call(self, coords):
        length = (self.dim // 4) * 2
        i = np.arange(length, dtype=np.float32)
        inv_freq = np.power(np.float32(self.temperature),
                            (2 * (i // 2) / length).astype(np.float32)).astype(np.float32)
        y = ops.cast(coords[..., 0], "float32")
        x = ops.cast(coords[..., 1], "float32")
        if self.normalize_pos:
            x = x / self.sparse_shape[0] * 2 * 3.1415
            y = y / self.sparse_shape[1] * 2 * 3.1415
        even = ops.convert_to_tensor((np.arange(length) % 2 == 0)[None, None])
        parts = []
        for p in (x, y):
            angle = ops.expand_dims(p, -1) / ops.convert_to_tensor(inv_freq)
            parts.append(ops.where(even, ops.sin(angle), ops.cos(angle)))
        gap = self.dim - 2 * length
        if gap > 0:
            parts.append(ops.zeros_like(parts[0][..., :1]) * ops.zeros((gap,)))
        return ops.cast(ops.concatenate(parts, axis=-1), self.compute_dtype)

    def compute_output_shape(self, coords_shape):
        return tuple(coords_shape[:-1]) + (self.dim,)

    def get_config(self):
        config = super().get_config()
        config.update(dim=self.dim, sparse_shape=list(self.sparse_shape),
                      normalize_pos=self.normalize_pos, temperature=self.temperature)
        return config


@keras.saving.register_keras_serializable(package="visionzoo")
class GroupMultiheadAttention(keras.layers.Layer):
    """``nn.MultiheadAttention`` over groups: ``[qk_in, v_in]`` (N, g, C) -> (N, g, C).

    ``in_proj_weight`` (3C, C) and ``in_proj_bias`` (3C,) are stored in torch's layout;
    ``out_proj`` is a Dense. Scale ``head_dim ** -0.5``; transposes stay 4-D.
    """

    def __init__(self, num_heads, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = int(num_heads)

    def build(self, input_shape):
        dim = input_shape[0][-1]
        self.dim = dim
        self.in_proj_weight = self.add_weight(name="in_proj_weight", shape=(3 * dim, dim),
                                              initializer="glorot_uniform")
        self.in_proj_bias = self.add_weight(name="in_proj_bias", shape=(3 * dim,),
                                            initializer="zeros")
        self.out_proj = keras.layers.Dense(dim, name="out_proj")
        self.out_proj.build((None, None, dim))

    def _heads(self, t, n, g):
        t = ops.reshape(t, (n, g, self.num_heads, self.dim // self.num_heads))
        return ops.transpose(t, (0, 2, 1, 3))

    def call(self, inputs):
        qk_in, v_in = inputs
        c = self.dim
        shape = ops.shape(qk_in)
        n, g = shape[0], shape[1]
        w = ops.cast(self.in_proj_weight, self.compute_dtype)
        b = ops.cast(self.in_proj_bias, self.compute_dtype)
        qk = ops.matmul(qk_in, ops.transpose(w[:2 * c])) + b[:2 * c]  # one C -> 2C product
        q, k = qk[..., :c], qk[..., c:]
        v = ops.matmul(v_in, ops.transpose(w[2 * c:])) + b[2 * c:]
        q, k, v = self._heads(q, n, g), self._heads(k, n, g), self._heads(v, n, g)
        scale = ops.cast((c // self.num_heads) ** -0.5, q.dtype)
        attn = ops.softmax(ops.matmul(q * scale, ops.transpose(k, (0, 1, 3, 2))), axis=-1)
        out = ops.transpose(ops.matmul(attn, v), (0, 2, 1, 3))
        return self.out_proj(ops.reshape(out, (n, g, c)))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0])

    def get_config(self):
        config = super().get_config()
        config.update(num_heads=self.num_heads)
        return config


@keras.saving.register_keras_serializable(package="visionzoo")
class GroupAttention(keras.layers.Layer):
    """The official ``GroupAttention`` wrapper: ``[x, pe]`` groups -> ``attn(x + pe, x)``."""

    def __init__(self, num_heads, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = int(num_heads)
        self.attn = GroupMultiheadAttention(num_heads, name="attn")

    def build(self, input_shape):
        self.attn.build(input_shape)

    def call(self, inputs):
        x, pe = inputs
        return self.attn([x + pe, x])

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0])

    def get_config(self):
        config = super().get_config()
        config.update(num_heads=self.num_heads)
        return config


@keras.saving.register_keras_serializable(package="visionzoo")
class FlatFormerLayer(keras.layers.Layer):
    """One official ``BasicLayer`` applied along one ordering.

    ``[x (B, V, C), pe (B, V, C), gather (B, S), scatter (B, V), mask (B, V)]`` -> (B, V, C):
    gather the voxels into groups, ``LN(x + attn)``, ``LN(x + MLP)`` (hidden ``2C``), and
    scatter back; invalid voxels become zeros.

    Sublayers ``attn/attn`` (:class:`GroupMultiheadAttention`), ``fc1``, ``fc2``,
    ``norm1``, ``norm2`` as the official module.
    """

    def __init__(self, num_heads, group_size, activation="gelu", **kwargs):
        super().__init__(**kwargs)
        self.num_heads = int(num_heads)
        self.group_size = int(group_size)
        self.activation = activation
        if activation not in ("gelu", "relu"):
            raise ValueError(f"activation must be 'gelu' or 'relu', got {activation!r}.")
        self.attn = GroupAttention(num_heads, name="attn")
        # keras' LayerNormalization: one fused F.layer_norm on torch (vs 7 ops)
        self.norm1 = keras.layers.LayerNormalization(epsilon=1e-5, name="norm1")
        self.norm2 = keras.layers.LayerNormalization(epsilon=1e-5, name="norm2")
        self.act = GELU(name="act") if activation == "gelu" else keras.layers.ReLU(name="act")

    def build(self, input_shape):
        c = input_shape[0][-1]
        self.fc1 = keras.layers.Dense(2 * c, name="fc1")
        self.fc2 = keras.layers.Dense(c, name="fc2")
        tokens = (None, None, c)
        self.attn.build([tokens, tokens])
        self.fc1.build(tokens)
        self.fc2.build((None, None, 2 * c))
        self.norm1.build(tokens)
        self.norm2.build(tokens)

    def call(self, inputs):
        x, pe, gather, scatter, mask = inputs
        c = x.shape[-1]
        g = self.group_size
        xs = ops.reshape(batched_take(x, gather), (-1, g, c))
        ps = ops.reshape(batched_take(pe, gather), (-1, g, c))
        h = self.norm1(xs + self.attn([xs, ps]))
        h = self.norm2(h + self.fc2(self.act(self.fc1(h))))
        batch = ops.shape(x)[0]
        out = batched_take(ops.reshape(h, (batch, -1, c)), scatter)
        return ops.where(ops.expand_dims(ops.cast(mask, "bool"), -1), out, 0.0)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0])

    def matmul_macs(self, input_shape):
        """Attention products per sample (q k^T and attn v over every group slot); the
        Dense layers are counted by ``count_macs`` at the voxel budget."""
        v, c = input_shape[1], input_shape[-1]
        slots = -(-v // self.group_size) * self.group_size
        return 2 * slots * self.group_size * c

    def get_config(self):
        config = super().get_config()
        config.update(num_heads=self.num_heads, group_size=self.group_size,
                      activation=self.activation)
        return config


# --------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="visionzoo")
class FlatFormer(ZooBackbone):
    """The FlatFormer middle encoder on a fixed voxel budget.

    Inputs (a dict): ``voxels`` (B, V, C) float, ``coords`` (B, V, 2) int32 ``(y, x)``
    voxel indices (unique per sample), ``mask`` (B, V) bool. Outputs (a dict):
    ``features`` (B, V, C) per voxel (zeros for invalid voxels) and ``bev``
    (B, ny, nx, C), the official ``recover_bev`` canvas in NHWC.

    Args:
        in_channels: int. Voxel feature width C (128 in the official configs).
        num_heads: int.
        num_blocks: int. Blocks of four layers (orderings ``x, x_shift, y, y_shift``).
        activation: "gelu" (official) or "relu".
        window_shape: ``(wx, wy, 1)``.
        sparse_shape: ``(size_x, size_y, 1)`` of the voxel grid.
        output_shape: ``(ny, nx)`` of the BEV canvas.
        pos_temperature: float. normalize_pos: bool.
        group_size: int. Voxels per attention group.
        max_voxels: int or None. The voxel budget ``V`` (None: any, set by the input).
        input_shape, include_top, pooling, classifier_activation: accepted for the
            registry's signature and ignored (an encoder has no classifier).
    """

    def __init__(self, in_channels=128, num_heads=8, num_blocks=2, activation="gelu",
                 window_shape=(13, 13, 1), sparse_shape=(468, 468, 1),
                 output_shape=(468, 468), pos_temperature=10000, normalize_pos=False,
                 group_size=144, max_voxels=None, input_shape=None, include_top=False,
                 num_classes=None, pooling=None, classifier_activation=None,
                 name="flatformer", **kwargs):
        if in_channels % num_heads:
            raise ValueError(f"in_channels {in_channels} is not divisible by num_heads "
                             f"{num_heads}.")
        if int(sparse_shape[2]) != 1 or int(window_shape[2]) != 1:
            raise ValueError("FlatFormer runs on pillars: sparse_shape[2] and "
                             "window_shape[2] must be 1.")
        voxels = keras.Input(shape=(max_voxels, in_channels), name="voxels")
        coords = keras.Input(shape=(max_voxels, 2), dtype="int32", name="coords")
        mask = keras.Input(shape=(max_voxels,), dtype="bool", name="mask")
        pe = FlatFormerPositionEmbedding(in_channels, sparse_shape, normalize_pos,
                                         pos_temperature, name="embedding")(coords)
        gather, scatter = FlattenedWindowMapping(sparse_shape, window_shape, group_size,
                                                 name="mapping")([coords, mask])
        x = voxels
        for i in range(num_blocks):
            for k, ordering in enumerate(ORDERINGS):
                x = FlatFormerLayer(num_heads, group_size, activation,
                                    name=f"block_list-{i}-block-{k}")(
                    [x, pe, gather[:, k], scatter[:, k], mask])
        bev = BEVScatter(output_shape, name="recover_bev")([x, coords, mask])
        super().__init__(inputs={"voxels": voxels, "coords": coords, "mask": mask},
                         outputs={"features": x, "bev": bev}, name=name, **kwargs)
        self.pyramid_outputs = {}
        self.in_channels = in_channels
        self.num_heads = num_heads
        self.num_blocks = num_blocks
        self.activation = activation
        self.window_shape = tuple(window_shape)
        self.sparse_shape = tuple(sparse_shape)
        self.bev_shape = tuple(output_shape)
        self.pos_temperature = pos_temperature
        self.normalize_pos = normalize_pos
        self.group_size = group_size
        self.max_voxels = max_voxels
        self._record_top_args(False, None, None, None, input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(in_channels=self.in_channels, num_heads=self.num_heads,
                      num_blocks=self.num_blocks, activation=self.activation,
                      window_shape=list(self.window_shape),
                      sparse_shape=list(self.sparse_shape),
                      output_shape=list(self.bev_shape),
                      pos_temperature=self.pos_temperature,
                      normalize_pos=self.normalize_pos, group_size=self.group_size,
                      max_voxels=self.max_voxels)
        return config

    @property
    def classifier_key(self):
        return None


# --------------------------------------------------------------------------------------
# Detector: points -> pillars -> point features -> FlatFormer -> BEV -> SECOND ->
# SECONDFPN -> CenterHead (the official DynamicCenterPoint, on a fixed point and voxel
# budget). The 2-D parts live in visionzoo.heads.center3d.
# --------------------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="visionzoo")
class FlatFormerDetector(keras.Model):
    """FlatFormer's official Waymo detector (mmdet3d ``DynamicCenterPoint``) with static
    shapes.

    Inputs (a dict): ``points`` (B, P, F) float (x y z first), ``point_mask`` (B, P)
    bool. Outputs (a dict): ``heatmap`` (B, H, W, sum(tasks)) logits and ``regression``
    (B, H, W, T*K), the task heads' ``common_heads`` concatenated (default ``reg, height,
    dim, rot`` = ``dx, dy, z, log l, log w, log h, sin yaw, cos yaw``), at stride
    ``out_size_factor`` of the pillar grid. :func:`center_losses` trains it;
    :func:`decode_centers` + :func:`bev_nms` (or :meth:`with_decoder`) give boxes.

    Pipeline and official module names (checkpoint keys load by name, see ``KEY_MAPS``):
    :class:`~visionzoo.layers.voxel.PillarVoxelizer` ->
    :class:`~visionzoo.layers.voxel.PointFeatureNet` (``voxel_encoder``, ``DynamicVFE``)
    -> :class:`FlatFormer` (``middle_encoder``) ->
    :func:`~visionzoo.heads.center3d.second_backbone` (``backbone``, ``SECOND``) ->
    :func:`~visionzoo.heads.center3d.second_fpn` (``neck``, ``SECONDFPN``) ->
    :func:`~visionzoo.heads.center3d.center_head` (``bbox_head``, ``CenterHead``).
    BatchNorms use ``norm_eps``/``norm_momentum`` in torch's convention (official 1e-3 /
    0.01). ``DETECTOR_CONFIGS["flatformer_waymo"]`` is the official configuration.

    Args:
        num_classes: int, shorthand for ``tasks=(num_classes,)``.
        tasks: classes per CenterHead task.
        point_cloud_range, voxel_size: pillar grid (``voxel_size[2]`` spans the range).
        max_voxels: voxel budget per sample. point_features: F.
        feat_channels: ``DynamicVFE`` widths; the last is the encoder width.
        num_heads, num_blocks, window_shape, group_size, activation, pos_temperature,
            normalize_pos: the FlatFormer encoder.
        backbone_channels, layer_nums, layer_strides, residual: ``SECOND``.
        neck_channels, upsample_strides: ``SECONDFPN``.
        common_heads: ``(name, channels, num_conv)`` per regression head.
        share_conv_channel, head_conv, final_kernel, num_heatmap_convs, init_bias:
            ``CenterHead``/``SeparateHead``.
    """

    def __init__(self, num_classes=None, tasks=None,
                 point_cloud_range=(-8.0, -8.0, -1.0, 8.0, 8.0, 3.0),
                 voxel_size=(0.5, 0.5, 4.0), max_voxels=256, point_features=4,
                 feat_channels=(16, 16), num_heads=2, num_blocks=1, window_shape=(8, 8, 1),
                 group_size=16, activation="gelu", pos_temperature=10000,
                 normalize_pos=False, backbone_channels=(16, 32), layer_nums=(1, 1),
                 layer_strides=(1, 2), residual=True, neck_channels=(16, 16),
                 upsample_strides=(1, 2), common_heads=center3d.DEFAULT_COMMON_HEADS,
                 share_conv_channel=16, head_conv=16, final_kernel=3, num_heatmap_convs=2,
                 init_bias=-2.19, norm_eps=1e-3, norm_momentum=0.01, name="flatformer_det",
                 **kwargs):
        if tasks is None:
            tasks = (2 if num_classes is None else num_classes,)
        tasks = tuple(int(t) for t in tasks)
        common_heads = tuple((str(h[0]), int(h[1]), int(h[2])) for h in common_heads)
        voxelizer = PillarVoxelizer(point_cloud_range, voxel_size, max_voxels,
                                    name="voxelizer")
        ny, nx = voxelizer.grid_shape
        factors = [np.prod(layer_strides[:i + 1]) / u for i, u in enumerate(upsample_strides)]
        if len(set(float(f) for f in factors)) != 1:
            raise ValueError(f"The neck levels end at different strides {factors}.")
        step = int(np.prod(layer_strides))
        if ny % step or nx % step:
            raise ValueError(f"The BEV grid {ny}x{nx} must divide by {step}.")
        points = keras.Input(shape=(None, point_features), name="points")
        point_mask = keras.Input(shape=(None,), dtype="bool", name="point_mask")
        vox = voxelizer(points, point_mask)
        feats = PointFeatureNet(feat_channels, point_cloud_range, voxel_size,
                                epsilon=norm_eps, momentum=1.0 - norm_momentum,
                                name="voxel_encoder")(points, vox)
        encoder = FlatFormer(in_channels=feat_channels[-1], num_heads=num_heads,
                             num_blocks=num_blocks, activation=activation,
                             window_shape=window_shape, sparse_shape=(nx, ny, 1),
                             output_shape=(ny, nx), pos_temperature=pos_temperature,
                             normalize_pos=normalize_pos, group_size=group_size,
                             max_voxels=max_voxels, name="middle_encoder")
        bev = encoder({"voxels": feats, "coords": vox["voxel_coords"],
                       "mask": vox["voxel_mask"]})["bev"]
        norm = dict(eps=norm_eps, momentum=norm_momentum)
        levels = center3d.second_backbone(bev, backbone_channels, layer_nums, layer_strides,
                                          residual, **norm)
        x = center3d.second_fpn(levels, neck_channels, upsample_strides, **norm)
        heatmap, regression = center3d.center_head(
            x, tasks, common_heads, share_conv_channel, head_conv, final_kernel,
            num_heatmap_convs, init_bias, **norm)
        heatmap = keras.layers.Identity(name="heatmap", dtype="float32")(heatmap)
        regression = keras.layers.Identity(name="regression", dtype="float32")(regression)
        super().__init__(inputs={"points": points, "point_mask": point_mask},
                         outputs={"heatmap": heatmap, "regression": regression}, name=name,
                         **kwargs)
        self._config = dict(
            tasks=list(tasks), point_cloud_range=[float(v) for v in point_cloud_range],
            voxel_size=[float(v) for v in voxel_size], max_voxels=int(max_voxels),
            point_features=int(point_features), feat_channels=list(feat_channels),
            num_heads=num_heads, num_blocks=num_blocks, window_shape=list(window_shape),
            group_size=group_size, activation=activation, pos_temperature=pos_temperature,
            normalize_pos=normalize_pos, backbone_channels=list(backbone_channels),
            layer_nums=list(layer_nums), layer_strides=list(layer_strides),
            residual=residual, neck_channels=list(neck_channels),
            upsample_strides=list(upsample_strides),
            common_heads=[list(h) for h in common_heads],
            share_conv_channel=share_conv_channel, head_conv=head_conv,
            final_kernel=final_kernel, num_heatmap_convs=num_heatmap_convs,
            init_bias=init_bias, norm_eps=norm_eps, norm_momentum=norm_momentum)
        self.tasks = tasks
        self.num_classes = sum(tasks)
        self.common_heads = common_heads
        self.point_cloud_range = tuple(point_cloud_range)
        self.voxel_size = tuple(voxel_size)
        self.max_voxels = max_voxels
        self.grid_shape = (ny, nx)
        self.out_size_factor = int(round(float(factors[0])))
        self.output_grid = (ny // self.out_size_factor, nx // self.out_size_factor)

    # the checkpoint engine's classifier check: a detector has no image classifier
    classifier_key = None

    def decode(self, outputs, max_detections=50, **nms):
        """:func:`decode_centers` then, with ``nms`` keywords (``iou_threshold``,
        ``mode`` ...), :func:`bev_nms`; returns NumPy-convertible tensors."""
        dec = decode_centers(outputs["heatmap"], outputs["regression"],
                             self.point_cloud_range, self.voxel_size, max_detections,
                             self.out_size_factor, self.common_heads, self.tasks)
        return bev_nms(dec, **nms) if nms else dec

    def with_decoder(self, max_detections=50, nms="rotate", iou_threshold=0.5,
                     score_threshold=0.0, peak_pool=True, max_points=None):
        """An end-to-end ``keras.Model``: ``{points, point_mask}`` -> ``{boxes, scores,
        labels, valid}`` (fixed ``max_detections``; decode + NMS in the graph). Give
        ``max_points`` for a static point budget (TFLite export)."""
        f = self._config["point_features"]
        inputs = {"points": keras.Input((max_points, f), name="points"),
                  "point_mask": keras.Input((max_points,), dtype="bool", name="point_mask")}
        out = self(inputs)
        dec = center3d.CenterDecoder(
            self.point_cloud_range, self.voxel_size, max_detections, self.out_size_factor,
            self.common_heads, self.tasks, peak_pool=peak_pool, nms=nms,
            iou_threshold=iou_threshold, score_threshold=score_threshold,
            name="decoder")([out["heatmap"], out["regression"]])
        return keras.Model(inputs, dec, name=f"{self.name}_e2e")

    def get_config(self):
        return {"name": self.name, "trainable": self.trainable, **self._config}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def create_detector(variant="flatformer_scenes", **overrides):
    """A :class:`FlatFormerDetector` from ``DETECTOR_CONFIGS`` (``flatformer_waymo``: the
    official configuration; ``flatformer_scenes``: the small one of the example)."""
    return FlatFormerDetector(**dict(DETECTOR_CONFIGS[variant], **overrides))


# configs/flatformer/flatformer_waymo_D1_2x_3class.py (voxel_encoder / middle_encoder /
# backbone / neck / bbox_head), with our static voxel budget. The official head also has
# ``vel`` and ``iou`` branches (velocity loss weight 0; IoU-rectified scores, iou_pow 2).
DETECTOR_CONFIGS = {
    "flatformer_waymo": dict(
        tasks=(3,), point_cloud_range=(-74.88, -74.88, -2.0, 74.88, 74.88, 4.0),
        voxel_size=(0.32, 0.32, 6.0), max_voxels=32768, point_features=5,
        feat_channels=(64, 128), num_heads=8, num_blocks=2, window_shape=(13, 13, 1),
        group_size=144, activation="gelu", pos_temperature=10000, normalize_pos=False,
        backbone_channels=(64, 128), layer_nums=(3, 3), layer_strides=(1, 2),
        residual=True, neck_channels=(128, 128), upsample_strides=(1, 2),
        common_heads=(("reg", 2, 2), ("height", 1, 2), ("dim", 3, 2), ("rot", 2, 2),
                      ("vel", 2, 2), ("iou", 1, 2)),
        share_conv_channel=64, head_conv=64, final_kernel=3, num_heatmap_convs=2,
        init_bias=-2.19, norm_eps=1e-3, norm_momentum=0.01),
    # 0.5 m pillars over 16 x 16 m (32 x 32), the same structure at small widths
    "flatformer_scenes": dict(
        tasks=(2,), point_cloud_range=(-8.0, -8.0, -1.0, 8.0, 8.0, 3.0),
        voxel_size=(0.5, 0.5, 4.0), max_voxels=384, point_features=4,
        feat_channels=(32, 32), num_heads=4, num_blocks=1, window_shape=(8, 8, 1),
        group_size=32, activation="gelu", backbone_channels=(32, 64), layer_nums=(2, 2),
        layer_strides=(1, 2), residual=True, neck_channels=(32, 32),
        upsample_strides=(1, 2), share_conv_channel=32, head_conv=32),
}
# The official test_cfg: rotated NMS per class (car, pedestrian, cyclist).
OFFICIAL_NMS = dict(mode="rotate", iou_threshold=(0.8, 0.55, 0.55), score_threshold=0.1)

# --------------------------------------------------------------------------------------
# Variant table (data)
# --------------------------------------------------------------------------------------

_CODE = ("https://github.com/mit-han-lab/flatformer/blob/main/mmdet3d/models/"
         "middle_encoders/flatformer.py")
# configs/flatformer/flatformer_waymo_D{1,5}_*.py: pillars of 0.32 x 0.32 x 6 m over
# +-74.88 m (468 x 468 x 1), C = 128, 8 heads, 2 blocks, 13 x 13 windows, groups of 144.
# Waymo validation mAP/mAPH (L1, L2) from the official README by number of frames. No
# weights are released (Waymo licence). ``max_voxels`` is our default budget for the
# static graph (the official code has none; override with ``max_voxels=``).
_TABLE = {
    "flatformer_waymo": dict(in_channels=128, num_heads=8, num_blocks=2, activation="gelu",
                             window_shape=[13, 13, 1], sparse_shape=[468, 468, 1],
                             output_shape=[468, 468], pos_temperature=10000,
                             normalize_pos=False, group_size=144, max_voxels=32768),
}
_PUBLISHED = {"waymo_val_l1_map_maph": {"1f": (76.1, 73.4), "2f": (78.9, 77.3),
                                        "3f": (79.6, 78.0)},
              "waymo_val_l2_map_maph": {"1f": (69.7, 67.2), "2f": (72.7, 71.2),
                                        "3f": (73.5, 72.0)},
              "point_cloud_range": [-74.88, -74.88, -2.0, 74.88, 74.88, 4.0],
              "voxel_size": [0.32, 0.32, 6.0]}


def _variants():
    return {name: dict(config=dict(config), input_size=config["sparse_shape"][0],
                       input_channels=config["in_channels"], crop_pct=1.0,
                       interpolation="none", mean=(0.0,), std=(1.0,), weights={},
                       code=_CODE, timm=None, license="apache-2.0", task="detection3d",
                       note="point-cloud middle encoder: inputs are pillar voxels "
                            "(voxels, coords, mask), not images",
                       published=dict(_PUBLISHED))
            for name, config in _TABLE.items()}


VARIANTS = _variants()
MODEL_CLASS = FlatFormer
DISPLAY_NAMES = {"flatformer": "FlatFormer"}
OFFICIAL_REPOS = ("mit-han-lab/flatformer",)
TIMM_NOTES = {name: "FlatFormer is a point-cloud encoder (not in timm); verify it against "
                    "the official fixture ../shared/parity/flatformer_mini.npz."
              for name in VARIANTS}


def build(config, input_shape=None, **kwargs):
    """Build from a variant config; image-style arguments of the registry are ignored."""
    for key in ("include_top", "num_classes", "pooling", "classifier_activation"):
        kwargs.pop(key, None)
    return FlatFormer(**config, **kwargs)


# --------------------------------------------------------------------------------------
# Checkpoints. Encoder (:class:`FlatFormer`): the official ``FlatFormer.state_dict()``
# keys (``block_list.{i}.block.{k}.attn.attn.in_proj_weight`` ...), bare or under
# ``middle_encoder.`` as in the ``DynamicCenterPoint`` detector checkpoints; the
# attention's in-projection is kept in torch layout, Linear weights are transposed by the
# engine. Detector (:class:`FlatFormerDetector`): the whole official checkpoint,
# ``voxel_encoder.vfe_layers.{i}.{linear,norm}`` (the fork's ``DynamicVFELayer``; mmdet3d's
# ``.{0,1}`` Sequential spelling too), ``middle_encoder.*``, ``backbone.blocks.{i}.{j}.
# {0,1}``, ``neck.deblocks.{i}.{0,1}`` and ``bbox_head.shared_conv.{conv,bn}`` /
# ``bbox_head.task_heads.{t}.{head}.{k}``; MVX-style ``pts_`` prefixes are accepted.
# Our variable paths are those names, so every tensor must land (exact coverage);
# ``num_batches_tracked`` counters are dropped.
# --------------------------------------------------------------------------------------

_PREFIX = "middle_encoder."
KEY_MAPS = {"official": [
    (r"^(?:pts_)?middle_encoder\.", ""),
    (r"^(?:pts_)?voxel_encoder\.vfe_layers\.(\d+)\.linear\.", r"voxel_encoder.vfe_layers.\1.0."),
    (r"^(?:pts_)?voxel_encoder\.vfe_layers\.(\d+)\.norm\.", r"voxel_encoder.vfe_layers.\1.1."),
    (r"^pts_(voxel_encoder|backbone|neck|bbox_head)\.", r"\1."),
]}
IGNORE_KEYS = (r"\.num_batches_tracked$",)


def adapt_state(model, state, renamed):
    """For the encoder alone, a whole detector checkpoint gives its ``middle_encoder.``
    tensors (the other modules are not part of it); the detector takes everything."""
    if isinstance(model, FlatFormer):
        prefixes = (_PREFIX, "pts_" + _PREFIX)
        if any(k.startswith(prefixes) for k in state):
            return {k: v for k, v in state.items() if k.startswith(prefixes)}
    return dict(state)


def detect_layout(keys):
    for key in keys:
        if key.endswith(".attn.attn.in_proj_weight") and "block_list." in key:
            return "official"
        if key.startswith(("bbox_head.", "pts_bbox_head.", "backbone.blocks.",
                           "pts_backbone.blocks.")):
            return "official"
    return None


def from_official_config(config):
    """Kwargs for :class:`FlatFormer` from the official ``FlatFormer(...)`` arguments
    (``middle_encoder=dict(type="FlatFormer", ...)`` in the mmdet3d configs)."""
    c = {k: v for k, v in dict(config).items() if k != "type"}
    allowed = {"in_channels", "num_heads", "num_blocks", "activation", "window_shape",
               "sparse_shape", "output_shape", "pos_temperature", "normalize_pos",
               "group_size"}
    unknown = set(c) - allowed
    if unknown:
        raise ValueError(f"Unknown FlatFormer config keys: {sorted(unknown)}.")
    return {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in c.items()}


def flat_to_batched(features, coords, batch_size, max_voxels=None):
    """Official flat voxels (N, C) + coords (N, 4) ``(b, z, y, x)`` -> the batched layout
    ``(voxels (B, V, C), coords (B, V, 2), mask (B, V), index (B, V))`` in NumPy; ``index``
    is each slot's row in the flat input (-1 for empty slots), for mapping results back.
    """
    features = np.asarray(features)
    coords = np.asarray(coords)
    counts = np.bincount(coords[:, 0], minlength=batch_size)
    v = int(max_voxels or counts.max())
    if counts.max() > v:
        raise ValueError(f"A sample has {counts.max()} voxels, above max_voxels={v}.")
    order = np.argsort(coords[:, 0], kind="stable")
    start = np.concatenate([[0], np.cumsum(counts)[:-1]])
    slot = np.arange(len(order)) - start[coords[order, 0]]
    out = np.zeros((batch_size, v, features.shape[1]), features.dtype)
    out_coords = np.zeros((batch_size, v, 2), np.int32)
    index = np.full((batch_size, v), -1, np.int64)
    out[coords[order, 0], slot] = features[order]
    out_coords[coords[order, 0], slot] = coords[order][:, 2:4]
    index[coords[order, 0], slot] = order
    return out, out_coords, index >= 0, index


def verify_fixture(arrays, meta):
    """Rows ``(name, ours, reference, tolerance)`` for the ``flatformer_mini`` fixture:
    the per-voxel output (input order) and the BEV canvas (NCHW, as the official)."""
    from visionzoo.weights import load_checkpoint

    state = {k[len("param/"):]: v for k, v in arrays.items() if k.startswith("param/")}
    batch = int(arrays["input_batch_size"])
    voxels, coords, mask, index = flat_to_batched(arrays["input"], arrays["input_coords"],
                                                  batch)
    model = FlatFormer(**from_official_config(meta["config"]), max_voxels=voxels.shape[1])
    load_checkpoint(model, state)
    out = model.predict_on_batch({"voxels": voxels, "coords": coords, "mask": mask})
    features = np.asarray(ops.convert_to_numpy(out["features"]))
    flat = np.zeros_like(arrays["output"])
    flat[index[mask]] = features[mask]
    bev = np.asarray(ops.convert_to_numpy(out["bev"])).transpose(0, 3, 1, 2)
    tols = meta.get("tolerance_per_output", {})
    tol = meta.get("tolerance")
    return [("output", flat, arrays["output"], tols.get("output", tol)),
            ("output_bev", bev, arrays["output_bev"], tols.get("output_bev", tol))]
