"""Train the FlatFormer BEV detector on seeded synthetic lidar scenes, on CPU, with fit().

    KERAS_BACKEND=jax python examples/flatformer_scenes.py --out flatformer_run

Data: ``visionzoo.training.scenes.make_scenes`` (cars and posts standing on a ground
plane in a 16 x 16 m area, points on their visible surfaces, exact 3-D boxes);
``--train`` scenes for training and ``--test`` held-out scenes drawn with another seed.

Model: ``create_detector("flatformer_scenes")``, the official FlatFormer Waymo detector
structure at small widths: 0.5 m pillars -> 32 x 32 BEV grid, 384 voxels, a DynamicVFE of
widths 32-32, one FlatFormer block with 4 heads, groups of 32 in 8 x 8 windows, SECOND
(32, 64 channels, strides 1, 2, two 3x3 layers per stage, residual), SECONDFPN (32 + 32)
and a CenterHead (shared conv 32, reg/height/dim/rot/heatmap branches). Trained from
scratch with the centre losses (focal heatmap + L1 regression), AdamW, cosine decay.
Decoding: top-20 heatmap peaks, then class-aware rotated BEV NMS (IoU 0.5).

Writes to ``--out``: ``results.json`` (BEV AP at rotated IoU 0.5 per class and mean,
loss curve, times, configuration) and ``bev.png`` (held-out scenes from above: points
grey, ground truth green, detections with score >= 0.3 red).
"""

import argparse
import json
import os
import time

import keras
import numpy as np

from visionzoo.backbones.flatformer import center_losses, create_detector
from visionzoo.training.scenes import (CLASS_NAMES, bev_corners, bev_average_precision,
                                       center_targets, make_scenes)


def draw(points, masks, gt, gt_labels, boxes, scores, path, extent=8.0, side=256,
         threshold=0.3):
    from PIL import Image, ImageDraw

    tiles = []
    for i in range(len(points)):
        img = Image.new("RGB", (side, side), "white")
        d = ImageDraw.Draw(img)

        def px(xy):
            return [((x + extent) / (2 * extent) * side, (extent - y) / (2 * extent) * side)
                    for x, y in xy]

        for x, y in points[i][masks[i]][:, :2]:
            (u, v), = px([(x, y)])
            d.point((u, v), fill=(150, 150, 150))
        for box, label in zip(gt[i], gt_labels[i]):
            if label >= 0:
                d.polygon(px(bev_corners(box)), outline=(0, 160, 0))
        for box, score in zip(boxes[i], scores[i]):
            if score >= threshold:
                d.polygon(px(bev_corners(box)), outline=(220, 0, 0))
        tiles.append(img)
    sheet = Image.new("RGB", (side * len(tiles), side), "white")
    for k, tile in enumerate(tiles):
        sheet.paste(tile, (k * side, 0))
    sheet.save(path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="flatformer_run")
    parser.add_argument("--train", type=int, default=256)
    parser.add_argument("--test", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    keras.utils.set_random_seed(args.seed)

    det = create_detector("flatformer_scenes", tasks=(len(CLASS_NAMES),))
    train = make_scenes(args.train, seed=args.seed)
    test = make_scenes(args.test, seed=args.seed + 1000)
    targets = center_targets(train["boxes"], train["labels"], det.grid_shape,
                             det.point_cloud_range, det.voxel_size, len(CLASS_NAMES))
    steps = args.epochs * -(-args.train // args.batch)
    schedule = keras.optimizers.schedules.CosineDecay(args.lr, steps)
    loss, weights = center_losses()
    det.compile(optimizer=keras.optimizers.AdamW(schedule, weight_decay=1e-4,
                                                 clipnorm=10.0),
                loss=loss, loss_weights=weights)
    start = time.time()
    history = det.fit({"points": train["points"], "point_mask": train["point_mask"]},
                      targets, epochs=args.epochs, batch_size=args.batch, verbose=2)
    train_time = time.time() - start

    start = time.time()
    out = det.predict({"points": test["points"], "point_mask": test["point_mask"]},
                      batch_size=args.batch, verbose=0)
    dec = det.decode(out, max_detections=20, iou_threshold=0.5)
    boxes, scores, labels, valid = (np.asarray(keras.ops.convert_to_numpy(dec[k]))
                                    for k in ("boxes", "scores", "labels", "valid"))
    labels = np.where(valid, labels, -1)  # suppressed by NMS
    predict_time = time.time() - start
    ap = bev_average_precision(boxes, scores, labels, test["boxes"], test["labels"],
                               len(CLASS_NAMES), iou_threshold=0.5)
    results = {"backend": keras.backend.backend(), "bev_ap50": ap["mean"],
               "bev_ap50_per_class": dict(zip(CLASS_NAMES, ap["per_class"])),
               "loss": [round(v, 4) for v in history.history["loss"]],
               "train_seconds": round(train_time, 1),
               "predict_seconds": round(predict_time, 1), "args": vars(args),
               "model": det.get_config(),
               "params": det.count_params()}
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    draw(test["points"][:4], test["point_mask"][:4], test["boxes"][:4], test["labels"][:4],
         boxes[:4], scores[:4], os.path.join(args.out, "bev.png"))
    print(json.dumps({k: results[k] for k in ("backend", "bev_ap50", "bev_ap50_per_class",
                                              "train_seconds")}, indent=2))


if __name__ == "__main__":
    main()
