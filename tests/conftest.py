"""Shared fixtures: the real default model, the repo's real photos, fresh galleries."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from edge_retrieval import DEFAULT_MODEL, Embedder, Gallery
from edge_retrieval.demo import PHOTOS

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def cache_under_tmp():
    """The demo clip's cache (XDG_CACHE_HOME) under the temporary folder: tests write only there."""
    previous = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(Path(tempfile.gettempdir()) / "edge-retrieval-test-cache")
    yield
    if previous is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = previous


@pytest.fixture(scope="session")
def embedder():
    if not DEFAULT_MODEL.is_file():
        pytest.fail(f"{DEFAULT_MODEL} is missing: the default model must be committed")
    with Embedder(DEFAULT_MODEL) as emb:
        yield emb


@pytest.fixture(scope="session")
def photos() -> Path:
    return PHOTOS


@pytest.fixture
def gallery(tmp_path):
    with Gallery(tmp_path / "gallery.db") as g:
        yield g


@pytest.fixture(scope="session")
def museum() -> Path:
    path = SHARED_DATA / "museum"
    if not (path / "ground_truth.json").is_file():
        pytest.skip(f"{path} absent: the museum data set lives in ../shared/data (not in the repo)")
    return path


from fakes import FakeEmbedder, NotifyListener, fake_vector  # noqa: E402 (the fakes live in tests/fakes.py)


@pytest.fixture
def notify_socket(tmp_path):
    listener = NotifyListener(tmp_path / "notify.sock")
    yield listener
    listener.close()


@pytest.fixture
def fake_embedder():
    return FakeEmbedder()


@pytest.fixture
def fake_gallery(tmp_path):
    """A gallery file holding fake items 0..3 ("item0".."item3") for FakeEmbedder."""
    with Gallery(tmp_path / "fake.db") as g:
        for code in range(4):
            g.add(f"item{code}", fake_vector(code), model_sha256=FakeEmbedder.sha256, model_name="fake")
        yield g
