"""Relevance of past exchanges in retrieval in the loop (chatforge.runtime.hybrid.Relevance): the
intent prior and the sentence encoder find a new phrasing's intent where shared characters do not.
The encoder is the real all-MiniLM-L6-v2 from its pip package."""

import numpy as np
import pytest

from chatforge.params import ServeHybrid
from chatforge.runtime.conversation import Conversation
from chatforge.runtime.encoder import EncoderError, embed_unique, load_encoder, resolve_encoder
from chatforge.runtime.hybrid import MIN_INTENT_EXCHANGES, Relevance
from chatforge.runtime.retrieval import RetrievalBot


def conv(cid, user, answer, intent, lang="en"):
    return Conversation(cid, lang, intent, [{"role": "user", "content": user}, {"role": "assistant", "content": answer}])


PAY = "We accept cards, Alipay and PayPal."
SHIP = "Delivery takes 3-5 days."
CONVS = [
    *(conv(f"p{i}", u, PAY, "payment") for i, u in enumerate([
        "can I pay with a credit card", "do you accept alipay payment", "payment options at checkout",
        "which payment methods are there", "is paypal payment accepted"])),
    *(conv(f"s{i}", u, SHIP, "shipping") for i, u in enumerate([
        "how long does delivery take", "when will my parcel arrive", "delivery time to my city",
        "how many days for delivery", "how long does shipping take"])),
]


def top_answer(relevance, text, lang="en"):
    return relevance.top([{"role": "user", "content": text}], k=1, lang=lang)[0][0].answer


def demo_conversations():
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parents[3]
    raw = json.loads((root / "data/raw/demo/conversations.json").read_text(encoding="utf-8"))["conversations"]
    return root, [Conversation(c["id"], c["lang"], c["intent"], c["messages"]) for c in raw]


def test_on_the_demo_paraphrases_the_default_relevance_finds_the_intent_more_often_than_tfidf():
    """The committed paraphrase set against the demo corpus: the nearest past answer's intent
    (evaluation.paraphrase.IntentJudge) with TF-IDF alone and with the defaults (intent prior 0.5,
    all-MiniLM-L6-v2 for English at 2.0). Measured: 0.64 / 0.70 -> 0.76 / 0.88 (zh / en)."""
    from chatforge.evaluation.paraphrase import IntentJudge, read_paraphrases

    root, convs = demo_conversations()
    questions = read_paraphrases(root / "data/eval/demo_paraphrases.jsonl")
    judge = IntentJudge(convs)
    bot = RetrievalBot(convs)
    rates = {}
    for name, settings in (("tfidf", ServeHybrid(intent_weight=0.0, encoder=None)), ("default", ServeHybrid())):
        relevance = Relevance(bot, settings)
        answers = [relevance.top(q.prompt, k=1, lang=q.lang)[0][0].answer for q in questions]
        rates[name] = judge.on_intent_rates(answers, questions)
    for lang in ("zh", "en"):
        key = f"paraphrase_on_intent_{lang}"
        assert rates["default"][key] >= rates["tfidf"][key] + 0.08, (lang, rates)
    # the demo's intents decide its (Chinese) answers: the held-out check keeps the prior for zh,
    # and it adds intent_weight x P(intent) to each exchange, the same for every exchange of an intent
    prior = Relevance(bot, ServeHybrid(intent_weight=0.5, encoder=None))
    assert "zh" in prior.prior_langs  # en: the check is within noise on the raw demo (0.648 -> 0.641), the encoder carries en
    prompt = [{"role": "user", "content": "能用银联卡付款吗"}]
    boost = (prior.scores(prompt, lang="zh") - bot.scores(prompt)) / 0.5
    by_intent: dict[str, set[float]] = {}
    for e, b in zip(bot.entries, boost, strict=True):
        if e.lang == "zh":
            by_intent.setdefault(e.intent, set()).add(round(float(b), 9))
    assert all(len(v) == 1 for v in by_intent.values())
    assert sum(next(iter(v)) for v in by_intent.values()) == pytest.approx(1.0)
    assert max(by_intent, key=lambda k: next(iter(by_intent[k]))) == "payment"


def test_intents_that_do_not_decide_the_answer_get_no_prior():
    """The demo with each conversation's intent replaced by a label unrelated to its content (crc32
    of the id mod 3): the held-out check finds the prior picks no closer answers, so it is off."""
    import zlib

    _, convs = demo_conversations()
    shuffled = [Conversation(c.conversation_id, c.lang, f"topic{zlib.crc32(c.conversation_id.encode()) % 3}",
                             c.messages) for c in convs]
    bot = RetrievalBot(shuffled)
    relevance = Relevance(bot, ServeHybrid(intent_weight=0.5, encoder=None))
    assert relevance.prior is None and relevance.prior_langs == ()
    prompt = [{"role": "user", "content": "能用银联卡付款吗"}]
    np.testing.assert_array_equal(relevance.scores(prompt, lang="zh"),
                                  np.where(bot.langs == "zh", bot.scores(prompt), -np.inf))


def test_no_prior_without_two_intents_of_enough_exchanges():
    few = [*CONVS[:MIN_INTENT_EXCHANGES], *CONVS[5:5 + MIN_INTENT_EXCHANGES - 1]]  # shipping has one too few
    relevance = Relevance(RetrievalBot(few), ServeHybrid(intent_weight=2.0, encoder=None))
    assert relevance.prior is None
    prompt = [{"role": "user", "content": "how long does payment take"}]
    np.testing.assert_array_equal(relevance.scores(prompt, lang="en"), relevance.bot.scores(prompt))
    unlabelled = [conv(c.conversation_id, c.messages[0]["content"], c.messages[1]["content"], None) for c in CONVS]
    assert Relevance(RetrievalBot(unlabelled), ServeHybrid(intent_weight=2.0, encoder=None)).prior is None


def test_the_encoder_finds_a_paraphrase_with_few_shared_characters():
    convs = [conv("a", "Which payment methods can I use?", PAY, None),
             conv("b", "Where can I see my parcel tracking?", SHIP, None)]
    bot = RetrievalBot(convs)
    question = "Can I settle the bill with Apple Pay?"
    assert top_answer(Relevance(bot, ServeHybrid(encoder=None)), question) == SHIP  # TF-IDF: shared letters only
    assert top_answer(Relevance(bot, ServeHybrid(encoder="minilm-l6", encoder_weight=2.0)), question) == PAY
    # languages outside encoder_langs keep the TF-IDF relevance
    zh = Relevance(bot, ServeHybrid(encoder="minilm-l6", encoder_langs=["zh"]))
    prompt = [{"role": "user", "content": question}]
    np.testing.assert_array_equal(zh.scores(prompt, lang="en"), bot.scores(prompt))


def test_embeddings_are_unit_length_and_shared_texts_are_encoded_once():
    encoder = load_encoder("minilm-l6")
    assert load_encoder("minilm-l6") is encoder
    texts = ["where is my order", "I want a refund", "where is my order"]
    vectors = embed_unique(encoder, texts)
    assert vectors.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(vectors[0], vectors[2])
    np.testing.assert_allclose(vectors[1], encoder.encode(["I want a refund"])[0], atol=1e-5)
    assert float(vectors[0] @ vectors[1]) < 0.9


def test_an_encoder_path_that_is_no_folder_is_named_with_the_fix(tmp_path):
    with pytest.raises(EncoderError, match=r"no such folder\. Give minilm-l6, a sentence-encoder folder.*or null"):
        resolve_encoder(str(tmp_path / "missing") + "x" * 5000)
    with pytest.raises(EncoderError) as info:
        resolve_encoder("/nope/" + "y" * 5000)
    assert len(str(info.value)) < 500
    assert resolve_encoder(str(tmp_path)) == str(tmp_path)
    assert resolve_encoder("minilm-l6").endswith("model")


def test_minilm_weights_that_are_not_the_pinned_file_are_refused(tmp_path):
    from chatforge.runtime import encoder as enc

    fake = tmp_path / "model.safetensors"
    fake.write_bytes(b"not the weights")
    with pytest.raises(EncoderError, match=r"has sha256 .*not the pinned 53aa51172d142c89.*--force-reinstall"):
        enc._check_weights(fake)
    with pytest.raises(EncoderError, match=r"cannot be read"):
        enc._check_weights(tmp_path / "absent.safetensors")
