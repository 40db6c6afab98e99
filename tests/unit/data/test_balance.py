"""chatforge.data.balance and stages/balance.py: seeded down/up-sampling to within max_imbalance."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from chatforge.data.balance import BalanceError, balance_turns, imbalance, plan_sizes
from chatforge.data.schema import TURNS_SCHEMA, conversation_intents
from chatforge.io import write_parquet


def conversation(cid: str, intent: str | None, *, turns: int = 2) -> list[dict]:
    return [
        {
            "conversation_id": cid, "turn": t, "role": "user" if t % 2 == 0 else "assistant",
            "content": f"{cid} says {t}", "lang": "zh" if t % 3 else "en", "intent": intent,
            "source": "unit", "origin_id": None, "method": "original",
        }
        for t in range(turns)
    ]


def corpus(sizes: dict[str | None, int]) -> pl.DataFrame:
    rows = []
    for intent, n in sizes.items():
        for k in range(n):
            rows += conversation(f"{intent or 'none'}-{k:04d}", intent, turns=2 + k % 3)
    return pl.DataFrame(rows, schema=TURNS_SCHEMA)


def sizes_of(turns: pl.DataFrame) -> dict[str, int]:
    convs = conversation_intents(turns).filter(pl.col("intent").is_not_null())
    return dict(convs.group_by("intent").len().iter_rows())


# -------------------------------------------------------------------------------------- the plan
@pytest.mark.parametrize(
    ("target", "expected", "ceiling", "floor"),
    [
        ("median", {"a": 5, "b": 5, "c": 4}, 5, 4),  # a down to the median, c up to 0.8 * 5
        ("mean", {"a": 6, "b": 5, "c": 5}, 6, 5),  # mean 17/3 rounds to 6, floor ceil(4.8) = 5
        ("max", {"a": 10, "b": 8, "c": 8}, 10, 8),  # only up-sampling; c may grow 4x to exactly 8
        ("min", {"a": 2, "b": 2, "c": 2}, 2, 2),  # only down-sampling
    ],
)
def test_plan_for_sizes_10_5_2(target, expected, ceiling, floor):
    plan = plan_sizes({"a": 10, "b": 5, "c": 2}, max_imbalance=0.2, min_count=1, target=target,
                      max_upsample_factor=4.0)
    assert plan.sizes == expected
    assert (plan.target_size, plan.floor_size, plan.goal_met, plan.reason) == (ceiling, floor, True, "")


def test_plan_leaves_intents_below_min_count_alone():
    plan = plan_sizes({"a": 30, "b": 10, "tiny": 2}, max_imbalance=0.2, min_count=5, target="median")
    # median of the eligible sizes (30, 10) is 20: a down to 20, b up to 16, tiny untouched
    assert plan.sizes == {"a": 20, "b": 16, "tiny": 2}
    assert plan.eligible == ("a", "b")


def test_plan_reports_when_the_upsample_cap_makes_the_goal_unreachable():
    plan = plan_sizes({"a": 10, "b": 5, "c": 2}, max_imbalance=0.2, min_count=1, max_upsample_factor=1.5)
    assert plan.sizes == {"a": 5, "b": 5, "c": 3}
    assert not plan.goal_met
    assert "'c' with 2 conversation(s) reaches 3 of 4" in plan.reason
    assert "needs max_upsample_factor >= 2" in plan.reason and "Raise balance.max_upsample_factor" in plan.reason


def test_plan_with_a_single_eligible_intent_has_nothing_to_do():
    plan = plan_sizes({"a": 10, "b": 1}, max_imbalance=0.2, min_count=2)
    assert plan.sizes == {"a": 10, "b": 1} and plan.goal_met
    assert "nothing to balance" in plan.reason


def test_the_floor_is_exact_for_decimal_imbalances():
    # 0.7 * 10 is 7.000000000000001 in floats; the floor must still be 7, not 8
    plan = plan_sizes({"a": 10, "b": 7}, max_imbalance=0.3, min_count=1, target="max")
    assert plan.floor_size == 7 and plan.sizes == {"a": 10, "b": 7}


# ----------------------------------------------------------------------------------- the frames
def test_balance_small_frame_exactly():
    turns = corpus({"a": 10, "b": 5, "c": 2, None: 3})
    result = balance_turns(turns, max_imbalance=0.2, min_count=1, target="median", seed=7)
    out = result.turns
    assert sizes_of(out) == {"a": 5, "b": 5, "c": 4}
    assert out.columns == list(TURNS_SCHEMA)
    assert out.equals(out.sort(["conversation_id", "turn"]))
    # b and the unlabelled conversations are untouched, row for row
    for keep in ("b", None):
        mask = pl.col("intent").is_null() if keep is None else pl.col("intent") == keep
        assert out.filter(mask & (pl.col("method") == "original")).equals(turns.filter(mask))
    # a keeps 5 of its own conversations intact
    kept_a = out.filter(pl.col("intent") == "a")
    assert kept_a["method"].unique().to_list() == ["original"]
    assert kept_a.join(turns, on=list(TURNS_SCHEMA), how="anti", nulls_equal=True).is_empty()
    # c: both originals, each copied once, as whole conversations with their origin
    copies = out.filter(pl.col("method") == "oversample")
    assert sorted(copies["conversation_id"].unique()) == ["c-0000#os1", "c-0001#os1"]
    for cid in ("c-0000", "c-0001"):
        original = turns.filter(pl.col("conversation_id") == cid)
        copy = copies.filter(pl.col("conversation_id") == f"{cid}#os1")
        assert copy["origin_id"].unique().to_list() == [cid]
        assert copy.select("turn", "role", "content", "lang", "intent").equals(
            original.select("turn", "role", "content", "lang", "intent"))
    m = result.metrics
    assert (m["goal_met"], m["imbalance_before"], m["imbalance_after"]) == (True, 0.8, 0.2)
    assert m["per_intent"] == {"a": {"before": 10, "after": 5}, "b": {"before": 5, "after": 5},
                               "c": {"before": 2, "after": 4}}
    assert (m["conversations_before"], m["conversations_after"]) == (20, 17)
    assert (m["conversations_removed"], m["conversations_copied"], m["conversations_without_intent"]) == (5, 2, 3)
    assert (m["rows_before"], m["rows_after"]) == (turns.height, out.height)
    assert result.distribution.rows() == [
        ("a", "before", 10), ("a", "after", 5), ("b", "before", 5), ("b", "after", 5),
        ("c", "before", 2), ("c", "after", 4),
    ]


def test_upsampling_copies_round_after_round():
    result = balance_turns(corpus({"a": 20, "b": 3}), max_imbalance=0.1, min_count=1, target="max",
                           max_upsample_factor=10, seed=1)
    copies = sorted(result.turns.filter(pl.col("method") == "oversample")["conversation_id"].unique())
    # floor = 18: b needs 15 copies of its 3 conversations, i.e. 5 full rounds
    assert copies == [f"b-{k:04d}#os{r}" for k in range(3) for r in range(1, 6)]
    assert sizes_of(result.turns) == {"a": 20, "b": 18}


@pytest.mark.parametrize("max_imbalance", [0.05, 0.2, 0.35])
@pytest.mark.parametrize("target", ["median", "mean", "max", "min"])
def test_imbalance_invariant_on_a_random_bigger_frame(max_imbalance, target):
    rng = np.random.default_rng(2024)
    sizes = {f"intent{i:02d}": int(n) for i, n in enumerate(rng.integers(5, 400, size=15))}
    sizes.update({"small": 2, None: 11})
    turns = corpus(sizes)
    result = balance_turns(turns, max_imbalance=max_imbalance, min_count=5, target=target,
                           max_upsample_factor=100.0, seed=5)
    after = sizes_of(result.turns)
    eligible = [after[i] for i in sizes if i not in (None, "small")]
    assert (max(eligible) - min(eligible)) / max(eligible) <= max_imbalance
    assert result.metrics["goal_met"] is True
    assert result.metrics["imbalance_after"] == pytest.approx(imbalance(eligible), abs=1e-6)
    assert after["small"] == 2
    assert result.metrics["conversations_without_intent"] == 11
    # nothing invented: every row is an input row, or a copy of one under a new id
    originals = result.turns.filter(pl.col("method") == "original")
    assert originals.join(turns, on=list(TURNS_SCHEMA), how="anti", nulls_equal=True).is_empty()
    copies = result.turns.filter(pl.col("method") == "oversample")
    assert (copies["conversation_id"].str.split("#").list.first() == copies["origin_id"]).all()
    assert result.turns.group_by("conversation_id", "turn").len()["len"].max() == 1


def test_same_seed_same_bytes_other_seed_other_sample(tmp_path: Path):
    turns = corpus({"a": 50, "b": 12, "c": 30})
    shuffled = turns.sample(fraction=1.0, shuffle=True, seed=9)
    one = balance_turns(turns, max_imbalance=0.2, min_count=1, seed=3)
    two = balance_turns(shuffled, max_imbalance=0.2, min_count=1, seed=3)
    write_parquet(one.turns, tmp_path / "one.parquet")
    write_parquet(two.turns, tmp_path / "two.parquet")
    assert (tmp_path / "one.parquet").read_bytes() == (tmp_path / "two.parquet").read_bytes()
    assert one.metrics == two.metrics
    other = balance_turns(turns, max_imbalance=0.2, min_count=1, seed=4)
    assert set(other.turns["conversation_id"]) != set(one.turns["conversation_id"])
    assert sizes_of(other.turns) == sizes_of(one.turns)


def test_all_intents_null_passes_through_with_a_clear_message():
    turns = corpus({None: 6})
    result = balance_turns(turns, max_imbalance=0.2, min_count=1)
    assert result.turns.equals(turns.sort(["conversation_id", "turn"]))
    assert result.metrics["reason"].startswith("no conversation has an intent")
    assert result.metrics["conversations_without_intent"] == 6
    assert result.distribution.is_empty()


def test_empty_train_split_is_a_clear_error():
    with pytest.raises(BalanceError, match="train split is empty.*reports/split.json"):
        balance_turns(pl.DataFrame(schema=TURNS_SCHEMA), max_imbalance=0.2, min_count=1)


def test_missing_intent_column_is_a_clear_error():
    with pytest.raises(BalanceError, match=r"missing column\(s\) \['intent'\]"):
        balance_turns(corpus({"a": 3}).drop("intent"), max_imbalance=0.2, min_count=1)


def test_balancing_its_own_output_again_is_refused_when_ids_would_clash():
    once = balance_turns(corpus({"a": 10, "b": 2}), max_imbalance=0.2, min_count=1, target="max").turns
    with pytest.raises(BalanceError, match="already contains up-sampled ids"):
        balance_turns(pl.concat([once, corpus({"a2": 40})]), max_imbalance=0.2, min_count=1, target="max")


# ------------------------------------------------------------------------------------ the stage
def run_stage(cwd: Path) -> subprocess.CompletedProcess[str]:
    script = Path(__file__).resolve().parents[3] / "stages" / "balance.py"
    args = ["train.parquet", "data/balanced.parquet", "reports/balance.json", "reports/plots/balance.csv"]
    return subprocess.run([sys.executable, str(script), *args], cwd=cwd, check=False, capture_output=True, text=True, timeout=120)


def test_stage_writes_turns_metrics_and_plot_data(tmp_path: Path):
    write_parquet(corpus({"a": 10, "b": 5, "c": 1}), tmp_path / "train.parquet")
    (tmp_path / "params.yaml").write_text(
        "balance:\n  max_imbalance: 0.2\n  min_count: 1\n  max_upsample_factor: '2'\n  seed: 3\n  target: median\n")
    done = run_stage(tmp_path)
    assert done.returncode == 0, done.stderr
    assert "imbalance goal not met" in done.stderr and "'c' with 1 conversation(s) reaches 2 of 4" in done.stderr
    metrics = json.loads((tmp_path / "reports/balance.json").read_text())
    assert metrics["goal_met"] is False and metrics["per_intent"]["c"] == {"before": 1, "after": 2}
    plot = pl.read_csv(tmp_path / "reports/plots/balance.csv")
    assert plot.columns == ["intent", "stage", "conversations"]
    assert plot.filter(pl.col("stage") == "after").rows() == [("a", "after", 5), ("b", "after", 5), ("c", "after", 2)]
    assert sizes_of(pl.read_parquet(tmp_path / "data/balanced.parquet")) == {"a": 5, "b": 5, "c": 2}


def test_stage_rejects_bad_params_and_bad_input_without_traceback(tmp_path: Path):
    (tmp_path / "params.yaml").write_text("balance:\n  max_imbalance: 1.5\n")
    done = run_stage(tmp_path)
    assert done.returncode == 2 and "balance.max_imbalance = 1.5" in done.stderr
    assert "Traceback" not in done.stderr
    (tmp_path / "params.yaml").write_text("balance:\n  max_imbalance: 0.2\n")
    write_parquet(corpus({"a": 3}).drop("intent"), tmp_path / "train.parquet")
    done = run_stage(tmp_path)
    assert done.returncode == 2 and "missing column(s) ['intent']" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "data/balanced.parquet").exists()
