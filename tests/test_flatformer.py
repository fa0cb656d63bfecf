"""FlatFormer: the official fixture on every backend (per-voxel output and BEV canvas),
the flat2win padding rule, order/padding invariance on a fixed voxel budget, checkpoint
conversion, the pillar voxeliser, the point-feature network and the BEV scatter; the
detector's SECOND / SECONDFPN / CenterHead against a torch reference in the official
naming, whole-checkpoint coverage at the official configuration, rotated IoU and NMS,
and the end-to-end TFLite export."""

import json

import numpy as np
import pytest

import keras
from keras import ops

from visionzoo.backbones import flatformer as ff
from visionzoo.layers.voxel import BEVScatter, PillarVoxelizer, PointFeatureNet
from visionzoo.weights import load_checkpoint
from visionzoo.weights.convert import CheckpointMismatchError

from conftest import BACKEND, only_on_full_backend, parity_fixture

MINI = dict(in_channels=16, num_heads=2, num_blocks=1, window_shape=(4, 4, 1),
            sparse_shape=(16, 16, 1), output_shape=(16, 16), group_size=8)


def _fixture():
    path = parity_fixture("flatformer_mini")
    data = np.load(path)
    meta = json.load(open(path[:-4] + ".json"))
    return {k: data[k] for k in data.files}, meta


def _np(x):
    return np.asarray(ops.convert_to_numpy(x))


def _run(model, voxels, coords, mask):
    """One compiled call (eager JAX dispatches and compiles op by op: several times
    slower for these graphs than one jit)."""
    return {k: _np(v) for k, v in model.predict_on_batch(
        {"voxels": voxels, "coords": coords, "mask": mask}).items()}


def test_official_fixture_every_output():
    arrays, meta = _fixture()
    rows = ff.verify_fixture(arrays, meta)
    assert [r[0] for r in rows] == ["output", "output_bev"]
    for name, ours, ref, tol in rows:
        assert ours.shape == ref.shape, name
        err = float(np.max(np.abs(ours - ref)))
        print(f"{BACKEND} {name}: max|diff| {err:.3e} max|ref| {np.max(np.abs(ref)):.3e}")
        assert err <= tol, (name, err, tol)


def test_fixture_through_the_verify_harness():
    from visionzoo.weights.verify import verify

    result = verify(parity_fixture("flatformer_mini"), verbose=False)
    assert result.ok, result.table()
    assert [r.output for r in result.rows] == ["output", "output_bev"]


def _official_flat2win(counts, g):
    """The official FlattenedWindowMapping padding, re-stated with NumPy on the flat
    batch (samples with at least ``g`` voxels)."""
    counts = np.asarray(counts)
    padded = -(-counts // g) * g
    start = np.concatenate([[0], np.cumsum(counts)])
    start_p = np.concatenate([[0], np.cumsum(padded)])
    flat2win = np.arange(start_p[-1])
    for i, n in enumerate(counts):
        end = start_p[i + 1]
        if n != padded[i]:
            r = n % g
            flat2win[end - g + r:end] = flat2win[end - 2 * g + r:end - g].copy()
        flat2win[start_p[i]:end] -= start_p[i] - start[i]
    return flat2win, start


def test_group_slots_repeat_the_official_padding_tokens():
    g = 8
    counts = [8, 13, 23, 9, 16]
    flat2win, start = _official_flat2win(counts, g)
    slots = 24
    ours = _np(ff.group_slot_sources(ops.convert_to_tensor(np.array(counts)[:, None],
                                                           "int32"), slots, g))
    got = np.concatenate([ours[i, :-(-n // g) * g] + start[i] for i, n in enumerate(counts)])
    np.testing.assert_array_equal(got, flat2win)
    # A sample smaller than one group repeats its own voxels; spare groups hold voxel 0.
    small = _np(ff.group_slot_sources(ops.convert_to_tensor([[3], [0]], "int32"), 16, g))
    np.testing.assert_array_equal(small[0], [0, 1, 2, 0, 1, 2, 0, 1] + [0] * 8)
    np.testing.assert_array_equal(small[1], [0] * 16)


def test_sort_keys_are_unique_int32_on_the_published_grid():
    cfg = ff.VARIANTS["flatformer_waymo"]["config"]
    yy, xx = np.meshgrid(np.arange(468), np.arange(468), indexing="ij")
    coords = ops.convert_to_tensor(np.stack([yy.ravel(), xx.ravel()], -1), "int32")
    bound = ff._key_bound(cfg["sparse_shape"], cfg["window_shape"])
    assert bound + 468 * 468 < 2 ** 31
    for shifted in (False, True):
        for key in ff.window_sort_keys(coords, cfg["sparse_shape"], cfg["window_shape"],
                                       shifted):
            key = _np(key)
            assert len(np.unique(key)) == key.size and key.min() >= 0 and key.max() < bound


def _mini_inputs(rng, batch=2, v=24, counts=(21, 9)):
    voxels = rng.standard_normal((batch, v, MINI["in_channels"])).astype("float32")
    coords = np.zeros((batch, v, 2), "int32")
    mask = np.zeros((batch, v), bool)
    for b, n in enumerate(counts):
        cells = rng.choice(16 * 16, n, replace=False)
        coords[b, :n] = np.stack([cells // 16, cells % 16], -1)
        mask[b, :n] = True
    return voxels, coords, mask


def test_voxel_order_and_budget_padding_do_not_change_the_result():
    rng = np.random.default_rng(0)
    model = ff.FlatFormer(**MINI)
    voxels, coords, mask = _mini_inputs(rng, v=32)
    # Samples 2-3: each sample's slots shuffled, garbage in the invalid slots; they must
    # give the same features per voxel and the same BEV. Sample 4: sample 0 with one
    # voxel changed, which changes its group mates (grouping matters) and nothing in
    # sample 1. One batch, one compiled call.
    perm = np.stack([rng.permutation(32) for _ in range(2)])
    v2 = np.take_along_axis(voxels, perm[..., None], 1)
    c2 = np.take_along_axis(coords, perm[..., None], 1)
    m2 = np.take_along_axis(mask, perm, 1)
    v2[~m2] = rng.standard_normal(v2[~m2].shape) * 10
    c2[~m2] = rng.integers(0, 16, c2[~m2].shape)
    v3 = voxels[:1].copy()
    v3[0, 0] += 1.0
    out = _run(model, np.concatenate([voxels, v2, v3]).astype("float32"),
               np.concatenate([coords, c2, coords[:1]]),
               np.concatenate([mask, m2, mask[:1]]))
    feats = out["features"]
    np.testing.assert_allclose(np.take_along_axis(feats[:2], perm[..., None], 1),
                               feats[2:4], atol=2e-5)
    assert np.all(feats[:2][~mask] == 0) and np.all(feats[2:4][~m2] == 0)
    np.testing.assert_allclose(out["bev"][:2], out["bev"][2:4], atol=2e-5)
    changed = np.abs(feats[4] - feats[0]).max(-1)
    assert changed[1:21].max() > 1e-3 and np.all(changed[21:] == 0)


def test_compiled_predict_matches_eager_and_keras_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    model = ff.FlatFormer(**MINI, max_voxels=24)
    voxels, coords, mask = _mini_inputs(rng)
    inputs = {"voxels": voxels, "coords": coords, "mask": mask}
    eager = _np(model(inputs)["features"])
    compiled = model.predict_on_batch(inputs)  # jax.jit / tf.function / torch
    np.testing.assert_allclose(_np(compiled["features"]), eager, atol=1e-5)
    model.save(tmp_path / "ff.keras")
    loaded = keras.models.load_model(tmp_path / "ff.keras")
    assert loaded.get_config() == model.get_config()
    np.testing.assert_allclose(_np(loaded(inputs)["features"]), eager, atol=1e-6)


def test_checkpoint_layouts_and_strict_errors():
    arrays, meta = _fixture()
    state = {k[len("param/"):]: v for k, v in arrays.items() if k.startswith("param/")}
    model = ff.FlatFormer(**ff.from_official_config(meta["config"]))
    assert ff.detect_layout(state) == "official"
    # Bare FlatFormer.state_dict() keys load too, and a whole detector checkpoint
    # gives the encoder its middle_encoder.* tensors.
    bare = {k[len("middle_encoder."):]: v for k, v in state.items()}
    load_checkpoint(model, bare)
    w = model.get_layer("block_list-0-block-2").attn.attn
    np.testing.assert_array_equal(
        _np(w.in_proj_weight), bare["block_list.0.block.2.attn.attn.in_proj_weight"])
    np.testing.assert_array_equal(
        _np(w.out_proj.kernel), bare["block_list.0.block.2.attn.attn.out_proj.weight"].T)
    detector = dict(state, **{"pts_bbox_head.shared_conv.conv.weight": np.zeros((4, 4))})
    load_checkpoint(model, detector)
    before = [_np(v).copy() for v in model.weights]
    broken = {k: v for k, v in bare.items() if "block.3.fc1.bias" not in k}
    broken["block_list.0.block.0.attn.attn.extra"] = np.zeros(3, "float32")
    with pytest.raises(CheckpointMismatchError) as err:
        load_checkpoint(model, broken)
    assert "block_list.0.block.3.fc1.bias" in str(err.value)
    assert "attn.attn.extra" in str(err.value)
    for v, b in zip(model.weights, before):
        np.testing.assert_array_equal(_np(v), b)


def test_registered_variant_builds_the_official_configuration():
    only_on_full_backend("the published configuration is backend-independent; checked")
    import visionzoo

    model = visionzoo.create_model("flatformer_waymo")
    c = 128  # per BasicLayer: in_proj 3C x C + 3C, out_proj, fc1 C -> 2C, fc2, 2 LayerNorms
    per_layer = (3 * c * c + 3 * c) + (c * c + c) + (2 * c * c + 2 * c) + (2 * c * c + c) + 4 * c
    assert model.count_params() == 2 * 4 * per_layer == 1_059_840
    assert model.max_voxels == 32768 and model.group_size == 144
    assert visionzoo.list_models(task="detection3d") == ["flatformer_waymo"]


def test_from_official_config_rejects_unknown_keys():
    with pytest.raises(ValueError, match="window"):
        ff.from_official_config({"type": "FlatFormer", "windows": (9, 9, 1)})


# --------------------------------------------------------------------------------------
# Voxelisation, point features, BEV scatter
# --------------------------------------------------------------------------------------

RANGE = (-4.0, -2.0, -1.0, 4.0, 2.0, 1.0)
SIZE = (0.5, 0.5, 2.0)  # grid ny, nx = 8, 16


def _points(rng, batch=2, p=64):
    pts = np.concatenate([rng.uniform(-5, 5, (batch, p, 1)), rng.uniform(-2.5, 2.5, (batch, p, 1)),
                          rng.uniform(-1.2, 1.2, (batch, p, 1)), rng.random((batch, p, 1))], -1)
    pts[:, :8, :3] = [-3.9, -1.9, 0.0]  # a crowded pillar, the first in raster order
    mask = rng.random((batch, p)) > 0.1
    return pts.astype("float32"), mask


def _reference_voxels(pts, mask, v_max):
    nx, ny = 16, 8
    out = []
    for b in range(len(pts)):
        p = pts[b]
        ix = np.floor((p[:, 0] - RANGE[0]) / SIZE[0]).astype(int)
        iy = np.floor((p[:, 1] - RANGE[1]) / SIZE[1]).astype(int)
        ok = mask[b] & (ix >= 0) & (ix < nx) & (iy >= 0) & (iy < ny) & (p[:, 2] >= RANGE[2]) \
            & (p[:, 2] < RANGE[5])
        pid = iy * nx + ix
        ids = np.unique(pid[ok])[:v_max]
        keep = ok & np.isin(pid, ids)
        slot = np.searchsorted(ids, pid)
        mean = np.stack([p[keep & (pid == i)].mean(0) for i in ids])
        vmax = np.stack([p[keep & (pid == i)].max(0) for i in ids])
        count = np.array([(keep & (pid == i)).sum() for i in ids])
        out.append(dict(ids=ids, keep=keep, slot=np.where(keep, slot, 0), mean=mean, max=vmax,
                        count=count))
    return out


def test_pillar_voxelizer_matches_numpy_and_respects_the_budget():
    rng = np.random.default_rng(2)
    pts, mask = _points(rng)
    v_max = 20
    layer = PillarVoxelizer(RANGE, SIZE, v_max)
    assert layer.grid_shape == (8, 16)
    got = {k: _np(v) for k, v in layer(pts, mask).items()}
    for b, ref in enumerate(_reference_voxels(pts, mask, v_max)):
        n = len(ref["ids"])
        assert n == v_max  # the budget cut some pillars
        assert got["voxel_mask"][b].sum() == n
        np.testing.assert_array_equal(got["voxel_coords"][b, :n, 0] * 16
                                      + got["voxel_coords"][b, :n, 1], ref["ids"])
        np.testing.assert_allclose(got["voxel_mean"][b, :n], ref["mean"], atol=1e-5)
        np.testing.assert_allclose(got["voxel_max"][b, :n], ref["max"], atol=1e-6)
        np.testing.assert_array_equal(got["point_mask"][b], ref["keep"])
        np.testing.assert_array_equal(got["point_voxel"][b], ref["slot"])
        np.testing.assert_array_equal(got["voxel_count"][b, :n], ref["count"])
        assert ref["count"][0] >= 7 and np.all(got["voxel_count"][b, n:] == 0)


def _reference_point_net(pts, vox, net):
    """mmdet3d DynamicVFE (inference), re-stated with NumPy per sample."""
    outs = []
    weights = [(_np(d.kernel), _np(n.gamma), _np(n.beta), _np(n.moving_mean),
                _np(n.moving_variance)) for d, n in zip(net.linears, net.norms)]
    for b in range(len(pts)):
        keep = vox["point_mask"][b]
        p, slot = pts[b][keep], vox["point_voxel"][b][keep]
        coords = vox["voxel_coords"][b][slot]
        centre = np.stack([coords[:, 1] * SIZE[0] + SIZE[0] / 2 + RANGE[0],
                           coords[:, 0] * SIZE[1] + SIZE[1] / 2 + RANGE[1],
                           np.full(len(p), SIZE[2] / 2 + RANGE[2])], -1)
        h = np.concatenate([p, p[:, :3] - vox["voxel_mean"][b][slot][:, :3],
                            p[:, :3] - centre], -1)
        v = vox["voxel_mask"].shape[1]
        for i, (k, g, beta, mu, var) in enumerate(weights):
            h = np.maximum((h @ k - mu) / np.sqrt(var + 1e-3) * g + beta, 0)
            pooled = np.zeros((v, h.shape[1]), "float32")
            for s in np.unique(slot):
                pooled[s] = h[slot == s].max(0)
            if i < len(weights) - 1:
                h = np.concatenate([h, pooled[slot]], -1)
        outs.append(pooled)
    return np.stack(outs)


def test_point_feature_net_matches_dynamic_vfe():
    rng = np.random.default_rng(3)
    pts, mask = _points(rng)
    vox = PillarVoxelizer(RANGE, SIZE, 24)(pts, mask)
    net = PointFeatureNet((8, 12), RANGE, SIZE)
    out = net(pts, vox)
    for norm in net.norms:  # non-trivial running statistics
        norm.moving_mean.assign(rng.standard_normal(norm.moving_mean.shape) * 0.1)
        norm.moving_variance.assign(rng.uniform(0.5, 2.0, norm.moving_variance.shape))
    out = _np(net(pts, vox, training=False))
    vox_np = {k: _np(v) for k, v in vox.items()}
    np.testing.assert_allclose(out, _reference_point_net(pts, vox_np, net), atol=1e-4)
    assert out.shape == (2, 24, 12)
    # Training-mode statistics ignore dropped points: garbage there changes nothing.
    pts2 = pts.copy()
    pts2[~vox_np["point_mask"]] = 1e3
    a = _np(net(pts, vox, training=True))
    b = _np(net(pts2, vox, training=True))
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_bev_scatter_places_valid_voxels_only():
    feats = np.arange(2 * 3 * 2, dtype="float32").reshape(2, 3, 2) + 1
    coords = np.array([[[0, 1], [2, 3], [1, 0]], [[1, 1], [0, 0], [0, 0]]], "int32")
    mask = np.array([[True, True, False], [True, True, False]])
    bev = _np(BEVScatter((3, 4))([feats, coords, mask]))
    expected = np.zeros((2, 3, 4, 2), "float32")
    expected[0, 0, 1], expected[0, 2, 3] = feats[0, 0], feats[0, 1]
    expected[1, 1, 1], expected[1, 0, 0] = feats[1, 0], feats[1, 1]
    np.testing.assert_array_equal(bev, expected)


# --------------------------------------------------------------------------------------
# Detector: synthetic scenes, centre targets, one training step, decoding
# --------------------------------------------------------------------------------------


def test_scenes_are_seeded_and_points_lie_on_their_boxes():
    from visionzoo.training.scenes import make_scenes

    a = make_scenes(3, seed=5, max_points=400)
    b = make_scenes(3, seed=5, max_points=400)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["points"], make_scenes(3, seed=6, max_points=400)["points"])
    for i in range(3):
        pts = a["points"][i][a["point_mask"][i]]
        inside_any = np.zeros(len(pts), bool)
        for box, label in zip(a["boxes"][i], a["labels"][i]):
            if label < 0:
                continue
            x, y, z, l, w, h, yaw = box
            c, s = np.cos(yaw), np.sin(yaw)
            dx, dy = pts[:, 0] - x, pts[:, 1] - y
            lx, ly = c * dx + s * dy, -s * dx + c * dy
            inside_any |= ((np.abs(lx) <= l / 2 + 0.1) & (np.abs(ly) <= w / 2 + 0.1)
                           & (np.abs(pts[:, 2] - z) <= h / 2 + 0.1))
            assert z == pytest.approx(h / 2)  # standing on the ground
        assert inside_any[pts[:, 3] >= 0.5].all()  # object points (intensity >= 0.5)


def test_detector_training_step_lowers_the_loss():
    from visionzoo.training.scenes import center_targets, make_scenes

    data = make_scenes(4, seed=0, max_points=384, ground_points=120)
    det = ff.FlatFormerDetector(num_classes=2, max_voxels=192, feat_channels=(16,))
    targets = center_targets(data["boxes"], data["labels"], det.grid_shape,
                             det.point_cloud_range, det.voxel_size, 2)
    assert targets["heatmap"].max() == 1.0
    assert targets["regression"][..., 8].sum() == (data["labels"] >= 0).sum()
    loss, weights = ff.center_losses()
    # XLA on JAX only: on TF the XLA compile costs more than it saves (19 s vs 12 s), and
    # on torch jit_compile=True means torch.compile (100 s of compilation vs 0.5 s eager).
    det.compile(optimizer=keras.optimizers.AdamW(3e-3), loss=loss, loss_weights=weights,
                jit_compile=BACKEND == "jax")
    x = {"points": data["points"], "point_mask": data["point_mask"]}
    # train_on_batch returns the loss before its update: one compiled function only.
    losses = [float(np.ravel(det.train_on_batch(x, targets))[0]) for _ in range(2)]
    assert losses[1] < losses[0], losses


def test_decode_centers_recovers_target_boxes():
    from visionzoo.training.scenes import center_targets, make_scenes

    data = make_scenes(2, seed=3)
    rng_, size = (-8.0, -8.0, -1.0, 8.0, 8.0, 3.0), (0.5, 0.5, 4.0)
    t = center_targets(data["boxes"], data["labels"], (32, 32), rng_, size, 2)
    logits = np.log(np.clip(t["heatmap"], 1e-6, 1 - 1e-6) / (1 - np.clip(t["heatmap"], 1e-6,
                                                                          1 - 1e-6)))
    dec = ff.decode_centers(logits.astype("float32"), t["regression"][..., :8], rng_, size,
                            max_detections=4)
    boxes, scores, labels = (_np(dec[k]) for k in ("boxes", "scores", "labels"))
    for i in range(2):
        n = int((data["labels"][i] >= 0).sum())
        assert np.all(scores[i, :n] > 0.99)
        for box, label in zip(data["boxes"][i][:n], data["labels"][i][:n]):
            j = np.argmin(np.abs(boxes[i, :n, :2] - box[:2]).sum(-1))
            np.testing.assert_allclose(boxes[i, j, :6], box[:6], atol=1e-4)
            d_yaw = (boxes[i, j, 6] - box[6] + np.pi / 2) % np.pi - np.pi / 2  # same box
            assert abs(d_yaw) < 1e-4 and labels[i, j] == label
            assert -np.pi / 2 - 1e-6 <= boxes[i, j, 6] < np.pi / 2 + 1e-6


def test_detector_exports_end_to_end_to_tflite_with_builtin_ops(tmp_path):
    """Points -> voxels -> FlatFormer -> SECOND/FPN/CenterHead -> top-k decode -> rotated
    NMS in one builtins-only file (the encoder's TOPK_V2/GATHER/segment sums, the neck's
    TRANSPOSE_CONV, NMS's WHILE); outputs (boxes, scores, labels, keep mask) as Keras."""
    if BACKEND != "tensorflow":
        pytest.skip("TFLite conversion is checked on the tensorflow backend (other "
                    "backends hand the model to a TensorFlow subprocess: same file, slower)")
    pytest.importorskip("ai_edge_litert")
    from visionzoo.export import to_tflite
    from visionzoo.training.scenes import make_scenes

    keras.utils.set_random_seed(0)
    det = ff.FlatFormerDetector(num_classes=2, max_voxels=160, feat_channels=(16,))
    data = make_scenes(2, seed=0, max_points=256, ground_points=100)
    e2e = det.with_decoder(max_detections=12, iou_threshold=0.3, max_points=256)
    report = to_tflite(e2e, str(tmp_path / "det.tflite"),
                       check_input={"points": data["points"],
                                    "point_mask": data["point_mask"]})
    print(f"tflite detector: max|diff| {report.max_abs_diff:.2e} "
          f"max|ref| {report.ref_max_abs:.2e}")
    assert report.max_abs_diff <= 1e-4 * report.ref_max_abs
    assert {"TOPK_V2", "GATHER", "UNSORTED_SEGMENT_SUM", "TRANSPOSE_CONV", "WHILE",
            "UNSORTED_SEGMENT_MAX"} <= set(report.op_names)


def test_bev_iou_and_average_precision():
    from visionzoo.training.scenes import bev_average_precision, bev_iou

    a = np.array([0, 0, 0, 4, 2, 1, 0.0])
    assert bev_iou(a, a) == pytest.approx(1.0)
    assert bev_iou(a, a + [1, 0, 0, 0, 0, 0, 0]) == pytest.approx(6 / 10)
    assert bev_iou(a, a + [0, 0, 0, 0, 0, 0, np.pi / 2]) == pytest.approx(4 / 12)
    # a 2x2 square turned 45 degrees: its two corners beyond |y| = 1 are cut off
    cut = 2 * (np.sqrt(2) - 1) ** 2
    assert bev_iou(a, np.array([0, 0, 0, 2, 2, 1, np.pi / 4])) == pytest.approx(
        (4 - cut) / (8 + cut))
    assert bev_iou(a, a + [5, 0, 0, 0, 0, 0, 0]) == 0.0
    gt = np.array([[a, a + [10, 0, 0, 0, 0, 0, 0]]])
    labels = np.array([[0, 0]])
    pred = np.array([[a + [0.2, 0, 0, 0, 0, 0, 0], a + [10, 3, 0, 0, 0, 0, 0],
                      a + [10, 0, 0, 0, 0, 0, 0]]])
    scores = np.array([[0.9, 0.8, 0.7]])
    ap = bev_average_precision(pred, scores, np.zeros((1, 3), int), gt, labels, 2)
    # ranks: TP (recall .5, precision 1), FP, TP (recall 1, precision 2/3)
    assert ap["per_class"][0] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert np.isnan(ap["per_class"][1]) and ap["mean"] == pytest.approx(ap["per_class"][0])


# --------------------------------------------------------------------------------------
# SECOND + SECONDFPN + CenterHead: torch reference (official module names), conversion
# --------------------------------------------------------------------------------------


def _torch_bev_reference(in_channels, out_channels, layer_nums, layer_strides,
                         neck_channels, upsample_strides, tasks, common_heads,
                         share_conv_channel, head_conv, final_kernel=3, residual=True):
    """mmdet3d SECOND (residual fork), SECONDFPN and CenterHead/SeparateHead, written
    with plain torch.nn in the official module layout (so state_dict keys match)."""
    import torch
    from torch import nn

    def bn(c):
        return nn.BatchNorm2d(c, eps=1e-3, momentum=0.01)

    class ConvModule(nn.Module):
        def __init__(self, cin, cout, k):
            super().__init__()
            self.conv = nn.Conv2d(cin, cout, k, padding=k // 2, bias=False)
            self.bn = bn(cout)
            self.activate = nn.ReLU()

        def forward(self, x):
            return self.activate(self.bn(self.conv(x)))

    class Second(nn.Module):
        def __init__(self):
            super().__init__()
            cins = [in_channels, *out_channels[:-1]]
            self.blocks = nn.ModuleList()
            for cin, c, n, s in zip(cins, out_channels, layer_nums, layer_strides):
                block = nn.ModuleList([nn.Sequential(
                    nn.Conv2d(cin, c, 3, stride=s, padding=1, bias=False), bn(c), nn.ReLU())])
                for _ in range(n):
                    block.append(nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False),
                                               bn(c), nn.ReLU()))
                self.blocks.append(block)

        def forward(self, x):
            outs = []
            for block in self.blocks:
                for conv in block:
                    t = conv(x)
                    x = t + x if (t.shape == x.shape and residual) else t
                outs.append(x)
            return outs

    class Neck(nn.Module):
        def __init__(self):
            super().__init__()
            self.deblocks = nn.ModuleList([
                nn.Sequential(nn.ConvTranspose2d(cin, c, s, stride=s, bias=False), bn(c),
                              nn.ReLU())
                for cin, c, s in zip(out_channels, neck_channels, upsample_strides)])

        def forward(self, xs):
            return torch.cat([d(x) for d, x in zip(self.deblocks, xs)], 1)

    class SeparateHead(nn.Module):
        def __init__(self, heads):
            super().__init__()
            self.heads = heads
            for name, (channels, num_conv) in heads.items():
                layers, cin = [], share_conv_channel
                for _ in range(num_conv - 1):
                    layers.append(ConvModule(cin, head_conv, final_kernel))
                    cin = head_conv
                layers.append(nn.Conv2d(head_conv, channels, final_kernel,
                                        padding=final_kernel // 2, bias=True))
                setattr(self, name, nn.Sequential(*layers))

        def forward(self, x):
            return {name: getattr(self, name)(x) for name in self.heads}

    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.shared_conv = ConvModule(sum(neck_channels), share_conv_channel, 3)
            self.task_heads = nn.ModuleList()
            for n in tasks:
                heads = {h[0]: (h[1], h[2]) for h in common_heads}
                heads["heatmap"] = (n, 2)
                self.task_heads.append(SeparateHead(heads))

        def forward(self, x):
            x = self.shared_conv(x)
            return [t(x) for t in self.task_heads]

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone, self.neck, self.bbox_head = Second(), Neck(), Head()

        def forward(self, x):
            outs = self.bbox_head(self.neck(self.backbone(x)))
            heat = torch.cat([o["heatmap"] for o in outs], 1)
            reg = torch.cat([torch.cat([o[h[0]] for h in common_heads], 1) for o in outs], 1)
            return heat, reg

    return Net()


def _randomise_torch(net, seed):
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif name.endswith(("running_mean", "bias")):
                t.copy_(torch.randn(t.shape, generator=g) * 0.2)
            elif t.ndim == 1:  # BN weight
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            else:
                fan_in = t[0].numel() if t.ndim == 4 else t.shape[1]
                t.copy_(torch.randn(t.shape, generator=g) / np.sqrt(fan_in))
    return net.eval()


BEV_MINI = dict(in_channels=8, out_channels=(8, 12), layer_nums=(2, 1), layer_strides=(1, 2),
                neck_channels=(6, 6), upsample_strides=(1, 2), tasks=(2, 1),
                common_heads=(("reg", 2, 2), ("height", 1, 2), ("dim", 3, 2), ("rot", 2, 2),
                              ("vel", 2, 2), ("iou", 1, 2)),
                share_conv_channel=10, head_conv=6)


def test_second_fpn_center_head_match_the_torch_reference():
    import torch

    from visionzoo.heads import center3d
    from visionzoo.weights.convert import assign, plan_assignments

    cfg = BEV_MINI
    ref = _randomise_torch(_torch_bev_reference(**cfg), 0)
    x = np.random.default_rng(5).standard_normal((2, cfg["in_channels"], 12, 10))
    x = x.astype("float32")
    with torch.no_grad():
        heat_ref, reg_ref = (t.numpy().transpose(0, 2, 3, 1)
                             for t in ref(torch.from_numpy(x)))

    inp = keras.Input((12, 10, cfg["in_channels"]))
    levels = center3d.second_backbone(inp, cfg["out_channels"], cfg["layer_nums"],
                                      cfg["layer_strides"])
    y = center3d.second_fpn(levels, cfg["neck_channels"], cfg["upsample_strides"])
    heat, reg = center3d.center_head(y, cfg["tasks"], cfg["common_heads"],
                                     cfg["share_conv_channel"], cfg["head_conv"])
    model = keras.Model(inp, [heat, reg])
    # official key names (with num_batches_tracked) through the family's key map
    state = {k: v.numpy() for k, v in ref.state_dict().items()}
    assert "neck.deblocks.1.0.weight" in state and "bbox_head.task_heads.1.iou.1.bias" in state
    assign(plan_assignments(model, state, ff.KEY_MAPS["official"], ignore=ff.IGNORE_KEYS))
    heat_k, reg_k = (_np(t) for t in model.predict_on_batch(x.transpose(0, 2, 3, 1)))
    assert heat_k.shape == heat_ref.shape == (2, 12, 10, 3)
    assert reg_k.shape == reg_ref.shape == (2, 12, 10, 22)
    for name, ours, want in (("heatmap", heat_k, heat_ref), ("regression", reg_k, reg_ref)):
        err = float(np.max(np.abs(ours - want)))
        print(f"{BACKEND} {name}: max|diff| {err:.2e} max|ref| {np.abs(want).max():.2e}")
        assert err <= 1e-4 * np.abs(want).max(), (name, err)


def _official_detector_state(det, cfg, seed=0):
    """A whole official-layout checkpoint for ``det``: backbone/neck/head from the torch
    reference, DynamicVFE under its fork's names (``linear``/``norm``, with
    ``num_batches_tracked``), the encoder's tensors from our own variables in torch layout
    under ``middle_encoder.``."""
    from visionzoo.weights.convert import model_targets

    ref = _randomise_torch(_torch_bev_reference(
        cfg["feat_channels"][-1], cfg["backbone_channels"], cfg["layer_nums"],
        cfg["layer_strides"], cfg["neck_channels"], cfg["upsample_strides"], cfg["tasks"],
        cfg["common_heads"], cfg["share_conv_channel"], cfg["head_conv"]), seed)
    state = {k: v.numpy() for k, v in ref.state_dict().items()}
    rng = np.random.default_rng(seed)
    width = cfg["point_features"] + 6
    for i, c in enumerate(cfg["feat_channels"]):
        p = f"voxel_encoder.vfe_layers.{i}."
        state[p + "linear.weight"] = rng.standard_normal((c, width)).astype("float32") * 0.3
        state[p + "norm.weight"] = rng.uniform(0.5, 1.5, c).astype("float32")
        state[p + "norm.bias"] = rng.standard_normal(c).astype("float32") * 0.1
        state[p + "norm.running_mean"] = rng.standard_normal(c).astype("float32") * 0.1
        state[p + "norm.running_var"] = rng.uniform(0.5, 2.0, c).astype("float32")
        state[p + "norm.num_batches_tracked"] = np.array(7)
        width = 2 * c
    for name, (v, kind) in model_targets(det).items():
        if name.startswith("block_list."):
            a = _np(v)
            state["middle_encoder." + name] = a.T if kind == "dense" and a.ndim == 2 else a
    return ref, state


def test_whole_official_detector_checkpoint_loads_exactly():
    """The official configuration: every tensor of a whole DynamicCenterPoint checkpoint
    lands (and nothing is left unfilled); a missing head tensor is reported."""
    cfg = dict(ff.DETECTOR_CONFIGS["flatformer_waymo"], max_voxels=1024)
    det = ff.FlatFormerDetector(**cfg)
    ref, state = _official_detector_state(det, cfg)
    assert ff.detect_layout(state) == "official"
    load_checkpoint(det, state)
    conv = det.get_layer("neck-deblocks-1-0")
    np.testing.assert_array_equal(_np(conv.kernel),
                                  state["neck.deblocks.1.0.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(_np(det.get_layer("bbox_head-task_heads-0-iou-1").bias),
                                  state["bbox_head.task_heads.0.iou.1.bias"])
    vfe = det.get_layer("voxel_encoder")
    np.testing.assert_array_equal(_np(vfe.linears[1].kernel),
                                  state["voxel_encoder.vfe_layers.1.linear.weight"].T)
    n_torch = sum(v.size for k, v in state.items() if not k.endswith("num_batches_tracked"))
    assert n_torch == det.count_params() == 2_271_566  # BN statistics on both sides
    assert ff.FlatFormerDetector.from_config(det.get_config()).get_config() == det.get_config()
    # MVX-style pts_ prefixes load too; a missing tensor is named
    pts = {("pts_" + k): v for k, v in state.items()}
    load_checkpoint(det, pts)
    del pts["pts_bbox_head.task_heads.0.vel.1.bias"]
    with pytest.raises(CheckpointMismatchError, match="vel.1.bias"):
        load_checkpoint(det, pts)


# --------------------------------------------------------------------------------------
# Rotated IoU and NMS
# --------------------------------------------------------------------------------------


def _compiled(fn):
    """jax.jit on JAX (eager JAX dispatches and compiles op by op); as is elsewhere."""
    if BACKEND == "jax":
        import jax

        return jax.jit(fn)
    return fn


def _boxes(rows):
    return np.array([[x, y, 0.5, l, w, 1.0, yaw] for x, y, l, w, yaw in rows], "float32")


NMS_BOXES = _boxes([(0, 0, 4, 2, 0.0), (0.3, 0.1, 4, 2, 0.1), (0.2, 0, 2, 2, 0.7),
                    (5, 5, 2, 1, 0.3), (5.4, 5.2, 2, 1, 1.2), (5, 5, 2, 1, 0.3),
                    (-3, 0.5, 3, 1.5, 1.4), (-3.5, 0.2, 3, 1.5, 1.7)])
NMS_SCORES = np.array([0.9, 0.85, 0.5, 0.7, 0.65, 0.6, 0.4, 0.45], "float32")
NMS_LABELS = np.array([0, 0, 0, 1, 1, 0, 0, 0], "int32")


def _reference_nms(boxes, scores, labels, thr, mode="rotate"):
    from visionzoo.training.scenes import bev_iou

    keep = []
    for i in np.argsort(-scores, kind="stable"):
        ok = True
        for j in keep:
            if labels[i] != labels[j]:
                continue
            if mode == "rotate":
                ok &= bev_iou(boxes[i], boxes[j]) <= thr
            else:
                ok &= float(np.sum((boxes[i, :2] - boxes[j, :2]) ** 2)) > thr
        if ok:
            keep.append(i)
    return sorted(keep)


def test_rotated_iou_matrix_matches_polygon_clipping():
    from visionzoo.training.scenes import bev_iou

    rng = np.random.default_rng(7)
    rand = np.concatenate([rng.uniform(-1, 1, (12, 2)), np.zeros((12, 1)),
                           rng.uniform(0.5, 3, (12, 3)), rng.uniform(-np.pi, np.pi, (12, 1))],
                          -1).astype("float32")
    boxes = np.concatenate([NMS_BOXES, rand])
    ours = _np(_compiled(ff.rotated_iou_matrix)(boxes[None]))[0]
    ref = np.array([[bev_iou(a, b) for b in boxes] for a in boxes])
    np.testing.assert_allclose(ours, ref, atol=2e-5)
    assert ours[3, 5] == pytest.approx(1.0, abs=1e-5)  # identical boxes
    assert 0.05 < ref[1, 2] < 0.95 and np.count_nonzero((ref > 0.05) & (ref < 0.95)) > 40


def test_bev_nms_keeps_exactly_the_greedy_set():
    det = {"boxes": NMS_BOXES[None], "scores": NMS_SCORES[None], "labels": NMS_LABELS[None]}

    def nms(**kw):
        return {k: _np(v)[0] for k, v in _compiled(lambda d: ff.bev_nms(d, **kw))(det).items()}

    for thr in (0.1, 0.3, 0.6):
        out = nms(iou_threshold=thr)
        want = _reference_nms(NMS_BOXES, NMS_SCORES, NMS_LABELS, thr)
        got = out["scores"][out["valid"]]
        np.testing.assert_array_equal(np.sort(got), np.sort(NMS_SCORES[want]))
        assert np.all(np.diff(got) <= 0) and np.all(out["scores"][~out["valid"]] == 0)
    # per-class thresholds (mmdet3d nms_thr list) and the circle rule
    out = nms(iou_threshold=(0.6, 0.1))
    want = sorted(set(i for i in _reference_nms(NMS_BOXES, NMS_SCORES, NMS_LABELS, 0.6)
                      if NMS_LABELS[i] == 0)
                  | set(i for i in _reference_nms(NMS_BOXES, NMS_SCORES, NMS_LABELS, 0.1)
                        if NMS_LABELS[i] == 1))
    np.testing.assert_array_equal(np.sort(out["scores"][out["valid"]]),
                                  np.sort(NMS_SCORES[want]))
    out = nms(iou_threshold=0.5, mode="circle")
    want = _reference_nms(NMS_BOXES, NMS_SCORES, NMS_LABELS, 0.5, mode="circle")
    np.testing.assert_array_equal(np.sort(out["scores"][out["valid"]]),
                                  np.sort(NMS_SCORES[want]))
