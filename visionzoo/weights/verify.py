"""The parity harness behind ``visionzoo verify``, the tests and users.

``verify("timm:<name>")``: build the timm model, re-draw every tensor, save its state
dict, load it through the public checkpoint path into our model and compare outputs
on a random input.

``verify("<fixture>.npz")``: a ``../shared/parity``-format fixture: build our model
from the official constructor arguments in its ``.json``, load its ``param/*``
tensors through the public path, run ``input`` and compare to ``output`` (and to every
``output_stageK``, against ``pyramid_outputs["P{K+1}"]``).

The pass mark is max|diff| <= 1e-4 * max|ref| per output, or the fixture's own
``tolerance_per_output``/``tolerance``.
"""

import dataclasses
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

REL_TOL = 1e-4


@dataclasses.dataclass
class Row:
    output: str
    shape: tuple
    max_abs: float
    ref_max: float
    tol: float

    @property
    def rel(self):
        return self.max_abs / max(self.ref_max, 1e-30)

    @property
    def ok(self):
        return bool(self.max_abs <= self.tol)


@dataclasses.dataclass
class VerifyResult:
    target: str
    backend: str
    rows: list

    @property
    def ok(self):
        return all(r.ok for r in self.rows) and bool(self.rows)

    def table(self):
        lines = [f"verify {self.target} on backend {self.backend}",
                 f"  {'output':<16}{'shape':<20}{'max|diff|':>12}{'max|ref|':>12}"
                 f"{'rel':>11}{'tol':>11}  ok"]
        for r in self.rows:
            lines.append(f"  {r.output:<16}{str(r.shape):<20}{r.max_abs:>12.3e}"
                         f"{r.ref_max:>12.3e}{r.rel:>11.2e}{r.tol:>11.2e}  "
                         f"{'yes' if r.ok else 'NO'}")
        lines.append("PASS" if self.ok else "FAIL")
        return "\n".join(lines)


def _row(name, ours, ref, tol=None):
    ours = np.asarray(ours, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if ours.shape != ref.shape:
        raise AssertionError(f"{name}: our shape {ours.shape} != reference {ref.shape}")
    ref_max = float(np.max(np.abs(ref)))
    max_abs = float(np.max(np.abs(ours - ref)))
    return Row(name, ref.shape, max_abs, ref_max, REL_TOL * ref_max if tol is None else tol)


def _timm_reference(name, size, seed, batch):
    """Run the torch side in-process when that is safe, else in a subprocess."""
    safe = "torchvision" in sys.modules or "tensorflow" not in sys.modules
    if safe:
        from visionzoo.weights.timm_reference import reference

        x, y, state, _ = reference(name, size, seed, batch=batch)
        return x, y, state
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "ref.npz")
        cmd = [sys.executable, "-m", "visionzoo.weights.timm_reference", name, out,
               "--seed", str(seed), "--batch", str(batch)]
        if size:
            cmd += ["--size", str(size[0]), str(size[1])]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"The timm reference for {name} failed:\n{proc.stderr[-2000:]}")
        with np.load(out) as data:
            x, y = data["input"], data["output"]
            state = {k[6:]: data[k] for k in data.files if k.startswith("param/")}
    return x, y, state


def verify_timm(name, size=None, seed=0, batch=2):
    import keras

    from visionzoo.registry import get_variant, list_models
    from visionzoo.weights import load_checkpoint

    base = name.split(".")[0]
    matches = [n for n in list_models() if get_variant(n).timm == base]
    if not matches:
        v = get_variant(base)  # raises with suggestions for unknown names
        raise ValueError(
            f"{v.name} has no exact timm counterpart: "
            + getattr(v.module, "TIMM_NOTES", {}).get(v.name, "timm does not provide it."))
    ours = base if base in matches else matches[0]
    variant = get_variant(ours)
    x, y, state = _timm_reference(base, size, seed, batch)
    overrides = getattr(variant.module, "timm_overrides", lambda c: {})(variant.config)
    model = variant.module.build(dict(variant.config, **overrides),
                                 input_shape=(x.shape[2], x.shape[3], x.shape[1]),
                                 num_classes=y.shape[-1], name=ours)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, f"{base}.safetensors")
        from safetensors.numpy import save_file

        save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, path)
        load_checkpoint(model, path)
    out = model.predict(np.transpose(x, (0, 2, 3, 1)), verbose=0)
    return VerifyResult(f"timm:{base}", keras.backend.backend(), [_row("output", out, y)])


def verify_fixture(path):
    import keras

    from visionzoo.registry import FAMILY_MODULES
    from visionzoo.weights import load_checkpoint

    meta_path = os.path.splitext(path)[0] + ".json"
    with open(meta_path) as f:
        meta = json.load(f)
    repo = meta["reference"]["repo"].rstrip("/")
    family = None
    import importlib

    for name in FAMILY_MODULES:
        module = importlib.import_module(name)
        if any(repo.endswith(r) for r in getattr(module, "OFFICIAL_REPOS", ())):
            family = module
            break
    if family is None:
        raise ValueError(f"No visionzoo family ports {repo} (fixture {path}).")
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    hook = getattr(family, "verify_fixture", None)
    if hook is not None:  # multi-input models (DiT: latents, timesteps, labels)
        rows = [_row(k, ours, ref, tol) for k, ours, ref, tol in hook(arrays, meta)]
        return VerifyResult(os.path.basename(path), keras.backend.backend(), rows)
    x = arrays["input"]
    nchw = "NCHW" in meta.get("input_layout", "NCHW")[:12]
    x_nhwc = np.transpose(x, (0, 2, 3, 1)) if nchw else x
    kwargs = family.from_official_config(meta["config"])
    model = family.MODEL_CLASS(**kwargs, input_shape=x_nhwc.shape[1:],
                               name=os.path.basename(os.path.splitext(path)[0]))
    load_checkpoint(model, path)
    stage_keys = sorted(k for k in arrays if k.startswith("output_stage"))
    outputs = {"output": model.output}
    for k in stage_keys:
        outputs[k] = model.pyramid_outputs[f"P{int(k[len('output_stage'):]) + 1}"]
    probe = keras.Model(model.inputs, outputs)
    got = probe.predict(x_nhwc, verbose=0)
    tols = meta.get("tolerance_per_output", {})
    descriptions = meta.get("outputs", {})
    rows = []
    for k in ["output"] + stage_keys:
        ours = np.asarray(got[k])
        ref = arrays[k]
        if ours.ndim == 4 and "NCHW" in descriptions.get(k, ""):
            ours = np.transpose(ours, (0, 3, 1, 2))
        elif ours.ndim == 4 and ref.ndim == 3:  # reference kept tokens (B, H*W, C)
            ours = ours.reshape(ours.shape[0], -1, ours.shape[-1])
        tol = tols.get(k, meta.get("tolerance"))
        rows.append(_row(k, ours, ref, tol))
    return VerifyResult(os.path.basename(path), keras.backend.backend(), rows)


def verify(target, size=None, seed=0, verbose=True, batch=2):
    """Check one target; returns a :class:`VerifyResult` (``.ok``, ``.table()``).

    ``size`` (H, W) and ``batch`` set the random input of a ``timm:`` target (default:
    the model's own input size, two images); a fixture brings its own input.
    """
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}.")
    if target.startswith("timm:"):
        result = verify_timm(target[len("timm:"):], size=size, seed=seed, batch=batch)
    elif target.endswith(".npz"):
        if not os.path.exists(target):
            raise FileNotFoundError(f"No fixture at {target!r}.")
        result = verify_fixture(target)
    else:
        raise ValueError(f"Unknown verify target {target!r}: expected 'timm:<model>' or a "
                         "fixture .npz path.")
    if verbose:
        print(result.table())
    return result
