import numpy as np

from edge_retrieval import descriptors

_EPSILON = 1e-5


def test_gem_and_avg_golden_numbers():
    fmap = np.array([[[1.0, 0.0], [2.0, 4.0]], [[3.0, 0.0], [0.0, 4.0]]], dtype=np.float32)  # H=2, W=2, C=2
    # channel 0: (1 + 8 + 27 + 0) / 4 = 9 → 9^(1/3); channel 1: (0 + 64 + 0 + 64) / 4 = 32 → 32^(1/3)
    np.testing.assert_allclose(descriptors.gem(fmap, 3.0), [9 ** (1 / 3), 32 ** (1 / 3)], rtol=_EPSILON)
    np.testing.assert_allclose(descriptors.gem(fmap[None], 1.0), [[1.5, 2.0]], rtol=_EPSILON)
    np.testing.assert_allclose(descriptors.pool(fmap, "avg"), [1.5, 2.0], rtol=_EPSILON)


def test_l2_normalize_keeps_zero_vectors_finite():
    x = descriptors.l2_normalize(np.array([[3.0, 4.0], [0.0, 0.0]]))
    np.testing.assert_allclose(x, [[0.6, 0.8], [0.0, 0.0]], atol=_EPSILON)
