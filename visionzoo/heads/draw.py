"""Drawing detections and masks with OpenCV, and running a detector or segmenter on one
image of any size.

    from visionzoo.heads import draw
    out = draw.detect_image(detector, image)            # boxes in `image` pixels
    picture = draw.draw_detections(image, out, class_names=["cat", "dog"])
    mask = draw.segment_image(segmenter, image)         # (H, W) int32 at `image` size
    picture = draw.draw_mask(image, mask, class_names=["background", "cat", "dog"])

Images are RGB ``(H, W, 3)`` numpy arrays, ``uint8`` or float in ``[0, 1]``; the drawing
functions return new ``uint8`` RGB arrays (the input is not modified).

OpenCV is an optional dependency: ``pip install visionzoo[heads]``
(``opencv-python-headless``).
"""

import colorsys

import numpy as np


def require_cv2():
    try:
        import cv2
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("visionzoo.heads.draw needs OpenCV: pip install 'visionzoo[heads]' "
                          "(or pip install opencv-python-headless).") from e
    return cv2


def class_colors(n):
    """``(n, 3)`` uint8 RGB colours, well apart in hue (golden-ratio steps) and alternating
    in brightness, the same for every call."""
    colors = []
    for i in range(n):
        hue = (0.07 + i * 0.6180339887) % 1.0
        value = 1.0 if i % 2 == 0 else 0.78
        colors.append(colorsys.hsv_to_rgb(hue, 0.85, value))
    return (np.asarray(colors, np.float64).reshape(-1, 3) * 255 + 0.5).astype(np.uint8)


def to_uint8(image):
    """An ``(H, W, 3)`` RGB image as a contiguous ``uint8`` copy (floats are read as
    ``[0, 1]``)."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"Expected an RGB image (H, W, 3), got shape {image.shape}.")
    if image.dtype == np.uint8:
        return np.ascontiguousarray(image).copy()
    if not np.issubdtype(image.dtype, np.floating):
        raise ValueError(f"Expected uint8 or float [0, 1] pixels, got {image.dtype}.")
    return (np.clip(image, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)


def _name(class_names, label):
    if class_names is not None and 0 <= label < len(class_names):
        return str(class_names[label])
    return str(label)


def _text_color(rgb):
    luminance = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    return (0, 0, 0) if luminance > 140 else (255, 255, 255)


def _font_scale(image):
    return float(np.clip(min(image.shape[:2]) / 900.0, 0.35, 1.0))


def detections_as_rows(detections):
    """One image's detections as ``(D, 6)`` float rows ``x1, y1, x2, y2, score, label``.

    Accepts a :meth:`Detector.predict`-style dict for one image (``boxes (D, 4)``,
    ``scores (D,)``, ``labels (D,)``; a leading batch axis of 1 is dropped) or decoder
    rows ``(D, 6)``. Padding rows (label < 0 or score <= 0) are removed.
    """
    if isinstance(detections, dict):
        boxes = np.asarray(detections["boxes"], np.float64)
        scores = np.asarray(detections["scores"], np.float64)
        labels = np.asarray(detections.get("labels", detections.get("classes")), np.float64)
        if boxes.ndim == 3:
            if boxes.shape[0] != 1:
                raise ValueError("Pass the detections of one image (got a batch of "
                                 f"{boxes.shape[0]}).")
            boxes, scores, labels = boxes[0], scores[0], labels[0]
        rows = np.concatenate([boxes.reshape(-1, 4), scores.reshape(-1, 1),
                               labels.reshape(-1, 1)], 1)
    else:
        rows = np.asarray(detections, np.float64)
        if rows.ndim == 3 and rows.shape[0] == 1:
            rows = rows[0]
        if rows.ndim != 2 or rows.shape[1] != 6:
            raise ValueError(f"Expected (D, 6) detection rows, got shape {rows.shape}.")
    return rows[(rows[:, 5] >= 0) & (rows[:, 4] > 0)]


def draw_detections(image, detections, class_names=None, score_threshold=0.3,
                    thickness=None, colors=None):
    """Boxes with ``"name score"`` labels, one colour per class.

    Args:
        image: ``(H, W, 3)`` RGB, uint8 or float ``[0, 1]``.
        detections: one image's ``{"boxes", "scores", "labels"}`` (xyxy pixel-edge
            coordinates in this image) or ``(D, 6)`` rows; -1 padding is skipped.
        class_names: sequence of names indexed by label, or None (numbers).
        score_threshold: draw detections with ``score >= score_threshold``.
        thickness: line width in pixels (default from the image size).
        colors: ``(C, 3)`` uint8 RGB, or None for :func:`class_colors`.

    Returns:
        ``(H, W, 3)`` uint8 RGB.
    """
    cv2 = require_cv2()
    out = to_uint8(image)
    h, w = out.shape[:2]
    rows = detections_as_rows(detections)
    rows = rows[rows[:, 4] >= score_threshold]
    rows = rows[np.argsort(rows[:, 4], kind="stable")]  # best drawn last (on top)
    n_colors = max(int(rows[:, 5].max()) + 1 if len(rows) else 1,
                   len(class_names) if class_names is not None else 1)
    palette = class_colors(n_colors) if colors is None else np.asarray(colors, np.uint8)
    thickness = thickness or max(1, round(min(h, w) / 300))
    scale = _font_scale(out)
    font = cv2.FONT_HERSHEY_SIMPLEX
    for x1, y1, x2, y2, score, label in rows:
        label = int(label)
        color = tuple(int(c) for c in palette[label % len(palette)])
        # Pixel-edge box [x1, x2) -> the first and last covered pixel.
        p1 = (int(np.clip(round(x1), 0, w - 1)), int(np.clip(round(y1), 0, h - 1)))
        p2 = (int(np.clip(round(x2) - 1, 0, w - 1)), int(np.clip(round(y2) - 1, 0, h - 1)))
        if p2[0] < p1[0] or p2[1] < p1[1]:
            continue
        cv2.rectangle(out, p1, p2, color, thickness, lineType=cv2.LINE_8)
        text = f"{_name(class_names, label)} {score:.2f}"
        (tw, th), base = cv2.getTextSize(text, font, scale, 1)
        top = p1[1] - th - base - 2
        if top < 0:  # no room above the box: put the label inside it
            top = p1[1]
        left = min(p1[0], max(w - tw - 2, 0))
        cv2.rectangle(out, (left, top), (left + tw + 2, top + th + base + 2), color, -1)
        cv2.putText(out, text, (left + 1, top + th + 1), font, scale, _text_color(color), 1,
                    lineType=cv2.LINE_AA)
    return out


def draw_mask(image, mask, class_names=None, alpha=0.5, background=0, legend=True,
              colors=None):
    """A colour-coded class mask blended over the image, with class contours and a legend.

    Args:
        image: ``(H, W, 3)`` RGB, uint8 or float ``[0, 1]``.
        mask: ``(h, w)`` int class ids (resized with nearest neighbour if not ``H x W``).
        class_names: names indexed by class id, or None (numbers).
        alpha: opacity of the class colours.
        background: class id left untinted (no contour, no legend entry), or None.
        legend: draw a legend of the classes present (top-left corner).
        colors: ``(C, 3)`` uint8 RGB, or None for :func:`class_colors`.

    Returns:
        ``(H, W, 3)`` uint8 RGB.
    """
    cv2 = require_cv2()
    out = to_uint8(image)
    h, w = out.shape[:2]
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"Expected an (H, W) class mask, got shape {mask.shape}.")
    mask = mask.astype(np.int32)
    if mask.shape != (h, w):
        mask = cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST)
    classes = [int(c) for c in np.unique(mask) if c != background and c >= 0]
    n_colors = max([len(class_names) if class_names is not None else 0]
                   + [c + 1 for c in classes] + [1])
    palette = class_colors(n_colors) if colors is None else np.asarray(colors, np.uint8)
    color_image = palette[np.clip(mask, 0, None) % len(palette)].astype(np.float32)
    tint = (mask != background) & (mask >= 0) if background is not None else mask >= 0
    blended = out.astype(np.float32)
    blended[tint] = (1 - alpha) * blended[tint] + alpha * color_image[tint]
    out = (blended + 0.5).clip(0, 255).astype(np.uint8)
    for c in classes:
        region = (mask == c).astype(np.uint8)
        contours, _ = cv2.findContours(region, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        color = tuple(int(v) for v in palette[c % len(palette)])
        cv2.drawContours(out, contours, -1, color, 1, lineType=cv2.LINE_8)
    if legend and classes:
        scale = _font_scale(out)
        font = cv2.FONT_HERSHEY_SIMPLEX
        (_, th), base = cv2.getTextSize("Ag", font, scale, 1)
        line = th + base + 3
        y = 2
        for c in classes:
            if y + line > h:
                break
            color = tuple(int(v) for v in palette[c % len(palette)])
            text = _name(class_names, c)
            (tw, _), _ = cv2.getTextSize(text, font, scale, 1)
            box_w = th + 6 + tw + 4
            cv2.rectangle(out, (2, y), (2 + box_w, y + line - 1), (0, 0, 0), -1)
            cv2.rectangle(out, (4, y + 2), (4 + th, y + 2 + th), color, -1)
            cv2.putText(out, text, (4 + th + 4, y + th + 1), font, scale, (255, 255, 255), 1,
                        lineType=cv2.LINE_AA)
            y += line
    return out


# --------------------------------------------------------------------------------------
# One image of any size through a fixed-size model
# --------------------------------------------------------------------------------------

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def model_input_size(model):
    """``(H, W)`` the model was built for."""
    shape = (model.inputs[0] if isinstance(model.inputs, list) else model.inputs).shape
    if shape[1] is None or shape[2] is None:
        raise ValueError("The model has no static input size.")
    return int(shape[1]), int(shape[2])


def fit_to_size(image, size, mode="stretch"):
    """Resize a float ``[0, 1]`` RGB image to ``size`` = (H, W) for a fixed-size model.

    ``mode="stretch"`` resizes each axis independently (bilinear; shrinking uses area
    averaging). ``"letterbox"`` keeps the aspect ratio, centres the image and fills the
    border with the image's mean colour.

    Returns:
        ``(resized float32 (H, W, 3), transform)``; ``transform`` = ``(sx, sy, left, top)``
        maps original pixel-edge coordinates to model ones as ``x * sx + left``.
    """
    cv2 = require_cv2()
    image = np.asarray(image, np.float32)
    h0, w0 = image.shape[:2]
    th, tw = size
    if mode == "stretch":
        nw, nh, left, top = tw, th, 0, 0
    elif mode == "letterbox":
        s = min(th / h0, tw / w0)
        nw, nh = max(1, min(tw, round(w0 * s))), max(1, min(th, round(h0 * s)))
        left, top = (tw - nw) // 2, (th - nh) // 2
    else:
        raise ValueError(f"Unknown resize mode {mode!r}; use 'stretch' or 'letterbox'.")
    shrink = nw < w0 and nh < h0
    resized = cv2.resize(image, (nw, nh),
                         interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    if (nh, nw) != (th, tw):
        canvas = np.empty((th, tw, 3), np.float32)
        canvas[:] = image.reshape(-1, 3).mean(0)
        canvas[top:top + nh, left:left + nw] = resized
        resized = canvas
    return resized, (nw / w0, nh / h0, left, top)


def boxes_to_original(boxes, transform, image_shape):
    """Map ``(..., 4)`` xyxy model-input boxes back to the original image (clipped)."""
    sx, sy, left, top = transform
    h, w = image_shape[:2]
    boxes = np.asarray(boxes, np.float64).copy()
    boxes[..., [0, 2]] = np.clip((boxes[..., [0, 2]] - left) / sx, 0, w)
    boxes[..., [1, 3]] = np.clip((boxes[..., [1, 3]] - top) / sy, 0, h)
    return boxes


def _prepare(image, size, resize, normalize):
    pixels = to_uint8(image).astype(np.float32) / 255.0
    x, transform = fit_to_size(pixels, size, resize)
    if normalize == "imagenet":
        x = (x - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)
    elif normalize not in (None, "unit"):
        raise ValueError(f"Unknown normalisation {normalize!r}; use 'unit' or 'imagenet'.")
    return x[None], transform


def detect_image(model, image, resize="stretch", normalize="unit"):
    """Run a :class:`~visionzoo.heads.Detector` on one image of any size.

    The image (uint8 or float ``[0, 1]`` RGB) is resized to the model's input size
    (:func:`fit_to_size`), scaled to ``[0, 1]`` (``normalize="unit"``) or ImageNet
    mean/std (``"imagenet"``); the boxes come back in the original image's pixels.

    Returns:
        ``{"boxes" (D, 4), "scores" (D,), "labels" (D,), "num_detections"}`` for the one
        image, -1 padded as :meth:`Detector.predict`.
    """
    h, w = np.asarray(image).shape[:2]
    x, transform = _prepare(image, model_input_size(model), resize, normalize)
    out = model.predict(x, verbose=0)
    valid = out["labels"][0] >= 0
    boxes = boxes_to_original(out["boxes"][0], transform, (h, w))
    return {"boxes": np.where(valid[:, None], boxes, -1.0).astype(np.float32),
            "scores": out["scores"][0], "labels": out["labels"][0],
            "num_detections": int(out["num_detections"][0])}


def segment_image(model, image, resize="stretch", normalize="unit"):
    """Run a :class:`~visionzoo.heads.Segmenter` on one image of any size: the logits of
    the image's area are resized (bilinear) to the original size, then arg-maxed.

    Returns:
        ``(H, W)`` int32 class ids at the original image size.
    """
    import keras

    h, w = np.asarray(image).shape[:2]
    x, (sx, sy, left, top) = _prepare(image, model_input_size(model), resize, normalize)
    logits = model(x, training=False)["logits"]
    nh, nw = round(h * sy), round(w * sx)
    logits = logits[:, top:top + nh, left:left + nw]
    logits = keras.ops.image.resize(logits, (h, w), interpolation="bilinear", antialias=False)
    return keras.ops.convert_to_numpy(keras.ops.argmax(logits[0], axis=-1)).astype(np.int32)
