"""Sensitive-word filter: obfuscations are caught, normal customer-service text passes."""

from __future__ import annotations

import pytest

from chatforge.serving.filters import SensitiveFilter, normalise, read_lexicon


@pytest.fixture(scope="module")
def shipped(repo_root) -> SensitiveFilter:
    return SensitiveFilter.from_files(
        [repo_root / "lexicons/sensitive/zh.txt", repo_root / "lexicons/sensitive/en.txt"], mode="block"
    )


@pytest.mark.parametrize(
    ("text", "term"),
    [
        ("ＦＵＣＫ this", "fuck"),  # full-width
        ("what the f\u200bu\u200cck", "fuck"),  # zero-width space and non-joiner inside
        ("you are a BiTcH", "bitch"),  # mixed case
        ("Kill   Yourself", "kill yourself"),  # extra spaces
        ("操你媽", "操你妈"),  # traditional
        ("我要殺了你", "杀了你"),  # traditional inside a sentence
        ("傻\u200d逼客服", "傻逼"),  # zero-width joiner between Chinese characters
        ("哪里有網絡賭博", "网络赌博"),
        ("ＳＢ玩意", "sb玩意"),  # full-width latin + Chinese
        ("\ufeffasshole", "asshole"),  # BOM in front
    ],
)
def test_obfuscated_terms_are_caught(shipped: SensitiveFilter, text: str, term: str):
    result = shipped.apply(text)
    assert result.action == "blocked" and term in result.terms


INNOCENT_EN = [
    "Hello, I'd like to check the status of my order.",
    "My package hasn't arrived yet, can you help?",
    "Can I get a refund for a damaged item?",
    "What is the weather like in Shanghai tomorrow?",
    "Please assess the class of service on my ticket.",
    "I need to reset my password.",
    "How do I change my shipping address?",
    "The assistant was very helpful, thank you!",
    "Could you pass this to a human agent?",
    "I'd like to cancel my subscription.",
    "Is there a discount for students?",
    "My invoice shows the wrong amount.",
    "The shipment was delayed by the storm.",
    "When does the store open on Sunday?",
    "Can I exchange these shoes for a bigger size?",
    "I was charged twice for the same purchase.",
    "Please send me the tracking number.",
    "How long does delivery to Scunthorpe take?",
    "The bass speaker I bought makes a hissing noise.",
    "I'd like to book a table for two at seven.",
    "Do you ship to Hong Kong?",
    "My account was locked after three attempts.",
    "What payment methods do you accept?",
    "Can I speak to the manager about my complaint?",
    "The app crashes when I open my cart.",
    "Thanks, that solved my problem.",
    "Is the cocktail menu available for delivery?",
    "Please skip the gift wrapping.",
    "What's your return policy for electronics?",
    "I'm happy with the service, keep it up!",
    "Analyse the sales figures for the past month.",
    "My kids love the new toy, thank you.",
]

INNOCENT_ZH = [
    "您好，我想查询一下我的订单状态。",
    "我的快递还没到，能帮我查查吗？",
    "这个商品坏了，可以退款吗？",
    "明天上海天气怎么样？",
    "我想修改收货地址。",
    "请帮我开一张发票。",
    "怎么重置我的密码？",
    "你们周末几点开门？",
    "这双鞋能换大一码吗？",
    "同一笔订单被扣了两次钱。",
    "请把物流单号发给我。",
    "我想取消会员自动续费。",
    "学生有优惠吗？",
    "客服态度很好，谢谢！",
    "我要投诉，请帮我转人工。",
    "手机应用打开购物车就闪退。",
    "支持哪些付款方式？",
    "能不能送到香港？",
    "我的账户被锁定了。",
    "请问退货政策是什么？",
    "这款手机的电池能用多久？",
    "帮我预订今晚七点两个人的位子。",
    "北京今天晴，气温十五到二十五度。",
    "我想了解一下你们的保险产品。",
    "快递员说包裹放在门卫了，但我没找到。",
    "这件衣服洗了以后掉色了。",
    "请问积分怎么兑换礼品？",
    "我要办理银行卡挂失。",
    "打死我也想不到这么快就到了，太棒了！",
    "这个问题困扰我很久了，终于解决了。",
    "我想咨询一下医院挂号的流程。",
    "笔记本电脑开不了机，怎么办？",
]


def test_normal_customer_service_sentences_pass(shipped: SensitiveFilter):
    assert len(INNOCENT_EN) >= 30 and len(INNOCENT_ZH) >= 30
    flagged = [
        (t, shipped.apply(t).terms) for t in INNOCENT_EN + INNOCENT_ZH if shipped.apply(t).action != "none"
    ]
    assert flagged == []


def test_mask_mode_stars_exactly_the_original_span():
    f = SensitiveFilter(["fuck", "操你妈"], mode="mask")
    assert f.apply("oh ＦＵＣＫ it").text == "oh **** it"
    assert f.apply("f\u200buck").text == "*\u200b***"  # the invisible character stays, the letters go
    assert f.apply("我说操你媽了").text == "我说***了"
    assert f.apply("fine").action == "none"


def test_latin_terms_match_whole_words_only():
    f = SensitiveFilter(["ass", "cunt"], mode="block")
    assert f.apply("classic assessment in Scunthorpe").action == "none"
    assert f.apply("you ass!").action == "blocked"


def test_normalise_maps_back_to_original_positions():
    text, origin = normalise("Ａ\u200bB 們")
    assert text == "ab 们"
    assert origin == [0, 2, 3, 4]


def test_normalise_folds_chinese_with_the_projects_one_t2s_converter():
    from chatforge.data.lang import to_simplified

    text = "頭髮乾燥 軟體雲計算 非常感謝你的幫助"
    # character by character, as the filter folds: the same converter as clean (official OpenCC t2s)
    folded = normalise(text)[0]
    assert folded == "".join(to_simplified(c) for c in text) == "头发干燥 软体云计算 非常感谢你的帮助"


def test_version_changes_with_terms_and_mode():
    a = SensitiveFilter(["x"], mode="block")
    assert a.version == SensitiveFilter(["X"], mode="block").version  # same after normalisation
    assert a.version != SensitiveFilter(["x", "y"], mode="block").version
    assert a.version != SensitiveFilter(["x"], mode="mask").version


def test_missing_lexicon_says_how_to_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="Fix serve.filter.lexicons in params.yaml"):
        read_lexicon(tmp_path / "nope.txt")
    (tmp_path / "l.txt").write_text("# comment\nfoo  # trailing\n\n bar \n", encoding="utf-8")
    assert read_lexicon(tmp_path / "l.txt") == ["foo", "bar"]
