"""The anchor-free detection head: YOLOv8-style decoupled branches with distribution
focal loss, task-aligned assignment and CIoU (Jocher et al. 2023; Li et al. 2020 for
DFL; Feng et al. 2021 for TAL; Zheng et al. 2020 for CIoU).

Written from the papers with the canonical hyper-parameters: per level (strides 8, 16,
32) a box branch ``2 x (3x3 conv-BN-SiLU, c2) -> 1x1 conv (4 * reg_max)`` and a class
branch ``2 x (3x3 conv-BN-SiLU, c3) -> 1x1 conv (num_classes)`` with ``c2 = max(16,
C/4, 4 reg_max)``, ``c3 = max(C, min(num_classes, 100))``, ``reg_max = 16``; box bias
1.0 and class prior probability ``5 / num_classes / (image / stride)^2`` (five objects
expected per image), capped at RetinaNet's 0.01: on small images the coarse levels
have so few cells that the uncapped prior (0.3 on a 64 px image's stride-32 level)
makes the negatives' loss dominate the first hundred steps. Each side of a box is a distance from the cell centre in stride units,
predicted as a softmax over ``reg_max`` bins whose expectation is the distance.

Assignment (TAL): a point is a candidate for a ground truth when it lies inside the box;
its alignment is ``score^alpha * IoU^beta`` (score of the ground truth's class, IoU of
the predicted box); the ``topk`` best-aligned candidates of each box are positives, and
a point claimed by several boxes goes to the one it overlaps most. Class targets are
soft: the one-hot class scaled by the alignment, normalised per box so that its best
point gets the best IoU. Loss: BCE (0.5) + CIoU (7.5) + DFL (1.5), normalised by the
sum of the class targets. All of it is ``keras.ops`` on dense padded boxes, under
``stop_gradient`` for the assignment.
"""

import math

import keras
import numpy as np
from keras import ops

from visionzoo.heads.boxes import pairwise_iou
from visionzoo.heads.common import conv_module

REG_MAX = 16
TAL_TOPK = 10
TAL_ALPHA = 0.5
TAL_BETA = 6.0
LOSS_WEIGHTS = {"classes": 0.5, "ciou": 7.5, "dfl": 1.5}


def anchor_points(levels, offset=0.5):
    """Cell centres in pixels for ``levels`` ({level: (fh, fw)}) -> ``(points (A, 2)
    xy, strides (A,))``, level by level then row-major (the head's output order)."""
    points, strides = [], []
    for level, (fh, fw) in sorted(levels.items()):
        stride = 2 ** level
        ys = (np.arange(fh, dtype=np.float32) + offset) * stride
        xs = (np.arange(fw, dtype=np.float32) + offset) * stride
        cy, cx = np.meshgrid(ys, xs, indexing="ij")
        points.append(np.stack([cx, cy], -1).reshape(-1, 2))
        strides.append(np.full((fh * fw,), stride, np.float32))
    return np.concatenate(points, 0), np.concatenate(strides, 0)


def yolo_head(features, num_classes, image_size, reg_max=REG_MAX, name="head"):
    """Decoupled per-level branches on ``features`` ({level: map}) ->
    ``(class logits (B, A, C), box distributions (B, A, 4 * reg_max))``."""
    channels = features[min(features)].shape[-1]
    c2 = max(16, channels // 4, reg_max * 4)
    c3 = max(channels, min(num_classes, 100))
    classes, boxes = [], []
    for lvl, x in sorted(features.items()):
        stride = 2 ** lvl
        cells = (image_size[0] / stride) * (image_size[1] / stride)
        b = x
        for i in range(2):
            b = conv_module(b, c2, 3, f"{name}-box{lvl}-conv{i}", activation="silu")
        b = keras.layers.Conv2D(4 * reg_max, 1, name=f"{name}-box{lvl}-out",
                                bias_initializer=keras.initializers.Constant(1.0))(b)
        c = x
        for i in range(2):
            c = conv_module(c, c3, 3, f"{name}-cls{lvl}-conv{i}", activation="silu")
        p = min(5.0 / num_classes / max(cells, 1.0), 0.01)
        prior = -math.log((1 - p) / p)
        c = keras.layers.Conv2D(num_classes, 1, name=f"{name}-cls{lvl}-out",
                                bias_initializer=keras.initializers.Constant(prior))(c)
        boxes.append(keras.layers.Reshape((-1, 4 * reg_max), name=f"{name}-box{lvl}-flat")(b))
        classes.append(keras.layers.Reshape((-1, num_classes),
                                            name=f"{name}-cls{lvl}-flat")(c))
    classes = keras.layers.Concatenate(axis=1, name=f"{name}-cls-concat")(classes)
    boxes = keras.layers.Concatenate(axis=1, name=f"{name}-box-concat")(boxes)
    return classes, boxes


def dfl_distances(logits, reg_max=REG_MAX):
    """``(..., 4 * reg_max)`` bin logits -> ``(..., 4)`` expected l, t, r, b (stride
    units)."""
    shape = ops.shape(logits)
    probs = ops.softmax(ops.reshape(logits, (*shape[:-1], 4, reg_max)), axis=-1)
    bins = ops.convert_to_tensor(np.arange(reg_max, dtype=np.float32))
    return ops.sum(probs * bins, axis=-1)


def distances_to_boxes(points, strides, distances):
    """l, t, r, b (stride units) at ``points`` -> xyxy pixels."""
    points = ops.convert_to_tensor(points, "float32")
    strides = ops.convert_to_tensor(strides, "float32")
    d = distances * strides[..., None]
    return ops.concatenate([points - d[..., :2], points + d[..., 2:]], -1)


def task_aligned_assign(scores, pred_boxes, points, gt_boxes, gt_labels, num_classes,
                        topk=TAL_TOPK, alpha=TAL_ALPHA, beta=TAL_BETA, eps=1e-9):
    """Task-aligned assignment on dense padded targets.

    Args:
        scores: ``(B, A, C)`` predicted class probabilities.
        pred_boxes: ``(B, A, 4)`` decoded xyxy predictions.
        points: ``(A, 2)`` cell centres; gt_boxes ``(B, M, 4)``; gt_labels ``(B, M)``
            with -1 padding.

    Returns:
        ``target_scores (B, A, C)`` (aligned soft labels), ``target_boxes (B, A, 4)``
        and ``foreground (B, A)`` bool.
    """
    scores = ops.stop_gradient(ops.cast(scores, "float32"))
    pred_boxes = ops.stop_gradient(ops.cast(pred_boxes, "float32"))
    points = ops.convert_to_tensor(points, "float32")
    gt_boxes = ops.convert_to_tensor(gt_boxes, "float32")
    gt_labels = ops.convert_to_tensor(gt_labels, "int32")
    valid = gt_labels >= 0  # (B, M)
    num_points = ops.shape(points)[0]
    # Points strictly inside each box: (B, M, A).
    p = points[None, None]  # (1, 1, A, 2)
    lt = p - gt_boxes[:, :, None, :2]
    rb = gt_boxes[:, :, None, 2:] - p
    inside = ops.min(ops.concatenate([lt, rb], -1), axis=-1) > eps
    candidate = ops.logical_and(inside, valid[:, :, None])
    overlaps = ops.maximum(pairwise_iou(gt_boxes, pred_boxes), 0.0)  # (B, M, A)
    # Score of each box's own class at every point: (B, M, A).
    class_scores = ops.take_along_axis(ops.transpose(scores, (0, 2, 1)),
                                       ops.maximum(gt_labels, 0)[..., None], axis=1)
    metric = ops.power(class_scores, alpha) * ops.power(overlaps, beta)
    metric = ops.where(candidate, metric, 0.0)
    k = min(topk, int(num_points))
    kth = ops.top_k(metric, k)[0][..., -1:]  # (B, M, 1)
    positive = ops.logical_and(candidate, ops.logical_and(metric >= kth, metric > 0))
    # A point claimed by several boxes goes to the one it overlaps most.
    claimed = ops.where(positive, overlaps, -1.0)
    owner = ops.argmax(claimed, axis=1)  # (B, A)
    foreground = ops.any(positive, axis=1)
    positive = ops.logical_and(
        positive, ops.equal(ops.arange(ops.shape(gt_labels)[1])[None, :, None],
                            owner[:, None, :]))
    positive_f = ops.cast(positive, "float32")
    target_labels = ops.take_along_axis(gt_labels, owner, axis=1)
    target_boxes = ops.take_along_axis(gt_boxes, owner[..., None], axis=1)
    # Soft labels: alignment normalised so each box's best point gets its best IoU.
    metric = metric * positive_f
    best_metric = ops.max(metric, axis=2, keepdims=True)
    best_iou = ops.max(overlaps * positive_f, axis=2, keepdims=True)
    norm = ops.max(metric * best_iou / (best_metric + eps), axis=1)  # (B, A)
    onehot = ops.one_hot(ops.maximum(target_labels, 0), num_classes)
    target_scores = onehot * (norm * ops.cast(foreground, "float32"))[..., None]
    return (ops.stop_gradient(target_scores), ops.stop_gradient(target_boxes),
            ops.stop_gradient(foreground))


def distribution_focal_loss(logits, targets, reg_max=REG_MAX):
    """DFL: cross-entropy to the two bins around each continuous target, weighted by
    proximity. ``logits (..., 4 * reg_max)``, ``targets (..., 4)`` -> ``(...)`` (mean
    over the four sides)."""
    shape = ops.shape(logits)
    logits = ops.reshape(logits, (*shape[:-1], 4, reg_max))
    log_probs = ops.log_softmax(logits, axis=-1)
    targets = ops.clip(targets, 0.0, reg_max - 1 - 0.01)
    left = ops.floor(targets)
    w_left = left + 1.0 - targets
    bins = ops.convert_to_tensor(np.arange(reg_max, dtype=np.float32))
    weights = (ops.cast(ops.equal(bins, left[..., None]), "float32") * w_left[..., None]
               + ops.cast(ops.equal(bins, left[..., None] + 1.0), "float32")
               * (1.0 - w_left)[..., None])
    return -ops.mean(ops.sum(weights * log_probs, axis=-1), axis=-1)


def yolo_loss(logits, box_logits, points, strides, gt_boxes, gt_labels, num_classes,
              reg_max=REG_MAX, weights=None, return_parts=False):
    """BCE + CIoU + DFL with task-aligned targets (see the module docstring)."""
    logits = ops.cast(logits, "float32")
    box_logits = ops.cast(box_logits, "float32")
    points = ops.convert_to_tensor(points)
    strides = ops.convert_to_tensor(strides)
    pred_boxes = distances_to_boxes(points, strides, dfl_distances(box_logits, reg_max))
    targets = task_aligned_assign(ops.sigmoid(logits), pred_boxes, points, gt_boxes,
                                  gt_labels, num_classes)
    return yolo_loss_from_targets(logits, box_logits, points, strides, *targets,
                                  reg_max=reg_max, weights=weights,
                                  return_parts=return_parts)


def yolo_loss_from_targets(logits, box_logits, points, strides, target_scores,
                           target_boxes, foreground, reg_max=REG_MAX, weights=None,
                           return_parts=False):
    """The loss for given targets (``task_aligned_assign``'s outputs, or any other
    assigner's): class BCE against the soft ``target_scores``, and CIoU and DFL on the
    foreground points weighted by their target score, all over ``sum(target_scores)``."""
    weights = dict(LOSS_WEIGHTS, **(weights or {}))
    logits = ops.cast(logits, "float32")
    box_logits = ops.cast(box_logits, "float32")
    points = ops.convert_to_tensor(points, "float32")
    strides = ops.convert_to_tensor(strides, "float32")
    pred_boxes = distances_to_boxes(points, strides, dfl_distances(box_logits, reg_max))
    total = ops.maximum(ops.sum(target_scores), 1.0)
    bce = (ops.maximum(logits, 0) - logits * target_scores
           + ops.log1p(ops.exp(-ops.abs(logits))))
    cls_loss = ops.sum(bce) / total
    fg = ops.cast(foreground, "float32")
    box_weight = ops.sum(target_scores, axis=-1) * fg  # (B, A)
    ciou = keras.utils.bounding_boxes.compute_ciou(target_boxes, pred_boxes, "xyxy")
    ciou_loss = ops.sum((1.0 - ciou) * box_weight) / total
    target_dist = ops.concatenate([points - target_boxes[..., :2],
                                   target_boxes[..., 2:] - points], -1) / strides[..., None]
    dfl = distribution_focal_loss(box_logits, target_dist, reg_max)
    dfl_loss = ops.sum(dfl * box_weight) / total
    parts = {"classes": cls_loss, "ciou": ciou_loss, "dfl": dfl_loss}
    loss = sum(weights[k] * v for k, v in parts.items())
    return (loss, parts) if return_parts else loss
