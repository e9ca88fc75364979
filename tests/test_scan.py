"""The scan against a float64 reference on the same codes, in every shape it meets."""

import numpy as np
import pytest

from edge_retrieval import scan
from edge_retrieval.quantize import quantize

_RTOL = 1e-5  # float32 scan vs float64 reference, relative to the score scale
_MIN_RECALL = 0.98  # two-stage recall@10 on clustered data


def _reference(codes, scales, queries, k):
    """float64 scores; top-k best first, ties by lower row (lexsort is stable on the row)."""
    s = (queries.astype(np.float64) @ codes.astype(np.float64).T) * scales.astype(np.float64)
    order = np.argsort(-s, axis=1, kind="stable")[:, : min(k, len(codes))]
    return order, s


def _check(idx, got, codes, scales, queries, k):
    ref_idx, s = _reference(codes, scales, queries, k)
    assert idx.shape == got.shape == ref_idx.shape
    assert idx.dtype == np.int64 and got.dtype == np.float32
    if not idx.size:
        return
    tol = _RTOL * (np.abs(queries) @ np.abs(codes.astype(np.float64)).T * scales).max()
    ours = np.take_along_axis(s, idx, axis=1)
    # our scores are the reference scores of our rows, best first ...
    np.testing.assert_allclose(got, ours, rtol=0, atol=tol)
    assert (np.diff(got, axis=1) <= 0).all()
    # ... and as good as the reference's, rank by rank (rows may differ only within a tie)
    np.testing.assert_allclose(ours, np.take_along_axis(s, ref_idx, axis=1), rtol=0, atol=tol)
    assert all(len(set(r)) == len(r) for r in idx)


def _data(n, dim, nq, seed=0, dtype=np.int8):
    rng = np.random.default_rng(seed)
    lo, hi = (-128, 128) if dtype == np.int8 else (0, 256)
    codes = rng.integers(lo, hi, (n, dim)).astype(dtype)
    scales = rng.uniform(0.5, 2.0, n).astype(np.float32)
    queries = rng.standard_normal((nq, dim)).astype(np.float32)
    return codes, scales, queries


@pytest.fixture(params=["cast", "float-copy"])
def small_blocks(monkeypatch, request):
    """Tiny blocks, segments and parallel threshold: every path on small data, with the
    int8 → float32 cast per block and with the float32 copy of a small matrix."""
    if request.param == "cast":
        monkeypatch.setattr(scan, "FLOAT_CACHE_CODES", 0)
    monkeypatch.setattr(scan, "BLOCK_BYTES", 4 * 64 * 8)
    monkeypatch.setattr(scan, "SCORE_BYTES", 4 * 512)
    monkeypatch.setattr(scan, "SEGMENT_ROWS", 300)
    monkeypatch.setattr(scan, "PARALLEL_MIN_CODES", 1024)
    monkeypatch.setattr(scan, "HAMMING_MIN_ROWS", 64)


@pytest.mark.parametrize("dim", [8, 256, 1280])
@pytest.mark.parametrize("nq", [1, 3, 32])
@pytest.mark.parametrize("n", [0, 1, 7, 2000])
@pytest.mark.parametrize("threads", [1, 2])
def test_matches_reference(dim, nq, n, threads, small_blocks):
    codes, scales, queries = _data(n, dim, nq, seed=dim + nq + n)
    idx, got = scan.topk(codes, scales, queries, 10, threads=threads)
    _check(idx, got, codes, scales, queries, 10)


@pytest.mark.parametrize("threads", [1, 2])
def test_matches_reference_with_default_blocks(threads):
    codes, scales, queries = _data(120_000, 256, 4, seed=3)
    idx, got = scan.topk(codes, scales, queries, 25, threads=threads)
    _check(idx, got, codes, scales, queries, 25)


def test_one_dimensional_query_and_large_k():
    codes, scales, queries = _data(50, 16, 1)
    idx, got = scan.topk(codes, scales, queries[0], 500)
    assert idx.shape == (1, 50)
    _check(idx, got, codes, scales, queries, 500)
    idx, got = scan.topk(codes, scales, queries, 0)
    assert idx.shape == got.shape == (1, 0)


@pytest.mark.parametrize("threads", [1, 2])
def test_ties_go_to_the_lower_row(threads, small_blocks):
    # small integer codes and queries: float32 sums are exact, so ties are real ties
    rng = np.random.default_rng(7)
    codes = rng.integers(-2, 3, (3000, 8)).astype(np.int8)
    scales = np.ones(3000, np.float32)
    queries = rng.integers(-2, 3, (5, 8)).astype(np.float32)
    idx, got = scan.topk(codes, scales, queries, 40, threads=threads)
    ref_idx, s = _reference(codes, scales, queries, 40)
    assert (idx == ref_idx).all()
    assert (got == np.take_along_axis(s, ref_idx, axis=1)).all()


def test_all_equal_scores(small_blocks):
    codes = np.zeros((5000, 8), np.int8)
    idx, got = scan.topk(codes, np.ones(5000, np.float32), np.ones((2, 8), np.float32), 3, threads=2)
    assert (idx == [0, 1, 2]).all() and (got == 0).all()


def test_uint8_codes(small_blocks):
    codes, scales, queries = _data(1500, 64, 3, dtype=np.uint8)
    m = scan.CodeMatrix(64, capacity=10, dtype=np.uint8)
    m.append(codes, scales, np.arange(1500))
    idx, got = m.topk(queries, 10, threads=2)
    _check(idx, got, codes, scales, queries, 10)


def test_append_grows_in_segments_and_stays_searchable(small_blocks):
    codes, scales, queries = _data(2000, 32, 3)
    m = scan.CodeMatrix(32, capacity=100)
    rng = np.random.default_rng(1)
    at = 0
    while at < 2000:
        step = min(int(rng.integers(1, 400)), 2000 - at)
        m.append(codes[at : at + step], scales[at : at + step], np.arange(at, at + step) + 1000)
        at += step
        idx, got = m.topk(queries, 10, threads=2)
        _check(idx, got, codes[:at], scales[:at], queries, 10)
    assert len(m._segments) > 2
    assert (m.codes == codes).all() and (m.scales == scales).all() and (m.keys == np.arange(2000) + 1000).all()
    pick = np.array([1999, 0, 150, 700])
    assert (m.rows(pick) == codes[pick]).all()


def test_append_does_not_copy_stored_codes(small_blocks):
    m = scan.CodeMatrix(8, capacity=100)
    m.append(np.ones((100, 8), np.int8), np.ones(100), np.arange(100))
    m.reserve(200)
    first, scales = m._segments[0], m._scales
    m.append(np.ones((5, 8), np.int8), np.ones(5), np.arange(5))
    assert m._segments[0] is first and m._scales is scales and m.size == 105


def test_append_rejects_bad_shapes_and_values():
    m = scan.CodeMatrix(4)
    with pytest.raises(ValueError):
        m.append(np.zeros((2, 5), np.int8), np.ones(2), np.arange(2))
    with pytest.raises(ValueError):
        m.append(np.zeros((2, 4), np.int8), np.ones(3), np.arange(2))
    with pytest.raises(ValueError):
        m.append(np.full((1, 4), 300, np.int16), np.ones(1), np.arange(1))
    m.append(np.full((1, 4), 3, np.int16), np.ones(1), np.arange(1))  # fits: accepted
    with pytest.raises(ValueError):
        m.topk(np.zeros((1, 5), np.float32), 1)
    for bad in (np.nan, np.inf, -np.inf):
        with pytest.raises(ValueError, match="NaN or infinity"):
            m.topk(np.array([[0.5, bad, 0.1, 0.2]], np.float32), 1)
    with np.errstate(over="ignore"):  # its sum overflows, yet every value is finite: accepted
        assert len(m.topk(np.full(4, 3e38, np.float32), 1)[0]) == 1


def test_remove_keeps_order(small_blocks):
    codes, scales, queries = _data(900, 16, 2)
    keys = np.arange(900) // 3
    m = scan.CodeMatrix(16, capacity=50)
    m.append(codes, scales, keys)
    assert m.remove([0, 5, 299, 12345]) == 9
    keep = ~np.isin(keys, [0, 5, 299])
    assert (m.codes == codes[keep]).all() and (m.keys == keys[keep]).all()
    idx, got = m.topk(queries, 10)
    _check(idx, got, codes[keep], scales[keep], queries, 10)


def _clustered(n, dim, nq, seed):
    """Post-ReLU-like vectors: categories → items → views; queries are new views of enrolled items."""
    rng = np.random.default_rng(seed)
    items = n // 4
    cats = rng.standard_normal((int(2 * items**0.5), dim)) - 0.2
    centre = cats[rng.integers(0, len(cats), items)] + 0.4 * rng.standard_normal((items, dim))
    act = rng.lognormal(0, 0.5, dim)

    def views(which):
        x = np.maximum(centre[which] + 0.3 * rng.standard_normal((len(which), dim)), 0) * act
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    owner = rng.integers(0, items, n)
    return views(owner), views(owner[rng.integers(0, n, nq)])


@pytest.mark.parametrize("dim", [256, 1280])
def test_two_stage_recall_on_clustered_data(dim):
    x, queries = _clustered(20_000, dim, 50, seed=dim)
    codes, scales = quantize(x)
    m = scan.CodeMatrix(dim, capacity=len(codes))
    m.append(codes, scales, np.arange(len(codes)))
    exact, _ = m.topk(queries, 10)
    assert m.topk(queries, 10, shortlist="auto")[0].tolist() == exact.tolist()  # small: exact
    idx, got = m.topk(queries, 10, shortlist=scan.default_shortlist(len(codes), 10))
    recall = np.mean([len(np.intersect1d(a, b)) / 10 for a, b in zip(idx, exact)])
    assert recall >= _MIN_RECALL
    # the scores it returns are the exact scores of its rows
    _, s = _reference(codes, scales, queries, 10)
    np.testing.assert_allclose(got, np.take_along_axis(s, idx, axis=1), rtol=0, atol=1e-5)


def test_two_stage_finds_rows_appended_after_it_was_built(small_blocks):
    x, queries = _clustered(4000, 64, 5, seed=1)
    codes, scales = quantize(x)
    m = scan.CodeMatrix(64, capacity=3000)
    m.append(codes[:3000], scales[:3000], np.arange(3000))
    m.topk(queries, 5, shortlist=100)  # builds the sign bits
    m.append(codes[3000:], scales[3000:], np.arange(3000, 4000))
    idx, _ = m.topk(x[3000:3100], 1, shortlist=100)  # each appended row finds itself
    assert (idx[:, 0] == np.arange(3000, 3100)).all()
    assert m.topk(queries, 5, shortlist=10_000)[0].shape == (5, 5)  # shortlist ≥ n: exact
