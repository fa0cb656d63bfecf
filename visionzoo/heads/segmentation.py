"""Semantic segmentation: UperNet, Semantic FPN and an all-MLP decoder on any pyramid
backbone, as one trainable Keras model.

    seg = visionzoo.create_segmenter("swin_tiny_patch4_window7_224", num_classes=21,
                                     head="upernet", input_shape=(256, 256, 3))
    seg.fit(images, masks)                  # masks: (B, H, W) int, 255 = ignore
    masks = seg.predict(images)             # (B, H, W) int32 class ids
    logits = seg(images)["logits"]          # (B, H, W, num_classes)

Heads follow the papers' / mmseg's canonical settings:

- ``"upernet"`` (Xiao et al. 2018; Swin's ADE20K setup): pyramid pooling (1, 2, 3, 6) on
  the last level, 1x1 laterals, top-down bilinear adds, 3x3 FPN convs, every level
  resized to the finest and concatenated, 3x3 bottleneck, dropout 0.1, 1x1 classifier;
  512 channels. Optional auxiliary FCN head (256 channels, loss weight 0.4) on the
  second-to-last level.
- ``"fpn"`` (Semantic FPN, Kirillov et al. 2019; PoolFormer's setup): FPN (256), per
  level 3x3 ConvModule(128) + 2x upsampling until stride 4, summed, classified.
- ``"mlp"`` (SegFormer's all-MLP decoder, written from the paper): a 1x1 projection per
  level to 256, resized to the finest level, concatenated, 1x1 fuse + BN + ReLU,
  classifier.

The logits are bilinearly resized to the input size. The loss is cross-entropy that
ignores ``ignore_index`` pixels; ``keras.metrics.MeanIoU`` is the default metric.
"""

import difflib

import keras
from keras import ops

from visionzoo.heads.common import ResizeLike, RestoresCompile, conv_module, pyramid_levels
from visionzoo.heads.necks import fpn, pyramid_pooling

HEADS = ("upernet", "fpn", "mlp")


def upernet_head(features, channels=512, name="decode_head"):
    levels = sorted(features)
    laterals = {lvl: conv_module(features[lvl], channels, 1, f"{name}-lateral{lvl}")
                for lvl in levels[:-1]}
    laterals[levels[-1]] = pyramid_pooling(features[levels[-1]], channels, name=f"{name}-ppm")
    for lower, upper in zip(reversed(levels[:-1]), reversed(levels[1:])):
        up = ResizeLike("bilinear", name=f"{name}-up{upper}")([laterals[upper],
                                                               laterals[lower]])
        laterals[lower] = keras.layers.Add(name=f"{name}-merge{lower}")([laterals[lower], up])
    outs = [conv_module(laterals[lvl], channels, 3, f"{name}-fpn{lvl}") for lvl in levels[:-1]]
    outs.append(laterals[levels[-1]])
    finest = outs[0]
    outs = [outs[0]] + [ResizeLike("bilinear", name=f"{name}-resize{lvl}")([o, finest])
                        for lvl, o in zip(levels[1:], outs[1:])]
    x = keras.layers.Concatenate(name=f"{name}-concat")(outs)
    return conv_module(x, channels, 3, f"{name}-bottleneck")


def semantic_fpn_head(features, channels=128, neck_channels=256, name="decode_head"):
    pyramid = fpn(features, neck_channels, name=f"{name}-neck")
    levels = sorted(pyramid)
    base = levels[0]
    summed = None
    for lvl in levels:
        x = pyramid[lvl]
        steps = max(1, lvl - base)
        for k in range(steps):
            x = conv_module(x, channels, 3, f"{name}-scale{lvl}-{k}")
            if lvl != base:
                target = pyramid[lvl - k - 1]
                x = ResizeLike("bilinear", name=f"{name}-scale{lvl}-up{k}")([x, target])
        summed = x if summed is None else keras.layers.Add(name=f"{name}-sum{lvl}")([summed, x])
    return summed


def mlp_head(features, channels=256, name="decode_head"):
    levels = sorted(features)
    finest = features[levels[0]]
    projected = []
    for lvl in levels:
        x = keras.layers.Conv2D(channels, 1, name=f"{name}-linear{lvl}")(features[lvl])
        projected.append(ResizeLike("bilinear", name=f"{name}-resize{lvl}")([x, finest]))
    x = keras.layers.Concatenate(name=f"{name}-concat")(projected)
    return conv_module(x, channels, 1, f"{name}-fuse")


def fcn_aux_head(x, num_classes, channels=256, dropout=0.1, name="auxiliary_head"):
    x = conv_module(x, channels, 3, f"{name}-conv")
    if dropout:
        x = keras.layers.Dropout(dropout, name=f"{name}-drop")(x)
    return keras.layers.Conv2D(num_classes, 1, name=f"{name}-cls")(x)


class SegmentationLoss:
    """Pixel cross-entropy from logits, averaged over pixels that are not ``ignore_index``."""

    def __init__(self, ignore_index=255):
        self.ignore_index = ignore_index

    def __call__(self, y_true, logits):
        y_true = ops.cast(y_true, "int32")
        if len(y_true.shape) == len(logits.shape):
            y_true = y_true[..., 0]
        valid = ops.cast(ops.not_equal(y_true, self.ignore_index), "float32")
        safe = ops.where(ops.equal(y_true, self.ignore_index), 0, y_true)
        logits = ops.cast(logits, "float32")
        ce = keras.losses.sparse_categorical_crossentropy(safe, logits, from_logits=True)
        return ops.sum(ce * valid) / ops.maximum(ops.sum(valid), 1.0)


@keras.saving.register_keras_serializable(package="visionzoo")
class Segmenter(RestoresCompile, keras.Model):
    """A backbone's pyramid + a decode head (+ optional auxiliary head) -> pixel logits.

    Outputs a dict: ``"logits"`` ``(B, H, W, num_classes)`` at the input size and, with
    ``aux_weight``, ``"aux_logits"``. ``predict`` returns ``(B, H, W)`` int32 class ids.

    Args:
        backbone: a visionzoo backbone with ``pyramid_outputs`` built for a static size.
        num_classes: int.
        head: "upernet", "fpn" or "mlp".
        head_channels: int or None (512 / 128 / 256 by head).
        dropout: float. Before the classifier.
        aux_weight: float or None. Weight of the auxiliary FCN head's loss (UperNet's
            0.4); None: no auxiliary head.
        ignore_index: int. Mask value that takes no part in loss or metric.
        class_names: optional list of ``num_classes`` names (kept in the saved model;
            ``visionzoo predict --task segment`` labels its legend with them).
    """

    def __init__(self, backbone, num_classes, head="upernet", head_channels=None,
                 dropout=0.1, aux_weight=None, ignore_index=255, class_names=None,
                 name="segmenter", **kwargs):
        if head not in HEADS:
            close = difflib.get_close_matches(str(head), HEADS, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"Unknown segmentation head {head!r}; choose one of "
                             f"{HEADS}.{hint}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} names for "
                             f"num_classes={num_classes}.")
        features = pyramid_levels(backbone)
        inputs = backbone.inputs[0] if isinstance(backbone.inputs, list) else backbone.inputs
        p = name  # layer-name prefix: several segmenters can share one backbone graph
        if head == "upernet":
            x = upernet_head(features, head_channels or 512, name=f"{p}-decode_head")
        elif head == "fpn":
            x = semantic_fpn_head(features, head_channels or 128, name=f"{p}-decode_head")
        else:
            x = mlp_head(features, head_channels or 256, name=f"{p}-decode_head")
        if dropout:
            x = keras.layers.Dropout(dropout, name=f"{p}-decode_head-drop")(x)
        x = keras.layers.Conv2D(num_classes, 1, name=f"{p}-decode_head-cls")(x)
        logits = ResizeLike("bilinear", size=inputs.shape[1:3], name=f"{p}-logits_resize")(x)
        logits = keras.layers.Activation("linear", dtype="float32", name=f"{p}-logits")(logits)
        outputs = {"logits": logits}
        if aux_weight:
            levels = sorted(features)
            aux_level = levels[-2] if len(levels) > 1 else levels[-1]
            aux = fcn_aux_head(features[aux_level], num_classes, name=f"{p}-auxiliary_head")
            aux = ResizeLike("bilinear", size=inputs.shape[1:3], name=f"{p}-aux_resize")(aux)
            outputs["aux_logits"] = keras.layers.Activation("linear", dtype="float32",
                                                            name=f"{p}-aux_logits")(aux)
        super().__init__(inputs=inputs, outputs=outputs, name=name, **kwargs)
        self.backbone = backbone
        self.num_classes = num_classes
        self.head = head
        self.head_channels = head_channels
        self.dropout = dropout
        self.aux_weight = aux_weight
        self.ignore_index = ignore_index
        self.class_names = None if class_names is None else [str(c) for c in class_names]
        self._seg_loss = SegmentationLoss(ignore_index)

    def compile(self, optimizer="auto", metrics="auto", **kwargs):
        """Defaults: AdamW(1e-4, weight decay 0.01) and mean IoU over ``num_classes``
        (ignoring ``ignore_index``). The loss is always the masked cross-entropy."""
        if optimizer == "auto":
            optimizer = keras.optimizers.AdamW(1e-4, weight_decay=0.01)
        if metrics == "auto":
            metrics = [keras.metrics.MeanIoU(self.num_classes, name="mean_iou",
                                             ignore_class=self.ignore_index,
                                             sparse_y_pred=False)]
        kwargs.pop("loss", None)
        super().compile(optimizer=optimizer, metrics=metrics, **kwargs)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        loss = self._seg_loss(y, y_pred["logits"])
        if self.aux_weight and "aux_logits" in y_pred:
            loss = loss + self.aux_weight * self._seg_loss(y, y_pred["aux_logits"])
        return loss

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        return super().compute_metrics(x, y, y_pred["logits"], sample_weight)

    def predict_step(self, *args):
        # JAX's trainer passes (state, data) and expects (outputs, state) back.
        if keras.backend.backend() == "jax":
            outputs, state = super().predict_step(*args)
            return ops.cast(ops.argmax(outputs["logits"], axis=-1), "int32"), state
        outputs = super().predict_step(*args)
        return ops.cast(ops.argmax(outputs["logits"], axis=-1), "int32")

    def get_config(self):
        return {"backbone": keras.saving.serialize_keras_object(self.backbone),
                "num_classes": self.num_classes, "head": self.head,
                "head_channels": self.head_channels, "dropout": self.dropout,
                "aux_weight": self.aux_weight, "ignore_index": self.ignore_index,
                "class_names": self.class_names, "name": self.name}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        return cls(**config)


def create_segmenter(backbone, num_classes, head="upernet", input_shape=(512, 512, 3),
                     weights=None, aux_weight="auto", compile=True, **kwargs):
    """A compiled :class:`Segmenter` on a registered backbone name or a backbone model.

    Args:
        backbone: model name (``"swin_tiny_patch4_window7_224"``) or a visionzoo backbone.
        num_classes: int.
        head: "upernet", "fpn" or "mlp".
        input_shape: static (H, W, 3) the backbone is built for (names only).
        weights: backbone weights tag or path (names only), e.g. "in1k".
        aux_weight: "auto" (0.4 for UperNet, None otherwise), a float, or None.
        compile: bool. Compile with the defaults of :meth:`Segmenter.compile`.
        **kwargs: more :class:`Segmenter` arguments.
    """
    if isinstance(backbone, str):
        from visionzoo.registry import create_model

        backbone = create_model(backbone, weights=weights, include_top=False,
                                input_shape=input_shape)
    if aux_weight == "auto":
        aux_weight = 0.4 if head == "upernet" else None
    model = Segmenter(backbone, num_classes, head=head, aux_weight=aux_weight, **kwargs)
    if compile:
        model.compile()
    return model
