"""Export and import of a gallery, with the export manifest (the checks every value of an import
file passes are in checks.py).

An exported gallery (`export`) carries a table `export_manifest` with one JSON row:

    {"format": 1, "model": {"model_sha256": …, "model_name": …, "dim": …},
     "tables": {"items": {"rows": 2, "sha256": "…"}, "embeddings": {…}, "features": {…},
                "negatives": {…}, "thresholds": {…}}}

A table's sha256 is taken over its exported columns (`EXPORT_TABLES`), rows in
rowid order, each value in a canonical, typed, length-prefixed encoding (`canonical`): the same
rows give the same digest whatever the file's page layout, and any changed, added, removed or
reordered row gives another. `import_into` recomputes the digests while it reads (in one
pass, in the import's transaction) and rolls back on any difference.

The digest detects damage (a truncated copy, flipped bits), not a forger: anyone who can edit
the file can rewrite the manifest. What keeps a hostile file out is the rest of this module:
the file is opened read-only and immutable with `trusted_schema` off (nothing in it runs: its
triggers never fire, as nothing is written to it, and views, virtual tables and generated
columns are refused), no value longer than `MAX_VALUE_BYTES` is ever read, row counts are checked
against `MAX_ROWS` and the manifest before anything is loaded, and every value is checked for type
and range (`checks.py`: `check_item`, `check_vectors`, `check_features`) before it is inserted,
with parameters.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import stat
import struct
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from ..errors import GalleryError, one_line
from . import vectors
from .checks import check_features, check_item, check_model, check_vectors, no_json_constant, parse_dim
from .database import GALLERY_TABLES, SCHEMA_VERSION

if TYPE_CHECKING:
    from .gallery import Gallery

FORMAT = 1
TABLE = "export_manifest"
MODEL_KEYS = ("model_sha256", "model_name", "dim")

MAX_VALUE_BYTES = 4 << 20  # SQLite's length limit on the import connection: no longer row is ever read
MAX_ROWS = 10_000_000  # per table (a gallery of 10 M photos is ten times the largest measured)
FETCH_ROWS = 1024  # rows read at a time: memory stays bounded whatever the file holds

# Per-item rows that travel with an export/import (item_id first); thresholds are calibrated for
# one gallery and do not (run `calibrate` again after an import).
ITEM_TABLES = {
    "embeddings": ("item_id", "vector", "scale", "source", "created"),
    "features": ("item_id", "kind", "width", "height", "keypoints", "descriptors", "source", "created"),
    "negatives": ("item_id", "vector", "scale", "source", "created"),
}
# the device's own history (events.py, outbox.py): the schema is exported, the rows are not
LOCAL_TABLES = ("events", "outbox", "event_vectors")
# What an export's manifest covers (columns in the order they are hashed, rows in rowid order). The
# packed vector blocks are not exported (older exports that hold them import as well: unread).
EXPORT_TABLES = {
    "items": ("id", "label", "metadata", "created"),
    **ITEM_TABLES,
    "thresholds": ("item_id", "threshold", "created"),
}


# -- the digest ------------------------------------------------------------------------------
def canonical(row: Sequence[Any]) -> bytes:
    """One row as bytes: a type tag per value, fixed-width numbers, length-prefixed text and blobs."""
    out = [b"R", struct.pack("<I", len(row))]
    for value in row:
        if value is None:
            out.append(b"N")
        elif isinstance(value, int):
            out.append(b"I" + struct.pack("<q", value))
        elif isinstance(value, float):
            out.append(b"F" + struct.pack("<d", value))
        elif isinstance(value, str):
            data = value.encode("utf-8", "surrogatepass")
            out.append(b"T" + struct.pack("<Q", len(data)) + data)
        else:
            data = bytes(value)
            out.append(b"B" + struct.pack("<Q", len(data)) + data)
    return b"".join(out)


class Digest:
    """Rows and sha256 of one table, fed row by row in rowid order."""

    def __init__(self) -> None:
        self.rows = 0
        self._sha = hashlib.sha256()

    def update(self, rows: Iterable[Sequence[Any]]) -> None:
        for row in rows:
            self._sha.update(canonical(row))
            self.rows += 1

    def entry(self) -> dict[str, Any]:
        return {"rows": self.rows, "sha256": self._sha.hexdigest()}


def select(table: str, columns: Sequence[str]) -> str:
    return f"SELECT {', '.join(f'[{c}]' for c in columns)} FROM [{table}] ORDER BY rowid"


def chunks(conn: sqlite3.Connection, sql: str, params: Sequence[Any] = ()) -> Iterable[list[tuple]]:
    cursor = conn.execute(sql, params)
    while rows := cursor.fetchmany(FETCH_ROWS):
        yield rows


def compute(conn: sqlite3.Connection, tables: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    """The manifest of the gallery file behind `conn` (the export side)."""
    present = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    digests = {}
    for table, columns in tables.items():
        if table in present:
            digests[table] = Digest()
            for rows in chunks(conn, select(table, columns)):
                digests[table].update(rows)
    meta = dict(
        conn.execute(
            f"SELECT key, value FROM meta WHERE key IN ({', '.join('?' * len(MODEL_KEYS))})", MODEL_KEYS
        ).fetchall()
    )
    return {
        "format": FORMAT,
        "model": {k: meta[k] for k in MODEL_KEYS if isinstance(meta.get(k), str)},
        "tables": {table: d.entry() for table, d in digests.items()},
    }


def write(conn: sqlite3.Connection, manifest: dict[str, Any]) -> None:
    conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
    conn.execute(f"CREATE TABLE {TABLE} (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    conn.execute(f"INSERT INTO {TABLE}(key, value) VALUES ('manifest', ?)", [json.dumps(manifest, sort_keys=True)])


# -- reading an import file ---------------------------------------------------------------------
def open_import(path: Path) -> sqlite3.Connection:
    """A read-only, immutable connection to an import file (no -wal/-shm is created beside it, no
    lock taken); nothing in the file's schema may call functions with side effects."""
    uri = "file:" + urllib.parse.quote(str(path.resolve()), safe="/") + "?mode=ro&immutable=1"
    conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
    try:
        conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, MAX_VALUE_BYTES)
        conn.execute("PRAGMA trusted_schema = OFF")
        conn.execute("PRAGMA query_only = ON")
        conn.execute("PRAGMA cell_size_check = ON")
    except BaseException:
        conn.close()
        raise
    return conn


def check_schema(
    conn: sqlite3.Connection, path: Path, tables: Mapping[str, Sequence[str]], required: Iterable[str]
) -> set[str]:
    """The tables of `tables` the file holds, each an ordinary table with those columns, none of
    them computed; GalleryError naming what is wrong otherwise."""
    kinds = {
        name: (kind, sql or "")
        for kind, name, sql in conn.execute("SELECT type, name, sql FROM sqlite_master WHERE type IN ('table', 'view')")
    }
    missing = [t for t in required if t not in kinds]
    if missing:
        raise GalleryError(f"{path}: not an exported gallery (no table {missing[0]!r})")
    present = set()
    for table, columns in {**tables, "meta": ("key", "value")}.items():
        if table not in kinds:
            continue
        kind, sql = kinds[table]
        if kind != "table" or not sql.lstrip().upper().startswith("CREATE TABLE"):
            raise GalleryError(
                f"{path}: {table!r} is a {'view' if kind == 'view' else 'virtual table'}, "
                f"not a table: not an exported gallery"
            )
        info = {row[1]: row for row in conn.execute(f"PRAGMA table_xinfo([{table}])")}
        absent = [c for c in columns if c not in info]
        if absent:
            raise GalleryError(f"{path}: table {table!r} has no column {absent[0]!r}")
        computed = [name for name, row in info.items() if row[6] != 0]  # hidden: 2, 3 = generated columns
        if computed:
            raise GalleryError(
                f"{path}: table {table!r} has a computed column {computed[0]!r}: not an exported gallery"
            )
        present.add(table)
    return present & set(tables)


def read_manifest(conn: sqlite3.Connection, path: Path) -> dict[str, Any] | None:
    """The file's manifest, checked for shape; None if it has none (an export older than manifests)."""
    if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", [TABLE]).fetchone() is None:
        return None
    rows = conn.execute(f"SELECT key, value FROM [{TABLE}] LIMIT 2").fetchall()
    try:
        if len(rows) != 1 or rows[0][0] != "manifest" or not isinstance(rows[0][1], str):
            raise ValueError("not one 'manifest' row")
        manifest = json.loads(rows[0][1], parse_constant=no_json_constant)
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise ValueError(
                f"format {manifest.get('format') if isinstance(manifest, dict) else None!r}, "
                f"this program reads {FORMAT}"
            )
        model, tables = manifest.get("model"), manifest.get("tables")
        if not isinstance(model, dict) or not all(isinstance(model.get(k, ""), str) for k in MODEL_KEYS):
            raise ValueError("'model' is malformed")
        if not isinstance(tables, dict):
            raise ValueError("'tables' is malformed")
        for table, entry in tables.items():
            if not (
                isinstance(entry, dict)
                and set(entry) == {"rows", "sha256"}
                and isinstance(entry["rows"], int)
                and not isinstance(entry["rows"], bool)
                and entry["rows"] >= 0
                and isinstance(entry["sha256"], str)
            ):
                raise ValueError(f"entry of table {table!r} is malformed")
    except (ValueError, RecursionError) as e:
        raise GalleryError(f"{path}: export manifest is unreadable ({e})") from None
    return manifest


# -- files ----------------------------------------------------------------------------------------
def same_file(path: str | Path, gallery: str | Path) -> bool:
    """Whether `path` is the gallery file or one of SQLite's files beside it (-wal, -shm, -journal)."""
    target = Path(path)
    for own in (Path(gallery), *(Path(f"{gallery}{suffix}") for suffix in ("-wal", "-shm", "-journal"))):
        try:
            if target.resolve() == own.resolve() or (target.exists() and own.exists() and target.samefile(own)):
                return True
        except OSError:
            continue
    return False


def read_chunks(conn: sqlite3.Connection, path: Path, sql: str, params: Sequence[Any] = ()) -> Iterable[list[tuple]]:
    """`chunks` of an import file, its SQLite errors (damage, a value over the length limit) a
    GalleryError naming the file."""
    try:
        yield from chunks(conn, sql, params)
    except (sqlite3.DatabaseError, UnicodeDecodeError) as e:
        raise GalleryError(f"{path}: not a readable exported gallery ({one_line(e)})") from None


# -- export / import ---------------------------------------------------------------------------
def export(gallery: "Gallery", path: str | Path) -> dict[str, int]:
    """Write the gallery (items, embeddings, local features, negatives, thresholds, the model it
    belongs to) to one portable SQLite file, atomically, with a manifest that `import_from`
    verifies: rows and a sha256 per table (see above). The device's own history (events,
    outbox) is not exported, not even in free pages: the copy is vacuumed after it is emptied."""
    path = Path(path)
    if gallery.path != ":memory:" and same_file(path, gallery.path):
        raise GalleryError(f"{path}: is this gallery's own file; export to another file")
    if path.is_dir():
        raise GalleryError(f"{path}: is a folder; export to a file")
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.unlink(missing_ok=True)
        gallery.db.execute("VACUUM INTO ?", [str(tmp)])  # one consistent copy, WAL included
        out = sqlite3.connect(str(tmp), isolation_level=None)
        try:
            out.execute("PRAGMA journal_mode = DELETE")
            out.execute("BEGIN")
            tables = {r[0] for r in out.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            for table in LOCAL_TABLES:
                if table in tables:
                    out.execute(f"DELETE FROM [{table}]")
            vectors.drop(out)  # derived from the embeddings: rebuilt on import, or when the file is opened
            contents = compute(out, EXPORT_TABLES)
            write(out, contents)
            out.execute("COMMIT")
            out.execute("VACUUM")  # the deleted history leaves no pages behind
        finally:
            out.close()
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        try:
            fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError:
            pass  # the rename is done; some file systems cannot sync a folder
    except (sqlite3.Error, OSError, UnicodeDecodeError) as e:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise GalleryError(f"{path}: cannot export {gallery.path} to it ({one_line(e)})") from None
    counts = contents["tables"]
    return {"items": counts["items"]["rows"], "embeddings": counts["embeddings"]["rows"]}


def import_into(gallery: "Gallery", path: str | Path, *, verify: bool = True) -> dict[str, int]:
    """Merge an exported gallery into this one, in one transaction (labels present get its vectors).

    Nothing is written unless the whole file passes; otherwise a GalleryError (or a
    ModelMismatchError) names the file and what is wrong, and the gallery is as it was:

    - the file must be a regular file (a symlink to one is followed), not this gallery itself;
    - it is opened read-only and immutable, and nothing in it runs (`open_import`);
    - its manifest must match: the model and each table's row count, compared before any
      row is read, and each table's sha256, recomputed while the rows are read and inserted
      (the transaction is rolled back on a difference);
    - every value is checked (`check_*`): labels non-empty text without control
      characters, metadata a JSON object, vectors of the gallery's dimension with a finite
      scale and no longer than a unit vector, local features consistent; rows must belong
      to an item of the file;
    - tables of more than `MAX_ROWS` rows and values of more than
      `MAX_VALUE_BYTES` are refused unread; rows are read `FETCH_ROWS` at a
      time, so memory stays bounded whatever the file holds.

    An export without a manifest (written before exports had one, or stripped of it) is
    refused unless `verify=False` (`edge-retrieval import --unverified`), which imports it with
    every check above but the digests. A file with a manifest is always verified.

    Labels and metadata are stored as they are (SQL or HTML in them is only text). Sources
    (the paths photos were enrolled from) name files on the exporting machine: they are kept
    prefixed with "imported:", so nothing here ever reads a file an import named. Thresholds
    are calibrated for one gallery and are not imported (run `calibrate` again).
    """
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except OSError:
        raise GalleryError(f"{path}: no such file") from None
    if not stat.S_ISREG(mode):
        raise GalleryError(f"{path}: not a regular file")
    if gallery.path != ":memory:" and same_file(path, gallery.path):
        raise GalleryError(f"{path}: is this gallery's own file")
    try:
        src = open_import(path)
    except sqlite3.Error as e:
        raise GalleryError(f"{path}: cannot be opened ({one_line(e)})") from None
    try:
        return _import(gallery, src, path, verify)
    finally:
        src.close()


def _import(gallery: "Gallery", src: sqlite3.Connection, path: Path, verify: bool) -> dict[str, int]:
    try:  # what the file says about itself, read before anything is written (its errors name it)
        version = src.execute("PRAGMA user_version").fetchone()[0]
        if not 1 <= version <= SCHEMA_VERSION:
            newer = f", newer than this program's {SCHEMA_VERSION}" if version > SCHEMA_VERSION else ""
            raise GalleryError(f"{path}: not an exported gallery (schema version {version}{newer})")
        present = check_schema(src, path, EXPORT_TABLES, GALLERY_TABLES)
        contents = read_manifest(src, path)
        if contents is None and verify:
            raise GalleryError(
                f"{path}: has no export manifest (exported by an older version, or stripped); "
                f"nothing imported (--unverified imports it with its rows checked, not verified)"
            )
        counts = {table: src.execute(f"SELECT count(*) FROM [{table}]").fetchone()[0] for table in present}
        keys = MODEL_KEYS
        model = dict(
            src.execute(f"SELECT key, value FROM meta WHERE key IN ({', '.join('?' * len(keys))})", keys).fetchall()
        )
        dim = parse_dim(model.get("dim")) or 0
        wrong = {
            table: src.execute(
                f"SELECT count(*) FROM [{table}] WHERE typeof(vector) != 'blob' OR length(vector) != ?", [dim]
            ).fetchone()[0]
            for table in ("embeddings", "negatives")
            if table in present
        }
    except (sqlite3.DatabaseError, UnicodeDecodeError) as e:  # damage; text that is not UTF-8
        raise GalleryError(f"{path}: not an exported gallery ({one_line(e)})") from None
    for table, n in counts.items():
        if n > MAX_ROWS:
            raise GalleryError(f"{path}: {n} rows in {table}, more than the limit of {MAX_ROWS}")
    if contents is not None:
        listed = contents["tables"]
        for table in sorted(set(listed) | present):
            if table not in EXPORT_TABLES:
                raise GalleryError(f"{path}: the manifest lists table {table!r}, unknown to this program")
            if table not in present:
                raise GalleryError(f"{path}: the manifest lists table {table!r}, which the file lacks")
            if table not in listed:
                raise GalleryError(f"{path}: table {table!r} is not in the export manifest")
            if listed[table]["rows"] != counts[table]:
                raise GalleryError(
                    f"{path}: the manifest says {listed[table]['rows']} rows in {table}, the file holds {counts[table]}"
                )
        if contents["model"] != model:
            raise GalleryError(f"{path}: the manifest's model {contents['model']} differs from the file's {model}")
    if not any(counts[t] for t in ("items", *ITEM_TABLES) if t in counts):
        return {"items": 0, "embeddings": 0}
    try:
        sha, name, dim = check_model(model)
    except ValueError as e:
        raise GalleryError(f"{path}: exported gallery has no valid model ({e})") from None
    for table, n in wrong.items():  # blob lengths, counted before any blob is read
        if n:
            raise GalleryError(f"{path}: {n} {table} vector(s) are not {dim} bytes")
    gallery.check_model(sha, name)  # before anything is read or locked
    if gallery.dim is not None and gallery.dim != dim:
        raise GalleryError(f"{path}: vectors have {dim} dimensions, the gallery {gallery.dim}")
    digests = {table: Digest() for table in present}
    try:
        with gallery.transaction():
            gallery._bind(sha, name, dim)
            new_ids: dict[int, int] = {}
            for rows in read_chunks(src, path, select("items", EXPORT_TABLES["items"])):
                digests["items"].update(rows)
                for row in rows:
                    old_id, label, metadata, created = check_item(row)
                    if old_id in new_ids:
                        raise ValueError(f"item id {old_id} appears twice")
                    found = gallery.db.execute("SELECT id FROM items WHERE label = ?", [label]).fetchone()
                    new_ids[old_id] = (
                        found[0]
                        if found
                        else gallery.db.execute(
                            "INSERT INTO items(label, metadata, created) VALUES (?, ?, ?)", [label, metadata, created]
                        ).lastrowid
                    )
            for table, cols in ITEM_TABLES.items():
                if table not in present:
                    continue
                insert = f"INSERT INTO {table}({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
                at = cols.index("source")
                for rows in read_chunks(src, path, select(table, cols)):
                    digests[table].update(rows)
                    if table == "features":
                        check_features(rows)
                    else:
                        check_vectors(rows, dim, table)
                    out = []
                    for row in rows:
                        if row[0] not in new_ids:
                            raise ValueError(f"a row of {table} belongs to item {row[0]}, which the file lacks")
                        source = row[at]
                        if source and not source.startswith("imported:"):
                            source = "imported:" + source
                        out.append((new_ids[row[0]], *row[1:at], source, *row[at + 1 :]))
                    gallery.db.conn.executemany(insert, out)
            for table in present - {"items", *ITEM_TABLES}:  # verified, not imported (thresholds)
                for rows in read_chunks(src, path, select(table, EXPORT_TABLES[table])):
                    digests[table].update(rows)
            if contents is not None:
                for table, digest in digests.items():
                    if digest.entry() != contents["tables"][table]:
                        raise ValueError(
                            f"the rows of {table} do not match the export manifest's sha256 "
                            f"(damaged or edited since the export)"
                        )
    except ValueError as e:
        raise GalleryError(f"{path}: {e}; nothing imported") from None
    return {"items": counts["items"], "embeddings": counts.get("embeddings", 0)}
