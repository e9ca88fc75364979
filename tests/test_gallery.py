import sqlite3
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest

from edge_retrieval import Gallery, GalleryError, ModelMismatchError
from edge_retrieval.storage.database import SCHEMA_VERSION

SHA = "a" * 64
OTHER_SHA = "b" * 64
_SCORE_TOLERANCE = 1e-2  # int8 codes vs float cosine


def unit(rng, n, d=64):
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def snapshot(path):
    con = sqlite3.connect(path)
    try:
        return [con.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall() for t in ("meta", "items", "embeddings")]
    finally:
        con.close()


def test_add_search_items_and_best_embedding_per_item(gallery):
    rng = np.random.default_rng(0)
    v = unit(rng, 5)
    gallery.add("a", v[:2], model_sha256=SHA, model_name="m", metadata={"room": 1})
    gallery.add("b", v[2:3], model_sha256=SHA)
    gallery.add("c", v[3:], model_sha256=SHA)
    m = gallery.search(v, k=3)
    assert m.item_ids.shape == m.scores.shape == m.labels.shape == (5, 3)
    assert list(m.labels[:, 0]) == ["a", "a", "b", "c", "c"]
    assert np.allclose(m.scores[:, 0], 1.0, atol=_SCORE_TOLERANCE)
    assert all(len(set(row)) == 3 for row in m.item_ids)  # one entry per item
    assert (np.diff(m.scores, axis=1) <= 0).all()
    for q in range(5):  # one query (a camera frame's: its own shorter path) = its row of the batch
        one = gallery.search(v[q], k=3)
        assert one.item_ids.tolist() == [m.item_ids[q].tolist()] and one.labels.tolist() == [m.labels[q].tolist()]
        assert np.allclose(one.scores[0], m.scores[q], atol=1e-6)
    items = {i.label: i for i in gallery.items()}
    assert items["a"].embeddings == 2 and items["a"].metadata == {"room": 1}


def test_k_larger_than_items_and_empty_gallery(gallery):
    m = gallery.search(np.ones((2, 8), np.float32), k=5)
    assert m.item_ids.shape == (2, 0)
    gallery.add("only", np.full((1, 8), 8**-0.5), model_sha256=SHA)
    assert gallery.search(np.ones(8), k=5).item_ids.shape == (1, 1)


def test_adding_to_an_existing_label_appends_and_merges_metadata(gallery):
    rng = np.random.default_rng(1)
    first = gallery.add("x", unit(rng, 1), model_sha256=SHA, metadata={"a": 1})
    second = gallery.add("x", unit(rng, 2), model_sha256=SHA, metadata={"b": 2})
    assert first == second
    item = gallery.item("x")
    assert item.embeddings == 3 and item.metadata == {"a": 1, "b": 2}


def test_wrong_model_is_refused_naming_the_gallery_model(gallery):
    gallery.add("a", np.full((1, 8), 8**-0.5), model_sha256=SHA, model_name="mobilenet_v2_int8")
    with pytest.raises(ModelMismatchError, match="belongs to model mobilenet_v2_int8"):
        gallery.add("b", np.full((1, 8), 8**-0.5), model_sha256=OTHER_SHA, model_name="other")
    assert gallery.count() == (1, 1)


@pytest.mark.parametrize(
    "vector, says",
    [
        (np.full((1, 8), 0.5), "vector 0 has length 1.414, not 1"),
        (np.zeros((1, 8)), "vector 0 has length 0, not 1"),
        (np.array([[0.6, 0.8], [0.6, 0.81]]), "vector 1 has length 1.008"),
    ],
)
def test_add_refuses_vectors_that_are_not_unit_length_naming_the_item(gallery, vector, says):
    with pytest.raises(GalleryError, match=f"item 'cat': {says}"):
        gallery.add("cat", vector, model_sha256=SHA)
    gallery.add("cat", np.array([[0.6, 0.8], [0.6, 0.8005]]), model_sha256=SHA)  # within 1e-3
    assert gallery.count() == (1, 2)


def test_exception_mid_enrol_leaves_the_file_unchanged(tmp_path):
    path = tmp_path / "g.db"
    rng = np.random.default_rng(2)
    with Gallery(path) as g:
        g.add("keep", unit(rng, 2), model_sha256=SHA)
    before = snapshot(path)
    with Gallery(path) as g:
        with pytest.raises(RuntimeError):
            with g.transaction():
                g.add("new1", unit(rng, 1), model_sha256=SHA)
                g.add("keep", unit(rng, 1), model_sha256=SHA, metadata={"changed": True})
                raise RuntimeError("crash half-way")
        with pytest.raises(GalleryError):
            g.add("bad", np.full((1, 64), np.nan), model_sha256=SHA)
        with pytest.raises(GalleryError, match="dimensions"):
            g.add("wrong-dim", unit(rng, 1, 32), model_sha256=SHA)
        assert [i.label for i in g.items()] == ["keep"]
    assert snapshot(path) == before


def test_remove_by_label_and_id(gallery):
    rng = np.random.default_rng(3)
    a = gallery.add("a", unit(rng, 2), model_sha256=SHA)
    gallery.add("b", unit(rng, 1), model_sha256=SHA)
    assert gallery.remove("b").label == "b"
    assert gallery.remove(a).embeddings == 2
    assert gallery.count() == (0, 0)
    with pytest.raises(GalleryError, match="no item"):
        gallery.remove("b")


def test_other_connection_sees_changes_without_reopen(tmp_path):
    path = tmp_path / "g.db"
    rng = np.random.default_rng(4)
    v = unit(rng, 2)
    with Gallery(path) as reader, Gallery(path) as writer:
        writer.add("a", v[:1], model_sha256=SHA)
        assert list(reader.search(v, 1).labels[:, 0]) == ["a", "a"]
        writer.add("b", v[1:], model_sha256=SHA)
        assert list(reader.search(v, 1).labels[:, 0]) == ["a", "b"]
        writer.remove("a")
        assert list(reader.search(v, 1).labels[:, 0]) == ["b", "b"]


def test_export_import_roundtrip(tmp_path):
    rng = np.random.default_rng(5)
    v = unit(rng, 3)
    with Gallery(tmp_path / "src.db") as src:
        src.add("a", v[:2], model_sha256=SHA, metadata={"k": "v"})
        src.add("b", v[2:], model_sha256=SHA)
        src.export(tmp_path / "out.gallery")
    with Gallery(tmp_path / "dst.db") as dst:
        dst.add("b", v[2:], model_sha256=SHA)
        assert dst.import_from(tmp_path / "out.gallery") == {"items": 2, "embeddings": 3}
        assert {i.label: i.embeddings for i in dst.items()} == {"a": 2, "b": 2}
        assert dst.item("a").metadata == {"k": "v"}


def test_exports_leave_the_packed_blocks_out_and_older_exports_with_them_still_import(tmp_path, monkeypatch):
    from edge_retrieval.storage import transfer, vectors

    monkeypatch.setattr(vectors, "BLOCK_ROWS", 2)
    rng = np.random.default_rng(8)
    v = unit(rng, 5)
    new, old = tmp_path / "new.gallery", tmp_path / "old.gallery"
    with Gallery(tmp_path / "src.db") as src:
        src.add("a", v[:3], model_sha256=SHA)
        src.add("b", v[3:], model_sha256=SHA)
        assert src.db.execute("SELECT count(*) FROM vector_blocks").fetchone()[0] == 2
        src.export(new)
        src.db.execute("VACUUM INTO ?", [str(old)])
    with closing(sqlite3.connect(old)) as con:  # an export as versions before the ladders wrote it: blocks in
        con.execute("DROP TABLE schema_versions")
        con.execute("PRAGMA user_version = 4")
        transfer.write(con, transfer.compute(con, transfer.EXPORT_TABLES))
        con.commit()
    with closing(sqlite3.connect(new)) as con:
        assert not con.execute("SELECT name FROM sqlite_master WHERE name LIKE 'vector%'").fetchall()
    for export in (new, old):
        with Gallery(tmp_path / f"into-{export.stem}.db") as dst:
            assert dst.import_from(export) == {"items": 2, "embeddings": 5}
            assert list(dst.search(v, k=1).labels[:, 0]) == ["a", "a", "a", "b", "b"]
            assert dst.db.execute("SELECT count(*) FROM vector_blocks").fetchone()[0] == 2  # packed again
    with Gallery(new) as opened:  # an export opened as a gallery: the vectors ladder builds the blocks again
        assert opened.db.versions()["vectors"] == 1
        assert opened.db.execute("SELECT count(*) FROM vector_blocks").fetchone()[0] == 2
        assert list(opened.search(v, k=1).labels[:, 0]) == ["a", "a", "a", "b", "b"]


def test_bad_import_changes_nothing(tmp_path):
    junk = tmp_path / "junk.gallery"
    junk.write_bytes(b"not a database at all" * 100)
    rng = np.random.default_rng(6)
    with Gallery(tmp_path / "other.db") as other:
        other.add("z", unit(rng, 1), model_sha256=OTHER_SHA)
        other.export(tmp_path / "other.gallery")
    with Gallery(tmp_path / "g.db") as g:
        g.add("a", unit(rng, 1), model_sha256=SHA)
        with pytest.raises(GalleryError, match="junk.gallery"):
            g.import_from(junk)
        with pytest.raises(ModelMismatchError):
            g.import_from(tmp_path / "other.gallery")
        assert g.count() == (1, 1)


def test_not_a_database_and_newer_schema_are_clear_errors(tmp_path):
    bad = tmp_path / "bad.db"
    bad.write_text("hello")
    with pytest.raises(GalleryError, match="bad.db"):
        Gallery(bad)
    newer = tmp_path / "newer.db"
    con = sqlite3.connect(newer)
    con.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    con.close()
    with pytest.raises(GalleryError, match="newer"):
        Gallery(newer)


def test_wal_and_migrations(tmp_path):
    with Gallery(tmp_path / "g.db") as g:
        assert g.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert g.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_connections_switching_one_file_to_wal_at_once_all_succeed(tmp_path):
    """Several connections switching one rollback-journal file (a new or exported gallery) to WAL
    at the same moment: SQLite refuses the losers at once with "database is locked" (a plain
    PRAGMA failed in about 1 repetition in 5 here); enable_wal waits for the winner instead."""
    import threading

    from edge_retrieval.storage.database import enable_wal

    path = tmp_path / "g.db"
    for repetition in range(50):
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        with closing(sqlite3.connect(path)) as con:
            con.execute("CREATE TABLE t(x)")
        start, errors, modes = threading.Barrier(6), [], []

        def switch(start=start, modes=modes, errors=errors):
            with closing(sqlite3.connect(path, timeout=30, isolation_level=None)) as con:
                start.wait()
                try:
                    enable_wal(con, timeout=30)
                    modes.append(con.execute("PRAGMA journal_mode").fetchone()[0])
                except sqlite3.Error as e:
                    errors.append(e)

        threads = [threading.Thread(target=switch) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, f"repetition {repetition}: {errors}"
        assert modes == ["wal"] * 6


def test_event_writes_do_not_reload_the_matrix_but_gallery_changes_do(tmp_path):
    path = tmp_path / "g.db"
    rng = np.random.default_rng(7)
    with Gallery(path) as reader, Gallery(path) as writer:
        writer.add("a", unit(rng, 1), model_sha256=SHA)
        first = reader.matrix()
        generation = reader.generation()
        from edge_retrieval.storage.events import Event, EventLog

        with EventLog(path, ["stdout"]) as log:
            log.record(Event(time=1.0, source="cam", kind="unknown", score=0.1))
        assert reader.generation() == generation and reader.matrix() is first
        writer.add("b", unit(rng, 1), model_sha256=SHA)
        assert reader.matrix() is first and len(first.keys) == 2  # appended in place
        writer.remove("a")
        assert list(reader.matrix().keys) == [reader.item("b").id]  # a removal reloads
