"""`edge-retrieval doctor` on real parts: the built-in demo passes; a missing camera, a damaged
gallery and a gallery of another model fail with reasons that name them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from test_faces import faces_dir, people, run  # noqa: F401 (fixtures)

from edge_retrieval.cli import cli
from edge_retrieval.config import load_config
from edge_retrieval.demo import photo
from edge_retrieval.doctor import DEVICE_CHECK, QUALITY_ORDER, Report, check_card, diagnose
from edge_retrieval.embedder import Embedder
from edge_retrieval.enroll import enroll
from edge_retrieval.storage.gallery import Gallery

REPO = Path(__file__).resolve().parent.parent
OTHER_MODEL = REPO / "models" / "mobilenet_v2_int8.tflite"  # a converter output of another geometry


def doctor(*args):
    return CliRunner().invoke(cli, ["doctor", *map(str, args)], catch_exceptions=False)


def enrolled(path: Path, model=None) -> Path:
    with Embedder(model) as emb, Gallery(path) as g:
        enroll(g, emb, [(name, photo(name)) for name in ("cat", "coffee")])
    return path


def test_doctor_on_the_demo_passes_and_advises_a_preset():
    result = doctor("--demo", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["ok"] is True
    status = {c["name"]: c["status"] for c in report["checks"]}
    assert status == {"model": "ok", "model card": "ok", "gallery": "ok", "camera": "ok", "disk": "ok", "cpu": "ok"}
    assert set(report["timings_ms"]) == set(QUALITY_ORDER)
    whole = report["timings_ms"]["whole"]
    assert {"motion", "preprocess", "invoke", "pool", "scan", "frame"} <= set(whole)
    assert "identify" in report["timings_ms"]["default"]
    assert report["preset"] in QUALITY_ORDER and report["fps"] >= 2
    assert report["invoke_ms"] > 0


def test_a_missing_camera_fails_naming_it(tmp_path):
    gallery = enrolled(tmp_path / "g.db")
    result = doctor("--source", "/dev/video63", "--gallery", gallery, "--camera-timeout", 1)
    assert result.exit_code == 1
    assert "Error: camera: /dev/video63: no frame within 1 s" in result.stderr
    assert "gallery:" not in result.stderr  # the gallery is fine
    assert "camera      fail" in result.stdout


def test_a_damaged_gallery_fails_naming_it(tmp_path):
    gallery = enrolled(tmp_path / "g.db")
    with open(gallery, "r+b") as f:  # garbage over a page of the tables
        f.seek(2 * 4096)
        f.write(b"\xff" * 4096)
    before = gallery.read_bytes()
    config = load_config(None, {"source.uri": str(photo("cat").parent), "gallery.path": str(gallery)})
    report = diagnose(config, timing=False)
    failed = {c.name: c.detail for c in report.checks if c.status == "fail"}
    assert list(failed) == ["gallery"]
    assert str(gallery) in failed["gallery"] and "damaged" in failed["gallery"]
    assert gallery.read_bytes() == before  # doctor changes nothing


def test_a_gallery_of_another_model_fails_naming_both(tmp_path):
    gallery = enrolled(tmp_path / "other.db", OTHER_MODEL)
    result = doctor("--source", photo("cat").parent, "--gallery", gallery)
    assert result.exit_code == 1
    assert "Error: gallery:" in result.stderr
    assert "belongs to model mobilenet_v2_int8" in result.stderr and "mobilenet_v2_240x320_int8" in result.stderr
    # the table still times every preset (against the demo's photos) and advises one
    for word in ("model card", "gallery     fail", "camera      ok", "disk", "advise decision.preset", *QUALITY_ORDER):
        assert word in result.stdout


def test_a_model_that_disagrees_with_its_card_fails(embedder):
    """The check compares this CPU's descriptors of the card's images with the recorded ones."""
    ref = embedder.card.validation[DEVICE_CHECK]
    assert len(ref["images"]) == len(ref["descriptors"]) >= 3
    report = Report()
    check_card(report, embedder)
    assert report.checks[-1].status == "ok", report.checks[-1].detail

    class Drifted:  # the same model, its output drifted as a broken kernel would
        card, model_path = embedder.card, embedder.model_path

        def embed_files(self, paths):
            v = embedder.embed_files(paths)
            v[:, : v.shape[1] // 4] *= -1
            return v / np.linalg.norm(v, axis=1, keepdims=True)

    check_card(report, Drifted())
    assert report.checks[-1].status == "fail" and "needs ≥ 0.98" in report.checks[-1].detail


def test_32_bit_arm_is_refused_at_install_and_at_start(monkeypatch, tmp_path):
    """pip: the runtime is required on armv7l, where it has no wheel; the CLI: one line at start."""
    import importlib.util
    import platform
    import tomllib

    from packaging.requirements import Requirement

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    litert = next(Requirement(d) for d in deps if d.startswith("ai-edge-litert"))
    for machine in ("armv7l", "armv6l", "aarch64", "x86_64"):
        assert litert.marker.evaluate({"platform_machine": machine}), machine

    monkeypatch.setattr(platform, "machine", lambda: "armv7l")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)  # no runtime installed
    result = CliRunner().invoke(cli, ["list", "-g", str(tmp_path / "g.db")])
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        "Error: 32-bit ARM (armv7l, 32-bit Python) is not supported: LiteRT (ai-edge-litert) publishes no "
        "32-bit ARM wheel; install Raspberry Pi OS 64-bit (Bookworm) and edge-retrieval there"
    )
    assert not (tmp_path / "g.db").exists()


def test_a_malformed_card_check_is_a_failed_check_not_a_crash(embedder):
    from dataclasses import replace

    class Edited:  # the card's device_check hand-edited: its descriptors gone
        model_path = embedder.model_path
        card = replace(embedder.card, validation={DEVICE_CHECK: {"images": [{"name": "photos/cat.jpg"}]}})

    report = Report()
    check_card(report, Edited())
    assert report.checks[-1].status == "fail"
    assert "validation.device_check is malformed (KeyError" in report.checks[-1].detail


@pytest.mark.shared_data
def test_a_people_only_config_is_checked_and_timed(tmp_path, people):  # noqa: F811 (the fixture)
    """A people watchlist alone (no items gallery): the people gallery is checked and the face
    models are timed on the camera's frames; a damaged people gallery fails naming the field."""
    db = tmp_path / "people.db"
    run("enroll", "--faces", "-g", db, people)
    photos = REPO / "edge_retrieval" / "data" / "photos"
    result = doctor("--source", photos, "--set", f"people.gallery={db}", "--json")
    assert result.exit_code == 0, result.output + result.stderr
    report = json.loads(result.stdout)
    people_check = next(c for c in report["checks"] if c["name"] == "people")
    assert people_check["status"] == "ok" and "mobilefacenet_int8" in people_check["detail"]
    assert "ms a frame" in people_check["detail"] and "gallery" not in {c["name"] for c in report["checks"]}

    db.write_bytes(b"not a database at all" * 100)
    result = doctor("--source", photos, "--set", f"people.gallery={db}")
    assert result.exit_code == 1 and "people: people.gallery:" in result.stderr
