"""Checkpoint readers. None of them executes pickled code.

- ``.safetensors``: the ``safetensors`` numpy reader.
- ``.npz``: ``numpy.load(allow_pickle=False)``.
- ``.pth``/``.pt``/``.bin``/``.pth.tar``/``.ckpt``: ``torch.load(weights_only=True)``
  (PyTorch's restricted unpickler: tensors and plain containers only).
"""

import os
import zipfile

import numpy as np

TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".pth.tar", ".tar", ".ckpt")
# Nested containers that training scripts wrap state dicts in, most specific first.
_WRAPPER_KEYS = ("state_dict", "model", "module", "state_dict_ema", "model_ema")


class CheckpointReadError(ValueError):
    """The file is not a checkpoint we can read safely."""


def _to_numpy(value):
    if isinstance(value, np.ndarray):
        return value
    # torch.Tensor without importing torch at module level.
    value = value.detach().cpu()
    if str(value.dtype) in ("torch.bfloat16", "torch.float16"):
        value = value.float()
    return value.numpy()


def _unwrap(obj, path):
    if not isinstance(obj, dict):
        raise CheckpointReadError(f"{path}: expected a dict of tensors, got {type(obj).__name__}.")
    for key in _WRAPPER_KEYS:
        if key in obj and isinstance(obj[key], dict) and obj[key]:
            return _unwrap(obj[key], path)
    tensors = {}
    for key, value in obj.items():
        if hasattr(value, "shape") and hasattr(value, "dtype"):
            tensors[str(key)] = value
    if not tensors:
        raise CheckpointReadError(f"{path}: no tensors found (top-level keys: {list(obj)[:10]}).")
    # DataParallel checkpoints prefix every key with "module.".
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return tensors


def read_torch(path):
    try:
        import torch
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            f"Reading {os.path.basename(path)} needs PyTorch (pip install torch); "
            "or convert the checkpoint to .safetensors first.") from e
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as e:
        raise CheckpointReadError(f"{path}: not a readable PyTorch checkpoint ({e}).") from e
    except Exception as e:  # torch raises UnpicklingError for unsafe content
        if type(e).__name__ == "UnpicklingError":
            raise CheckpointReadError(
                f"{path}: refused to unpickle it; it holds more than tensors and plain "
                f"containers (weights_only=True): {str(e).splitlines()[0]}") from e
        raise
    return {k: np.asarray(_to_numpy(v), dtype=np.float32) if _is_float(v) else _to_numpy(v)
            for k, v in _unwrap(obj, path).items()}


def _is_float(value):
    return "float" in str(value.dtype)


def read_safetensors(path):
    from safetensors.numpy import load_file

    try:
        return dict(load_file(path))
    except Exception as e:
        raise CheckpointReadError(f"{path}: not a readable safetensors file ({e}).") from e


def read_npz(path, prefix=None):
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (ValueError, OSError, zipfile.BadZipFile) as e:
        raise CheckpointReadError(f"{path}: not a readable .npz file ({e}).") from e
    if prefix:
        arrays = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
    return arrays


def read_checkpoint(path):
    """Read a checkpoint file into ``{name: numpy array}``."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No checkpoint file at {path!r}.")
    lower = path.lower()
    if lower.endswith(".safetensors"):
        return read_safetensors(path)
    if lower.endswith(".npz"):
        arrays = read_npz(path)
        # The parity-fixture format keeps the official state dict under "param/".
        if any(k.startswith("param/") for k in arrays):
            arrays = {k[len("param/"):]: v for k, v in arrays.items() if k.startswith("param/")}
        return arrays
    if lower.endswith(TORCH_SUFFIXES):
        return read_torch(path)
    raise CheckpointReadError(
        f"{path}: unknown checkpoint type; expected .safetensors, .npz, .weights.h5 or a "
        f"PyTorch file ({', '.join(TORCH_SUFFIXES)}).")
