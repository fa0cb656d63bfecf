"""Shared test setup.

The torch-side references (torch, torchvision via timm) are imported before anything
imports TensorFlow: with TF 2.21 + torchvision 0.29.1, the other order crashes the
interpreter (seen as exit 139). Keras is imported after them.
"""

import os
import pathlib

# Tests compile hundreds of small XLA programs and run each a few times: skipping LLVM's
# optimisation passes halves the JAX run (compilation dominates it). Results are the
# same; only run time per program grows, which tests don't measure.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_backend_optimization_level=0").strip()

# visionzoo.inference autotunes XLA:CPU's library fusion on JAX (three compilations and
# timed calls per input signature): slow here, and meaningless under the flag above. Off
# unless a test turns it on (tests/test_inference.py does, for the tests about it).
os.environ.setdefault("VISIONZOO_XLA_AUTOTUNE", "0")

try:  # reference implementations first (see the module docstring)
    import torch  # noqa: F401
    import torchvision  # noqa: F401
    import timm  # noqa: F401
except ImportError:  # pragma: no cover - a user clone without test extras
    timm = None
try:  # the DTCWT reference (torch world too)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # it imports the deprecated pkg_resources
        import pytorch_wavelets  # noqa: F401
except ImportError:  # pragma: no cover
    pytorch_wavelets = None

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
PARITY_DIR = pathlib.Path(os.environ.get("VISIONZOO_PARITY_DIR", ROOT.parent / "shared" / "parity"))
BACKEND = keras.backend.backend()
# Full-size variants (parity of the larger models, parameter counts, CLI smoke tests)
# are backend-independent facts: checked once, on this backend.
FULL_BACKEND = "torch"


def only_on_full_backend(what="full-size variants are checked"):
    """Skip unless this is the backend that runs the full-size checks."""
    if BACKEND != FULL_BACKEND:
        pytest.skip(f"{what} on the {FULL_BACKEND} backend")


def assert_timm_parity(name, batch=2):
    """``visionzoo verify timm:<name>`` passes (every reference tensor randomised)."""
    requires_timm()
    from visionzoo.weights.verify import verify

    result = verify(f"timm:{name}", verbose=False, batch=batch)
    assert result.ok, result.table()
    return result


def parity_fixture(name):
    """Path of a ../shared/parity fixture, or skip the test with the reason."""
    path = PARITY_DIR / f"{name}.npz"
    if not path.exists():
        pytest.skip(f"parity fixture {path} not present (it ships beside the project, "
                    "in ../shared/parity, not with the package)")
    return str(path)


def published_count_ok(count, text):
    """A parameter count rounds to the published figure ("28", "11.9") at the precision
    it was printed with."""
    digits = len(text.split(".")[1]) if "." in text else 0
    return round(count / 1e6, digits) == float(text)


def check_save_load_and_fit(model, tmp_path, side, num_classes=3, learning_rate=3e-4,
                            fit=True):
    """Shared backbone check: a ``.keras`` round trip gives the same outputs and config,
    and a few ``fit()`` epochs lower the training loss."""
    x = np.random.rand(8, side, side, 3).astype("float32")
    y = np.arange(8) % num_classes
    ref = model.predict(x, verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), ref, atol=1e-5)
    assert loaded.get_config() == model.get_config()
    if not fit:
        return
    model.compile(optimizer=keras.optimizers.AdamW(learning_rate),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    first = model.evaluate(x, y, verbose=0)
    model.fit(x, y, epochs=8, batch_size=8, verbose=0)
    assert model.evaluate(x, y, verbose=0) < first


def requires_timm():
    if timm is None:
        pytest.skip("timm is not installed (pip install -e '.[test]')")


def timm_param_count(name, **kwargs):
    """Parameters of ``timm.create_model(name, **kwargs)``, built on the meta device
    (shapes only: no memory, no initialisation; swin_large 2.8 s -> 0.4 s, caformer_b36
    0.9 s -> 0.4 s)."""
    requires_timm()
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False, **kwargs)
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(0)
    np.random.seed(0)


@pytest.fixture(autouse=True, scope="module")
def _fresh_session_per_module():
    yield
    keras.backend.clear_session()


# --------------------------------------------------------------------------------------
# Per-file run times, for tests/run_backends.py's shard balancing
# --------------------------------------------------------------------------------------

_FILE_SECONDS = {}


def pytest_runtest_logreport(report):
    """Sum setup + call + teardown seconds per test file."""
    path = report.nodeid.split("::")[0]
    _FILE_SECONDS[path] = _FILE_SECONDS.get(path, 0.0) + float(report.duration or 0.0)


def pytest_sessionfinish(session, exitstatus):
    """With ``VISIONZOO_TEST_TIMES_OUT`` set (tests/run_backends.py sets it), write the
    per-file seconds there as JSON."""
    out = os.environ.get("VISIONZOO_TEST_TIMES_OUT")
    if out and _FILE_SECONDS:
        import json

        with open(out, "w") as f:
            json.dump({k: round(v, 1) for k, v in sorted(_FILE_SECONDS.items())}, f)
