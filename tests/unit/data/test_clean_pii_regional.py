"""Issue 22: PII masking folds width itself (nfkc off) and masks Taiwan / Hong Kong formats."""

from __future__ import annotations

import polars as pl
import pytest

from chatforge.data.clean import clean_turns, hk_check_char, is_tw_id, mask_text_wide
from chatforge.params import CleanParams


def _clean(texts: list[str], **params: object) -> tuple[list[str], dict[str, int]]:
    turns = pl.DataFrame(
        {
            "conversation_id": [f"t:{k // 2}" for k in range(len(texts))],
            "turn": [k % 2 for k in range(len(texts))],
            "role": ["user" if k % 2 == 0 else "assistant" for k in range(len(texts))],
            "content": texts,
            "lang": ["zh"] * len(texts),
            "intent": [None] * len(texts),
            "source": ["t"] * len(texts),
            "method": ["original"] * len(texts),
        }
    )
    base = {"dedup_exact": False, "dedup_near": False, "traditional_to_simplified": False}
    out, counts = clean_turns(turns, params=CleanParams(**(base | params)))
    return out["content"].to_list(), counts


def test_full_width_pii_is_masked_with_nfkc_off_and_the_rest_keeps_its_width() -> None:
    texts = [
        "电话１３９１２３４５６７８，订单１２３４５",
        "邮箱ｔｏｍ＠ｅｘａｍｐｌｅ．ｃｏｍ谢谢",
        "身份证１１０１０５１９４９１２３１００２Ｘ",
        "卡号６２２５　８８０１　２３４５　６７８９",  # not Luhn-valid: stays
    ]
    out, counts = _clean(texts, nfkc=False)
    assert out == [
        "电话<PHONE>，订单１２３４５",
        "邮箱<EMAIL>谢谢",
        "身份证<ID>",
        "卡号６２２５ ８８０１ ２３４５ ６７８９",  # rule 6 folds the ideographic spaces; digits keep their width
    ]
    assert (counts["masked_phone"], counts["masked_email"], counts["masked_id_number"], counts["masked_card"]) == (
        1,
        1,
        1,
        0,
    )


def test_full_width_masking_matches_with_nfkc_on() -> None:
    texts = ["电话１３９１２３４５６７８", "身份证１１０１０５１９４９１２３１００２Ｘ"]
    assert _clean(texts, nfkc=True)[0] == ["电话<PHONE>", "身份证<ID>"]


def test_tw_and_hk_ids() -> None:
    assert is_tw_id("A123456789") and not is_tw_id("A123456788")
    assert hk_check_char("A123456") == "3"
    kinds = {"id_number"}
    assert mask_text_wide("身分證 A123456789。", kinds) == ("身分證 <ID>。", {"id_number"})
    assert mask_text_wide("身分證 A123456788。", kinds) == ("身分證 A123456788。", set())  # bad check digit
    assert mask_text_wide("HKID A123456(7) ok", kinds) == ("HKID <ID> ok", {"id_number"})
    assert mask_text_wide("HKID A123456（3）", kinds) == ("HKID <ID>", {"id_number"})
    assert mask_text_wide("HKID A1234563", kinds) == ("HKID <ID>", {"id_number"})  # valid check, no brackets
    assert mask_text_wide("model A1234567", kinds) == ("model A1234567", set())  # invalid check: a code
    assert mask_text_wide("SKU XA123456789Z", kinds) == ("SKU XA123456789Z", set())  # not standing alone


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("手機 0912-345-678", "手機 <PHONE>"),
        ("手機 0912 345 678", "手機 <PHONE>"),
        ("手機0912345678", "手機<PHONE>"),
        ("手機 0912-345678", "手機 <PHONE>"),
        ("+886 912 345 678", "<PHONE>"),
        ("電話 9123 4567", "電話 <PHONE>"),
        ("電話 2345 6789 找我", "電話 <PHONE> 找我"),
        ("電話 (852) 9123-4567", "電話 <PHONE>"),
        ("電話 +852 9123 4567", "電話 <PHONE>"),
        # not phones: ranges, a grouped order number, 8 plain digits, a leading 1/4/8
        ("2023-2024 年度", "2023-2024 年度"),
        ("价格 3000-5000 元", "价格 3000-5000 元"),
        ("订单 2024 0520 1234 5678", "订单 2024 0520 1234 5678"),
        ("订单 91234567", "订单 91234567"),
        ("编号 1234 5678", "编号 1234 5678"),
    ],
)
def test_tw_and_hk_phones(text: str, masked: str) -> None:
    assert _clean([text, "好的"], nfkc=True)[0][0] == masked
    assert mask_text_wide(text, {"phone"})[0] == masked


def test_regional_ids_are_counted_and_respect_pii_kinds() -> None:
    texts = ["身分證 A123456789", "手機 0912-345-678"]
    out, counts = _clean(texts)
    assert out == ["身分證 <ID>", "手機 <PHONE>"]
    assert (counts["masked_id_number"], counts["masked_phone"]) == (1, 1)
    out, _ = _clean(texts, pii_kinds=["email"])
    assert out == texts
