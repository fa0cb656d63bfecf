"""Shared test setup.

The torch-side references (torch, torchvision via timm) are imported before anything
imports TensorFlow: with TF 2.21 + torchvision 0.29.1, the other order crashes the
interpreter (seen as exit 139). Keras is imported after them.
"""

import os
import pathlib

try:  # reference implementations first (see the module docstring)
    import torch  # noqa: F401
    import torchvision  # noqa: F401
    import timm  # noqa: F401
except ImportError:  # pragma: no cover - a user clone without test extras
    timm = None

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
PARITY_DIR = pathlib.Path(os.environ.get("VISIONZOO_PARITY_DIR", ROOT.parent / "shared" / "parity"))
BACKEND = keras.backend.backend()


def parity_fixture(name):
    """Path of a ../shared/parity fixture, or skip the test with the reason."""
    path = PARITY_DIR / f"{name}.npz"
    if not path.exists():
        pytest.skip(f"parity fixture {path} not present (it ships beside the project, "
                    "in ../shared/parity, not with the package)")
    return str(path)


def requires_timm():
    if timm is None:
        pytest.skip("timm is not installed (pip install -e '.[test]')")


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(0)
    np.random.seed(0)


@pytest.fixture(autouse=True, scope="module")
def _fresh_session_per_module():
    yield
    keras.backend.clear_session()
