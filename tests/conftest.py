"""Shared fixtures: the real default model, the repo's real photos, fresh galleries."""
from __future__ import annotations

from pathlib import Path

import pytest

from edge_retrieval import DEFAULT_MODEL, Embedder, Gallery
from edge_retrieval.demo import PHOTOS

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"


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
