"""The retrieval baseline on a 3-conversation fixture: the exact answers it must return."""

import pytest

from chatforge.runtime.conversation import Conversation
from chatforge.runtime.retrieval import RetrievalBot


def _conv(cid, lang, *turns):
    roles = ["user", "assistant"] * len(turns)
    return Conversation(cid, lang, None, [{"role": r, "content": t} for r, t in zip(roles, turns, strict=False)])


FIXTURE = [
    _conv("c1", "zh", "查询北京天气", "今日北京晴，15-25℃"),
    _conv("c2", "en", "Check my order status", "Could you tell me your order number?",
          "2024091027599, please hurry", "Order 2024091027599 is still being prepared at the warehouse."),
    _conv("c3", "en", "I want a refund", "Please share your order number.",
          "2024011976754", "I've submitted a refund request for order 2024011976754."),
]


@pytest.fixture(scope="module")
def bot():
    return RetrievalBot(FIXTURE)


def test_nearest_user_turn_answers(bot):
    assert len(bot.entries) == 5
    assert bot.answer([{"role": "user", "content": "查询上海天气"}]) == "今日北京晴，15-25℃"
    assert bot.answer([{"role": "user", "content": "check the status of my order"}]) == "Could you tell me your order number?"
    assert bot.answer([{"role": "user", "content": "refund please"}]) == "Please share your order number."


def test_preceding_context_picks_between_equal_user_turns(bot):
    # the bare order number matches both follow-ups alike; the assistant's question before it decides
    status = [{"role": "user", "content": "Check my order status"},
              {"role": "assistant", "content": "Could you tell me your order number?"},
              {"role": "user", "content": "2024050512345"}]
    refund = [{"role": "user", "content": "I want a refund"},
              {"role": "assistant", "content": "Please share your order number."},
              {"role": "user", "content": "2024050512345"}]
    assert bot.answer(status) == "Order 2024091027599 is still being prepared at the warehouse."
    assert bot.answer(refund) == "I've submitted a refund request for order 2024011976754."


def test_language_restricts_candidates_and_bad_prompts_are_refused(bot):
    # an English question about weather still gets the English entry, never the Chinese one
    assert bot.answer([{"role": "user", "content": "weather in Beijing"}], lang="en") != "今日北京晴，15-25℃"
    with pytest.raises(ValueError, match="last message is the user's"):
        bot.answer([{"role": "assistant", "content": "hi"}])
    with pytest.raises(ValueError, match="no user -> assistant exchange"):
        RetrievalBot([_conv("x", "en", "only a user turn")])
