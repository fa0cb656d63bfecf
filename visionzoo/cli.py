"""``visionzoo`` command line: thin wrappers over the library.

    visionzoo list [PATTERN]
    visionzoo info NAME
    visionzoo verify TARGET [--size H W] [--seed N] [--batch N]
    visionzoo export NAME --format tflite [--quantize fp16|dynamic|int8] [--input-size H W]
                     [--batch-size N]
    visionzoo demo [--epochs N] [--out DIR]
    visionzoo train NAME --data tfds:NAME|FOLDER|FILE.npz [--epochs N] [--batch-size B]
                    [--image-size S] [--lr LR] [--weights TAG] [--out DIR] [...]
    visionzoo bench NAME... [--batch 8] [--vs timm|diffusers]
    visionzoo predict --task restore NAME IN.png --out OUT.png [--weights TAG|PATH]
    visionzoo predict --task detect|segment MODEL.keras IN.png --out OUT.png
                      [--score-threshold 0.3] [--classes a,b,c] [--resize stretch|letterbox]
"""

import argparse
import json
import os
import sys


def _cmd_list(args):
    from visionzoo.registry import list_models

    for name in list_models(args.pattern, pretrained=args.pretrained):
        print(name)
    return 0


def _cmd_info(args):
    from visionzoo.registry import model_info

    print(json.dumps(model_info(args.name, compute=not args.no_compute), indent=2,
                     default=str))
    return 0


def _cmd_verify(args):
    from visionzoo.weights.verify import verify

    result = verify(args.target, size=tuple(args.size) if args.size else None, seed=args.seed,
                    batch=args.batch)
    return 0 if result.ok else 1


def _cmd_export(args):
    from visionzoo.export import export_cli

    return export_cli(args)


def _cmd_demo(args):
    from visionzoo.training.demo import run_demo

    return run_demo(args)


def _cmd_train(args):
    from visionzoo.training.finetune import train_cli

    return train_cli(args)


def _cmd_bench(args):
    from visionzoo.bench import bench_cli

    return bench_cli(args)


def _load_head_model(path, task):
    """A saved Detector/Segmenter from ``path``; a clear error for registry names."""
    import keras

    from visionzoo.registry import FAMILY_MODULES, UnknownModelError, get_variant

    kind = "detector" if task == "detect" else "segmenter"
    if not os.path.exists(path):
        try:
            get_variant(path)
        except UnknownModelError:
            raise FileNotFoundError(f"{path}: no such file (--task {task} takes a .keras "
                                    f"file saved from a {kind})") from None
        raise ValueError(
            f"{path} is a registered model name, and the registry has no pretrained "
            f"detection or segmentation checkpoints. --task {task} needs a .keras file "
            f"saved from a {kind}: train one with visionzoo.create_{kind}(...) and "
            f"model.save('{kind}.keras'), or run `python examples/shapes_detect_segment.py "
            f"--out shapes_run`, which writes shapes_run/{kind}.keras.")
    import importlib

    for module in FAMILY_MODULES:  # registers every backbone class for deserialising
        importlib.import_module(module)
    from visionzoo.heads import Detector, Segmenter

    model = keras.models.load_model(path, compile=False)
    wanted = Detector if task == "detect" else Segmenter
    if not isinstance(model, wanted):
        raise ValueError(f"{path} holds a {type(model).__name__}, not a {wanted.__name__} "
                         f"(--task {task}).")
    return model


def _class_names(model, args):
    if args.classes:
        names = [n.strip() for n in args.classes.split(",")]
        if len(names) != model.num_classes:
            raise ValueError(f"--classes has {len(names)} names; the model has "
                             f"{model.num_classes} classes.")
        return names
    return getattr(model, "class_names", None)


def _predict_heads(args):
    import numpy as np

    from visionzoo.heads import draw

    cv2 = draw.require_cv2()
    bgr = cv2.imread(args.image, cv2.IMREAD_COLOR)
    if bgr is None:
        raise FileNotFoundError(f"{args.image}: cannot read this image")
    image = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    model = _load_head_model(args.name, args.task)
    names = _class_names(model, args)
    size = draw.model_input_size(model)
    h, w = image.shape[:2]
    print(f"{args.image}: {w}x{h}, {args.resize} to the model's {size[1]}x{size[0]}")
    if args.task == "detect":
        threshold = 0.3 if args.score_threshold is None else args.score_threshold
        out = draw.detect_image(model, image, resize=args.resize, normalize=args.normalize)
        picture = draw.draw_detections(image, out, class_names=names,
                                       score_threshold=threshold)
        keep = (out["labels"] >= 0) & (out["scores"] >= threshold)
        print(f"{int(keep.sum())} detections with score >= {threshold:g} "
              "(class, score, x1 y1 x2 y2 in image pixels):")
        for box, score, label in zip(out["boxes"][keep], out["scores"][keep],
                                     out["labels"][keep]):
            name = names[label] if names else str(label)
            print(f"  {name:<16} {score:.3f}  " + " ".join(f"{v:.1f}" for v in box))
    else:
        mask = draw.segment_image(model, image, resize=args.resize, normalize=args.normalize)
        picture = draw.draw_mask(image, mask, class_names=names, alpha=args.alpha,
                                 background=None if args.tint_background else 0)
        counts = np.bincount(mask.ravel(), minlength=model.num_classes)
        print("class pixel shares:")
        for c in np.argsort(-counts, kind="stable"):
            if counts[c]:
                name = names[c] if names else str(c)
                print(f"  {name:<16} {100.0 * counts[c] / mask.size:6.2f} %")
    if not cv2.imwrite(args.out, cv2.cvtColor(picture, cv2.COLOR_RGB2BGR)):
        raise ValueError(f"{args.out}: cannot write this file (unknown extension?)")
    print(f"wrote {args.out}")
    return 0


def _cmd_predict(args):
    if args.task in ("detect", "segment"):
        return _predict_heads(args)
    import numpy as np
    from PIL import Image

    from visionzoo.registry import create_model, get_variant

    variant = get_variant(args.name)
    if variant.task != "restoration" or not hasattr(variant.module, "restore"):
        raise ValueError(f"{args.name} is a {variant.task} model; --task restore needs a "
                         "restoration model (visionzoo list with task 'restoration').")
    module = variant.module
    image = np.asarray(Image.open(args.image).convert("RGB"), np.float32) / 255.0
    # Build once at the padded size the official evaluation would use.
    padded, _ = module.pad_for_model(image, module.size_multiple(**variant.config))
    model = create_model(args.name, weights=args.weights,
                         input_shape=(padded.shape[0], padded.shape[1], 3))
    out = module.restore(model, image)
    Image.fromarray((np.clip(out, 0, 1) * 255 + 0.5).astype(np.uint8)).save(args.out)
    print(f"{args.out}: restored {image.shape[1]}x{image.shape[0]} image with {args.name}")
    return 0


def build_parser():
    p = argparse.ArgumentParser(prog="visionzoo", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("list", help="list model names")
    s.add_argument("pattern", nargs="?", default=None, help="glob, e.g. 'caformer_*'")
    s.add_argument("--pretrained", action="store_true", help="only models with weights")
    s.set_defaults(func=_cmd_list)

    s = sub.add_parser("info", help="parameters, GMACs, preprocessing, weight sources")
    s.add_argument("name")
    s.add_argument("--no-compute", action="store_true", help="table data only (no build)")
    s.set_defaults(func=_cmd_info)

    s = sub.add_parser("verify", help="parity against timm or an official fixture")
    s.add_argument("target", help="timm:<model> or a fixture .npz")
    s.add_argument("--size", nargs=2, type=int, metavar=("H", "W"), default=None)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--batch", type=int, default=2, help="images in the random input (timm:)")
    s.set_defaults(func=_cmd_verify)

    s = sub.add_parser("export", help="export a model to TFLite (builtin ops only)")
    s.add_argument("name")
    s.add_argument("--format", default="tflite", choices=["tflite"])
    s.add_argument("--quantize", default=None, choices=["fp16", "dynamic", "int8"])
    s.add_argument("--input-size", nargs=2, type=int, metavar=("H", "W"), default=None)
    s.add_argument("--batch-size", type=int, default=None,
                   help="fixed batch (e.g. 1: fewer ops, faster on device); default dynamic")
    s.add_argument("--weights", default=None, help="weights tag or checkpoint path")
    s.add_argument("--num-classes", type=int, default=1000)
    s.add_argument("--out", default=None, help="output .tflite path")
    s.set_defaults(func=_cmd_export)

    s = sub.add_parser("demo", help="fine-tune on digits, export TFLite, run it")
    s.add_argument("--epochs", type=int, default=None)
    s.add_argument("--out", default="visionzoo_demo", help="output folder")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=_cmd_demo)

    from visionzoo.training.finetune import add_train_arguments

    s = sub.add_parser("train", help="fine-tune a model on your images (tfds, folder, npz); "
                                     "resumable; exports .keras and TFLite")
    add_train_arguments(s)
    s.set_defaults(func=_cmd_train)

    s = sub.add_parser("bench", help="img/s on this backend (and timm's with --vs timm)")
    s.add_argument("names", nargs="+")
    s.add_argument("--batch", type=int, default=8)
    s.add_argument("--size", type=int, default=None, help="input side (default: model's)")
    s.add_argument("--repeats", type=int, default=10)
    s.add_argument("--vs", default=None, choices=["timm", "diffusers"],
                   help="also time the reference: timm, or diffusers for DiT")
    s.add_argument("--csv", default=None, help="append results to this CSV")
    s.add_argument("--jit-compile", dest="jit_compile", action="store_true", default=None,
                   help="set our model's jit_compile (torch: torch.export graph + "
                        "torch.compile)")
    s.set_defaults(func=_cmd_bench)

    s = sub.add_parser("predict", help="run a model on an image (restore, detect, segment)")
    s.add_argument("--task", required=True, choices=["restore", "detect", "segment"])
    s.add_argument("name", metavar="MODEL",
                   help="restore: a restoration model name (e.g. maxim_s3); detect/segment: "
                        "a .keras file saved from a Detector/Segmenter")
    s.add_argument("image", help="input image file")
    s.add_argument("--out", required=True, help="output image file")
    s.add_argument("--weights", default=None, help="restore: weights tag (e.g. sidd) or "
                                                   "checkpoint path")
    s.add_argument("--score-threshold", type=float, default=None,
                   help="detect: draw and list detections scoring at least this (0.3)")
    s.add_argument("--classes", default=None,
                   help="detect/segment: comma-separated class names, in class-id order "
                        "(segment: including the background class 0)")
    s.add_argument("--resize", default="stretch", choices=["stretch", "letterbox"],
                   help="detect/segment: fit the image to the model's input size by "
                        "stretching (default) or letterboxing; results are mapped back to "
                        "the original image")
    s.add_argument("--normalize", default="unit", choices=["unit", "imagenet"],
                   help="detect/segment: pixels in [0, 1] (default; the shapes example) or "
                        "ImageNet mean/std, as the model was trained")
    s.add_argument("--alpha", type=float, default=0.5, help="segment: mask opacity")
    s.add_argument("--tint-background", action="store_true",
                   help="segment: also colour class 0 (left untinted by default)")
    s.set_defaults(func=_cmd_predict)
    return p


def main(argv=None):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # quiet TensorFlow's C++ logging
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, RuntimeError, ImportError) as e:
        print(f"visionzoo {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
