"""Detection and segmentation heads: building blocks against torch, assignment and NMS
against torchvision, the head x pyramid-family training matrix, save/load and TFLite."""

import importlib

import numpy as np
import pytest

import keras

import visionzoo
from visionzoo.heads import create_segmenter
from visionzoo.heads.boxes import DetectionDecoder, decode_deltas, encode_deltas, pairwise_iou
from visionzoo.heads.anchor_free import (dfl_distances, distances_to_boxes, task_aligned_assign,
                                         yolo_loss_from_targets)
from visionzoo.heads.common import AdaptiveAveragePool, ResizeLike
from visionzoo.heads.detection import create_detector
from visionzoo.heads.necks import fpn, pan
from visionzoo.registry import FAMILY_MODULES
from visionzoo.training.shapes import make_shapes

from conftest import BACKEND

SIDE = 64
# A small configuration of every family with pyramid outputs (at SIDE x SIDE).
MINI_BACKBONES = {
    "metaformer": ("MetaFormer", dict(depths=[1, 1, 1, 1], dims=[16, 32, 48, 64],
                                      token_mixers="pooling")),
    "swin": ("SwinTransformer", dict(depths=[1, 1, 1, 1], embed_dim=16,
                                     num_heads=[1, 2, 2, 4], window_size=4)),
    "litv2": ("LITv2", dict(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 2, 2, 4])),
    "shvit": ("SHViT", dict(embed_dim=(16, 24, 32), depth=(1, 1, 1), partial_dim=(8, 8, 8),
                            qk_dim=(4, 4, 4))),
    "svt": ("SVT", dict(stem_hidden_dim=8, embed_dims=(16, 24, 32, 40), num_heads=(1, 2, 2, 2),
                        mlp_ratios=(2, 2, 2, 2), depths=(1, 1, 1, 1), weight_grid=16)),
    "hornet": ("HorNet", dict(base_dim=16, depths=[1, 1, 1, 1])),
    "iformer": ("InceptionTransformer", dict(embed_dims=[16, 32, 48, 64], depths=[1, 1, 1, 1],
                                             num_heads=[2, 4, 6, 8],
                                             attention_heads=[1, 2, 3, 5])),
}
FAMILIES_WITHOUT_PYRAMID = {"convit"}


def mini_backbone(family):
    cls_name, config = MINI_BACKBONES[family]
    module = importlib.import_module(f"visionzoo.backbones.{family}")
    return getattr(module, cls_name)(**config, include_top=False,
                                     input_shape=(SIDE, SIDE, 3))


def test_every_pyramid_family_has_a_mini_configuration():
    families = set()
    for module_name in FAMILY_MODULES:
        module = importlib.import_module(module_name)
        tasks = {spec.get("task", "classification") for spec in module.VARIANTS.values()}
        if tasks == {"classification"}:
            families.add(module_name.rsplit(".", 1)[1])
    assert families - FAMILIES_WITHOUT_PYRAMID == set(MINI_BACKBONES), (
        "add the new family to MINI_BACKBONES (or FAMILIES_WITHOUT_PYRAMID)")


# --------------------------------------------------------------------------------------
# Building blocks against torch
# --------------------------------------------------------------------------------------


def test_resize_and_adaptive_pool_match_torch():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x = np.random.default_rng(0).standard_normal((2, 7, 10, 3)).astype("float32")
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2))
    for size in ((14, 20), (5, 6), (13, 9)):
        for mode in ("bilinear", "nearest"):
            ours = keras.ops.convert_to_numpy(ResizeLike(mode, size=size)(x))
            kw = {"align_corners": False} if mode == "bilinear" else {}
            ref = F.interpolate(xt, size=size, mode=mode, **kw).numpy().transpose(0, 2, 3, 1)
            np.testing.assert_allclose(ours, ref, atol=1e-5, err_msg=f"{mode} {size}")
    for bins in (1, 2, 3, 6):
        ours = keras.ops.convert_to_numpy(AdaptiveAveragePool(bins)(x))
        ref = F.adaptive_avg_pool2d(xt, bins).numpy().transpose(0, 2, 3, 1)
        np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_necks_shapes():
    backbone = mini_backbone("metaformer")
    feats = {int(k[1:]): v for k, v in backbone.pyramid_outputs.items()}
    out = fpn({lvl: feats[lvl] for lvl in (3, 4, 5)}, 32, extra_levels=2, name="a")
    assert {lvl: tuple(t.shape[1:]) for lvl, t in out.items()} == {
        3: (8, 8, 32), 4: (4, 4, 32), 5: (2, 2, 32), 6: (1, 1, 32), 7: (1, 1, 32)}
    out = pan(feats, 24, name="b")
    assert {lvl: tuple(t.shape[1:]) for lvl, t in out.items()} == {
        2: (16, 16, 24), 3: (8, 8, 24), 4: (4, 4, 24), 5: (2, 2, 24)}


def test_box_coding_roundtrip_and_iou():
    rng = np.random.default_rng(0)
    anchors = np.concatenate([rng.uniform(0, 50, (20, 2)), rng.uniform(60, 100, (20, 2))], 1)
    boxes = anchors + rng.normal(0, 5, anchors.shape)
    deltas = encode_deltas(anchors.astype("float32"), boxes.astype("float32"))
    back = keras.ops.convert_to_numpy(decode_deltas(anchors.astype("float32"), deltas))
    np.testing.assert_allclose(back, boxes, atol=1e-3)
    iou = keras.ops.convert_to_numpy(pairwise_iou(anchors[:3].astype("float32"),
                                                  anchors[:3].astype("float32")))
    np.testing.assert_allclose(np.diag(iou), 1.0, atol=1e-6)


def test_decoder_equals_torchvision_batched_nms():
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    rng = np.random.default_rng(1)
    n, classes = 300, 3
    xy = rng.uniform(0, 80, (n, 2))
    wh = rng.uniform(8, 40, (n, 2))
    anchors = np.concatenate([xy, xy + wh], 1).astype("float32")
    logits = rng.normal(0, 2, (2, n, classes)).astype("float32")
    deltas = np.zeros((2, n, 4), "float32")
    decoder = DetectionDecoder(anchors, score_threshold=0.3, iou_threshold=0.5,
                               pre_nms_topk=n, max_detections=n)
    rows = keras.ops.convert_to_numpy(decoder([logits, deltas]))
    for b in range(2):
        scores = 1 / (1 + np.exp(-logits[b]))
        best, label = scores.max(1), scores.argmax(1)
        mask = best > 0.3
        keep = torchvision.ops.batched_nms(torch.from_numpy(anchors[mask]),
                                           torch.from_numpy(best[mask]),
                                           torch.from_numpy(label[mask]), 0.5).numpy()
        ref_boxes = anchors[mask][keep]
        got = rows[b][rows[b, :, 4] > 0]
        assert len(got) == len(keep)
        np.testing.assert_allclose(got[:, :4], ref_boxes, atol=1e-4)
        np.testing.assert_allclose(got[:, 4], best[mask][keep], atol=1e-6)
        np.testing.assert_array_equal(got[:, 5], label[mask][keep])
        assert (rows[b][len(keep):] == -1).all()


def test_assignment_marks_matching_anchor_positive():
    det = create_detector(mini_backbone("metaformer"), num_classes=3, fpn_channels=16)
    anchor = det.anchors[123]
    boxes = np.array([[anchor, [-1, -1, -1, -1]]], "float32")
    labels = np.array([[2, -1]], "int32")
    cls_t, box_t, positive, weight = (keras.ops.convert_to_numpy(t)
                                      for t in det.assign_targets(boxes, labels))
    assert positive[0, 123] and cls_t[0, 123, 2] == 1 and cls_t[0, 123].sum() == 1
    np.testing.assert_allclose(box_t[0, 123], 0, atol=1e-5)
    iou = keras.ops.convert_to_numpy(pairwise_iou(det.anchors, boxes[0, :1]))[:, 0]
    np.testing.assert_array_equal(positive[0], (iou >= 0.5) | (np.arange(len(iou)) == 123))
    ignored = (iou >= 0.4) & (iou < 0.5)
    assert (weight[0][ignored] == 0).all() and (weight[0][~ignored] == 1).all()
    with pytest.raises(ValueError, match="labels"):
        det.compute_loss(y={"boxes": boxes}, y_pred=det(np.zeros((1, SIDE, SIDE, 3))))


def _tal_loop_reference(scores, pred, points, gt_boxes, gt_labels, topk, alpha, beta):
    """Task-aligned assignment written as plain loops (one image, one box at a time)."""
    num_points, num_classes = scores.shape
    iou = np.asarray(keras.ops.convert_to_numpy(pairwise_iou(gt_boxes, pred)))
    claims = {}
    metrics = np.zeros((len(gt_boxes), num_points))
    for m, (box, label) in enumerate(zip(gt_boxes, gt_labels)):
        if label < 0:
            continue
        for a, (x, y) in enumerate(points):
            if min(x - box[0], y - box[1], box[2] - x, box[3] - y) > 1e-9:
                metrics[m, a] = scores[a, label] ** alpha * max(iou[m, a], 0) ** beta
        order = [a for a in np.argsort(-metrics[m], kind="stable")[:topk] if metrics[m, a] > 0]
        for a in order:
            claims.setdefault(a, []).append(m)
    target = np.zeros((num_points, num_classes))
    boxes = np.zeros((num_points, 4))
    owner = {a: max(ms, key=lambda m: iou[m, a]) for a, ms in claims.items()}
    for m in range(len(gt_boxes)):
        mine = [a for a, o in owner.items() if o == m]
        if not mine:
            continue
        best_metric = max(metrics[m, a] for a in mine)
        best_iou = max(iou[m, a] for a in mine)
        for a in mine:
            target[a, gt_labels[m]] = metrics[m, a] * best_iou / (best_metric + 1e-9)
            boxes[a] = gt_boxes[m]
    return target, boxes, np.array([a in owner for a in range(num_points)])


def test_task_aligned_assignment_matches_loop_reference():
    from visionzoo.heads.anchor_free import anchor_points, task_aligned_assign

    rng = np.random.default_rng(0)
    points, _ = anchor_points({3: (8, 8), 4: (4, 4)})
    batch, num_classes = 2, 3
    scores = rng.uniform(0.05, 0.95, (batch, len(points), num_classes)).astype("float32")
    centre = rng.uniform(8, 56, (batch, len(points), 2))
    half = rng.uniform(4, 20, (batch, len(points), 2))
    pred = np.concatenate([centre - half, centre + half], -1).astype("float32")
    gt_boxes = np.array([[[4, 4, 40, 30], [20, 16, 60, 60], [-1, -1, -1, -1]],
                         [[10, 30, 30, 62], [0, 0, 64, 64], [12, 2, 52, 20]]], "float32")
    gt_labels = np.array([[0, 2, -1], [1, 1, 2]], "int32")
    target, boxes, fg = (keras.ops.convert_to_numpy(t) for t in task_aligned_assign(
        scores, pred, points, gt_boxes, gt_labels, num_classes, topk=5, alpha=0.5, beta=6.0))
    for b in range(batch):
        ref_t, ref_boxes, ref_fg = _tal_loop_reference(
            scores[b], pred[b], points, gt_boxes[b], gt_labels[b], 5, 0.5, 6.0)
        np.testing.assert_array_equal(fg[b], ref_fg)
        assert 5 <= ref_fg.sum() <= 15  # boxes overlap: some points were contested
        np.testing.assert_allclose(target[b], ref_t, rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(boxes[b][ref_fg], ref_boxes[ref_fg])


def test_distribution_focal_and_ciou_losses_match_torch():
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    from visionzoo.heads.anchor_free import distribution_focal_loss, dfl_distances

    rng = np.random.default_rng(1)
    logits = rng.normal(size=(5, 64)).astype("float32")
    targets = rng.uniform(0, 16, (5, 4)).astype("float32")
    got = keras.ops.convert_to_numpy(distribution_focal_loss(logits, targets))
    t = torch.from_numpy(np.clip(targets, 0, 15 - 0.01)).reshape(-1)
    left = t.floor().long()
    wl = left + 1 - t
    lg = torch.from_numpy(logits).reshape(-1, 16)
    ce = torch.nn.functional.cross_entropy
    ref = (ce(lg, left, reduction="none") * wl
           + ce(lg, left + 1, reduction="none") * (1 - wl)).reshape(5, 4).mean(-1)
    np.testing.assert_allclose(got, ref.numpy(), rtol=1e-5)
    expected = (torch.softmax(lg, -1) * torch.arange(16.0)).sum(-1).reshape(5, 4)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(dfl_distances(logits)),
                               expected.numpy(), rtol=1e-5)
    a = np.array([[0, 0, 10, 20], [5, 5, 30, 12], [2, 3, 4, 9]], "float32")
    b = np.array([[1, 2, 12, 18], [0, 6, 20, 40], [2, 3, 4, 9]], "float32")
    ciou = keras.ops.convert_to_numpy(keras.utils.bounding_boxes.compute_ciou(a, b, "xyxy"))
    ref = torchvision.ops.complete_box_iou_loss(torch.from_numpy(a), torch.from_numpy(b))
    np.testing.assert_allclose(1 - ciou, ref.numpy(), atol=1e-4)


# --------------------------------------------------------------------------------------
# The matrix: every head on every pyramid family trains (loss goes down)
# --------------------------------------------------------------------------------------

DATA = make_shapes(4, size=SIDE, max_objects=2, min_side=12, seed=3)
HEADS = ("upernet", "fpn", "mlp", "retinanet", "yolov8")


class AllHeads(keras.Model):
    """Every head on one backbone pass, trained jointly: one compiled train step per
    family checks every head x family pair. Each head's own loss is reported in the step
    logs (computed on the weights before that step's update)."""

    def __init__(self, models, **kwargs):
        super().__init__(inputs=models[0].inputs, outputs=[m.output for m in models],
                         **kwargs)
        self.heads = models

    def head_losses(self, x, ys, preds):
        losses = []
        for m, y, p in zip(self.heads, ys, preds):
            if getattr(m, "head", None) == "yolov8":
                # Task-aligned targets move with the predictions (a box that gets
                # better raises its class target), so a handful of steps is judged
                # on the targets assigned at the start.
                losses.append(yolo_loss_from_targets(p["classes"], p["boxes"], m.anchors,
                                                     m.strides, *self.fixed_targets))
            else:
                losses.append(m.compute_loss(x=x, y=y, y_pred=p))
        return losses

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        return sum(self.head_losses(x, y, y_pred))

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        logs = super().compute_metrics(x, y, y_pred, sample_weight)
        for head, value in zip(HEADS, self.head_losses(x, y, y_pred)):
            logs[head] = value
        return logs


# JAX compiles the joint training step of the five heads once per family (25-60 s each,
# two thirds of the JAX run of this file). The heads' code is the same on every backend,
# so JAX trains them on three families whose pyramids differ (plain conv strides 4-32,
# windowed attention, SHViT's strides 16-64); TensorFlow and torch train every family.
JAX_HEAD_FAMILIES = ("metaformer", "shvit", "swin")


@pytest.mark.parametrize("family", sorted(MINI_BACKBONES))
def test_every_head_trains_on_family(family):
    if BACKEND == "jax" and family not in JAX_HEAD_FAMILIES:
        pytest.skip(f"jax trains the heads on {', '.join(JAX_HEAD_FAMILIES)} (compile time); "
                    "tensorflow and torch train them on every family")
    backbone = mini_backbone(family)
    models = [create_segmenter(backbone, num_classes=4, head=h, head_channels=16,
                               compile=False, name=f"seg_{h}") for h in HEADS[:3]]
    for head in HEADS[3:]:
        models.append(create_detector(backbone, num_classes=3, fpn_channels=16, head=head,
                                      compile=False, name=f"det_{head}"))
    masks = DATA["masks"]
    targets = {"boxes": DATA["boxes"], "classes": DATA["labels"]}
    ys = (masks, masks, masks, targets, targets)
    joint = AllHeads(models)
    yolo = models[-1]
    out = yolo(DATA["images"])
    boxes = distances_to_boxes(yolo.anchors, yolo.strides, dfl_distances(out["boxes"]))
    joint.fixed_targets = task_aligned_assign(
        keras.ops.sigmoid(out["classes"]), boxes, yolo.anchors, DATA["boxes"], DATA["labels"],
        yolo.num_classes)
    # TF: eager steps beat tracing these tiny graphs; JAX: op-by-op eager is far slower
    # than one jit; torch is eager anyway.
    joint.compile(optimizer=keras.optimizers.Adam(1e-3, global_clipnorm=1.0),
                  run_eagerly=BACKEND == "tensorflow")
    logs = [joint.train_on_batch(DATA["images"], ys, return_dict=True) for _ in range(5)]
    for head in HEADS:
        trace = [float(step[head]) for step in logs]
        assert np.isfinite(trace).all() and trace[-1] < trace[0], f"{family}/{head}: {trace}"


# --------------------------------------------------------------------------------------
# Predict, save/load, TFLite
# --------------------------------------------------------------------------------------


def test_segmenter_predict_and_roundtrip(tmp_path):
    seg = create_segmenter(mini_backbone("shvit"), num_classes=4, head="upernet",
                           head_channels=16)
    assert seg.aux_weight == 0.4 and "aux_logits" in seg.output
    masks = seg.predict(DATA["images"], verbose=0)
    assert masks.shape == (4, SIDE, SIDE) and masks.dtype == np.int32
    ref = keras.ops.convert_to_numpy(seg(DATA["images"])["logits"])
    seg.save(tmp_path / "seg.keras")
    loaded = keras.models.load_model(tmp_path / "seg.keras")
    out = keras.ops.convert_to_numpy(loaded(DATA["images"])["logits"])
    np.testing.assert_allclose(out, ref, atol=1e-5)
    with pytest.raises(ValueError, match="Unknown segmentation head"):
        create_segmenter(mini_backbone("shvit"), num_classes=4, head="deeplab")
    with pytest.raises(ValueError, match="no pyramid outputs"):
        create_segmenter(visionzoo.create_model("convit_tiny", include_top=False), 3)


def test_detector_predict_and_roundtrip(tmp_path):
    det = create_detector(mini_backbone("svt"), num_classes=3, fpn_channels=16,
                          bounding_box_format="yxyx")
    out = det.predict(DATA["images"], verbose=0)
    assert out["boxes"].shape == (4, 100, 4) and out["labels"].shape == (4, 100)
    assert (out["num_detections"] == (out["scores"] > 0).sum(1)).all()
    yxyx = DATA["boxes"][..., [1, 0, 3, 2]]
    loss = det.compute_loss(y={"boxes": yxyx, "labels": DATA["labels"]},
                            y_pred=det(DATA["images"]))
    det.bounding_box_format = "xyxy"
    same = det.compute_loss(y={"boxes": DATA["boxes"], "labels": DATA["labels"]},
                            y_pred=det(DATA["images"]))
    np.testing.assert_allclose(float(loss), float(same), rtol=1e-5)
    ref = keras.ops.convert_to_numpy(det(DATA["images"])["classes"])
    det.save(tmp_path / "det.keras")
    loaded = keras.models.load_model(tmp_path / "det.keras")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(DATA["images"])["classes"]),
                               ref, atol=1e-5)


def test_tflite_detector_with_nms_and_segmenter(tmp_path):
    if BACKEND != "tensorflow":
        pytest.skip("exported on the TensorFlow backend (other backends hand off to it)")
    from test_export import assert_builtin_only

    det = create_detector(mini_backbone("metaformer"), num_classes=3, fpn_channels=16,
                          score_threshold=0.2)
    layer = det.get_layer("detector-cls_head-out")
    kernel, bias = layer.get_weights()
    layer.set_weights([kernel * 40, bias * 0])  # spread the scores: many boxes survive
    yolo = create_detector(mini_backbone("metaformer"), num_classes=3, fpn_channels=16,
                           head="yolov8", score_threshold=0.005)
    x = DATA["images"]
    from ai_edge_litert.interpreter import Interpreter

    for model in (det, yolo):
        exported = model.export_model(nms=True)
        keras_rows = keras.ops.convert_to_numpy(exported.predict(x, verbose=0))
        path = tmp_path / f"{model.head}.tflite"
        report = visionzoo.export.to_tflite(exported, path, check_input=x)
        assert_builtin_only(report, path)
        assert "WHILE" in report.op_names and "TOPK_V2" in report.op_names
        it = Interpreter(model_path=str(path))
        it.resize_tensor_input(it.get_input_details()[0]["index"], x.shape)
        it.allocate_tensors()
        it.set_tensor(it.get_input_details()[0]["index"], x)
        it.invoke()
        rows = it.get_tensor(it.get_output_details()[0]["index"])
        kept = keras_rows[..., 4] > 0
        assert kept.sum() > 10, model.head
        np.testing.assert_array_equal(rows[..., 4] > 0, kept)  # identical kept detections
        np.testing.assert_array_equal(rows[..., 5][kept], keras_rows[..., 5][kept])
        scale = np.abs(keras_rows[..., :4][kept]).max()
        assert np.abs(rows[..., :4][kept] - keras_rows[..., :4][kept]).max() <= 1e-3 * scale

    seg = create_segmenter(mini_backbone("metaformer"), num_classes=4, head="fpn",
                           head_channels=16)
    seg_export = keras.Model(seg.input, seg.output["logits"])
    report = visionzoo.export.to_tflite(seg_export, tmp_path / "seg.tflite", check_input=x)
    assert report.max_abs_diff <= 1e-4 * report.ref_max_abs, report.summary()
    assert_builtin_only(report, tmp_path / "seg.tflite")


@pytest.mark.parametrize("head", ["retinanet", "yolov8"])
def test_detector_export_raw_outputs(head):
    det = create_detector(mini_backbone("shvit"), num_classes=2, fpn_channels=16, head=head,
                          score_threshold=0.0, pre_nms_topk=200)
    raw = det.export_model(nms=False)
    classes, boxes = raw.predict(DATA["images"], verbose=0)
    per_anchor = 4 if head == "retinanet" else 4 * 16
    assert classes.shape == (4, len(det.anchors), 2)
    assert boxes.shape == (4, len(det.anchors), per_anchor)
    # The raw outputs plus the model's own decoder give exactly the NMS export.
    rows = keras.ops.convert_to_numpy(det.decode({"classes": classes, "boxes": boxes}))
    exported = det.export_model(nms=True).predict(DATA["images"], verbose=0)
    np.testing.assert_allclose(rows, exported, atol=1e-4)
    assert (rows[..., 4] > 0).sum() > 0


def test_coco_map_and_mean_iou():
    pytest.importorskip("pycocotools")
    from visionzoo.heads.evaluation import coco_map, mean_iou

    gt = {"boxes": DATA["boxes"], "labels": DATA["labels"]}
    valid = DATA["labels"] >= 0
    perfect = {"boxes": DATA["boxes"], "labels": DATA["labels"],
               "scores": np.where(valid, 0.9, -1.0)}
    assert coco_map(perfect, gt, num_classes=3)["map"] == pytest.approx(1.0)
    shifted = dict(perfect, boxes=DATA["boxes"] + np.where(valid[..., None], 2.0, 0.0))
    stats = coco_map(shifted, gt, num_classes=3)
    assert 0.0 <= stats["map"] < stats["map_50"] <= 1.0 and stats["map"] < 0.9
    wrong = dict(perfect, labels=np.where(valid, (DATA["labels"] + 1) % 3, -1))
    assert coco_map(wrong, gt, num_classes=3)["map_50"] == 0.0
    masks = DATA["masks"]
    assert mean_iou(masks, masks, 4) == 1.0
    metric = keras.metrics.MeanIoU(4, ignore_class=255)
    noisy = np.where(np.random.default_rng(0).random(masks.shape) < 0.1, 0, masks)
    truth = masks.copy()
    truth[:, :3] = 255
    metric.update_state(truth, noisy)
    assert mean_iou(noisy, truth, 4) == pytest.approx(float(metric.result()), abs=1e-6)
