"""Fault, bad-input and intrusion tests (issue 7): every test here is marked `reliability`.

CI runs a bounded version of all of them; `EDGE_RETRIEVAL_RELIABILITY=full` runs the full
counts (≥ 50 kills per scenario, longer fuzzing, a longer soak):

    EDGE_RETRIEVAL_RELIABILITY=full python -m pytest tests/reliability -ra
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

FULL = os.environ.get("EDGE_RETRIEVAL_RELIABILITY", "") == "full"
HERE = Path(__file__).resolve().parent


def budget(bounded: int, full: int) -> int:
    """A repeat count: `bounded` in CI and plain runs, `full` with EDGE_RETRIEVAL_RELIABILITY=full."""
    return full if FULL else bounded


def pytest_collection_modifyitems(config, items):
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.reliability)
