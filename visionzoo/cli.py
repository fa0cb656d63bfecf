"""``visionzoo`` command line: thin wrappers over the library.

    visionzoo list [PATTERN]
    visionzoo info NAME
    visionzoo verify TARGET [--size H W] [--seed N]
    visionzoo export NAME --format tflite [--quantize fp16|int8] [--input-size H W]
    visionzoo demo [--epochs N] [--out DIR]
    visionzoo bench NAME... [--batch 8] [--vs timm]
    visionzoo predict --task restore NAME IN.png --out OUT.png [--weights TAG|PATH]
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

    result = verify(args.target, size=tuple(args.size) if args.size else None, seed=args.seed)
    return 0 if result.ok else 1


def _cmd_export(args):
    from visionzoo.export import export_cli

    return export_cli(args)


def _cmd_demo(args):
    from visionzoo.training.demo import run_demo

    return run_demo(args)


def _cmd_bench(args):
    from visionzoo.bench import bench_cli

    return bench_cli(args)


def _cmd_predict(args):
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
    s.set_defaults(func=_cmd_verify)

    s = sub.add_parser("export", help="export a model to TFLite (builtin ops only)")
    s.add_argument("name")
    s.add_argument("--format", default="tflite", choices=["tflite"])
    s.add_argument("--quantize", default=None, choices=["fp16", "int8"])
    s.add_argument("--input-size", nargs=2, type=int, metavar=("H", "W"), default=None)
    s.add_argument("--weights", default=None, help="weights tag or checkpoint path")
    s.add_argument("--num-classes", type=int, default=1000)
    s.add_argument("--out", default=None, help="output .tflite path")
    s.set_defaults(func=_cmd_export)

    s = sub.add_parser("demo", help="fine-tune on digits, export TFLite, run it")
    s.add_argument("--epochs", type=int, default=None)
    s.add_argument("--out", default="visionzoo_demo", help="output folder")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=_cmd_demo)

    s = sub.add_parser("bench", help="img/s on this backend (and timm's with --vs timm)")
    s.add_argument("names", nargs="+")
    s.add_argument("--batch", type=int, default=8)
    s.add_argument("--size", type=int, default=None, help="input side (default: model's)")
    s.add_argument("--repeats", type=int, default=10)
    s.add_argument("--vs", default=None, choices=["timm"])
    s.add_argument("--csv", default=None, help="append results to this CSV")
    s.set_defaults(func=_cmd_bench)

    s = sub.add_parser("predict", help="run a model on an image (--task restore)")
    s.add_argument("--task", required=True, choices=["restore"])
    s.add_argument("name", help="a restoration model, e.g. maxim_s3")
    s.add_argument("image", help="input image file")
    s.add_argument("--out", required=True, help="output image file")
    s.add_argument("--weights", default=None, help="weights tag (e.g. sidd) or checkpoint path")
    s.set_defaults(func=_cmd_predict)
    return p


def main(argv=None):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # quiet TensorFlow's C++ logging
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"visionzoo {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
