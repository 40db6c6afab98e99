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
