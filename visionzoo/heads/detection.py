"""Object detection on any pyramid backbone: RetinaNet (anchors) or a YOLOv8-style
anchor-free head (``head="yolov8"``, see :mod:`visionzoo.heads.anchor_free`), trainable
with ``fit()``, decoded and NMS-ed by an exportable layer.

    det = visionzoo.create_detector("swin_tiny_patch4_window7_224", num_classes=3,
                                    input_shape=(256, 256, 3))
    det.fit(images, {"boxes": boxes, "labels": labels})   # (B, M, 4) xyxy / (B, M), -1 pad
    out = det.predict(images)      # {"boxes", "scores", "labels", "num_detections"}
    tflite_ready = det.export_model(nms=True)   # image -> (B, 100, 6) [x1,y1,x2,y2,s,c]

RetinaNet (Lin et al. 2017) with mmdet's canonical settings: FPN on the backbone levels of
stride 8..32 (the finest available ones when the backbone starts deeper) plus two extra
stride-2 levels from the last input map; 9 anchors per location (octave base 4, scales
2^(0, 1/3, 2/3), ratios 0.5/1/2) centred on the cells; two shared 4x(3x3 conv, 256, ReLU)
subnets; the class subnet's bias starts at the prior probability 0.01. Assignment: IoU
>= 0.5 positive, < 0.4 negative, in between ignored, and every ground truth box keeps its
best-overlapping anchor; sigmoid focal loss (alpha 0.25, gamma 2) and L1 on the deltas,
both normalised by the number of positives.

Targets are dense and padded: ``{"boxes": (B, M, 4), "labels": (B, M)}`` with -1 rows
(``"classes"`` is accepted for ``"labels"``), boxes in ``bounding_box_format`` (any
``keras.utils.bounding_boxes`` format; default "xyxy" in input pixels).
"""

import difflib
import math

import keras
import numpy as np
from keras import ops

from visionzoo.heads.boxes import (DetectionDecoder, encode_deltas, normalize_targets,
                                   pairwise_iou, split_detections)
from visionzoo.heads.anchor_free import REG_MAX, anchor_points, yolo_head, yolo_loss
from visionzoo.heads.common import RestoresCompile, pyramid_levels
from visionzoo.heads.necks import fpn, pan

HEADS = ("retinanet", "yolov8")


def retinanet_anchors(levels, image_size, octave_base=4, scales_per_octave=3,
                      ratios=(0.5, 1.0, 2.0)):
    """``(A, 4)`` xyxy anchors for ``levels`` ({level: (fh, fw)}), ordered level by
    level, then row, column, and the ``len(ratios) * scales_per_octave`` shapes (ratio
    major), matching the head's output layout."""
    out = []
    for level, (fh, fw) in sorted(levels.items()):
        stride = 2 ** level
        base = octave_base * stride
        shapes = []
        for r in ratios:
            for s in range(scales_per_octave):
                size = base * 2 ** (s / scales_per_octave)
                shapes.append((size / math.sqrt(r), size * math.sqrt(r)))  # (w, h)
        shapes = np.asarray(shapes, np.float32)
        ys = (np.arange(fh, dtype=np.float32) + 0.5) * stride
        xs = (np.arange(fw, dtype=np.float32) + 0.5) * stride
        cy, cx = np.meshgrid(ys, xs, indexing="ij")
        centres = np.stack([cx, cy], -1).reshape(-1, 1, 2)
        half = shapes[None] / 2
        out.append(np.concatenate([centres - half, centres + half], -1).reshape(-1, 4))
    return np.concatenate(out, 0)


def _retina_subnet(features, convs, head_conv, outputs_per_anchor, name):
    """Apply the shared conv tower + predictor to every level; concat to (B, A, k)."""
    flat = []
    for lvl, x in sorted(features.items()):
        for conv in convs:
            x = conv(x)
        x = head_conv(x)
        flat.append(keras.layers.Reshape((-1, outputs_per_anchor), name=f"{name}-flat{lvl}")(x))
    return keras.layers.Concatenate(axis=1, name=f"{name}-concat")(flat)


def _retinanet_head(neck, num_classes, channels, anchors_per_loc=9, name=""):
    """The two RetinaNet subnets on every level -> (class logits, box deltas)."""

    def tower(prefix):
        return [keras.layers.Conv2D(channels, 3, padding="same", activation="relu",
                                    name=f"{prefix}-conv{i}") for i in range(4)]

    prior = -math.log((1 - 0.01) / 0.01)
    cls_out = keras.layers.Conv2D(
        anchors_per_loc * num_classes, 3, padding="same", name=f"{name}cls_head-out",
        bias_initializer=keras.initializers.Constant(prior),
        kernel_initializer=keras.initializers.RandomNormal(stddev=0.01))
    box_out = keras.layers.Conv2D(
        anchors_per_loc * 4, 3, padding="same", name=f"{name}box_head-out",
        kernel_initializer=keras.initializers.RandomNormal(stddev=0.01))
    classes = _retina_subnet(neck, tower(f"{name}cls_head"), cls_out, num_classes,
                             f"{name}cls_head")
    boxes = _retina_subnet(neck, tower(f"{name}box_head"), box_out, 4, f"{name}box_head")
    return classes, boxes


def sigmoid_focal_loss(logits, targets, alpha=0.25, gamma=2.0):
    """Per-element sigmoid focal loss (Lin et al. 2017)."""
    p = ops.sigmoid(logits)
    ce = ops.maximum(logits, 0) - logits * targets + ops.log1p(ops.exp(-ops.abs(logits)))
    p_t = p * targets + (1 - p) * (1 - targets)
    a_t = alpha * targets + (1 - alpha) * (1 - targets)
    return a_t * ops.power(1 - p_t, gamma) * ce


@keras.saving.register_keras_serializable(package="visionzoo")
class Detector(RestoresCompile, keras.Model):
    """Backbone pyramid -> neck -> head; dict outputs ``"classes"``
    ``(B, A, num_classes)`` logits and ``"boxes"``: ``(B, A, 4)`` anchor deltas
    (RetinaNet: FPN P3-P7, 9 anchors per cell) or ``(B, A, 64)`` distance-bin logits
    (YOLOv8: PAN on P3-P5 with conv-BN-SiLU modules, one point per cell; ``anchors`` are
    then the cell centres and ``strides`` their strides).

    ``predict`` decodes with :class:`~visionzoo.heads.boxes.DetectionDecoder` and returns
    ``{"boxes", "scores", "labels", "num_detections"}`` (keras-hub's format, -1 padded).

    Args:
        backbone: a visionzoo backbone with ``pyramid_outputs`` at a static input size.
        num_classes: int (no background class).
        head: "retinanet" or "yolov8".
        fpn_channels: int (256). Neck width.
        bounding_box_format: format of the training targets (default "xyxy").
        score_threshold, iou_threshold, pre_nms_topk, max_detections: decoding.
        class_names: optional list of ``num_classes`` names, kept in the saved model.
    """

    def __init__(self, backbone, num_classes, head="retinanet", fpn_channels=256,
                 bounding_box_format="xyxy", score_threshold=0.05, iou_threshold=0.5,
                 pre_nms_topk=1000, max_detections=100, class_names=None, name="detector",
                 **kwargs):
        if head not in HEADS:
            close = difflib.get_close_matches(str(head), HEADS, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"Unknown detection head {head!r}; choose one of {HEADS}.{hint}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} names for "
                             f"num_classes={num_classes}.")
        features = pyramid_levels(backbone)
        inputs = backbone.inputs[0] if isinstance(backbone.inputs, list) else backbone.inputs
        image_size = tuple(inputs.shape[1:3])
        p = name  # layer-name prefix: several detectors can share one backbone graph
        chosen = [lvl for lvl in features if lvl >= 3][:3] or list(features)[-3:]
        if head == "retinanet":
            neck = fpn({lvl: features[lvl] for lvl in chosen}, fpn_channels,
                       extra_levels=max(2, 5 - len(chosen)), name=f"{p}-neck")
            classes, boxes = _retinanet_head(neck, num_classes, fpn_channels, name=f"{p}-")
        else:
            neck = pan({lvl: features[lvl] for lvl in chosen}, fpn_channels,
                       activation="silu", name=f"{p}-neck")
            classes, boxes = yolo_head(neck, num_classes, image_size, name=f"{p}-head")
        outputs = {"classes": keras.layers.Activation("linear", dtype="float32",
                                                      name=f"{p}-classes")(classes),
                   "boxes": keras.layers.Activation("linear", dtype="float32",
                                                    name=f"{p}-boxes")(boxes)}
        super().__init__(inputs=inputs, outputs=outputs, name=name, **kwargs)
        self.backbone = backbone
        self.num_classes = num_classes
        self.class_names = None if class_names is None else [str(c) for c in class_names]
        self.head = head
        self.fpn_channels = fpn_channels
        self.bounding_box_format = bounding_box_format
        self.image_size = image_size
        grid = {lvl: tuple(t.shape[1:3]) for lvl, t in neck.items()}
        if head == "retinanet":
            self.anchors = retinanet_anchors(grid, image_size)
            self.strides = None
        else:
            self.anchors, self.strides = anchor_points(grid)
        self._decode_args = dict(score_threshold=score_threshold, iou_threshold=iou_threshold,
                                 pre_nms_topk=pre_nms_topk, max_detections=max_detections)
        self.decoder = self._make_decoder()

    def _make_decoder(self):
        if self.head == "retinanet":
            extra = {}
        else:
            extra = dict(mode="distances", strides=self.strides, reg_max=REG_MAX)
        return DetectionDecoder(self.anchors, image_size=self.image_size, name="decoder",
                                **extra, **self._decode_args)

    # ---- training ----------------------------------------------------------------

    def compile(self, optimizer="auto", **kwargs):
        """Default optimiser: AdamW(1e-4, weight decay 1e-4) with gradient clipping at
        norm 10 (PoolFormer/Swin RetinaNet setups). The loss is the head's own: focal +
        L1 (RetinaNet) or BCE + CIoU + DFL with task-aligned targets (YOLOv8)."""
        if optimizer == "auto":
            optimizer = keras.optimizers.AdamW(1e-4, weight_decay=1e-4, global_clipnorm=10.0)
        kwargs.pop("loss", None)
        super().compile(optimizer=optimizer, **kwargs)

    def assign_targets(self, boxes, labels):
        """RetinaNet assignment -> ``(class_targets (B,A,C), box_targets (B,A,4),
        positive (B,A), weight (B,A))`` (weight 0 on ignored anchors)."""
        anchors = ops.convert_to_tensor(self.anchors)
        valid = labels >= 0  # (B, M)
        iou = pairwise_iou(anchors[None], boxes)  # (B, A, M)
        iou = ops.where(valid[:, None, :], iou, -1.0)
        max_iou = ops.max(iou, axis=2)
        matched = ops.argmax(iou, axis=2)
        # Every ground truth keeps its best anchor (mmdet's low-quality matches).
        best_per_gt = ops.max(iou, axis=1, keepdims=True)  # (B, 1, M)
        is_best = ops.logical_and(ops.equal(iou, best_per_gt), valid[:, None, :])
        is_best = ops.logical_and(is_best, best_per_gt > 0)
        best_gt = ops.argmax(ops.cast(is_best, "float32"), axis=2)
        forced = ops.any(is_best, axis=2)
        matched = ops.where(forced, best_gt, matched)
        positive = ops.logical_or(max_iou >= 0.5, forced)
        negative = ops.logical_and(max_iou < 0.4, ops.logical_not(positive))
        gt_labels = ops.take_along_axis(labels, matched, axis=1)
        gt_boxes = ops.take_along_axis(boxes, matched[..., None], axis=1)
        onehot = ops.one_hot(ops.maximum(gt_labels, 0), self.num_classes)
        class_targets = onehot * ops.cast(positive, "float32")[..., None]
        box_targets = encode_deltas(anchors[None], gt_boxes)
        weight = ops.cast(ops.logical_or(positive, negative), "float32")
        return class_targets, box_targets, positive, weight

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        boxes, labels = normalize_targets(y, self.bounding_box_format, self.image_size)
        if self.head == "yolov8":
            return yolo_loss(y_pred["classes"], y_pred["boxes"], self.anchors, self.strides,
                             boxes, labels, self.num_classes)
        cls_t, box_t, positive, weight = self.assign_targets(boxes, labels)
        num_pos = ops.maximum(ops.sum(ops.cast(positive, "float32")), 1.0)
        logits = ops.cast(y_pred["classes"], "float32")
        cls_loss = ops.sum(sigmoid_focal_loss(logits, cls_t) * weight[..., None]) / num_pos
        l1 = ops.sum(ops.abs(ops.cast(y_pred["boxes"], "float32") - box_t), axis=-1)
        box_loss = ops.sum(l1 * ops.cast(positive, "float32")) / num_pos
        return cls_loss + box_loss

    # ---- inference ---------------------------------------------------------------

    def decode(self, outputs):
        """``(B, max_detections, 6)`` rows from the raw outputs (exportable)."""
        return self.decoder([outputs["classes"], outputs["boxes"]])

    def predict_step(self, *args):
        if keras.backend.backend() == "jax":
            outputs, state = super().predict_step(*args)
            return self.decode(outputs), state
        return self.decode(super().predict_step(*args))

    def predict(self, x, batch_size=None, verbose="auto", steps=None, callbacks=None):
        """Decoded detections: ``{"boxes", "scores", "labels", "num_detections"}``."""
        rows = super().predict(x, batch_size=batch_size, verbose=verbose, steps=steps,
                               callbacks=callbacks)
        return split_detections(rows)

    def export_model(self, nms=True):
        """A plain functional model for export: image -> ``(B, D, 6)`` decoded rows
        (``nms=True``), or image -> ``[classes (B, A, C), boxes (B, A, 4)]`` raw outputs
        for runtimes that run NMS themselves (decode with ``self.anchors``)."""
        inputs = keras.Input(self.inputs[0].shape[1:] if isinstance(self.inputs, list)
                             else self.input.shape[1:], name="images")
        outputs = self(inputs)
        if nms:
            decoder = self._make_decoder()
            return keras.Model(inputs, decoder([outputs["classes"], outputs["boxes"]]),
                               name=f"{self.name}_nms")
        return keras.Model(inputs, [outputs["classes"], outputs["boxes"]],
                           name=f"{self.name}_raw")

    def get_config(self):
        return {"backbone": keras.saving.serialize_keras_object(self.backbone),
                "num_classes": self.num_classes, "head": self.head,
                "fpn_channels": self.fpn_channels, "class_names": self.class_names,
                "bounding_box_format": self.bounding_box_format, "name": self.name,
                **self._decode_args}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        return cls(**config)


def create_detector(backbone, num_classes, head="retinanet", input_shape=(512, 512, 3),
                    weights=None, compile=True, **kwargs):
    """A compiled :class:`Detector` on a registered backbone name or a backbone model.

    Args:
        backbone: model name or a visionzoo backbone (built for a static size).
        num_classes: int.
        head: "retinanet" or "yolov8".
        input_shape: (H, W, 3) to build a named backbone for.
        weights: backbone weights tag or path (names only), e.g. "in1k".
        compile: bool. Compile with :meth:`Detector.compile`'s defaults.
        **kwargs: more :class:`Detector` arguments.
    """
    if isinstance(backbone, str):
        from visionzoo.registry import create_model

        backbone = create_model(backbone, weights=weights, include_top=False,
                                input_shape=input_shape)
    model = Detector(backbone, num_classes, head=head, **kwargs)
    if compile:
        model.compile()
    return model
