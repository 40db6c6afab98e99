"""The augment library: back-translation through a real tiny MarianMT, filters, cache, caps, bad input."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
import torch

from chatforge.data.augment import augment_turns, detect_lang, turn_problem
from chatforge.data.schema import conform
from chatforge.modeling import translate as tr
from chatforge.modeling import translator_train as tt
from chatforge.params import AugmentParams, ParamsError, TranslatorParams, validate_section

torch.set_num_threads(1)

# two Chinese phrasings share one English sentence: a round trip can come back as the other phrasing
PARAPHRASES = [("北京今天天气怎么样？", "今天北京天气如何？", "What is the weather in Beijing today?"),
               ("我想订一张去上海的机票。", "帮我订一张去上海的机票。", "I want to book a flight to Shanghai."),
               ("我的订单到哪里了？", "我的订单现在在哪？", "Where is my order?")]
PAIRS = pl.DataFrame([(zh, en) for a, b, en in PARAPHRASES for zh in (a, b)] + [("谢谢你的帮助。", "Thanks for your help.")],
                     schema={"zh": pl.String, "en": pl.String}, orient="row")
BT_ONLY = {"entity_swap": {"enabled": False}, "voice_swap": {"enabled": False}}


def _params(**over) -> AugmentParams:
    """Back-translation only (on: params.yaml ships it off), with the given overrides."""
    bt = {"enabled": True, **over.pop("back_translation", {})}
    return validate_section("augment", {**BT_ONLY, "max_ratio": 10, "back_translation": bt, **over}, AugmentParams)


def _frame(user_texts: list[str], *, lang: str = "zh", reply: str = "好的，请稍等。") -> pl.DataFrame:
    rows = []
    for i, text in enumerate(user_texts):
        for turn, (role, content) in enumerate([("user", text), ("assistant", reply)]):
            rows.append({"conversation_id": f"c{i:03d}", "turn": turn, "role": role, "content": content, "lang": lang,
                         "intent": "travel", "source": "demo", "origin_id": None, "method": "original"})
    return conform(pl.DataFrame(rows))


@pytest.fixture(scope="module")
def marian(tmp_path_factory: pytest.TempPathFactory) -> Path:
    params = TranslatorParams(vocab_size=300, d_model=64, layers=2, heads=2, ffn_dim=128, max_steps=250,
                              warmup_steps=10, batch_size=8, lr=3e-3, dropout=0.0, label_smoothing=0.0)
    trained = tt.train_translator(PAIRS, params)
    folder = tmp_path_factory.mktemp("bt") / "translator"
    folder.mkdir()
    tt.save_translator(trained.model, trained.tokenizer, folder, details={})
    return folder


class DictTranslator:
    """A stand-in for the filter tests: fixed answers, so each filter's count is exact."""

    fingerprint = "dict"

    def __init__(self, table: dict[str, str]) -> None:
        self.table, self.texts_translated = table, 0

    def translate(self, texts, *, src, tgt):
        self.texts_translated += len(texts)
        return [self.table.get(t, "") for t in texts]


def test_back_translation_end_to_end_with_real_marian(marian: Path):
    turns = _frame([a for a, _, _ in PARAPHRASES] + [b for _, b, _ in PARAPHRASES])
    translator = tr.load_translator(marian, options=tr.DecodeOptions(batch_size=4))
    result = augment_turns(turns, params=_params(back_translation={"ratio": 10}), translator=translator)
    added = result.turns.filter(pl.col("method") == "back_translation")
    assert added.height > 0 and added.height == result.metrics["rows_added_back_translation"]
    known_zh = set(PAIRS["zh"])
    for conv_id, group in added.group_by("conversation_id"):
        origin = group["origin_id"][0]
        assert conv_id[0] == f"{origin}#bt1"
        original = turns.filter(pl.col("conversation_id") == origin).sort("turn")
        user = group.filter(pl.col("role") == "user")["content"][0]
        # a real round trip: a different sentence the model knows, with the same meaning (same English)
        assert user != original["content"][0] and user in known_zh
        en = {zh: e for zh, e in PAIRS.rows()}
        assert en[user] == en[original["content"][0]]
        assert group.sort("turn")["content"][1] == original["content"][1]  # assistant turns untouched
    rejected = sum(v for k, v in result.metrics.items() if k.startswith("rejected_back_translation_"))
    assert result.metrics["conversations_added_back_translation"] + rejected == turns.height // 2
    assert result.examples["back_translation"][0]["before"] != result.examples["back_translation"][0]["after"]


def test_rerun_with_larger_ratio_translates_only_new_text(marian: Path, tmp_path: Path):
    texts = [a for a, _, _ in PARAPHRASES] + [b for _, b, _ in PARAPHRASES] + ["谢谢你的帮助。"]
    turns = _frame(texts * 3)  # 21 conversations, 42 rows
    cache = tmp_path / "cache.sqlite"

    def run(ratio: float, cache_path: Path):
        t = tr.CachedTranslator(tr.load_translator(marian, options=tr.DecodeOptions(batch_size=8)),
                                tr.TranslationCache(cache_path))
        # similarity filter off: the tiny model's round trips must be accepted for the cap to stop early
        params = _params(back_translation={"ratio": ratio, "min_similarity": 0})
        return augment_turns(turns, params=params, translator=t), t

    small, first = run(0.1, cache)
    assert 0 < first.texts_translated
    same, again = run(0.1, cache)
    assert again.texts_translated == 0 and same.turns.equals(small.turns)  # no model call for cached text
    bigger, second = run(1.0, cache)
    cold_result, cold = run(1.0, tmp_path / "cold.sqlite")
    assert bigger.turns.equals(cold_result.turns)
    assert second.texts_translated == cold.texts_translated - first.texts_translated > 0
    kept = small.turns.filter(pl.col("method") == "back_translation")
    assert kept.join(bigger.turns, on=kept.columns, how="anti").is_empty()  # a larger ratio extends the list


def test_filters_are_counted_per_reason():
    table = {
        "我想订一张去上海的机票。": "I want to book a flight to Shanghai.",
        "I want to book a flight to Shanghai.": "帮我订一张去上海的机票。",  # accepted
        "我的订单到哪里了？": "Where is my order?", "Where is my order?": "我的订单到哪里了?",  # identical
        "谢谢你的帮助。": "Thanks.", "Thanks.": "",  # empty
        "北京今天天气怎么样？": "weather", "weather": "sunny weather today in Beijing",  # wrong language
        "今天北京天气如何？": "How is it", "How is it": "好",  # length ratio
        "订单2024052012345到哪了？": "Where is order 2024052012345?",
        "Where is order 2024052012345?": "订单2024052012346在哪里？",  # numbers
        "我的手机号是<PHONE>": "My phone number is <PHONE>", "My phone number is <PHONE>": "我的手机号码是",  # numbers
        "去北京的票还有吗？": "Any tickets to Beijing?", "Any tickets to Beijing?": "去上海的票还有吗？",  # entities
        "我想退货。": "I want to return it.", "I want to return it.": "今天天气很好。",  # low similarity
    }
    turns = _frame(list(table)[::2])
    gazetteers = {"zh": {"city": ["北京", "上海"]}, "en": {"city": ["Beijing", "Shanghai"]}}
    result = augment_turns(turns, params=_params(back_translation={"ratio": 10}), translator=DictTranslator(table),
                           gazetteers=gazetteers)
    m = result.metrics
    assert {k.removeprefix("rejected_back_translation_"): v for k, v in m.items() if k.startswith("rejected_")} == {
        "identical": 1, "empty": 1, "wrong_language": 1, "length_ratio": 1, "numbers": 2, "entities": 1,
        "low_similarity": 1}
    added = result.turns.filter(pl.col("method") == "back_translation")
    assert added["content"].to_list() == ["帮我订一张去上海的机票。", "好的，请稍等。"]


def test_english_source_pivots_through_chinese_and_assistant_turns_when_asked():
    table = {"Where is my order?": "我的订单在哪里？", "我的订单在哪里？": "Where's my order?",
             "It ships today.": "今天发货。", "今天发货。": "It will ship today."}
    turns = _frame(["Where is my order?"], lang="en", reply="It ships today.")
    params = _params(back_translation={"ratio": 10, "roles": ["user", "assistant"]})
    result = augment_turns(turns, params=params, translator=DictTranslator(table))
    assert result.turns.filter(pl.col("conversation_id") == "c000#bt1")["content"].to_list() == [
        "Where's my order?", "It will ship today."]


def test_bad_input_is_skipped_and_counted_never_crashes():
    texts = ["", "   ", "北京" * 300, "我想买iPhone和MacBook Pro laptop", "？？！！...", "😀😀", "我把杯子打碎了"]
    turns = _frame(texts)
    translator = DictTranslator({})
    params = validate_section("augment", {"max_ratio": 10, "max_turn_chars": 400, "voice_swap": {"ratio": 10},
                                          "back_translation": {"enabled": True, "ratio": 10}, "entity_swap": {"enabled": False}},
                              AugmentParams)
    result = augment_turns(turns, params=params, translator=translator)
    m = result.metrics
    assert (m["skipped_turns_empty"], m["skipped_turns_too_long"], m["skipped_turns_mixed_language"],
            m["skipped_turns_symbols_only"]) == (2, 1, 1, 2)
    assert translator.texts_translated == 1  # only the good user turn reached the translator (and failed)
    assert m["rejected_back_translation_empty"] == 1
    voice = result.turns.filter(pl.col("method") == "voice_swap")
    assert voice["content"].to_list() == ["杯子被我打碎了", "好的，请稍等。"]
    assert result.turns.filter(pl.col("method") == "original").height == turns.height


def test_caps_per_method_and_overall_and_determinism():
    texts = ["我把杯子打碎了", "文件被同事删掉了", "他们把会议推迟了", "妈妈把饭做好了"] * 5
    turns = _frame(texts, reply="I booked a table.")
    params = validate_section("augment", {"max_ratio": 0.3, "back_translation": {"enabled": False},
                                          "entity_swap": {"enabled": False}, "voice_swap": {"ratio": 0.25}},
                              AugmentParams)
    first = augment_turns(turns, params=params)
    assert first.metrics["rows_added_voice_swap"] == 10 <= 0.25 * turns.height
    assert first.turns.equals(augment_turns(turns, params=params).turns)
    overall = params.model_copy(update={"max_ratio": 0.1})
    assert augment_turns(turns, params=overall).metrics["rows_added"] == 4  # two conversations of two rows
    other_seed = augment_turns(turns, params=params.model_copy(update={"seed": 99}))
    assert set(other_seed.turns["conversation_id"]) != set(first.turns["conversation_id"])


def test_only_original_conversations_are_augmented():
    turns = _frame(["我把杯子打碎了", "文件被同事删掉了"])
    copy = turns.filter(pl.col("conversation_id") == "c000").with_columns(
        pl.lit("c000#os1").alias("conversation_id"), pl.lit("c000").alias("origin_id"), pl.lit("oversample").alias("method"))
    params = validate_section("augment", {"max_ratio": 10, "back_translation": {"enabled": False},
                                          "entity_swap": {"enabled": False}, "voice_swap": {"ratio": 10}}, AugmentParams)
    result = augment_turns(pl.concat([turns, copy]), params=params)
    added = result.turns.filter(pl.col("method") == "voice_swap")
    assert sorted(set(added["conversation_id"])) == ["c000#vs1", "c001#vs1"]
    assert result.metrics["rows_in"] == 6 and result.metrics["rows_out"] == 10


def test_language_detection_and_turn_problems():
    assert [detect_lang(t) for t in ["查询北京天气", "hello there", "用Python写代码 and run it", "123 !!", "订iPhone"]] == [
        "zh", "en", "mixed", None, "zh"]
    assert turn_problem("x" * 11, max_chars=10) == "too_long" and turn_problem("ok", max_chars=10) is None


def test_augment_params_errors():
    with pytest.raises(ParamsError, match="pivot maps 'zh' to itself"):
        validate_section("augment", {"back_translation": {"pivot": {"zh": "zh"}}}, AugmentParams)
    with pytest.raises(ParamsError, match="min_length_ratio"):
        validate_section("augment", {"back_translation": {"min_length_ratio": 3}}, AugmentParams)
    with pytest.raises(ParamsError, match="unknown key"):
        validate_section("augment", {"entity_swap": {"ratios": 1}}, AugmentParams)
    with pytest.raises(ParamsError, match="roles"):
        validate_section("augment", {"voice_swap": {"roles": ["system"]}}, AugmentParams)
    assert validate_section("augment", {"max_ratio": "0.5"}, AugmentParams).max_ratio == 0.5
