"""What the service stores is masked exactly as the clean stage masks training data."""

from __future__ import annotations

import polars as pl
import pytest

from chatforge.data.clean import clean_turns
from chatforge.params import CleanParams, ServePrivacy
from chatforge.serving.privacy import mask_pii, mask_pii_texts, pii_masker

ALL = ["phone", "email", "id_number", "card"]
# 13812345678: a mobile; 11010519491231002X: Beijing, born 1949-12-31, valid check character X;
# 6222021234567894 and 4111 1111 1111 1111: Luhn-valid cards (UnionPay, Visa)
ZH = "我的电话是13812345678，邮箱zhang.san@example.com，身份证号11010519491231002X，卡号6222021234567894。"
EN = "Call +86 138-1234-5678 or mail bob@mail.example.org; card 4111 1111 1111 1111, ID 11010519491231002X."


def test_every_kind_is_masked_in_chinese_and_english():
    assert mask_pii(ZH, ALL) == "我的电话是<PHONE>，邮箱<EMAIL>，身份证号<ID>，卡号<CARD>。"
    assert mask_pii(EN, ALL) == "Call <PHONE> or mail <EMAIL>; card <CARD>, ID <ID>."


def test_lookalikes_are_left_alone():
    # wrong ID check character, card failing Luhn, a date-based order number, a digit run glued to letters
    text = "ID 110105194912310021, card 6222021234567893, order 2024052012345, code A13812345678"
    assert mask_pii(text, ALL) == text


@pytest.mark.parametrize(
    ("kinds", "expected"),
    [
        (
            ["phone"],
            "我的电话是<PHONE>，邮箱zhang.san@example.com，身份证号11010519491231002X，卡号6222021234567894。",
        ),
        (["email"], "我的电话是13812345678，邮箱<EMAIL>，身份证号11010519491231002X，卡号6222021234567894。"),
        (
            ["id_number"],
            "我的电话是13812345678，邮箱zhang.san@example.com，身份证号<ID>，卡号6222021234567894。",
        ),
        (
            ["card"],
            "我的电话是13812345678，邮箱zhang.san@example.com，身份证号11010519491231002X，卡号<CARD>。",
        ),
        (["email", "card"], "我的电话是13812345678，邮箱<EMAIL>，身份证号11010519491231002X，卡号<CARD>。"),
        ([], ZH),
    ],
)
def test_only_the_chosen_kinds_are_masked(kinds, expected):
    assert mask_pii(ZH, kinds) == expected


@pytest.mark.parametrize("kinds", [ALL, ["phone"], ["id_number", "card"], ["email", "phone"]])
def test_same_result_as_the_clean_stage(kinds):
    texts = [ZH, EN, "no pii here", "两个号码13812345678,13912345678"]
    turns = pl.DataFrame(
        {
            "conversation_id": [f"c{i}" for i in range(len(texts))],
            "turn": [0] * len(texts),
            "role": ["user"] * len(texts),
            "content": texts,
            "lang": ["zh", "en", "en", "zh"],
            "source": ["t"] * len(texts),
        }
    )
    only_pii = CleanParams(
        strip_html=False,
        remove_control=False,
        nfkc=False,
        pii_kinds=kinds,
        dedup_exact=False,
        dedup_near=False,
    )
    cleaned, _ = clean_turns(turns, params=only_pii)
    assert mask_pii_texts(texts, kinds) == cleaned.sort("conversation_id")["content"].to_list()
    assert [mask_pii(t, kinds) for t in texts] == cleaned.sort("conversation_id")["content"].to_list()


def test_masker_follows_serve_privacy_and_unknown_kinds_are_named():
    assert pii_masker(ServePrivacy(mask_pii=False)) is None
    masker = pii_masker(ServePrivacy(pii_kinds=["email"]))
    assert masker is not None and masker("a@b.cn 13812345678") == "<EMAIL> 13812345678"
    with pytest.raises(
        ValueError, match=r"unknown PII kind\(s\) 'passport'; choose from card, email, id_number, phone"
    ):
        mask_pii("x", ["passport", "phone"])


def test_the_store_masks_full_width_and_taiwan_hong_kong_forms_as_clean_does():
    """Issue 22: the store's masking is clean's (one function), so what clean masks with nfkc off,
    and the zh-Hant regions' formats, never reach the database either."""
    from chatforge.serving.privacy import mask_pii

    kinds = ["phone", "email", "id_number", "card"]
    assert mask_pii("电话１３９１２３４５６７８，订单１２３４５", kinds) == "电话<PHONE>，订单１２３４５"
    assert mask_pii("身分證 A123456789 手機 0912-345-678", kinds) == "身分證 <ID> 手機 <PHONE>"
    assert mask_pii("香港身份證 A123456(7)，電話 9123 4567", kinds) == "香港身份證 <ID>，電話 <PHONE>"
    assert mask_pii("order 2024-0520 costs 9123-4567", kinds) == "order 2024-0520 costs 9123-4567"
