"""The gallery scan against the memory-bandwidth limit and its peers, on the same data, in one run.

    python benchmarks/scan.py            # N ∈ {10k, 100k, 1M} × d ∈ {256, 1280}: about 5 minutes
    python benchmarks/scan.py --quick    # N ∈ {10k, 100k}, d = 256: about 15 seconds

Peers (benchmark-only: `pip install -e .[bench]`): faiss `IndexScalarQuantizer` 8-bit and
`IndexFlatIP` (on the dequantized vectors), usearch exact search (int8 codes, cosine),
sqlite-vec `vec0` int8 cosine (through `sqlean` when the stdlib sqlite3 cannot load
extensions). A peer that is not installed is reported as such.

All methods of one configuration are timed interleaved, round after round (a burst of
load from elsewhere hits them alike), and each reports its best round (mean over the
queries of the round). "limit" is a read-only pass over the same int8 matrix (best of 9,
with 1 and with 2 threads); % of limit = limit time ÷ method time; recall@10 is against our
exact int8 result; "exact ÷" and "2-stage ÷" are our time (2 threads; single query against
single query, batch against batch) divided by the row's time: < 1 means we are faster.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edge_retrieval import scan  # noqa: E402
from edge_retrieval.quantize import dequantize, quantize  # noqa: E402
from edge_retrieval.storage import vectors as store  # noqa: E402

K = 10
N_QUERIES = 32
BATCH = 32


# -- data ---------------------------------------------------------------------------
def relu_vectors(n: int, dim: int, n_queries: int, seed: int = 0, views: int = 4):
    """Post-ReLU-like float32 descriptors: categories → items → views, L2-normalised.

    Each item has a few enrolled views; the queries are new views of items enrolled in the
    first 10k rows (so every prefix of the gallery holds their item). A query's top-10 is
    its item's views and then close neighbours of the same category: a hard top-10 for a
    first-pass filter. About 55 % of the components are zero. Returns (blocks of the
    gallery as a generator, queries).
    """
    rng = np.random.default_rng(seed)
    n_items = max(1, n // views)
    n_cats = max(4, int(2 * np.sqrt(n_items)))
    act = rng.lognormal(0.0, 0.5, dim).astype(np.float32)  # per-channel activity
    cats = rng.standard_normal((n_cats, dim), dtype=np.float32) + rng.normal(-0.2, 0.5, dim).astype(np.float32)
    centre = np.empty((n_items, dim), np.float32)
    for s in range(0, n_items, 1 << 15):
        m = min(1 << 15, n_items - s)
        centre[s : s + m] = cats[rng.integers(0, n_cats, m)] + 0.4 * rng.standard_normal((m, dim), dtype=np.float32)
    owner = rng.integers(0, n_items, n)

    def views_of(items):
        x = centre[items] + 0.3 * rng.standard_normal((len(items), dim), dtype=np.float32)
        np.maximum(x, 0, out=x)
        x *= act
        x /= np.linalg.norm(x, axis=1, keepdims=True) + 1e-12
        return x

    queries = views_of(owner[rng.integers(0, min(n, 10_000), n_queries)])
    return (views_of(owner[s : s + (1 << 15)]) for s in range(0, n, 1 << 15)), queries


def relu_gallery(n: int, dim: int, n_queries: int, seed: int = 0):
    """`relu_vectors` quantized as the gallery stores them: (codes, scales, queries)."""
    blocks, queries = relu_vectors(n, dim, n_queries, seed)
    codes = np.empty((n, dim), np.int8)
    scales = np.empty(n, np.float32)
    at = 0
    for x in blocks:
        codes[at : at + len(x)], scales[at : at + len(x)] = quantize(x)
        at += len(x)
    return codes, scales, queries


# -- timing -------------------------------------------------------------------------
class Method:
    """One row of the table: `run(queries) -> (q, k) rows`, timed single or batched."""

    def __init__(self, name, run, queries, mode="single", nbytes=None, note=""):
        self.name, self.run, self.queries, self.mode, self.nbytes, self.note = name, run, queries, mode, nbytes, note
        self.times: list[float] = []
        self.per_round = 1

    def calibrate(self, budget: float, rounds: int) -> None:
        """Warm up and choose how many queries a round times (about budget / rounds seconds)."""
        self.found = self.run(self.queries)
        if self.mode == "batch":
            return
        t0 = time.perf_counter()
        self.run(self.queries[:1])
        one = max(time.perf_counter() - t0, 1e-6)
        self.per_round = max(1, min(len(self.queries), int(budget / rounds / one)))

    def time_round(self) -> None:
        t0 = time.perf_counter()
        if self.mode == "batch":
            self.run(self.queries)
            self.times.append((time.perf_counter() - t0) / len(self.queries))
        else:
            for j in range(self.per_round):
                self.run(self.queries[j : j + 1])
            self.times.append((time.perf_counter() - t0) / self.per_round)


def time_interleaved(methods: list[Method], budget: float, rounds: int = 3) -> None:
    """Round after round, every method once: a burst of load from elsewhere hits them all alike."""
    for m in methods:
        m.calibrate(budget, rounds)
    for _ in range(rounds):
        for m in methods:
            m.time_round()


def read_limit(codes: np.ndarray) -> tuple[float, float]:
    """Seconds to read the matrix once (no compute) with 1 and with 2 threads: best of 9 rounds."""
    words = codes.reshape(-1).view(np.uint64) if codes.nbytes % 8 == 0 else codes.reshape(-1)
    best = []
    for threads in (1, 2):
        cut = len(words) // threads
        times = []
        for _ in range(9):
            t0 = time.perf_counter()
            scan._parallel(
                lambda i: np.bitwise_or.reduce(words[i * cut : (i + 1) * cut if i < threads - 1 else None]),  # noqa: B023 (runs now)
                threads,
            )
            times.append(time.perf_counter() - t0)
        best.append(min(times))
    return best[0], best[1]


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(np.intersect1d(f, t)) / truth.shape[1] for f, t in zip(found, truth)]))


# -- peers --------------------------------------------------------------------------
def peer_faiss(codes, scales, kind: str):
    """A faiss index on the dequantized vectors; run(queries, threads) → (q, K) rows."""
    import faiss

    d = codes.shape[1]
    step = 1 << 16
    if kind == "direct":  # faiss has no per-row scale: one scale for the whole matrix
        index = faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_8bit_direct_signed, faiss.METRIC_INNER_PRODUCT)
        top = max(
            float(np.abs(dequantize(codes[s : s + step], scales[s : s + step])).max())
            for s in range(0, len(codes), step)
        )
        index.train(np.zeros((1, d), np.float32))
        for s in range(0, len(codes), step):
            index.add(np.rint(dequantize(codes[s : s + step], scales[s : s + step]) * (127 / top)))
    else:
        if kind == "sq8":  # 8 bits per component, ranges trained per dimension
            index = faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
            sample = np.linspace(0, len(codes) - 1, min(len(codes), 100_000)).astype(np.int64)
            index.train(dequantize(codes[sample], scales[sample]))
        else:
            index = faiss.IndexFlatIP(d)
        for s in range(0, len(codes), step):
            index.add(dequantize(codes[s : s + step], scales[s : s + step]))

    def run(q, threads):
        faiss.omp_set_num_threads(threads)
        if kind == "direct":  # it rounds the query to integers too: scale it up (same ranking)
            q = q * (127 / np.abs(q).max(axis=1, keepdims=True))
        return index.search(np.ascontiguousarray(q, np.float32), K)[1]

    return run, index


def peer_usearch(codes):
    """usearch's exact search over the int8 codes (cosine); run(queries, threads) → (q, K) rows."""
    from usearch.index import MetricKind, search

    def run(q, threads):
        qc, _ = quantize(q)
        return search(codes, qc, K, MetricKind.Cos, exact=True, threads=threads).keys.reshape(len(q), -1)

    return run


def peer_sqlite_vec(codes):
    import sqlite_vec

    conn = sqlite3.connect(":memory:")
    if not hasattr(conn, "enable_load_extension"):
        import sqlean

        conn = sqlean.connect(":memory:")
    conn.enable_load_extension(True)
    sqlite_vec.load(conn)
    d = codes.shape[1]
    conn.execute(f"CREATE VIRTUAL TABLE v USING vec0(embedding int8[{d}] distance_metric=cosine)")
    with conn:
        conn.executemany(
            "INSERT INTO v(rowid, embedding) VALUES (?, vec_int8(?))",
            ((i, codes[i].tobytes()) for i in range(len(codes))),
        )

    def run(q):
        qc, _ = quantize(q)
        out = []
        for row in qc:
            hits = conn.execute(
                "SELECT rowid FROM v WHERE embedding MATCH vec_int8(?) AND k = ?", (row.tobytes(), K)
            ).fetchall()
            out.append([r[0] for r in hits])
        return np.array(out)

    return run, conn


# -- one configuration ------------------------------------------------------------------
def bench_config(codes, scales, queries, args):
    """Time every method on the same codes, interleaved; returns (limit, rows of the table)."""
    n, d = codes.shape
    m = scan.CodeMatrix.wrap(codes, scales)
    truth, _ = m.topk(queries, K)
    batch = queries[:BATCH]
    methods = []
    for threads in (1, 2):
        label = f"ours exact, {threads} thread{'s' * (threads > 1)}"
        run = (lambda th: lambda q: m.topk(q, K, threads=th)[0])(threads)
        methods += [Method(label, run, queries), Method(f"{label}, batch {BATCH}", run, batch, "batch")]
    t0 = time.perf_counter()
    m.enable_two_stage()
    note = (
        f"shortlist {scan.default_shortlist(n, K)}, sign bits built in {(time.perf_counter() - t0) * 1e3:.0f} ms"
        if n >= scan.TWO_STAGE_MIN_ROWS
        else "below TWO_STAGE_MIN_ROWS: \"auto\" is exact"
    )
    run = lambda q: m.topk(q, K, shortlist="auto")[0]  # noqa: E731
    methods += [
        Method("ours two-stage, 2 threads", run, queries, note=note),
        Method(f"ours two-stage, 2 threads, batch {BATCH}", run, batch, "batch"),
    ]
    keep = []  # peer indexes stay alive until the timing is over
    if not args.no_peers:
        peers = []
        for kind, label in (
            ("sq8", "faiss IndexScalarQuantizer QT_8bit"),
            ("direct", "faiss IndexScalarQuantizer QT_8bit_direct_signed, global scale"),
            ("flat", "faiss IndexFlatIP"),
        ):
            try:
                run, index = peer_faiss(codes, scales, kind)
            except ImportError:
                methods.append(Method(label, None, queries))
                continue
            keep.append(index)
            peers.append((label, run, codes.nbytes * (4 if kind == "flat" else 1)))
        try:
            peers.append(("usearch exact int8 cos", peer_usearch(codes), codes.nbytes))
        except ImportError:
            methods.append(Method("usearch", None, queries))
        for label, run, nbytes in peers:
            one, two = (lambda r: lambda q: r(q, 1))(run), (lambda r: lambda q: r(q, 2))(run)
            methods += [
                Method(f"{label}, 1 thread", one, queries, nbytes=nbytes),
                Method(f"{label}, 2 threads", two, queries, nbytes=nbytes),
                Method(f"{label}, 2 threads, batch {BATCH}", two, batch, "batch", nbytes),
            ]
        try:
            t0 = time.perf_counter()
            run, conn = peer_sqlite_vec(codes)
            keep.append(conn)
            few = queries[: max(3, min(len(queries), int(2e8 // codes.nbytes)))]
            methods.append(
                Method(
                    "sqlite-vec vec0 int8 cos",
                    run,
                    few,
                    note=f"{len(few)} queries, table built in {time.perf_counter() - t0:.1f} s",
                )
            )
        except ImportError:
            methods.append(Method("sqlite-vec", None, queries))
    present = [x for x in methods if x.run is not None]
    time_interleaved(present, args.budget)
    read1, read2 = read_limit(codes)
    limit = min(read1, read2)
    rows = [
        dict(
            name="read-only pass, 1 thread", t=read1, recall=None, gbs=codes.nbytes / read1 / 1e9, mode="read", note=""
        ),
        dict(
            name="read-only pass, 2 threads", t=read2, recall=None, gbs=codes.nbytes / read2 / 1e9, mode="read", note=""
        ),
    ]
    for x in methods:
        if x.run is None:
            rows.append(dict(name=x.name, missing=True))
            continue
        t = min(x.times)
        rows.append(
            dict(
                name=x.name,
                t=t,
                recall=recall(x.found, truth[: len(x.found)]),
                gbs=(x.nbytes or codes.nbytes) / t / 1e9,
                mode=x.mode,
                note=x.note,
            )
        )
    for obj in keep:
        if isinstance(obj, sqlite3.Connection) or hasattr(obj, "close"):
            try:
                obj.close()
            except Exception:
                pass
    return limit, rows


def print_table(n, d, limit, rows):
    ours = {r["mode"]: r["t"] for r in rows if r.get("name", "").startswith("ours exact, 2 threads")}
    two = {r["mode"]: r["t"] for r in rows if r.get("name", "").startswith("ours two-stage")}
    print(
        f"\n### N = {n:,} × d = {d} ({n * d / 1e6:.0f} MB of int8 codes); "
        f"read-only limit {limit * 1e3:.2f} ms = {n * d / limit / 1e9:.1f} GB/s\n"
    )
    print("| method | ms/query | GB/s | % of limit | recall@10 | exact ÷ | 2-stage ÷ | note |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        if r.get("missing"):
            print(f"| {r['name']} | not installed | | | | | | |")
            continue
        rec = "" if r["recall"] is None else f"{r['recall']:.3f}"
        ours_t, two_t = ours.get(r["mode"]), two.get(r["mode"])
        ratio = f"{ours_t / r['t']:.2f}" if ours_t else ""
        ratio2 = f"{two_t / r['t']:.2f}" if two_t else ""
        print(
            f"| {r['name']} | {r['t'] * 1e3:.3f} | {r['gbs']:.1f} | {100 * limit / r['t']:.0f}% | {rec} "
            f"| {ratio} | {ratio2} | {r['note']} |"
        )
    sys.stdout.flush()


# -- start-up, append, uint8 ----------------------------------------------------------
def bench_sqlite(codes, scales):
    """Load time of the whole matrix from SQLite, row by row and from packed blocks; append → searchable."""
    n, d = codes.shape
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "g.db")
        conn = sqlite3.connect(path)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript("""
            CREATE TABLE embeddings (id INTEGER PRIMARY KEY, item_id INTEGER NOT NULL, vector BLOB NOT NULL,
                                     scale REAL NOT NULL, source TEXT NOT NULL DEFAULT '', created REAL NOT NULL);
            CREATE INDEX embeddings_item ON embeddings(item_id);""")
        conn.executescript(store.MIGRATION)
        t0 = time.perf_counter()
        with conn:
            conn.executemany(
                "INSERT INTO embeddings(item_id, vector, scale, created) VALUES (?, ?, ?, 0)",
                ((i // 4, codes[i].tobytes(), float(scales[i])) for i in range(n)),
            )
        t_insert = time.perf_counter() - t0
        t0 = time.perf_counter()
        with conn:
            store.pack(conn)
        t_pack = time.perf_counter() - t0

        def row_by_row():
            rows = conn.execute("SELECT item_id, scale, vector FROM embeddings ORDER BY id").fetchall()
            keys = np.fromiter((r[0] for r in rows), np.int64, len(rows))
            sc = np.fromiter((r[1] for r in rows), np.float32, len(rows))
            cd = np.frombuffer(b"".join(r[2] for r in rows), np.int8).reshape(len(rows), d)
            return keys, sc, cd

        def timed(fn, reps=3):
            best = float("inf")
            for _ in range(reps):
                t0 = time.perf_counter()
                out = fn()
                best = min(best, time.perf_counter() - t0)
            return best, out

        t_rows, _ = timed(row_by_row)
        t_blocks, (m, state) = timed(lambda: store.load_matrix(conn))
        conn.execute(f"PRAGMA mmap_size={1 << 34}")
        t_mmap, _ = timed(lambda: store.load_matrix(conn))
        adds, first = [], None
        for i in range(5):
            with conn:
                conn.execute(
                    "INSERT INTO embeddings(item_id, vector, scale, created) VALUES (?, ?, 1, 0)",
                    (10**9 + i, (-codes[i]).tobytes()),
                )
                store.pack(conn)
            t0 = time.perf_counter()
            m, state = store.refresh(conn, m, state)
            adds.append(time.perf_counter() - t0)
            first = adds[0] if first is None else first
            idx, _ = m.topk(-codes[i : i + 1].astype(np.float32), 1)  # and a search finds it
            assert m.keys[idx[0, 0]] == 10**9 + i
        conn.close()
    print(f"\n### Start-up and enrolment at N = {n:,} × d = {d}\n")
    print(f"- insert {n:,} rows: {t_insert:.1f} s; pack into blocks of {store.BLOCK_ROWS}: {t_pack:.1f} s")
    print(f"- load row by row (SELECT … ORDER BY id, b''.join): {t_rows * 1e3:.0f} ms")
    print(
        f"- load packed blocks (`store.load_matrix`): {t_blocks * 1e3:.0f} ms; "
        f"with PRAGMA mmap_size: {t_mmap * 1e3:.0f} ms"
    )
    print(
        f"- enrolment → searchable (`store.refresh`: read the new row, append it): best {min(adds) * 1e3:.2f} ms, "
        f"first {first * 1e3:.2f} ms (allocates a segment); the next search finds it"
    )

    m = scan.CodeMatrix.wrap(codes, scales)
    m.reserve(n + n // 4 + 1024)  # as store.load_matrix does
    m.enable_two_stage()
    times = []
    for i in range(5):
        t0 = time.perf_counter()
        m.append(codes[i : i + 1], scales[i : i + 1], [i])
        times.append(time.perf_counter() - t0)
    print(
        f"- `CodeMatrix.append` of one row at {n:,} rows (two-stage bits kept): best {min(times) * 1e3:.2f} ms, "
        f"first {times[0] * 1e3:.2f} ms (allocates a segment)"
    )


def bench_uint8(n, d):
    """Does uint8 (post-ReLU, zero point 0) beat symmetric int8 in recall@10 against float32?"""
    blocks, queries = relu_vectors(n, d, 200, seed=3)
    x = np.concatenate(list(blocks))
    truth = np.argsort(-(queries @ x.T), axis=1)[:, :K]
    c8, s8 = quantize(x)
    peak = x.max(axis=1)
    s_u = np.where(peak > 0, peak / 255, 1).astype(np.float32)
    c_u = np.rint(x / s_u[:, None]).clip(0, 255).astype(np.uint8)
    r8 = recall(scan.topk(c8, s8, queries, K)[0], truth)
    mu = scan.CodeMatrix(d, n, np.uint8)
    mu.append(c_u, s_u, np.arange(n))
    ru = recall(mu.topk(queries, K)[0], truth)
    m8 = Method("int8", lambda q: scan.topk(c8, s8, q, K)[0], queries)
    mu8 = Method("uint8", lambda q: mu.topk(q, K)[0], queries)
    time_interleaved([m8, mu8], 1.0)
    t8, tu = min(m8.times), min(mu8.times)
    print(f"\n### int8 vs uint8 codes (N = {n:,}, d = {d}, 200 queries, recall@10 against float32)\n")
    print(f"- symmetric int8 (the gallery's codes): recall@10 {r8:.4f}, {t8 * 1e3:.2f} ms/query")
    print(f"- uint8, zero point 0 (post-ReLU only): recall@10 {ru:.4f}, {tu * 1e3:.2f} ms/query")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="N ∈ {10k, 100k}, d = 256, short rounds")
    ap.add_argument("--sizes", default=None, help="comma-separated N (default 10000,100000,1000000)")
    ap.add_argument("--dims", default=None, help="comma-separated d (default 256,1280)")
    ap.add_argument("--budget", type=float, default=None, help="seconds per timed measurement")
    ap.add_argument("--no-peers", action="store_true", help="only our scan and the limit")
    ap.add_argument("--no-sqlite", action="store_true", help="skip the SQLite start-up measurement")
    args = ap.parse_args()
    sizes = [int(s) for s in (args.sizes or ("10000,100000" if args.quick else "10000,100000,1000000")).split(",")]
    dims = [int(s) for s in (args.dims or ("256" if args.quick else "256,1280")).split(",")]
    args.budget = args.budget or (0.5 if args.quick else 1.5)

    from threadpoolctl import threadpool_info

    blas = [
        f"{i['internal_api']} {i['version']} ({i.get('architecture')}, {i['num_threads']} threads)"
        for i in threadpool_info()
        if i["user_api"] == "blas"
    ]
    print(
        f"# Scan benchmark — numpy {np.__version__}, BLAS {', '.join(blas)}, {scan.THREADS} usable CPUs, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
        if os.environ.get(var):
            print(f"# warning: {var}={os.environ[var]} is set (it changes the BLAS kernel)")
    started = time.perf_counter()
    for d in dims:
        t0 = time.perf_counter()
        codes, scales, queries = relu_gallery(max(sizes), d, N_QUERIES, seed=d)
        print(
            f"\n(generated {max(sizes):,} × {d} in {time.perf_counter() - t0:.1f} s; "
            f"{np.mean(codes[:10000] == 0):.0%} zero codes)"
        )
        for n in sizes:
            limit, rows = bench_config(codes[:n], scales[:n], queries, args)
            print_table(n, d, limit, rows)
        if not args.no_sqlite and d == dims[0]:
            bench_sqlite(codes[: max(sizes)], scales[: max(sizes)])
        del codes, scales
    bench_uint8(20_000 if args.quick else 100_000, dims[0])
    print(f"\n(total {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
