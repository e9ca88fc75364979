"""Bad files, each through the real command line: a one-line error naming the file, exit code 1,
no traceback, and the gallery exactly as it was (its file, and no -wal/-shm left beside it).

Images (truncated, corrupt, empty, not images, decompression bombs), models and model cards that
do not match, galleries that are damaged or not galleries, and hostile export files for `import`.
Commands run in-process through click's CliRunner (the runtime's own C-level log line,
"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.", goes to the real stderr there);
`test_the_installed_command_*` run the installed `edge-retrieval` in a subprocess.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sqlite3
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from edge_retrieval import BadImageError, Gallery, GalleryError, preprocess
from edge_retrieval.cli import cli
from edge_retrieval.demo import ITEMS, photo
from edge_retrieval.enroll import enroll, enroll_negatives
from edge_retrieval.modelcard import DEFAULT_MODEL, ModelCard, sha256_file
from edge_retrieval.storage import transfer as manifest_mod
from edge_retrieval.storage.database import SCHEMA_VERSION
from edge_retrieval.storage.transfer import EXPORT_TABLES

# The runtime (LiteRT) prints this on its own stderr whenever a model is loaded: not ours, allowed.
RUNTIME_NOISE = "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
ENROLLED = ITEMS[:3]


# -- helpers -------------------------------------------------------------------------------------
def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def assert_usage_error(result, *names) -> None:
    """click's own refusal of an argument (a folder where a file is wanted): exit code 2, its usage
    message naming the file, no traceback."""
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output and result.stderr.splitlines()[-1].startswith("Error: Invalid value")
    for name in names:
        assert str(name) in result.stderr


def assert_refused(result, *names) -> str:
    """Exit code 1, nothing on stdout, exactly one line on stderr: 'Error: …' naming `names`."""
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), (
        f"exit {result.exit_code}, exception {result.exception!r}\n{result.output}"
    )
    assert result.stdout == "", result.stdout
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert "Traceback" not in result.output
    for name in names:
        assert str(name) in lines[0], f"{name!r} not named in {lines[0]!r}"
    return lines[0]


def state(path: Path) -> dict[str, str]:
    """The sha256 of the gallery file and of every file beside it named after it (-wal, -shm, .tmp)."""
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "folder"
        for p in sorted(path.parent.glob(path.name + "*"))
    }


def contents(path: Path) -> dict:
    """What a gallery holds, row by row (for galleries that legitimately change)."""
    con = sqlite3.connect(path)
    try:
        return {
            t: con.execute(f"SELECT * FROM {t} ORDER BY rowid").fetchall()
            for t in ("items", "embeddings", "features", "negatives", "thresholds")
        }
    finally:
        con.close()


# -- a real small gallery and its export ----------------------------------------------------------
@pytest.fixture(scope="module")
def base(tmp_path_factory, embedder):
    """gallery.db: three photos with local features, a negative and thresholds; base.gallery: its export."""
    root = tmp_path_factory.mktemp("base")
    with Gallery(root / "gallery.db") as g:
        enroll(g, embedder, [(name, photo(name)) for name in ENROLLED], metadata={"room": "hall"})
        enroll_negatives(g, embedder, ENROLLED[0], [photo(ITEMS[4])])
        g.set_thresholds(0.5, {g.item(ENROLLED[1]).id: 0.6})
        g.export(root / "base.gallery")
    assert sorted(p.name for p in root.iterdir()) == ["base.gallery", "gallery.db"]
    return root


def copy_alone(source: Path, path: Path) -> Path:
    """A copy of `source` at `path`, alone in a new folder (a test can list what else appears)."""
    path.parent.mkdir()
    shutil.copy(source, path)
    return path


@pytest.fixture
def gallery(tmp_path, base) -> Path:
    """A fresh copy of the base gallery, alone in its folder."""
    return copy_alone(base / "gallery.db", tmp_path / "g" / "gallery.db")


# -- bad images -------------------------------------------------------------------------------------
def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def big_png(width: int, height: int) -> bytes:
    """A real, valid RGB PNG of black pixels (width × height), streamed: a decompression bomb."""
    comp = zlib.compressobj(6)
    row = b"\0" * (1 + 3 * width)
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def png_claiming(data: bytes, width: int, height: int) -> bytes:
    """A real PNG whose IHDR (CRC made right) claims another size."""
    ihdr = struct.pack(">II", width, height) + data[24:29]
    return data[:8] + _png_chunk(b"IHDR", ihdr) + data[33:]


def jpeg_claiming(data: bytes, width: int, height: int) -> bytes:
    """A real JPEG whose frame header claims another size."""
    i = 2
    while True:
        marker, length = data[i + 1], struct.unpack_from(">H", data, i + 2)[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return data[: i + 5] + struct.pack(">HH", height, width) + data[i + 9 :]
        i += 2 + length


def tiff_claiming(width: int, height: int) -> bytes:
    entries = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 8), (277, 3, 1, 1), (273, 4, 1, 8)]
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", *e) for e in entries) + b"\0\0\0\0"
    return b"II*\x00" + struct.pack("<I", 8) + ifd + b"\0" * 64


def webp_claiming(width: int, height: int) -> bytes:
    vp8x = (
        b"VP8X"
        + struct.pack("<I", 10)
        + b"\x00\x00\x00\x00"
        + (width - 1).to_bytes(3, "little")
        + (height - 1).to_bytes(3, "little")
    )
    body = b"WEBP" + vp8x
    return b"RIFF" + struct.pack("<I", len(body)) + body


@pytest.fixture(scope="session")
def bad_images(tmp_path_factory) -> dict[str, Path]:
    """One file per way an image can be bad, named after it."""
    root = tmp_path_factory.mktemp("bad-images")
    jpeg = photo(ENROLLED[0]).read_bytes()
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    png = cv2.imencode(".png", image)[1].tobytes()
    rng = np.random.default_rng(7)
    garbled = bytearray(jpeg)
    garbled[len(jpeg) // 3 : len(jpeg) // 3 + 2048] = rng.integers(0, 256, 2048, dtype=np.uint8).tobytes()
    flipped = bytearray(png)
    flipped[len(png) // 2] ^= 0x55
    files = {
        "truncated.jpg": jpeg[: len(jpeg) // 2],
        "truncated-header.jpg": jpeg[:300],
        "truncated.png": png[: len(png) // 2],
        "truncated.bmp": cv2.imencode(".bmp", image)[1].tobytes()[:100_000],
        "truncated.webp": cv2.imencode(".webp", image)[1].tobytes()[:2000],
        "garbled.jpg": bytes(garbled),
        "bit-flipped.png": bytes(flipped),
        "random-bytes.png": rng.integers(0, 256, 5000, dtype=np.uint8).tobytes(),
        "zero-bytes.jpg": b"",
        "text.jpg": b"this is not an image\n" * 20,
        "model.jpg": DEFAULT_MODEL.read_bytes(),
        "gif.jpg": b"GIF89a\x10\x00\x10\x00\x00\x00\x00;",
        "bomb-header-30000.png": png_claiming(png, 30000, 30000),
        "bomb-header-30000.jpg": jpeg_claiming(jpeg, 30000, 30000),
        "bomb-header.tif": tiff_claiming(30000, 30000),
        "bomb-header.webp": webp_claiming(16000, 16000),
        "bomb-8000x8000.png": big_png(8000, 8000),
    }
    for name, data in files.items():
        (root / name).write_bytes(data)
    (root / "folder.jpg").mkdir()
    return {name: root / name for name in [*files, "folder.jpg"]}


BAD_IMAGES = [
    "truncated.jpg",
    "truncated-header.jpg",
    "truncated.png",
    "truncated.bmp",
    "truncated.webp",
    "garbled.jpg",
    "bit-flipped.png",
    "random-bytes.png",
    "zero-bytes.jpg",
    "text.jpg",
    "model.jpg",
    "gif.jpg",
    "bomb-header-30000.png",
    "bomb-header-30000.jpg",
    "bomb-header.tif",
    "bomb-header.webp",
    "bomb-8000x8000.png",
    "missing.jpg",
]
BOMBS = [name for name in BAD_IMAGES if name.startswith("bomb")]


def bad_image(bad_images, name) -> Path:
    return bad_images.get(name) or next(iter(bad_images.values())).parent / name


@pytest.mark.parametrize("name", BAD_IMAGES)
def test_bad_image_is_refused_by_enroll_and_search_and_changes_nothing(name, bad_images, gallery, embedder):
    bad = bad_image(bad_images, name)
    before = state(gallery)
    assert_refused(run("enroll", bad, "-g", gallery), bad)
    assert_refused(run("enroll", photo(ITEMS[5]), bad, "-g", gallery), bad)  # nothing of a batch is written
    assert_refused(run("search", bad, "-g", gallery), bad)
    assert state(gallery) == before


def test_skip_bad_enrolls_the_good_photo_and_lists_every_bad_file(tmp_path, bad_images, gallery, embedder):
    folder = tmp_path / "batch"
    shutil.copytree(next(iter(bad_images.values())).parent, folder)
    shutil.copy(photo(ITEMS[5]), folder / "good.jpg")
    before = contents(gallery)
    result = run("enroll", folder, "--skip-bad", "--label", "good", "-g", gallery)
    assert result.exit_code == 0, result.output
    skipped = [line for line in result.stderr.splitlines() if line.startswith("skipped ")]
    listed = sorted(Path(line.split()[1].rstrip(":")).name for line in skipped)
    expected = sorted(n for n in bad_images if n != "folder.jpg")  # a folder is not listed as an image
    assert listed == expected
    assert f"skipped {len(expected)} bad file(s)" in result.stdout
    after = contents(gallery)
    assert len(after["items"]) == len(before["items"]) + 1 and after["items"][: len(before["items"])] == before["items"]
    assert len(after["embeddings"]) == len(before["embeddings"]) + 1
    sources = {row[4] for row in after["embeddings"]}
    assert str(folder / "good.jpg") in sources and not any(str(folder / n) in sources for n in expected)


def test_skip_bad_with_nothing_readable_is_one_line_naming_a_bad_file(tmp_path, bad_images, gallery, embedder):
    before = state(gallery)
    line = assert_refused(
        run("enroll", bad_images["truncated.jpg"], bad_images["text.jpg"], "--skip-bad", "-g", gallery),
        "truncated.jpg",
        "skipped 2",
    )
    assert "nothing to enroll" in line
    assert state(gallery) == before


@pytest.mark.parametrize("name", BOMBS)
def test_decompression_bombs_are_refused_before_decoding(name, bad_images, monkeypatch):
    def no_decoding(*args, **kwargs):
        raise AssertionError("a decompression bomb reached the decoder")

    monkeypatch.setattr(preprocess.cv2, "imdecode", no_decoding)
    with pytest.raises(BadImageError, match=re.escape(name) + ".*megapixels"):
        preprocess.read_image(bad_images[name])


def test_a_folder_is_not_an_image(bad_images):
    with pytest.raises(BadImageError, match="folder.jpg: not a regular file"):
        preprocess.read_image(bad_images["folder.jpg"])


def test_the_bomb_is_a_real_valid_png(bad_images):
    data = bad_images["bomb-8000x8000.png"].read_bytes()
    assert len(data) < 1_000_000 and preprocess.image_size(data) == ("png", 8000, 8000)


def test_opencv_limit_backstops_decoders_outside_read_image(bad_images):
    """Any cv2.imread in a process that imported edge_retrieval refuses > MAX_PIXELS (OpenCV's own check)."""
    code = (
        "import edge_retrieval, os, cv2, sys\n"
        "print(os.environ['OPENCV_IO_MAX_IMAGE_PIXELS'])\n"
        "try:\n    img = cv2.imread(sys.argv[1])\nexcept cv2.error:\n    img = None\n"
        "print(img is None)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(bad_images["bomb-8000x8000.png"])],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OPENCV_LOG_LEVEL": "SILENT"},
    )
    assert out.stdout.split() == [str(preprocess.MAX_PIXELS), "True"], out.stdout + out.stderr


def test_every_real_photo_still_reads(photos):
    for path in sorted(photos.glob("*.jpg")):
        image = preprocess.read_image(path)
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".webp", ".tiff", ".jpg"])
def test_every_accepted_format_reads(tmp_path, suffix):
    image = preprocess.read_image(photo(ITEMS[0]))
    path = tmp_path / f"x{suffix}"
    assert cv2.imwrite(str(path), image)
    assert preprocess.read_image(path).shape == image.shape


# -- bad models and model cards --------------------------------------------------------------------
def _card(model_dir: Path) -> dict:
    return json.loads((model_dir / "m.json").read_text())


def _write_card(model_dir: Path, card: dict) -> None:
    (model_dir / "m.json").write_text(json.dumps(card))


def _bad_model(model_dir: Path, case: str) -> str:
    """Damage the copied model as `case` says; returns the file the error must name."""
    tflite, card_path = model_dir / "m.tflite", model_dir / "m.json"
    whitening = model_dir / _card(model_dir)["whitening"]["file"]
    data = tflite.read_bytes()

    def with_card(**changes):
        _write_card(model_dir, {**_card(model_dir), **changes})

    if case == "truncated-model":
        tflite.write_bytes(data[: len(data) // 2])
        return "m.tflite"
    if case == "truncated-model, card updated":
        tflite.write_bytes(data[: len(data) // 2])
        with_card(sha256=sha256_file(tflite))
        return "m.tflite"
    if case == "random-model, card updated":
        tflite.write_bytes(np.random.default_rng(1).integers(0, 256, 100_000, dtype=np.uint8).tobytes())
        with_card(sha256=sha256_file(tflite))
        return "m.tflite"
    if case == "empty-model, card updated":
        tflite.write_bytes(b"")
        with_card(sha256=sha256_file(tflite))
        return "m.tflite"
    if case == "card-malformed-json":
        card_path.write_text(card_path.read_text()[:200])
        return "m.json"
    if case == "card-not-an-object":
        card_path.write_text("[1, 2, 3]")
        return "m.json"
    if case == "card-missing-sha256":
        card = _card(model_dir)
        del card["sha256"]
        _write_card(model_dir, card)
        return "m.json"
    if case == "card-missing-input-height":
        card = _card(model_dir)
        del card["input_height"]
        _write_card(model_dir, card)
        return "m.json"
    if case == "card-unknown-field":
        with_card(surprise=1)
        return "m.json"
    if case == "card-wrong-sha256":
        with_card(sha256="0" * 64)
        return "m.tflite"
    if case == "card-empty-sha256":
        with_card(sha256="")
        return "m.json"
    if case == "card-wrong-input-size":
        with_card(input_height=224, input_width=224)
        return "m.tflite"
    if case == "card-wrong-output-dim":
        with_card(output_dim=1000)
        return "m.tflite"
    if case == "card-wrong-output-kind":
        with_card(output_kind="vector")
        return "m.tflite"
    if case == "card-gem-p-is-text":
        with_card(gem_p="three")
        return "m.json"
    if case == "card-input-size-is-text":
        with_card(input_height="240")
        return "m.json"
    if case == "card-whitening-path-trick":
        with_card(whitening={**_card(model_dir)["whitening"], "file": "../../../../etc/passwd"})
        return "m.json"
    if case == "card-whitening-without-sha256":
        spec = dict(_card(model_dir)["whitening"])
        del spec["sha256"]
        with_card(whitening=spec)
        return "m.json"
    if case == "card-whitening-dim-wrong":
        with_card(whitening={**_card(model_dir)["whitening"], "dim": 128})
        return whitening.name
    if case == "whitening-corrupt, card updated":
        whitening.write_bytes(whitening.read_bytes()[:1000])
        with_card(whitening={**_card(model_dir)["whitening"], "sha256": sha256_file(whitening)})
        return whitening.name
    if case == "whitening-not-npz, card updated":
        np.save(whitening.with_suffix(".npy"), np.zeros(3))
        whitening.write_bytes(whitening.with_suffix(".npy").read_bytes())
        with_card(whitening={**_card(model_dir)["whitening"], "sha256": sha256_file(whitening)})
        return whitening.name
    if case == "whitening-changed":
        whitening.write_bytes(whitening.read_bytes() + b"\0")
        return whitening.name
    if case == "whitening-missing":
        whitening.unlink()
        return whitening.name
    if case == "card-missing":
        card_path.unlink()
        return "m.json"
    if case == "model-missing":
        tflite.unlink()
        return "m.tflite"
    raise AssertionError(case)


MODEL_CASES = [
    "truncated-model",
    "truncated-model, card updated",
    "random-model, card updated",
    "empty-model, card updated",
    "card-malformed-json",
    "card-not-an-object",
    "card-missing-sha256",
    "card-missing-input-height",
    "card-unknown-field",
    "card-wrong-sha256",
    "card-empty-sha256",
    "card-wrong-input-size",
    "card-wrong-output-dim",
    "card-wrong-output-kind",
    "card-gem-p-is-text",
    "card-input-size-is-text",
    "card-whitening-path-trick",
    "card-whitening-without-sha256",
    "card-whitening-dim-wrong",
    "whitening-corrupt, card updated",
    "whitening-not-npz, card updated",
    "whitening-changed",
    "whitening-missing",
    "card-missing",
    "model-missing",
]


@pytest.fixture
def model_dir(tmp_path) -> Path:
    """A working copy of the default model in its own folder: m.tflite, its card, its whitening."""
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    shutil.copy(DEFAULT_MODEL, model_dir / "m.tflite")
    card = json.loads(ModelCard.path_for(DEFAULT_MODEL).read_text())
    shutil.copy(DEFAULT_MODEL.parent / card["whitening"]["file"], model_dir / card["whitening"]["file"])
    _write_card(model_dir, card)
    return model_dir


@pytest.mark.parametrize("case", MODEL_CASES)
def test_bad_model_or_card_is_refused_naming_the_file(case, model_dir, gallery, embedder):
    named = _bad_model(model_dir, case)
    before = state(gallery)
    for command in ("search", "enroll"):
        assert_refused(run(command, photo(ITEMS[0]), "--model", model_dir / "m.tflite", "-g", gallery), named)
    assert state(gallery) == before


def test_the_untouched_model_copy_works(model_dir, gallery, embedder):
    """The model cases above fail because of their damage, not because of the copy."""
    result = run("search", photo(ENROLLED[0]), "--json", "--model", model_dir / "m.tflite", "-g", gallery)
    assert result.exit_code == 0 and json.loads(result.stdout)["match"] == ENROLLED[0], result.output


# -- bad galleries ----------------------------------------------------------------------------------
def _bad_gallery(path: Path, data: bytes, case: str) -> None:
    """Write at `path` the gallery `data` (bytes of a real gallery) damaged as `case` says."""
    if case == "random-bytes":
        path.write_bytes(np.random.default_rng(3).integers(0, 256, len(data), dtype=np.uint8).tobytes())
    elif case == "text":
        path.write_text("not a database\n")
    elif case.startswith("truncated-"):
        keep = {
            "truncated-half": len(data) // 2,
            "truncated-last-page": len(data) - 4096,
            "truncated-to-header": 100,
            "truncated-odd": len(data) - 1234,
        }[case]
        path.write_bytes(data[:keep])
    elif case == "damaged-pages":  # the header is right; pages with the items' rows are garbage
        path.write_bytes(data)
        con = sqlite3.connect(path)
        pages = (
            [
                r[0]
                for r in con.execute(
                    "SELECT pageno FROM dbstat WHERE name IN ('items', 'embeddings', 'vector_blocks', 'meta')"
                )
            ]
            if _has_dbstat(con)
            else [2, 3, 28]
        )
        con.close()
        damaged = bytearray(data)
        rng = np.random.default_rng(4)
        for page in pages:
            damaged[(page - 1) * 4096 : page * 4096] = rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()
        path.write_bytes(bytes(damaged))
    elif case == "another-programs-sqlite":
        con = sqlite3.connect(path)
        con.execute("CREATE TABLE bookmarks (url TEXT)")
        con.execute("INSERT INTO bookmarks VALUES ('https://example.org')")
        con.commit()
        con.close()
    elif case == "sqlite-with-version-but-no-gallery":
        con = sqlite3.connect(path)
        con.execute("CREATE TABLE bookmarks (url TEXT)")
        con.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        con.commit()
        con.close()
    elif case == "newer-schema":
        path.write_bytes(data)
        con = sqlite3.connect(path)
        con.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
        con.commit()
        con.close()
    elif case == "folder":
        path.mkdir()
    else:
        raise AssertionError(case)


def _has_dbstat(con) -> bool:
    try:
        con.execute("SELECT 1 FROM dbstat LIMIT 1")
        return True
    except sqlite3.Error:
        return False


GALLERY_CASES = [
    "random-bytes",
    "text",
    "truncated-half",
    "truncated-last-page",
    "truncated-to-header",
    "truncated-odd",
    "damaged-pages",
    "another-programs-sqlite",
    "sqlite-with-version-but-no-gallery",
    "newer-schema",
    "folder",
]


@pytest.mark.parametrize("case", GALLERY_CASES)
def test_damaged_or_foreign_gallery_is_refused_and_left_as_it_is(case, tmp_path, base, embedder):
    path = tmp_path / "g" / "gallery.db"
    path.parent.mkdir()
    _bad_gallery(path, (base / "gallery.db").read_bytes(), case)
    before = state(path)
    commands = [
        ("search", photo(ITEMS[0])),
        ("enroll", photo(ITEMS[5])),
        ("list",),
        ("import", base / "base.gallery"),
        ("export", tmp_path / "out.gallery"),
        ("remove", ENROLLED[0]),
        ("info",),
    ]
    for command in commands:
        result = run(*command, "-g", path)
        if case == "folder":  # click refuses a folder for --gallery before any command runs
            assert_usage_error(result, "gallery.db")
        else:
            assert_refused(result, "gallery.db")
        assert state(path) == before, command
    assert not (tmp_path / "out.gallery").exists()


def test_gallery_of_another_model_is_refused_naming_the_model(tmp_path, embedder):
    path = tmp_path / "other.db"
    with Gallery(path) as g:
        g.add("x", np.eye(1, embedder.dim, dtype=np.float32), model_sha256="e" * 64, model_name="someone-elses-model")
        g.export(tmp_path / "other.gallery")
    before = state(path)
    for command in (("search", photo(ITEMS[0])), ("enroll", photo(ITEMS[0]))):
        assert_refused(run(*command, "-g", path), "other.db", "belongs to model someone-elses-model")
    assert state(path) == before
    mine = tmp_path / "mine.db"
    with Gallery(mine) as g:
        g.add("y", np.eye(1, embedder.dim, dtype=np.float32), model_sha256=embedder.sha256, model_name="mine")
    before = state(mine)
    assert_refused(run("import", tmp_path / "other.gallery", "-g", mine), "someone-elses-model")
    assert state(mine) == before


# -- hostile export files for `import` ------------------------------------------------------------
def edit(path: Path, *statements, params=(), remanifest=False) -> None:
    """Run SQL on an export file; with `remanifest`, then rewrite its manifest to match (a forger)."""
    con = sqlite3.connect(path)
    for statement in statements:
        con.execute(statement, params) if params else con.execute(statement)
    con.commit()
    if remanifest:
        manifest_mod.write(con, manifest_mod.compute(con, EXPORT_TABLES))
        con.commit()
    con.close()


HOSTILE = {
    # damage
    "text-file": lambda p: p.write_text("hello\n"),
    "zero-bytes": lambda p: p.write_bytes(b""),
    "random-bytes": lambda p: p.write_bytes(np.random.default_rng(5).integers(0, 256, 90_000, np.uint8).tobytes()),
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]),
    "model-renamed": lambda p: shutil.copy(DEFAULT_MODEL, p),
    # the manifest
    "edited-label": lambda p: edit(p, "UPDATE items SET label = 'forged' WHERE rowid = 1"),
    "edited-vector": lambda p: edit(p, "UPDATE embeddings SET vector = zeroblob(256) WHERE rowid = 1"),
    "edited-feature": lambda p: edit(p, "UPDATE features SET width = width + 1 WHERE rowid = 1"),
    "edited-threshold": lambda p: edit(p, "UPDATE thresholds SET threshold = 0.01"),
    "deleted-embedding": lambda p: edit(p, "DELETE FROM embeddings WHERE rowid = 2"),
    "added-item": lambda p: edit(p, "INSERT INTO items(label, metadata, created) VALUES ('extra', '{}', 1)"),
    "model-changed": lambda p: edit(p, "UPDATE meta SET value = 'other-name' WHERE key = 'model_name'"),
    "manifest-stripped": lambda p: edit(p, f"DROP TABLE {manifest_mod.TABLE}"),
    "manifest-malformed": lambda p: edit(p, f"UPDATE {manifest_mod.TABLE} SET value = '{{\"format\": 1, '"),
    "manifest-nested": lambda p: edit(p, f"UPDATE {manifest_mod.TABLE} SET value = ?", params=["[" * 100_000]),
    "manifest-format-2": lambda p: edit(p, f"UPDATE {manifest_mod.TABLE} SET value = json_set(value, '$.format', 2)"),
    "manifest-huge-count": lambda p: edit(
        p, f"UPDATE {manifest_mod.TABLE} SET value = json_set(value, '$.tables.embeddings.rows', 1000000000000)"
    ),
    "manifest-two-rows": lambda p: edit(p, f"INSERT INTO {manifest_mod.TABLE} VALUES ('other', '{{}}')"),
    # well-formed, manifest rewritten by a forger: the row checks must hold
    "vector-too-short": lambda p: edit(
        p, "UPDATE embeddings SET vector = zeroblob(255) WHERE rowid = 1", remanifest=True
    ),
    "vector-huge-blob": lambda p: edit(p, "UPDATE embeddings SET vector = zeroblob(64 * 1024 * 1024) WHERE rowid = 1"),
    "vector-as-text": lambda p: edit(p, "UPDATE embeddings SET vector = hex(vector) WHERE rowid = 1", remanifest=True),
    "negative-wrong-length": lambda p: edit(p, "UPDATE negatives SET vector = zeroblob(300)", remanifest=True),
    "scale-infinite": lambda p: edit(p, "UPDATE embeddings SET scale = 1e999 WHERE rowid = 1", remanifest=True),
    "scale-negative": lambda p: edit(p, "UPDATE embeddings SET scale = -0.01 WHERE rowid = 1", remanifest=True),
    "scale-zero": lambda p: edit(p, "UPDATE embeddings SET scale = 0 WHERE rowid = 1", remanifest=True),
    "scale-huge": lambda p: edit(p, "UPDATE embeddings SET scale = 1e30 WHERE rowid = 1", remanifest=True),
    "scale-text": lambda p: edit(p, "UPDATE embeddings SET scale = 'x' WHERE rowid = 1", remanifest=True),
    "vector-outscores-everything": lambda p: edit(
        p, "UPDATE embeddings SET vector = ?, scale = 0.0078 WHERE rowid = 1", params=[b"\x7f" * 256], remanifest=True
    ),
    "metadata-huge": lambda p: edit(
        p,
        "UPDATE items SET metadata = '{\"a\": \"' || hex(zeroblob(3000000)) || '\"}' WHERE rowid = 1",
        remanifest=True,
    ),
    "metadata-not-json": lambda p: edit(p, "UPDATE items SET metadata = 'not json' WHERE rowid = 1", remanifest=True),
    "metadata-not-object": lambda p: edit(p, "UPDATE items SET metadata = '[1, 2]' WHERE rowid = 1", remanifest=True),
    "metadata-nested-deep": lambda p: edit(
        p,
        "UPDATE items SET metadata = ? WHERE rowid = 1",
        params=['{"a": ' + "[" * 100_000 + "]" * 100_000 + "}"],
        remanifest=True,
    ),
    "metadata-nan": lambda p: edit(p, "UPDATE items SET metadata = '{\"a\": NaN}' WHERE rowid = 1", remanifest=True),
    "label-empty": lambda p: edit(p, "UPDATE items SET label = '   ' WHERE rowid = 1", remanifest=True),
    "label-blob": lambda p: edit(p, "UPDATE items SET label = x'636174' WHERE rowid = 1", remanifest=True),
    "label-terminal-escape": lambda p: edit(
        p, "UPDATE items SET label = ? WHERE rowid = 1", params=["cat\x1b[2J\x1b[31m"], remanifest=True
    ),
    "label-newline": lambda p: edit(p, "UPDATE items SET label = ? WHERE rowid = 1", params=["a\nb"], remanifest=True),
    "label-too-long": lambda p: edit(
        p, "UPDATE items SET label = ? WHERE rowid = 1", params=["x" * 5000], remanifest=True
    ),
    "orphan-embedding": lambda p: edit(
        p,
        "INSERT INTO embeddings(item_id, vector, scale, source, created) "
        "SELECT 999, vector, scale, source, created FROM embeddings LIMIT 1",
        remanifest=True,
    ),
    "features-nan-keypoints": lambda p: edit(
        p,
        "UPDATE features SET keypoints = ? WHERE rowid = 1",
        params=[np.full(8, np.nan, "<f4").tobytes()],
        remanifest=True,
    ),
    "features-descriptors-mismatch": lambda p: edit(
        p, "UPDATE features SET descriptors = zeroblob(7) WHERE rowid = 1", remanifest=True
    ),
    "features-zero-width": lambda p: edit(p, "UPDATE features SET width = 0 WHERE rowid = 1", remanifest=True),
    "dim-not-a-number": lambda p: edit(p, "UPDATE meta SET value = 'abc' WHERE key = 'dim'", remanifest=True),
    "dim-huge": lambda p: edit(p, "UPDATE meta SET value = '1000000000' WHERE key = 'dim'", remanifest=True),
    "model-sha-not-hex": lambda p: edit(
        p, "UPDATE meta SET value = '../../etc/passwd' WHERE key = 'model_sha256'", remanifest=True
    ),
    "no-model": lambda p: edit(p, "DELETE FROM meta WHERE key = 'model_sha256'", remanifest=True),
    # the file's own schema
    "items-is-a-view": lambda p: edit(
        p, "ALTER TABLE items RENAME TO items_real", "CREATE VIEW items AS SELECT * FROM items_real"
    ),
    "generated-column": lambda p: edit(
        p,
        "ALTER TABLE items RENAME TO items_real",
        "CREATE TABLE items (id INTEGER PRIMARY KEY, label TEXT, metadata TEXT, "
        "created REAL, evil BLOB GENERATED ALWAYS AS (zeroblob(1000000000)) VIRTUAL)",
        "INSERT INTO items(id, label, metadata, created) SELECT * FROM items_real",
        "DROP TABLE items_real",
        remanifest=True,
    ),
    "no-items-table": lambda p: edit(p, "DROP TABLE items"),
    "schema-newer": lambda p: edit(p, f"PRAGMA user_version = {SCHEMA_VERSION + 1}"),
}
# (what the error must say, besides the file's name)
HOSTILE_SAYS = {
    "edited-label": "sha256",
    "edited-vector": "sha256",
    "edited-feature": "sha256",
    "edited-threshold": "sha256",
    "deleted-embedding": "manifest says",
    "added-item": "manifest says",
    "model-changed": "model",
    "manifest-stripped": "no export manifest",
    "manifest-huge-count": "manifest says",
    "vector-too-short": "not 256 bytes",
    "vector-huge-blob": "not 256 bytes",
    "vector-as-text": "not 256 bytes",
    "negative-wrong-length": "not 256 bytes",
    "scale-infinite": "scale",
    "scale-huge": "scale",
    "vector-outscores-everything": "unit vector",
    "metadata-huge": "too big",
    "label-terminal-escape": "control",
    "orphan-embedding": "lacks",
    "items-is-a-view": "view",
    "generated-column": "computed",
}


@pytest.fixture
def export_copy(tmp_path, base) -> Path:
    return copy_alone(base / "base.gallery", tmp_path / "x" / "hostile.gallery")


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_export_is_refused_and_changes_nothing(case, export_copy, gallery):
    HOSTILE[case](export_copy)
    before, file_before = state(gallery), state(export_copy)
    line = assert_refused(run("import", export_copy, "-g", gallery), "hostile.gallery")
    assert HOSTILE_SAYS.get(case, "") in line
    assert state(gallery) == before and state(export_copy) == file_before  # nor is the file itself touched


def test_stripped_manifest_imports_only_when_asked(export_copy, gallery, base):
    HOSTILE["manifest-stripped"](export_copy)
    result = run("import", export_copy, "--unverified", "-g", gallery)
    assert result.exit_code == 0 and "imported 3 item(s), 3 embedding(s)" in result.stdout, result.output
    with Gallery(gallery) as g:
        assert {i.label: i.embeddings for i in g.items()} == {name: 2 for name in ENROLLED}


def test_sql_html_and_path_tricks_in_labels_and_metadata_are_stored_verbatim(export_copy, gallery, tmp_path):
    hostile = [
        "'); DROP TABLE items;--",
        "<script>alert('x')</script>",
        "../../etc/passwd",
        "Robert'); DELETE FROM embeddings WHERE ('1'='1",
    ]
    meta = {"path": "../../../../etc/passwd", "html": "<img src=x onerror=alert(1)>", "sql": "1; DROP TABLE meta"}
    con = sqlite3.connect(export_copy)
    for rowid, label in zip((1, 2, 3), hostile):
        con.execute("UPDATE items SET label = ?, metadata = ? WHERE rowid = ?", [label, json.dumps(meta), rowid])
    con.execute("UPDATE embeddings SET source = '../../../../etc/shadow.jpg' WHERE rowid = 1")
    con.commit()
    manifest_mod.write(con, manifest_mod.compute(con, EXPORT_TABLES))
    con.commit()
    con.close()
    files_before = sorted(p.name for p in tmp_path.rglob("*"))
    result = run("import", export_copy, "-g", gallery)
    assert result.exit_code == 0, result.output
    listed = [json.loads(line) for line in run("list", "--json", "-g", gallery).stdout.splitlines()]
    labels = {item["label"]: item["metadata"] for item in listed}
    for label in hostile[:3]:
        assert labels[label] == meta
    with Gallery(gallery) as g:
        assert set(g.db.table_names()) >= {"items", "embeddings", "meta", "features", "negatives"}
        assert g.count()[1] == 6
        sources = [s for item in g.items() for s in g.sources(item.id)]
        assert "imported:../../../../etc/shadow.jpg" in sources  # never a path this machine would read
        assert g.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert sorted(p.name for p in tmp_path.rglob("*")) == files_before


def test_the_kiosk_pages_never_render_labels_as_html():
    """Labels and metadata reach the kiosk pages only as JSON and are put on the page as text
    (textContent, input values): no script builds HTML from them, and the one server-side template
    value (the staff token) is escaped."""
    from edge_retrieval import kiosk

    static = Path(kiosk.__file__).parent / "static"
    for script in static.glob("*.js"):
        code = script.read_text()
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
            assert sink not in code, f"{script.name} uses {sink}"
    placeholders = {m for page in static.glob("*.html") for m in re.findall(r"{{\s*(\w+)\s*}}", page.read_text())}
    assert placeholders <= {"token"}
    assert 'replace("{{token}}", html.escape(' in (Path(kiosk.__file__).parent / "web.py").read_text()


def test_triggers_views_and_extra_tables_in_the_export_never_run(export_copy, gallery):
    """An attacker's SQLite file may hold triggers: import only reads rows, so none of them fires."""
    edit(
        export_copy,
        "CREATE TABLE evil (x)",
        "CREATE TRIGGER evil_items AFTER INSERT ON items BEGIN DELETE FROM embeddings; END",
        "CREATE TRIGGER evil_update BEFORE UPDATE ON meta BEGIN DELETE FROM items; END",
        "CREATE TRIGGER evil_delete AFTER DELETE ON items BEGIN INSERT INTO evil VALUES (randomblob(100)); END",
        "CREATE VIEW evil_view AS SELECT randomblob(1000000000) AS x",
        "CREATE INDEX evil_index ON items(label, metadata)",
    )
    file_before = state(export_copy)
    result = run("import", export_copy, "-g", gallery)
    assert result.exit_code == 0 and "imported 3 item(s), 3 embedding(s)" in result.stdout, result.output
    with Gallery(gallery) as g:
        assert {i.label: i.embeddings for i in g.items()} == {name: 2 for name in ENROLLED}
        assert "evil" not in g.db.table_names()
        assert not g.db.execute("SELECT name FROM sqlite_master WHERE name LIKE 'evil%'").fetchall()
    assert state(export_copy) == file_before


@pytest.mark.parametrize(
    "case",
    [
        "folder",
        "symlink-to-folder",
        "symlink-to-dev-zero",
        "fifo",
        "the-gallery-itself",
        "symlink-to-the-gallery",
        "the-gallery-wal",
        "missing",
        "dangling-symlink",
    ],
)
def test_import_path_tricks_are_refused(case, tmp_path, gallery):
    path = tmp_path / "trick.gallery"
    if case == "folder":
        path.mkdir()
    elif case == "symlink-to-folder":
        path.symlink_to(tmp_path)
    elif case == "symlink-to-dev-zero":
        path.symlink_to("/dev/zero")
    elif case == "fifo":
        os.mkfifo(path)  # opening it would wait forever for a writer
    elif case == "the-gallery-itself":
        path = gallery
    elif case == "symlink-to-the-gallery":
        path.symlink_to(gallery)
    elif case == "the-gallery-wal":
        path = Path(f"{gallery}-wal")
        path.write_bytes(b"")
    elif case == "dangling-symlink":
        path.symlink_to(tmp_path / "nowhere")
    before = state(gallery)
    result = run("import", path, "-g", gallery)
    if case in ("folder", "symlink-to-folder"):  # click refuses a folder for PATH before `import` runs
        assert_usage_error(result, path.name)
    else:
        assert_refused(result, path.name)
    if case == "the-gallery-wal":  # the empty -wal made above is removed by SQLite, as it should be
        before.pop("gallery.db-wal")
    assert state(gallery) == before


def test_a_symlink_to_a_real_export_is_followed(tmp_path, base, gallery):
    link = tmp_path / "link.gallery"
    link.symlink_to(base / "base.gallery")
    result = run("import", link, "-g", gallery)
    assert result.exit_code == 0 and "imported 3 item(s)" in result.stdout, result.output


@pytest.mark.parametrize("case", ["the-gallery-itself", "the-gallery-wal", "a-folder", "missing-folder"])
def test_export_never_overwrites_the_gallery_or_a_folder(case, tmp_path, gallery):
    target = {
        "the-gallery-itself": gallery,
        "the-gallery-wal": Path(f"{gallery}-wal"),
        "a-folder": tmp_path,
        "missing-folder": tmp_path / "nowhere" / "out.gallery",
    }[case]
    before = state(gallery)
    result = run("export", target, "-g", gallery)
    if case == "a-folder":
        assert_usage_error(result, target.name)
    else:
        assert_refused(result, target.name)
    assert state(gallery) == before


def test_export_carries_a_manifest_and_leaks_no_event_history(tmp_path, gallery):
    from edge_retrieval.storage.events import Event, EventLog

    with EventLog(gallery, ["stdout"]) as log:
        log.record(Event(time=1.0, source="SECRET-CAMERA-7", kind="unknown", score=0.1))
    out = tmp_path / "out.gallery"
    result = run("export", out, "-g", gallery)
    assert result.exit_code == 0, result.output
    assert b"SECRET-CAMERA-7" not in out.read_bytes()  # not in a row, not in a free page either
    con = sqlite3.connect(out)
    contents_ = json.loads(con.execute(f"SELECT value FROM {manifest_mod.TABLE}").fetchone()[0])
    assert contents_["format"] == manifest_mod.FORMAT
    assert {t: e["rows"] for t, e in contents_["tables"].items()} == {
        "items": 3,
        "embeddings": 3,
        "features": 9,  # each photo's ORB, SIFT and grey image
        "negatives": 1,
        "thresholds": 1,
    }
    assert contents_["model"]["dim"] == "256" and con.execute("SELECT count(*) FROM events").fetchone()[0] == 0
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    con.close()
    assert not list(tmp_path.glob("out.gallery?*"))  # no .tmp, -wal or -journal left


def test_a_failure_late_in_the_file_leaves_nothing_half_written(export_copy, gallery, monkeypatch):
    """Rows are inserted as they are read: a bad row after many good ones rolls all of them back."""
    edit(export_copy, "UPDATE negatives SET scale = 1e999", remanifest=True)  # the last table imported
    monkeypatch.setattr(manifest_mod, "FETCH_ROWS", 1)
    before = state(gallery)
    with Gallery(gallery) as g, pytest.raises(GalleryError, match="hostile.gallery.*scale.*nothing imported"):
        g.import_from(export_copy)
    assert state(gallery) == before


def test_tables_over_the_row_limit_are_refused_before_reading(export_copy, gallery, monkeypatch):
    monkeypatch.setattr(manifest_mod, "MAX_ROWS", 2)
    monkeypatch.setattr(manifest_mod, "read_chunks", lambda *a, **k: pytest.fail("rows were read"))
    with Gallery(gallery) as g, pytest.raises(GalleryError, match=r"\d+ rows in .*more than the limit of 2"):
        g.import_from(export_copy)


def test_a_huge_blob_is_refused_without_loading_it(export_copy, gallery, base):
    """A 256 MB embedding blob: the import process never holds it (peak memory measured in a child)."""
    edit(export_copy, "UPDATE embeddings SET vector = zeroblob(256 * 1024 * 1024) WHERE rowid = 2")
    edit(export_copy, "UPDATE items SET metadata = CAST(zeroblob(200 * 1024 * 1024) AS TEXT) WHERE rowid = 3")
    code = (
        "import resource, sys\nfrom edge_retrieval import Gallery, GalleryError\n"
        "with Gallery(sys.argv[1]) as g:\n"
        "    try:\n        g.import_from(sys.argv[2]); print('imported')\n"
        "    except GalleryError as e:\n        print('refused', e)\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    )

    def peak(export):
        out = subprocess.run(
            [sys.executable, "-c", code, str(gallery), str(export)], capture_output=True, text=True, timeout=300
        )
        lines = out.stdout.splitlines()
        assert len(lines) == 2, out.stdout + out.stderr
        return lines[0], int(lines[1])

    verdict, kb = peak(export_copy)
    assert verdict.startswith("refused") and "not 256 bytes" in verdict
    edit(export_copy, "UPDATE embeddings SET vector = (SELECT vector FROM embeddings WHERE rowid = 1) WHERE rowid = 2")
    verdict, kb2 = peak(export_copy)
    assert verdict.startswith("refused") and "too big" in verdict  # the metadata: over the length limit, unread
    _, baseline = peak(base / "base.gallery")
    assert max(kb, kb2) < baseline + 64 * 1024, (kb, kb2, baseline)


# -- the installed command ----------------------------------------------------------------------------
def _installed() -> list[str]:
    exe = shutil.which("edge-retrieval")
    return [exe] if exe else [sys.executable, "-m", "edge_retrieval.cli"]


def _installed_refuses(args, *names) -> None:
    out = subprocess.run(_installed() + [str(a) for a in args], capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and out.stdout == "", out.stdout + out.stderr
    lines = [line for line in out.stderr.splitlines() if line != RUNTIME_NOISE]
    assert len(lines) == 1 and lines[0].startswith("Error: "), out.stderr
    assert "Traceback" not in out.stderr
    for name in names:
        assert str(name) in lines[0]


_REAL_STDERR = """
import sys
from edge_retrieval.cli import cli
gallery, command, paths = sys.argv[1], sys.argv[2], sys.argv[3:]
for path in paths:
    print("=== " + path, file=sys.stderr, flush=True)
    try:
        cli.main([command, path, "-g", gallery], prog_name="edge-retrieval")
    except SystemExit as e:
        sys.stderr.flush()
        print("=== exit " + str(e.code), file=sys.stderr, flush=True)
"""


@pytest.mark.parametrize("command", ["enroll", "search"])
def test_every_bad_image_is_one_line_on_the_real_stderr(command, bad_images, gallery):
    """All the bad images in one child process whose real stderr (file descriptor 2) is read: what
    OpenCV, libjpeg, libpng or the runtime print there counts too."""
    paths = [str(bad_image(bad_images, name)) for name in BAD_IMAGES]
    before = state(gallery)
    out = subprocess.run(
        [sys.executable, "-c", _REAL_STDERR, str(gallery), command, *paths], capture_output=True, text=True, timeout=300
    )
    blocks = re.split(r"^=== (?!exit)", out.stderr, flags=re.M)[1:]
    assert len(blocks) == len(paths), out.stderr
    for path, block in zip(paths, blocks):
        lines = [line for line in block.splitlines()[1:] if line != RUNTIME_NOISE]
        assert lines[-1] == "=== exit 1", block
        assert len(lines) == 2 and lines[0].startswith("Error: ") and path in lines[0], block
    assert "Traceback" not in out.stderr and out.stdout == ""
    assert state(gallery) == before


def test_the_installed_command_refuses_bad_files_in_one_line(bad_images, gallery, export_copy, tmp_path):
    before = state(gallery)
    _installed_refuses(["enroll", bad_images["truncated.jpg"], "-g", gallery], "truncated.jpg")
    _installed_refuses(["search", bad_images["bomb-8000x8000.png"], "-g", gallery], "bomb-8000x8000.png", "megapixels")
    HOSTILE["edited-vector"](export_copy)
    _installed_refuses(["import", export_copy, "-g", gallery], "hostile.gallery", "sha256")
    damaged = tmp_path / "damaged.db"
    _bad_gallery(damaged, gallery.read_bytes(), "damaged-pages")
    _installed_refuses(["search", photo(ITEMS[0]), "-g", damaged], "damaged.db", "damaged gallery database")
    assert state(gallery) == before


@pytest.mark.parametrize(
    "args, named",
    [
        (("--meta", "x=NaN"), "not JSON"),
        (("--meta", "x=Infinity"), "not JSON"),
        (("--label", "two\nlines"), "control characters"),
        (("--label", "bell\x07"), "control characters"),
        (("--label", "x" * 1001), "1001 characters, more than 1000"),
    ],
)
def test_enrol_refuses_what_an_import_would_refuse(args, named, gallery):
    """Enrolment checks labels and metadata as strictly as an import does: a NaN in metadata once
    made every kiosk listing fail, a newline in a label breaks one-line messages."""
    before = contents(gallery)
    line = assert_refused(run("enroll", photo(ITEMS[5]), *args, "-g", gallery))
    assert named in line
    assert contents(gallery) == before


def test_a_gallery_damaged_past_its_header_raises_a_typed_error_on_every_read(tmp_path, base):
    """Damage SQLite finds only when it reads the page (the file opens): each Gallery read the daemon
    and the kiosk make raises DamagedGalleryError naming the file and the check to run. (`count` reads
    only the indexes, which this damage spares.)"""
    from edge_retrieval.errors import DamagedGalleryError

    path = tmp_path / "gallery.db"
    _bad_gallery(path, (base / "gallery.db").read_bytes(), "damaged-pages")
    query = np.eye(1, 256, dtype=np.float32)
    reads = {
        "search": lambda g: g.search(query, k=2),
        "matrix": lambda g: g.matrix(),
        "generation": lambda g: g.generation(),
        "items": lambda g: g.items(),
        "item": lambda g: g.item(ENROLLED[0]),
        "dim": lambda g: g.dim,
        "add": lambda g: g.add("new", query, model_sha256="a" * 64),
    }
    for name, read in reads.items():
        with Gallery(path) as g, pytest.raises(DamagedGalleryError) as caught:
            read(g)
        message = str(caught.value)
        assert (
            message == f"{path}: damaged gallery database (database disk image is malformed); check it "
            f"with: sqlite3 {path} 'PRAGMA integrity_check'"
        ), name


@pytest.mark.parametrize("command", ["run", "kiosk"])
def test_the_service_and_the_kiosk_refuse_a_damaged_gallery_in_one_line(tmp_path, base, command):
    """A gallery damaged past its header: `run` and `kiosk` stop with the typed error's one line
    (naming the file and the check to run), exit 1, no traceback, the file untouched."""
    path = tmp_path / "gallery.db"
    _bad_gallery(path, (base / "gallery.db").read_bytes(), "damaged-pages")
    before = path.read_bytes()
    camera = tmp_path / "camera"
    camera.mkdir()
    shutil.copy(photo(ITEMS[0]), camera / "frame.jpg")
    extra = ["--port", "0"] if command == "kiosk" else []
    line = assert_refused(run(command, "--source", camera, "-g", path, *extra))
    assert str(path) in line and "damaged gallery database" in line and "PRAGMA integrity_check" in line
    assert path.read_bytes() == before
