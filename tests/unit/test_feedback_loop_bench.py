"""bench/feedback_loop.py's pure parts: the rated / unrated halves, which questions are asked, the
correction a simulated user sends, which wrong answers get one, and the per-half on-intent rates."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from chatforge.data.split import stable_unit
from chatforge.evaluation.paraphrase import Question
from chatforge.runtime.conversation import Conversation

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "feedback_loop.py"


@pytest.fixture(scope="module")
def fl():
    spec = importlib.util.spec_from_file_location("feedback_loop_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


QUESTIONS = [Question(i, lang, intent, "plain", f"question {i}") for i, lang, intent in [
    ("zh-1", "zh", "a"), ("zh-2", "zh", "a"), ("zh-3", "zh", "a"), ("zh-4", "zh", "b"), ("zh-5", "zh", "b"),
    ("en-1", "en", "a"), ("en-2", "en", "a"),
]]


def test_halves_take_the_first_half_of_each_language_and_intent_by_stable_hash(fl):
    # stable_unit(id, salt="feedback_loop:half"): zh-1 .727, zh-2 .844, zh-3 .912 | zh-4 .088, zh-5 .986 | en-1 .728, en-2 .068
    assert round(stable_unit("zh-4", salt=fl.SPLIT_SALT), 3) == 0.088
    rated, unrated = fl.split_halves(QUESTIONS)
    assert [q.id for q in rated] == ["zh-1", "zh-2", "zh-4", "en-2"]  # ceil(3/2), ceil(2/2), ceil(2/2)
    assert [q.id for q in unrated] == ["zh-3", "zh-5", "en-1"]
    assert fl.split_halves(list(reversed(QUESTIONS)))[0] == list(reversed(rated))  # order-free choice, input order kept


def test_asked_questions_cover_every_group_before_a_second_of_any(fl):
    rated, _ = fl.split_halves(QUESTIONS)
    # first in their groups: zh-1, zh-4, en-2; by stable_unit(id, salt=...":ask"): zh-1 .219, en-2 .447, zh-4 .464
    assert [q.id for q in fl.asked_questions(rated, 2)] == ["zh-1", "en-2"]
    assert [q.id for q in fl.asked_questions(rated, 3)] == ["zh-1", "zh-4", "en-2"]
    assert fl.asked_questions(rated, None) == rated
    assert fl.asked_questions(rated, 99) == rated


def test_correction_is_the_most_frequent_first_answer_of_the_intent_in_its_language(fl):
    def conv(cid, lang, intent, *answers):
        messages = []
        for a in answers:
            messages += [{"role": "user", "content": "q"}, {"role": "assistant", "content": a}]
        return Conversation(cid, lang, intent, messages)

    convs = [
        conv("1", "zh", "a", "甲", "later"), conv("2", "zh", "a", " 甲 "), conv("3", "zh", "a", "乙"),
        conv("4", "zh", "a", "乙", "甲", "甲"),
        conv("5", "en", "a", "Ok."), conv("6", "en", "b", "Beta two"), conv("7", "en", "b", "Beta one"),
        conv("8", "en", None, "Unlabelled"), Conversation("9", "en", "c", [{"role": "user", "content": "q"}]),
    ]
    # zh/a first answers only: 甲 (1), 甲 (2, stripped), 乙 (3), 乙 (4) -> a tie 2 : 2, the first in text order
    # wins (乙 U+4E59 < 甲 U+7532); counting every answer would give 甲 4 : 2
    # en/b: a tie of one each -> "Beta one"; no intent, or no assistant answer: skipped
    assert fl.correction_answers(convs) == {("zh", "a"): "乙", ("en", "a"): "Ok.", ("en", "b"): "Beta one"}
    assert fl.correction_answers(convs[:3])[("zh", "a")] == "甲"  # 甲 2 : 乙 1
    assert fl.correction_answers([convs[2], convs[3], convs[0]])[("zh", "a")] == "乙"  # 乙 2 : 甲 1


def test_choose_corrections_is_a_seeded_share_rounded_half_up(fl):
    wrong = ["q5", "q1", "q3", "q2", "q4"]
    assert fl.choose_corrections(wrong, share=0.5, seed="0:kto:1") == ["q1", "q2", "q4"]  # 2.5 -> 3
    assert fl.choose_corrections(reversed(wrong), share=0.5, seed="0:kto:1") == ["q1", "q2", "q4"]  # input order free
    assert fl.choose_corrections(wrong, share=0.5, seed="0:kto:2") == ["q2", "q4", "q5"]
    assert fl.choose_corrections(wrong, share=0.0, seed="s") == []
    assert fl.choose_corrections(wrong, share=1.0, seed="s") == ["q1", "q2", "q3", "q4", "q5"]
    assert fl.choose_corrections([], share=0.5, seed="s") == []


def test_on_intent_by_half_reads_the_served_variants_paraphrase_answers(fl):
    details = {
        "paraphrases": [{"id": i, "lang": i[:2]} for i in ("zh-1", "zh-2", "zh-3", "zh-4", "en-1", "en-2", "en-3")],
        "variants": {
            "retrieval": {"paraphrases": [{"id": "zh-1", "on_intent": False}]},
            "int8": {"paraphrases": [
                {"id": "zh-1", "answer": "x", "on_intent": True}, {"id": "zh-2", "answer": "x", "on_intent": False},
                {"id": "zh-3", "answer": "x", "on_intent": True}, {"id": "zh-4", "answer": "x", "on_intent": True},
                {"id": "en-1", "answer": "x", "on_intent": False}, {"id": "en-2", "answer": "x", "on_intent": True},
                {"id": "en-3", "answer": "x", "on_intent": True},
            ]},
        },
    }
    # en-3 is in neither half (rated, but not asked with --max-questions): left out
    got = fl.on_intent_by_half(details, variant="int8", rated_ids=["zh-1", "zh-2", "en-1"],
                               unrated_ids=["zh-3", "zh-4", "en-2"])
    assert got == {
        "on_intent_rated_zh": 0.5, "questions_rated_zh": 2, "on_intent_rated_en": 0.0, "questions_rated_en": 1,
        "on_intent_unrated_zh": 1.0, "questions_unrated_zh": 2, "on_intent_unrated_en": 1.0, "questions_unrated_en": 1,
    }
    none = fl.on_intent_by_half(details, variant="int8", rated_ids=[], unrated_ids=["zh-3"])
    assert none["on_intent_rated_zh"] is None and none["questions_rated_en"] == 0 and none["on_intent_unrated_zh"] == 1.0
    with pytest.raises(KeyError, match="pruned"):
        fl.on_intent_by_half(details, variant="pruned", rated_ids=[], unrated_ids=[])


def test_ratio_and_finite(fl):
    assert fl.ratio(0.9, 0.6) == pytest.approx(1.5)
    assert fl.ratio(1.0, 0.0) is None and fl.ratio(None, 1.0) is None and fl.ratio(float("nan"), 1.0) is None
    assert fl.finite({"a": [float("nan"), 1.0], "b": float("inf"), "c": "x"}) == {"a": [None, 1.0], "b": None, "c": "x"}
