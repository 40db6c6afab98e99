"""The on-intent rule (chatforge.evaluation.paraphrase.IntentJudge) on a corpus small enough to
compute by hand."""

import json
import math
from pathlib import Path

import pytest

from chatforge.evaluation.paraphrase import IntentJudge, ParaphraseError, Question, paraphrase_subset, read_paraphrases
from chatforge.runtime.conversation import Conversation

BYE = "You're welcome, bye!"
ASK = "What is your order number?"


def conv(cid, intent, *answers, lang="en"):
    msgs = []
    for a in answers:
        msgs += [{"role": "user", "content": "q"}, {"role": "assistant", "content": a}]
    return Conversation(cid, lang, intent, msgs)


# 8 English conversations: 4 order_status, 2 refund, 2 goodbye.
#   "Your parcel is on its way."  in 4/4 order_status            -> overall 4/8 = 0.5; order_status 1.0 >= 0.5
#   ASK                          in 2/4 order_status, 2/2 refund -> overall 4/8 = 0.5; order_status 0.5 >= 0.5, refund 1.0
#   BYE                          in 1/4 order_status, 2/2 goodbye -> overall 3/8 = 0.375; order_status 0.25 < 0.375
#   "The refund is on its way."  in 2/2 refund                    -> refund only
CORPUS = [
    conv("c1", "order_status", ASK, "Your parcel is on its way.", BYE),
    conv("c2", "order_status", ASK, "Your parcel is on its way."),
    conv("c3", "order_status", "Your parcel is on its way."),
    conv("c4", "order_status", "Your parcel is on its way."),
    conv("c5", "refund", ASK, "The refund is on its way."),
    conv("c6", "refund", ASK, "The refund is on its way."),
    conv("c7", "goodbye", BYE),
    conv("c8", "goodbye", BYE),
    conv("z1", "goodbye", "不客气，再见！", lang="zh"),
]


@pytest.fixture(scope="module")
def judge():
    return IntentJudge(CORPUS, fallbacks=["Sorry, I'm not sure."])


def test_template_answer_serves_its_own_intent(judge):
    assert judge.intents_of("Your parcel is on its way now", lang="en") == {"order_status"}
    assert judge.intents_of("the refund is on its way", lang="en") == {"refund"}


def test_shared_closing_belongs_where_it_is_over_represented(judge):
    assert judge.intents_of(BYE, lang="en") == {"goodbye"}
    assert not judge.on_intent(BYE, "order_status", lang="en")


def test_clarifying_question_serves_every_intent_that_asks_it_at_least_as_often_as_average(judge):
    assert judge.intents_of(ASK, lang="en") == {"order_status", "refund"}


def test_fallback_and_empty_answers_serve_nothing(judge):
    assert judge.intents_of("Sorry, I'm not  sure.", lang="en") == frozenset()
    assert judge.intents_of("   ", lang="en") == frozenset()


def test_language_restricts_the_nearest_answer(judge):
    assert judge.intents_of("不客气", lang="zh") == {"goodbye"}
    assert judge.intents_of("Your parcel is on its way.", lang="fr") == frozenset()


def test_on_intent_rates_hand_computed(judge):
    qs = [Question("en-1", "en", "order_status", "plain", "where is it"),
          Question("en-2", "en", "refund", "plain", "money back?"),
          Question("en-3", "en", "goodbye", "plain", "cheers"),
          Question("zh-1", "zh", "goodbye", "plain", "拜拜")]
    answers = ["Your parcel is on its way.", "Your parcel is on its way.", BYE, "不客气，再见！"]
    rates = judge.on_intent_rates(answers, qs)
    assert rates["paraphrase_on_intent_en"] == pytest.approx(2 / 3)
    assert rates["paraphrase_on_intent_zh"] == 1.0
    assert rates["paraphrase_on_intent"] == pytest.approx(3 / 4)
    assert math.isnan(judge.on_intent_rates([], [])["paraphrase_on_intent"])


def test_judge_needs_labelled_conversations():
    with pytest.raises(ValueError, match="intent labels"):
        IntentJudge([conv("c1", None, "hi")])


def test_read_paraphrases_names_the_bad_line(tmp_path):
    path = tmp_path / "p.jsonl"
    good = {"id": "en-1", "lang": "en", "intent": "refund", "style": "plain", "question": "money back?"}
    path.write_text(json.dumps(good) + "\n" + json.dumps({"id": "en-2", "lang": "en"}) + "\n", encoding="utf-8")
    with pytest.raises(ParaphraseError, match=r"p\.jsonl:2: not a paraphrase record"):
        read_paraphrases(path)
    path.write_text(json.dumps(good) + "\n", encoding="utf-8")
    assert read_paraphrases(path) == [Question("en-1", "en", "refund", "plain", "money back?")]
    with pytest.raises(ParaphraseError, match="not found"):
        read_paraphrases(tmp_path / "missing.jsonl")


def _q(i: int, lang: str, intent: str) -> Question:
    return Question(f"q{i}", lang, intent, "plain", f"question {i}")


def test_paraphrase_subset_takes_one_question_per_intent_in_turn_keeping_file_order() -> None:
    qs = [_q(0, "zh", "a"), _q(1, "zh", "a"), _q(2, "en", "a"), _q(3, "zh", "b"), _q(4, "zh", "a"),
          _q(5, "zh", "c"), _q(6, "en", "b"), _q(7, "en", "a")]
    # zh intents in order of first appearance: a (0, 1, 4), b (3), c (5); en: a (2, 7), b (6)
    assert [q.id for q in paraphrase_subset(qs, 1)] == ["q0", "q2"]
    assert [q.id for q in paraphrase_subset(qs, 2)] == ["q0", "q2", "q3", "q6"]
    assert [q.id for q in paraphrase_subset(qs, 4)] == ["q0", "q1", "q2", "q3", "q5", "q6", "q7"]  # a's 2nd, then en runs out
    assert paraphrase_subset(qs, 99) == qs and paraphrase_subset(qs, None) == qs


def test_the_demo_set_capped_at_fourteen_holds_each_intent_once_per_language() -> None:
    every = read_paraphrases(Path(__file__).resolve().parents[3] / "data" / "eval" / "demo_paraphrases.jsonl")
    kept = paraphrase_subset(every, 14)
    for lang in ("zh", "en"):
        intents = [q.intent for q in kept if q.lang == lang]
        assert len(intents) == 14 and len(set(intents)) == 14 == len({q.intent for q in every if q.lang == lang})
