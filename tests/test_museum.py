"""Recall on the museum data set (../shared/data/museum), through the same code as `edge-retrieval eval`."""

import pytest

from edge_retrieval.evaluate import evaluate

# The whole-image baselines this project must keep (issue 2): recall@1 on each query set.
MIN_RECALL_AT_1 = {"qsd1_w1": 0.97, "qsd2_w1": 0.87}


@pytest.mark.slow
@pytest.mark.shared_data
@pytest.mark.parametrize("subset", sorted(MIN_RECALL_AT_1))
def test_museum_recall(museum, embedder, subset):
    result = evaluate(museum / "ground_truth.json", embedder, subset)
    assert result.queries == 30 and result.records == 287
    assert result.recall_at_1 >= MIN_RECALL_AT_1[subset]
