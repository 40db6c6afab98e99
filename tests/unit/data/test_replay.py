"""chatforge.data.replay: the training set of an incremental round (feedback + a seeded replay sample)."""

from __future__ import annotations

import polars as pl
import pytest

from chatforge.data.replay import ReplayError, replay_mix
from chatforge.data.schema import conform
from chatforge.data.split import stable_unit


def table(feedback: list[str], others: list[str]) -> pl.DataFrame:
    """Two rows (user, assistant) per conversation; feedback ones from the source "feedback"."""
    rows = []
    for cid in feedback + others:
        source = "feedback" if cid in feedback else "demo"
        method = "entity_swap" if "#es" in cid else "original"
        origin = cid.split("#")[0] if "#" in cid else None
        for turn, role in enumerate(("user", "assistant")):
            rows.append({"conversation_id": cid, "turn": turn, "role": role, "content": f"{cid} {role}", "lang": "en",
                         "intent": None, "source": source, "origin_id": origin, "method": method})
    return conform(pl.DataFrame(rows))


FEEDBACK = ["feedback:7", "feedback:7#es1", "feedback:9"]  # an augmented copy counts as feedback too
OTHERS = [f"demo:{i:02d}" for i in range(20)]


def expected_replay(n: int, seed: int) -> list[str]:
    return sorted(sorted(OTHERS, key=lambda c: stable_unit(c, salt=f"replay:{seed}"))[:n])


def test_every_feedback_row_and_ratio_x_as_many_others_exactly():
    turns = table(FEEDBACK, OTHERS)
    mix = replay_mix(turns, ratio=2.0, seed=42)
    assert mix.feedback_ids == sorted(FEEDBACK)
    assert mix.replay_ids == expected_replay(6, 42)  # round(2.0 x 3 feedback conversations)
    assert mix.turns.equals(turns.filter(pl.col("conversation_id").is_in(FEEDBACK + mix.replay_ids)))  # input order
    assert mix.turns.filter(pl.col("source") == "feedback").equals(turns.filter(pl.col("source") == "feedback"))
    assert mix.metrics == {"replay_feedback_conversations": 3, "replay_other_conversations": 20,
                           "replay_conversations": 6, "replay_ratio": 2.0, "replay_rows": 18}


def test_seeded_stable_and_a_larger_ratio_extends_the_same_pick():
    turns = table(FEEDBACK, OTHERS)
    a, b = replay_mix(turns, ratio=1.0, seed=1), replay_mix(turns, ratio=1.0, seed=1)
    assert a.replay_ids == b.replay_ids and a.turns.equals(b.turns)
    assert replay_mix(turns, ratio=1.0, seed=2).replay_ids == expected_replay(3, 2) != a.replay_ids
    assert set(a.replay_ids) <= set(replay_mix(turns, ratio=2.5, seed=1).replay_ids)  # 3 -> round(7.5) = 8
    assert len(replay_mix(turns, ratio=2.5, seed=1).replay_ids) == 8
    # more data does not reshuffle the old pick: a new conversation either joins it or not
    more = table(FEEDBACK, [*OTHERS, "demo:99"])
    picked = replay_mix(more, ratio=1.0, seed=1).replay_ids
    assert len(set(picked) & set(a.replay_ids)) >= 2


def test_ratio_zero_is_feedback_only_and_a_large_ratio_takes_everything():
    turns = table(FEEDBACK, OTHERS)
    assert replay_mix(turns, ratio=0.0, seed=0).turns["conversation_id"].unique().sort().to_list() == sorted(FEEDBACK)
    assert replay_mix(turns, ratio=100.0, seed=0).turns.equals(turns)


def test_no_feedback_and_no_source_column_are_clear_errors():
    with pytest.raises(ReplayError, match=r"no conversation of the ingest source 'feedback'.*chatforge feedback export.*"
                                          r"train.init_from: base"):
        replay_mix(table([], OTHERS), ratio=4.0, seed=0)
    with pytest.raises(ReplayError, match=r"lacks column\(s\) \['source'\]"):
        replay_mix(table(FEEDBACK, OTHERS).drop("source"), ratio=4.0, seed=0)
    with pytest.raises(ReplayError, match="train.replay_ratio = -1.0"):
        replay_mix(table(FEEDBACK, OTHERS), ratio=-1.0, seed=0)
