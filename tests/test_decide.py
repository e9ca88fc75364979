"""The decision logic on replayed timelines (the clock is the frame time passed in)."""

import pytest

from edge_retrieval.config import DecisionConfig, VotesConfig
from edge_retrieval.decide import MATCH, UNKNOWN, Decider
from edge_retrieval.recognize import Candidate, Ranking


def ranking(label, score=0.9):
    """A frame's ranking whose verdict is `label` (None: unknown)."""
    if label is None:
        return Ranking("whole", [Candidate(9, "owl", 0.1, 0.1)], None, 0.5, 0.0)
    c = Candidate(1, label, score, score)
    return Ranking("whole", [c, Candidate(2, "other", 0.5, 0.5)], c, 0.5, score - 0.5)


def replay(decider, labels, source="cam", step=1.0, start=0.0):
    """Feed one ranking per label (None = nothing passed); [(time, label)] of the alerts."""
    out = []
    for i, label in enumerate(labels):
        t = start + i * step
        d = decider.update(source, ranking(label), t)
        if d is not None:
            out.append((t, d.label))
    return out


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


def test_confirmed_says_what_the_window_agrees_on_even_while_cooling_down():
    d = Decider(m=2, n=3, cooldown=60)
    assert d.update("cam", ranking("cat"), 0) is None and d.confirmed("cam") is None
    assert d.update("cam", ranking("cat"), 1).label == "cat"
    assert d.update("cam", ranking("cat"), 2) is None  # cooling down: no alert ...
    assert d.confirmed("cam").label == "cat"  # ... but still confirmed (the kiosk keeps showing it)
    d.update("cam", ranking(None), 3)
    assert d.confirmed("cam") is None


def test_unknown_needs_motion_is_always_confirmed_and_alerts_only_when_asked():
    off = Decider(m=2, n=3)
    out = [off.update("cam", ranking(None), i, moving=True) for i in range(4)]
    assert out == [None] * 4
    assert off.confirmed("cam").kind == UNKNOWN  # the kiosk shows "unknown item" all the same
    on = Decider(m=2, n=3, unknown=True, cooldown=60)
    out = [on.update("cam", ranking(None), i, moving=True) for i in range(4)]
    assert out[0] is None and out[1].kind == UNKNOWN and out[1].label is None and out[2:] == [None, None]
    still = Decider(m=2, n=3, unknown=True)
    assert [still.update("cam", ranking(None), i, moving=False) for i in range(4)] == [None] * 4


def test_decision_fields_and_from_config():
    d = Decider.from_config(DecisionConfig(votes=VotesConfig(m=1, n=1), cooldown=5))
    decision = d.update("cam", ranking("cat", 0.9), 12.5)
    assert decision.kind == MATCH and decision.label == "cat" and decision.item_id == 1
    assert decision.score == pytest.approx(0.9) and decision.margin == pytest.approx(0.4)
    assert decision.threshold == 0.5
    assert (decision.votes, decision.window, decision.source, decision.time) == (1, 1, "cam", 12.5)
    with pytest.raises(ValueError):
        Decider(m=4, n=3)
