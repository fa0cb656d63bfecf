"""Seeded synthetic lidar scenes: box-shaped objects on a ground plane, exact 3-D boxes.

    from visionzoo.training.scenes import make_scenes, center_targets
    data = make_scenes(64, seed=0)
    data["points"]       # (N, max_points, 4) float32 x y z intensity, 0 padded
    data["point_mask"]   # (N, max_points) bool
    data["boxes"]        # (N, max_objects, 7) float32 x y z l w h yaw (centre), 0 padded
    data["labels"]       # (N, max_objects) int32 class, -1 padded

Classes: 0 car (about 4.2 x 1.8 x 1.5 m), 1 pedestrian-sized post (0.7 x 0.7 x 1.8 m)
(``CLASS_NAMES``). Objects stand on the ground (z = 0), do not overlap in bird's-eye
view, and are sampled on their visible surfaces (the four sides and the top) with a
little noise; ground points are scattered over the whole range with intensity lower
than objects'. Everything is drawn from ``numpy.random.default_rng(seed)``.

:func:`center_targets` renders CenterPoint targets for a BEV grid: per-class Gaussian
heatmaps at the box centres and, at each centre cell, the regression target
``(dx, dy, z, log l, log w, log h, sin yaw, cos yaw)`` plus a weight channel (yaw taken
modulo pi into ``[-pi/2, pi/2)``: the boxes are symmetric and the points carry no
heading).
:func:`bev_average_precision` scores detections by rotated BEV IoU (:func:`bev_iou`).
"""

import math

import numpy as np

CLASS_NAMES = ("car", "post")
_SIZES = {0: ((3.8, 4.6), (1.6, 2.0), (1.4, 1.7)), 1: ((0.6, 0.8), (0.6, 0.8), (1.6, 2.0))}


def _box_surface_points(box, n, rng):
    """``n`` points on the sides and top of a yawed box (x y z l w h yaw, z = centre)."""
    x, y, z, l, w, h, yaw = box
    face = rng.integers(0, 5, n)
    u, v = rng.random(n), rng.random(n)
    local = np.empty((n, 3))
    # faces 0/1: x = +-l/2; 2/3: y = +-w/2; 4: top
    local[:, 0] = np.where(face < 2, np.where(face == 0, 0.5, -0.5) * l, (u - 0.5) * l)
    local[:, 1] = np.where((face == 2) | (face == 3), np.where(face == 2, 0.5, -0.5) * w,
                           np.where(face < 2, (u - 0.5) * w, (v - 0.5) * w))
    local[:, 2] = np.where(face == 4, 0.5 * h, (v - 0.5) * h)
    local += rng.normal(0, 0.02, local.shape)
    c, s = math.cos(yaw), math.sin(yaw)
    return np.stack([x + c * local[:, 0] - s * local[:, 1],
                     y + s * local[:, 0] + c * local[:, 1], z + local[:, 2]], -1)


def make_scenes(num_scenes, seed=0, extent=8.0, max_points=1024, max_objects=4,
                ground_points=256, points_per_object=(60, 160)):
    """``num_scenes`` scenes in ``[-extent, extent)^2`` (see the module docstring)."""
    rng = np.random.default_rng(seed)
    points = np.zeros((num_scenes, max_points, 4), np.float32)
    mask = np.zeros((num_scenes, max_points), bool)
    boxes = np.zeros((num_scenes, max_objects, 7), np.float32)
    labels = np.full((num_scenes, max_objects), -1, np.int32)
    for i in range(num_scenes):
        placed = []
        for _ in range(rng.integers(1, max_objects + 1)):
            label = int(rng.integers(0, len(CLASS_NAMES)))
            l, w, h = (rng.uniform(*r) for r in _SIZES[label])
            for _attempt in range(20):
                cx, cy = rng.uniform(-extent + 2.5, extent - 2.5, 2)
                if all(math.hypot(cx - b[0], cy - b[1]) > (l + b[3]) / 2 + 0.5
                       for b in placed):
                    placed.append((cx, cy, h / 2, l, w, h, rng.uniform(-math.pi, math.pi),
                                   label))
                    break
        clouds = [np.concatenate([rng.uniform(-extent, extent, (ground_points, 2)),
                                  rng.normal(0, 0.03, (ground_points, 1)),
                                  rng.uniform(0, 0.3, (ground_points, 1))], -1)]
        for k, b in enumerate(placed):
            n = int(rng.integers(*points_per_object))
            xyz = _box_surface_points(b[:7], n, rng)
            clouds.append(np.concatenate([xyz, rng.uniform(0.5, 1.0, (n, 1))], -1))
            boxes[i, k] = b[:7]
            labels[i, k] = b[7]
        cloud = np.concatenate(clouds)
        rng.shuffle(cloud)
        cloud = cloud[:max_points]
        points[i, :len(cloud)] = cloud
        mask[i, :len(cloud)] = True
    return {"points": points, "point_mask": mask, "boxes": boxes, "labels": labels}


def gaussian_radius(height, width, min_overlap=0.1):
    """CornerNet's radius (in cells) such that a box shifted by it keeps ``min_overlap``
    IoU with the original: the smallest root of the three cases."""
    r1 = (height + width - math.sqrt((height + width) ** 2
                                     - 4 * height * width * (1 - min_overlap)
                                     / (1 + min_overlap))) / 2
    b2 = 2 * (height + width)
    r2 = (b2 - math.sqrt(b2 ** 2 - 16 * (1 - min_overlap) * height * width)) / 8
    a3 = 4 * min_overlap
    b3 = -2 * min_overlap * (height + width)
    c3 = (min_overlap - 1) * width * height
    r3 = (-b3 + math.sqrt(b3 ** 2 - 4 * a3 * c3)) / (2 * a3)
    return min(r1, r2, r3)


def center_targets(boxes, labels, grid_shape, point_cloud_range, voxel_size, num_classes,
                   min_radius=2, min_overlap=0.1):
    """CenterPoint targets on a ``(ny, nx)`` BEV grid (stride 1 = one pillar per cell).

    Returns ``heatmap`` (N, ny, nx, num_classes) in [0, 1] and ``regression``
    (N, ny, nx, 9): ``dx, dy`` (centre offset inside its cell), ``z``, ``log l, log w,
    log h``, ``sin yaw, cos yaw``, and the weight (1 at each object's centre cell).
    """
    ny, nx = grid_shape
    n = len(boxes)
    heat = np.zeros((n, ny, nx, num_classes), np.float32)
    reg = np.zeros((n, ny, nx, 9), np.float32)
    yy, xx = np.mgrid[0:ny, 0:nx]
    for i in range(n):
        for box, label in zip(boxes[i], labels[i]):
            if label < 0:
                continue
            x, y, z, l, w, h, yaw = box
            fx = (x - point_cloud_range[0]) / voxel_size[0]
            fy = (y - point_cloud_range[1]) / voxel_size[1]
            ix, iy = int(fx), int(fy)
            if not (0 <= ix < nx and 0 <= iy < ny):
                continue
            radius = max(min_radius, int(gaussian_radius(w / voxel_size[1], l / voxel_size[0],
                                                         min_overlap)))
            sigma = (2 * radius + 1) / 6
            g = np.exp(-((xx - ix) ** 2 + (yy - iy) ** 2) / (2 * sigma * sigma))
            g[(np.abs(xx - ix) > radius) | (np.abs(yy - iy) > radius)] = 0
            heat[i, :, :, label] = np.maximum(heat[i, :, :, label], g)
            # a box turned by pi is the same box: regress the representative yaw in
            # [-pi/2, pi/2) (the points carry no heading, so +-pi targets would average
            # the sin/cos to zero)
            yaw = (yaw + math.pi / 2) % math.pi - math.pi / 2
            reg[i, iy, ix] = (fx - ix, fy - iy, z, math.log(l), math.log(w), math.log(h),
                              math.sin(yaw), math.cos(yaw), 1.0)
    return {"heatmap": heat, "regression": reg}


def bev_corners(box):
    """BEV corners (4, 2), counter-clockwise, of ``x y z l w h yaw``."""
    x, y, _, l, w, _, yaw = box[:7]
    c, s = math.cos(yaw), math.sin(yaw)
    local = np.array([[-l, -w], [l, -w], [l, w], [-l, w]]) / 2
    return np.stack([x + c * local[:, 0] - s * local[:, 1],
                     y + s * local[:, 0] + c * local[:, 1]], -1)


def _clip(subject, a, b):
    """Sutherland-Hodgman: the part of polygon ``subject`` left of the edge a -> b."""
    def side(p):
        return (b[0] - a[0]) * (p[1] - a[1]) - (b[1] - a[1]) * (p[0] - a[0])

    out = []
    for i in range(len(subject)):
        p, q = subject[i], subject[(i + 1) % len(subject)]
        sp, sq = side(p), side(q)
        if sp >= 0:
            out.append(p)
        if sp * sq < 0:
            out.append(p + (q - p) * (sp / (sp - sq)))
    return out


def _area(poly):
    if len(poly) < 3:
        return 0.0
    p = np.asarray(poly)
    return 0.5 * abs(np.dot(p[:, 0], np.roll(p[:, 1], -1)) - np.dot(p[:, 1], np.roll(p[:, 0], -1)))


def bev_iou(box_a, box_b):
    """Rotated bird's-eye-view IoU of two ``x y z l w h yaw`` boxes."""
    a, b = bev_corners(box_a), bev_corners(box_b)
    inter = list(a)
    for i in range(4):
        inter = _clip(inter, b[i], b[(i + 1) % 4])
        if not inter:
            return 0.0
    inter_area = _area(inter)
    union = box_a[3] * box_a[4] + box_b[3] * box_b[4] - inter_area
    return float(inter_area / union) if union > 0 else 0.0


def bev_average_precision(pred_boxes, pred_scores, pred_labels, gt_boxes, gt_labels,
                          num_classes, iou_threshold=0.5):
    """Per-class BEV AP (all-point interpolated precision-recall area) at a rotated-IoU
    threshold, over a set of scenes; greedy matching by descending score, each ground
    truth matched once. Returns ``{"per_class": [...], "mean": float}``; classes without
    ground truth are NaN and left out of the mean."""
    aps = []
    for k in range(num_classes):
        dets, n_gt = [], 0
        for i in range(len(gt_boxes)):
            n_gt += int((gt_labels[i] == k).sum())
            for j in np.nonzero(pred_labels[i] == k)[0]:
                dets.append((float(pred_scores[i][j]), i, j))
        if n_gt == 0:
            aps.append(float("nan"))
            continue
        dets.sort(key=lambda d: -d[0])
        used = set()
        tp = np.zeros(len(dets))
        for t, (_, i, j) in enumerate(dets):
            best, best_g = iou_threshold, None
            for g in np.nonzero(gt_labels[i] == k)[0]:
                if (i, g) in used:
                    continue
                iou = bev_iou(pred_boxes[i][j], gt_boxes[i][g])
                if iou >= best:
                    best, best_g = iou, g
            if best_g is not None:
                used.add((i, best_g))
                tp[t] = 1
        ctp = np.cumsum(tp)
        recall = ctp / n_gt
        precision = ctp / np.arange(1, len(dets) + 1)
        mrec = np.concatenate([[0.0], recall, [1.0]])
        mpre = np.concatenate([[0.0], precision, [0.0]])
        mpre = np.maximum.accumulate(mpre[::-1])[::-1]
        steps = np.nonzero(mrec[1:] != mrec[:-1])[0]
        aps.append(float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1])))
    valid = [a for a in aps if not math.isnan(a)]
    return {"per_class": aps, "mean": float(np.mean(valid)) if valid else float("nan")}
