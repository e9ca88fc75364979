"""Start-up and enrolment latency of a large gallery file, through `Gallery` itself.

Builds (once, into --path) a gallery of N embeddings (d dims, 10 per item) with plain SQL,
then measures in fresh processes' worth of objects:
  * open + first search (loads the matrix from the packed blocks),
  * the same rows read one by one (the layout without blocks), for reference,
  * enrol one item with another connection, then search: the time until it is found.

    python benchmarks/gallery_load.py [--n 1000000] [--dim 256]
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
import time
from pathlib import Path

import numpy as np

from edge_retrieval import Gallery
from edge_retrieval.quantize import quantize

SHA = "0" * 64


def build(path: Path, n: int, dim: int) -> None:
    rng = np.random.default_rng(0)
    with Gallery(path) as g:
        seed = rng.normal(size=(1, dim))
        g.add("seed", seed / np.linalg.norm(seed), model_sha256=SHA, model_name="bench")
        with g.transaction():
            con = g.db.conn
            per_item, chunk = 10, 100_000
            for start in range(1, n, chunk):
                m = min(chunk, n - start)
                x = np.maximum(rng.normal(size=(m, dim)), 0).astype(np.float32)  # post-ReLU-like
                x /= np.linalg.norm(x, axis=1, keepdims=True)
                codes, scales = quantize(x)
                first = con.execute("SELECT coalesce(max(id), 0) FROM items").fetchone()[0] + 1
                items = range(first, first + -(-m // per_item))
                con.executemany(
                    "INSERT INTO items(id, label, created) VALUES (?, ?, 0)", [(i, f"item{i}") for i in items]
                )
                con.executemany(
                    "INSERT INTO embeddings(item_id, vector, scale, created) VALUES (?, ?, ?, 0)",
                    [(first + j // per_item, codes[j].tobytes(), float(scales[j])) for j in range(m)],
                )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--path", type=Path, default=None, help="gallery file (default: a temporary one)")
    args = ap.parse_args()
    tmp = tempfile.TemporaryDirectory()
    path = args.path or Path(tmp.name) / "big.db"
    if not path.exists():
        t = time.perf_counter()
        build(path, args.n, args.dim)
        print(f"built {args.n:,} × {args.dim} in {time.perf_counter() - t:.1f} s ({path.stat().st_size / 1e6:.0f} MB)")
    q = np.random.default_rng(1).normal(size=(1, args.dim)).astype(np.float32)

    t = time.perf_counter()
    with Gallery(path) as g:
        g.search(q, 5)
        load = time.perf_counter() - t
        n = g.matrix().size
        con = sqlite3.connect(path)
        t = time.perf_counter()
        rows = con.execute("SELECT item_id, scale, vector FROM embeddings ORDER BY id").fetchall()
        np.frombuffer(b"".join(r[2] for r in rows), np.int8)
        by_row = time.perf_counter() - t
        con.close()
        print(
            f"open + first search of {n:,} rows: {1000 * load:.0f} ms (packed blocks); "
            f"reading the rows one by one: {1000 * by_row:.0f} ms"
        )
        new = np.random.default_rng(2).normal(size=(1, args.dim)).astype(np.float32)
        new /= np.linalg.norm(new)
        times = []
        with Gallery(path) as writer:
            for i in range(5):
                writer.add(f"new{i}", new, model_sha256=SHA)
                t = time.perf_counter()
                found = g.search(new, 1).labels[0, 0]
                times.append(time.perf_counter() - t)
                assert found.startswith("new"), found
        print(
            f"enrolled by another connection → found by the next search: median {1000 * np.median(times):.1f} ms "
            f"(the search included; the scan alone is most of it)"
        )
        t = time.perf_counter()
        for _ in range(5):
            g.search(q, 5)
        print(f"a search with nothing new: {1000 * (time.perf_counter() - t) / 5:.1f} ms")


if __name__ == "__main__":
    main()
