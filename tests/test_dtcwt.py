"""The level-1 DTCWT layers: live pytorch-wavelets parity, the official fixture, perfect
reconstruction, serialisation and builtin-only TFLite."""

import json

import numpy as np
import pytest

import keras

from visionzoo.layers.dtcwt import (BIORTHOGONAL_FILTERS, DTCWTForward, DTCWTInverse,
                                    filter_matrix, symmetric_indices)

from conftest import BACKEND, parity_fixture

SIZES = [(2, 5, 32, 32), (1, 3, 17, 23), (1, 2, 6, 10), (2, 4, 56, 56)]


def _pytorch_wavelets():
    try:
        import pytorch_wavelets
    except ImportError:
        pytest.skip("pytorch-wavelets is not installed (pip install -e '.[test]')")
    return pytorch_wavelets


def _np(t):
    return keras.ops.convert_to_numpy(t)


def _to_reference_high(real, imag):
    """Ours (B, h, w, 6, C) x2 -> pytorch_wavelets' (B, C, 6, h, w, 2)."""
    return np.stack([real, imag], -1).transpose(0, 4, 3, 1, 2, 5)


def _from_reference_high(high):
    t = high.transpose(0, 3, 4, 2, 1, 5)
    return t[..., 0], t[..., 1]


def test_symmetric_indices_match_numpy_pad():
    for length, pad in ((5, 2), (6, 9), (3, 7), (1, 4)):
        x = np.arange(length)
        np.testing.assert_array_equal(x[symmetric_indices(length, pad)],
                                      np.pad(x, pad, mode="symmetric"))


def test_filter_matrix_is_symmetric_extension_then_convolution():
    # The JAX/torch form of each 1-D filtering: one (L, L) matrix holding the extension
    # and the taps; lengths shorter than the extension reflect again.
    rng = np.random.default_rng(0)
    for name, taps in BIORTHOGONAL_FILTERS["near_sym_b"].items():
        for length in (56, 28, 9, 4, 1):
            x = rng.standard_normal(length)
            pad = len(taps) // 2
            expected = np.convolve(np.pad(x, pad, mode="symmetric"), taps, mode="valid")
            matrix = filter_matrix(taps, length)
            assert matrix.shape == (length, length) and matrix.dtype == np.float32
            np.testing.assert_allclose(matrix.astype(np.float64) @ x, expected,
                                       atol=1e-6, err_msg=f"{name}, length {length}")


def test_filters_equal_pytorch_wavelets():
    _pytorch_wavelets()
    from pytorch_wavelets.dtcwt.coeffs import biort

    h0o, g0o, h1o, g1o = biort("near_sym_b")
    ours = BIORTHOGONAL_FILTERS["near_sym_b"]
    for name, ref in (("h0o", h0o), ("g0o", g0o), ("h1o", h1o), ("g1o", g1o)):
        np.testing.assert_array_equal(ours[name], np.asarray(ref, np.float64).ravel())


@pytest.mark.parametrize("shape", SIZES)
def test_equals_pytorch_wavelets(shape):
    pw = _pytorch_wavelets()
    import torch

    gen = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(shape, generator=gen)
    xfm = pw.DTCWTForward(J=1, biort="near_sym_b", qshift="qshift_b")
    ifm = pw.DTCWTInverse(biort="near_sym_b", qshift="qshift_b")
    with torch.no_grad():
        yl, yh = xfm(x)
        rl, rh = torch.randn(yl.shape, generator=gen), torch.randn(yh[0].shape, generator=gen)
        refs = [yl.numpy(), yh[0].numpy(), ifm((yl, yh)).numpy(), ifm((rl, [rh])).numpy()]
    low, real, imag = (_np(t) for t in DTCWTForward()(x.numpy().transpose(0, 2, 3, 1)))
    inverse = _np(DTCWTInverse()([low, real, imag]))
    inverse_random = _np(DTCWTInverse()([rl.numpy().transpose(0, 2, 3, 1),
                                         *_from_reference_high(rh.numpy())]))
    ours = [low.transpose(0, 3, 1, 2), _to_reference_high(real, imag),
            inverse.transpose(0, 3, 1, 2), inverse_random.transpose(0, 3, 1, 2)]
    for out, ref in zip(ours, refs):
        assert out.shape == ref.shape
        assert np.max(np.abs(out - ref)) <= 1e-5 * max(np.max(np.abs(ref)), 1.0)


def test_official_fixture():
    path = parity_fixture("dtcwt_j1_mini")
    data = np.load(path)
    meta = json.load(open(path[:-4] + ".json"))
    tol = meta["tolerance"]
    # The filters stored in the fixture (prep_filt: reversed column vectors) are ours.
    filters = BIORTHOGONAL_FILTERS["near_sym_b"]
    for key, name in (("xfm.h0o", "h0o"), ("xfm.h1o", "h1o"), ("ifm.g0o", "g0o"),
                      ("ifm.g1o", "g1o")):
        np.testing.assert_allclose(data[f"param/{key}"].ravel()[::-1], filters[name],
                                   atol=1e-8)
    x = data["input"].transpose(0, 2, 3, 1)
    low, real, imag = (_np(t) for t in DTCWTForward()(x))
    inverse = _np(DTCWTInverse()([low, real, imag]))
    random_real, random_imag = _from_reference_high(data["input_inv_high"])
    inverse_random = _np(DTCWTInverse()([data["input_inv_low"].transpose(0, 2, 3, 1),
                                         random_real, random_imag]))
    checks = {"output_low": low.transpose(0, 3, 1, 2),
              "output_high": _to_reference_high(real, imag),
              "output_inverse": inverse.transpose(0, 3, 1, 2),
              "output_inverse_random": inverse_random.transpose(0, 3, 1, 2)}
    for key, out in checks.items():
        assert out.shape == data[key].shape, key
        assert np.max(np.abs(out - data[key])) <= tol, key


@pytest.mark.parametrize("hw", [(8, 8), (32, 48), (15, 21), (56, 56)])
def test_perfect_reconstruction(hw):
    rng = np.random.default_rng(hw[0] * 100 + hw[1])
    x = rng.standard_normal((2,) + hw + (3,)).astype("float32")
    y = _np(DTCWTInverse()(DTCWTForward()(x)))
    h, w = hw
    # Odd sizes: the forward transform repeats the last row/column first.
    expected = np.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    assert y.shape == expected.shape
    np.testing.assert_allclose(y, expected, atol=2e-5)


def test_shapes_errors_and_serialisation(tmp_path):
    with pytest.raises(ValueError, match="J=1"):
        DTCWTForward(J=2)
    with pytest.raises(ValueError, match="near_sym_b"):
        DTCWTForward(biort="near_sym_c")
    with pytest.raises(ValueError, match="static height"):
        keras.Model(*(lambda i: (i, DTCWTForward()(i)))(keras.Input((None, None, 3))))
    inputs = keras.Input((20, 30, 4))
    low, real, imag = DTCWTForward(name="xfm")(inputs)
    assert (low.shape, real.shape) == ((None, 20, 30, 4), (None, 10, 15, 6, 4))
    with pytest.raises(ValueError, match="twice"):
        DTCWTInverse()([keras.Input((20, 30, 4)), keras.Input((5, 15, 6, 4)),
                        keras.Input((5, 15, 6, 4))])
    # A gated transform (the SVT use): scale the subbands, then invert.
    out = DTCWTInverse(name="ifm")([low, keras.layers.Rescaling(0.5)(real),
                                    keras.layers.Rescaling(-1.0)(imag)])
    model = keras.Model(inputs, out)
    x = np.random.default_rng(0).standard_normal((2, 20, 30, 4)).astype("float32")
    ref = model.predict(x, verbose=0)
    model.save(tmp_path / "dtcwt.keras")
    loaded = keras.models.load_model(tmp_path / "dtcwt.keras")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), ref, atol=1e-6)


def test_tflite_builtins_only(tmp_path):
    if BACKEND != "tensorflow":
        pytest.skip("exported on the TensorFlow backend (other backends hand off to it)")
    import visionzoo
    from test_export import assert_builtin_only

    inputs = keras.Input((56, 56, 8))
    low, real, imag = DTCWTForward()(inputs)
    out = DTCWTInverse()([keras.layers.Rescaling(0.7)(low), real,
                          keras.layers.Rescaling(-1.0)(imag)])
    model = keras.Model(inputs, out)
    path = tmp_path / "dtcwt.tflite"
    report = visionzoo.export.to_tflite(model, path)
    assert report.max_abs_diff <= 1e-4 * report.ref_max_abs, report.summary()
    assert_builtin_only(report, path)
    assert "TRANSPOSE" not in report.op_names
