import numpy as np
import pytest

from edge_retrieval import quantize

_EPSILON = 1e-6


@pytest.mark.parametrize("dim", [8, 256, 1280])
def test_roundtrip_error_is_within_half_a_step(dim):
    rng = np.random.default_rng(dim)
    x = rng.normal(size=(50, dim)).astype(np.float32)
    x[0] = 0  # an all-zero vector survives
    codes, scales = quantize.quantize(x)
    assert codes.dtype == np.int8 and scales.dtype == np.float32
    err = np.abs(quantize.dequantize(codes, scales) - x)
    assert (err <= quantize.ROUNDTRIP_BOUND * scales[:, None] + _EPSILON).all()
    assert np.abs(codes).max() == quantize.QMAX


def test_unit_vectors_keep_their_cosine():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(100, 1280)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    codes, scales = quantize.quantize(x)
    y = quantize.dequantize(codes, scales)
    cos = (x * y).sum(1) / np.linalg.norm(y, axis=1)
    assert cos.min() > 0.999


def test_blob_roundtrip_and_length_check():
    code = np.arange(-5, 5, dtype=np.int8)
    assert (quantize.from_blob(quantize.to_blob(code), 10) == code).all()
    with pytest.raises(ValueError):
        quantize.from_blob(quantize.to_blob(code), 11)
