"""Step 1 of a chat request, screen the input: the API key and its rate limit, what this server
cannot do (tools, JSON mode, unknown fields: refused naming the field), the size bounds, the room
in the model's context, and the input filter over every message. Each check raises APIError with
the OpenAI error shape's status, message, code and param; nothing here calls a model.
"""

from __future__ import annotations

from collections.abc import Mapping

from chatforge.params import ServeParams
from chatforge.serving.auth import KeyRing
from chatforge.runtime.backends import ModelBackend
from chatforge.serving.backends import PromptError
from chatforge.serving.config import ServeConfig
from chatforge.serving.errors import APIError
from chatforge.serving.filters import SensitiveFilter
from chatforge.serving.metrics import ServeMetrics
from chatforge.serving.ratelimit import KeyRateLimiter
from chatforge.serving.wire import ChatCompletionRequest, shown_field

UNSUPPORTED = "unsupported_value"


def unsupported_fields(req: ChatCompletionRequest) -> list[tuple[str, str]]:
    """(field, why) for each request field this server does not honour as asked, in a fixed order:
    OpenAI fields beyond their neutral value (a penalty of 0, an empty logit_bias, text-only
    modalities, the default service tier are honoured exactly), then fields OpenAI does not define."""
    out = []
    for name in ("frequency_penalty", "presence_penalty"):
        if getattr(req, name):
            out.append((name, "repetition penalties are not applied by this server; omit it or send 0"))
    if req.logit_bias:
        out.append(("logit_bias", "token biases are not applied by this server; omit it or send {}"))
    if req.modalities is not None and [m for m in req.modalities if m != "text"]:
        out.append(("modalities", "this model answers in text only; omit modalities or send [\"text\"]"))
    if req.audio is not None:
        out.append(("audio", "this model answers in text only; omit audio"))
    if req.functions:
        out.append(("functions", "function calling is not supported by this model; omit functions"))
    if req.function_call not in (None, "none", "auto"):
        out.append(("function_call", "function calling is not supported by this model; omit function_call"))
    if req.metadata:
        out.append(("metadata", "this server does not store request metadata; omit it"))
    if req.service_tier not in (None, "auto", "default"):
        out.append(("service_tier", "this server has one service tier; omit service_tier or send 'auto'"))
    for name in ("reasoning_effort", "prediction", "web_search_options"):
        if getattr(req, name) is not None:
            out.append((name, "not supported by this model; omit it"))
    for name in sorted(req.model_extra or {}):
        out.append((shown_field(name), "unknown field: not an OpenAI chat completion field this server takes (README, "
                           "\"OpenAI request fields\"); remove it"))
    return out


class ScreenStep:
    """The request checks of ChatService (serving/app.py), in the order `prepare` runs them."""

    config: ServeConfig
    params: ServeParams
    keys: KeyRing | None
    limiter: KeyRateLimiter
    filter: SensitiveFilter
    metrics: ServeMetrics

    def authenticate(self, headers: Mapping[str, str]) -> str | None:
        """The API key's id from `Authorization: Bearer <key>` (lower-case header names), after the
        per-key rate limit; None without auth. Raises APIError 401 / 429."""
        if not self.config.require_auth:
            return None
        header = headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        if not header:
            raise APIError(
                401,
                "missing API key: send the header 'Authorization: Bearer <key>' "
                "(create a key with `chatforge keys add NAME`)",
                code="missing_api_key",
            )
        if scheme.lower() != "bearer" or not key.strip():
            raise APIError(
                401, "malformed Authorization header: expected 'Bearer <key>'", code="invalid_api_key"
            )
        record = self.keys.lookup(key.strip()) if self.keys else None
        if record is None:
            raise APIError(
                401, "invalid API key: it is not in this server's keys file", code="invalid_api_key"
            )
        wait_s = self.limiter.acquire(record.id)
        if wait_s > 0:
            rl = self.params.rate_limit
            raise APIError(
                429,
                f"rate limit exceeded for this API key ({rl.requests_per_minute:g} requests per minute, "
                f"burst {rl.burst}); retry in {wait_s:.1f} s",
                type="rate_limit_error",
                code="rate_limit_exceeded",
                headers={"Retry-After": str(max(1, round(wait_s + 0.5)))},
            )
        return record.id

    @staticmethod
    def check_supported(req: ChatCompletionRequest) -> None:
        """Refuse, naming the field, what this model cannot do; a client never gets a quiet default."""
        for i, m in enumerate(req.messages):
            if m.role in ("tool", "function"):
                raise APIError(
                    400,
                    f"messages.{i}.role = {m.role!r}: tool results are not supported by this model (it "
                    "cannot call tools); send the conversation without tool calls and their results",
                    code=UNSUPPORTED,
                    param=f"messages.{i}.role",
                )
            for name in ("tool_calls", "function_call"):
                if getattr(m, name):
                    raise APIError(
                        400,
                        f"messages.{i}.{name}: tool calls are not supported by this model; send the "
                        "conversation without them",
                        code=UNSUPPORTED,
                        param=f"messages.{i}.{name}",
                    )
            if m.content is None:
                raise APIError(400, f"messages.{i}.content: required for role {m.role!r}",
                               code="missing_required_parameter", param=f"messages.{i}.content")
        if req.tools:
            raise APIError(400, "tools are not supported by this model (it cannot call functions); "
                           "omit `tools`", code=UNSUPPORTED, param="tools")
        choice = req.tool_choice
        if choice is not None and choice not in ("none", "auto"):
            shown = choice if isinstance(choice, str) else "a named function"
            raise APIError(400, f"tool_choice {shown!r} is not supported by this model (it cannot call "
                           "tools); omit tool_choice or send 'none'", code=UNSUPPORTED, param="tool_choice")
        fmt = req.response_format
        if fmt is not None and fmt.get("type", "text") != "text":
            kind = str(fmt.get("type"))[:40]
            raise APIError(
                400,
                f"response_format type {kind!r} is not supported by this model (no constrained JSON "
                "decoding); omit response_format or send {'type': 'text'}",
                code=UNSUPPORTED,
                param="response_format",
            )
        for name, reason in unsupported_fields(req):
            raise APIError(400, f"{name}: {reason}", code=UNSUPPORTED, param=name)
        if req.top_logprobs is not None and not req.logprobs:
            raise APIError(400, "top_logprobs needs logprobs: true", code="invalid_value",
                           param="top_logprobs")

    def check_bounds(self, req: ChatCompletionRequest) -> int:
        lim = self.params.limits
        if len(req.messages) > lim.max_messages:
            raise APIError(
                400,
                f"too many messages: {len(req.messages)} > {lim.max_messages} "
                "(serve.limits.max_messages); send a shorter history",
                param="messages",
            )
        chars = sum(len(m.text()) for m in req.messages)
        if chars > lim.max_chars:
            raise APIError(
                400,
                f"messages too long: {chars} characters > {lim.max_chars} (serve.limits.max_chars)",
                param="messages",
            )
        if not any(m.role == "user" for m in req.messages):
            raise APIError(
                400, "messages must contain at least one message with role 'user'", param="messages"
            )
        field = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
        asked = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        if asked is not None and asked > lim.max_tokens:
            raise APIError(
                400,
                f"{field} = {asked} exceeds this server's limit of {lim.max_tokens} "
                "(serve.limits.max_tokens)",
                param=field,
            )
        stops = [req.stop] if isinstance(req.stop, str) else (req.stop or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise APIError(400, "stop must be up to 4 non-empty strings", param="stop")
        return asked or lim.default_max_tokens

    @staticmethod
    def fit_context(backend: ModelBackend, messages: list[dict[str, str]], max_new_tokens: int, *,
                    asked: str | None) -> int:
        """The request's answer budget after its prompt is rendered and measured, before it joins a batch.

        A causal LM's prompt (chat template applied) plus its answer must fit the model's context
        (config.max_position_embeddings): beyond it the model has no trained positions and attention
        memory grows with the square of the length, so one long message could take the server's
        memory. A prompt with no room left, or an asked max_tokens beyond the room, is a 400 naming
        the sizes (OpenAI's `context_length_exceeded`; `asked` is the field the client used:
        max_tokens or max_completion_tokens); an unasked default is lowered to the room.
        A template that refuses the messages is a 400 naming `messages`. Classifiers (which
        truncate their input) and upstream APIs are not measured here."""
        measure = getattr(backend, "measure", None)
        if measure is None:
            return max_new_tokens
        try:
            prompt = int(measure(messages))
        except PromptError as exc:
            raise APIError(400, f"messages: this model's chat template refuses them ({exc}); send one system "
                                "message, first, and alternate user and assistant turns", param="messages") from None
        context = getattr(backend, "context_tokens", None)
        if not context:
            return max_new_tokens
        room = context - prompt
        if room < 1:
            raise APIError(400, f"messages: the prompt is {prompt} tokens after the chat template and this model's "
                                f"context is {context} tokens, which leaves no room for an answer; send a shorter "
                                "history or message", code="context_length_exceeded", param="messages")
        if max_new_tokens > room:
            if asked:
                raise APIError(400, f"{asked}: the prompt's {prompt} tokens plus {max_new_tokens} answer tokens "
                                    f"exceed this model's context of {context} tokens; ask for at most {room} or send "
                                    "a shorter history", code="context_length_exceeded", param=asked)
            return room
        return max_new_tokens

    def screen_messages(self, messages: list[dict[str, str]]) -> tuple[str, set[str]]:
        """Run the input filter over every message the client sends (system and earlier assistant
        turns too: all of it reaches the model and the store, and a stored history is what feedback
        export writes), masking in place. (the strongest action: none | masked | blocked, the terms
        found); a non-none action is counted in the metrics."""
        input_action, terms = "none", set()
        for m in messages:
            result = self.filter.apply(m["content"])
            if result.action != "none":
                terms.update(result.terms)
                m["content"] = result.text
                input_action = "blocked" if "blocked" in (input_action, result.action) else result.action
        if input_action != "none":
            self.metrics.filter_actions.labels(stage="input", action=input_action).inc()
        return input_action, terms
