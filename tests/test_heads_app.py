"""The user-facing side of the heads: OpenCV drawing, single-image inference at any image
size, ``visionzoo predict --task detect|segment`` end to end, and keras-hub interop."""

import numpy as np
import pytest

import keras

from visionzoo import cli
from visionzoo.backbones.metaformer import MetaFormer
from visionzoo.heads import draw
from visionzoo.heads.detection import create_detector
from visionzoo.heads.segmentation import create_segmenter

cv2 = pytest.importorskip("cv2", reason="drawing needs OpenCV (pip install visionzoo[heads])")

SIDE = 64
MAX_DET = 100


def tiny_backbone(side=SIDE):
    return MetaFormer(depths=[1, 1, 1, 1], dims=[8, 8, 8, 8], token_mixers="pooling",
                      include_top=False, input_shape=(side, side, 3))


@pytest.fixture(scope="module")
def models():
    """One untrained tiny detector and segmenter for the module (JAX compiles every new
    shape, so building and predicting once saves most of the time)."""
    keras.utils.set_random_seed(0)  # module fixtures run before the per-test seeding
    backbone = tiny_backbone()  # shared: the heads' layer names do not collide
    det = create_detector(backbone, num_classes=3, fpn_channels=8, score_threshold=0.5,
                          pre_nms_topk=200, max_detections=MAX_DET,
                          class_names=["mug", "spoon", "saucer"])
    # An untrained head scores every anchor ~0.01: spread the scores so that some boxes
    # pass the threshold and some rows stay padding.
    layer = next(l for l in det.layers if l.name.endswith("cls_head-out"))
    kernel, bias = layer.get_weights()
    layer.set_weights([kernel * 40, bias * 0])
    seg = create_segmenter(backbone, num_classes=4, head="fpn", head_channels=8)
    return det, seg


def coffee(width=None):
    skimage_data = pytest.importorskip("skimage.data")
    image = skimage_data.coffee()  # 400 x 600 RGB uint8
    if width:
        height = round(image.shape[0] * width / image.shape[1])
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    return image


# --------------------------------------------------------------------------------------
# Drawing
# --------------------------------------------------------------------------------------


def test_class_colors_are_distinct():
    colors = draw.class_colors(20).astype(int)
    assert colors.shape == (20, 3)
    gaps = np.abs(colors[:, None] - colors[None]).sum(-1) + np.eye(20, dtype=int) * 999
    assert gaps.min() >= 40
    np.testing.assert_array_equal(draw.class_colors(5), draw.class_colors(20)[:5])


def test_draw_detections_pixels():
    image = np.zeros((64, 80, 3), np.float32)
    dets = {"boxes": np.array([[10, 20, 40, 50], [60, 55, 75, 62], [-1, -1, -1, -1]], float),
            "scores": np.array([0.9, 0.1, -1.0]), "labels": np.array([1, 0, -1])}
    out = draw.draw_detections(image, dets, class_names=["a", "b"], score_threshold=0.3,
                               thickness=1)
    assert out.dtype == np.uint8 and out.shape == image.shape and not image.any()
    color = draw.class_colors(2)[1]
    for y, x in [(20, 25), (49, 25), (35, 10), (35, 39), (20, 10), (49, 39)]:
        np.testing.assert_array_equal(out[y, x], color, err_msg=f"edge pixel {(y, x)}")
    assert not out[21:49, 11:39].any()        # inside the box: untouched
    assert not out[25:45, 41:].any()           # right of it: untouched
    assert not out[55:62, 60:75].any()         # score 0.1 < 0.3: not drawn
    label = out[:20, 10:60]
    assert (label == color).all(-1).sum() > 50  # the label's filled background above the box
    assert (label != color).any(-1).sum() > 5   # and its text
    # The same from decoder rows and from a uint8 image; padding rows are skipped.
    rows = np.concatenate([dets["boxes"], dets["scores"][:, None], dets["labels"][:, None]], 1)
    same = draw.draw_detections(np.zeros((64, 80, 3), np.uint8), rows[None],
                                class_names=["a", "b"], thickness=1)
    np.testing.assert_array_equal(same, out)
    low = draw.draw_detections(image, dets, score_threshold=0.05, thickness=1)
    np.testing.assert_array_equal(low[61, 60:75], np.tile(draw.class_colors(2)[0], (15, 1)))
    with pytest.raises(ValueError, match="RGB"):
        draw.draw_detections(np.zeros((8, 8)), dets)


def test_draw_mask_pixels():
    image = np.full((64, 64, 3), 0.5, np.float32)
    mask = np.zeros((64, 64), np.int32)
    mask[30:50, 30:50] = 2
    out = draw.draw_mask(image, mask, class_names=["bg", "one", "two"], alpha=0.5)
    color = draw.class_colors(3)[2].astype(np.float32)
    grey = 128  # 0.5 -> uint8
    np.testing.assert_array_equal(out[40, 40], np.floor(0.5 * grey + 0.5 * color + 0.5))
    np.testing.assert_array_equal(out[30, 40], color)   # the contour
    np.testing.assert_array_equal(out[49, 35], color)
    np.testing.assert_array_equal(out[60, 5], [grey] * 3)  # background: untinted
    np.testing.assert_array_equal(out[20:29, 30:50], grey)
    legend = out[:20, :40]
    assert (legend == 0).all(-1).any() and (legend == color).all(-1).sum() >= 9
    plain = draw.draw_mask(image, mask, legend=False, alpha=0.5)
    np.testing.assert_array_equal(plain[:20, :40], grey)
    np.testing.assert_array_equal(plain[25:, :], out[25:, :])
    # A half-size mask is resized with nearest neighbour.
    small = draw.draw_mask(image, mask[::2, ::2], class_names=["bg", "one", "two"])
    np.testing.assert_array_equal(small, out)
    tinted = draw.draw_mask(image, mask, background=None, legend=False)
    assert (tinted[60, 5] != grey).any()


# --------------------------------------------------------------------------------------
# Any image size through a fixed-size model
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["stretch", "letterbox"])
def test_fit_to_size_maps_boxes_back(mode):
    image = np.zeros((200, 300, 3), np.float32)
    image[40:120, 150:270] = 1.0  # a white box, xyxy (150, 40, 270, 120)
    x, transform = draw.fit_to_size(image, (64, 64), mode)
    assert x.shape == (64, 64, 3) and x.dtype == np.float32
    ys, xs = np.nonzero(x[..., 0] > 0.5)
    found = draw.boxes_to_original([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1],
                                   transform, image.shape)
    np.testing.assert_allclose(found, [150, 40, 270, 120], atol=300 / 64 + 0.5)
    if mode == "letterbox":
        sx, sy, left, top = transform
        assert sx == pytest.approx(sy, rel=0.02) and left == 0 and top > 0
        np.testing.assert_allclose(x[0, 0], image.reshape(-1, 3).mean(0), atol=1e-6)
    clipped = draw.boxes_to_original([-5, -5, 70, 70], transform, image.shape)
    assert clipped.min() == 0 and clipped[2] == 300 and clipped[3] == 200


@pytest.mark.parametrize("mode", ["stretch", "letterbox"])
def test_segment_image_maps_logits_back(mode):
    # A stand-in segmenter whose logits are the RGB pixels: the mask is the dominant colour.
    inputs = keras.Input((SIDE, SIDE, 3))
    model = keras.Model(inputs, {"logits": keras.layers.Identity()(inputs)})
    image = np.zeros((120, 300, 3), np.uint8)
    image[:50, :, 0] = 255    # red band on top      -> class 0
    image[50:, :200, 1] = 255  # green bottom left    -> class 1
    image[50:, 200:, 2] = 255  # blue bottom right    -> class 2
    mask = draw.segment_image(model, image, resize=mode)
    assert mask.shape == (120, 300)
    expected = np.argmax(image, -1)
    wrong = mask != expected
    assert wrong.mean() < 0.03, wrong.mean()
    assert not wrong[:44, :].any() and not wrong[56:, :194].any() and not wrong[56:, 206:].any()


def test_untrained_detector_on_a_real_image(models):
    det, _ = models
    image = coffee()
    h, w = image.shape[:2]
    for mode in ("stretch", "letterbox"):
        out = draw.detect_image(det, image, resize=mode)
        boxes, scores, labels = out["boxes"], out["scores"], out["labels"]
        assert boxes.shape == (MAX_DET, 4) and scores.shape == labels.shape == (MAX_DET,)
        valid = labels >= 0
        assert out["num_detections"] == valid.sum() and 0 < valid.sum() < MAX_DET
        assert (valid == (scores > 0)).all() and valid[:valid.sum()].all()  # valid first
        assert (boxes[~valid] == -1).all() and (scores[~valid] == -1).all()
        assert np.all(np.diff(scores[valid]) <= 1e-6) and scores[valid].min() > 0.5
        assert labels[valid].max() < 3
        b = boxes[valid]
        assert (b >= 0).all() and (b[:, [0, 2]] <= w).all() and (b[:, [1, 3]] <= h).all()
        assert (b[:, 2] >= b[:, 0]).all() and (b[:, 3] >= b[:, 1]).all()


def test_untrained_segmenter_on_a_real_image(models):
    _, seg = models
    image = coffee()
    h, w = image.shape[:2]
    mask = draw.segment_image(seg, image, resize="letterbox")
    assert mask.shape == (h, w) and mask.dtype == np.int32
    assert mask.min() >= 0 and mask.max() < 4


# --------------------------------------------------------------------------------------
# visionzoo predict --task detect|segment
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory, models):
    det, seg = models
    folder = tmp_path_factory.mktemp("head_models")
    det.save(folder / "det.keras")
    # Favour class 2 so that the untrained segmenter paints something to see.
    cls = next(l for l in seg.layers if l.name.endswith("decode_head-cls"))
    kernel, bias = cls.get_weights()
    cls.set_weights([kernel * 0, np.array([0, 0, 5, 0], np.float32)])
    seg.save(folder / "seg.keras")
    image = coffee(width=150)  # 150 x 100, not the models' 64 x 64
    path = folder / "in.png"
    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return folder, image


def _read_rgb(path):
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def test_cli_predict_detect(saved_models, tmp_path, capsys):
    folder, image = saved_models
    out = tmp_path / "det.png"
    rc = cli.main(["predict", "--task", "detect", str(folder / "det.keras"),
                   str(folder / "in.png"), "--out", str(out), "--score-threshold", "0",
                   "--resize", "letterbox"])  # class names: the ones saved in the model
    assert rc == 0
    text = capsys.readouterr().out
    assert "detections with score >= 0" in text
    assert any(name in text for name in ("mug", "spoon", "saucer"))
    drawn = _read_rgb(out)
    assert drawn.shape == image.shape
    assert (drawn != image).any(-1).mean() > 0.01
    lines = [line.split() for line in text.splitlines() if line.startswith("  ")]
    assert {line[0] for line in lines} <= {"mug", "spoon", "saucer"}
    boxes = np.array([[float(v) for v in line[2:]] for line in lines])
    assert len(boxes) > 0 and boxes.min() >= 0
    assert boxes[:, [0, 2]].max() <= 150 and boxes[:, [1, 3]].max() <= 100


def test_cli_predict_segment(saved_models, tmp_path, capsys):
    folder, image = saved_models
    out = tmp_path / "seg.png"
    rc = cli.main(["predict", "--task", "segment", str(folder / "seg.keras"),
                   str(folder / "in.png"), "--out", str(out),
                   "--classes", "background,cup,coffee,table"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "coffee" in text and "100.00 %" in text
    drawn = _read_rgb(out)
    assert drawn.shape == image.shape
    tint = draw.class_colors(4)[2].astype(int)
    changed = (drawn != image).any(-1)
    assert changed.mean() > 0.9  # everything is class 2: tinted
    # Tinted pixels move towards the class colour.
    before = np.abs(image.astype(int) - tint).sum(-1)[changed]
    after = np.abs(drawn.astype(int) - tint).sum(-1)[changed]
    assert (after < before).mean() > 0.9


def test_cli_predict_errors(saved_models, tmp_path, capsys):
    folder, _ = saved_models
    args = [str(folder / "in.png"), "--out", str(tmp_path / "x.png")]
    assert cli.main(["predict", "--task", "detect", "poolformer_s12"] + args) == 2
    err = capsys.readouterr().err
    assert "no pretrained detection" in err and "shapes_detect_segment.py" in err
    assert cli.main(["predict", "--task", "detect", str(folder / "seg.keras")] + args) == 2
    assert "not a Detector" in capsys.readouterr().err
    assert cli.main(["predict", "--task", "segment", str(folder / "missing.keras")] + args) == 2
    assert "no such file" in capsys.readouterr().err
    assert cli.main(["predict", "--task", "detect", str(folder / "det.keras"), "--classes",
                     "a,b"] + args) == 2
    assert "3 classes" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


# --------------------------------------------------------------------------------------
# keras-hub interop
# --------------------------------------------------------------------------------------


def test_backbone_as_keras_hub_retinanet_image_encoder():
    keras_hub = pytest.importorskip(
        "keras_hub", reason="keras-hub is not installed (optional interop check)")
    backbone = tiny_backbone()
    hub_backbone = keras_hub.models.RetinaNetBackbone(
        image_encoder=backbone, min_level=3, max_level=5, use_p5=False,
        image_shape=(SIDE, SIDE, 3))
    anchors = keras_hub.layers.AnchorGenerator("xyxy", min_level=3, max_level=5, num_scales=3,
                                               aspect_ratios=[0.5, 1.0, 2.0], anchor_size=4)
    detector = keras_hub.models.RetinaNetObjectDetector(
        backbone=hub_backbone, num_classes=3, bounding_box_format="xyxy",
        anchor_generator=anchors)
    x = np.random.default_rng(0).random((2, SIDE, SIDE, 3)).astype("float32")
    # keras-hub's FPN reads our pyramid levels unchanged.
    ours = keras.Model(backbone.inputs, backbone.pyramid_outputs["P4"])(x)
    theirs = hub_backbone.get_layer("backbone")(x)["P4"]
    np.testing.assert_allclose(keras.ops.convert_to_numpy(theirs),
                               keras.ops.convert_to_numpy(ours), atol=1e-6)
    detector.compile(optimizer=keras.optimizers.Adam(1e-3))
    y = {"boxes": np.array([[[4, 8, 40, 30], [-1, -1, -1, -1]]] * 2, "float32"),
         "labels": np.array([[1, -1]] * 2, "int32")}
    history = detector.fit(x, y, epochs=2, batch_size=2, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    out = detector.predict(x, verbose=0)
    assert out["boxes"].shape[:2] == (2, 100)


# --------------------------------------------------------------------------------------
# The shapes example, at toy size (its plumbing; the real run is measured in its doc)
# --------------------------------------------------------------------------------------


def test_shapes_example_smoke(tmp_path):
    pytest.importorskip("pycocotools")
    from conftest import ROOT, only_on_full_backend

    only_on_full_backend("the example's toy run is checked")
    import importlib.util
    import json

    spec = importlib.util.spec_from_file_location(
        "shapes_detect_segment", ROOT / "examples" / "shapes_detect_segment.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    results = example.main(["--train", "8", "--test", "4", "--size", "64", "--epochs", "1",
                            "--seg-epochs", "1", "--batch", "4", "--dims", "8,8,8,8",
                            "--head-channels", "8", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["detector"]["map_50"] == results["detector"]["map_50"]
    assert 0.0 <= saved["detector"]["map_50"] <= 1.0
    assert 0.0 <= saved["segmenter"]["mean_iou"] <= 1.0
    for name in ("detector.keras", "segmenter.keras", "sample.png"):
        assert (tmp_path / name).stat().st_size > 0
    grid = cv2.imread(str(tmp_path / "predictions.png"))
    assert grid.shape == (4 * 128 + 3 * 4, 3 * 128 + 2 * 4, 3)  # 4 rows of 3 panels, 2x
