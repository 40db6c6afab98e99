import math

import pytest

from chatforge import metrics
from chatforge.runtime.fallback import falls_back


def test_bleu_english_hand_computed():
    # n-gram precisions 5/6, 3/5, 2/4, 1/3; equal lengths so no brevity penalty
    expected = 100 * (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25
    got = metrics.bleu(["the cat sat on the mat"], ["the cat sat on a mat"], lang="en")
    assert got == pytest.approx(expected, abs=1e-6)


def test_bleu_chinese_uses_character_tokens():
    # every n-gram matches (precision 1); hypothesis 5 chars vs reference 6 -> BP = exp(1 - 6/5)
    got = metrics.bleu(["今天北京晴"], ["今天北京晴天"], lang="zh")
    assert got == pytest.approx(100 * math.exp(1 - 6 / 5), abs=1e-6)


def test_bleu_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="2 hypotheses"):
        metrics.bleu(["a", "b"], ["a"], lang="en")


def test_chrf_identical_is_100_and_empty_is_nan():
    assert metrics.chrf(["查询北京天气"], ["查询北京天气"]) == pytest.approx(100.0)
    assert math.isnan(metrics.chrf([], []))


def test_perplexity_is_exp_mean_nll():
    assert metrics.perplexity(4 * math.log(10), 4) == pytest.approx(10.0)
    assert math.isnan(metrics.perplexity(0.0, 0))


def test_macro_f1_on_small_confusion_matrix():
    y_true = ["a", "a", "a", "b", "b", "c"]
    y_pred = ["a", "a", "b", "b", "c", "c"]
    s = metrics.classification_scores(y_true, y_pred, labels=["a", "b", "c"])
    assert s.accuracy == pytest.approx(4 / 6)
    assert s.per_label_f1 == pytest.approx({"a": 0.8, "b": 0.5, "c": 2 / 3})
    assert s.macro_f1 == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert s.confusion == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]


def test_classification_unknown_label_is_an_error():
    with pytest.raises(ValueError, match=r"\['z'\]"):
        metrics.classification_scores(["a"], ["z"], labels=["a", "b"])


def test_fallback_stats():
    fell = [falls_back(c, 0.7) for c in [0.9, 0.5, 0.8, 0.65]]
    out = metrics.fallback_stats(fell, [True, True, False, False])
    assert out == {"fallback_rate": 0.5, "answered_accuracy": 0.5}


def test_latency_percentiles_in_ms():
    out = metrics.latency_stats([0.001 * i for i in range(1, 101)])
    assert out["latency_p50_ms"] == pytest.approx(50.5)
    assert out["latency_p95_ms"] == pytest.approx(95.05)


def test_retention_for_scores_and_perplexity():
    assert metrics.retention(27.0, 30.0) == pytest.approx(0.9)
    assert metrics.retention(12.0, 10.0, higher_is_better=False) == pytest.approx(10 / 12)


# ---------------------------------------------------------------- diversity and mode collapse
def test_distinct_2_english_hand_computed():
    # "the order is late" -> (the order) (order is) (is late); "the order is here ." -> (the order)
    # (order is) (is here) (here .): 7 bigrams, distinct: the-order, order-is, is-late, is-here, here-. = 5
    assert metrics.distinct_n(["The order is late", "the order is here."], lang="en") == pytest.approx(5 / 7)


def test_distinct_2_chinese_counts_characters():
    # 您好您好 -> 您好 好您 您好 (3 bigrams, 2 distinct); 谢谢 -> 谢谢 (1): 3 distinct of 4
    assert metrics.distinct_n(["您好您好", "谢 谢"], lang="zh") == pytest.approx(3 / 4)


def test_distinct_2_of_one_repeated_answer_shrinks_with_repeats():
    one = ["请问您是否有什么情况呢"] * 10
    assert metrics.distinct_n(one, lang="zh") == pytest.approx(10 / 100)
    assert math.isnan(metrics.distinct_n(["a", ""], lang="en"))  # no bigram at all


def test_top_answer_share_hand_computed():
    answers = ["Your order ships today.", "Your  order ships today. ", "Sorry.", "Refund sent."]
    assert metrics.top_answer_share(answers) == pytest.approx(2 / 4)  # whitespace-normalised equal
    assert metrics.top_answer_share(["x"] * 7) == 1.0
    assert math.isnan(metrics.top_answer_share([]))


def test_collapse_limit_is_floor_or_one_and_a_half_references():
    assert metrics.collapse_limit(0.099) == pytest.approx(0.1485)  # demo references: 9.9% -> 14.85%
    assert metrics.collapse_limit(0.008) == 0.05  # real data under 1%: the floor
    assert metrics.collapse_limit(float("nan")) == 0.05
