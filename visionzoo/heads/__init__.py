"""Detection and segmentation heads for every backbone with ``pyramid_outputs``.

- :func:`create_segmenter` / :class:`Segmenter`: UperNet, Semantic FPN, all-MLP decoder.
- :func:`create_detector` / :class:`Detector`: RetinaNet or the anchor-free YOLOv8-style
  head (:mod:`visionzoo.heads.anchor_free`); :class:`DetectionDecoder` is the exportable
  decode + NMS layer.
- Necks: :func:`fpn`, :func:`pan`, :func:`pyramid_pooling`.
- :func:`~visionzoo.heads.evaluation.coco_map` (pycocotools) and
  :func:`~visionzoo.heads.evaluation.mean_iou`.
- :mod:`visionzoo.heads.draw`: OpenCV drawing of detections and masks, single-image
  detect/segment at any size (``visionzoo predict --task detect|segment``).
"""

from visionzoo.heads.boxes import DetectionDecoder, split_detections
from visionzoo.heads.detection import Detector, create_detector
from visionzoo.heads.necks import fpn, pan, pyramid_pooling
from visionzoo.heads.segmentation import Segmenter, create_segmenter

__all__ = ["DetectionDecoder", "Detector", "Segmenter", "create_detector", "create_segmenter",
           "fpn", "pan", "pyramid_pooling", "split_detections"]
