"""Training labels cover exactly each assistant message's content and its end token, whatever the chat
template injects (issue 15 item 4): the same `tokenize_chat` feeds train, distill, evaluate and quantize."""

from __future__ import annotations

import copy

import pytest
import trainkit as tk

from chatforge.modeling.tokenizer import train_bpe_tokenizer
from chatforge.runtime.conversation import IGNORE, Conversation, assistant_spans, tokenize_chat

# SmolLM2-Instruct's template shape: a chat that does not open with a system message gets a default one.
INJECTING = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Llama-3 shape: content is stripped, the end token follows it directly, no newline after it.
STRIPPING = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n\n' + message['content'] | trim + '<|im_end|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n\n' }}{% endif %}"
)

GREETING_FIRST = Conversation("c1", "zh", "greet", [
    {"role": "assistant", "content": "您好，欢迎光临，请问有什么可以帮您？"},
    {"role": "user", "content": "查询北京天气"},
    {"role": "assistant", "content": "今日北京晴"},
])


@pytest.fixture(scope="module")
def chatml():
    texts = tk.turns(60)["content"].to_list() + [m["content"] for m in GREETING_FIRST.messages]
    return train_bpe_tokenizer(texts, vocab_size=400, min_frequency=1)


def _with_template(tok, template: str):
    other = copy.deepcopy(tok)
    other.chat_template = template
    return other


def learnt_runs(tok, ex) -> list[str]:
    """The decoded runs of consecutive labelled tokens."""
    runs: list[list[int]] = []
    prev = False
    for t, lab in zip(ex.input_ids, ex.labels, strict=True):
        if lab != IGNORE:
            if not prev:
                runs.append([])
            runs[-1].append(t)
        prev = lab != IGNORE
    return [tok.decode(r) for r in runs]


@pytest.mark.parametrize("template", ["chatml", "injecting"])
def test_a_chat_opening_with_the_assistant_learns_only_its_messages(chatml, template):
    tok = chatml if template == "chatml" else _with_template(chatml, INJECTING)
    ex = tokenize_chat(tok, GREETING_FIRST)
    assert learnt_runs(tok, ex) == ["您好，欢迎光临，请问有什么可以帮您？<|im_end|>", "今日北京晴<|im_end|>"]
    assert all(lab in (IGNORE, t) for t, lab in zip(ex.input_ids, ex.labels, strict=True))
    rendered = tok.decode(ex.input_ids)
    # the injected prompt is in the input, never in the targets
    assert ("named SmolLM" in rendered) == (template == "injecting")


def test_the_injected_system_prompt_is_outside_every_span(chatml):
    tok = _with_template(chatml, INJECTING)
    text, spans = assistant_spans(tok, GREETING_FIRST.messages)
    assert [text[a:b] for a, b in spans] == ["您好，欢迎光临，请问有什么可以帮您？", "今日北京晴"]
    assert text.index("You are a helpful AI assistant") < spans[0][0]


def test_a_stripping_template_labels_the_stripped_content(chatml):
    tok = _with_template(chatml, STRIPPING)
    conv = Conversation("c2", "en", None, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  Hello there \n"}])
    assert learnt_runs(tok, tokenize_chat(tok, conv)) == ["Hello there<|im_end|>"]


def test_a_template_that_rewrites_content_is_refused(chatml):
    tok = _with_template(chatml, "{% for m in messages %}{{ m['role'] + ': ' + m['content'] | upper + '\n' }}{% endfor %}")
    conv = Conversation("c3", "en", None, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}])
    with pytest.raises(ValueError, match="rewrites assistant message 1's content"):
        tokenize_chat(tok, conv)
