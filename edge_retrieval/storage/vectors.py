"""Fast start-up for the search matrix: embeddings packed into SQLite BLOBs by the block.

Reading one `embeddings` row at a time costs about 2 µs a row in Python (2 s for a
million); the same rows packed `BLOCK_ROWS` at a time load at the speed of a file read.
`vector_blocks` is a cache derived from `embeddings` and never the source of truth:

* triggers drop a block as soon as one of its rows is deleted or changed, count such
  changes in `vector_state.generation` and flag `vector_state.holes`;
* rows not (yet) in a block — the tail after the last block, rows of dropped blocks —
  are read one by one, so the matrix is right whether or not `pack` ran;
* `pack(conn)` (call it in the writer's transaction after adding or removing
  embeddings) writes full blocks for the tail and repacks holes.

`load_matrix` builds a `CodeMatrix` (keys = item ids, rows in embedding-id order);
`refresh` appends rows added since, or reloads when anything else changed. The schema is
the ladder `MIGRATIONS` ("vectors"); the gallery owns the `embeddings` table. An export drops
the blocks (`drop`): the ladder builds them again from the embeddings when the file is opened.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

import numpy as np

from ..scan import CodeMatrix
from .database import VERSIONS_TABLE, Migrations

BLOCK_ROWS = 4096

# The schema step, one statement per entry (trigger bodies hold ';', so never split on it):
# run them in order inside one transaction (a migration), then `pack(conn)` once.
STATEMENTS: list[str] = [
    """CREATE TABLE vector_blocks (
        last_id INTEGER PRIMARY KEY,     -- embeddings.id of the block's last row
        first_id INTEGER NOT NULL,       -- embeddings.id of its first row
        count INTEGER NOT NULL,
        ids BLOB NOT NULL,               -- count × int64 little-endian embeddings.id
        keys BLOB NOT NULL,              -- count × int64 little-endian embeddings.item_id
        scales BLOB NOT NULL,            -- count × float32 little-endian
        vectors BLOB NOT NULL            -- count × dim int8, row after row
    )""",
    """CREATE TABLE vector_state (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        generation INTEGER NOT NULL,     -- changes other than appends: a loaded matrix is stale
        holes INTEGER NOT NULL           -- 1 when rows may sit between blocks (pack repacks them)
    )""",
    "INSERT INTO vector_state VALUES (1, 0, 0)",
    """CREATE TRIGGER vector_blocks_delete AFTER DELETE ON embeddings BEGIN
        DELETE FROM vector_blocks WHERE first_id <= old.id
            AND last_id = (SELECT min(last_id) FROM vector_blocks WHERE last_id >= old.id);
        UPDATE vector_state SET generation = generation + 1, holes = 1;
    END""",
    """CREATE TRIGGER vector_blocks_update AFTER UPDATE OF id, item_id, vector, scale ON embeddings BEGIN
        DELETE FROM vector_blocks WHERE first_id <= old.id
            AND last_id = (SELECT min(last_id) FROM vector_blocks WHERE last_id >= old.id);
        DELETE FROM vector_blocks WHERE first_id <= new.id
            AND last_id = (SELECT min(last_id) FROM vector_blocks WHERE last_id >= new.id);
        UPDATE vector_state SET generation = generation + 1, holes = 1;
    END""",
    """CREATE TRIGGER vector_blocks_insert AFTER INSERT ON embeddings
    WHEN new.id < (SELECT max(id) FROM embeddings) BEGIN
        DELETE FROM vector_blocks WHERE first_id <= new.id
            AND last_id = (SELECT min(last_id) FROM vector_blocks WHERE last_id >= new.id);
        UPDATE vector_state SET generation = generation + 1, holes = 1;
    END""",
]
MIGRATION = ";\n".join(STATEMENTS) + ";"  # the same as one script (sqlite3 executescript)


def _create(conn: sqlite3.Connection) -> None:
    for statement in STATEMENTS:
        conn.execute(statement)
    pack(conn)


MIGRATIONS = Migrations("vectors", [_create])
TABLES = ("vector_blocks", "vector_state")
TRIGGERS = ("vector_blocks_delete", "vector_blocks_update", "vector_blocks_insert")


def drop(conn: sqlite3.Connection) -> None:
    """Remove the blocks, their state and triggers, and the ladder's record of them (an export)."""
    for trigger in TRIGGERS:
        conn.execute(f"DROP TRIGGER IF EXISTS {trigger}")
    for table in TABLES:
        conn.execute(f"DROP TABLE IF EXISTS {table}")
    conn.execute(f"DELETE FROM {VERSIONS_TABLE} WHERE name = ?", [MIGRATIONS.name])


_ROW_SQL = "SELECT id, item_id, scale, vector FROM embeddings WHERE id > ? AND id < ? ORDER BY id"
_BIG = 1 << 62


@dataclass(frozen=True)
class StoreState:
    """What a loaded matrix reflects: the last embedding id in it and the generation."""

    last_id: int
    generation: int
    dim: int


def load_matrix(conn: sqlite3.Connection, dim: int | None = None) -> tuple[CodeMatrix, StoreState]:
    """All embeddings as a `CodeMatrix` (keys = item ids), blocks first-class, rows filling gaps."""
    with _reading(conn):
        generation, holes = conn.execute("SELECT generation, holes FROM vector_state").fetchone()
        blocks = conn.execute(
            "SELECT first_id, last_id, count, keys, scales, vectors FROM vector_blocks ORDER BY last_id"
        ).fetchall()
        pieces: list = []  # (keys, scales, codes, last id) in id order
        prev = 0
        for first, last, count, keys, scales, vectors in blocks:
            if holes:
                pieces += _rows(conn, prev, first)
            pieces.append((keys, scales, vectors, last, count))
            prev = last
        pieces += _rows(conn, prev, _BIG)
    if dim is None:
        dim = next((len(p[2]) // p[4] for p in pieces if p[4]), 0)
    n = sum(p[4] for p in pieces)
    matrix = CodeMatrix(max(dim, 1), capacity=max(n, 1))
    matrix.reserve(n + n // 4 + 1024)  # enrolments then copy nothing for a while
    if n:
        codes = matrix._segments[0]
        at = 0
        for keys, scales, vectors, _, count in pieces:
            if len(vectors) != count * dim:
                raise ValueError(f"embeddings of {len(vectors) // max(count, 1)} bytes in a {dim}-d gallery")
            codes[at : at + count] = np.frombuffer(vectors, np.int8).reshape(count, dim)
            matrix._scales[at : at + count] = np.frombuffer(scales, "<f4")
            matrix._keys[at : at + count] = np.frombuffer(keys, "<i8")
            at += count
        matrix.size = n
    last = pieces[-1][3] if pieces else 0
    return matrix, StoreState(last_id=last, generation=generation, dim=dim)


def refresh(conn: sqlite3.Connection, matrix: CodeMatrix, state: StoreState) -> tuple[CodeMatrix, StoreState]:
    """The matrix brought up to date: new rows appended in place, or a reload after other changes."""
    with _reading(conn):
        generation = conn.execute("SELECT generation FROM vector_state").fetchone()[0]
        if generation != state.generation or not matrix.size and not state.dim:
            new = None
        else:
            new = _rows(conn, state.last_id, _BIG)
    if new is None:
        return load_matrix(conn, state.dim or None)
    if not new:
        return matrix, state
    keys, scales, vectors, last, count = new[0]
    if len(vectors) != count * matrix.dim:
        raise ValueError(f"embeddings of {len(vectors) // count} bytes in a {matrix.dim}-d gallery")
    matrix.append(
        np.frombuffer(vectors, np.int8).reshape(count, matrix.dim),
        np.frombuffer(scales, "<f4"),
        np.frombuffer(keys, "<i8"),
    )
    return matrix, StoreState(last_id=last, generation=generation, dim=matrix.dim)


def pack(conn: sqlite3.Connection) -> int:
    """Write blocks for the rows outside them (call inside the writer's transaction); returns rows packed.

    The tail after the last block is packed only in full blocks of `BLOCK_ROWS`; the rows of
    dropped blocks (holes) are repacked completely.
    """
    holes = conn.execute("SELECT holes FROM vector_state").fetchone()[0]
    ends = [r[0] for r in conn.execute("SELECT last_id FROM vector_blocks ORDER BY last_id")]
    firsts = [r[0] for r in conn.execute("SELECT first_id FROM vector_blocks ORDER BY last_id")]
    packed = 0
    if holes:
        for lo, hi in zip([0] + ends, firsts):
            packed += _pack_range(conn, lo, hi, whole=True)
        conn.execute("UPDATE vector_state SET holes = 0")
    packed += _pack_range(conn, ends[-1] if ends else 0, _BIG, whole=False)
    return packed


def _pack_range(conn, lo: int, hi: int, whole: bool) -> int:
    """Pack rows lo < id < hi into blocks; without `whole`, only full blocks."""
    if not whole:
        tail = conn.execute(
            "SELECT count(*) FROM (SELECT 1 FROM embeddings WHERE id > ? AND id < ? LIMIT ?)", (lo, hi, BLOCK_ROWS)
        ).fetchone()[0]
        if tail < BLOCK_ROWS:
            return 0
    packed = 0
    while True:
        rows = conn.execute(_ROW_SQL + " LIMIT ?", (lo, hi, BLOCK_ROWS)).fetchall()
        if not rows or (not whole and len(rows) < BLOCK_ROWS):
            return packed
        ids = np.fromiter((r[0] for r in rows), np.int64, len(rows))
        conn.execute(
            "INSERT INTO vector_blocks(last_id, first_id, count, ids, keys, scales, vectors) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                int(ids[-1]),
                int(ids[0]),
                len(rows),
                ids.astype("<i8").tobytes(),
                np.fromiter((r[1] for r in rows), "<i8", len(rows)).tobytes(),
                np.fromiter((r[2] for r in rows), "<f4", len(rows)).tobytes(),
                b"".join(r[3] for r in rows),
            ),
        )
        packed += len(rows)
        lo = int(ids[-1])


def _rows(conn, lo: int, hi: int) -> list:
    """Rows lo < id < hi read one by one, as at most one piece."""
    rows = conn.execute(_ROW_SQL, (lo, hi)).fetchall()
    if not rows:
        return []
    n = len(rows)
    return [
        (
            np.fromiter((r[1] for r in rows), "<i8", n).tobytes(),
            np.fromiter((r[2] for r in rows), "<f4", n).tobytes(),
            b"".join(r[3] for r in rows),
            rows[-1][0],
            n,
        )
    ]


class _reading:
    """A read transaction (one consistent snapshot) unless the caller already holds one."""

    def __init__(self, conn):
        self.conn = conn
        self.own = False

    def __enter__(self):
        if not self.conn.in_transaction:
            self.conn.execute("BEGIN")
            self.own = True

    def __exit__(self, *exc):
        if self.own:
            self.conn.execute("COMMIT")
