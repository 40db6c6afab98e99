"""A/B assignment (split, stickiness) and the report's statistics and verdict."""

from __future__ import annotations

import json
import math
from collections import Counter

import pytest
from typer.testing import CliRunner

from chatforge.cli import app
from chatforge.serving.ab import (
    VariantStats,
    assign_variant,
    compare_variants,
    decide,
    non_inferiority_test,
    two_proportion_z_test,
    wilson_interval,
)
from chatforge.serving.store import open_store, record_conversation, record_feedback

USERS = [f"user-{i}" for i in range(1000)]


def test_half_half_split_is_within_five_points_and_sticky():
    variants = [("a", 0.5), ("b", 0.5)]
    first = {u: assign_variant(u, variants, salt="s") for u in USERS}
    counts = Counter(first.values())
    assert set(counts) == {"a", "b"}
    assert all(450 <= n <= 550 for n in counts.values()), counts
    for _ in range(3):
        assert all(assign_variant(u, variants, salt="s") == v for u, v in first.items())


def test_weights_are_respected_and_salt_reshuffles():
    counts = Counter(assign_variant(u, [("old", 0.8), ("new", 0.2)], salt="s") for u in USERS)
    assert 750 <= counts["old"] <= 850 and counts["old"] + counts["new"] == 1000
    moved = sum(
        assign_variant(u, [("a", 1), ("b", 1)], salt="s") != assign_variant(u, [("a", 1), ("b", 1)], salt="t")
        for u in USERS
    )
    assert 400 <= moved <= 600  # a new salt is an independent split
    with pytest.raises(ValueError, match="positive sum"):
        assign_variant("u", [("a", 0.0)], salt="s")


def test_wilson_interval_and_z_test_known_values():
    low, high = wilson_interval(50, 100)
    assert (round(low, 4), round(high, 4)) == (0.4038, 0.5962)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and round(high, 4) == 0.2775
    z, p = two_proportion_z_test(60, 100, 40, 100)
    assert round(z, 4) == 2.8284 and round(p, 4) == 0.0047
    assert two_proportion_z_test(0, 0, 1, 2) == (0.0, 1.0)


def test_compare_variants_verdicts():
    big = compare_variants([VariantStats("a", 300, 200, 80), VariantStats("b", 300, 200, 120)])
    assert big[0].significant and big[0].z > 0
    small = compare_variants([VariantStats("a", 100, 100, 48), VariantStats("b", 100, 100, 52)])
    assert not small[0].significant


def _seed(db_url: str, ratings: dict[str, tuple[int, int]]) -> None:
    sessions = open_store(db_url)
    n = 0
    for variant, (positive, negative) in ratings.items():
        for rating in [1] * positive + [-1] * negative + [None] * 5:  # 5 unrated requests each
            n += 1
            cid = f"chatcmpl-{n:05d}"
            record_conversation(
                sessions,
                messages=[{"role": "user", "content": "hi"}],
                answer="hello",
                id=cid,
                variant=variant,
                model_fingerprint="f",
                lang="en",
                latency_ms=1.0,
                confidence=0.9,
                finish_reason="stop",
            )
            if rating is not None:
                record_feedback(sessions, conversation_id=cid, rating=rating)


@pytest.mark.parametrize(
    ("ratings", "verdict"),
    [
        (
            {"base": (80, 120), "new": (120, 80)},
            "new vs base: z = +4.00, p = 0.0001 -> SIGNIFICANT at alpha = 0.05",
        ),
        (
            {"base": (48, 52), "new": (52, 48)},
            "new vs base: z = +0.57, p = 0.5716 -> not significant at alpha = 0.05",
        ),
    ],
)
def test_ab_report_command_on_seeded_feedback(tmp_path, repo_root, ratings, verdict):
    db = f"sqlite:///{tmp_path / 'ab.db'}"
    _seed(db, ratings)
    params = tmp_path / "params.yaml"
    params.write_text(
        "serve:\n  variants:\n    - {name: base, model: models/a}\n    - {name: new, model: models/b}\n",
        encoding="utf-8",
    )
    result = CliRunner().invoke(app, ["ab", "report", "--params", str(params), "--database-url", db])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    pos_base, neg_base = ratings["base"]
    assert lines[1].split()[:4] == [
        "base",
        str(pos_base + neg_base + 5),
        str(pos_base + neg_base),
        str(pos_base),
    ]
    assert verdict in lines
    # 200 and 100 ratings per variant: enough to decide. 0.60 vs 0.40 is not worse -> replace;
    # 0.52 vs 0.48 at n = 100: z = (0.04 + 0.02) / sqrt(2 x 0.2496 / 100) = 0.849, p = 0.198 -> keep
    assert lines[-1].startswith("decision: replace (" if ratings["new"][0] == 120 else "decision: keep (")


def test_ab_report_rejects_bad_params(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("serve:\n  variants: []\n", encoding="utf-8")
    result = CliRunner().invoke(app, ["ab", "report", "--params", str(params)])
    assert result.exit_code == 2
    assert "serve.variants" in result.output and "Traceback" not in result.output


# ---- the decision (issue 23): one-sided non-inferiority z-test, unpooled variance, margin 0.02, alpha 0.05.
# Hand values: z = (p_new - p_base + 0.02) / sqrt(p_new (1 - p_new) / n_new + p_base (1 - p_base) / n_base),
# p = erfc(z / sqrt(2)) / 2 (standard normal upper tail: 1 - Phi(2.4) = 0.0081975, 1 - Phi(0.5) = 0.3085375,
# 1 - Phi(-1.6) = 0.9452007); lower bound = difference - 1.6448536 x se.


def test_non_inferiority_test_hand_values():
    # 90/100 vs 80/100: se = sqrt(0.09/100 + 0.16/100) = 0.05, z = (0.10 + 0.02) / 0.05 = 2.4
    z, p = non_inferiority_test(90, 100, 80, 100, margin=0.02)
    assert z == pytest.approx(2.4) and p == pytest.approx(0.008197535924596138)
    # 160/200 both: se = sqrt(2 x 0.16 / 200) = 0.04, z = 0.02 / 0.04 = 0.5
    z, p = non_inferiority_test(160, 200, 160, 200, margin=0.02)
    assert z == pytest.approx(0.5) and p == pytest.approx(0.3085375387259869)
    # 80/100 vs 90/100: z = (-0.10 + 0.02) / 0.05 = -1.6
    z, p = non_inferiority_test(80, 100, 90, 100, margin=0.02)
    assert z == pytest.approx(-1.6) and p == pytest.approx(0.945200708300442)
    # no variance (every answer liked on both sides): the observed difference 0 > -margin decides
    assert non_inferiority_test(100, 100, 100, 100, margin=0.02) == (math.inf, 0.0)
    assert non_inferiority_test(100, 100, 100, 100, margin=0.0) == (0.0, 0.5)
    with pytest.raises(ValueError, match="rated answers for both variants"):
        non_inferiority_test(0, 0, 5, 10, margin=0.02)
    with pytest.raises(ValueError, match=r"margin must be in \[0, 1\)"):
        non_inferiority_test(5, 10, 5, 10, margin=1.5)


def test_decide_replace_keep_wait_on_exact_counts():
    better = decide([VariantStats("int8", 120, 100, 80), VariantStats("v2", 130, 100, 90)])
    assert (better.action, better.baseline, better.new) == ("replace", "int8", "v2")
    assert better.p_value == pytest.approx(0.008197535924596138) and better.z == pytest.approx(2.4)
    assert better.difference == pytest.approx(0.1) and better.lower_bound == pytest.approx(0.017757318652426426)
    assert better.reason == ("v2 is not worse than int8 by the margin 0.02 or more: non-inferiority p = 0.0082 < "
                             "alpha 0.05; v2 90.0% vs int8 80.0% thumbs-up (difference +0.100, one-sided 95% lower "
                             "bound +0.018)")
    same = decide([VariantStats("int8", 200, 200, 160), VariantStats("v2", 200, 200, 160)])
    assert same.action == "keep" and same.p_value == pytest.approx(0.3085375387259869)
    assert same.lower_bound == pytest.approx(-0.06579414507805886)
    assert same.reason.startswith("not shown that v2 is within 0.02 of int8: non-inferiority p = 0.3085 >= alpha 0.05")
    assert same.reason.endswith("Keep int8, or collect more ratings")
    worse = decide([VariantStats("int8", 100, 100, 90), VariantStats("v2", 100, 100, 80)])
    assert worse.action == "keep" and worse.p_value == pytest.approx(0.945200708300442)
    # a wider margin (0.15): 0.80 vs 0.90 -> z = (-0.10 + 0.15) / 0.05 = 1.0, p = 1 - Phi(1) = 0.1587 -> still keep
    assert decide([VariantStats("a", 100, 100, 90), VariantStats("b", 100, 100, 80)], margin=0.15).p_value == \
        pytest.approx(0.15865525393145707)
    # below --min-rated: wait, with what each variant still needs; the test so far is still reported
    early = decide([VariantStats("int8", 70, 63, 50), VariantStats("v2", 90, 80, 70)])
    assert early.action == "wait"
    assert early.reason == "more ratings needed per variant (each needs 100): int8 37 more (63 rated), v2 20 more (80 rated)"
    assert early.p_value is not None
    none_yet = decide([VariantStats("int8", 5, 0, 0), VariantStats("v2", 5, 0, 0)], min_rated=10)
    assert none_yet.action == "wait" and none_yet.p_value is None
    assert none_yet.reason.endswith("int8 10 more (0 rated), v2 10 more (0 rated)")


def test_decide_picks_the_named_variant_and_refuses_bad_names():
    stats = [VariantStats("int8", 100, 100, 80), VariantStats("v2", 100, 100, 90), VariantStats("v3", 100, 100, 70)]
    assert decide(stats).new == "v3" and decide(stats).action == "keep"  # default: the last variant
    assert decide(stats, new="v2").action == "replace"
    with pytest.raises(ValueError, match=r"--new 'int8' is the baseline \(the first variant\); choose one of: v2, v3"):
        decide(stats, new="int8")
    with pytest.raises(ValueError, match=r"--new 'xxxxxxxx.*' is not a variant"):
        decide(stats, new="x" * 5000)
    assert len(str(pytest.raises(ValueError, decide, stats, new="x" * 5000).value)) < 300  # never echoes unbounded input
    alone = decide(stats[:1])
    assert alone.action == "keep" and alone.reason.startswith("only one variant (int8)")


def test_ab_report_decides_and_prints_json(tmp_path):
    db = f"sqlite:///{tmp_path / 'ab.db'}"
    _seed(db, {"base": (80, 20), "new": (90, 10)})
    params = tmp_path / "params.yaml"
    params.write_text(
        "serve:\n  variants:\n    - {name: base, model: models/a}\n    - {name: new, model: models/b}\n",
        encoding="utf-8",
    )
    args = ["ab", "report", "--params", str(params), "--database-url", db]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert lines[-2] == "non-inferiority (new vs base, margin 0.02): z = +2.40, one-sided p = 0.0082"
    assert lines[-1] == ("decision: replace (new is not worse than base by the margin 0.02 or more: non-inferiority "
                         "p = 0.0082 < alpha 0.05; new 90.0% vs base 80.0% thumbs-up (difference +0.100, one-sided "
                         "95% lower bound +0.018))")
    waiting = CliRunner().invoke(app, [*args, "--min-rated", "150"])
    assert waiting.output.strip().splitlines()[-1] == ("decision: wait (more ratings needed per variant (each needs "
                                                        "150): base 50 more (100 rated), new 50 more (100 rated))")
    out = CliRunner().invoke(app, [*args, "--json", "--margin", "0.0"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert [v["variant"] for v in data["variants"]] == ["base", "new"] and data["variants"][1]["rated"] == 100
    # margin 0: z = 0.10 / 0.05 = 2.0, p = 1 - Phi(2) = 0.02275 -> still replace
    assert data["decision"]["action"] == "replace" and data["decision"]["p_value"] == pytest.approx(0.02275013194817922)
    assert data["comparisons"][0]["variant"] == "new"
    bad = CliRunner().invoke(app, [*args, "--new", "nope"])
    assert bad.exit_code == 2 and "--new 'nope' is not a variant; choose one of: new" in bad.output
