"""The training set of an incremental feedback round (`train.init_from: served`, issue 23).

A round continues the promoted model instead of training the base again, on far less data: every
feedback conversation, plus a replay sample of the conversations the model learnt before, so that it
learns the new cases without forgetting the old ones (rehearsal: Robins 1995, "Catastrophic
forgetting, rehearsal and pseudorehearsal"; the experience replay of continual learning).

- Feedback conversations: those whose rows carry `source == FEEDBACK_SOURCE` ("feedback", the name
  params.yaml gives the ingest source of format `feedback`, which `chatforge feedback export` writes),
  their augmented and oversampled copies included: augment and balance copy the `source` column into
  the rows they add (and set `origin_id` / `method`), so a copy of a feedback conversation is one too.
- Replay: round(replay_ratio x the number of feedback conversations) of the other conversations (all
  of them when there are fewer), chosen by a seeded hash of their id (`chatforge.data.split.stable_unit`):
  the same seed picks the same ones on every machine, a larger ratio extends the same pick, and new
  data never reshuffles which old conversations were chosen.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import polars as pl

from chatforge.data.split import stable_unit

FEEDBACK_SOURCE = "feedback"  # the `source` value of the rows `chatforge feedback export` feeds to ingest


class ReplayError(ValueError):
    """The train data cannot make a feedback round; the message says why and what to change."""


@dataclass(frozen=True)
class ReplayMix:
    """What `replay_mix` returns.

    turns: the rows of the chosen conversations, in the input's row order (a subset of the input).
    feedback_ids / replay_ids: the chosen conversation ids, sorted.
    metrics: replay_feedback_conversations, replay_other_conversations (available to replay),
        replay_conversations (chosen), replay_ratio, replay_rows (rows of the output).
    """

    turns: pl.DataFrame
    feedback_ids: list[str] = field(default_factory=list)
    replay_ids: list[str] = field(default_factory=list)
    metrics: dict[str, float | int] = field(default_factory=dict)


def replay_mix(turns: pl.DataFrame, *, ratio: float, seed: int, feedback_source: str = FEEDBACK_SOURCE) -> ReplayMix:
    """Every conversation of `feedback_source` plus a seeded sample of round(ratio x their number) others.

    turns: a turns table (chatforge.data.schema) with conversation_id and source columns.
    ratio: >= 0, replay conversations per feedback conversation (train.replay_ratio); rounded half up.
    seed: which other conversations are replayed (train.seed): the round(ratio x n) with the smallest
        stable_unit(id, salt=f"replay:{seed}").
    Raises ReplayError when the table has no conversation_id or source column, when ratio < 0, or when
    it holds no feedback conversation (a round would have nothing new to learn).
    """
    missing = [c for c in ("conversation_id", "source") if c not in turns.columns]
    if missing:
        raise ReplayError(f"the train data lacks column(s) {missing}: it is not a turns table written by the data stages; "
                          "rebuild it with `dvc repro augment`.")
    if not (ratio >= 0 and math.isfinite(ratio)):
        raise ReplayError(f"train.replay_ratio = {ratio!r}: must be a finite number >= 0")
    by_conv = turns.group_by("conversation_id").agg((pl.col("source") == feedback_source).any().alias("feedback"))
    feedback = sorted(by_conv.filter(pl.col("feedback"))["conversation_id"].to_list())
    others = by_conv.filter(~pl.col("feedback"))["conversation_id"].to_list()
    if not feedback:
        raise ReplayError(
            f"train.init_from is served but the train data holds no conversation of the ingest source "
            f"{feedback_source!r}: a round needs new feedback. Run `chatforge feedback export` (it writes "
            "data/raw/feedback, read by the ingest source named feedback) before `dvc repro`, or set "
            "train.init_from: base to train from the base on everything.")
    n_replay = min(len(others), math.floor(ratio * len(feedback) + 0.5))
    salt = f"replay:{seed}"
    replay = sorted(sorted(others, key=lambda cid: (stable_unit(cid, salt=salt), cid))[:n_replay])
    chosen = turns.filter(pl.col("conversation_id").is_in(pl.Series(feedback + replay, dtype=pl.String).implode()))
    metrics: dict[str, float | int] = {
        "replay_feedback_conversations": len(feedback), "replay_other_conversations": len(others),
        "replay_conversations": len(replay), "replay_ratio": float(ratio), "replay_rows": chosen.height,
    }
    return ReplayMix(chosen, feedback, replay, metrics)


__all__ = ["FEEDBACK_SOURCE", "ReplayError", "ReplayMix", "replay_mix"]
