"""Tokenising conversations: the one way a chat turns into model input, for training and running.

A `Conversation` is one dialogue of the canonical turns table (`conversations` groups the table).
A causal LM reads it rendered with the tokenizer's chat template (`tokenize_chat`); its labels are the
token ids of the assistant messages (their content and end-of-turn token) and -100 (`IGNORE`)
everywhere else, so the loss never teaches the model to write the user's side or what the template
injects, and perplexity (chatforge.runtime.quality) is measured over exactly those tokens. A model
trained with slot placeholders (chatforge.runtime.slots) sees its conversations encoded first.
Training batches (packing, padding) are built from these examples in chatforge.modeling.data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import polars as pl

from chatforge.runtime.slots import codec_for

IGNORE = -100


@dataclass(frozen=True)
class Conversation:
    conversation_id: str
    lang: str
    intent: str | None
    messages: list[dict[str, str]]


@dataclass(frozen=True)
class Example:
    input_ids: list[int]
    labels: list[int]
    conversation_id: str = ""
    lang: str = ""


@dataclass
class TokenStats:
    conversations: int = 0
    truncated: int = 0
    dropped_overlong: int = 0
    dropped_no_assistant: int = 0
    tokens: int = 0
    assistant_tokens: int = 0
    extra: dict[str, int] = field(default_factory=dict)

    def as_metrics(self, prefix: str) -> dict[str, int]:
        out = {k: v for k, v in self.__dict__.items() if k != "extra"}
        out.update(self.extra)
        return {f"{prefix}_{k}": v for k, v in out.items()}


def conversations(turns: pl.DataFrame) -> list[Conversation]:
    """Group a turns table into conversations (ordered by id, messages by turn)."""
    grouped = (
        turns.sort(["conversation_id", "turn"])
        .group_by("conversation_id", maintain_order=True)
        .agg(
            pl.col("role"),
            pl.col("content"),
            pl.col("lang").drop_nulls().first(),
            pl.col("intent").drop_nulls().first(),
        )
    )
    return [
        Conversation(
            cid, lang or "", intent,
            [{"role": r, "content": c or ""} for r, c in zip(roles, contents, strict=True)],
        )
        for cid, roles, contents, lang, intent in grouped.iter_rows()
    ]


def assistant_spans(tokenizer: Any, messages: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered chat and, per assistant message, the character span [start, end) of its content.

    The end of assistant message i is len(render(messages[:i+1])) less what the template writes after
    the content (the end-of-turn marker and separators); its content is searched backwards from there,
    so nothing the template injects before it (a default system prompt for a chat that opens with
    the assistant, role headers) falls inside the span. Works for any template whose rendering of a
    prefix of the chat is a prefix of the whole (ChatML, Llama 3, Mistral ...) and that writes the
    content verbatim or stripped of surrounding whitespace.

    Raises ValueError when the template rewrites an assistant message's content (the span could only
    be guessed).
    """
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    spans: list[tuple[int, int]] = []
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        floor = len(tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)) if i else 0
        end = len(tokenizer.apply_chat_template(messages[: i + 1], tokenize=False))
        content = msg["content"]
        for needle in (content, content.strip()):
            start = text.rfind(needle, floor, end) if needle else -1
            if start >= 0:
                spans.append((start, start + len(needle)))
                break
        else:
            if content.strip():
                raise ValueError(
                    f"the chat template rewrites assistant message {i}'s content, so its training labels cannot be "
                    "placed; use a template that writes message content verbatim (tokenizer_config.json chat_template)"
                )
            spans.append((end, end))  # empty content: only the end token is learnt
    return text, spans


def tokenize_chat(tokenizer: Any, conv: Conversation) -> Example:
    """Render with the chat template; labels are exactly each assistant message's content tokens and
    the one token after it (the end-of-turn marker the model must learn to stop with), -100 elsewhere.

    Spans come from `assistant_spans` (characters); offsets from the fast tokenizer map them to tokens:
    a token is a content token when it overlaps the content span, and the first token starting at or
    after the span's end is its end token. Nothing a template injects (a default system prompt, role
    headers, separators after the end token) is ever a target.
    """
    msgs = conv.messages
    if (codec := codec_for(tokenizer)) is not None:  # a model trained with slot placeholders
        msgs = codec.encode(msgs).messages
    text, spans = assistant_spans(tokenizer, msgs)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)  # cut later, by rule
    ids: list[int] = enc["input_ids"]
    offsets: list[tuple[int, int]] = enc["offset_mapping"]
    labels = [IGNORE] * len(ids)
    t = 0
    for start, end in spans:
        while t < len(ids) and offsets[t][1] <= start:
            t += 1  # tokens wholly before the content
        while t < len(ids) and offsets[t][0] < end:
            labels[t] = ids[t]  # overlaps the content
            t += 1
        if t < len(ids):
            labels[t] = ids[t]  # the end token
            t += 1
    return Example(ids, labels, conv.conversation_id, conv.lang)


def tokenize_conversations(
    convs: list[Conversation],
    tokenizer: Any,
    *,
    max_seq_len: int,
    overlong: Literal["truncate", "drop"],
) -> tuple[list[Example], TokenStats]:
    """Tokenize every conversation; an over-long one is cut at max_seq_len tokens (truncate) or left
    out (drop); one left with no assistant token to learn from is left out. All counted."""
    stats = TokenStats(conversations=len(convs))
    out: list[Example] = []
    for conv in convs:
        ex = tokenize_chat(tokenizer, conv)
        if len(ex.input_ids) > max_seq_len:
            if overlong == "drop":
                stats.dropped_overlong += 1
                continue
            stats.truncated += 1
            ex = Example(ex.input_ids[:max_seq_len], ex.labels[:max_seq_len], ex.conversation_id, ex.lang)
        n_labels = sum(1 for x in ex.labels[1:] if x != IGNORE)  # the first token is never predicted
        if n_labels == 0:
            stats.dropped_no_assistant += 1
            continue
        stats.tokens += len(ex.input_ids)
        stats.assistant_tokens += n_labels
        out.append(ex)
    return out, stats
