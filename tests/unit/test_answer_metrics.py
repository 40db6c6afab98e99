"""Slot carry, degenerate answers and exact match on small hand-computed cases."""

import pytest

from chatforge import metrics


# -------------------------------------------------------------------------------- slot carry
def test_slot_carry_number_present():
    ctx = "请问订单2024061580787发货了吗？"
    ref = "订单2024061580787已于6月16日发货。"
    assert metrics.slot_carry_counts(ctx, ref, "您的订单2024061580787已发货。") == (1, 1)


def test_slot_carry_number_altered():
    ctx = "Where is my order 2024052012345?"
    ref = "Order 2024052012345 ships tomorrow."
    # one digit changed, and a copy with extra digits glued on: neither is the order number
    assert metrics.slot_carry_counts(ctx, ref, "Order 2024052012346 ships tomorrow.") == (0, 1)
    assert metrics.slot_carry_counts(ctx, ref, "Order 2024052012345999 ships tomorrow.") == (0, 1)


def test_slot_carry_entity_in_reference_but_not_in_context():
    # 上海 and the date are only in the reference: the model cannot know them, so nothing is expected
    ctx = "查询天气"
    ref = "今日上海晴，2024年15-25℃"
    assert metrics.slot_carry_counts(ctx, ref, "今日北京晴", gazetteer=["上海", "北京"]) == (0, 0)
    # a city that is in both is expected; a mask tag too
    ctx2 = "查询上海天气，电话<PHONE>"
    ref2 = "今日上海晴，我们会致电<PHONE>"
    assert metrics.slot_carry_counts(ctx2, ref2, "上海今天晴", gazetteer=["上海", "北京"]) == (1, 2)
    assert metrics.slot_carry_counts("Weather in new york", "New York is sunny", "NEW YORK: sunny",
                                     gazetteer=["New York"]) == (1, 1)


def test_slot_carry_no_entities():
    assert metrics.slot_carry_counts("你好", "您好，请问有什么可以帮您？", "您好") == (0, 0)
    assert metrics.slot_carry([(0, 0), (0, 0)]) != metrics.slot_carry([(0, 0)])  # nan != nan: nothing expected
    assert metrics.slot_carry([(1, 1), (0, 1), (2, 2)]) == pytest.approx(0.75)


# ------------------------------------------------------------------------------ degenerate
@pytest.mark.parametrize(
    ("answer", "finish", "reason"),
    [
        ("我是您，工客工客工客工客，工客服", "stop", "loop"),
        ("请问订单2024061580787发货的请问订单2024061580787的请问订单", "stop", "loop"),
        ("You can get an invoice for order 2024083064720999999999999", "stop", "loop"),
        ("Your order ships tomorrow and", "length", "no_eos"),
        ("请问\ufffd", "stop", "replacement_char"),
        ("", "stop", "empty"),
        ("   ", "length", "empty"),
        ("订单2024061580787已于6月16日发货，预计3天内送达。", "stop", None),
        ("Order 2024052012345 ships by September 13. Thanks!", "stop", None),
    ],
)
def test_degenerate_reason(answer, finish, reason):
    assert metrics.degenerate_reason(answer, finish_reason=finish) == reason


def test_exact_match_ignores_whitespace_only():
    assert metrics.exact_match(["a  b ", "x"], ["a b", "y"]) == 0.5
    assert metrics.exact_match(["Hello"], ["hello"]) == 0.0


def test_answer_confidence_over_the_first_tokens():
    import math

    from chatforge.metrics import answer_confidence

    lps = [math.log(0.9), math.log(0.8), math.log(0.1)]
    assert answer_confidence(lps) == pytest.approx((0.9 * 0.8 * 0.1) ** (1 / 3))
    assert answer_confidence(lps, first=2) == pytest.approx((0.9 * 0.8) ** 0.5)
    assert answer_confidence(lps, first=10) == answer_confidence(lps)
    assert answer_confidence([]) == 0.0


def test_calibration_reports_fallback_and_the_answered_part():
    import math

    from chatforge.runtime.quality import Answer, Sample, calibration

    samples = [Sample(f"c{i}", "en", None, [{"role": "user", "content": "q"}], ref)
               for i, ref in enumerate(["your order shipped today", "it is sunny in beijing", "refund in three days"])]
    answers = [Answer("your order shipped today", "stop", 0.95), Answer("no idea at all here", "stop", 0.4),
               Answer("refund in three days", "stop", float("nan"))]  # nan: no confidence, never falls back
    out = calibration(samples, answers, threshold=0.7, thresholds=(0.3, 0.7))
    assert out["fallback_rate"] == pytest.approx(1 / 3)
    assert out["answered_bleu_en"] == pytest.approx(100.0)  # the wrong answer is the one withheld
    assert out["calibration_t030_fallback_rate"] == 0.0
    assert out["calibration_t070_fallback_rate"] == pytest.approx(1 / 3)
    assert out["calibration_t030_answered_bleu_en"] < 100.0
    assert math.isnan(out["answered_bleu_zh"])
