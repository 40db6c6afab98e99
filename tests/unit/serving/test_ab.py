"""A/B assignment (split, stickiness) and the report's statistics and verdict."""

from __future__ import annotations

from collections import Counter

import pytest
from typer.testing import CliRunner

from chatforge.cli import app
from chatforge.serving.ab import (
    VariantStats,
    assign_variant,
    compare_variants,
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
    assert lines[-1] == verdict


def test_ab_report_rejects_bad_params(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("serve:\n  variants: []\n", encoding="utf-8")
    result = CliRunner().invoke(app, ["ab", "report", "--params", str(params)])
    assert result.exit_code == 2
    assert "serve.variants" in result.output and "Traceback" not in result.output
