"""OpenAI wire shapes: what a client sends to /v1/chat/completions and what it gets back.

Requests accept every field current OpenAI clients send. Fields this server honours: model,
messages (roles system, developer = system, user, assistant), temperature, top_p, max_tokens /
max_completion_tokens, stop, seed, n = 1, stream (+ stream_options.include_usage), logprobs and
top_logprobs (0-20), user, store, and chatforge's persona. Fields it cannot honour (tools, a
tool_choice that requires a tool, tool-call histories, response_format json_object / json_schema,
non-zero frequency/presence penalties, logit_bias, audio, legacy functions, metadata, ...) and
fields OpenAI does not define are refused by the service with a 400 naming the field: a client never
gets a quiet default (README, "OpenAI request fields").

Responses follow the OpenAI chat.completion / chat.completion.chunk shapes, plus a `chatforge`
object (variant, persona, confidence, fallback, cached, filter).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    # tool and function messages parse so the service can refuse them naming the public field
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[TextPart] | None = None
    name: str | None = Field(default=None, max_length=256)
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = Field(default=None, max_length=256)
    function_call: dict[str, Any] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    # every field is honoured or refused by the service with a 400 naming it (README, "OpenAI request
    # fields"); a field OpenAI does not define is kept here (model_extra) so it can be refused by name
    model_config = ConfigDict(extra="allow")
    model: str = Field(min_length=1, max_length=256, examples=["chatforge"])
    messages: list[ChatMessage] = Field(min_length=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    n: int | None = Field(default=None, ge=1, le=1)  # one choice per request
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    store: bool | None = None  # false: the conversation is not stored (and cannot be rated)
    # OpenAI fields this model cannot honour beyond their neutral value: the service refuses the rest
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None
    modalities: list[str] | None = None
    audio: dict[str, Any] | None = None
    functions: list[dict[str, Any]] | None = None
    function_call: str | dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None
    service_tier: str | None = Field(default=None, max_length=32)
    reasoning_effort: str | None = Field(default=None, max_length=32)
    prediction: dict[str, Any] | None = None
    web_search_options: dict[str, Any] | None = None
    user: str | None = Field(default=None, max_length=256)  # sticky A/B assignment key
    persona: str | None = Field(default=None, max_length=128)  # or "chatforge:<persona>" as model


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    completion_id: str = Field(min_length=1, max_length=64)  # the `id` of the chat completion
    rating: int = Field(ge=-1, le=1)  # 1 thumbs up, -1 thumbs down, 0 neutral
    correction: str | None = Field(default=None, min_length=1, max_length=8000)  # the answer wanted instead
    comment: str | None = Field(default=None, max_length=2000)


REQUEST_FIELDS = frozenset(
    name
    for model in (TextPart, ChatMessage, StreamOptions, ChatCompletionRequest, FeedbackRequest)
    for name in model.model_fields
)


def shown_field(name: str) -> str:
    """A field name a client chose, as an error message shows it: at most 64 characters, anything
    unprintable escaped (an error never echoes unbounded input)."""
    return name if len(name) <= 64 and name.isprintable() else name[:64].encode("unicode_escape").decode("ascii")


def public_param(loc: tuple[Any, ...]) -> str | None:
    """A pydantic error location as the client's field path: `messages.1.content`.

    Drops what is not a field the client wrote: FastAPI's "body" prefix and pydantic's union
    branch tags ("str", "list[TextPart]", "function-after[...]")."""
    parts = [str(p) for p in loc if isinstance(p, int) or p in REQUEST_FIELDS]
    return ".".join(parts) or None


# ---------------------------------------------------------------------------------- responses
def chunks(text: str) -> list[str]:
    # one chunk per word (with its trailing space) or per CJK character, like token streaming looks
    return re.findall(r"\s*[\u3400-\u9fff\uf900-\ufaff]|\s*[^\s\u3400-\u9fff\uf900-\ufaff]+|\s+$", text) or [
        text
    ]


def _logprob_entry(token: str, logprob: float, top: list[tuple[str, float]]) -> dict[str, Any]:
    return {
        "token": token,
        "logprob": logprob,
        "bytes": list(token.encode("utf-8")),
        "top_logprobs": [{"token": t, "logprob": lp, "bytes": list(t.encode("utf-8"))} for t, lp in top],
    }


@dataclass
class Completion:
    """One answered request. `tokens` holds (text, logprob, top alternatives) per generated token
    when the text shown is exactly the model's tokens; None when the model's text was replaced
    (fallback, filter) or the variant has no tokens (classifier)."""

    id: str
    created: int
    model: str
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    variant: str
    persona: str | None
    confidence: float | None
    fallback: bool
    cached: bool
    filter_action: str
    want_logprobs: bool = False
    tokens: list[tuple[str, float, list[tuple[str, float]]]] | None = field(default=None)

    def extra(self) -> dict[str, Any]:
        return {
            "variant": self.variant,
            "persona": self.persona,
            "confidence": self.confidence,
            "fallback": self.fallback,
            "cached": self.cached,
            "filter": self.filter_action,
        }

    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }

    def _logprobs(self, tokens: list[tuple[str, float, list[tuple[str, float]]]] | None) -> dict[str, Any] | None:
        if not self.want_logprobs:
            return None
        # content null: the text shown is not the model's tokens (a fallback or a filter replaced it)
        content = None if tokens is None else [_logprob_entry(*t) for t in tokens]
        return {"content": content, "refusal": None}

    def body(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": self.text, "refusal": None},
                    "finish_reason": self.finish_reason,
                    "logprobs": self._logprobs(self.tokens),
                }
            ],
            "usage": self.usage(),
            "chatforge": self.extra(),
        }

    def _pieces(self) -> Iterator[tuple[str, list[tuple[str, float, list[tuple[str, float]]]] | None]]:
        """(text, its tokens) per chunk: one chunk per token when the tokens are known (a token that
        only began a multi-byte character rides with the next), else per word / CJK character."""
        if self.tokens is None:
            for piece in chunks(self.text) if self.text else []:
                yield piece, None
            return
        pending: list[tuple[str, float, list[tuple[str, float]]]] = []
        for token in self.tokens:
            pending.append(token)
            if token[0]:
                yield "".join(t[0] for t in pending), pending
                pending = []
        if pending:
            yield "", pending

    def sse(self, include_usage: bool) -> Iterator[str]:
        """The finished answer as server-sent events (one chunk per token when the tokens are known)."""
        stream = LiveStream(id=self.id, created=self.created, model=self.model)
        yield stream.role()
        withheld = self.tokens is None
        for piece, tokens in self._pieces():
            yield stream.delta(piece, logprobs=None if withheld else self._logprobs(tokens))
        yield from stream.end(self, include_usage, logprobs=self._logprobs(None) if withheld else None)


@dataclass
class LiveStream:
    """The chat.completion.chunk events of one answer: role first, content deltas, the finish."""

    id: str
    created: int
    model: str

    def _event(self, choices: list[dict[str, Any]], **more: Any) -> str:
        head = {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model}
        return f"data: {json.dumps(head | {'choices': choices} | more, ensure_ascii=False)}\n\n"

    def role(self) -> str:
        return self._event([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None,
                             "logprobs": None}])

    def delta(self, text: str, *, logprobs: dict[str, Any] | None = None) -> str:
        return self._event([{"index": 0, "delta": {"content": text}, "finish_reason": None, "logprobs": logprobs}])

    def end(self, completion: Completion, include_usage: bool, *, logprobs: dict[str, Any] | None = None) -> Iterator[str]:
        yield self._event([{"index": 0, "delta": {}, "finish_reason": completion.finish_reason, "logprobs": logprobs}],
                          chatforge=completion.extra())
        if include_usage:
            yield self._event([], usage=completion.usage())
        yield "data: [DONE]\n\n"


__all__ = [
    "ChatCompletionRequest",
    "ChatMessage",
    "Completion",
    "FeedbackRequest",
    "LiveStream",
    "StreamOptions",
    "TextPart",
    "chunks",
    "public_param",
    "shown_field",
]
