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
from visionzoo.layers.activations import GELU
from visionzoo.layers.norms import LayerNorm
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
        q = ops.matmul(qk_in, ops.transpose(w[:c])) + b[:c]
        k = ops.matmul(qk_in, ops.transpose(w[c:2 * c])) + b[c:2 * c]
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
        self.norm1 = LayerNorm(epsilon=1e-5, name="norm1")
        self.norm2 = LayerNorm(epsilon=1e-5, name="norm2")
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
# Detector: points -> pillars -> point features -> FlatFormer -> BEV -> centre head
# (the official DynamicCenterPoint pipeline in compact form; the 2-D BEV backbone and the
# head are small stand-ins for SECOND + SECONDFPN + CenterHead, not ports of them).
# --------------------------------------------------------------------------------------


def _conv_bn_relu(x, filters, stride, name):
    x = keras.layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False,
                            name=f"{name}-conv")(x)
    x = keras.layers.BatchNormalization(epsilon=1e-3, momentum=0.99, name=f"{name}-bn")(x)
    return keras.layers.ReLU(name=f"{name}-relu")(x)


@keras.saving.register_keras_serializable(package="visionzoo")
class FlatFormerDetector(keras.Model):
    """A BEV 3-D detector on a fixed point and voxel budget.

    Inputs (a dict): ``points`` (B, P, F) float (x y z first), ``point_mask`` (B, P)
    bool. Outputs (a dict): ``heatmap`` (B, ny, nx, num_classes) logits and
    ``regression`` (B, ny, nx, 8) = ``dx, dy, z, log l, log w, log h, sin yaw, cos yaw``
    per BEV cell (stride 1: one pillar per cell). :func:`center_losses` trains it,
    :func:`decode_centers` turns the outputs into boxes.

    Pipeline: :class:`~visionzoo.layers.voxel.PillarVoxelizer` ->
    :class:`~visionzoo.layers.voxel.PointFeatureNet` (``pts_voxel_encoder``) ->
    :class:`FlatFormer` (``middle_encoder``) -> two-scale conv BEV backbone (stride 1
    and 2, the stride-2 branch upsampled by a transposed conv and concatenated) ->
    shared 3x3 conv -> heatmap and regression branches (3x3 conv + ReLU + 1x1 conv; the
    heatmap bias starts at -2.19, prior 0.1, as CenterPoint).

    Args:
        num_classes: int.
        point_cloud_range, voxel_size: pillar grid (``voxel_size[2]`` spans the range).
        max_voxels: int. Voxel budget per sample.
        point_features: int. F.
        feat_channels: point-feature widths; the last is the encoder width.
        num_heads, num_blocks, window_shape, group_size, activation: the encoder.
        bev_channels: int. Width of the BEV backbone and head.
    """

    def __init__(self, num_classes=2, point_cloud_range=(-8.0, -8.0, -1.0, 8.0, 8.0, 3.0),
                 voxel_size=(0.5, 0.5, 4.0), max_voxels=256, point_features=4,
                 feat_channels=(16, 16), num_heads=2, num_blocks=1, window_shape=(8, 8, 1),
                 group_size=16, activation="gelu", bev_channels=32, name="flatformer_det",
                 **kwargs):
        voxelizer = PillarVoxelizer(point_cloud_range, voxel_size, max_voxels,
                                    name="voxelizer")
        ny, nx = voxelizer.grid_shape
        if ny % 2 or nx % 2:
            raise ValueError(f"The BEV grid must have even sides, got {ny}x{nx}.")
        points = keras.Input(shape=(None, point_features), name="points")
        point_mask = keras.Input(shape=(None,), dtype="bool", name="point_mask")
        vox = voxelizer(points, point_mask)
        feats = PointFeatureNet(feat_channels, point_cloud_range, voxel_size,
                                name="pts_voxel_encoder")(points, vox)
        encoder = FlatFormer(in_channels=feat_channels[-1], num_heads=num_heads,
                             num_blocks=num_blocks, activation=activation,
                             window_shape=window_shape, sparse_shape=(nx, ny, 1),
                             output_shape=(ny, nx), group_size=group_size,
                             max_voxels=max_voxels, name="middle_encoder")
        bev = encoder({"voxels": feats, "coords": vox["voxel_coords"],
                       "mask": vox["voxel_mask"]})["bev"]
        c = bev_channels
        s1 = _conv_bn_relu(_conv_bn_relu(bev, c, 1, "backbone-0-0"), c, 1, "backbone-0-1")
        s2 = _conv_bn_relu(_conv_bn_relu(s1, 2 * c, 2, "backbone-1-0"), 2 * c, 1,
                           "backbone-1-1")
        up = keras.layers.Conv2DTranspose(c, 2, strides=2, use_bias=False,
                                          name="neck-up-conv")(s2)
        up = keras.layers.BatchNormalization(epsilon=1e-3, momentum=0.99,
                                             name="neck-up-bn")(up)
        up = keras.layers.ReLU(name="neck-up-relu")(up)
        x = keras.layers.Concatenate(name="neck-concat")([s1, up])
        x = _conv_bn_relu(x, c, 1, "head-shared")
        outputs = {}
        for branch, width, bias in (("heatmap", num_classes, -2.19), ("regression", 8, 0.0)):
            h = keras.layers.Conv2D(c, 3, padding="same", name=f"head-{branch}-0")(x)
            h = keras.layers.ReLU(name=f"head-{branch}-relu")(h)
            outputs[branch] = keras.layers.Conv2D(
                width, 1, bias_initializer=keras.initializers.Constant(bias),
                name=branch, dtype="float32")(h)
        super().__init__(inputs={"points": points, "point_mask": point_mask},
                         outputs=outputs, name=name, **kwargs)
        self.num_classes = num_classes
        self.point_cloud_range = tuple(point_cloud_range)
        self.voxel_size = tuple(voxel_size)
        self.max_voxels = max_voxels
        self.point_features = point_features
        self.feat_channels = tuple(feat_channels)
        self.num_heads = num_heads
        self.num_blocks = num_blocks
        self.window_shape = tuple(window_shape)
        self.group_size = group_size
        self.activation = activation
        self.bev_channels = bev_channels
        self.grid_shape = (ny, nx)

    def get_config(self):
        return {"name": self.name, "trainable": self.trainable,
                "num_classes": self.num_classes,
                "point_cloud_range": list(self.point_cloud_range),
                "voxel_size": list(self.voxel_size), "max_voxels": self.max_voxels,
                "point_features": self.point_features,
                "feat_channels": list(self.feat_channels), "num_heads": self.num_heads,
                "num_blocks": self.num_blocks, "window_shape": list(self.window_shape),
                "group_size": self.group_size, "activation": self.activation,
                "bev_channels": self.bev_channels}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def center_heatmap_loss(y_true, y_pred):
    """CenterNet/CenterPoint penalty-reduced focal loss on heatmap logits, per sample,
    normalised by the sample's number of centres (at least 1)."""
    y_true = ops.cast(y_true, "float32")
    p = ops.clip(ops.sigmoid(ops.cast(y_pred, "float32")), 1e-4, 1 - 1e-4)
    pos = ops.cast(y_true >= 1.0 - 1e-6, "float32")
    pos_term = ops.log(p) * ops.square(1 - p) * pos
    neg_term = ops.log(1 - p) * ops.square(p) * ops.power(1 - y_true, 4) * (1 - pos)
    axes = (1, 2, 3)
    num_pos = ops.maximum(ops.sum(pos, axis=axes), 1.0)
    return -ops.sum(pos_term + neg_term, axis=axes) / num_pos


def center_regression_loss(y_true, y_pred):
    """L1 on the 8 regression channels at centre cells (``y_true[..., 8]`` = weight),
    per sample, normalised by the number of centres."""
    y_true = ops.cast(y_true, "float32")
    weight = y_true[..., 8:]
    err = ops.abs(ops.cast(y_pred, "float32") - y_true[..., :8]) * weight
    return ops.sum(err, axis=(1, 2, 3)) / ops.maximum(ops.sum(weight, axis=(1, 2, 3)), 1.0)


def center_losses():
    """``loss`` and ``loss_weights`` for ``FlatFormerDetector.compile`` (targets from
    :func:`visionzoo.training.scenes.center_targets`; regression weight 0.25 as
    CenterPoint)."""
    return ({"heatmap": center_heatmap_loss, "regression": center_regression_loss},
            {"heatmap": 1.0, "regression": 0.25})


def decode_centers(heatmap, regression, point_cloud_range, voxel_size, max_detections=50):
    """Detector outputs -> ``boxes`` (B, K, 7) ``x y z l w h yaw``, ``scores`` (B, K) and
    ``labels`` (B, K) int32 for the ``K = max_detections`` best centres.

    Peaks are cells equal to their 3x3 max (CenterPoint's max-pool NMS); the best are
    picked by ``top_k`` over cells x classes (no float argmax).
    """
    r, s = point_cloud_range, voxel_size
    heat = ops.sigmoid(ops.cast(heatmap, "float32"))
    pooled = ops.max_pool(heat, 3, strides=1, padding="same")
    heat = ops.where(ops.equal(heat, pooled), heat, 0.0)
    shape = ops.shape(heat)
    batch, nx, k = shape[0], heat.shape[2], heat.shape[3]
    scores, index = ops.top_k(ops.reshape(heat, (batch, -1)), max_detections)
    index = ops.cast(index, "int32")
    labels = index % k
    cell = index // k
    iy, ix = cell // nx, cell % nx
    reg = batched_take(ops.reshape(ops.cast(regression, "float32"), (batch, -1, 8)), cell)
    x = (ops.cast(ix, "float32") + reg[..., 0]) * s[0] + r[0]
    y = (ops.cast(iy, "float32") + reg[..., 1]) * s[1] + r[1]
    size = ops.exp(ops.clip(reg[..., 3:6], -5.0, 5.0))
    yaw = ops.arctan2(reg[..., 6], reg[..., 7])
    boxes = ops.concatenate([ops.stack([x, y, reg[..., 2]], -1), size,
                             ops.expand_dims(yaw, -1)], -1)
    return {"boxes": boxes, "scores": scores, "labels": labels}


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
# Checkpoints: the official ``FlatFormer.state_dict()`` keys (``block_list.{i}.block.{k}.
# attn.attn.in_proj_weight`` ...), bare or under ``middle_encoder.`` as in the
# ``DynamicCenterPoint`` detector checkpoints. Our variable paths are those names; the
# attention's in-projection is kept in torch layout, Linear weights are transposed by
# the engine.
# --------------------------------------------------------------------------------------

_PREFIX = "middle_encoder."
KEY_MAPS = {"official": [(r"^middle_encoder\.", "")]}
IGNORE_KEYS = ()


def adapt_state(model, state, renamed):
    """A whole detector checkpoint: keep the ``middle_encoder.`` tensors (the encoder's);
    the voxel encoder, BEV backbone, neck and head are other modules."""
    if any(k.startswith(_PREFIX) for k in state):
        return {k: v for k, v in state.items() if k.startswith(_PREFIX)}
    return dict(state)


def detect_layout(keys):
    for key in keys:
        if key.endswith(".attn.attn.in_proj_weight") and "block_list." in key:
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
