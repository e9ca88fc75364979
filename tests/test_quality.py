"""The museum targets of the default configuration (slow; needs ../shared/data).

Recall@1 ≥ 0.99 on qsd1_w1 and ≥ 0.97 on qsd2_w1 (issue 4). Run with
`python3 -m pytest -q -m slow tests/test_quality.py`; the figures of every configuration
come from `python benchmarks/quality.py` (benchmarks/README.md).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

pytestmark = [pytest.mark.slow, pytest.mark.shared_data]

QSD1_RECALL_AT_1 = 0.99
QSD2_RECALL_AT_1 = 0.97


@pytest.fixture(scope="module")
def museum_results(museum):
    import quality

    from edge_retrieval.embedder import Embedder

    config = quality.CONFIGS["default"]
    with Embedder(config.model) as emb:
        return quality.museum(emb, config)


def test_qsd1_recall_at_1(museum_results):
    assert museum_results["qsd1_w1"]["recall_at_1"] >= QSD1_RECALL_AT_1


def test_qsd1_and_qsd2_recall_at_5(museum_results):
    assert museum_results["qsd1_w1"]["recall_at_5"] == 1.0
    assert museum_results["qsd2_w1"]["recall_at_5"] == 1.0


def test_qsd2_recall_at_1(museum_results):
    assert museum_results["qsd2_w1"]["recall_at_1"] >= QSD2_RECALL_AT_1
