"""Generate the demo corpus chatforge ships: messy bilingual customer-service conversations, clean
zh<->en sentence pairs, the synonym lexicon and the entity gazetteers.

    python scripts/make_demo_corpus.py            # rewrites the committed files byte for byte
    python scripts/make_demo_corpus.py --seed 7 --conversations 20000 --out-dir /tmp/big

Writes, under --out-dir (default: the repository root):
  data/raw/demo/conversations.json   the seed conversations JSON, one conversation a line, messy on purpose
  data/raw/demo/parallel.tsv         `zh<TAB>en` pairs, clean, rendered from the same templates
  lexicons/synonyms.tsv              variant<TAB>canonical for every synonym variant injected
  lexicons/gazetteers/{zh,en}/*.txt  the slot values the generator draws from, plus unused extras

Every sentence is a (Chinese, English) template pair with the same slots, so a Chinese conversation
and an English one are renderings of the same dialogue plan and every parallel pair is a true
translation. Randomness comes only from `random.Random` seeded by --seed, so the output depends on
the seed, the options, this file and the OpenCC tables (for the traditional-Chinese conversations).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from random import Random
from typing import Annotated

import typer

from chatforge.io import write_text

Pair = tuple[str, str]  # (zh, en) renderings of one sentence; slots in {braces}
Slots = dict[str, Pair]

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SEED = 20240520
DEFAULT_CONVERSATIONS = 3600

# ---------------------------------------------------------------------------------------------------
# Rates of the mess, all seeded. Per conversation unless marked per turn. Kept in one place so a
# reviewer sees how dirty the corpus is and the clean stage's metrics can be checked against them.
ZH_SHARE = 0.58  # share of conversations in Chinese
RATES = {
    "exact_duplicate": 0.03,  # same messages, new id
    "near_duplicate": 0.03,  # same messages up to punctuation, case, spaces and emoji
    "traditional": 0.03,  # Chinese conversations rendered in traditional characters (of all)
    "opening": 0.15,  # a greeting exchange before the request
    "clarify": 0.35,  # the request lacks a slot; the assistant asks for it
    "closing": 0.35,  # a thanks/bye exchange at the end
    "synonym_variant": 0.45,  # per canonical token in a user turn: replaced by a variant spelling
    "extra_pii": 0.04,  # a phone number, email or ID number added to a user turn
    "over_long": 0.004,  # a user turn padded past 2,000 characters
    "empty_ish": 0.006,  # a user turn that is empty, blank or only markup
    "html": 0.05,  # per turn: HTML tags or entities from a web chat export
    "full_width": 0.04,  # per turn: full-width letters and digits (ＡＢＣ１２３)
    "emoji": 0.06,  # per turn: emoji
    "symbols": 0.03,  # per turn: stray decoration such as ★ ~~ ###
    "zero_width": 0.02,  # per turn: zero-width characters
}
# Class sizes differ by more than 5x on purpose: the balance stage has to even them out.
INTENT_WEIGHTS = {
    "order_status": 700,
    "weather": 480,
    "refund": 420,
    "shipping": 380,
    "product_info": 300,
    "returns": 260,
    "account": 230,
    "payment": 200,
    "greeting": 150,
    "goodbye": 140,
    "store_hours": 120,
    "complaint": 110,
    "coupon": 100,
    "invoice": 90,
}

# ---------------------------------------------------------------------------------------------------
# Entities: (zh, en, used in the corpus). Unused ones go only to the gazetteers, so entity replacement
# in the augment stage has values the corpus never shows. Nested names (York / New York, iPhone 15 /
# iPhone 15 Pro, 小米手环 / 小米手环8) are there so longest-match boundaries get exercised.
CITIES: list[tuple[str, str, bool]] = [
    ("北京", "Beijing", True),
    ("上海", "Shanghai", True),
    ("广州", "Guangzhou", True),
    ("深圳", "Shenzhen", True),
    ("杭州", "Hangzhou", True),
    ("成都", "Chengdu", True),
    ("南京", "Nanjing", True),
    ("武汉", "Wuhan", True),
    ("西安", "Xi'an", True),
    ("重庆", "Chongqing", True),
    ("天津", "Tianjin", True),
    ("苏州", "Suzhou", True),
    ("香港", "Hong Kong", True),
    ("纽约", "New York", True),
    ("约克", "York", True),
    ("伦敦", "London", True),
    ("东京", "Tokyo", True),
    ("新加坡", "Singapore", True),
    ("长沙", "Changsha", False),
    ("青岛", "Qingdao", False),
    ("厦门", "Xiamen", False),
    ("昆明", "Kunming", False),
    ("大连", "Dalian", False),
    ("郑州", "Zhengzhou", False),
    ("巴黎", "Paris", False),
    ("悉尼", "Sydney", False),
    ("新泽西", "New Jersey", False),
]
# Chinese-only and English-only gazetteer extras that nest with a city above.
CITY_EXTRAS = {"zh": ["北京市", "上海市", "北京南站"], "en": ["Jersey", "Newcastle"]}
PRODUCTS: list[tuple[str, str, bool]] = [
    ("无线蓝牙耳机", "wireless Bluetooth earbuds", True),
    ("智能手表", "smart watch", True),
    ("华为Mate 60", "Huawei Mate 60", True),
    ("华为Mate 60 Pro", "Huawei Mate 60 Pro", True),
    ("iPhone 15", "iPhone 15", True),
    ("iPhone 15 Pro", "iPhone 15 Pro", True),
    ("小米手环", "Mi Band", True),
    ("小米手环8", "Mi Band 8", True),
    ("机械键盘", "mechanical keyboard", True),
    ("空气净化器", "air purifier", True),
    ("电动牙刷", "electric toothbrush", True),
    ("保温杯", "insulated bottle", True),
    ("运动鞋", "running shoes", True),
    ("羽绒服", "down jacket", True),
    ("扫地机器人", "robot vacuum", True),
    ("移动电源", "power bank", True),
    ("咖啡机", "coffee machine", True),
    ("双肩包", "backpack", True),
    ("电饭煲", "rice cooker", False),
    ("吹风机", "hair dryer", False),
    ("台灯", "desk lamp", False),
    ("瑜伽垫", "yoga mat", False),
    ("蓝牙音箱", "Bluetooth speaker", False),
    ("平板电脑", "tablet", False),
    ("行李箱", "suitcase", False),
]
PERSONS: list[tuple[str, str, bool]] = [
    ("张伟", "Zhang Wei", True),
    ("王芳", "Wang Fang", True),
    ("李娜", "Li Na", True),
    ("刘洋", "Liu Yang", True),
    ("陈静", "Chen Jing", True),
    ("杨磊", "Yang Lei", True),
    ("赵敏", "Zhao Min", True),
    ("黄强", "Huang Qiang", True),
    ("周杰", "Zhou Jie", True),
    ("吴婷", "Wu Ting", True),
    ("林小雨", "Lin Xiaoyu", True),
    ("约翰·史密斯", "John Smith", True),
    ("艾米丽·陈", "Emily Chen", True),
    ("大卫·李", "David Lee", True),
    ("莎拉·约翰逊", "Sarah Johnson", True),
    ("孙丽", "Sun Li", False),
    ("马超", "Ma Chao", False),
    ("郭晶晶", "Guo Jingjing", False),
    ("迈克尔·布朗", "Michael Brown", False),
    ("安娜", "Anna", False),
    ("安娜·王", "Anna Wang", False),
]
CONDITIONS: list[Pair] = [
    ("晴", "sunny"),
    ("多云", "cloudy"),
    ("阴", "overcast"),
    ("晴转多云", "sunny turning cloudy"),
    ("小雨", "light rain"),
    ("中雨", "moderate rain"),
    ("雷阵雨", "thunderstorms"),
    ("雾", "foggy"),
]
RAINY = {"小雨", "中雨", "雷阵雨"}
DAYS: list[tuple[str, str, str]] = [
    ("今天", "today", "Today"),
    ("今日", "today", "Today"),
    ("明天", "tomorrow", "Tomorrow"),
    ("后天", "the day after tomorrow", "The day after tomorrow"),
]
STATUSES = ("shipped", "out_for_delivery", "delivered", "pending")
REASONS: list[tuple[str, str, str]] = [
    ("尺码不合适", "the size doesn't fit", "The size doesn't fit"),
    ("有质量问题", "it has a quality problem", "It has a quality problem"),
    ("颜色和图片不一样", "the color doesn't match the picture", "The color doesn't match the picture"),
    ("收到时包装破损了", "it arrived damaged", "It arrived damaged"),
    ("买错型号了", "I bought the wrong model", "I bought the wrong model"),
]
METHODS: list[Pair] = [
    ("微信支付", "WeChat Pay"),
    ("支付宝", "Alipay"),
    ("银行卡", "a bank card"),
    ("信用卡", "a credit card"),
    ("Apple Pay", "Apple Pay"),
]
COURIERS: list[tuple[str, str, str]] = [
    ("顺丰", "SF Express", "SF"),
    ("京东物流", "JD Logistics", "JD"),
    ("中通快递", "ZTO Express", "ZT"),
    ("圆通速递", "YTO Express", "YT"),
]
COLORS: list[Pair] = [
    ("黑色", "black"),
    ("白色", "white"),
    ("蓝色", "blue"),
    ("红色", "red"),
    ("灰色", "gray"),
    ("粉色", "pink"),
]
COMPANIES: list[Pair] = [
    ("北京星辰科技有限公司", "Beijing Xingchen Technology Co., Ltd."),
    ("上海云帆贸易有限公司", "Shanghai Yunfan Trading Co., Ltd."),
    ("深圳蓝海电子有限公司", "Shenzhen Lanhai Electronics Co., Ltd."),
    ("杭州青禾文化传媒有限公司", "Hangzhou Qinghe Media Co., Ltd."),
]
MONTHS_EN = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)
MONTH_DAYS_2024 = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
ID_REGIONS = ("110101", "310104", "440106", "510107", "330106", "420102")
EMAIL_DOMAINS = ("example.com", "mail.example.cn", "example.org", "example.net")


# ---------------------------------------------------------------------------------------------------
# Digit strings. Order and tracking numbers are drawn so that a sensible PII masker leaves them alone
# (no embedded Chinese mobile number, no valid Luhn check digit); card and ID numbers are drawn valid.
def _luhn_total(digits: str, *, double_rightmost: bool) -> int:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if (i % 2 == 0) == double_rightmost else 1)
        total += d - 9 if d > 9 else d
    return total


def luhn_valid(digits: str) -> bool:
    return _luhn_total(digits, double_rightmost=False) % 10 == 0


MOBILE_INSIDE = re.compile(r"1[3-9]\d{9}")


def safe_digits(rng: Random, prefix: str, n_random: int) -> str:
    while True:
        s = f"{prefix}{rng.randrange(10**n_random):0{n_random}d}"
        digits = re.sub(r"\D", "", s)
        if not luhn_valid(digits) and not MOBILE_INSIDE.search(digits):
            return s


def card_number(rng: Random) -> str:
    body = f"{rng.choice(('622202', '622848', '436742'))}{rng.randrange(10**9):09d}"
    return f"{body}{-_luhn_total(body, double_rightmost=True) % 10}"


def id_number(rng: Random) -> str:
    """An 18-digit Chinese resident ID with a correct ISO 7064 MOD 11-2 check character."""
    year, month = rng.randint(1965, 2004), rng.randint(1, 12)
    day = rng.randint(1, MONTH_DAYS_2024[month - 1] if month != 2 else 28)
    body = f"{rng.choice(ID_REGIONS)}{year}{month:02d}{day:02d}{rng.randint(0, 999):03d}"
    weights = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
    return body + "10X98765432"[sum(int(c) * w for c, w in zip(body, weights, strict=True)) % 11]


def month_day(day_of_year: int) -> tuple[int, int]:
    """(month, day) of the 0-based day of 2024."""
    for month, length in enumerate(MONTH_DAYS_2024, 1):
        if day_of_year < length:
            return month, day_of_year + 1
        day_of_year -= length
    raise ValueError(f"day {day_of_year} is past the end of 2024")


USED_CITIES = [c for c in CITIES if c[2]]
USED_PRODUCTS = [p for p in PRODUCTS if p[2]]
USED_PERSONS = [p for p in PERSONS if p[2]]


def sample_slots(rng: Random) -> Slots:
    """Every slot any template may use, drawn afresh for one conversation (or one parallel pair)."""
    city = rng.choice(USED_CITIES)
    product = rng.choice(USED_PRODUCTS)
    person = rng.choice(USED_PERSONS)
    day = rng.choice(DAYS)
    cond = rng.choice(CONDITIONS)
    lo = rng.randint(2, 26)
    hi = lo + rng.randint(3, 10)
    # Order numbers start with the order date; the date slot (delivery, refund, ...) falls a few days later.
    ordered = rng.randint(0, 355)
    order_month, order_dom = month_day(ordered)
    month, dom = month_day(ordered + rng.randint(1, 7))
    if rng.random() < 0.3:
        order = f"#{rng.choice('ABCDEFGHJKLMNPQRSTUVWXYZ')}{rng.randint(10000, 99999)}"
    else:
        order = safe_digits(rng, f"2024{order_month:02d}{order_dom:02d}", 5)
    courier = rng.choice(COURIERS)
    reason = rng.choice(REASONS)
    phone = f"1{rng.choice('3456789')}{rng.randrange(10**9):09d}"
    local = person[1].lower().replace(" ", rng.choice((".", "_", ""))) + rng.choice(
        ("", str(rng.randint(1, 99)))
    )
    amount = rng.choice((39, 59, 88, 99, 128, 159, 199, 239, 299, 399, 499, 699, 899, 1299, 2999))
    threshold = rng.choice((99, 199, 299, 399))
    fee = rng.choice((6, 8, 10, 12))
    if cond[0] in RAINY:
        umbrella = (
            f"建议带伞，{day[0]}{city[0]}有{cond[0]}。",
            f"Yes, take an umbrella: {cond[1]} is expected in {city[1]} {day[1]}.",
        )
    else:
        umbrella = (
            f"不用带伞，{day[0]}{city[0]}没有降雨。",
            f"No need for an umbrella; no rain is expected in {city[1]} {day[1]}.",
        )
    if hi < 12:
        clothes = ("天气比较冷，建议穿羽绒服或厚外套。", "It's cold, so wear a down jacket or a warm coat.")
    elif hi < 22:
        clothes = (
            "早晚偏凉，建议穿外套或卫衣。",
            "Mornings and evenings are cool, so bring a jacket or a hoodie.",
        )
    else:
        clothes = ("天气较热，穿短袖就可以。", "It's warm, so a T-shirt will do.")
    code = rng.choice(("SAVE", "NEW", "VIP", "GIFT", "SPRING", "DOUBLE")) + str(
        rng.choice((10, 20, 30, 50, 100))
    )

    def same(s: str) -> Pair:
        return (s, s)

    return {
        "city": city[:2],
        "product": product[:2],
        "name": person[:2],
        "cond": cond,
        "day": (day[0], day[1]),
        "Day": (day[0], day[2]),
        "lo": same(str(lo)),
        "hi": same(str(hi)),
        "umbrella": umbrella,
        "clothes": clothes,
        "date": (f"{month}月{dom}日", f"{MONTHS_EN[month - 1]} {dom}"),
        "order": same(order),
        "tracking": same(safe_digits(rng, courier[2], 12)),
        "courier": courier[:2],
        "amount": (f"{amount}元", f"{amount} yuan"),
        "price": (f"{amount}元", f"{amount} yuan"),
        "threshold": (f"{threshold}元", f"{threshold} yuan"),
        "fee": (f"{fee}元", f"{fee} yuan"),
        "days": same(str(rng.randint(3, 7))),
        "months": same(str(rng.choice((6, 12, 24)))),
        "open": same(str(rng.choice((8, 9, 10)))),
        "close": same(str(rng.choice((20, 21, 22)))),
        "reason": reason[:2],
        "Reason": (reason[0], reason[2]),
        "method": rng.choice(METHODS),
        "color": rng.choice(COLORS),
        "company": rng.choice(COMPANIES),
        "code": same(code),
        "phone": same(phone),
        "email": same(f"{local}@{rng.choice(EMAIL_DOMAINS)}"),
        "idnum": same(id_number(rng)),
        "card": same(card_number(rng)),
    }


# ---------------------------------------------------------------------------------------------------
# Dialogue plans. A Case is one thing a customer wants; its answers depend only on the intent, the case
# and the slots, so a model can learn them and BLEU against them means something.
@dataclass(frozen=True)
class Followup:
    user: tuple[Pair, ...]
    reply: tuple[Pair, ...]


@dataclass(frozen=True)
class Case:
    ask: tuple[Pair, ...]  # the request, carrying every slot the answer uses
    answer: tuple[Pair, ...]
    weight: int = 1
    ask_bare: tuple[Pair, ...] = ()  # the request missing a slot: the assistant must ask for it
    clarify: tuple[Pair, ...] = ()
    give: tuple[Pair, ...] = ()
    followups: tuple[Followup, ...] = ()


@dataclass(frozen=True)
class Intent:
    name: str
    cases: tuple[Case, ...]
    followups: tuple[Followup, ...] = ()
    max_followups: int = 1
    opening_allowed: bool = True
    closing_allowed: bool = True


def F(user: Sequence[Pair], reply: Sequence[Pair]) -> Followup:
    return Followup(tuple(user), tuple(reply))


ORDER_CLARIFY: tuple[Pair, ...] = (
    ("请问您的订单号是多少？", "Could you tell me your order number?"),
    ("麻烦提供一下订单号，我帮您查询。", "Please share your order number and I'll look it up."),
)
ORDER_GIVE: tuple[Pair, ...] = (
    ("{order}", "{order}"),
    ("订单号是{order}", "The order number is {order}"),
    ("是{order}", "It's {order}"),
    ("{order}，麻烦快点", "{order}, please hurry"),
    ("好的，{order}", "Okay, {order}"),
)
CITY_GIVE: tuple[Pair, ...] = (
    ("{city}", "{city}"),
    ("{city}的", "{city}, please"),
    ("在{city}", "In {city}"),
    ("查{city}", "{city}"),
)
ORDER_ASKS: tuple[Pair, ...] = (
    ("我的订单{order}到哪了？", "Where is my order {order}?"),
    ("查一下订单{order}的状态", "Check the status of order {order}"),
    ("订单号{order}，怎么还没到？", "Order number {order}, why hasn't it arrived yet?"),
    ("帮我看看{order}这个订单", "Can you look up order {order} for me?"),
    (
        "我买的{product}现在什么状态？订单号是{order}",
        "What's the status of the {product} I bought? The order number is {order}",
    ),
    ("请问订单{order}发货了吗？", "Has order {order} shipped yet?"),
    ("{order}这单什么时候能到", "When will order {order} arrive?"),
)
ORDER_BARE: tuple[Pair, ...] = (
    ("我的订单到哪了？", "Where is my order?"),
    ("查询订单状态", "Check my order status"),
    ("我买的{product}还没到", "The {product} I ordered hasn't arrived"),
    ("帮我查下订单", "Can you check my order?"),
    ("我的快递怎么还没到啊", "Why hasn't my package arrived yet?"),
)
ORDER_FOLLOWUPS = (
    F(
        [
            ("能不能快一点？", "Can it be any faster?"),
            ("太慢了，能催一下吗？", "This is too slow, can you push it?"),
        ],
        [
            (
                "很抱歉让您久等了，已为您催促物流，请耐心等待。",
                "Sorry for the wait. I've asked the courier to speed it up.",
            )
        ],
    ),
    F(
        [
            ("快递单号是多少？", "What's the tracking number?"),
            ("能给我物流单号吗", "Can I have the tracking number?"),
        ],
        [
            (
                "快递单号是{tracking}，由{courier}配送，可在官网查询物流。",
                "The tracking number is {tracking}, shipped with {courier}; you can track it on their website.",
            )
        ],
    ),
)
REFUND_CLARIFY: tuple[Pair, ...] = (
    ("请提供一下需要退款的订单号。", "Please give me the order number for the refund."),
    ("请问您的订单号是多少？", "Could you tell me your order number?"),
)

INTENTS: tuple[Intent, ...] = (
    Intent(
        "weather",
        (
            Case(
                ask=(
                    ("查询{city}天气", "Check the weather in {city}"),
                    ("{day}{city}天气怎么样？", "What's the weather like in {city} {day}?"),
                    ("{city}{day}会下雨吗？", "Will it rain in {city} {day}?"),
                    ("帮我查一下{city}{day}的天气", "Can you check the weather in {city} for {day}?"),
                    (
                        "我{day}要去{city}，那边天气如何？",
                        "I'm going to {city} {day}. How's the weather there?",
                    ),
                    ("{city}{day}气温多少度？", "What's the temperature in {city} {day}?"),
                    ("{city}天气预报", "Weather forecast for {city}"),
                ),
                answer=(
                    ("{day}{city}{cond}，{lo}-{hi}℃", "{Day} in {city}: {cond}, {lo}-{hi}°C"),
                    (
                        "{city}{day}{cond}，最低气温{lo}℃，最高{hi}℃。",
                        "{city} {day}: {cond}, low of {lo}°C, high of {hi}°C.",
                    ),
                ),
                ask_bare=(
                    ("查一下天气", "Check the weather for me"),
                    ("{day}天气怎么样？", "What's the weather like {day}?"),
                    ("我想查天气", "I want to check the weather"),
                    ("{day}会下雨吗", "Is it going to rain {day}?"),
                ),
                clarify=(
                    ("请问您想查询哪个城市的天气？", "Which city would you like the weather for?"),
                    ("请告诉我城市名称。", "Which city are you asking about?"),
                ),
                give=CITY_GIVE,
            ),
        ),
        followups=(
            F(
                [("需要带伞吗？", "Do I need an umbrella?"), ("要不要带伞", "Should I bring an umbrella?")],
                [("{umbrella}", "{umbrella}")],
            ),
            F([("穿什么衣服合适？", "What should I wear?")], [("{clothes}", "{clothes}")]),
        ),
        max_followups=2,
    ),
    Intent(
        "order_status",
        tuple(
            Case(
                ask=ORDER_ASKS,
                ask_bare=ORDER_BARE,
                clarify=ORDER_CLARIFY,
                give=ORDER_GIVE,
                weight=w,
                answer=a,
            )
            for w, a in (
                (
                    4,
                    (
                        (
                            "您的订单{order}已发货，预计{date}送达。",
                            "Your order {order} has shipped and should arrive by {date}.",
                        ),
                        (
                            "订单{order}已经发出了，预计{date}送到。",
                            "Order {order} is on its way and should arrive by {date}.",
                        ),
                    ),
                ),
                (
                    2,
                    (
                        (
                            "您的订单{order}正在派送中，今天就能送到。",
                            "Your order {order} is out for delivery and will arrive today.",
                        ),
                    ),
                ),
                (
                    2,
                    (
                        (
                            "系统显示订单{order}已于{date}签收。",
                            "Our records show order {order} was delivered on {date}.",
                        ),
                    ),
                ),
                (
                    1,
                    (
                        (
                            "订单{order}还在仓库备货，预计{date}前发货。",
                            "Order {order} is still being prepared at the warehouse and will ship by {date}.",
                        ),
                    ),
                ),
            )
        ),
        followups=ORDER_FOLLOWUPS,
    ),
    Intent(
        "refund",
        (
            Case(
                weight=3,
                ask=(
                    ("我要退款，订单号{order}", "I want a refund for order {order}"),
                    (
                        "{product}不想要了，能退款吗？订单{order}",
                        "I don't want the {product} anymore. Can I get a refund? Order {order}",
                    ),
                    (
                        "申请退款，订单号是{order}，金额{amount}",
                        "I'd like to request a refund for order {order}, amount {amount}",
                    ),
                    ("订单{order}帮我退款吧", "Please refund order {order}"),
                ),
                answer=(
                    (
                        "已为您提交订单{order}的退款申请，款项将在{days}个工作日内原路退回。",
                        "I've submitted a refund request for order {order}. The money will go back to your original payment method within {days} business days.",
                    ),
                ),
                ask_bare=(
                    ("我想退款", "I want a refund"),
                    ("怎么申请退款？", "How do I request a refund?"),
                    ("东西不想要了，退钱", "I don't want it anymore, give me my money back"),
                    ("{product}能退款吗", "Can I get a refund for the {product}?"),
                ),
                clarify=REFUND_CLARIFY,
                give=ORDER_GIVE,
            ),
            Case(
                weight=2,
                ask=(
                    ("我的退款什么时候到账？订单{order}", "When will my refund arrive? Order {order}"),
                    ("订单{order}的退款怎么还没到？", "Why hasn't the refund for order {order} arrived?"),
                    ("查一下{order}的退款进度", "Check the refund progress for {order}"),
                ),
                answer=(
                    (
                        "订单{order}的退款{amount}已于{date}处理，预计{days}个工作日内到账。",
                        "The refund of {amount} for order {order} was processed on {date} and should reach your account within {days} business days.",
                    ),
                ),
                ask_bare=(
                    ("退款怎么还没到账？", "Why haven't I received my refund?"),
                    ("我的退款到哪一步了", "Where is my refund at?"),
                ),
                clarify=REFUND_CLARIFY,
                give=ORDER_GIVE,
            ),
        ),
        followups=(
            F(
                [
                    ("可以退到微信吗？", "Can the refund go to WeChat Pay?"),
                    ("能退到别的卡上吗", "Can it be refunded to another card?"),
                ],
                [
                    (
                        "退款会原路返回到您付款时使用的账户。",
                        "Refunds always go back to the account you paid with.",
                    )
                ],
            ),
            F(
                [("运费也退吗？", "Is the shipping fee refunded too?")],
                [
                    (
                        "如果是质量问题，运费会一并退还。",
                        "If it's a quality issue, the shipping fee is refunded as well.",
                    )
                ],
            ),
        ),
    ),
    Intent(
        "shipping",
        (
            Case(
                weight=3,
                ask=(
                    ("寄到{city}要几天？", "How many days does delivery to {city} take?"),
                    (
                        "{product}发货到{city}多久能到？",
                        "How long does it take to ship the {product} to {city}?",
                    ),
                    ("你们发{city}一般几天到", "How long do deliveries to {city} usually take?"),
                    ("下单后多久能送到{city}？", "After I order, how soon can it get to {city}?"),
                ),
                answer=(
                    (
                        "发往{city}的订单一般{days}天内送达。",
                        "Orders to {city} usually arrive within {days} days.",
                    ),
                ),
                ask_bare=(
                    ("发货后几天能到？", "How long does delivery take after shipping?"),
                    ("一般多久能收到货", "How long until I get my package?"),
                ),
                clarify=(("请问收货地址在哪个城市？", "Which city is the delivery address in?"),),
                give=CITY_GIVE + (("寄到{city}", "To {city}"),),
            ),
            Case(
                weight=2,
                ask=(
                    ("运费怎么算？", "How is shipping charged?"),
                    ("买{product}包邮吗？", "Is shipping free for the {product}?"),
                    ("要运费吗", "Do I have to pay for shipping?"),
                ),
                answer=(
                    (
                        "订单满{threshold}包邮，不满收取运费{fee}。",
                        "Orders over {threshold} ship free; otherwise shipping costs {fee}.",
                    ),
                ),
            ),
            Case(
                ask=(
                    ("你们用什么快递？", "Which courier do you use?"),
                    ("能发{courier}吗？", "Can you ship with {courier}?"),
                    ("{product}用什么快递发？", "Which courier ships the {product}?"),
                    ("寄到{city}走哪家快递", "Which courier do you use for {city}?"),
                ),
                answer=(
                    (
                        "我们默认使用{courier}发货，偏远地区可能改用邮政。",
                        "We ship with {courier} by default; remote areas may use China Post.",
                    ),
                ),
            ),
            Case(
                weight=2,
                ask=(
                    (
                        "订单{order}的收货地址能改成{city}吗？",
                        "Can I change the delivery address of order {order} to {city}?",
                    ),
                    (
                        "{order}这单我想改地址，改到{city}",
                        "I want to change the address on order {order} to {city}",
                    ),
                ),
                answer=(
                    (
                        "订单{order}尚未发货，已为您把收货城市改为{city}。",
                        "Order {order} hasn't shipped yet, so I've changed the delivery city to {city}.",
                    ),
                ),
                ask_bare=(
                    ("我想改一下收货地址", "I'd like to change my delivery address"),
                    ("地址填错了能改吗？", "I entered the wrong address, can I change it?"),
                ),
                clarify=(
                    (
                        "请提供订单号和新的收货城市。",
                        "Please give me the order number and the new delivery city.",
                    ),
                ),
                give=(
                    ("订单{order}，改到{city}", "Order {order}, change it to {city}"),
                    (
                        "{order}，新地址在{city}，收件人{name}，电话{phone}",
                        "{order}, the new address is in {city}, recipient {name}, phone {phone}",
                    ),
                ),
            ),
        ),
    ),
    Intent(
        "returns",
        (
            Case(
                weight=3,
                ask=(
                    (
                        "我要退货，订单{order}的{product}{reason}",
                        "I want to return the {product} from order {order} because {reason}",
                    ),
                    ("订单{order}申请退货，{reason}", "I'd like to return order {order}. {Reason}."),
                    (
                        "{product}可以退货吗？{reason}，订单号{order}",
                        "Can I return the {product}? {Reason}. The order number is {order}",
                    ),
                ),
                answer=(
                    (
                        "已为您创建订单{order}的退货申请，请在{days}天内将{product}寄回，退回运费由我们承担。",
                        "I've opened a return for order {order}. Please send the {product} back within {days} days; we'll cover the return shipping.",
                    ),
                ),
                ask_bare=(
                    ("我要退货，{product}{reason}", "I want to return the {product} because {reason}"),
                    ("{product}{reason}，怎么退？", "{Reason} with the {product}. How do I return it?"),
                ),
                clarify=ORDER_CLARIFY,
                give=ORDER_GIVE,
            ),
            Case(
                ask=(
                    ("你们支持七天无理由退货吗？", "Do you offer 7-day no-questions-asked returns?"),
                    ("退货政策是什么？", "What's your return policy?"),
                    ("{product}不喜欢能退吗？", "Can I return the {product} if I don't like it?"),
                    (
                        "买的{color}{product}收到后不想要了，能退吗",
                        "I got the {product} in {color} and don't want it anymore. Can I return it?",
                    ),
                    ("{product}拆封了还能退吗？", "Can I still return the {product} after opening it?"),
                ),
                answer=(
                    (
                        "支持，签收后7天内商品完好即可无理由退货。",
                        "Yes, you can return any item within 7 days of delivery as long as it is in good condition.",
                    ),
                ),
            ),
        ),
        followups=(
            F(
                [("退货地址是哪里？", "Where do I send the return?")],
                [
                    (
                        "退货地址会在退货申请通过后以短信发给您。",
                        "We'll text you the return address once the return is approved.",
                    )
                ],
            ),
            F(
                [("可以上门取件吗？", "Can you pick it up from my home?")],
                [
                    (
                        "可以，提交退货后选择上门取件，{courier}会联系您。",
                        "Yes. Choose home pickup after submitting the return and {courier} will contact you.",
                    )
                ],
            ),
        ),
    ),
    Intent(
        "payment",
        (
            Case(
                weight=2,
                ask=(
                    ("支持{method}吗？", "Do you accept {method}?"),
                    ("可以用什么方式付款？", "What payment methods do you accept?"),
                    ("能分期付款吗", "Can I pay in installments?"),
                    ("买{product}能用{method}吗？", "Can I buy the {product} with {method}?"),
                    ("{amount}的订单能分期吗", "Can I pay for a {amount} order in installments?"),
                ),
                answer=(
                    (
                        "我们支持微信支付、支付宝、银行卡和信用卡付款，信用卡可分期。",
                        "We accept WeChat Pay, Alipay, bank cards and credit cards; credit cards can pay in installments.",
                    ),
                ),
            ),
            Case(
                weight=2,
                ask=(
                    (
                        "用{method}付款一直失败怎么办？",
                        "My payment with {method} keeps failing. What should I do?",
                    ),
                    ("付款失败了，订单{order}", "The payment failed for order {order}"),
                    ("为什么付不了款", "Why can't I pay?"),
                    ("买{product}付款时提示支付失败", "Paying for the {product} says the payment failed"),
                ),
                answer=(
                    (
                        "很抱歉给您带来不便，请检查账户余额或换一种支付方式重试，未付款订单会保留30分钟。",
                        "Sorry for the trouble. Please check your balance or try another payment method; unpaid orders are held for 30 minutes.",
                    ),
                ),
            ),
            Case(
                weight=2,
                ask=(
                    (
                        "订单{order}被扣了两次钱，每次{amount}",
                        "I was charged twice for order {order}, {amount} each time",
                    ),
                    (
                        "我付了两次款，订单{order}，卡号{card}",
                        "I paid twice for order {order}, card number {card}",
                    ),
                ),
                answer=(
                    (
                        "已核实订单{order}重复扣款{amount}，多扣的款项将在{days}个工作日内退回。",
                        "I've confirmed the duplicate charge of {amount} on order {order}; it will be refunded within {days} business days.",
                    ),
                ),
                ask_bare=(
                    ("我被重复扣款了", "I've been charged twice"),
                    ("钱扣了两次，卡号{card}", "I was charged twice, my card number is {card}"),
                ),
                clarify=(("请提供订单号，我帮您核实。", "Please share the order number so I can check."),),
                give=ORDER_GIVE,
            ),
        ),
    ),
    Intent(
        "account",
        (
            Case(
                weight=3,
                ask=(
                    ("忘记密码了怎么办？", "I forgot my password, what should I do?"),
                    ("怎么重置密码", "How do I reset my password?"),
                    ("登录不上去，一直提示密码错误", "I can't log in, it keeps saying my password is wrong"),
                    ("我的账号{name}密码忘了", "I forgot the password for my account {name}"),
                ),
                answer=(
                    (
                        "请在登录页点击“忘记密码”，用绑定手机号接收验证码即可重置。",
                        "Tap 'Forgot password' on the login page and reset it with the code sent to your registered phone.",
                    ),
                ),
                followups=(
                    F(
                        [("手机号换了，收不到验证码", "I changed my phone number and don't get the code")],
                        [
                            (
                                "您可以用绑定邮箱找回密码，或联系人工客服核实身份后更换手机号。",
                                "You can recover it through your registered email, or ask a human agent to verify your identity and change the number.",
                            )
                        ],
                    ),
                ),
            ),
            Case(
                ask=(
                    ("我想把手机号换成{phone}", "I want to change my phone number to {phone}"),
                    ("绑定的手机号要改成{phone}", "Please change my registered phone number to {phone}"),
                ),
                answer=(
                    (
                        "已向新手机号发送验证码，请在5分钟内输入完成绑定。",
                        "A verification code has been sent to the new number; enter it within 5 minutes to finish.",
                    ),
                ),
            ),
            Case(
                ask=(
                    ("账号被锁定了", "My account is locked"),
                    ("账户{name}登录不了，提示已锁定", "Account {name} can't log in, it says it's locked"),
                    ("我的账号{name}被锁了怎么办", "My account {name} is locked, what do I do?"),
                ),
                answer=(
                    (
                        "为了安全，连续输错5次密码会锁定账号30分钟，之后即可重新登录。",
                        "For security, five wrong passwords lock the account for 30 minutes; you can log in again after that.",
                    ),
                ),
            ),
            Case(
                ask=(
                    ("怎么修改绑定邮箱？新的是{email}", "How do I change my email? The new one is {email}"),
                    ("邮箱换成{email}", "Change my email to {email}"),
                ),
                answer=(
                    (
                        "请在“账户设置-邮箱”中修改，新邮箱会收到一封确认邮件。",
                        "Go to Account Settings > Email to change it; the new address will get a confirmation email.",
                    ),
                ),
            ),
            Case(
                ask=(
                    (
                        "实名认证身份证号{idnum}填错了怎么改？",
                        "I entered the wrong ID number {idnum} for verification. How do I fix it?",
                    ),
                ),
                answer=(
                    (
                        "实名信息提交后无法自行修改，请联系人工客服核实身份后更正。",
                        "Verified identity details can't be edited yourself; a human agent can correct them after checking your identity.",
                    ),
                ),
            ),
        ),
    ),
    Intent(
        "product_info",
        (
            Case(
                weight=3,
                ask=(
                    ("{product}多少钱？", "How much is the {product}?"),
                    ("{product}现在什么价格", "What's the price of the {product} now?"),
                    ("{product}有优惠吗？", "Is there a discount on the {product}?"),
                ),
                answer=(
                    ("{product}目前售价{price}。", "The {product} is currently {price}."),
                    (
                        "{product}现在的价格是{price}，满{threshold}可用优惠券。",
                        "The {product} is {price} right now, and coupons apply to orders over {threshold}.",
                    ),
                ),
                ask_bare=(
                    ("这个多少钱？", "How much is this?"),
                    ("我想问个价格", "I'd like to ask about a price"),
                ),
                clarify=(("请问您想了解哪款商品？", "Which product are you asking about?"),),
                give=(("{product}", "The {product}"), ("就是{product}", "The {product}, please")),
            ),
            Case(
                weight=2,
                ask=(
                    ("{product}有货吗？", "Is the {product} in stock?"),
                    ("{color}的{product}还有吗", "Do you still have the {product} in {color}?"),
                ),
                answer=(
                    (
                        "{color}{product}目前有货，下单后48小时内发货。",
                        "The {product} in {color} is in stock and ships within 48 hours.",
                    ),
                ),
            ),
            Case(
                ask=(
                    ("{product}有货吗？", "Is the {product} in stock?"),
                    (
                        "{color}的{product}什么时候补货",
                        "When will the {product} in {color} be back in stock?",
                    ),
                ),
                answer=(
                    (
                        "{color}{product}暂时缺货，预计{date}到货。",
                        "The {product} in {color} is out of stock; we expect more on {date}.",
                    ),
                ),
            ),
            Case(
                ask=(
                    ("{product}保修多久？", "How long is the warranty on the {product}?"),
                    ("{product}坏了能保修吗", "Is the {product} covered if it breaks?"),
                ),
                answer=(
                    (
                        "{product}享受{months}个月全国联保。",
                        "The {product} comes with a {months}-month nationwide warranty.",
                    ),
                ),
            ),
        ),
    ),
    Intent(
        "store_hours",
        (
            Case(
                ask=(
                    ("你们{city}门店几点开门？", "What time does your {city} store open?"),
                    ("{city}店营业时间是什么？", "What are the opening hours of the {city} store?"),
                    ("{city}的实体店周末营业吗？", "Is the {city} store open on weekends?"),
                    ("{city}店几点关门", "When does the {city} store close?"),
                ),
                answer=(
                    (
                        "{city}门店营业时间为每天{open}:00-{close}:00，节假日照常营业。",
                        "The {city} store is open daily from {open}:00 to {close}:00, holidays included.",
                    ),
                ),
                ask_bare=(
                    ("门店营业时间是几点到几点？", "What are your store hours?"),
                    ("你们实体店几点开门", "When do your stores open?"),
                ),
                clarify=(("请问您想了解哪个城市的门店？", "Which city's store do you mean?"),),
                give=CITY_GIVE,
            ),
        ),
        followups=(
            F(
                [("门店可以自提吗？", "Can I pick up my order at the store?")],
                [
                    (
                        "可以，下单时选择门店自提，到货后会短信通知您。",
                        "Yes. Choose store pickup when ordering and we'll text you when it arrives.",
                    )
                ],
            ),
        ),
    ),
    Intent(
        "complaint",
        (
            Case(
                ask=(
                    (
                        "我要投诉！{product}用了两天就坏了",
                        "I want to file a complaint! The {product} broke after two days",
                    ),
                    ("你们客服太差了，我要找人工", "Your service is terrible, I want a real person"),
                    ("转人工", "Transfer me to a human agent"),
                    (
                        "订单{order}一直没人处理，太过分了",
                        "Nobody has dealt with order {order} for days, this is unacceptable",
                    ),
                    ("快递员态度很差，我要投诉", "The courier was very rude, I want to complain"),
                    ("我要找你们经理", "I want to speak to your manager"),
                ),
                answer=(
                    (
                        "非常抱歉给您带来不好的体验，正在为您转接人工客服，请稍候。",
                        "I'm very sorry for the bad experience. I'm transferring you to a human agent now, please hold.",
                    ),
                    (
                        "很抱歉！已记录您的投诉，人工客服将在24小时内联系您。",
                        "I'm sorry! Your complaint is logged and a human agent will contact you within 24 hours.",
                    ),
                ),
                ask_bare=(
                    ("我要投诉", "I want to make a complaint"),
                    ("太气人了，你们怎么做事的", "This is infuriating, how do you run things?"),
                ),
                clarify=(
                    (
                        "很抱歉！请留下您的联系电话，人工客服会尽快回电。",
                        "I'm sorry! Please leave a phone number and a human agent will call you back soon.",
                    ),
                ),
                give=(
                    ("{phone}", "{phone}"),
                    ("我的电话是{phone}，我叫{name}", "My number is {phone}, my name is {name}"),
                    ("打这个{phone}", "Call {phone}"),
                ),
            ),
        ),
    ),
    Intent(
        "greeting",
        (
            Case(
                ask=(
                    ("你好", "Hello"),
                    ("您好", "Hi there"),
                    ("在吗？", "Anyone there?"),
                    ("早上好", "Good morning"),
                    ("晚上好", "Good evening"),
                    ("有人吗？", "Is anyone there?"),
                    ("你好，在吗", "Hi, are you there?"),
                    ("哈喽", "Hey"),
                ),
                answer=(
                    ("您好，请问有什么可以帮您？", "Hello! How can I help you today?"),
                    (
                        "您好，我是智能客服小智，很高兴为您服务。",
                        "Hi, I'm Xiaozhi, the virtual assistant. Happy to help!",
                    ),
                ),
            ),
        ),
        followups=(
            F(
                [("你是机器人吗？", "Are you a robot?"), ("你是真人吗", "Are you a real person?")],
                [
                    (
                        "我是智能客服，复杂问题可以为您转接人工。",
                        "I'm a virtual assistant; I can transfer you to a human for complex issues.",
                    )
                ],
            ),
            F(
                [("你们有哪些服务？", "What can you help with?"), ("你能做什么", "What can you do?")],
                [
                    (
                        "我可以帮您查询订单、物流、退款、天气和门店信息等。",
                        "I can help with orders, shipping, refunds, weather, store information and more.",
                    )
                ],
            ),
            F(
                [("你叫什么名字？", "What's your name?")],
                [("我是智能客服小智。", "I'm Xiaozhi, the virtual assistant.")],
            ),
            F(
                [("今天过得怎么样", "How's your day going?")],
                [("谢谢关心，我随时在线为您服务。", "Thanks for asking! I'm always here to help.")],
            ),
        ),
        max_followups=3,
        opening_allowed=False,
    ),
    Intent(
        "goodbye",
        (
            Case(
                ask=(
                    ("谢谢，再见", "Thanks, bye"),
                    ("好的，谢谢！", "Okay, thanks!"),
                    ("没问题了，谢谢你", "That's all, thank you"),
                    ("再见", "Bye"),
                    ("好的，没有其他问题了", "Okay, no more questions"),
                    ("太感谢了，问题解决了", "Thanks a lot, that solved it"),
                    (
                        "{product}已经收到了，很满意，谢谢！",
                        "The {product} arrived and I'm very happy, thanks!",
                    ),
                    ("订单{order}的问题解决了，谢谢", "The issue with order {order} is solved, thanks"),
                ),
                answer=(
                    ("不客气，祝您生活愉快，再见！", "You're welcome. Have a great day, bye!"),
                    ("感谢您的咨询，再见！", "Thanks for reaching out. Bye!"),
                ),
            ),
        ),
        followups=(
            F(
                [("你们服务不错", "Great service"), ("客服很耐心，点赞", "Very patient support, thumbs up")],
                [("谢谢您的认可，欢迎下次光临！", "Thank you for the kind words. See you next time!")],
            ),
        ),
        opening_allowed=False,
        closing_allowed=False,
    ),
    Intent(
        "coupon",
        (
            Case(
                weight=2,
                ask=(
                    ("优惠券{code}怎么用不了？", "Why can't I use coupon {code}?"),
                    ("{code}这个券提示不可用", "Coupon {code} says it can't be used"),
                ),
                answer=(
                    (
                        "优惠券{code}需订单满{threshold}才能使用，有效期至{date}。",
                        "Coupon {code} needs an order of at least {threshold} and is valid until {date}.",
                    ),
                ),
                ask_bare=(
                    ("优惠券用不了", "My coupon doesn't work"),
                    ("券怎么用不了啊", "Why won't my coupon work?"),
                ),
                clarify=(("请问是哪张优惠券？请提供券码。", "Which coupon is it? Please give me the code."),),
                give=(("{code}", "{code}"), ("券码是{code}", "The code is {code}")),
            ),
            Case(
                ask=(
                    ("有什么优惠券可以领吗？", "Are there any coupons I can claim?"),
                    ("新用户有优惠吗", "Is there a discount for new users?"),
                ),
                answer=(
                    (
                        "新用户可在“我的-优惠券”领取满{threshold}减{amount}的券。",
                        "New users can claim {amount} off orders over {threshold} under Me > Coupons.",
                    ),
                ),
            ),
        ),
    ),
    Intent(
        "invoice",
        (
            Case(
                weight=2,
                ask=(
                    ("订单{order}能开发票吗？", "Can I get an invoice for order {order}?"),
                    ("{order}这单怎么开发票", "How do I get an invoice for order {order}?"),
                ),
                answer=(
                    (
                        "可以，订单{order}确认收货后可在订单详情页申请电子发票，1-3个工作日开具。",
                        "Yes. Once order {order} is received, request an e-invoice on the order page; it is issued within 1-3 business days.",
                    ),
                ),
                ask_bare=(
                    ("怎么开发票", "How do I get an invoice?"),
                    ("能开增值税发票吗", "Can I get a VAT invoice?"),
                ),
                clarify=ORDER_CLARIFY,
                give=ORDER_GIVE,
            ),
            Case(
                ask=(
                    (
                        "订单{order}的发票抬头写{company}，发到{email}",
                        "For order {order}, make the invoice out to {company} and send it to {email}",
                    ),
                ),
                answer=(
                    (
                        "好的，订单{order}的电子发票开具后会发送到您提供的邮箱。",
                        "Sure, the e-invoice for order {order} will be emailed to the address you gave.",
                    ),
                ),
                ask_bare=(
                    (
                        "发票抬头写{company}，发到{email}",
                        "Make the invoice out to {company} and send it to {email}",
                    ),
                ),
                clarify=ORDER_CLARIFY,
                give=ORDER_GIVE,
            ),
        ),
    ),
)

OPENING = INTENTS[[i.name for i in INTENTS].index("greeting")].cases[0]
CLOSING_USER: tuple[Pair, ...] = (
    ("好的，谢谢！", "Okay, thanks!"),
    ("谢谢，再见", "Thanks, bye"),
    ("好的，谢谢你", "Okay, thank you"),
    ("明白了，谢谢", "Got it, thanks"),
    ("好的，再见", "Okay, bye"),
)
CLOSING_REPLY: tuple[Pair, ...] = (
    ("不客气，祝您生活愉快，再见！", "You're welcome. Have a great day, bye!"),
    ("不客气，还有其他问题随时联系我们。", "You're welcome. Contact us any time if anything else comes up."),
)

# ---------------------------------------------------------------------------------------------------
# Synonym variants injected into user turns: each canonical token in a user turn (a Chinese one not
# inside a longer run of Chinese characters, a Latin one at word boundaries) may be swapped for one of
# its variants. Every injected variant is either a LEXICON key or a canonical form itself.
SYNONYMS: dict[str, tuple[str, ...]] = {
    "好的": ("好", "好滴", "好嘞", "好哒", "嗯嗯", "OK", "ok"),
    "谢谢": ("多谢", "谢啦", "谢了", "3Q", "thx"),
    "再见": ("拜拜", "回见", "bye"),
    "Okay": ("OK", "ok", "Ok", "okey", "okie"),
    "okay": ("OK", "ok", "okey"),
    "thanks": ("thx", "thanx", "thank u", "tks"),
    "Thanks": ("Thx", "Thanx", "Thank u"),
    "thank you": ("thank u", "thx"),
    "bye": ("byebye", "cya", "see ya"),
}
# The lexicon: variant -> canonical. It has no language column, so a Latin spelling folds to the
# English form in Chinese turns too (OK -> okay); the Chinese forms fold to 好的 / 谢谢 / 再见.
LEXICON: dict[str, str] = {
    **{v: "好的" for v in ("好", "好滴", "好嘞", "好哒", "嗯嗯")},
    **{v: "okay" for v in ("OK", "ok", "Ok", "okey", "okie")},
    **{v: "谢谢" for v in ("多谢", "谢啦", "谢了", "3Q")},
    **{v: "thanks" for v in ("thx", "Thx", "thanx", "Thanx", "thank u", "Thank u", "tks")},
    **{v: "再见" for v in ("拜拜", "回见")},
    **{v: "bye" for v in ("byebye", "cya", "see ya")},
}


# ---------------------------------------------------------------------------------------------------
# Rendering and mess.
def render(pair: Pair, lang: str, slots: Slots) -> str:
    i = 0 if lang == "zh" else 1
    return pair[i].format_map({k: v[i] for k, v in slots.items()})


_CJK = "\u3400-\u9fff"


def _token_pattern(word: str) -> re.Pattern[str]:
    if re.search(f"[{_CJK}]", word):
        return re.compile(f"(?<![{_CJK}]){re.escape(word)}(?![{_CJK}])")
    return re.compile(rf"\b{re.escape(word)}\b")


SYNONYM_PATTERNS = [(_token_pattern(w), variants) for w, variants in SYNONYMS.items()]


def vary_synonyms(text: str, rng: Random) -> str:
    def swap(match: re.Match[str], variants: tuple[str, ...]) -> str:
        return rng.choice(variants) if rng.random() < RATES["synonym_variant"] else match.group(0)

    for pattern, variants in SYNONYM_PATTERNS:
        text = pattern.sub(functools.partial(swap, variants=variants), text)
    return text


def to_full_width(text: str, *, digits_only: bool = False) -> str:
    out = []
    for ch in text:
        if ("0" <= ch <= "9") or (not digits_only and "!" <= ch <= "~"):
            out.append(chr(ord(ch) + 0xFEE0))
        elif ch == " " and not digits_only:
            out.append("\u3000")
        else:
            out.append(ch)
    return "".join(out)


EMOJI = ("😊", "😂", "🙏", "👍", "😭", "😡", "❤️", "🤔", "✨", "😅", "🙂")
SYMBOLS = ("★", "☆", "~~", "###", "※", "→", "♪", "***", "^_^", "！！！")
ZERO_WIDTH = ("\u200b", "\u200c", "\u200d", "\ufeff")
EMPTY_ISH = ("", " ", "。", "...", "？？", "\u200b", "&nbsp;", "<br/>", "\u3000")


def add_html(text: str, rng: Random) -> str:
    kind = rng.randrange(6)
    if kind == 0:
        return f"<p>{text}</p>"
    if kind == 1:
        return (
            re.sub(r"([，。,.?？])", r"\1<br/>", text, count=1)
            if re.search(r"[，。,.?？]", text)
            else text + "<br/>"
        )
    if kind == 2:
        return text.replace(" ", "&nbsp;", 1) if " " in text else "&nbsp;" + text
    if kind == 3:
        m = re.search(r"[#A-Z0-9][A-Z0-9]{4,}", text)
        return text[: m.start()] + f"<b>{m.group(0)}</b>" + text[m.end() :] if m else f"<b>{text}</b>"
    if kind == 4:
        return f'<div class="msg">{text}</div>'
    return f'<span style="color:#333">{text}</span>&nbsp;'


def add_full_width(text: str, rng: Random) -> str:
    return to_full_width(text, digits_only=rng.random() < 0.5)


def add_emoji(text: str, rng: Random) -> str:
    e = rng.choice(EMOJI) * rng.choice((1, 1, 2, 3))
    return e + text if rng.random() < 0.2 else text + e


def add_symbols(text: str, rng: Random) -> str:
    s = rng.choice(SYMBOLS)
    return f"{s}{text}{s}" if rng.random() < 0.4 else text + s


def add_zero_width(text: str, rng: Random) -> str:
    for _ in range(rng.randint(1, 3)):
        at = rng.randint(0, len(text))
        text = text[:at] + rng.choice(ZERO_WIDTH) + text[at:]
    return text


TURN_MESS: list[tuple[str, Callable[[str, Random], str]]] = [
    ("html", add_html),
    ("full_width", add_full_width),
    ("emoji", add_emoji),
    ("symbols", add_symbols),
    ("zero_width", add_zero_width),
]

LONG_FILLER = {
    "zh": (
        "我真的很着急，已经等了很久了。",
        "你们到底有没有人在管？",
        "我之前已经问过好几次了，每次都说会处理。",
        "这件事情对我很重要，请务必尽快解决。",
        "如果今天还不能解决，我就只能去平台投诉了。",
    ),
    "en": (
        "I am really in a hurry and have been waiting for a long time. ",
        "Is anyone actually looking at this? ",
        "I have asked several times already and was told every time that it would be handled. ",
        "This matters a lot to me, please sort it out as soon as possible. ",
        "If this isn't fixed today I will have to complain to the platform. ",
    ),
}
EXTRA_PII: tuple[Pair, ...] = (
    ("我的手机号是{phone}", "My phone number is {phone}."),
    ("联系电话{phone}", "You can call me at {phone}."),
    ("邮箱{email}", "My email is {email}."),
    ("身份证号{idnum}", "My ID number is {idnum}."),
)


def append_sentence(text: str, sentence: str, lang: str) -> str:
    if lang == "zh":
        return text + ("" if re.search(r"[。！？!?]$", text) else "，") + sentence
    return text + (" " if re.search(r"[.!?]$", text) else ". ") + sentence


def near_duplicate(text: str, rng: Random, lang: str) -> str:
    """The same message up to punctuation, case, spacing and emoji, as a person retyping it would."""
    if lang == "zh":
        edits = [
            lambda t: t.replace("，", ","),
            lambda t: t.replace("？", "?"),
            lambda t: t.rstrip("。！？") + "！",
            lambda t: t + rng.choice(EMOJI),
            lambda t: re.sub(r"([A-Za-z0-9#]+)", r" \1 ", t).strip(),
        ]
    else:
        edits = [
            str.lower,
            lambda t: t.rstrip(".?!"),
            lambda t: t.replace(", ", " , "),
            lambda t: t + rng.choice(EMOJI),
            lambda t: t.replace(" ", "  ", 1),
            lambda t: t + "!!",
        ]
    for _ in range(8):
        changed = rng.choice(edits)(text)
        if changed != text:
            return changed
    return text + rng.choice(EMOJI)


# ---------------------------------------------------------------------------------------------------
# Conversations.
@dataclass
class Plan:
    intent: str
    lang: str
    messages: list[dict[str, str]] = field(default_factory=list)


def plan_conversation(intent: Intent, lang: str, rng: Random) -> list[tuple[str, Pair]]:
    """The dialogue as (role, template pair) steps, 2-8 messages, user first, alternating."""
    steps: list[tuple[str, Pair]] = []
    if intent.opening_allowed and rng.random() < RATES["opening"]:
        steps += [("user", rng.choice(OPENING.ask)), ("assistant", rng.choice(OPENING.answer))]
    case = rng.choices(intent.cases, weights=[c.weight for c in intent.cases])[0]
    if case.ask_bare and rng.random() < RATES["clarify"]:
        steps += [
            ("user", rng.choice(case.ask_bare)),
            ("assistant", rng.choice(case.clarify)),
            ("user", rng.choice(case.give)),
        ]
    else:
        steps.append(("user", rng.choice(case.ask)))
    steps.append(("assistant", rng.choice(case.answer)))
    followups = list(case.followups + intent.followups)
    rng.shuffle(followups)
    for f in followups[: rng.randint(0, intent.max_followups)]:
        if len(steps) + 2 > 8:
            break
        steps += [("user", rng.choice(f.user)), ("assistant", rng.choice(f.reply))]
    if intent.closing_allowed and len(steps) + 2 <= 8 and rng.random() < RATES["closing"]:
        steps += [("user", rng.choice(CLOSING_USER)), ("assistant", rng.choice(CLOSING_REPLY))]
    return steps


def make_conversation(
    intent: Intent, lang: str, rng: Random, to_traditional: Callable[[str], str] | None
) -> Plan:
    slots = sample_slots(rng)
    plan = Plan(intent.name, lang)
    for role, pair in plan_conversation(intent, lang, rng):
        text = render(pair, lang, slots)
        if role == "user":
            text = vary_synonyms(text, rng)
        plan.messages.append({"role": role, "content": text})
    if to_traditional is not None:
        for m in plan.messages:
            m["content"] = to_traditional(m["content"])
    users = [m for m in plan.messages if m["role"] == "user"]
    if rng.random() < RATES["extra_pii"]:
        m = rng.choice(users)
        m["content"] = append_sentence(m["content"], render(rng.choice(EXTRA_PII), lang, slots), lang)
    if rng.random() < RATES["over_long"]:
        m = rng.choice(users)
        target = rng.randint(2100, 3000)
        sep = "" if lang == "zh" else " "
        while len(m["content"]) < target:
            m["content"] += sep + rng.choice(LONG_FILLER[lang]).strip()
    if rng.random() < RATES["empty_ish"]:
        rng.choice(users)["content"] = rng.choice(EMPTY_ISH)
    for m in plan.messages:
        for kind, apply in TURN_MESS:
            if rng.random() < RATES[kind]:
                m["content"] = apply(m["content"], rng)
    return plan


def allocate(total: int, weights: dict[str, int]) -> dict[str, int]:
    """Split `total` by weight with largest remainders, so sizes sum exactly to `total`."""
    scale = total / sum(weights.values())
    raw = {k: w * scale for k, w in weights.items()}
    sizes = {k: int(v) for k, v in raw.items()}
    for k in sorted(raw, key=lambda k: (sizes[k] - raw[k], k))[: total - sum(sizes.values())]:
        sizes[k] += 1
    return sizes


def make_conversations(n: int, seed: int) -> list[dict[str, object]]:
    from opencc import OpenCC  # the project's OpenCC tables: the same converter clean uses for t2s

    rng = Random(f"{seed}-conversations")
    s2t = OpenCC("s2t").convert
    n_exact, n_near = round(n * RATES["exact_duplicate"]), round(n * RATES["near_duplicate"])
    n_base = n - n_exact - n_near
    by_name = {i.name: i for i in INTENTS}
    sizes = allocate(n_base, INTENT_WEIGHTS)
    jobs: list[tuple[str, str]] = []
    for name, size in sizes.items():
        n_zh = round(size * ZH_SHARE)
        jobs += [(name, "zh")] * n_zh + [(name, "en")] * (size - n_zh)
    rng.shuffle(jobs)
    zh_jobs = [i for i, (_, lang) in enumerate(jobs) if lang == "zh"]
    traditional = set(rng.sample(zh_jobs, min(len(zh_jobs), round(n * RATES["traditional"]))))
    plans = [
        make_conversation(by_name[name], lang, rng, s2t if i in traditional else None)
        for i, (name, lang) in enumerate(jobs)
    ]
    # The example from the format's documentation is in the corpus verbatim, so docs and data agree.
    first_weather = next(p for p in plans if (p.intent, p.lang) == ("weather", "zh"))
    first_weather.messages = [
        {"role": "user", "content": "查询北京天气"},
        {"role": "assistant", "content": "今日北京晴，15-25℃"},
    ]
    for i in rng.sample(range(n_base), n_exact):
        plans.append(Plan(plans[i].intent, plans[i].lang, [dict(m) for m in plans[i].messages]))
    for i in rng.sample(range(n_base), n_near):
        src = plans[i]
        messages = [dict(m) for m in src.messages]
        for j in sorted(rng.sample(range(len(messages)), rng.randint(1, len(messages)))):
            messages[j]["content"] = near_duplicate(messages[j]["content"], rng, src.lang)
        plans.append(Plan(src.intent, src.lang, messages))
    rng.shuffle(plans)
    return [
        {"id": f"conv_{k:05d}", "intent": p.intent, "lang": p.lang, "messages": p.messages}
        for k, p in enumerate(plans, 1)
    ]


def conversations_json(conversations: list[dict[str, object]]) -> str:
    """Valid JSON with one conversation a line: small diffs, easy to grep and review."""
    lines = [json.dumps(c, ensure_ascii=False, separators=(", ", ": ")) for c in conversations]
    return '{"conversations": [\n' + ",\n".join(lines) + "\n]}\n"


# ---------------------------------------------------------------------------------------------------
# Parallel pairs, lexicon, gazetteers.
def all_pairs() -> list[Pair]:
    """Every sentence template the conversations use, in a fixed order, without repeats."""
    pairs: list[Pair] = []
    for intent in INTENTS:
        for case in intent.cases:
            pairs += [*case.ask, *case.answer, *case.ask_bare, *case.clarify, *case.give]
            for f in case.followups:
                pairs += [*f.user, *f.reply]
        for f in intent.followups:
            pairs += [*f.user, *f.reply]
    pairs += [*CLOSING_USER, *CLOSING_REPLY]
    return list(dict.fromkeys(pairs))


HAS_CJK = re.compile(f"[{_CJK}]")
HAS_LATIN = re.compile("[A-Za-z]")


def make_parallel(seed: int, *, renderings_per_template: int = 64) -> list[Pair]:
    rng = Random(f"{seed}-parallel")
    out: dict[Pair, None] = {}
    for pair in all_pairs():
        for _ in range(renderings_per_template):
            slots = sample_slots(rng)
            out[(render(pair, "zh", slots), render(pair, "en", slots))] = None
    for table in (CITIES, PRODUCTS, PERSONS):
        for zh, en, _ in table:
            out[(zh, en)] = None
    for zh, en in [*CONDITIONS, *METHODS, *COLORS, *COMPANIES, *((c[0], c[1]) for c in COURIERS)]:
        out[(zh, en)] = None
    pairs = [p for p in out if HAS_CJK.search(p[0]) and HAS_LATIN.search(p[1])]
    rng.shuffle(pairs)
    return pairs


def parallel_tsv(pairs: list[Pair]) -> str:
    for zh, en in pairs:
        if any(c in "\t\n\r" for c in zh + en):
            raise ValueError(f"a parallel pair holds a tab or newline: {zh!r} / {en!r}")
    return "zh\ten\n" + "".join(f"{zh}\t{en}\n" for zh, en in pairs)


def synonyms_tsv() -> str:
    header = (
        "# chatforge synonym lexicon: variant<TAB>canonical, one pair a line; lines starting with # are comments.\n"
        "# Written by scripts/make_demo_corpus.py from the variants it injects into the demo corpus.\n"
        "# The clean stage replaces a variant with its canonical form as a whole token only, never inside\n"
        "# a longer word, and matches exactly (case-sensitive, after NFKC width folding):\n"
        "#   Chinese variants: the whole turn, or a stretch not preceded or followed by another Chinese\n"
        "#     character (好 in '好，谢谢' becomes 好的; 你好 and 好评 are left alone).\n"
        "#   Latin variants: whole words at word boundaries (ok -> okay, but not the ok in 'token').\n"
        "# There is no language column: a Latin spelling maps to one form in Chinese and English turns\n"
        "# alike (OK -> okay), Chinese spellings to the Chinese form (好滴 -> 好的).\n"
        "# Every variant has exactly one canonical form, and no canonical form is itself a variant.\n"
    )
    return header + "".join(f"{v}\t{c}\n" for v, c in LEXICON.items())


def gazetteers() -> dict[str, str]:
    files: dict[str, list[str]] = {}
    for kind, table in (("city", CITIES), ("product", PRODUCTS), ("person", PERSONS)):
        files[f"zh/{kind}.txt"] = [row[0] for row in table]
        files[f"en/{kind}.txt"] = [row[1] for row in table]
    files["zh/city.txt"] += CITY_EXTRAS["zh"]
    files["en/city.txt"] += CITY_EXTRAS["en"]
    files["zh/date.txt"] = [f"{m}月{d}日" for m in range(1, 13) for d in range(1, MONTH_DAYS_2024[m - 1] + 1)]
    files["en/date.txt"] = [
        f"{MONTHS_EN[m - 1]} {d}" for m in range(1, 13) for d in range(1, MONTH_DAYS_2024[m - 1] + 1)
    ]
    return {name: "".join(f"{e}\n" for e in dict.fromkeys(entries)) for name, entries in files.items()}


def main(
    seed: Annotated[int, typer.Option(help="Seed for every random choice.")] = DEFAULT_SEED,
    out_dir: Annotated[Path, typer.Option(help="Root to write under (data/raw/demo/, lexicons/).")] = ROOT,
    conversations: Annotated[
        int, typer.Option(min=100, help="Number of conversations, duplicates included.")
    ] = DEFAULT_CONVERSATIONS,
) -> None:
    """Write the demo corpus, parallel pairs, synonym lexicon and gazetteers under OUT_DIR."""
    convs = make_conversations(conversations, seed)
    write_text(conversations_json(convs), out_dir / "data/raw/demo/conversations.json")
    pairs = make_parallel(seed)
    write_text(parallel_tsv(pairs), out_dir / "data/raw/demo/parallel.tsv")
    write_text(synonyms_tsv(), out_dir / "lexicons/synonyms.tsv")
    for name, text in gazetteers().items():
        write_text(text, out_dir / "lexicons/gazetteers" / name)
    typer.echo(
        f"{len(convs)} conversations, {len(pairs)} parallel pairs, {len(LEXICON)} synonyms -> {out_dir}"
    )


if __name__ == "__main__":
    typer.run(main)
