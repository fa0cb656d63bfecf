"""Evaluation: COCO mAP through pycocotools (in memory), mean IoU for masks.

    from visionzoo.heads.evaluation import coco_map
    stats = coco_map(detector.predict(images), {"boxes": boxes, "labels": labels})
    stats["map_50"], stats["map"]        # AP@0.5 and AP@[0.5:0.95]

pycocotools is an optional dependency (``pip install visionzoo[heads]``). Category ids
are the model's class ids plus one, and every class is declared (not only those seen in
the ground truth, a pitfall of keras-cv's wrapper).
"""

import contextlib
import io

import numpy as np


def _require_pycocotools():
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as e:  # pragma: no cover
        raise ImportError("coco_map needs pycocotools: pip install 'visionzoo[heads]' "
                          "(or pip install pycocotools).") from e
    return COCO, COCOeval


def coco_map(predictions, ground_truth, num_classes=None, image_size=None):
    """COCO box AP of decoded detections against dense padded ground truth.

    Args:
        predictions: ``{"boxes" (N, D, 4) xyxy, "scores" (N, D), "labels" (N, D)}`` with
            -1 (or score <= 0) padding, as :meth:`Detector.predict` returns.
        ground_truth: ``{"boxes" (N, M, 4) xyxy, "labels" (N, M)}``, -1 padded.
        num_classes: int or None (max label + 1).
        image_size: (H, W) or None; only stored in the in-memory COCO index.

    Returns:
        dict: ``map`` (AP@[.5:.95]), ``map_50``, ``map_75``, ``map_small/medium/large``,
        ``mar_100`` (AR@100), as floats.
    """
    COCO, COCOeval = _require_pycocotools()
    gt_boxes = np.asarray(ground_truth["boxes"], np.float64)
    gt_labels = np.asarray(ground_truth.get("labels", ground_truth.get("classes")))
    boxes = np.asarray(predictions["boxes"], np.float64)
    scores = np.asarray(predictions["scores"], np.float64)
    labels = np.asarray(predictions["labels"])
    if num_classes is None:
        num_classes = int(max(gt_labels.max(), labels.max())) + 1
    h, w = image_size or (0, 0)
    images, annotations, detections = [], [], []
    for i in range(len(gt_boxes)):
        images.append({"id": i, "height": int(h), "width": int(w)})
        for box, label in zip(gt_boxes[i], gt_labels[i]):
            if label < 0:
                continue
            x1, y1, x2, y2 = box
            annotations.append({"id": len(annotations) + 1, "image_id": i,
                                "category_id": int(label) + 1,
                                "bbox": [x1, y1, x2 - x1, y2 - y1],
                                "area": float((x2 - x1) * (y2 - y1)), "iscrowd": 0})
        for box, score, label in zip(boxes[i], scores[i], labels[i]):
            if label < 0 or score <= 0:
                continue
            x1, y1, x2, y2 = box
            detections.append({"image_id": i, "category_id": int(label) + 1,
                               "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(score)})
    coco = COCO()
    coco.dataset = {"images": images, "annotations": annotations,
                    "categories": [{"id": c + 1, "name": str(c)} for c in range(num_classes)]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
        if not detections:
            return {k: 0.0 for k in ("map", "map_50", "map_75", "map_small", "map_medium",
                                     "map_large", "mar_100")}
        dt = coco.loadRes(detections)
        ev = COCOeval(coco, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    s = ev.stats
    return {"map": float(s[0]), "map_50": float(s[1]), "map_75": float(s[2]),
            "map_small": float(s[3]), "map_medium": float(s[4]), "map_large": float(s[5]),
            "mar_100": float(s[8])}


def mean_iou(pred_masks, true_masks, num_classes, ignore_index=255):
    """Mean IoU over classes present in either mask (numpy), ``ignore_index`` skipped;
    equals ``keras.metrics.MeanIoU(ignore_class=...)`` on the same pixels."""
    pred = np.asarray(pred_masks).ravel()
    true = np.asarray(true_masks).ravel()
    keep = true != ignore_index
    cm = np.bincount(true[keep] * num_classes + pred[keep],
                     minlength=num_classes ** 2).reshape(num_classes, num_classes)
    inter = np.diag(cm).astype(np.float64)
    union = cm.sum(0) + cm.sum(1) - inter
    present = union > 0
    return float((inter[present] / union[present]).mean())
