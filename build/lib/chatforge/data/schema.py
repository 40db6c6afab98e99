"""The canonical turns table every data stage reads and writes (one row per message)."""

from __future__ import annotations

import polars as pl

TURNS_SCHEMA: dict[str, pl.DataType] = {
    "conversation_id": pl.String(),
    "turn": pl.Int32(),
    "role": pl.String(),  # system | user | assistant
    "content": pl.String(),
    "lang": pl.String(),  # zh | en
    "intent": pl.String(),  # nullable
    "source": pl.String(),
    "origin_id": pl.String(),  # nullable; the conversation an augmented/upsampled row came from
    "method": pl.String(),  # original | back_translation | entity_swap | voice_swap | oversample
}

REJECTS_SCHEMA: dict[str, pl.DataType] = {
    "source": pl.String(),
    "location": pl.String(),  # file:line, file#conversation-id, ...
    "reason": pl.String(),
    "raw": pl.String(),  # a prefix of the offending input, for a person to look at
}

ROLES = ("system", "user", "assistant")


def empty_turns() -> pl.DataFrame:
    return pl.DataFrame(schema=TURNS_SCHEMA)


def conform(frame: pl.DataFrame) -> pl.DataFrame:
    """Cast to the canonical column order and types; missing optional columns become null."""
    missing = [c for c in ("conversation_id", "turn", "role", "content") if c not in frame.columns]
    if missing:
        raise ValueError(f"turns table lacks required columns {missing}; has {frame.columns}")
    cols = [
        (pl.col(c) if c in frame.columns else pl.lit(None)).cast(dtype).alias(c)
        for c, dtype in TURNS_SCHEMA.items()
    ]
    return frame.select(cols)


def sort_turns(frame: pl.DataFrame) -> pl.DataFrame:
    """The one row order every stage writes, so equal inputs give byte-identical parquet."""
    return frame.sort(["conversation_id", "turn"], maintain_order=True)


def conversation_intents(turns: pl.DataFrame) -> pl.DataFrame:
    """One row per conversation: its id and intent (the first non-null intent of its rows)."""
    return (
        turns.sort(["conversation_id", "turn"])
        .group_by("conversation_id", maintain_order=True)
        .agg(pl.col("intent").drop_nulls().first().alias("intent"))
    )
