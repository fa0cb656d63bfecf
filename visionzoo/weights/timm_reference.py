"""Build a timm model with every tensor re-drawn at random and record its output.

Runs in the torch world only (no Keras/TensorFlow import), so it can be called in a
subprocess from a TensorFlow-backend process: with TF 2.21 + torchvision 0.29,
importing TensorFlow before torchvision crashes the interpreter.

    python -m visionzoo.weights.timm_reference MODEL OUT.npz [--size H W] [--seed S] [--batch N]

The ``.npz`` holds ``input`` (NCHW), ``output`` and ``param/<state_dict key>``.
"""

import argparse

import numpy as np


def randomize_(model, seed):
    """Re-draw every float parameter and (persistent) buffer so no block is a no-op.

    Matrices/kernels: N(0, 1/sqrt(fan_in)). Vectors named like gains or scales
    (``*.weight`` of norms, ``*scale*``, ``gamma``): U(0.5, 1.5). Other vectors
    (biases, BatchNorm running means): N(0, 0.1); BatchNorm running variances
    U(0.5, 1.5).
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        persistent = set(model.state_dict())
        tensors = list(model.named_parameters()) + list(model.named_buffers())
        for name, t in tensors:
            if not t.is_floating_point() or name not in persistent:
                # Non-persistent buffers (Swin's attention masks, coordinate tables)
                # are derived from the architecture, not weights: keep them.
                continue
            if t.ndim >= 2:
                fan_in = max(int(np.prod(t.shape[1:])), 1)
                t.copy_(torch.randn(t.shape, generator=gen) / fan_in ** 0.5)
            elif (name.endswith(("weight", "running_var")) or "scale" in name
                  or "gamma" in name):
                t.copy_(torch.rand(t.shape, generator=gen) + 0.5)
            else:
                t.copy_(torch.randn(t.shape, generator=gen) * 0.1)


def reference(model_name, size=None, seed=0, batch=2):
    """Return ``(input_nchw, output, state_dict_numpy, pretrained_cfg)``."""
    import timm
    import torch

    model = timm.create_model(model_name, pretrained=False)
    cfg = dict(model.pretrained_cfg)
    h, w = size or cfg["input_size"][1:]
    if (h, w) != tuple(cfg["input_size"][1:]) and _takes_img_size(model):
        # Models whose buffers depend on the grid (Swin's windows and masks) are
        # built for the size they will run at, as timm.create_model(img_size=...) does.
        model = timm.create_model(model_name, pretrained=False, img_size=(h, w))
    model.eval()
    randomize_(model, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn((batch, 3, h, w), generator=gen)
    with torch.no_grad():
        y = model(x)
    state = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    return x.numpy(), y.numpy(), state, cfg


def _takes_img_size(model):
    import inspect

    return "img_size" in inspect.signature(type(model).__init__).parameters


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("out")
    p.add_argument("--size", nargs=2, type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=2)
    args = p.parse_args(argv)
    x, y, state, _ = reference(args.model, args.size, args.seed, batch=args.batch)
    np.savez(args.out, input=x, output=y, **{f"param/{k}": v for k, v in state.items()})


if __name__ == "__main__":
    main()
