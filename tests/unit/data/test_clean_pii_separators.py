"""clean PII masking: the separators people write between the groups of a number or an address
(issue 15 item 6). Each list says exactly what is masked and what must stay."""

from __future__ import annotations

import polars as pl
import pytest

from chatforge.data.clean import clean_turns, mask_emails, mask_numbers, mask_phones
from chatforge.data.schema import TURNS_SCHEMA
from chatforge.params import CleanParams
from chatforge.serving.privacy import mask_pii


def masked(*texts: str) -> list[str]:
    """The clean stage's PII rules in its order: emails, ID/card numbers, phones."""
    content, _, _ = mask_numbers(mask_emails(pl.Series("content", list(texts), dtype=pl.String)))
    return mask_phones(content).to_list()


PHONES = [
    "139-1234-5678",
    "139 - 1234 - 5678",  # DailyDialog's tokenised text: spaces around the hyphens
    "139- 1234 - 5678",
    "139 -1234- 5678",
    "139 1234 5678",
    "139  1234  5678",
    "13912345678",
    "139.1234.5678",
    "139．1234．5678",  # full-width full stop
    "139－1234－5678",  # full-width hyphen-minus
    "139–1234–5678",  # en dash
    "139—1234—5678",  # em dash
    "139‐1234‐5678",  # hyphen U+2010
    "139−1234−5678",  # minus sign
    "139\u30001234\u30005678",  # ideographic space
    "139\u00a01234\u00a05678",  # no-break space
    "+86 139 1234 5678",
    "+86-139-1234-5678",
    "＋86 139 1234 5678",  # full-width plus
    "0086 13912345678",
    "(+86) 139-1234-5678",
    "+1 415-555-2671",
    "+1 (415) 555 - 2671",
    "+44 20 7946 0958",
    "626-555-1739",  # North American, as in DailyDialog
    "413 - 447 - 9662",
    "415.555.2671",
    "(626) 555-1739",
    "010-12345678",
    "010 - 12345678",
    "010 12345678",
    "010-1234-5678",
    "010．1234．5678",
    "(021)62345678",
    "（021）62345678",  # full-width parentheses, as Chinese rows keep them
    "0755－12345678",
]


@pytest.mark.parametrize("number", PHONES)
def test_phone_spellings_are_masked_alone_and_in_a_sentence(number):
    assert masked(number) == ["<PHONE>"]
    assert masked(f"My mobile is {number} .") == ["My mobile is <PHONE> ."]
    assert masked(f"我的电话是{number}，谢谢") == ["我的电话是<PHONE>，谢谢"]


EMAILS = [
    "tom.smith@example.com",
    "tom.smith@mail.example.com.cn",
    "tom @ example . com",
    "tom@ example .com",
    "tom @example. com . cn",
    "tom＠example．com",  # full-width at and full stop
    "tom [at] example [dot] com",
    "tom(at)example(dot)org",
    "tom [AT] example [DOT] COM",
]


@pytest.mark.parametrize("email", EMAILS)
def test_email_spellings_are_masked(email):
    assert masked(f"email: {email} thanks") == ["email: <EMAIL> thanks"]
    assert masked(f"邮箱{email}，谢谢") == ["邮箱<EMAIL>，谢谢"]


IDS = [
    "11010519491231002X",
    "11010519491231002x",
    "110105 19491231 002X",  # 6-8-4
    "110105-19491231-002X",
    "110105 - 19491231 - 002X",
    "110105－19491231－002X",
    "110105 1949 1231 002X",  # 6-4-4-4
    "1101 0519 4912 3100 2X",  # 4-4-4-4-2
    "440304\u300019900101\u30001233",
]


@pytest.mark.parametrize("number", IDS)
def test_id_number_spellings_are_masked(number):
    assert masked(f"身份证 {number} 。") == ["身份证 <ID> 。"]


CARDS = [
    "4111111111111111",
    "4111 1111 1111 1111",
    "4111-1111-1111-1111",
    "4111 - 1111 - 1111 - 1111",
    "4111－1111－1111－1111",
    "4111–1111–1111–1111",
    "4111.1111.1111.1111",
    "4111\u30001111\u30001111\u30001111",
    "3782 822463 10005",  # Amex 4-6-5
    "6222 0212 3456 7890 128",  # 19-digit UnionPay 4-4-4-4-3
    "5500 - 0000 - 0000 - 0004",
]


@pytest.mark.parametrize("number", CARDS)
def test_card_spellings_are_masked(number):
    assert masked(f"card {number} ok") == ["card <CARD> ok"]


KEPT = [
    "订单号2024052012345已发货",  # date-based order number
    "订单号 2024052012345",
    "订单 2024 0520 1234 5678",  # groups of an order number, not a landline
    "订单号6024052012346",  # card-like prefix, fails Luhn
    "3999 4999 5999 6999",  # fails Luhn
    "440304 19900101 1234",  # ID shape, wrong check digit
    "2024-05-20",
    "2024 - 05 - 20",
    "2024.05.20",
    "2024－05－20",
    "05-20-2024",
    "2024-05-20 - 2024-06-01",
    "12:30",
    "12:30 - 13:45",
    "10:30-11:45",
    "价格1999.00元",
    "¥1,399.00",
    "$ 139 . 50",
    "1999-2024",
    "第 1 2 3 4 5 6 步",
    "626 555 1739",  # three numbers separated by spaces only: not a North American number
    "447-9626",  # a 7-digit local number: could be anything
    "138123456789",  # 12 digits
    "SO13812345678",  # glued to letters: part of an order id
    "user@localhost",
    "match @ . com",  # DailyDialog: not an address
    "look @ home . Then",
    "we met at example dot com",  # spelled-out at/dot only in brackets
    "bob @ x . community",
]


def test_numbers_dates_times_prices_and_near_misses_stay():
    assert masked(*KEPT) == KEPT


def test_two_numbers_in_one_sentence_and_mixed_kinds():
    text = (
        "call 139 - 1234 - 5678 or 138－1234－5678, mail tom @ example . com, card 4111 - 1111 - 1111 - 1111"
    )
    assert masked(text) == ["call <PHONE> or <PHONE>, mail <EMAIL>, card <CARD>"]


def test_whole_clean_and_the_serving_privacy_module_agree():
    texts = ["My mobile is 139- 2477 - 4026 .", "身份证 110105 - 19491231 - 002X", "订单号2024052012345"]
    rows = [
        {"conversation_id": f"c{i}", "turn": t, "role": ("user", "assistant")[t], "content": text if t == 0 else "ok",
         "lang": "en", "intent": None, "source": "unit", "origin_id": None, "method": "original"}
        for i, text in enumerate(texts)
        for t in (0, 1)
    ]  # fmt: skip
    out, counts = clean_turns(
        pl.DataFrame(rows, schema=TURNS_SCHEMA), params=CleanParams(dedup_exact=False, dedup_near=False)
    )
    expected = ["My mobile is <PHONE> .", "身份证 <ID>", "订单号2024052012345"]
    assert out.filter(pl.col("turn") == 0)["content"].to_list() == expected
    assert (counts["masked_phone"], counts["masked_id_number"], counts["masked_card"]) == (1, 1, 0)
    assert [mask_pii(t, ["phone", "email", "id_number", "card"]) for t in texts] == expected
