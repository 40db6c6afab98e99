"""Active <-> passive rewrites: exact expected outputs, and sentences the rules must leave alone."""

from __future__ import annotations

import pytest

from chatforge.data.voice import rewrite_voice

ZH = [
    ("我把杯子打碎了", "杯子被我打碎了"),
    ("杯子被我打碎了", "我把杯子打碎了"),
    ("昨天我把钥匙弄丢了", "昨天钥匙被我弄丢了"),
    ("我不小心把手机摔坏了", "手机不小心被我摔坏了"),
    ("他们把会议推迟了", "会议被他们推迟了"),
    ("妈妈把饭做好了", "饭被妈妈做好了"),
    ("蛋糕被弟弟吃完了", "弟弟把蛋糕吃完了"),
    ("老师把作业收走了", "作业被老师收走了"),
    ("她把新衣服洗干净了", "新衣服被她洗干净了"),
    ("我们的订单被商家取消了", "商家把我们的订单取消了"),
    ("他已经把房间打扫干净了", "房间已经被他打扫干净了"),
    ("订单已经被客服取消了", "客服已经把订单取消了"),
    ("我把这本书看完了", "这本书被我看完了"),
    ("小王把车开走了", "车被小王开走了"),
    ("文件被同事删掉了", "同事把文件删掉了"),
    ("我把钱付了", "钱被我付了"),
    ("衣服被妈妈洗好了", "妈妈把衣服洗好了"),
    # only the confident clause changes; punctuation and the other clause stay
    ("我把杯子打碎了，你把门关上了。", "杯子被我打碎了，你把门关上了。"),
]
ZH_UNTOUCHED = [
    "你把文件发给我吧",  # no result on the verb: an instruction, not a completed action
    "我被他看见了",  # perception verb: 他把我看见了 is not Chinese
    "他被骗了",  # no agent to move in front of 把
    "钱包被人偷了",  # generic agent 人
    "请把门关上",  # imperative, no subject
    "你能把订单取消吗",  # modal between subject and 把
    "窗户被风吹开了",  # jieba joins 风吹: no clear agent
    "查询北京天气",
    "今日北京晴，15-25℃",
    "被子很暖和",
]

EN = [
    ("The chef cooked the meal.", "The meal was cooked by the chef."),
    ("The meal was cooked by the chef.", "The chef cooked the meal."),
    ("I booked a table.", "A table was booked by me."),
    ("A table was booked by me.", "I booked a table."),
    ("She sent the package.", "The package was sent by her."),
    ("They will deliver the package.", "The package will be delivered by them."),
    ("The package will be delivered by them.", "They will deliver the package."),
    ("Tom has fixed the printer.", "The printer has been fixed by Tom."),
    ("The printer has been fixed by Tom.", "Tom has fixed the printer."),
    ("We bought these tickets.", "These tickets were bought by us."),
    ("These tickets were bought by us.", "We bought these tickets."),
    ("My brother broke the window!", "The window was broken by my brother!"),
    ("He wrote the report.", "The report was written by him."),
    ("You cancelled my order.", "My order was cancelled by you."),
    ("The manager has approved the refunds.", "The refunds have been approved by the manager."),
    ("Mary will take the photos.", "The photos will be taken by Mary."),
    ("The letters were sent by Anna.", "Anna sent the letters."),
    ("I booked a table. Thanks!", "A table was booked by me. Thanks!"),
]
EN_UNTOUCHED = [
    "I think so.",
    "Did you book a table?",  # question
    "The cat sat on the mat.",  # intransitive, prepositional phrase
    "She is a doctor.",
    "They sent the package yesterday.",  # trailing adverb: not a shape the rule knows
    "I want to book a flight to London.",
    "Hello there.",
    "Can you help me?",
    "He gave me the book.",  # two objects
    "The team visited the factory.",  # verb not in the table
    "Him booked a table.",  # object pronoun as subject
]


@pytest.mark.parametrize(("before", "after"), ZH)
def test_zh_rewrites(before: str, after: str):
    assert rewrite_voice(before, lang="zh") == after


@pytest.mark.parametrize("text", ZH_UNTOUCHED)
def test_zh_left_alone(text: str):
    assert rewrite_voice(text, lang="zh") is None


@pytest.mark.parametrize(("before", "after"), EN)
def test_en_rewrites(before: str, after: str):
    assert rewrite_voice(before, lang="en") == after


@pytest.mark.parametrize("text", EN_UNTOUCHED)
def test_en_left_alone(text: str):
    assert rewrite_voice(text, lang="en") is None


def test_tables_are_large_enough_and_round_trip():
    assert len(ZH) >= 15 and len(EN) >= 15
    for before, after in EN[:12]:
        assert rewrite_voice(after, lang="en") == before
