"""Retrieval in the loop (chatforge.runtime.hybrid) with a tiny random model: which candidate it
serves, how slot values move into the dialogue, and when it gives up."""

import shutil

import numpy as np
import pytest

from chatforge.params import ServeHybrid
from chatforge.runtime.conversation import Conversation
from chatforge.runtime.decode import load_generator
from chatforge.runtime.hybrid import RetrievalInTheLoop, served_answer
from chatforge.runtime.index import INDEX_NAME, read_index, write_index
from chatforge.runtime.slots import enable, slot_config


def conv(cid, user, answer, lang="en", intent="x"):
    return Conversation(cid, lang, intent, [{"role": "user", "content": user}, {"role": "assistant", "content": answer}])


CONVS = [
    conv("c1", "where is my order 2024010100001", "Order 2024010100001 is on its way."),
    conv("c2", "where is my order please", "Please share your order number."),
    conv("c3", "I want a refund", "Your refund was sent."),
    conv("c4", "查询北京天气", "今日北京晴", lang="zh"),
]


@pytest.fixture()
def folder(tiny_causal_lm, tmp_path):
    out = tmp_path / "m"
    shutil.copytree(tiny_causal_lm, out)
    assert write_index(out, CONVS) == 4
    return out


def test_index_round_trips_sorted(folder):
    assert [c.conversation_id for c in read_index(folder)] == ["c1", "c2", "c3", "c4"]
    assert read_index(folder)[3] == CONVS[3]
    assert read_index(folder.parent) is None  # no retrieval.jsonl: no loop


def test_index_names_a_broken_line(folder):
    (folder / INDEX_NAME).write_text('{"conversation_id": "c1"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"retrieval.jsonl:1: not a retrieval record"):
        read_index(folder)


def test_the_candidate_served_is_the_one_with_the_best_relevance_plus_model_score(folder):
    gen = load_generator(folder, backend="torch")
    # one intent (no prior) and no encoder: relevance is the TF-IDF cosine itself
    loop = RetrievalInTheLoop.open(folder, gen, ServeHybrid(top_k=3, min_similarity=0.0, encoder=None, rerank_weight=1.0))
    prompt = [{"role": "user", "content": "where is my order"}]
    choice = loop.choose(prompt, lang="en")
    prompt_ids = gen.prompt_ids(prompt)
    eos = gen.tokenizer.eos_token_id
    sims = dict(zip([e.answer for e in loop.bot.entries], loop.bot.scores(prompt), strict=True))
    scores = {}
    for c in CONVS[:3]:  # the three English candidates (top_k = 3); the zh one is another language
        answer = c.messages[1]["content"]
        ids = [*prompt_ids, *gen.tokenizer(answer, add_special_tokens=False)["input_ids"], eos]
        scores[answer] = sims[answer] + float(np.mean(gen.logprobs(ids)[len(prompt_ids) - 1:]))
    best = max(scores, key=scores.get)
    assert choice.text == best
    assert choice.score == pytest.approx(scores[best], abs=1e-5)
    assert choice.similarity == pytest.approx(sims[best], abs=1e-6)
    # rerank_weight 0: the most relevant candidate, whatever the model thinks of it
    plain = RetrievalInTheLoop.open(folder, gen, ServeHybrid(top_k=3, min_similarity=0.0, encoder=None, rerank_weight=0.0))
    top = max(CONVS[:3], key=lambda c: sims[c.messages[1]["content"]]).messages[1]["content"]
    assert plain.choose(prompt, lang="en").text == top


def test_nothing_similar_enough_gives_the_fallback(folder):
    gen = load_generator(folder, backend="torch")
    loop = RetrievalInTheLoop.open(folder, gen, ServeHybrid(top_k=3, min_similarity=0.99, encoder=None))
    prompt = [{"role": "user", "content": "qqq zzz"}]
    assert loop.choose(prompt, lang="en") is None
    assert served_answer("model text", 0.1, threshold=0.7, prompt=prompt, lang="en", loop=loop,
                         fallback="Sorry.") == ("Sorry.", "fallback")
    # confident answers are served as generated, whatever retrieval holds
    assert served_answer("model text", 0.9, threshold=0.7, prompt=prompt, lang="en", loop=loop,
                         fallback="Sorry.") == ("model text", "model")
    assert served_answer("model text", float("nan"), threshold=0.7, prompt=prompt, lang="en", loop=None,
                         fallback="Sorry.") == ("model text", "model")
    assert RetrievalInTheLoop.open(folder, gen, ServeHybrid(enabled=False)) is None


def test_slot_values_move_into_this_dialogue_and_unfillable_candidates_are_left_out(folder):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    enable(tok, slot_config(["number"], max_per_kind=2, gazetteer={}))
    tok.save_pretrained(folder)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder)
    model.resize_token_embeddings(len(tok))
    model.save_pretrained(folder)
    gen = load_generator(folder, backend="torch")
    only_c1 = ServeHybrid(top_k=1, min_similarity=0.0)
    loop = RetrievalInTheLoop.open(folder, gen, only_c1)
    with_number = [{"role": "user", "content": "where is my order 2024999999999"}]
    choice = loop.choose(with_number, lang="en")
    assert choice.conversation_id == "c1"
    assert choice.text == "Order 2024999999999 is on its way."  # c1's number replaced by this dialogue's
    # a dialogue that never gave a number cannot take c1's answer: with c1 the only candidate, no choice
    write_index(folder, [CONVS[0]])
    loop = RetrievalInTheLoop.open(folder, gen, only_c1)
    assert loop.choose([{"role": "user", "content": "where is my order"}], lang="en") is None
    assert loop.choose(with_number, lang="en").text == "Order 2024999999999 is on its way."


def test_a_confident_answer_unlike_every_past_answer_is_replaced(folder):
    gen = load_generator(folder, backend="torch")
    loop = RetrievalInTheLoop.open(folder, gen, ServeHybrid(top_k=3, min_similarity=0.0, min_agreement=0.5))
    prompt = [{"role": "user", "content": "I want a refund"}]
    # close to a past answer (c3's): kept as generated
    assert loop.agreement("Your refund was sent!", prompt, lang="en") > 0.9
    assert served_answer("Your refund was sent!", 0.95, threshold=0.7, prompt=prompt, lang="en", loop=loop,
                         fallback="Sorry.") == ("Your refund was sent!", "model")
    # confident, but like none of the three past answers: the reranked past answer is shown instead
    assert loop.agreement("汉堡包", prompt, lang="en") == 0.0
    text, source = served_answer("汉堡包", 0.95, threshold=0.7, prompt=prompt, lang="en", loop=loop, fallback="Sorry.")
    assert source == "retrieval" and text == loop.choose(prompt, lang="en").text
    # min_agreement 0 turns the check off
    off = RetrievalInTheLoop.open(folder, gen, ServeHybrid(top_k=3, min_similarity=0.0, min_agreement=0.0))
    assert served_answer("汉堡包", 0.95, threshold=0.7, prompt=prompt, lang="en", loop=off,
                         fallback="Sorry.") == ("汉堡包", "model")


def test_unfilled_pii_is_a_mask_tag_the_dialogue_never_held():
    from chatforge.data.clean import unfilled_pii

    asked = [{"role": "user", "content": "这个餐馆的电话是啥啊？"}]
    assert unfilled_pii("电话是<PHONE>。", asked) is True
    assert unfilled_pii("Mail us at <EMAIL> or call <PHONE>", asked) is True
    assert unfilled_pii("电话是01058591588。", asked) is False
    assert unfilled_pii("<phone> in lower case is not a tag", asked) is False
    # the dialogue (masked as clean masks test data) gave the value: the answer may repeat the tag
    gave = [{"role": "user", "content": "我的电话是<PHONE>，请回电"}]
    assert unfilled_pii("已记录<PHONE>，人工客服会回电。", gave) is False
    assert unfilled_pii("已记录，发到<EMAIL>", gave) is True


def test_an_answer_with_a_mask_tag_never_reaches_the_user(folder):
    gen = load_generator(folder, backend="torch")
    # c5's answer holds a mask tag; it is the most relevant exchange for the question below
    write_index(folder, [*CONVS, conv("c5", "what is the store phone number", "The phone number is <PHONE>."),
                         conv("c6", "what is the store address", "The store is at 5 Main Street.")])
    loop = RetrievalInTheLoop.open(folder, gen, ServeHybrid(top_k=3, min_similarity=0.0, min_agreement=0.5,
                                                            encoder=None, rerank_weight=0.0))
    prompt = [{"role": "user", "content": "what is the store phone number"}]
    assert loop.ranked(prompt, lang="en")[0][0].conversation_id == "c5"
    # the candidate with the tag is left out: the next most relevant one is chosen
    assert loop.choose(prompt, lang="en").conversation_id == "c6"
    # a confident model answer showing the tag counts as unconfident: replaced by the choice
    assert served_answer("The phone number is <PHONE>.", 0.99, threshold=0.7, prompt=prompt, lang="en", loop=loop,
                         fallback="Sorry.") == ("The store is at 5 Main Street.", "retrieval")
    # no loop: the fallback message, never the tag
    assert served_answer("The phone number is <PHONE>.", 0.99, threshold=0.7, prompt=prompt, lang="en", loop=None,
                         fallback="Sorry.") == ("Sorry.", "fallback")
