"""chatforge.data.split and stages/split.py: stable hash split, stratification, originals-only val/test."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from chatforge.data.schema import TURNS_SCHEMA
from chatforge.data.split import SplitError, split_turns, stable_unit
from chatforge.io import write_parquet

SALT = "test-salt"


def conversation(cid: str, intent: str | None, *, method: str = "original", origin: str | None = None) -> list[dict]:
    base = {"lang": "en", "intent": intent, "source": "unit", "origin_id": origin, "method": method}
    return [
        {"conversation_id": cid, "turn": 0, "role": "user", "content": f"question {cid}", **base},
        {"conversation_id": cid, "turn": 1, "role": "assistant", "content": f"answer {cid}", **base},
    ]


def turns_of(rows: list[dict]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=TURNS_SCHEMA)


def corpus(sizes: dict[str, int], prefix: str = "c") -> pl.DataFrame:
    rows = []
    for intent, n in sizes.items():
        for k in range(n):
            rows += conversation(f"{prefix}-{intent}-{k:05d}", intent)
    return turns_of(rows)


def split_of(result, cid: str) -> str:
    found = [name for name, frame in result.splits.items() if cid in frame["conversation_id"]]
    assert len(found) == 1, (cid, found)
    return found[0]


def test_stable_unit_is_uniform_and_salted():
    values = [stable_unit(f"id{i}", salt=SALT) for i in range(20_000)]
    assert all(0.0 <= v < 1.0 for v in values)
    assert abs(sum(values) / len(values) - 0.5) < 0.01
    assert sum(v < 0.1 for v in values) / len(values) == pytest.approx(0.1, abs=0.01)
    assert values[:50] == [stable_unit(f"id{i}", salt=SALT) for i in range(50)]
    assert values[:50] != [stable_unit(f"id{i}", salt="other") for i in range(50)]


def test_each_conversation_goes_where_its_hash_says():
    turns = corpus({"weather": 40, "refund": 30})
    result = split_turns(turns, val_fraction=0.2, test_fraction=0.3, salt=SALT)
    for cid in turns["conversation_id"].unique().to_list():
        u = stable_unit(cid, salt=SALT)
        expected = "test" if u < 0.3 else "val" if u < 0.5 else "train"
        assert split_of(result, cid) == expected
    # whole conversations: every row of the input lands exactly once, conversations never split
    assert sum(f.height for f in result.splits.values()) == turns.height
    for frame in result.splits.values():
        assert frame.columns == list(TURNS_SCHEMA)
        assert frame.group_by("conversation_id").len()["len"].to_list() == [2] * frame["conversation_id"].n_unique()
        assert frame.equals(frame.sort(["conversation_id", "turn"]))


def test_zero_fractions_put_everything_in_train():
    turns = corpus({"a": 7})
    result = split_turns(turns, val_fraction=0.0, test_fraction=0.0, salt=SALT)
    assert result.splits["train"].height == 14
    assert result.splits["val"].is_empty() and result.splits["test"].is_empty()
    assert result.metrics["conversations"] == {"train": 7, "val": 0, "test": 0}
    assert result.metrics["intents_without_val"] == 1


def test_adding_conversations_never_moves_an_existing_one():
    old = corpus({"weather": 150, "refund": 60, "greeting": 20})
    grown = pl.concat([old, corpus({"weather": 300, "refund": 10, "shipping": 90}, prefix="new")])
    before = split_turns(old, val_fraction=0.1, test_fraction=0.1, salt=SALT)
    after = split_turns(grown, val_fraction=0.1, test_fraction=0.1, salt=SALT)
    for name in ("train", "val", "test"):
        old_ids = set(before.splits[name]["conversation_id"])
        new_ids = set(after.splits[name]["conversation_id"])
        assert old_ids <= new_ids, f"{len(old_ids - new_ids)} conversation(s) left {name}"
        moved_in = {c for c in new_ids - old_ids if not c.startswith("new-")}
        assert not moved_in


def test_feedback_goes_to_train_so_val_and_test_stay_the_same_after_a_round():
    old = corpus({"weather": 60, "refund": 40})
    rows = []
    for k in range(50):
        rows += [dict(r, source="feedback") for r in conversation(f"fb-{k:03d}", "refund")]
    feedback = turns_of(rows)
    hashed_out = [f"fb-{k:03d}" for k in range(50) if stable_unit(f"fb-{k:03d}", salt=SALT) < 0.3]
    assert len(hashed_out) >= 5  # without the rule these would land in val / test
    before = split_turns(old, val_fraction=0.1, test_fraction=0.2, salt=SALT, train_only_sources=("feedback",))
    after = split_turns(pl.concat([old, feedback]), val_fraction=0.1, test_fraction=0.2, salt=SALT,
                        train_only_sources=("feedback",))
    for name in ("val", "test"):
        assert after.splits[name].equals(before.splits[name])
    assert set(after.splits["train"]["conversation_id"]) == set(before.splits["train"]["conversation_id"]) | {
        f"fb-{k:03d}" for k in range(50)}
    assert (after.metrics["train_only_conversations"], before.metrics["train_only_conversations"]) == (50, 0)
    # without the rule, feedback is split by its hash like any other source
    plain = split_turns(pl.concat([old, feedback]), val_fraction=0.1, test_fraction=0.2, salt=SALT)
    assert {c for c in hashed_out if split_of(plain, c) != "train"} == set(hashed_out)


def test_val_and_test_hold_original_rows_only_and_variants_follow_their_origin():
    originals = corpus({"weather": 60})
    ids = originals["conversation_id"].unique().sort().to_list()
    variants = []
    for cid in ids:
        variants += conversation(f"{cid}#bt", "weather", method="back_translation", origin=cid)
    variants += conversation("orphan#es", "weather", method="entity_swap")  # no origin_id: train
    turns = pl.concat([originals, turns_of(variants)])
    result = split_turns(turns, val_fraction=0.25, test_fraction=0.25, salt=SALT)
    for name in ("val", "test"):
        assert result.splits[name]["method"].unique().to_list() == ["original"]
    train = result.splits["train"]
    heldout = set(result.splits["val"]["conversation_id"]) | set(result.splits["test"]["conversation_id"])
    train_variants = set(train.filter(pl.col("method") != "original")["conversation_id"])
    assert train_variants == {f"{c}#bt" for c in ids if c not in heldout} | {"orphan#es"}
    assert result.metrics["dropped_variants_of_heldout"] == len(heldout)
    assert result.metrics["non_original_conversations_in_train"] == len(train_variants)
    assert heldout, "the test needs some held-out origins to mean anything"


def test_per_intent_proportions_follow_the_targets_and_metrics_report_them():
    sizes = {"weather": 3000, "refund": 2000, "greeting": 1000, "rare": 12}
    turns = pl.concat([corpus(sizes), turns_of(conversation("nolabel", None))])
    result = split_turns(turns, val_fraction=0.1, test_fraction=0.15, salt=SALT)
    m = result.metrics
    for intent, n in sizes.items():
        counts = {s: result.splits[s].filter(pl.col("intent") == intent)["conversation_id"].n_unique()
                  for s in ("train", "val", "test")}
        assert m["per_intent"][intent] == counts
        assert sum(counts.values()) == n
        if n >= 1000:
            assert counts["val"] / n == pytest.approx(0.1, abs=0.03)
            assert counts["test"] / n == pytest.approx(0.15, abs=0.03)
    assert m["conversations_without_intent"] == 1
    assert m["intents"] == 4
    # the largest deviation is the small intent's, and it equals what the counts say
    rare = m["per_intent"]["rare"]
    targets = {"train": 0.75, "val": 0.1, "test": 0.15}
    worst = max(abs(rare[s] / 12 - targets[s]) for s in targets)
    assert m["max_intent_deviation"] == pytest.approx(worst, abs=1e-6)
    assert m["max_intent_deviation_at"].startswith("rare/")


def test_same_input_gives_byte_identical_parquet(tmp_path: Path):
    turns = corpus({"a": 50, "b": 20})
    shuffled = turns.sample(fraction=1.0, shuffle=True, seed=3)
    first = split_turns(turns, val_fraction=0.1, test_fraction=0.1, salt=SALT)
    second = split_turns(shuffled, val_fraction=0.1, test_fraction=0.1, salt=SALT)
    for name in ("train", "val", "test"):
        write_parquet(first.splits[name], tmp_path / f"1-{name}.parquet")
        write_parquet(second.splits[name], tmp_path / f"2-{name}.parquet")
        assert (tmp_path / f"1-{name}.parquet").read_bytes() == (tmp_path / f"2-{name}.parquet").read_bytes()
    assert first.metrics == second.metrics


def test_a_new_salt_reshuffles():
    turns = corpus({"a": 200})
    one = split_turns(turns, val_fraction=0.2, test_fraction=0.2, salt="one")
    two = split_turns(turns, val_fraction=0.2, test_fraction=0.2, salt="two")
    assert set(one.splits["val"]["conversation_id"]) != set(two.splits["val"]["conversation_id"])


def test_missing_intent_column_is_a_clear_error():
    with pytest.raises(SplitError, match=r"missing column\(s\) \['intent'\]"):
        split_turns(corpus({"a": 3}).drop("intent"), val_fraction=0.1, test_fraction=0.1, salt=SALT)


def test_empty_input_is_a_clear_error():
    with pytest.raises(SplitError, match="no rows"):
        split_turns(turns_of([]), val_fraction=0.1, test_fraction=0.1, salt=SALT)


def test_rows_without_conversation_id_are_a_clear_error():
    turns = corpus({"a": 3}).with_columns(
        pl.when(pl.col("turn") == 1).then(None).otherwise(pl.col("conversation_id")).alias("conversation_id")
    )
    with pytest.raises(SplitError, match="3 row\\(s\\) have no conversation_id"):
        split_turns(turns, val_fraction=0.1, test_fraction=0.1, salt=SALT)


def test_an_empty_train_split_is_a_clear_error():
    # a conversation whose hash falls into val/test with val + test = 0.9
    cid = next(f"c{i}" for i in range(1000) if stable_unit(f"c{i}", salt=SALT) < 0.9)
    with pytest.raises(SplitError, match="train split is empty.*lower split.val_fraction"):
        split_turns(turns_of(conversation(cid, "a")), val_fraction=0.45, test_fraction=0.45, salt=SALT)


def test_fractions_that_leave_no_train_are_rejected():
    with pytest.raises(SplitError, match="sum below 1"):
        split_turns(corpus({"a": 3}), val_fraction=0.5, test_fraction=0.5, salt=SALT)


# ------------------------------------------------------------------------------------ the stage
def run_stage(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    script = Path(__file__).resolve().parents[3] / "stages" / "split.py"
    return subprocess.run([sys.executable, str(script), *args], cwd=cwd, check=False, capture_output=True, text=True, timeout=120)


def test_stage_writes_the_split_folder_and_metrics(tmp_path: Path):
    write_parquet(corpus({"a": 40, "b": 30}), tmp_path / "clean.parquet")
    (tmp_path / "params.yaml").write_text("split:\n  val_fraction: '0.2'\n  test_fraction: 0.1\n")
    done = run_stage(tmp_path, "clean.parquet", "data/split", "reports/split.json")
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (tmp_path / "data/split").iterdir()) == ["test.parquet", "train.parquet", "val.parquet"]
    expected = split_turns(corpus({"a": 40, "b": 30}), val_fraction=0.2, test_fraction=0.1, salt="chatforge-split-v1")
    for name, frame in expected.splits.items():
        assert pl.read_parquet(tmp_path / "data/split" / f"{name}.parquet").equals(frame)
    assert '"max_intent_deviation"' in (tmp_path / "reports/split.json").read_text()


def test_stage_rejects_bad_params_before_reading_anything(tmp_path: Path):
    (tmp_path / "params.yaml").write_text("split:\n  val_fraction: lots\n  test_fracton: 0.1\n")
    done = run_stage(tmp_path, "missing.parquet", "out", "m.json")
    assert done.returncode == 2
    assert "split.val_fraction = 'lots'" in done.stderr and "split.test_fracton: unknown key" in done.stderr
    assert "Traceback" not in done.stderr
