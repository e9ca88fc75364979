"""The one place that opens the gallery file: checks, WAL mode, transactions, schema ladders.

A `Database` is an open, checked gallery file in WAL mode (a `sqlite_utils.Database`). Each
subsystem owns its schema as a named ladder of steps (`Migrations("gallery", [...])`, like
llm's) and applies it when it is handed the database; the file records each ladder's version
in `schema_versions`. Files written before the ladders were split (`PRAGMA user_version` 1..4,
one ladder for everything) are adopted at open: `LEGACY` says which steps they had run.
"""

from __future__ import annotations

import functools
import os
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence, Union

import sqlite_utils

from ..errors import DamagedGalleryError, GalleryError, one_line

# PRAGMA user_version of a file whose ladders are recorded in `schema_versions`; 1..4 were the
# versions of the single ladder before it, 0 is a new file.
SCHEMA_VERSION = 5
LEGACY = {  # user_version of the single ladder → the steps of each subsystem's ladder it had run
    1: {"gallery": 1},
    2: {"gallery": 1, "events": 1, "outbox": 1},
    3: {"gallery": 2, "events": 1, "outbox": 1},
    4: {"gallery": 2, "vectors": 1, "events": 1, "outbox": 1},
}
VERSIONS_TABLE = "schema_versions"
GALLERY_TABLES = ("meta", "items", "embeddings")  # what makes a file of the single ladder a gallery
FULL_DISK_BYTES = 1 << 20  # less free space than this after a failed write: call the disk full
TIMEOUT = 30.0  # seconds a connection waits for another one's lock

# A step is one SQL script (split on ';'), a list of statements (which may hold ';' themselves),
# or a function of the connection (a data migration); it runs inside the ladder's transaction.
Step = Union[str, Sequence[str], Callable[[sqlite3.Connection], None]]


def connect(path: str, timeout: float = TIMEOUT) -> sqlite3.Connection:
    """A plain connection to the file (autocommit; transactions are explicit), usable from any thread."""
    return sqlite3.connect(path, timeout=timeout, check_same_thread=False, isolation_level=None)


class Database(sqlite_utils.Database):
    """One gallery file, open: checked (`check_gallery_file`) before anything is written, in WAL mode,
    foreign keys on, adopted into `schema_versions`. Subsystems apply their own ladders to it.

    >>> db = Database("gallery.db"); gallery = Gallery(db); log = EventLog(db, ["mqtt"])
    """

    def __init__(self, path: str | Path, *, create: bool = True):
        self.path = str(path)
        if self.path != ":memory:":
            if not create and not Path(self.path).is_file():
                raise GalleryError(f"{self.path}: no such gallery")
            parent = Path(self.path).parent
            if not parent.is_dir():
                raise GalleryError(f"{self.path}: folder {parent} does not exist")
        conn = None
        try:
            conn = connect(self.path)
            check_gallery_file(conn, self.path)  # before WAL mode or a migration writes to it
            conn.execute("PRAGMA foreign_keys = ON")
            if self.path != ":memory:":
                enable_wal(conn, timeout=TIMEOUT)
            _adopt(conn)
        except BaseException as e:
            if conn is not None:
                conn.close()
            if isinstance(e, sqlite3.OperationalError):  # locked, disk full, I/O, cannot create
                raise GalleryError(f"{self.path}: cannot open the gallery ({sqlite_failure(e, self.path)})") from None
            if is_damage(e) and getattr(e, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_CORRUPT:
                raise damaged(self.path, e) from None
            if isinstance(e, sqlite3.DatabaseError):  # not a database
                raise GalleryError(f"{self.path}: not a gallery database ({e})") from None
            raise
        super().__init__(conn)

    def versions(self) -> dict[str, int]:
        """{ladder name: steps applied} as the file records them."""
        return dict(self.execute(f"SELECT name, version FROM {VERSIONS_TABLE}").fetchall())

    def __enter__(self) -> "Database":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass(frozen=True)
class Migrations:
    """One subsystem's schema: named steps, applied in order, each once, each in its own transaction.

    Each step holds the write lock from its start (BEGIN IMMEDIATE) and reads the ladder's version
    again under it: two processes opening a new gallery at once run every step once.
    """

    name: str
    steps: Sequence[Step]

    def version(self, conn: sqlite3.Connection) -> int:
        row = conn.execute(f"SELECT version FROM {VERSIONS_TABLE} WHERE name = ?", [self.name]).fetchone()
        return row[0] if row else 0

    def apply(self, db: Database) -> None:
        conn, last = db.conn, len(self.steps)
        try:
            while (version := self.version(conn)) < last:
                with write_transaction(conn):
                    number = self.version(conn)
                    if number >= last:  # another process migrated meanwhile
                        continue
                    step = self.steps[number]
                    if callable(step):
                        step(conn)
                    else:
                        for statement in step.split(";") if isinstance(step, str) else step:
                            if statement.strip():
                                conn.execute(statement)
                    conn.execute(
                        f"INSERT INTO {VERSIONS_TABLE}(name, version) VALUES (?, ?) "
                        "ON CONFLICT(name) DO UPDATE SET version = excluded.version",
                        [self.name, number + 1],
                    )
        except sqlite3.Error as e:
            if is_damage(e):
                raise damaged(db.path, e) from None
            raise GalleryError(
                f"{db.path}: cannot bring the {self.name} schema up to date ({sqlite_failure(e, db.path)})"
            ) from None
        if version > last:
            raise GalleryError(f"{db.path}: {self.name} schema version {version} is newer than this program's ({last})")


def _adopt(conn: sqlite3.Connection) -> None:
    """Create `schema_versions` in a new file, or in a file of the single ladder with the steps it ran."""
    if conn.execute("PRAGMA user_version").fetchone()[0] >= SCHEMA_VERSION:
        return
    with write_transaction(conn):
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version >= SCHEMA_VERSION:  # another process adopted it meanwhile
            return
        conn.execute(f"CREATE TABLE {VERSIONS_TABLE} (name TEXT PRIMARY KEY, version INTEGER NOT NULL)")
        conn.executemany(
            f"INSERT INTO {VERSIONS_TABLE}(name, version) VALUES (?, ?)", list(LEGACY.get(version, {}).items())
        )
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


@contextmanager
def write_transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction that holds the write lock from its start (BEGIN IMMEDIATE).

    A deferred BEGIN reads first and upgrades to a write lock at its first write; in WAL
    mode SQLite refuses that upgrade at once ("database is locked", without waiting for
    the busy timeout) when another connection writes or wrote since the read began. Taking
    the lock first makes a writer wait (up to the connection's timeout) for the other
    writers instead. Committed on leaving, rolled back on any exception.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        if conn.in_transaction:  # SQLite may have rolled back already (disk full, I/O error)
            conn.execute("ROLLBACK")
        raise
    try:
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


# -- damage ----------------------------------------------------------------------------------
def is_damage(e: BaseException) -> bool:
    """Whether SQLite says the file is damaged ("database disk image is malformed", "file is not a
    database"), as opposed to locked, full or unreachable."""
    code = getattr(e, "sqlite_errorcode", None)
    return (
        isinstance(e, sqlite3.DatabaseError)
        and code is not None
        and code & 0xFF in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)
    )


def damaged(path: str, e: BaseException) -> DamagedGalleryError:
    return DamagedGalleryError(
        f"{path}: damaged gallery database ({one_line(e)}); check it with: sqlite3 {path} 'PRAGMA integrity_check'"
    )


def guarded(method):
    """A method of an object with `.path` whose SQLite damage errors become DamagedGalleryError
    (the daemon and the kiosk then get a typed error, not a raw sqlite3 one)."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except sqlite3.DatabaseError as e:
            if is_damage(e):
                raise damaged(self.path, e) from None
            raise

    return wrapper


# -- failures ----------------------------------------------------------------------------------
def sqlite_failure(e: sqlite3.Error, path: str) -> str:
    """SQLite's message, plus what the disk says when a write failed on a (nearly) full disk:
    SQLite reports a full disk as "disk I/O error" when it cannot even create the -shm file."""
    text = str(e)
    if path != ":memory:" and getattr(e, "sqlite_errorname", "").startswith(("SQLITE_FULL", "SQLITE_IOERR")):
        folder = os.path.dirname(os.path.abspath(path))
        try:
            st = os.statvfs(folder)
        except OSError:
            return text
        free = st.f_bavail * st.f_frsize
        if free < FULL_DISK_BYTES:
            text += f"; the disk is full: {free // 1024} KiB free in {folder}"
        elif (limit := _file_size_limit()) is not None:  # EFBIG: SQLite says only "disk I/O error"
            text += f"; this process may not write files past {limit} bytes (ulimit -f)"
    return text


def _file_size_limit() -> int | None:
    try:
        import resource
    except ImportError:  # not on POSIX
        return None
    soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    return None if soft == resource.RLIM_INFINITY else soft


# -- opening -----------------------------------------------------------------------------------
def enable_wal(conn: sqlite3.Connection, *, timeout: float) -> None:
    """Put the database in WAL mode, waiting up to `timeout` seconds for other connections.

    Switching a rollback-journal file to WAL needs its exclusive lock. When two processes open
    a new gallery at once, both hold the shared lock and want the exclusive one; SQLite then
    answers "database is locked" at once instead of calling the busy handler (it would wait
    for a deadlock). So the switch is retried here; the loser finds the file in WAL mode.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as e:
            if e.sqlite_errorcode != sqlite3.SQLITE_BUSY or time.monotonic() >= deadline:
                raise
        time.sleep(0.01)


def _wal_in_use(path: str) -> bool:
    try:
        return os.path.getsize(path + "-wal") > 0
    except OSError:
        return False


def check_gallery_file(conn: sqlite3.Connection, path: str) -> None:
    """Refuse, before anything is written to it (WAL mode, migrations), a file that is not a gallery
    of this program: not SQLite, truncated, another program's SQLite database, a newer schema.

    It reads the file only through SQLite (and `os.stat`): opening and closing the database file
    with a handle of our own would drop the POSIX locks that this process's other connections
    to it hold ("How To Corrupt An SQLite Database File", 2.2) — a daemon and an `enroll` in one
    process would then corrupt it.
    """
    own = not conn.in_transaction
    # A checkpoint in another process writes page 1, with the new page count, before the pages
    # that grow the file: a healthy file looks cut for a moment, and its WAL may be gone by the time
    # we look. Truncated means: still so a little later, with no WAL in use.
    for attempt in range(4):
        if own:  # one snapshot for all reads: another process may be migrating this new file right now
            conn.execute("BEGIN")
        try:  # a file that is not SQLite fails here, before anything is written: "file is not a database"
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'")}
            pages = conn.execute("PRAGMA page_count").fetchone()[0]
            page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        finally:
            if own and conn.in_transaction:
                conn.execute("COMMIT")
        if path == ":memory:" or not pages or _wal_in_use(path):
            break
        try:
            size = os.stat(path).st_size
        except OSError:
            break
        if pages * page_size <= size:
            break
        if attempt == 3:
            raise GalleryError(
                f"{path}: truncated gallery database ({size} bytes, its header says {pages} pages of {page_size} bytes)"
            )
        time.sleep(0.05)
    if version > SCHEMA_VERSION:
        raise GalleryError(f"{path}: schema version {version} is newer than this program's ({SCHEMA_VERSION})")
    if version == 0 and names:
        raise GalleryError(
            f"{path}: not a gallery (an SQLite database of another program, with "
            f"{', '.join(sorted(names)[:3])}{', …' if len(names) > 3 else ''}); left unchanged"
        )
    required = (VERSIONS_TABLE,) if version == SCHEMA_VERSION else GALLERY_TABLES
    missing = [t for t in required if t not in names]
    if version > 0 and missing:
        raise GalleryError(f"{path}: not a gallery (schema version {version} without table {missing[0]!r})")
