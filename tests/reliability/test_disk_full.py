"""Disk full, the enrolment half: `edge-retrieval enroll` and `export` on a full disk.

Two ways to run out of room, both real: a small tmpfs filled up to a chosen number of free bytes
(needs root and `mount`; skipped with the reason otherwise), and a file size limit
(RLIMIT_FSIZE, with SIGXFSZ ignored so writes fail with EFBIG) that needs nothing. Either way
the command must fail with one `Error: ...` line naming the file and exit 1, never a traceback,
and leave the gallery (and an earlier export) exactly as it was.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_power_cut import check_gallery, dump

from edge_retrieval import Gallery
from edge_retrieval.enroll import enroll, plan

EDGE = shutil.which("edge-retrieval") or "edge-retrieval"
DISK_BYTES = 4 << 20  # the small disk: room for the gallery and a little more
# Run a command with a file size limit: writes past it fail with EFBIG instead of killing it.
LIMITED = (
    "import os, resource, signal, sys\n"
    "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
    "resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), resource.RLIM_INFINITY))\n"
    "os.execvp(sys.argv[2], sys.argv[2:])\n"
)


def run(*args: str, limit: int | None = None) -> subprocess.CompletedProcess:
    argv = [EDGE, *args] if limit is None else [sys.executable, "-c", LIMITED, str(limit), EDGE, *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


def assert_one_line_error(result: subprocess.CompletedProcess, names: str) -> str:
    """Exit 1, and stderr is one `Error: ...` line naming the file (beside TFLite's INFO line)."""
    lines = [line for line in result.stderr.splitlines() if not line.startswith("INFO: ")]
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 1, f"exit {result.returncode}: {result.stdout}{result.stderr}"
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert names in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def small_disk(tmp_path):
    """A DISK_BYTES tmpfs of its own (skipped, with the reason, where mounting is not allowed)."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("a small tmpfs needs root and mount(8); the RLIMIT_FSIZE tests cover disk full here")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_BYTES}", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.strip()}); the RLIMIT_FSIZE tests cover disk full")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path, leave: int) -> Path:
    """Fill the disk with one file, then give back `leave` bytes; returns the file."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for chunk in (1 << 16, 512):
            try:
                while True:
                    os.write(fd, bytes(chunk))
            except OSError as e:
                assert e.errno == errno.ENOSPC, e
    finally:
        os.close(fd)
    os.truncate(filler, max(0, filler.stat().st_size - leave))
    return filler


@pytest.fixture
def folder(tmp_path, photos):
    """The real photos as a folder to enrol, one label per sub-folder."""
    out = tmp_path / "photos"
    for photo in sorted(photos.glob("*.jpg")):
        (out / photo.stem).mkdir(parents=True)
        (out / photo.stem / photo.name).symlink_to(photo)
    return out


def _gallery(path: Path, embedder, photos: Path) -> Path:
    with Gallery(path) as g:
        enroll(g, embedder, plan([photos / "cat.jpg", photos / "rocket.jpg"]))
    return path


# -- enrol ------------------------------------------------------------------------------------
def test_enroll_on_a_full_disk_fails_in_one_line_and_keeps_the_gallery(small_disk, folder, embedder, photos):
    db = _gallery(small_disk / "gallery.db", embedder, photos)
    failures = 0
    for leave in (0, 16 << 10, 64 << 10, 256 << 10):  # the full disk bites at open, in the WAL, at commit
        before = dump(db)
        filler = fill(small_disk, leave)
        result = run("enroll", str(folder), "-g", str(db))
        filler.unlink()
        check_gallery(db)
        if result.returncode == 0 and leave:  # it fitted: then all of it is there
            assert "enrolled 12 image(s) as 12 item(s)" in result.stdout
            continue
        line = assert_one_line_error(result, str(db))
        assert "full" in line, line
        assert dump(db) == before, f"{leave} bytes free: the gallery changed"
        failures += 1
    assert failures >= 2, "the disk was never full enough to fail"
    # room again: the same enrolment works
    result = run("enroll", str(folder), "-g", str(db))
    assert result.returncode == 0, result.stderr
    with Gallery(db) as g:
        assert {"cat", "rocket", "coffee", "tissue"} <= {i.label for i in g.items()}


@pytest.mark.parametrize("limit", [0, 40 << 10, 128 << 10])
def test_enroll_past_the_file_size_limit_fails_in_one_line_and_keeps_the_gallery(
    tmp_path, folder, embedder, photos, limit
):
    """0: not even the 32 KiB -shm file can be made; 40 KiB: the WAL fills up early in the
    transaction; 128 KiB: later (12 photos with their ORB features need about 230 KiB of WAL)."""
    db = _gallery(tmp_path / "gallery.db", embedder, photos)
    before = dump(db)
    result = run("enroll", str(folder), "-g", str(db), limit=limit)
    line = assert_one_line_error(result, str(db))
    assert f"past {limit} bytes (ulimit -f)" in line, line
    check_gallery(db)
    assert dump(db) == before


# -- export -----------------------------------------------------------------------------------
def test_export_on_a_full_disk_fails_in_one_line_and_keeps_both_files(small_disk, tmp_path, embedder, photos):
    db = _gallery(tmp_path / "gallery.db", embedder, photos)
    out = small_disk / "export.db"
    first = run("export", str(out), "-g", str(db))
    assert first.returncode == 0, first.stderr
    exported = out.read_bytes()
    with Gallery(db) as g:  # the gallery grows: the next export needs more room than the disk has
        enroll(g, embedder, plan([photos]))
    before = dump(db)
    filler = fill(small_disk, 16 << 10)
    try:
        result = run("export", str(out), "-g", str(db))
        assert_one_line_error(result, str(out))
        assert out.read_bytes() == exported, "the earlier export was damaged"
        assert sorted(p.name for p in small_disk.iterdir()) == ["export.db", "filler"], "a temporary file was left"
    finally:
        filler.unlink()
    check_gallery(db)
    assert dump(db) == before


def test_export_of_a_gallery_on_a_full_disk_fails_in_one_line(small_disk, embedder, photos):
    """The gallery itself on the full disk: opening it (the -shm file) already fails, cleanly."""
    db = _gallery(small_disk / "gallery.db", embedder, photos)
    before = dump(db)
    filler = fill(small_disk, 0)
    try:
        result = run("export", str(small_disk / "export.db"), "-g", str(db))
        line = assert_one_line_error(result, str(small_disk))
        assert "full" in line, line
        assert not (small_disk / "export.db").exists()
    finally:
        filler.unlink()
    check_gallery(db)
    assert dump(db) == before


def test_export_past_the_file_size_limit_fails_in_one_line_and_keeps_both_files(tmp_path, embedder, photos):
    db = _gallery(tmp_path / "gallery.db", embedder, photos)
    out = tmp_path / "export.db"
    assert run("export", str(out), "-g", str(db)).returncode == 0
    exported = out.read_bytes()
    with Gallery(db) as g:
        enroll(g, embedder, plan([photos]))
    before = dump(db)
    result = run("export", str(out), "-g", str(db), limit=len(exported) + (32 << 10))
    assert_one_line_error(result, str(out))
    assert out.read_bytes() == exported
    assert not out.with_name(out.name + ".tmp").exists()
    check_gallery(db)
    assert dump(db) == before
