"""Bird's-eye-view 3-D detection pieces of mmdet3d's CenterPoint family, in Keras.

Ports (architecture and parameter names) of the modules FlatFormer's official Waymo
detector (``DynamicCenterPoint``) puts after its middle encoder:

- :func:`second_backbone`: mmdet3d ``SECOND``. Stages of a strided 3x3 conv-BN-ReLU
  followed by ``layer_nums[i]`` 3x3 conv-BN-ReLU; with ``residual=True`` (the FlatFormer
  fork) a layer whose output has its input's shape adds its input. Convs have no bias;
  strided convs pad 1 on every side as torch (not Keras' asymmetric ``"same"``).
- :func:`second_fpn`: mmdet3d ``SECONDFPN``. Per level a transposed conv with kernel =
  stride = ``upsample_strides[i]`` (a strided conv for strides below 1), BN, ReLU; the
  levels are concatenated along channels.
- :func:`center_head`: mmdet3d ``CenterHead`` + ``SeparateHead``. A shared conv-BN-ReLU,
  then per task one branch per head (``reg``, ``height``, ``dim``, ``rot``, optional
  ``vel``, ``iou``, and ``heatmap``): ``num_conv - 1`` conv-BN-ReLU then a conv with bias
  (heatmap bias -2.19).

Layer names are the official module paths with ``-`` for ``.`` (``backbone-blocks-0-1-0``
= ``backbone.blocks.0.1.0``), so official state dicts load by name; transposed convs
declare ``torch_layout = "conv"`` (torch ``(in, out, kh, kw)`` <-> Keras ``(kh, kw, out,
in)``: the same element order, no kernel flip: both are the adjoint of a correlation).

Outputs, losses, decoding (all ``keras.ops``; builtins-only on TFLite):

- The detector outputs ``heatmap`` (B, H, W, sum of classes) logits and ``regression``
  (B, H, W, T*K): per task the common heads concatenated in their order (default
  ``reg, height, dim, rot`` = ``dx, dy, z, log l, log w, log h, sin yaw, cos yaw``).
- :func:`center_heatmap_loss`, :func:`center_regression_loss`, :func:`center_losses`.
- :func:`decode_centers`: top-k centres -> boxes ``x y z l w h yaw`` (centre ``z``).
- :func:`bev_nms`: class-aware rotated-IoU NMS (or CenterPoint's circle NMS) with a
  fixed iteration count; :func:`rotated_iou_matrix` is the exact pairwise BEV IoU.
"""

import keras
import numpy as np
from keras import ops

DEFAULT_COMMON_HEADS = (("reg", 2, 2), ("height", 1, 2), ("dim", 3, 2), ("rot", 2, 2))


def _kaiming_fan_out():
    # mmcv kaiming_init defaults: normal, fan_out, ReLU gain (bias 0)
    return keras.initializers.VarianceScaling(2.0, "fan_out", "untruncated_normal")


def _bn(name, eps, momentum):
    """BatchNorm with torch's ``eps`` and ``momentum`` (Keras momentum = 1 - torch's)."""
    return keras.layers.BatchNormalization(epsilon=eps, momentum=1.0 - momentum, name=name)


def _conv(x, filters, kernel, stride, name, use_bias=False, bias_init="zeros", dtype=None,
          pad=None):
    """torch ``Conv2d(padding=pad)`` (default ``kernel // 2``): symmetric zero padding."""
    pad = kernel // 2 if pad is None else pad
    if pad and stride > 1:
        x = keras.layers.ZeroPadding2D(pad, name=f"{name}-pad")(x)
        padding = "valid"
    else:
        padding = "same" if pad else "valid"
    return keras.layers.Conv2D(filters, kernel, strides=stride, padding=padding,
                               use_bias=use_bias, kernel_initializer=_kaiming_fan_out(),
                               bias_initializer=bias_init, name=name, dtype=dtype)(x)


def second_backbone(x, out_channels=(64, 128), layer_nums=(3, 3), layer_strides=(1, 2),
                    residual=True, eps=1e-3, momentum=0.01, name="backbone"):
    """mmdet3d ``SECOND`` on an NHWC map; returns the list of stage outputs."""
    outs = []
    c_in = x.shape[-1]
    for i, (c, n, s) in enumerate(zip(out_channels, layer_nums, layer_strides)):
        for j in range(n + 1):
            stride = s if j == 0 else 1
            p = f"{name}-blocks-{i}-{j}"
            h = _conv(x, c, 3, stride, f"{p}-0")
            h = _bn(f"{p}-1", eps, momentum)(h)
            h = keras.layers.ReLU(name=f"{p}-2")(h)
            # official: residual when temp.shape == x.shape
            if residual and stride == 1 and c_in == c:
                h = keras.layers.Add(name=f"{p}-add")([h, x])
            x, c_in = h, c
        outs.append(x)
    return outs


def second_fpn(features, out_channels=(128, 128), upsample_strides=(1, 2), eps=1e-3,
               momentum=0.01, use_conv_for_no_stride=False, name="neck"):
    """mmdet3d ``SECONDFPN``: per-level upsample-BN-ReLU, concatenated (NHWC)."""
    ups = []
    for i, (x, c, s) in enumerate(zip(features, out_channels, upsample_strides)):
        p = f"{name}-deblocks-{i}"
        if s > 1 or (s == 1 and not use_conv_for_no_stride):
            k = int(s)
            layer = keras.layers.Conv2DTranspose(c, k, strides=k, padding="valid",
                                                 use_bias=False, name=f"{p}-0",
                                                 kernel_initializer=_kaiming_fan_out())
            layer.torch_layout = "conv"  # (in, out, kh, kw) -> (kh, kw, out, in)
            h = layer(x)
        else:
            k = int(np.round(1 / s))
            h = _conv(x, c, k, k, f"{p}-0", pad=0)
        h = _bn(f"{p}-1", eps, momentum)(h)
        ups.append(keras.layers.ReLU(name=f"{p}-2")(h))
    if len(ups) == 1:
        return ups[0]
    return keras.layers.Concatenate(axis=-1, name=f"{name}-concat")(ups)


def center_head(x, tasks=(3,), common_heads=DEFAULT_COMMON_HEADS, share_conv_channel=64,
                head_conv=64, final_kernel=3, num_heatmap_convs=2, init_bias=-2.19,
                eps=1e-3, momentum=0.01, name="bbox_head"):
    """mmdet3d ``CenterHead`` with ``SeparateHead`` task heads.

    Args:
        tasks: number of classes of each task.
        common_heads: ``(name, channels, num_conv)`` per regression head, in order.

    Returns ``(heatmap, regression)``: logits (B, H, W, sum(tasks)) and the common heads
    concatenated per task, tasks after each other (B, H, W, T * K), float32.
    """
    def conv_module(h, filters, kernel, p):  # mmcv ConvModule: conv (no bias) + bn + relu
        h = _conv(h, filters, kernel, 1, f"{p}-conv")
        h = _bn(f"{p}-bn", eps, momentum)(h)
        return keras.layers.ReLU(name=f"{p}-activate")(h)

    x = conv_module(x, share_conv_channel, 3, f"{name}-shared_conv")
    heatmaps, regressions = [], []
    for t, num_classes in enumerate(tasks):
        heads = list(common_heads) + [("heatmap", num_classes, num_heatmap_convs)]
        for head, channels, num_conv in heads:
            p = f"{name}-task_heads-{t}-{head}"
            h = x
            for k in range(num_conv - 1):
                h = conv_module(h, head_conv, final_kernel, f"{p}-{k}")
            bias = init_bias if head == "heatmap" else 0.0
            h = _conv(h, channels, final_kernel, 1, f"{p}-{num_conv - 1}", use_bias=True,
                      bias_init=keras.initializers.Constant(bias), dtype="float32")
            (heatmaps if head == "heatmap" else regressions).append(h)
    cat = keras.layers.Concatenate(axis=-1, dtype="float32", name=f"{name}-heatmap")
    heatmap = cat(heatmaps) if len(heatmaps) > 1 else heatmaps[0]
    if not regressions:
        raise ValueError("common_heads is empty.")
    cat = keras.layers.Concatenate(axis=-1, dtype="float32", name=f"{name}-regression")
    regression = cat(regressions) if len(regressions) > 1 else regressions[0]
    return heatmap, regression


# --------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------


def center_heatmap_loss(y_true, y_pred):
    """CenterNet/CenterPoint penalty-reduced focal loss (mmdet ``GaussianFocalLoss``, alpha
    2, gamma 4) on heatmap logits, per sample, normalised by its number of centres (>= 1).
    """
    y_true = ops.cast(y_true, "float32")
    p = ops.clip(ops.sigmoid(ops.cast(y_pred, "float32")), 1e-4, 1 - 1e-4)
    pos = ops.cast(y_true >= 1.0 - 1e-6, "float32")
    pos_term = ops.log(p) * ops.square(1 - p) * pos
    neg_term = ops.log(1 - p) * ops.square(p) * ops.power(1 - y_true, 4) * (1 - pos)
    axes = (1, 2, 3)
    num_pos = ops.maximum(ops.sum(pos, axis=axes), 1.0)
    return -ops.sum(pos_term + neg_term, axis=axes) / num_pos


def center_regression_loss(y_true, y_pred):
    """L1 at centre cells: ``y_true`` (..., K + 1) = K targets + a weight channel, compared
    with the first K predicted channels; per sample, normalised by the centre count."""
    y_true = ops.cast(y_true, "float32")
    k = y_true.shape[-1] - 1
    weight = y_true[..., k:]
    err = ops.abs(ops.cast(y_pred, "float32")[..., :k] - y_true[..., :k]) * weight
    return ops.sum(err, axis=(1, 2, 3)) / ops.maximum(ops.sum(weight, axis=(1, 2, 3)), 1.0)


def center_losses():
    """``loss`` and ``loss_weights`` for ``FlatFormerDetector.compile`` (targets from
    :func:`visionzoo.training.scenes.center_targets`; regression weight 0.25 as
    CenterPoint's default ``L1Loss``)."""
    return ({"heatmap": center_heatmap_loss, "regression": center_regression_loss},
            {"heatmap": 1.0, "regression": 0.25})


# --------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------


def _take_rows(x, indices):
    """``out[b, i] = x[b, indices[b, i]]`` for ``x`` (B, N, C), one flat gather."""
    shape = ops.shape(x)
    batch, n = shape[0], shape[1]
    flat = ops.reshape(x, (-1, x.shape[-1]))
    offsets = ops.expand_dims(ops.arange(batch, dtype="int32") * ops.cast(n, "int32"), 1)
    idx = ops.reshape(ops.cast(indices, "int32") + offsets, (-1,))
    return ops.reshape(ops.take(flat, idx, axis=0), (batch, -1, x.shape[-1]))


def decode_centers(heatmap, regression, point_cloud_range, voxel_size, max_detections=50,
                   out_size_factor=1, common_heads=DEFAULT_COMMON_HEADS, tasks=None,
                   iou_pow=2.0, peak_pool=True):
    """Head outputs -> ``boxes`` (B, K, 7) ``x y z l w h yaw``, ``scores`` (B, K),
    ``labels`` (B, K) int32 (and ``velocities`` (B, K, 2) with a ``vel`` head) for the
    ``K = max_detections`` best centres, sorted by score.

    As mmdet3d ``CenterPointBBoxCoder``: ``x = (ix + reg_x) * out_size_factor *
    voxel_x + x_min``, ``z = height``, sizes ``exp(dim)`` (``norm_bbox``), ``yaw =
    atan2(rot_sin, rot_cos)``; with an ``iou`` head the score is ``sigmoid(heatmap) *
    clip(iou, 0, 1) ** iou_pow``. ``peak_pool``: keep only cells equal to their 3x3 max
    (CenterPoint's max-pool NMS). The best are picked by ``top_k`` over cells x classes
    (no float argmax). ``tasks``: classes per task (default: one task).
    """
    r, s = point_cloud_range, voxel_size
    heat = ops.sigmoid(ops.cast(heatmap, "float32"))
    regression = ops.cast(regression, "float32")
    num_classes = heat.shape[-1]
    tasks = tuple(tasks) if tasks else (num_classes,)
    layout, k_reg = {}, 0
    for name, channels, _ in common_heads:
        layout[name] = (k_reg, k_reg + channels)
        k_reg += channels
    if "iou" in layout:
        a, b = layout["iou"]
        parts, start = [], 0
        for t, n in enumerate(tasks):
            iou = ops.clip(regression[..., t * k_reg + a:t * k_reg + b], 0.0, 1.0)
            parts.append(heat[..., start:start + n] * ops.power(iou, iou_pow))
            start += n
        heat = ops.concatenate(parts, -1) if len(parts) > 1 else parts[0]
    if peak_pool:
        pooled = ops.max_pool(heat, 3, strides=1, padding="same")
        heat = ops.where(ops.equal(heat, pooled), heat, 0.0)
    shape = ops.shape(heat)
    batch, nx = shape[0], heat.shape[2]
    scores, index = ops.top_k(ops.reshape(heat, (batch, -1)), max_detections)
    index = ops.cast(index, "int32")
    labels = index % num_classes
    cell = index // num_classes
    iy, ix = cell // nx, cell % nx
    task_of = np.repeat(np.arange(len(tasks)), tasks).astype("int32")
    task = ops.take(ops.convert_to_tensor(task_of), labels)
    reg = _take_rows(ops.reshape(regression, (batch, -1, k_reg)), cell * len(tasks) + task)

    def head(name):
        a, b = layout[name]
        return reg[..., a:b]

    x = (ops.cast(ix, "float32") + head("reg")[..., 0]) * (out_size_factor * s[0]) + r[0]
    y = (ops.cast(iy, "float32") + head("reg")[..., 1]) * (out_size_factor * s[1]) + r[1]
    size = ops.exp(ops.clip(head("dim"), -5.0, 5.0))
    rot = head("rot")
    yaw = ops.arctan2(rot[..., 0], rot[..., 1])
    boxes = ops.concatenate([ops.stack([x, y], -1), head("height"), size,
                             ops.expand_dims(yaw, -1)], -1)
    out = {"boxes": boxes, "scores": scores, "labels": labels}
    if "vel" in layout:
        out["velocities"] = head("vel")
    return out


# --------------------------------------------------------------------------------------
# Rotated BEV IoU and NMS
# --------------------------------------------------------------------------------------


def bev_box_corners(boxes):
    """``x y z l w h yaw`` (..., 7) -> counter-clockwise BEV corners (..., 4, 2)."""
    boxes = ops.cast(boxes, "float32")
    x, y, l, w, yaw = boxes[..., 0], boxes[..., 1], boxes[..., 3], boxes[..., 4], boxes[..., 6]
    c, s = ops.cos(yaw), ops.sin(yaw)
    sx = np.array([1.0, 1.0, -1.0, -1.0], "float32") * 0.5
    sy = np.array([-1.0, 1.0, 1.0, -1.0], "float32") * 0.5
    lx = ops.expand_dims(l, -1) * sx
    ly = ops.expand_dims(w, -1) * sy
    cx, cy = ops.expand_dims(c, -1), ops.expand_dims(s, -1)
    px = ops.expand_dims(x, -1) + cx * lx - cy * ly
    py = ops.expand_dims(y, -1) + cy * lx + cx * ly
    return ops.stack([px, py], -1)


def _next(v):
    """The next vertex, cyclically (no ``roll``: TFLite builtins)."""
    return ops.concatenate([v[..., 1:, :], v[..., :1, :]], axis=-2)


def _clip_half_plane(poly, a, b):
    """Clip the closed chain ``poly`` (..., N, 2) to the left of the line a -> b
    ((..., 2) each) -> (..., 2N, 2).

    Sutherland-Hodgman without data-dependent sizes: edge ``p -> q`` emits ``c(p)`` and
    then the crossing point if the edge crosses the line, else ``c(p)`` again, where
    ``c(p)`` is ``p`` inside and ``p`` projected on the line outside. The projected
    points all lie on the clipping line, so the chain's shoelace area (and winding
    number) equals that of the clipped polygon; nothing needs compacting.
    """
    e = b - a
    e = e / ops.maximum(ops.sqrt(ops.sum(e * e, -1, keepdims=True)), 1e-12)
    normal = ops.stack([-e[..., 1], e[..., 0]], -1)  # left normal
    a_, n_ = ops.expand_dims(a, -2), ops.expand_dims(normal, -2)
    d = ops.sum((poly - a_) * n_, -1, keepdims=True)  # signed distance, >= 0 inside
    q, dq = _next(poly), _next(d)
    inside, inside_q = d >= 0, dq >= 0
    c = ops.where(inside, poly, poly - d * n_)
    denom = d - dq
    crosses = ops.not_equal(inside, inside_q)
    t = d / ops.where(crosses, denom, 1.0)
    cross_pt = poly + t * (q - poly)
    second = ops.where(crosses, cross_pt, c)
    out = ops.stack([c, second], -2)  # (..., N, 2, 2)
    shape = ops.shape(poly)
    return ops.reshape(out, tuple(shape[:-2]) + (2 * poly.shape[-2], 2))


def _shoelace(poly):
    nxt = _next(poly)
    return 0.5 * ops.sum(poly[..., 0] * nxt[..., 1] - poly[..., 1] * nxt[..., 0], -1)


def rotated_iou_matrix(boxes_a, boxes_b=None):
    """Exact pairwise BEV IoU of rotated boxes: (B, N, 7), (B, M, 7) -> (B, N, M).

    Intersection = box a clipped by the four edges of box b (:func:`_clip_half_plane`,
    64 chain vertices per pair), in coordinates centred on box b."""
    boxes_a = ops.cast(boxes_a, "float32")
    boxes_b = boxes_a if boxes_b is None else ops.cast(boxes_b, "float32")
    ca = bev_box_corners(boxes_a)  # (B, N, 4, 2)
    cb = bev_box_corners(boxes_b)  # (B, M, 4, 2)
    centre = ops.expand_dims(ops.expand_dims(boxes_b[..., :2], 1), -2)  # (B, 1, M, 1, 2)
    poly = ops.expand_dims(ca, 2) - centre  # (B, N, M, 4, 2)
    cb = ops.expand_dims(cb, 1) - centre  # (B, 1, M, 4, 2)
    for k in range(4):
        a = cb[..., k, :]
        b = cb[..., (k + 1) % 4, :]
        poly = _clip_half_plane(poly, a, b)
    inter = ops.maximum(_shoelace(poly), 0.0)
    area_a = boxes_a[..., 3] * boxes_a[..., 4]
    area_b = boxes_b[..., 3] * boxes_b[..., 4]
    union = ops.expand_dims(area_a, 2) + ops.expand_dims(area_b, 1) - inter
    return inter / ops.maximum(union, 1e-9)


def nms_keep(overlap, valid, num_iterations=None):
    """Greedy NMS keep mask from a boolean ``overlap`` (B, K, K) of boxes sorted by score
    (``overlap[b, i, j]``: ``j`` suppresses ``i`` if ``j`` is kept and ``j < i``).

    ``keep_i = valid_i and not any_{j < i}(keep_j and overlap_ij)`` is triangular: the
    iteration ``keep <- f(keep)`` makes at least one more leading entry final per step,
    so ``K`` steps (the default) give exactly the greedy result. ``fori_loop`` with a
    fixed count (TFLite ``WHILE``)."""
    k = overlap.shape[-1]
    earlier = np.tril(np.ones((k, k), "float32"), -1)  # j < i
    sup = ops.cast(overlap, "float32") * earlier
    valid_f = ops.cast(valid, "float32")

    def body(_, keep):
        hit = ops.squeeze(ops.matmul(sup, ops.expand_dims(keep, -1)), -1)
        return valid_f * ops.cast(hit < 0.5, "float32")

    keep = ops.fori_loop(0, int(num_iterations or k), body, valid_f)
    return keep > 0.5


def bev_nms(detections, iou_threshold=0.5, score_threshold=0.0, mode="rotate",
            class_aware=True, num_iterations=None):
    """Class-aware NMS of decoded detections (the dict of :func:`decode_centers`).

    Args:
        iou_threshold: float, or one per class (mmdet3d ``nms_thr`` list). ``mode=
            "rotate"``: suppress at rotated BEV IoU above it. ``mode="circle"``: the
            CenterPoint ``circle_nms`` rule, suppress when the squared centre distance is
            at most the threshold (its ``min_radius``).
        score_threshold: detections below it are dropped first.
        class_aware: only boxes of the same label suppress each other.

    Returns the dict re-ordered by score with suppressed entries last, and ``valid`` (B, K)
    bool (kept); suppressed entries get score 0. Shapes stay fixed.
    """
    boxes = ops.cast(detections["boxes"], "float32")
    scores = ops.cast(detections["scores"], "float32")
    labels = ops.cast(detections["labels"], "int32")
    k = scores.shape[-1]
    scores, order = ops.top_k(scores, k)
    order = ops.cast(order, "int32")
    extra = {n: v for n, v in detections.items() if n not in ("boxes", "scores", "labels")}
    boxes = _take_rows(boxes, order)
    labels = ops.take_along_axis(labels, order, axis=1)
    extra = {n: _take_rows(ops.cast(v, "float32"), order) for n, v in extra.items()}
    if mode == "rotate":
        iou = rotated_iou_matrix(boxes)
    elif mode == "circle":
        d = ops.expand_dims(boxes[..., :2], 2) - ops.expand_dims(boxes[..., :2], 1)
        iou = -ops.sum(d * d, -1)  # overlap <=> -dist2 >= -thr
    else:
        raise ValueError(f"mode must be 'rotate' or 'circle', got {mode!r}.")
    thr = np.atleast_1d(np.asarray(iou_threshold, "float32"))
    thr_i = ops.take(ops.convert_to_tensor(thr), labels) if thr.size > 1 else float(thr[0])
    thr_i = ops.expand_dims(thr_i, -1) if thr.size > 1 else thr_i
    overlap = iou > thr_i if mode == "rotate" else iou >= -thr_i
    if class_aware:
        overlap = overlap & ops.equal(ops.expand_dims(labels, 2), ops.expand_dims(labels, 1))
    keep = nms_keep(overlap, scores >= score_threshold, num_iterations)
    kept = ops.where(keep, scores, 0.0)
    # kept first (by score), suppressed after: top_k on score + a kept bonus
    _, order = ops.top_k(kept + ops.cast(keep, "float32") * 2.0, k)
    order = ops.cast(order, "int32")
    out = {"boxes": _take_rows(boxes, order),
           "scores": ops.take_along_axis(kept, order, axis=1),
           "labels": ops.take_along_axis(labels, order, axis=1),
           "valid": ops.take_along_axis(keep, order, axis=1)}
    out.update({n: _take_rows(v, order) for n, v in extra.items()})
    return out


@keras.saving.register_keras_serializable(package="visionzoo")
class CenterDecoder(keras.layers.Layer):
    """``[heatmap, regression]`` -> ``{boxes, scores, labels, valid}``: :func:`decode_centers`
    then :func:`bev_nms` (``nms=None``: no NMS, ``valid`` = score > 0), for exportable
    end-to-end models. Keyword arguments are those of the two functions."""

    def __init__(self, point_cloud_range, voxel_size, max_detections=50, out_size_factor=1,
                 common_heads=DEFAULT_COMMON_HEADS, tasks=None, iou_pow=2.0, peak_pool=True,
                 nms="rotate", iou_threshold=0.5, score_threshold=0.0, **kwargs):
        super().__init__(**kwargs)
        self.point_cloud_range = tuple(float(v) for v in point_cloud_range)
        self.voxel_size = tuple(float(v) for v in voxel_size)
        self.max_detections = int(max_detections)
        self.out_size_factor = out_size_factor
        self.common_heads = tuple(tuple(h) for h in common_heads)
        self.tasks = tuple(tasks) if tasks else None
        self.iou_pow = iou_pow
        self.peak_pool = peak_pool
        self.nms = nms
        self.iou_threshold = iou_threshold
        self.score_threshold = score_threshold

    def call(self, inputs):
        heatmap, regression = inputs
        dec = decode_centers(heatmap, regression, self.point_cloud_range, self.voxel_size,
                             self.max_detections, self.out_size_factor, self.common_heads,
                             self.tasks, self.iou_pow, self.peak_pool)
        if self.nms is None:
            dec["valid"] = dec["scores"] > self.score_threshold
            return dec
        return bev_nms(dec, self.iou_threshold, self.score_threshold, self.nms)

    def compute_output_spec(self, inputs):
        b, k = inputs[0].shape[0], self.max_detections
        t = keras.KerasTensor
        out = {"boxes": t((b, k, 7), "float32"), "scores": t((b, k), "float32"),
               "labels": t((b, k), "int32"), "valid": t((b, k), "bool")}
        if any(h[0] == "vel" for h in self.common_heads):
            out["velocities"] = t((b, k, 2), "float32")
        return out

    def get_config(self):
        config = super().get_config()
        config.update(point_cloud_range=list(self.point_cloud_range),
                      voxel_size=list(self.voxel_size), max_detections=self.max_detections,
                      out_size_factor=self.out_size_factor,
                      common_heads=[list(h) for h in self.common_heads],
                      tasks=list(self.tasks) if self.tasks else None, iou_pow=self.iou_pow,
                      peak_pool=self.peak_pool, nms=self.nms,
                      iou_threshold=self.iou_threshold,
                      score_threshold=self.score_threshold)
        return config
