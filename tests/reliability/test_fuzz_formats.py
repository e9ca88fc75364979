"""Fuzzing the two file formats that come from outside: images and exported galleries.

- `preprocess.read_image` on arbitrary bytes and on mutated real JPEG, PNG, BMP, WebP and TIFF
  bytes: a BadImageError or an 8-bit BGR (H, W, 3) image within the pixel limit, never another
  exception or a crash.
- `Gallery.import_from` on a mutated real export (bytes flipped, inserted, cut; rows edited
  through sqlite3, with and without a forged manifest): either the import succeeds with exactly
  the export's contents (or, for a forged manifest, contents that pass every gallery invariant)
  or it raises a GalleryError (ModelMismatchError for another model's vectors) and the gallery
  file is byte-identical; in both cases the gallery stays valid (integrity check, search).

Bounded: `budget(bounded, full)` examples per target (EDGE_RETRIEVAL_RELIABILITY=full for the
long run); the counts fuzzed are printed and written to fuzz-counts.json in $EDGE_RETRIEVAL_ARTIFACTS (tests/artifacts.py).
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import sqlite3
import time
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
from artifacts import artifacts
from budget import FULL, budget
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_bad_files import contents as rows  # the same row-by-row view of a gallery

from edge_retrieval import BadImageError, Gallery, GalleryError, ModelMismatchError, preprocess
from edge_retrieval.demo import ITEMS, photo
from edge_retrieval.enroll import enroll, enroll_negatives
from edge_retrieval.storage import transfer as manifest_mod
from edge_retrieval.storage.checks import has_control
from edge_retrieval.storage.transfer import EXPORT_TABLES

ENROLLED = ITEMS[:2]
COUNTS: Counter = Counter()
SETTINGS = dict(
    deadline=None,
    database=None,
    derandomize=not FULL,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)


@pytest.fixture(scope="module", autouse=True)
def report_counts():
    start = time.perf_counter()
    yield
    summary = {
        "mode": "full" if FULL else "bounded",
        "seconds": round(time.perf_counter() - start, 1),
        "inputs": dict(COUNTS),
    }
    print(f"\nfuzzed inputs ({summary['mode']}, {summary['seconds']} s): {dict(COUNTS)}")
    (artifacts() / "fuzz-counts.json").write_text(json.dumps(summary, indent=2) + "\n")


# -- images ------------------------------------------------------------------------------------------
def _seeds() -> dict[str, bytes]:
    """Real image bytes in every accepted format: two repo photos as they are, one re-encoded small."""
    image = cv2.imread(str(photo("cameraman")))
    small = cv2.resize(image, (48, 40), interpolation=cv2.INTER_AREA)
    seeds = {"cat.jpg": photo("cat").read_bytes(), "coins.jpg": photo("coins").read_bytes()}
    for suffix, params in (
        (".jpg", [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]),
        (".png", []),
        (".bmp", []),
        (".webp", []),
        (".tiff", []),
    ):
        seeds[f"small{suffix}"] = cv2.imencode(suffix, small, params)[1].tobytes()
    return seeds


SEEDS = _seeds()


@st.composite
def mutated_image(draw):
    name = draw(st.sampled_from(sorted(SEEDS)))
    data = bytearray(SEEDS[name])
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "header", "size"]))
        pos = draw(st.integers(0, len(data) - 1)) if data else 0
        if op == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            data[pos] = draw(st.sampled_from([0x00, 0xFF, 0xD9, 0xDA, 0xC0, 0x7F, 0x80]))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=64))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 512))]
        elif op == "truncate":
            del data[pos:]
        elif op == "header":  # the first bytes hold the structure the parsers walk
            at = draw(st.integers(0, min(len(data), 64)))
            data[at : at + 1] = bytes([draw(st.integers(0, 255))])
        elif op == "size":  # a plausible size field somewhere in the header, set large
            at = draw(st.integers(0, min(len(data), 200)))
            data[at : at + 2] = draw(st.sampled_from([b"\xff\xff", b"\x75\x30", b"\x00\x00", b"\x7f\xff"]))
        if not data:
            break
    return name, bytes(data)


def check_read(path: Path, data: bytes) -> str:
    """read_image on `data`: 'image' or 'refused'; anything else fails the test."""
    path.write_bytes(data)
    try:
        image = preprocess.read_image(path)
    except BadImageError as e:
        assert e.path == str(path) and str(path) in str(e) and "\n" not in str(e)
        return "refused"
    assert isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert image.shape[0] > 0 and image.shape[1] > 0 and image.shape[0] * image.shape[1] <= preprocess.MAX_PIXELS
    return "image"


def test_fuzz_read_image_on_arbitrary_bytes(tmp_path):
    outcomes = Counter()

    @settings(max_examples=budget(300, 5000), **SETTINGS)
    @given(
        st.one_of(
            st.binary(max_size=2048),
            st.sampled_from(
                [b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"BM", b"RIFF\0\0\0\0WEBP", b"II*\0", b"MM\0*", b"II+\0"]
            ).flatmap(lambda magic: st.binary(max_size=512).map(lambda rest: magic + rest)),
        )
    )
    def check(data):
        outcomes[check_read(tmp_path / "x.img", data)] += 1

    check()
    COUNTS["read_image: arbitrary bytes"] += sum(outcomes.values())
    assert outcomes["refused"] > 0


def test_fuzz_read_image_on_mutated_real_images(tmp_path):
    outcomes = Counter()

    @settings(max_examples=budget(400, 8000), **SETTINGS)
    @given(mutated_image())
    def check(case):
        name, data = case
        outcomes[check_read(tmp_path / "x.img", data)] += 1

    check()
    COUNTS["read_image: mutated real images"] += sum(outcomes.values())
    print(f"\nmutated real images: {dict(outcomes)}")
    assert outcomes["refused"] > 0 and outcomes["image"] > 0, outcomes  # both sides were reached


def test_every_unmutated_seed_reads():
    for name, data in SEEDS.items():
        assert preprocess.decode_image(data, name).ndim == 3


# -- exports ------------------------------------------------------------------------------------------
def snapshot(path: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.parent.glob(path.name + "*"))}


@pytest.fixture(scope="module")
def formats(tmp_path_factory, embedder):
    """A real small export (2 items with local features, a negative, thresholds), a target gallery
    holding one other item, and the target as importing the export leaves it."""
    root = tmp_path_factory.mktemp("fuzz-export")
    with Gallery(root / "source.db") as g:
        enroll(g, embedder, [(name, photo(name)) for name in ENROLLED], metadata={"k": "v"})
        enroll_negatives(g, embedder, ENROLLED[0], [photo(ITEMS[5])])
        g.set_thresholds(0.5, {g.item(ENROLLED[0]).id: 0.55})
        g.export(root / "export.gallery")
    with Gallery(root / "target.db") as g:
        enroll(g, embedder, [(ITEMS[3], photo(ITEMS[3]))])
    shutil.copy(root / "target.db", root / "expected.db")
    with Gallery(root / "expected.db") as g:
        g.import_from(root / "export.gallery")
    query = embedder.embed_files([photo(ENROLLED[1])])
    return {
        "root": root,
        "export": (root / "export.gallery").read_bytes(),
        "target": root / "target.db",
        "expected": rows(root / "expected.db"),
        "query": query,
        "dim": embedder.dim,
        "pages": _table_pages(root / "export.gallery"),
    }


def _table_pages(path: Path) -> list[int]:
    """The pages of the export holding the rows import reads (where flips matter most)."""
    con = sqlite3.connect(path)
    try:
        names = (
            "items",
            "embeddings",
            "features",
            "negatives",
            "thresholds",
            "meta",
            manifest_mod.TABLE,
            "sqlite_schema",
        )
        return sorted(
            {
                r[0]
                for r in con.execute(f"SELECT pageno FROM dbstat WHERE name IN ({', '.join('?' * len(names))})", names)
            }
        )
    finally:
        con.close()


def assert_valid_gallery(path: Path, query: np.ndarray) -> None:
    """What any gallery must be, whatever was imported into it."""
    con = sqlite3.connect(path)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert con.execute("PRAGMA foreign_key_check").fetchall() == []
        dim = int(con.execute("SELECT value FROM meta WHERE key = 'dim'").fetchone()[0])
        for label, metadata in con.execute("SELECT label, metadata FROM items"):
            assert isinstance(label, str) and label.strip() == label and label and not has_control(label)
            assert isinstance(json.loads(metadata), dict)
        for table in ("embeddings", "negatives"):
            for vector, scale in con.execute(f"SELECT vector, scale FROM {table}"):
                assert isinstance(vector, bytes) and len(vector) == dim
                assert isinstance(scale, float) and math.isfinite(scale) and 0 < scale <= 1
                norm = float(np.linalg.norm(np.frombuffer(vector, np.int8).astype(np.float64))) * scale
                assert norm <= 1 + 0.5 * math.sqrt(dim) * scale + 1e-3
        for width, height, keypoints, descriptors in con.execute(
            "SELECT width, height, keypoints, descriptors FROM features"
        ):
            points = np.frombuffer(keypoints, "<f4")
            assert len(keypoints) % 8 == 0 and np.isfinite(points).all()
            if len(points) == 0:  # no features, or an image (the dense verifier's grey image)
                assert len(descriptors) in (0, width * height)
            else:
                assert len(descriptors) % (len(points) // 2) == 0
    finally:
        con.close()
    with Gallery(path) as g:  # the library reads it: the matrix, a search, every item's features
        matches = g.search(query, k=3)
        assert np.all(matches.scores <= 1 + 0.5 * math.sqrt(g.dim) / 127 + 1e-3)
        assert g.matrix().size == g.count()[1]
        for item in g.items():
            g.features(item.id)
        g.negatives()


def try_import(formats, work: Path, data: bytes) -> str:
    """Import `data` into a fresh copy of the target: 'imported' or 'refused'; checks the rest."""
    export, target = work / "fuzzed.gallery", work / "g" / "target.db"
    export.write_bytes(data)
    target.parent.mkdir(exist_ok=True)
    for stale in target.parent.iterdir():
        stale.unlink()
    shutil.copy(formats["target"], target)
    before = snapshot(target)
    try:
        with Gallery(target) as g:
            g.import_from(export)
        outcome = "imported"
    except (GalleryError, ModelMismatchError) as e:
        assert str(export) in str(e) and "\n" not in str(e), str(e)
        assert snapshot(target) == before  # nothing half-written
        outcome = "refused"
    assert_valid_gallery(target, formats["query"])
    return outcome


def test_fuzz_import_of_byte_mutated_exports(formats, tmp_path):
    original = formats["export"]
    page_size = 4096
    outcomes = Counter()

    @st.composite
    def mutation(draw):
        data = bytearray(original)
        for _ in range(draw(st.integers(1, 4))):
            where = draw(st.sampled_from(["anywhere", "table-page", "header"]))
            if where == "header":
                pos = draw(st.integers(0, 99))
            elif where == "table-page":
                page = draw(st.sampled_from(formats["pages"]))
                pos = (page - 1) * page_size + draw(st.integers(0, page_size - 1))
            else:
                pos = draw(st.integers(0, len(original) - 1))
            op = draw(st.sampled_from(["flip", "set", "zero-run", "truncate"]))
            if pos >= len(data):  # cut off by an earlier truncation
                continue
            if op == "flip":
                data[pos] ^= 1 << draw(st.integers(0, 7))
            elif op == "set":
                data[pos] = draw(st.integers(0, 255))
            elif op == "zero-run":
                n = draw(st.integers(1, 64))
                data[pos : pos + n] = bytes(len(data[pos : pos + n]))
            else:
                del data[pos:]
        return bytes(data)

    @settings(max_examples=budget(150, 3000), **SETTINGS)
    @given(mutation())
    def check(data):
        outcome = try_import(formats, tmp_path, data)
        if outcome == "imported":  # nothing the manifest covers changed: exactly the export's rows
            assert rows(tmp_path / "g" / "target.db") == formats["expected"]
        outcomes[outcome] += 1

    check()
    COUNTS["import: byte-mutated exports"] += sum(outcomes.values())
    print(f"\nbyte-mutated exports: {dict(outcomes)}")
    assert outcomes["refused"] > 0, outcomes


VALUES = st.one_of(
    st.none(),
    st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1),
    st.floats(allow_nan=True),
    st.sampled_from([0.0, -0.0, 1e-300, 1.0, 1.0000001, 1e308, float("inf"), -1.0]),
    st.text(max_size=40),
    st.binary(max_size=300),
    st.sampled_from(
        [
            "",
            " ",
            "{}",
            "[]",
            "null",
            '{"a": NaN}',
            '{"a": 1e999}',
            "\x1b[31m",
            "a\nb",
            "'); DROP TABLE items;--",
            "<script>alert(1)</script>",
            "../../etc/passwd",
            "0" * 64,
            "256",
            "-1",
            "99999999999",
            "１２８",
        ]
    ),
    st.binary(min_size=256, max_size=256),
    st.binary(min_size=8, max_size=8),
)
COLUMNS = {**{t: tuple(c) for t, c in EXPORT_TABLES.items()}, "meta": ("key", "value")}


@st.composite
def row_edit(draw):
    table = draw(st.sampled_from(sorted(COLUMNS)))
    kind = draw(st.sampled_from(["update", "update", "update", "delete", "duplicate"]))
    return table, kind, draw(st.sampled_from(COLUMNS[table])), draw(st.integers(1, 4)), draw(VALUES)


def apply_edits(path: Path, edits, forge: bool) -> bool:
    """Apply the edits through sqlite3 (a failed statement, e.g. a constraint, is skipped); rewrite the
    manifest if `forge`. Returns whether any value the manifest covers changed."""
    con = sqlite3.connect(path)
    try:
        covered = {t: con.execute(f"SELECT * FROM {t} ORDER BY rowid").fetchall() for t in EXPORT_TABLES}
        covered["model"] = con.execute(
            "SELECT * FROM meta WHERE key IN ('model_sha256', 'model_name', 'dim') ORDER BY key"
        ).fetchall()
        for table, kind, column, rowid, value in edits:
            try:
                if kind == "update":
                    con.execute(f"UPDATE {table} SET {column} = ? WHERE rowid = ?", [value, rowid])
                elif kind == "delete":
                    con.execute(f"DELETE FROM {table} WHERE rowid = ?", [rowid])
                else:
                    cols = ", ".join(c for c in COLUMNS[table] if c != "id")
                    con.execute(f"INSERT INTO {table}({cols}) SELECT {cols} FROM {table} WHERE rowid = ?", [rowid])
                con.commit()
            except sqlite3.Error:
                con.rollback()
        after = {t: con.execute(f"SELECT * FROM {t} ORDER BY rowid").fetchall() for t in EXPORT_TABLES}
        after["model"] = con.execute(
            "SELECT * FROM meta WHERE key IN ('model_sha256', 'model_name', 'dim') ORDER BY key"
        ).fetchall()
        if forge:
            manifest_mod.write(con, manifest_mod.compute(con, EXPORT_TABLES))
            con.commit()
        return after != covered
    finally:
        con.close()


def test_fuzz_import_of_row_edited_exports(formats, tmp_path):
    outcomes = Counter()
    seed = tmp_path / "seed.gallery"

    @settings(max_examples=budget(200, 4000), **SETTINGS)
    @given(st.lists(row_edit(), min_size=1, max_size=3), st.booleans())
    def check(edits, forge):
        seed.write_bytes(formats["export"])
        changed = apply_edits(seed, edits, forge)
        outcome = try_import(formats, tmp_path, seed.read_bytes())
        if changed and not forge:  # the manifest was not rewritten: any covered change is caught
            assert outcome == "refused", edits
        if outcome == "imported" and not changed:
            assert rows(tmp_path / "g" / "target.db") == formats["expected"]
        outcomes[f"{outcome}{' (forged manifest)' if forge else ''}"] += 1

    check()
    COUNTS["import: row-edited exports"] += sum(outcomes.values())
    print(f"\nrow-edited exports: {dict(outcomes)}")
    assert outcomes["refused"] > 0 and outcomes["refused (forged manifest)"] > 0, outcomes
