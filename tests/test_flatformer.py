"""FlatFormer: the official fixture on every backend (per-voxel output and BEV canvas),
the flat2win padding rule, order/padding invariance on a fixed voxel budget, checkpoint
conversion, the pillar voxeliser, the point-feature network and the BEV scatter."""

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
    det = ff.FlatFormerDetector(num_classes=2, max_voxels=192, feat_channels=(16,),
                                bev_channels=16)
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
            d_yaw = (boxes[i, j, 6] - box[6] + np.pi) % (2 * np.pi) - np.pi
            assert abs(d_yaw) < 1e-4 and labels[i, j] == label


def test_encoder_exports_to_tflite_with_builtin_ops(tmp_path):
    if BACKEND != "tensorflow":
        pytest.skip("TFLite conversion is checked on the tensorflow backend (other "
                    "backends hand the model to a TensorFlow subprocess: same file, slower)")
    pytest.importorskip("ai_edge_litert")
    from visionzoo.export import to_tflite

    rng = np.random.default_rng(4)
    model = ff.FlatFormer(**MINI, max_voxels=32)
    voxels, coords, mask = _mini_inputs(rng, v=32)
    report = to_tflite(model, str(tmp_path / "ff.tflite"),
                       check_input={"voxels": voxels, "coords": coords, "mask": mask})
    assert report.max_abs_diff <= 1e-4 * report.ref_max_abs
    assert {"TOPK_V2", "GATHER", "SCATTER_ND"} <= set(report.op_names)


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
