"""Bring intent class sizes in the train split within `max_imbalance` of each other.

Sizes are counted in conversations, by conversation-level intent
(chatforge.data.schema.conversation_intents). The goal is (max - min) / max <= max_imbalance over
the intents with at least `min_count` conversations ("eligible"); smaller intents, and conversations
without an intent, are kept untouched and counted.

The plan (plan_sizes) aims at a target size T (the median, mean, max or min of the eligible sizes,
rounded half up). T is the ceiling and ceil((1 - max_imbalance) * T) the floor: larger classes are
down-sampled to T, smaller ones up-sampled to the floor, the ones in between are left alone, so
the band satisfies the goal by construction and as little data as possible changes. Up-sampling
never makes a class more than `max_upsample_factor` times its size; when that cap stops a class
short of the floor the goal is not met, and the result says which intents and what would fix it.

Sampling is seeded and deterministic: conversations are ranked inside their intent by a hash of
(seed, conversation id). Down-sampling keeps the first T; up-sampling copies whole conversations
in rank order, round after round, with ids `<id>#os<k>` (k = round, from 1), origin_id = the
copied conversation's origin (its own id for an original) and method = "oversample".
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Literal

import polars as pl

from chatforge.data.schema import TURNS_SCHEMA, conform, conversation_intents, sort_turns
from chatforge.data.split import stable_unit

Target = Literal["median", "mean", "max", "min"]
_REQUIRED = ("conversation_id", "turn", "role", "content", "intent")


class BalanceError(ValueError):
    """Input balance cannot work with; the message says what was wrong and how to fix it."""


@dataclass(frozen=True)
class SizePlan:
    sizes: dict[str, int]  # intent -> conversations after balancing (every intent, eligible or not)
    eligible: tuple[str, ...]  # intents with >= min_count conversations, sorted
    target_size: int  # the ceiling T (0 when nothing is eligible)
    floor_size: int  # ceil((1 - max_imbalance) * T)
    goal_met: bool
    reason: str  # why the goal is not met (or why there was nothing to do); "" otherwise


@dataclass(frozen=True)
class BalanceResult:
    turns: pl.DataFrame  # balanced train turns, canonical schema, sorted
    distribution: pl.DataFrame  # intent, stage (before|after), conversations: the plot data
    metrics: dict[str, Any]


def imbalance(sizes: list[int]) -> float:
    """(max - min) / max, 0.0 for fewer than two classes."""
    if len(sizes) < 2 or max(sizes) == 0:
        return 0.0
    return (max(sizes) - min(sizes)) / max(sizes)


def _exact(x: float) -> Fraction:
    # 0.2 in params means exactly 1/5: repr gives the shortest decimal, so bounds carry no float error
    return Fraction(repr(float(x)))


def plan_sizes(
    counts: dict[str, int],
    *,
    max_imbalance: float,
    min_count: int,
    target: Target = "median",
    max_upsample_factor: float = 4.0,
) -> SizePlan:
    """The class size every intent should end with; pure arithmetic, see the module docstring."""
    sizes = dict(counts)
    eligible = tuple(sorted(i for i, n in counts.items() if n >= min_count))
    if len(eligible) < 2:
        reason = (
            f"fewer than two intents have at least min_count={min_count} conversations "
            f"({len(eligible)} do): nothing to balance"
        )
        return SizePlan(sizes, eligible, 0, 0, True, reason)
    values = [counts[i] for i in eligible]
    stat = {"median": statistics.median, "mean": statistics.fmean, "max": max, "min": min}[target](values)
    ceiling = max(1, math.floor(Fraction(stat) + Fraction(1, 2)))
    floor = math.ceil((1 - _exact(max_imbalance)) * ceiling)
    factor = _exact(max_upsample_factor)
    short: list[str] = []
    for intent in eligible:
        n = counts[intent]
        if n > ceiling:
            sizes[intent] = ceiling
        elif n < floor:
            reachable = math.floor(n * factor)
            sizes[intent] = min(floor, reachable)
            if reachable < floor:
                short.append(
                    f"'{intent}' with {n} conversation(s) reaches {reachable} of {floor} "
                    f"(needs max_upsample_factor >= {floor / n:.3g})"
                )
    final = [sizes[i] for i in eligible]
    met = (max(final) - min(final)) <= _exact(max_imbalance) * max(final)
    reason = ""
    if not met:
        reason = (
            f"max_upsample_factor={max_upsample_factor} caps up-sampling below the floor {floor} "
            f"(target {target}={ceiling}): " + "; ".join(short)
            + ". Raise balance.max_upsample_factor or choose a smaller balance.target."
        )
    return SizePlan(sizes, eligible, ceiling, floor, met, reason)


def check_train(turns: pl.DataFrame) -> None:
    missing = [c for c in _REQUIRED if c not in turns.columns]
    if missing:
        raise BalanceError(
            f"balance input: missing column(s) {missing} (has {turns.columns}). Expected the canonical "
            f"turns table ({', '.join(TURNS_SCHEMA)}) from the split stage (data/split/train.parquet)."
        )
    if turns.is_empty():
        raise BalanceError(
            "balance input: the train split is empty (0 rows). Check reports/split.json; add data or "
            "lower split.val_fraction / split.test_fraction."
        )


def balance_turns(
    turns: pl.DataFrame,
    *,
    max_imbalance: float,
    min_count: int,
    target: Target = "median",
    max_upsample_factor: float = 4.0,
    seed: int = 13,
) -> BalanceResult:
    """Down- and up-sample whole conversations of the train split; see the module docstring."""
    check_train(turns)
    turns = conform(turns)
    convs = conversation_intents(turns)
    labelled = convs.filter(pl.col("intent").is_not_null())
    counts = dict(labelled.group_by("intent").len().sort("intent").iter_rows())
    if not counts:
        plan = SizePlan({}, (), 0, 0, True, "no conversation has an intent: nothing to balance "
                        "(label intents in the source data to balance them)")
        out = sort_turns(turns)
    else:
        plan = plan_sizes(
            counts, max_imbalance=max_imbalance, min_count=min_count,
            target=target, max_upsample_factor=max_upsample_factor,
        )
        out = _resample(turns, labelled, plan, seed=seed)
    after = dict(
        conversation_intents(out).filter(pl.col("intent").is_not_null()).group_by("intent").len().iter_rows()
    )
    return BalanceResult(out, _distribution(counts, after), _metrics(turns, out, convs, counts, after, plan))


def _resample(turns: pl.DataFrame, labelled: pl.DataFrame, plan: SizePlan, *, seed: int) -> pl.DataFrame:
    ranked = (
        labelled.with_columns(
            pl.Series("u", [stable_unit(c, salt=f"balance:{seed}") for c in labelled["conversation_id"]])
        )
        .sort(["intent", "u", "conversation_id"])
        .with_columns(
            pl.int_range(pl.len()).over("intent").alias("rank"),
            pl.len().over("intent").alias("n"),
            pl.col("intent").replace_strict(plan.sizes, return_dtype=pl.Int64).alias("k"),
        )
    )
    dropped = ranked.filter(pl.col("rank") >= pl.col("k"))["conversation_id"]
    kept = turns.filter(~pl.col("conversation_id").is_in(dropped.implode()))
    up = ranked.filter(pl.col("k") > pl.col("n"))
    rounds = 0 if up.is_empty() else int(((up["k"] - 1) // up["n"]).max())  # ceil((k - n) / n)
    copies = []
    # round r copies the first (k - n) - (r - 1) * n conversations in rank order
    for r in range(1, rounds + 1):
        picked = up.filter((r - 1) * pl.col("n") + pl.col("rank") < pl.col("k") - pl.col("n"))
        copies.append(picked.select("conversation_id", (pl.col("conversation_id") + f"#os{r}").alias("new_id")))
    if not copies:
        return sort_turns(kept)
    mapping = pl.concat(copies)
    clash = mapping.filter(pl.col("new_id").is_in(turns["conversation_id"].implode()))
    if not clash.is_empty():
        raise BalanceError(
            f"balance input already contains up-sampled ids such as {clash['new_id'][0]!r}: run balance on "
            "the split stage's train.parquet, not on its own output."
        )
    copied = turns.join(mapping, on="conversation_id").with_columns(
        pl.coalesce("origin_id", "conversation_id").alias("origin_id"),
        pl.col("new_id").alias("conversation_id"),
        pl.lit("oversample").alias("method"),
    )
    return sort_turns(pl.concat([kept, conform(copied)]))


def _distribution(before: dict[str, int], after: dict[str, int]) -> pl.DataFrame:
    rows = [
        {"intent": i, "stage": stage, "conversations": int(counts.get(i, 0))}
        for i in sorted(before)
        for stage, counts in (("before", before), ("after", after))
    ]
    return pl.DataFrame(rows, schema={"intent": pl.String, "stage": pl.String, "conversations": pl.Int64})


def _metrics(
    turns: pl.DataFrame, out: pl.DataFrame, convs: pl.DataFrame,
    before: dict[str, int], after: dict[str, int], plan: SizePlan,
) -> dict[str, Any]:
    n_before = convs.height
    n_after = out["conversation_id"].n_unique()
    added = out.filter(pl.col("method") == "oversample")["conversation_id"].n_unique() - turns.filter(
        pl.col("method") == "oversample"
    )["conversation_id"].n_unique()
    return {
        "goal_met": plan.goal_met,
        "reason": plan.reason,
        "imbalance_before": round(imbalance([before[i] for i in plan.eligible]), 6),
        "imbalance_after": round(imbalance([after.get(i, 0) for i in plan.eligible]), 6),
        "target_size": plan.target_size,
        "floor_size": plan.floor_size,
        "intents": len(before),
        "intents_balanced": len(plan.eligible),
        "intents_below_min_count": len(before) - len(plan.eligible),
        "conversations_before": n_before,
        "conversations_after": n_after,
        "conversations_without_intent": int(convs["intent"].null_count()),
        "conversations_removed": n_before - (n_after - added),
        "conversations_copied": added,
        "rows_before": turns.height,
        "rows_after": out.height,
        "per_intent": {i: {"before": before[i], "after": int(after.get(i, 0))} for i in sorted(before)},
    }
