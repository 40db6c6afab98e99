"""Train/val/test split by a stable hash of the conversation id.

Each conversation gets a number u in [0, 1) from blake2b(salt, conversation id); u < test_fraction
goes to test, u < test_fraction + val_fraction to val, the rest to train. The number depends on
that conversation alone, so adding (or removing) other conversations never moves an existing one
to another split, and evaluation numbers stay comparable as the data grows.

What "stratified by intent" means under a hash split: the hash is independent of the intent, so
inside every intent each conversation lands in val/test with exactly the target probabilities and
each intent's expected proportions equal the targets. It does not force exact per-intent quotas
(what a rank-based stratified split does): a quota rule ranks conversations inside an intent, and
one new conversation shifts the rank boundary and moves others. The realised proportions are
reported per intent, with the largest deviation from the targets, in the metrics.

Why there is no "every intent with >= K conversations has a val/test conversation" guarantee: if
adding conversations may never move one, a conversation's split is the same in every data set that
contains it (compare data sets A and B through their union A | B), so the split is a function of
the conversation alone. A rule of that kind cannot promise a held-out member among every K
conversations of an intent unless nearly all of them are held out. So instead of a guarantee the
metrics count the intents that ended up with no val or no test conversation, and the stage logs
their names; change `split.salt` deliberately (it reshuffles everything) or add data if it matters.

Only original rows (method == "original"; a null method counts as original) go to val and test.
A conversation with any other method (an augmented or copied variant) goes to train, unless its
origin_id hashes into val or test: then it is dropped and counted, because training on a variant of
a held-out conversation would leak it.

Sources named in `train_only_sources` (default: `feedback`, what `chatforge feedback export` writes)
go to train whatever their hash: users' rated answers are new training data, and keeping them out of
val and test keeps those splits unchanged from one feedback round to the next, so evaluate compares
the new model with the one being served on the same turns (the forgetting gates).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import polars as pl

from chatforge.data.schema import TURNS_SCHEMA, conform, conversation_intents, sort_turns

SPLITS = ("train", "val", "test")
NO_INTENT = "(none)"  # how conversations without an intent appear in the per-intent metrics
_REQUIRED = ("conversation_id", "turn", "role", "content", "intent", "method")


class SplitError(ValueError):
    """Input the split cannot work with; the message says what was wrong and how to fix it."""


@dataclass(frozen=True)
class SplitResult:
    splits: dict[str, pl.DataFrame]  # train / val / test turns, canonical schema, sorted
    metrics: dict[str, Any]


def stable_unit(key: str, *, salt: str) -> float:
    """A uniform number in [0, 1) that depends only on salt and key (same on every machine)."""
    digest = hashlib.blake2b(f"{salt}\x1f{key}".encode(), digest_size=8).digest()
    # the top 53 bits fit a float exactly, so the result is never rounded up to 1.0
    return (int.from_bytes(digest, "big") >> 11) / float(1 << 53)


def check_turns(turns: pl.DataFrame, *, what: str) -> None:
    """Raise a clear error for a table that is not a usable turns table."""
    missing = [c for c in _REQUIRED if c not in turns.columns]
    if missing:
        raise SplitError(
            f"{what}: missing column(s) {missing} (has {turns.columns}). Expected the canonical "
            f"turns table ({', '.join(TURNS_SCHEMA)}) written by the clean stage."
        )
    if turns.is_empty():
        raise SplitError(f"{what}: no rows. Check reports/ingest.json and reports/clean.json for what was dropped.")
    null_ids = turns["conversation_id"].null_count()
    if null_ids:
        raise SplitError(f"{what}: {null_ids} row(s) have no conversation_id; every row must belong to a conversation.")


def split_turns(
    turns: pl.DataFrame, *, val_fraction: float, test_fraction: float, salt: str,
    train_only_sources: tuple[str, ...] = (),
) -> SplitResult:
    """Assign every conversation (all of its rows) to train, val or test; see the module docstring.
    A conversation whose `source` is in `train_only_sources` always goes to train (counted in the
    metrics as `train_only_conversations`)."""
    if val_fraction < 0 or test_fraction < 0 or val_fraction + test_fraction >= 1:
        raise SplitError(
            f"val_fraction={val_fraction} and test_fraction={test_fraction} must be >= 0 with a sum below 1."
        )
    check_turns(turns, what="split input")
    convs = (
        turns.group_by("conversation_id")
        .agg(
            (pl.col("method").fill_null("original") == "original").all().alias("original"),
            pl.col("origin_id").drop_nulls().sort().first().alias("origin_id"),
            pl.col("source").is_in(list(train_only_sources)).any().alias("train_only"),
        )
        .join(conversation_intents(turns), on="conversation_id")
        .sort("conversation_id")
    )
    # variants follow their origin, so a held-out origin's variant is recognised and kept out of train
    keys = convs.select(
        pl.when(pl.col("original")).then(pl.col("conversation_id")).otherwise(
            pl.coalesce("origin_id", "conversation_id")
        )
    ).to_series()
    u = pl.Series("u", [stable_unit(k, salt=salt) for k in keys.to_list()], dtype=pl.Float64)
    hashed = (
        pl.when(pl.col("u") < test_fraction)
        .then(pl.lit("test"))
        .when(pl.col("u") < test_fraction + val_fraction)
        .then(pl.lit("val"))
        .otherwise(pl.lit("train"))
    )
    convs = convs.with_columns(u).with_columns(hashed.alias("hashed")).with_columns(
        pl.when(pl.col("train_only"))
        .then(pl.lit("train"))
        .when(pl.col("original"))
        .then(pl.col("hashed"))
        .when(pl.col("origin_id").is_not_null() & (pl.col("hashed") != "train"))
        .then(pl.lit("drop"))
        .otherwise(pl.lit("train"))
        .alias("split")
    )
    assigned = turns.join(convs.select("conversation_id", "split"), on="conversation_id")
    splits = {
        name: sort_turns(conform(assigned.filter(pl.col("split") == name))) for name in SPLITS
    }
    if splits["train"].is_empty():
        raise SplitError(
            f"the train split is empty ({convs.height} conversation(s) all hashed into val/test). "
            "Add data or lower split.val_fraction / split.test_fraction."
        )
    metrics = _metrics(convs, splits, val_fraction, test_fraction)
    metrics["train_only_conversations"] = int(convs["train_only"].sum())
    return SplitResult(splits=splits, metrics=metrics)


def _metrics(
    convs: pl.DataFrame, splits: dict[str, pl.DataFrame], val_fraction: float, test_fraction: float
) -> dict[str, Any]:
    train_fraction = round(1.0 - val_fraction - test_fraction, 12)  # 0.8, not 0.8000000000000002
    targets = {"train": train_fraction, "val": val_fraction, "test": test_fraction}
    kept = convs.filter(pl.col("split") != "drop").with_columns(pl.col("intent").fill_null(NO_INTENT))
    per_intent: dict[str, dict[str, int]] = {}
    for (intent,), group in kept.sort("intent").group_by("intent", maintain_order=True):
        counts = group["split"].value_counts()
        found = dict(zip(counts["split"].to_list(), counts["count"].to_list(), strict=True))
        per_intent[str(intent)] = {s: int(found.get(s, 0)) for s in SPLITS}
    # deviation over original conversations only: those are the ones the hash places (train-only sources are not)
    worst = (0.0, "", "")
    originals = kept.filter(pl.col("original") & ~pl.col("train_only") & (pl.col("intent") != NO_INTENT))
    for (intent,), group in originals.sort("intent").group_by("intent", maintain_order=True):
        for s in SPLITS:
            dev = abs((group["split"] == s).sum() / group.height - targets[s])
            if dev > worst[0] + 1e-12:
                worst = (dev, str(intent), s)
    labelled = [i for i in per_intent if i != NO_INTENT]
    n_conv = {s: splits[s]["conversation_id"].n_unique() for s in SPLITS}
    total = sum(n_conv.values())
    return {
        "conversations": n_conv,
        "rows": {s: splits[s].height for s in SPLITS},
        "fraction": {s: round(n_conv[s] / total, 6) for s in SPLITS},
        "target_fraction": targets,
        "non_original_conversations_in_train": int((~kept["original"]).sum()),
        "dropped_variants_of_heldout": int((convs["split"] == "drop").sum()),
        "conversations_without_intent": int((kept["intent"] == NO_INTENT).sum()),
        "intents": len(labelled),
        "intents_without_val": sum(per_intent[i]["val"] == 0 for i in labelled),
        "intents_without_test": sum(per_intent[i]["test"] == 0 for i in labelled),
        "max_intent_deviation": round(worst[0], 6),
        "max_intent_deviation_at": f"{worst[1]}/{worst[2]}" if worst[1] else "",
        "per_intent": per_intent,
    }


def intents_missing(metrics: dict[str, Any], split: str) -> list[str]:
    """Labelled intents with no conversation in `split` (for a warning naming them)."""
    return [i for i, c in metrics["per_intent"].items() if i != NO_INTENT and c[split] == 0]
