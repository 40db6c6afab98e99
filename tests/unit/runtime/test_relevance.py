"""Relevance of past exchanges in retrieval in the loop (chatforge.runtime.hybrid.Relevance): the
intent prior and the sentence encoder find a new phrasing's intent where shared characters do not.
The encoder is the real all-MiniLM-L6-v2 from its pip package."""

import numpy as np
import pytest

from chatforge.modeling.data import Conversation
from chatforge.modeling.retrieval import RetrievalBot
from chatforge.params import ServeHybrid
from chatforge.runtime.encoder import EncoderError, embed_unique, load_encoder, resolve_encoder
from chatforge.runtime.hybrid import MIN_INTENT_EXCHANGES, Relevance


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


def test_the_intent_prior_adds_intent_weight_times_the_probability_of_each_exchanges_intent():
    bot = RetrievalBot(CONVS)
    with_prior = Relevance(bot, ServeHybrid(intent_weight=2.0, encoder=None))
    prompt = [{"role": "user", "content": "which card can I pay with"}]
    boost = (with_prior.scores(prompt, lang="en") - bot.scores(prompt)) / 2.0
    assert boost[:5] == pytest.approx([boost[0]] * 5) and boost[5:] == pytest.approx([boost[5]] * 5)
    assert boost[0] + boost[5] == pytest.approx(1.0)  # P(payment) + P(shipping)
    assert boost[0] > boost[5]
    assert top_answer(with_prior, "which card can I pay with") == PAY


def test_on_the_demo_paraphrases_the_default_relevance_finds_the_intent_more_often_than_tfidf():
    """The committed paraphrase set against the demo corpus: the nearest past answer's intent
    (evaluation.paraphrase.IntentJudge) with TF-IDF alone and with the defaults (intent prior 0.5,
    all-MiniLM-L6-v2 for English at 2.0). Measured: 0.64 / 0.70 -> 0.76 / 0.88 (zh / en)."""
    import json
    from pathlib import Path

    from chatforge.evaluation.paraphrase import IntentJudge, read_paraphrases

    root = Path(__file__).resolve().parents[3]
    raw = json.loads((root / "data/raw/demo/conversations.json").read_text(encoding="utf-8"))["conversations"]
    convs = [Conversation(c["id"], c["lang"], c["intent"], c["messages"]) for c in raw]
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


def test_minilm_weights_that_are_not_the_pinned_file_are_refused(tmp_path, monkeypatch):
    from chatforge.runtime import encoder as enc

    fake = tmp_path / "model.safetensors"
    fake.write_bytes(b"not the weights")
    with pytest.raises(EncoderError, match=r"has sha256 .*not the pinned 53aa51172d142c89.*--force-reinstall"):
        enc._check_weights(fake)
    with pytest.raises(EncoderError, match=r"cannot be read"):
        enc._check_weights(tmp_path / "absent.safetensors")
