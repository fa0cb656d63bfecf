"""Checkpoint readers. None of them executes pickled code.

- ``.safetensors``: the ``safetensors`` numpy reader (bfloat16 widened to float32).
- ``.npz``: ``numpy.load(allow_pickle=False)``.
- ``.pth``/``.pt``/``.bin``/``.pth.tar``/``.ckpt``: ``torch.load(weights_only=True)``
  (PyTorch's restricted unpickler: tensors and plain containers only).
"""

import os
import re
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


def _error_detail(error):
    """The first informative sentence of an exception (torch's are long)."""
    message = re.sub(r"\x1b\[[0-9;]*m", "", str(error))
    match = re.search(r"WeightsUnpickler error:\s*(.+)", message)
    text = match.group(1) if match else message.strip()
    text = text.strip().splitlines()[0].strip() if text.strip() else ""
    sentence = re.split(r"(?<=[.!?])\s", text, maxsplit=1)[0]
    return f"{type(error).__name__}: {sentence or 'no detail'}"


def read_torch(path):
    """Read a ``torch.save`` file with PyTorch's restricted (``weights_only``) unpickler.

    Raises:
        CheckpointReadError: the file is corrupted/truncated/not a torch file, or it
            pickles Python objects other than tensors and plain containers (refused;
            nothing in it is executed).
    """
    try:
        import torch
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            f"Reading {os.path.basename(path)} needs PyTorch (pip install torch); "
            "or convert the checkpoint to .safetensors first.") from e
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupted files surface as many exception types
        if type(e).__name__ == "UnpicklingError" and "Unsupported global" in str(e):
            raise CheckpointReadError(
                f"{path}: refused to unpickle it; it holds Python objects other than "
                "tensors and plain containers, and the safe loader (weights_only=True) "
                f"executes no pickled code ({_error_detail(e)}). Re-save it as a "
                "plain state dict (torch.save(model.state_dict(), ...)) or as "
                ".safetensors.") from e
        raise CheckpointReadError(
            f"{path}: not a readable PyTorch checkpoint; the file is corrupted, truncated "
            f"or not a torch.save file ({_error_detail(e)}).") from e
    return {k: np.asarray(_to_numpy(v), dtype=np.float32) if _is_float(v) else _to_numpy(v)
            for k, v in _unwrap(obj, path).items()}


def _is_float(value):
    return "float" in str(value.dtype)


def read_safetensors(path):
    """Read a ``.safetensors`` file into numpy arrays (bfloat16 is widened to float32).

    Raises:
        CheckpointReadError: the file is corrupted or truncated.
    """
    from safetensors.numpy import load_file

    try:
        return dict(load_file(path))
    except Exception as e:
        if "bfloat16" in str(e):  # numpy has no bfloat16: decode those tensors ourselves
            return _read_safetensors_widening(path)
        raise CheckpointReadError(
            f"{path}: not a readable safetensors file; it is corrupted or truncated "
            f"({e}).") from e


_ST_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64,
              "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
              "BOOL": np.bool_}


def _read_safetensors_widening(path):
    """A small safetensors reader that widens BF16 tensors to float32."""
    import json
    import struct

    with open(path, "rb") as f:
        data = f.read()
    try:
        (n,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8:8 + n])
        body = memoryview(data)[8 + n:]
        out = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            start, end = info["data_offsets"]
            if not 0 <= start <= end <= len(body):
                raise ValueError(f"tensor {name!r} lies outside the file")
            raw = np.frombuffer(body[start:end], dtype=np.uint8)
            if info["dtype"] == "BF16":
                array = (raw.view("<u2").astype(np.uint32) << 16).view(np.float32)
            elif info["dtype"] in _ST_DTYPES:
                array = raw.view(np.dtype(_ST_DTYPES[info["dtype"]]).newbyteorder("<"))
            else:
                raise ValueError(f"tensor {name!r} has unsupported dtype {info['dtype']}")
            out[name] = array.reshape(info["shape"]).copy()
        return out
    except (ValueError, KeyError, TypeError, AttributeError, struct.error) as e:
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
