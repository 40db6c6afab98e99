"""Entity replacement: boundaries, longest match, consistency across turns, gazetteer errors."""

from __future__ import annotations

import random
from pathlib import Path

import polars as pl
import pytest

from chatforge.data.augment import augment_turns
from chatforge.data.entities import EntityMatcher, GazetteerError, plan_swaps, read_gazetteers
from chatforge.params import AugmentParams

ONLY_ENTITIES = AugmentParams(
    max_ratio=10, back_translation={"enabled": False}, voice_swap={"enabled": False},
    entity_swap={"ratio": 10, "kinds": ["city", "person"]},
)


def _write(folder: Path, lang: str, kind: str, lines: list[str]) -> None:
    (folder / lang).mkdir(parents=True, exist_ok=True)
    (folder / lang / f"{kind}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.fixture
def gazetteers(tmp_path: Path) -> dict:
    _write(tmp_path, "zh", "city", ["# 城市", "北京", "上海", ""])
    _write(tmp_path, "zh", "person", ["王小明", "李华"])
    _write(tmp_path, "en", "city", ["New York", "London"])
    _write(tmp_path, "en", "person", ["Alice", "Bob"])
    return read_gazetteers(tmp_path, langs=("zh", "en"), kinds=["city", "person"])


def _conv(cid: str, lang: str, *texts: str) -> list[dict]:
    return [{"conversation_id": cid, "turn": i, "role": ("user", "assistant")[i % 2], "content": t, "lang": lang,
             "intent": "weather", "source": "demo", "origin_id": None, "method": "original"}
            for i, t in enumerate(texts)]


def test_same_entity_same_replacement_in_every_turn_zh_and_en(gazetteers: dict):
    turns = pl.DataFrame(
        _conv("c1", "zh", "查询北京天气", "今日北京晴，15-25℃", "王小明明天去北京吗？", "是的，王小明明天到北京。")
        + _conv("c2", "en", "What is the weather in New York?", "New York is sunny. Alice says hi.",
                "Thanks, I will tell Bob.")
    )
    result = augment_turns(turns, params=ONLY_ENTITIES, gazetteers=gazetteers)
    added = result.turns.filter(pl.col("method") == "entity_swap")
    assert added.filter(pl.col("conversation_id") == "c1#es1")["content"].to_list() == [
        "查询上海天气", "今日上海晴，15-25℃", "李华明天去上海吗？", "是的，李华明天到上海。"]
    # Alice and Bob are both in the conversation: neither may become the other
    assert added.filter(pl.col("conversation_id") == "c2#es1")["content"].to_list() == [
        "What is the weather in London?", "London is sunny. Alice says hi.", "Thanks, I will tell Bob."]
    assert set(added["origin_id"]) == {"c1", "c2"}
    assert result.metrics["conversations_added_entity_swap"] == 2 and result.metrics["rows_added_entity_swap"] == 7


def test_no_partial_word_matches():
    zh = EntityMatcher({"city": ["北京", "上海"]}, lang="zh")
    assert zh.find("我在北京大学读书") == []
    assert [m.text for m in zh.find("北京大学在北京")] == ["北京"]
    assert [m.text for m in EntityMatcher({"city": ["北京"]}, lang="zh", match_inside_words=True).find("北京大学")] == ["北京"]
    en = EntityMatcher({"city": ["York", "New York", "Paris"]}, lang="en")
    assert en.find("Yorkshire and Parisian food") == []
    assert [(m.text, m.start) for m in en.find("I love New York, not york-ish York.")] == [
        ("New York", 7), ("york", 21), ("York", 30)]
    assert EntityMatcher({"city": ["York"]}, lang="en", case_sensitive=True).find("york") == []


def test_longest_match_wins():
    en = EntityMatcher({"city": ["New York", "York"], "product": ["New York Times"]}, lang="en")
    assert [(m.text, m.kind) for m in en.find("Read the New York Times in New York")] == [
        ("New York Times", "product"), ("New York", "city")]


def test_variants_are_distinct_and_seeded():
    matcher = EntityMatcher({"city": ["北京", "上海", "广州", "深圳", "杭州"]}, lang="zh")
    found = matcher.find("北京到上海")
    plans = plan_swaps(found, matcher.gazetteer, variants=3, rng=random.Random(1), fold=False)
    assert len(plans) == 3 and len({tuple(sorted(p.items())) for p in plans}) == 3
    for p in plans:
        assert p["北京"] != p["上海"] and {p["北京"], p["上海"]} <= {"广州", "深圳", "杭州"}
    assert plans == plan_swaps(found, matcher.gazetteer, variants=3, rng=random.Random(1), fold=False)
    # with only two other cities there are two distinct maps, however many variants are asked for
    small = EntityMatcher({"city": ["北京", "上海", "广州", "深圳"]}, lang="zh")
    assert len(plan_swaps(small.find("北京到上海"), small.gazetteer, variants=5, rng=random.Random(1), fold=False)) == 2


def test_gazetteer_errors_name_the_file(tmp_path: Path):
    with pytest.raises(GazetteerError, match=r"zh/city\.txt: gazetteer file not found.*remove 'city'"):
        read_gazetteers(tmp_path, langs=["zh"], kinds=["city"])
    _write(tmp_path, "zh", "city", ["# only a comment", ""])
    with pytest.raises(GazetteerError, match=r"city\.txt: gazetteer has 0 entities"):
        read_gazetteers(tmp_path, langs=["zh"], kinds=["city"])
    _write(tmp_path, "zh", "city", ["北京", "北京"])
    with pytest.raises(GazetteerError, match="has 1 entity; at least 2"):
        read_gazetteers(tmp_path, langs=["zh"], kinds=["city"])
