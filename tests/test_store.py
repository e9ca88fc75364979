"""Packed vector blocks: the loaded matrix always equals the embeddings table, row by row."""

import sqlite3

import numpy as np
import pytest

from edge_retrieval.storage import vectors as store

DIM = 16
SCHEMA = """
CREATE TABLE items (id INTEGER PRIMARY KEY, label TEXT NOT NULL UNIQUE);
CREATE TABLE embeddings (
    id INTEGER PRIMARY KEY,
    item_id INTEGER NOT NULL REFERENCES items(id) ON DELETE CASCADE,
    vector BLOB NOT NULL,
    scale REAL NOT NULL,
    source TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL DEFAULT 0
);
"""


@pytest.fixture
def conn(monkeypatch):
    monkeypatch.setattr(store, "BLOCK_ROWS", 50)
    db = sqlite3.connect(":memory:")
    db.execute("PRAGMA foreign_keys = ON")
    db.executescript(SCHEMA)
    with db:  # as a migration: statement by statement, one transaction
        for statement in store.STATEMENTS:
            db.execute(statement)
    yield db
    db.close()


def _add(db, n, item=None, seed=0):
    rng = np.random.default_rng(seed)
    with db:
        for _ in range(n):
            it = item if item is not None else int(rng.integers(1, 20))
            db.execute("INSERT OR IGNORE INTO items(id, label) VALUES (?, ?)", (it, f"item{it}"))
            db.execute(
                "INSERT INTO embeddings(item_id, vector, scale) VALUES (?, ?, ?)",
                (it, rng.integers(-127, 128, DIM).astype(np.int8).tobytes(), float(rng.uniform(0.1, 1))),
            )
        store.pack(db)


def _expected(db):
    rows = db.execute("SELECT item_id, scale, vector FROM embeddings ORDER BY id").fetchall()
    keys = np.array([r[0] for r in rows], np.int64)
    scales = np.array([r[1] for r in rows], np.float32)
    codes = np.frombuffer(b"".join(r[2] for r in rows), np.int8).reshape(len(rows), DIM)
    return codes, scales, keys


def _same(matrix, db):
    codes, scales, keys = _expected(db)
    assert matrix.size == len(keys)
    assert (matrix.codes == codes).all() and (matrix.scales == scales).all() and (matrix.keys == keys).all()


def test_blocks_hold_the_rows_and_the_tail_is_read_row_by_row(conn):
    _add(conn, 175)
    assert conn.execute("SELECT count(*), sum(count) FROM vector_blocks").fetchone() == (3, 150)
    m, state = store.load_matrix(conn)
    assert state.dim == DIM and state.last_id == 175
    _same(m, conn)


def test_delete_update_and_cascade_drop_blocks_until_repacked(conn):
    _add(conn, 175)
    conn.execute("DELETE FROM embeddings WHERE id IN (3, 120)")
    conn.execute("UPDATE embeddings SET scale = 9 WHERE id = 60")
    conn.execute("DELETE FROM items WHERE id = 7")  # ON DELETE CASCADE fires triggers
    assert conn.execute("SELECT count(*) FROM vector_blocks").fetchone()[0] < 3
    m, _ = store.load_matrix(conn)  # holes read row by row
    _same(m, conn)
    with conn:
        store.pack(conn)
    assert conn.execute("SELECT holes FROM vector_state").fetchone()[0] == 0
    m, _ = store.load_matrix(conn)
    _same(m, conn)


def test_refresh_appends_new_rows_and_reloads_after_other_changes(conn):
    _add(conn, 60)
    m, state = store.load_matrix(conn)
    _add(conn, 3, seed=1)
    m2, state2 = store.refresh(conn, m, state)
    assert m2 is m and state2.last_id == 63
    _same(m2, conn)
    assert store.refresh(conn, m2, state2) == (m2, state2)  # nothing new
    conn.execute("DELETE FROM embeddings WHERE id = 61")
    m3, state3 = store.refresh(conn, m2, state2)
    assert m3 is not m2 and state3.generation > state2.generation
    _same(m3, conn)
    # a row inserted below the last id (explicit id) also forces a reload
    item = conn.execute("SELECT item_id FROM embeddings LIMIT 1").fetchone()[0]
    conn.execute("INSERT INTO embeddings(id, item_id, vector, scale) VALUES (61, ?, ?, 1)", (item, bytes(DIM)))
    m4, _ = store.refresh(conn, m3, state3)
    _same(m4, conn)


def test_empty_gallery_then_first_rows(conn):
    m, state = store.load_matrix(conn)
    assert m.size == 0 and state.dim == 0
    _add(conn, 5)
    m, state = store.refresh(conn, m, state)
    assert m.dim == DIM
    _same(m, conn)


def test_search_after_load_finds_an_enrolled_vector(conn):
    _add(conn, 130)
    m, _ = store.load_matrix(conn)
    codes, scales, keys = _expected(conn)
    idx, _ = m.topk(codes[77:78].astype(np.float32), 1)
    assert idx[0, 0] == 77 and m.keys[77] == keys[77]
