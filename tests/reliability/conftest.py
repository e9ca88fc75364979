"""Fault, bad-input and intrusion tests (issue 7): every test here is marked `reliability`.

CI runs a bounded version of all of them; `EDGE_RETRIEVAL_RELIABILITY=full` runs the full
counts (≥ 50 kills per scenario, longer fuzzing, a longer soak):

    EDGE_RETRIEVAL_RELIABILITY=full python -m pytest tests/reliability -ra
"""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.reliability)
