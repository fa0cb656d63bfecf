"""A seeded synthetic dataset of shapes with exact boxes and masks.

    from visionzoo.training.shapes import make_shapes
    data = make_shapes(200, size=128, seed=0)
    data["images"]   # (N, 128, 128, 3) float32 in [0, 1]
    data["boxes"]    # (N, max_objects, 4) float32 xyxy pixels, -1 padded
    data["labels"]   # (N, max_objects) int32 in [0, 3), -1 padded
    data["masks"]    # (N, 128, 128) int32: 0 background, 1 + label inside each shape

Classes: 0 rectangle, 1 ellipse, 2 triangle (``CLASS_NAMES``). Objects never overlap,
so every box is the exact extent of its object's mask pixels (boxes are
``[x_min, y_min, x_max + 1, y_max + 1]`` of the mask: pixel-edge coordinates, the
convention of ``keras.utils.bounding_boxes`` "xyxy" and COCO). Backgrounds are smooth
colour gradients with seeded noise; object colours are random but differ from the
background.
"""

import numpy as np

CLASS_NAMES = ("rectangle", "ellipse", "triangle")


def _shape_mask(kind, h, w, rng):
    """A boolean ``(h, w)`` mask of one shape that touches all four sides of its box."""
    yy, xx = np.mgrid[0:h, 0:w]
    if kind == 0:
        return np.ones((h, w), bool)
    if kind == 1:
        cy, cx = (h - 1) / 2, (w - 1) / 2
        mask = ((yy - cy) / (h / 2)) ** 2 + ((xx - cx) / (w / 2)) ** 2 <= 1.0
    else:  # triangle: apex on the top edge, base on the bottom edge
        apex = rng.uniform(0.2, 0.8) * (w - 1)
        t = yy / max(h - 1, 1)
        left = apex * (1 - t)
        right = apex + (w - 1 - apex) * t
        mask = (xx >= left - 0.5) & (xx <= right + 0.5)
    return mask


def _background(size, rng):
    y = np.linspace(0, 1, size)[:, None, None]
    x = np.linspace(0, 1, size)[None, :, None]
    c0, c1, c2 = rng.uniform(0, 1, (3, 3))
    image = c0 + (c1 - c0) * y * 0.6 + (c2 - c0) * x * 0.4
    image = image + rng.normal(0, 0.04, (size, size, 3))
    return np.clip(image, 0, 1)


def make_shapes(n, size=128, max_objects=4, min_side=12, max_side=None, seed=0):
    """``n`` images of 1..``max_objects`` non-overlapping shapes; see the module doc."""
    if n < 1 or size < 2 * min_side:
        raise ValueError(f"Need n >= 1 and size >= {2 * min_side}, got n={n}, size={size}.")
    rng = np.random.default_rng(seed)
    max_side = max_side or size // 2
    images = np.zeros((n, size, size, 3), np.float32)
    masks = np.zeros((n, size, size), np.int32)
    boxes = -np.ones((n, max_objects, 4), np.float32)
    labels = -np.ones((n, max_objects), np.int32)
    for i in range(n):
        image = _background(size, rng)
        occupied = np.zeros((size, size), bool)
        count = rng.integers(1, max_objects + 1)
        placed = 0
        for _ in range(50 * count):
            if placed == count:
                break
            h, w = rng.integers(min_side, max_side + 1, 2)
            y0, x0 = rng.integers(0, size - h + 1), rng.integers(0, size - w + 1)
            if occupied[max(y0 - 2, 0):y0 + h + 2, max(x0 - 2, 0):x0 + w + 2].any():
                continue
            kind = int(rng.integers(0, len(CLASS_NAMES)))
            shape = _shape_mask(kind, h, w, rng)
            region = image[y0:y0 + h, x0:x0 + w]
            bg = region.mean(axis=(0, 1))
            colour = rng.uniform(0, 1, 3)
            while np.abs(colour - bg).max() < 0.35:
                colour = rng.uniform(0, 1, 3)
            region[shape] = colour + rng.normal(0, 0.02, (int(shape.sum()), 3))
            masks[i, y0:y0 + h, x0:x0 + w][shape] = kind + 1
            occupied[y0:y0 + h, x0:x0 + w] = True
            ys, xs = np.nonzero(shape)
            boxes[i, placed] = (x0 + xs.min(), y0 + ys.min(), x0 + xs.max() + 1,
                                y0 + ys.max() + 1)
            labels[i, placed] = kind
            placed += 1
        images[i] = np.clip(image, 0, 1)
    return {"images": images, "boxes": boxes, "labels": labels, "masks": masks}
