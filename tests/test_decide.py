"""The decision logic on replayed timelines (the clock is the frame time passed in)."""
import math

import pytest

from edge_retrieval.config import DecisionConfig, VotesConfig
from edge_retrieval.decide import MATCH, UNKNOWN, Candidate, Decider


def cand(label, score=0.9, passed=True, moving=False):
    return Candidate(label, 1 if label else None, score, 0.2, 0.5, passed, moving)


def replay(decider, labels, source="cam", step=1.0, start=0.0):
    """Feed one candidate per label (None = nothing passed); [(time, label)] of the alerts."""
    out = []
    for i, label in enumerate(labels):
        t = start + i * step
        d = decider.update(source, cand(label, passed=label is not None), t)
        if d is not None:
            out.append((t, d.label))
    return out


def test_candidate_threshold_and_margin_to_the_next_different_label():
    d = Decider(threshold=0.7, margin=0.05)
    c = d.candidate([3, 4], ["cat", "dog"], [0.9, 0.8])
    assert (c.label, c.item_id, c.passed) == ("cat", 3, True)
    assert c.margin == pytest.approx(0.1)
    assert not d.candidate([3, 4], ["cat", "dog"], [0.82, 0.8]).passed  # margin 0.02 < 0.05
    assert not d.candidate([3, 4], ["cat", "dog"], [0.65, 0.1]).passed  # below the threshold
    same = d.candidate([3, 3, 4], ["cat", "cat", "dog"], [0.9, 0.89, 0.5])  # same label skipped
    assert same.margin == pytest.approx(0.4)
    alone = d.candidate([3], ["cat"], [0.9])
    assert alone.passed and math.isinf(alone.margin)
    empty = d.candidate([], [], [])
    assert empty.label is None and not empty.passed


def test_item_threshold_beats_per_label_beats_global():
    d = Decider(threshold=0.5, thresholds={"cat": 0.8, "dog": 0.8},
                item_threshold=lambda item_id: 0.95 if item_id == 1 else None)
    assert d.threshold_for(1, "cat") == 0.95
    assert d.threshold_for(2, "dog") == 0.8
    assert d.threshold_for(3, "owl") == 0.5
    assert not d.candidate([1], ["cat"], [0.9]).passed
    assert d.candidate([2], ["dog"], [0.85]).passed


def test_m_of_n_votes():
    d = Decider(m=3, n=5, cooldown=100)
    assert replay(d, ["cat", None, "cat", None, None]) == []  # 2 of 5
    d = Decider(m=3, n=5, cooldown=100)
    assert replay(d, ["cat", None, "cat", None, "cat"]) == [(4.0, "cat")]  # 3 of 5, not consecutive
    d = Decider(m=3, n=5, cooldown=100)
    assert replay(d, ["cat", "cat", None, None, None, "cat", "cat"]) == []  # the first two left the window


def test_a_label_standing_in_view_alerts_once_and_again_after_it_was_gone():
    d = Decider(m=2, n=3, cooldown=10)
    timeline = ["cat"] * 30 + [None] * 5 + ["cat"] * 3  # gone 5 s < cooldown: still cooling
    assert replay(d, timeline) == [(1.0, "cat")]
    d = Decider(m=2, n=3, cooldown=10)
    timeline = ["cat"] * 30 + [None] * 12 + ["cat"] * 3  # gone 12 s > cooldown
    assert replay(d, timeline) == [(1.0, "cat"), (43.0, "cat")]


def test_a_different_label_alerts_at_once_and_sources_are_independent():
    d = Decider(m=2, n=3, cooldown=60)
    alerts = replay(d, ["cat", "cat", "cat", "dog", "dog", "cat", "cat"])
    assert alerts == [(1.0, "cat"), (4.0, "dog")]  # cat is still cooling at 6 s
    assert replay(d, ["cat", "cat"], source="cam2", start=7.0) == [(8.0, "cat")]
    assert sorted(d.cooling("cam", 7.0)) == ["cat", "dog"]


def test_unknown_events_need_motion_and_are_optional():
    frames = [Candidate("cat", 1, 0.3, 0.0, 0.5, False, moving=True)] * 4
    off = Decider(m=2, n=3)
    assert [off.update("cam", c, i) for i, c in enumerate(frames)] == [None] * 4
    on = Decider(m=2, n=3, unknown=True, cooldown=60)
    out = [on.update("cam", c, i) for i, c in enumerate(frames)]
    assert out[0] is None and out[1].kind == UNKNOWN and out[1].label is None and out[2:] == [None, None]
    still = [Candidate("cat", 1, 0.3, 0.0, 0.5, False, moving=False)] * 4
    on2 = Decider(m=2, n=3, unknown=True)
    assert [on2.update("cam", c, i) for i, c in enumerate(still)] == [None] * 4


def test_decision_fields_and_from_config():
    d = Decider.from_config(DecisionConfig(threshold=0.6, margin=0.1, votes=VotesConfig(m=1, n=1), cooldown=5))
    decision = d.update("cam", d.candidate([7, 8], ["cat", "dog"], [0.9, 0.5]), 12.5)
    assert decision.kind == MATCH and decision.label == "cat" and decision.item_id == 7
    assert decision.score == pytest.approx(0.9) and decision.margin == pytest.approx(0.4)
    assert (decision.votes, decision.window, decision.source, decision.time) == (1, 1, "cam", 12.5)
    with pytest.raises(ValueError):
        Decider(m=4, n=3)
