"""Box utilities in ``keras.ops`` (dense, padded, batched) and the exportable decoder.

Boxes are ``xyxy`` in input pixels unless said otherwise. Targets are dense and padded
with -1 (``{"boxes": (B, M, 4), "labels": (B, M)}``, keras-hub/keras-cv style) so
everything runs on JAX, TensorFlow and torch without ragged tensors.
"""

import keras
import numpy as np
from keras import ops


def pairwise_iou(a, b):
    """IoU of ``a (..., N, 4)`` against ``b (..., M, 4)`` -> ``(..., N, M)``."""
    a = ops.convert_to_tensor(a, "float32")
    b = ops.convert_to_tensor(b, "float32")
    a = ops.expand_dims(a, -2)
    b = ops.expand_dims(b, -3)
    lt = ops.maximum(a[..., :2], b[..., :2])
    rb = ops.minimum(a[..., 2:], b[..., 2:])
    wh = ops.maximum(rb - lt, 0.0)
    inter = wh[..., 0] * wh[..., 1]
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    return inter / ops.maximum(area_a + area_b - inter, 1e-9)


def encode_deltas(anchors, boxes, stds=(1.0, 1.0, 1.0, 1.0)):
    """mmdet's ``DeltaXYWHBBoxCoder.encode``: centre offsets / anchor size, log sizes."""
    anchors = ops.convert_to_tensor(anchors, "float32")
    boxes = ops.convert_to_tensor(boxes, "float32")
    aw, ah = anchors[..., 2] - anchors[..., 0], anchors[..., 3] - anchors[..., 1]
    ax, ay = anchors[..., 0] + 0.5 * aw, anchors[..., 1] + 0.5 * ah
    bw = ops.maximum(boxes[..., 2] - boxes[..., 0], 1e-6)
    bh = ops.maximum(boxes[..., 3] - boxes[..., 1], 1e-6)
    bx, by = boxes[..., 0] + 0.5 * bw, boxes[..., 1] + 0.5 * bh
    d = ops.stack([(bx - ax) / aw, (by - ay) / ah, ops.log(bw / aw), ops.log(bh / ah)], -1)
    return d / ops.convert_to_tensor(np.asarray(stds, np.float32))


def decode_deltas(anchors, deltas, stds=(1.0, 1.0, 1.0, 1.0), max_ratio=abs(np.log(16 / 1000))):
    """The inverse of :func:`encode_deltas`; log sizes are clipped like mmdet."""
    anchors = ops.convert_to_tensor(anchors, "float32")
    deltas = ops.convert_to_tensor(deltas, "float32")
    deltas = deltas * ops.convert_to_tensor(np.asarray(stds, np.float32))
    aw, ah = anchors[..., 2] - anchors[..., 0], anchors[..., 3] - anchors[..., 1]
    ax, ay = anchors[..., 0] + 0.5 * aw, anchors[..., 1] + 0.5 * ah
    dw = ops.clip(deltas[..., 2], -max_ratio, max_ratio)
    dh = ops.clip(deltas[..., 3], -max_ratio, max_ratio)
    cx, cy = ax + deltas[..., 0] * aw, ay + deltas[..., 1] * ah
    w, h = aw * ops.exp(dw), ah * ops.exp(dh)
    return ops.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], -1)


def normalize_targets(y, bounding_box_format="xyxy", image_shape=None):
    """``{"boxes", "labels"|"classes"}`` (-1 padded) -> ``(boxes xyxy float32, labels int32)``."""
    if not isinstance(y, dict) or "boxes" not in y:
        raise ValueError("Detection targets must be a dict {'boxes': (B, M, 4), 'labels': "
                         "(B, M)} padded with -1 ('classes' is accepted for 'labels').")
    labels = y.get("labels", y.get("classes"))
    if labels is None:
        raise ValueError("Detection targets need 'labels' (or 'classes') beside 'boxes'.")
    boxes = ops.cast(y["boxes"], "float32")
    if bounding_box_format != "xyxy":
        h, w = (image_shape or (None, None))[:2]
        boxes = keras.utils.bounding_boxes.convert_format(
            boxes, source=bounding_box_format, target="xyxy", height=h, width=w)
    labels = ops.cast(labels, "int32")
    if len(labels.shape) == len(boxes.shape):  # (B, M, 1)
        labels = labels[..., 0]
    return boxes, labels


@keras.saving.register_keras_serializable(package="visionzoo")
class DetectionDecoder(keras.layers.Layer):
    """Decode + class-aware non-max suppression with static shapes, TFLite-builtin safe.

    Inputs: ``[class_logits (B, A, C), box_regression (B, A, 4)]``; output
    ``(B, max_detections, 6)`` rows ``[x1, y1, x2, y2, score, class]``, best first,
    padded with -1. Per anchor the best class is taken with ``top_k`` (not a float
    ``argmax``, which TFLite lowers to Flex ops), the ``pre_nms_topk`` best anchors are
    decoded, then greedy NMS runs as a fixed-length loop (a TFLite ``WHILE``) over that
    sorted candidate list; classes are kept apart by offsetting their boxes.

    Args:
        anchors: ``(A, 4)`` xyxy anchors (anchor-based heads) or ``(A, 2)`` points with
            ``strides`` (anchor-free heads, box regression = l, t, r, b distances in
            stride units).
        mode: "deltas" (RetinaNet) or "distances" (anchor-free).
        strides: ``(A,)`` per-point strides for ``mode="distances"``.
        reg_max: with ``mode="distances"``, the regression is ``(B, A, 4 * reg_max)``
            bin logits (distribution focal loss heads) whose softmax expectation is
            the distance; None when it already is ``(B, A, 4)`` distances.
        score_threshold, iou_threshold, pre_nms_topk, max_detections: mmdet defaults
            0.05, 0.5, 1000, 100.
        activation: "sigmoid" on class logits, or None if already probabilities.
    """

    def __init__(self, anchors, mode="deltas", strides=None, score_threshold=0.05,
                 iou_threshold=0.5, pre_nms_topk=1000, max_detections=100,
                 activation="sigmoid", image_size=None, reg_max=None, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.anchors = np.asarray(anchors, np.float32)
        self.mode = mode
        self.strides = None if strides is None else np.asarray(strides, np.float32)
        self.score_threshold = float(score_threshold)
        self.iou_threshold = float(iou_threshold)
        self.pre_nms_topk = int(min(pre_nms_topk, len(self.anchors)))
        self.max_detections = int(max_detections)
        self.activation = activation
        self.image_size = None if image_size is None else tuple(image_size)
        self.reg_max = None if reg_max is None else int(reg_max)

    def _decode(self, anchors, regression, strides):
        if self.mode == "deltas":
            boxes = decode_deltas(anchors, regression)
        else:
            if self.reg_max:
                k = ops.shape(regression)[1]
                probs = ops.softmax(ops.reshape(regression, (-1, k, 4, self.reg_max)), -1)
                bins = ops.convert_to_tensor(np.arange(self.reg_max, dtype=np.float32))
                regression = ops.sum(probs * bins, axis=-1)
            d = regression * strides[..., None]
            boxes = ops.concatenate([anchors - d[..., :2], anchors + d[..., 2:]], -1)
        if self.image_size is not None:
            h, w = self.image_size
            limit = ops.convert_to_tensor(np.array([w, h, w, h], np.float32))
            boxes = ops.minimum(ops.maximum(boxes, 0.0), limit)
        return boxes

    def call(self, inputs):
        logits, regression = inputs
        logits = ops.cast(logits, "float32")
        regression = ops.cast(regression, "float32")
        scores = ops.sigmoid(logits) if self.activation == "sigmoid" else logits
        best, label = ops.top_k(scores, 1)
        best, label = best[..., 0], label[..., 0]
        k = self.pre_nms_topk
        cand_scores, idx = ops.top_k(best, k)  # (B, K), sorted
        cand_labels = ops.take_along_axis(label, idx, axis=1)
        cand_reg = ops.take_along_axis(regression, idx[..., None], axis=1)
        anchors = ops.take(ops.convert_to_tensor(self.anchors), idx, axis=0)
        strides = (None if self.strides is None
                   else ops.take(ops.convert_to_tensor(self.strides), idx, axis=0))
        boxes = self._decode(anchors, cand_reg, strides)
        # Class-aware NMS: shift each class into its own region of the plane.
        offset = (ops.max(boxes) + 1.0) * ops.cast(cand_labels, "float32")
        shifted = boxes + offset[..., None]
        iou = pairwise_iou(shifted, shifted)  # (B, K, K)
        later = ops.convert_to_tensor(np.triu(np.ones((k, k), bool), 1))
        suppressor = ops.logical_and(iou > self.iou_threshold, later)  # i suppresses j > i
        keep = cand_scores > self.score_threshold

        def body(i, keep):
            row = ops.take(suppressor, i, axis=1)  # (B, K): boxes that i would suppress
            active = ops.take(keep, i, axis=1)[:, None]
            return ops.logical_and(keep, ops.logical_not(ops.logical_and(row, active)))

        keep = ops.fori_loop(0, k, body, keep)
        kept_scores = ops.where(keep, cand_scores, -1.0)
        top_scores, order = ops.top_k(kept_scores, min(self.max_detections, k))
        out_boxes = ops.take_along_axis(boxes, order[..., None], axis=1)
        out_labels = ops.cast(ops.take_along_axis(cand_labels, order, axis=1), "float32")
        valid = top_scores > 0.0
        rows = ops.concatenate([out_boxes, top_scores[..., None], out_labels[..., None]], -1)
        rows = ops.where(valid[..., None], rows, -1.0)
        if self.max_detections > k:  # fewer candidates than rows: pad to the static size
            rows = ops.pad(rows, ((0, 0), (0, self.max_detections - k), (0, 0)),
                           constant_values=-1.0)
        return rows

    def compute_output_shape(self, input_shape):
        return (input_shape[0][0], self.max_detections, 6)

    def get_config(self):
        config = super().get_config()
        config.update(anchors=self.anchors.tolist(), mode=self.mode,
                      strides=None if self.strides is None else self.strides.tolist(),
                      score_threshold=self.score_threshold,
                      iou_threshold=self.iou_threshold, pre_nms_topk=self.pre_nms_topk,
                      max_detections=self.max_detections, activation=self.activation,
                      image_size=None if self.image_size is None else list(self.image_size),
                      reg_max=self.reg_max)
        return config


def split_detections(rows):
    """``(B, D, 6)`` decoder rows -> keras-hub style dict of numpy arrays:
    ``boxes (B, D, 4)``, ``scores (B, D)``, ``labels (B, D)`` (-1 padded) and
    ``num_detections (B,)``."""
    rows = np.asarray(keras.ops.convert_to_numpy(rows))
    valid = rows[..., 4] > 0
    return {"boxes": rows[..., :4], "scores": rows[..., 4],
            "labels": np.where(valid, rows[..., 5], -1).astype("int32"),
            "num_detections": valid.sum(-1).astype("int32")}
