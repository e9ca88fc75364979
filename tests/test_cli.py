import json
import shutil
import sqlite3
from contextlib import closing

import pytest
from click.testing import CliRunner

from edge_retrieval.cli import cli
from edge_retrieval.demo import ITEMS, UNKNOWN, photo


def run(*args, ok=True):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, result.output + result.stderr
    return result


@pytest.mark.parametrize("command", sorted(cli.commands))
def test_every_command_has_help(command):
    result = run(command, "--help")
    assert "Usage" in result.output or "usage" in result.output
    assert cli.commands[command].help


@pytest.fixture
def folder(tmp_path):
    """A folder whose sub-folders name the labels: 3 items, the first with 2 photos."""
    root = tmp_path / "photos"
    for i, name in enumerate(ITEMS[:3]):
        (root / name).mkdir(parents=True)
        shutil.copy(photo(name), root / name / "a.jpg")
        if i == 0:
            shutil.copy(photo(name), root / name / "b.jpg")
    return root


def test_enroll_folder_then_search_json(tmp_path, folder, embedder):
    db = tmp_path / "g.db"
    out = run("enroll", folder, "--meta", "room=hall", "--meta", "year=1890", "-g", db).output
    assert "enrolled 4 image(s) as 3 item(s)" in out
    out = run("search", photo(ITEMS[1]), photo(ITEMS[2]), "--json", "--top-k", "2", "-g", db).output
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["matches"][0]["label"] for r in rows] == [ITEMS[1], ITEMS[2]]
    first = rows[0]["matches"][0]
    assert set(first) == {"label", "score", "item_id", "metadata", "cosine", "inliers", "aligned", "votes", "vetoed"}
    assert first["metadata"] == {"room": "hall", "year": 1890} and first["cosine"] > 0.99
    assert [r["match"] for r in rows] == [ITEMS[1], ITEMS[2]]  # the final ranking starts with the match
    assert first["score"] == rows[0]["score"] >= first["cosine"]  # the final score: verified inliers add to it
    assert len(rows[0]["matches"]) == 2
    listed = [json.loads(line) for line in run("list", "--json", "-g", db).output.splitlines()]
    assert {i["label"]: i["embeddings"] for i in listed} == {ITEMS[0]: 2, ITEMS[1]: 1, ITEMS[2]: 1}


def test_bad_image_stops_with_one_line_and_adds_nothing(tmp_path, folder, embedder):
    bad = folder / ITEMS[1] / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    db = tmp_path / "g.db"
    result = run("enroll", folder, "-g", db, ok=False)
    assert result.exit_code == 1
    assert result.stderr.strip().count("\n") == 0 and "broken.jpg" in result.stderr
    assert not db.exists() or run("list", "-g", db).output == ""
    result = run("enroll", folder, "--skip-bad", "-g", db)
    assert "skipped 1 bad file(s)" in result.output and "enrolled 4 image(s) as 3 item(s)" in result.output


def test_missing_file_and_missing_gallery_are_named(tmp_path, embedder):
    result = run("enroll", tmp_path / "nope.jpg", "-g", tmp_path / "g.db", ok=False)
    assert result.exit_code == 1 and "nope.jpg: no such file" in result.stderr
    result = run("search", photo(ITEMS[0]), "-g", tmp_path / "absent.db", ok=False)
    assert result.exit_code == 1 and "absent.db: no such gallery" in result.stderr


def test_remove_export_import_info(tmp_path, folder, embedder):
    db, db2, exported = tmp_path / "g.db", tmp_path / "g2.db", tmp_path / "out.gallery"
    run("enroll", folder, "-g", db)
    assert "removed" in run("remove", ITEMS[2], "-g", db).output
    assert "exported 2 item(s), 3 embedding(s)" in run("export", exported, "-g", db).output
    assert "imported 2 item(s), 3 embedding(s)" in run("import", exported, "-g", db2).output
    info = json.loads(run("info", "--json", "-g", db2).output)
    assert info["gallery"]["items"] == 2 and info["gallery"]["model_sha256"] == info["model"]["sha256"]
    result = run("remove", "no-such-label", "-g", db2, ok=False)
    assert result.exit_code == 1 and "no item 'no-such-label'" in result.stderr


def test_wrong_model_gallery_is_refused(tmp_path, embedder):
    from edge_retrieval import Gallery

    db = tmp_path / "g.db"
    with Gallery(db) as g:
        g.add("x", [[embedder.dim**-0.5] * embedder.dim], model_sha256="f" * 64, model_name="someone-elses-model")
    result = run("search", photo(ITEMS[0]), "-g", db, ok=False)
    assert result.exit_code == 1 and "belongs to model someone-elses-model" in result.stderr


def test_demo_runs_on_built_in_photos(embedder):
    out = run("demo").output
    total = len(ITEMS) + len(UNKNOWN)
    assert f"{total}/{total} right" in out


def test_an_imported_gallery_identifies_like_the_original(tmp_path, folder, embedder):
    """Local features and negatives travel with export/import, so verification still works."""
    from edge_retrieval import Gallery

    db, db2, exported = tmp_path / "g.db", tmp_path / "g2.db", tmp_path / "out.gallery"
    run("enroll", folder, "-g", db)
    run("enroll", photo(ITEMS[2]), "--not", ITEMS[0], "-g", db)
    run("export", exported, "-g", db)
    run("import", exported, "-g", db2)
    with Gallery(db) as a, Gallery(db2) as b:
        for label in ITEMS[:3]:
            assert len(b.features(b.item(label).id)) == len(a.features(a.item(label).id)) > 0
        assert len(b.negatives()[0]) == len(a.negatives()[0]) == 1
    out = [json.loads(line) for line in run("search", photo(ITEMS[1]), "--json", "-g", db2).output.splitlines()]
    assert out[0]["match"] == ITEMS[1]


def test_events_list_and_retry_name_the_gallery_and_what_to_retry(tmp_path):
    from edge_retrieval.storage.gallery import Gallery

    missing = run("events", "list", "-g", tmp_path / "none.db", ok=False)
    assert missing.exit_code == 1 and "none.db" in missing.stderr and not (tmp_path / "none.db").exists()
    db = tmp_path / "gallery.db"
    Gallery(db).close()
    assert run("events", "list", "--parked", "-g", db).stdout == ""
    usage = run("events", "retry", "-g", db, ok=False)
    assert usage.exit_code == 2 and "EVENT_ID... or --all" in usage.stderr
    assert run("events", "retry", "5", "-g", db).stderr == "event 5: nothing parked\n"


def test_refresh_features_upgrades_a_gallery_enrolled_before_sift_and_info_shows_it(tmp_path, folder, embedder):
    db = tmp_path / "g.db"
    run("enroll", folder, "-g", db)
    with closing(sqlite3.connect(db)) as con, con:  # as the enrolment before the second verifier left it
        con.execute("DELETE FROM features WHERE kind = 'sift'")
    info = json.loads(run("info", "--json", "-g", db).output)
    assert info["gallery"]["features"] == {"orb": 4, "gray": 4, "lacking": 4}
    out = run("info", "-g", db).output
    assert (
        f"4 photo(s) with ORB features, 0 with SIFT, 4 with a grey image; 4 lacking some: add them with "
        f"edge-retrieval refresh-features -g {db}"
    ) in out
    (folder / ITEMS[0] / "b.jpg").unlink()
    result = run("refresh-features", "-g", db)
    assert result.stderr == f"missing {folder / ITEMS[0] / 'b.jpg'}: no such file\n"
    assert result.output.endswith(
        f"added what 3 photo(s) lacked in {db}, 1 photo(s) missing (listed above); "
        f"of 4 enrolled photo(s), 3 have SIFT features, 4 a grey image\n"
    )
    again = json.loads(run("refresh-features", "--json", "-g", db).stdout)
    assert again == {
        "gallery": str(db),
        "added": 0,
        "missing": [f"{folder / ITEMS[0] / 'b.jpg'}: no such file"],
        "photos": {"gray": 4, "orb": 4, "sift": 3},
    }
    assert json.loads(run("info", "--json", "-g", db).output)["gallery"]["features"] == {
        "gray": 4,
        "orb": 4,
        "sift": 3,
        "lacking": 1,
    }
    result = run("refresh-features", "-g", tmp_path / "absent.db", ok=False)
    assert result.exit_code == 1 and result.stderr == f"Error: {tmp_path / 'absent.db'}: no such gallery\n"
