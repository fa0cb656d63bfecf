"""Detection and segmentation heads for every backbone with ``pyramid_outputs``.

- :func:`create_segmenter` / :class:`Segmenter`: UperNet, Semantic FPN, all-MLP decoder.
- :func:`create_detector` / :class:`Detector`: RetinaNet; :class:`DetectionDecoder` is
  the exportable decode + NMS layer.
- Necks: :func:`fpn`, :func:`pan`, :func:`pyramid_pooling`.
- :func:`~visionzoo.heads.evaluation.coco_map` (pycocotools) and
  :func:`~visionzoo.heads.evaluation.mean_iou`.
"""

from visionzoo.heads.boxes import DetectionDecoder, split_detections
from visionzoo.heads.detection import Detector, create_detector
from visionzoo.heads.necks import fpn, pan, pyramid_pooling
from visionzoo.heads.segmentation import Segmenter, create_segmenter

__all__ = ["DetectionDecoder", "Detector", "Segmenter", "create_detector", "create_segmenter",
           "fpn", "pan", "pyramid_pooling", "split_detections"]
