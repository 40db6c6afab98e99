"""A variant answered by an OpenAI-compatible server (vLLM, llama.cpp server, Ollama, another
chatforge serve) instead of a model folder: chatforge's cache, filter, A/B routing, store and
feedback stay in front of it.

`UpstreamBackend` implements the `ModelBackend` protocol over HTTP (httpx):

- `answer` POSTs `{base_url}/chat/completions` with `logprobs: true`, so the gateway judges an
  upstream answer the way it judges its own models: `answer_confidence(token logprobs,
  first=serve.confidence_tokens)`. An upstream that returns no logprobs gets confidence 1.0 (the
  gateway cannot judge it, so serve.confidence_threshold never holds it back), logged once.
- `stream` reads the upstream's server-sent events and yields (text delta, token entries) as they
  arrive; the whole `Answer` is on the stream afterwards (`UpstreamStream.answer`).
- `token_ids` / `detokenize` cannot use the upstream's tokenizer (the OpenAI API does not expose
  it): they are an APPROXIMATION, documented at `approximate_tokens`, good enough for what the
  gateway uses them for (counting and cutting its own fallback / blocked messages to max_tokens).
  `usage` in answers comes from the upstream itself.
- Every failure (unreachable, timeout, an HTTP error status, a malformed answer) raises
  `UpstreamError`, an `APIError` with status 502 in the OpenAI error shape, whose message names the
  upstream's base_url and the status it answered - never the API key.

Per-token texts: each logprob entry's `bytes` are decoded incrementally, so a token that only
begins a multi-byte character has text "" and the token completing it carries the character (what
chatforge's own models report); without `bytes` the entry's `token` is used. The texts are then
fitted to the answer text like chatforge's own generation does (cut at a stop string, the
remainder added to the last token), so `"".join(answer.token_texts) == answer.text`.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import logging
import os
import re
import threading
from collections.abc import Iterator
from typing import Any, Self

import httpx

from chatforge.metrics import answer_confidence
from chatforge.params import ServeUpstream
from chatforge.runtime.quality import Answer
from chatforge.runtime.decode import GenerationConfig
from chatforge.serving.errors import APIError

log = logging.getLogger("chatforge.serving.upstream")

# (token text, log-probability, top alternatives as (text, log-probability)): Answer.tokens() rows
TokenEntry = tuple[str, float, list[tuple[str, float]]]

_DETAIL_CHARS = 300  # how much of an upstream's error message an UpstreamError repeats


class UpstreamError(APIError):
    """The upstream failed: unreachable, timed out, answered an HTTP error, or sent something that
    is not an OpenAI chat completion. An APIError, so the service answers it as 502 in the OpenAI
    error shape with no extra handling.

    `status` is 502 (what the gateway answers); `upstream_status` is the HTTP status the upstream
    answered (None when it did not answer); `base_url` the upstream; `code` one of
    upstream_unreachable, upstream_timeout, upstream_error."""

    def __init__(self, message: str, *, base_url: str, upstream_status: int | None = None,
                 code: str = "upstream_error") -> None:
        super().__init__(502, message, type="api_error", code=code)
        self.base_url = base_url
        self.upstream_status = upstream_status


# ------------------------------------------------------------------------- approximate tokens
_CJK = (
    "\u1100-\u11ff\u2e80-\u2fff\u3000-\u303f\u3040-\u30ff\u3100-\u31ff\u3400-\u4dbf\u4e00-\u9fff"
    "\ua960-\ua97f\uac00-\ud7af\uf900-\ufaff\ufe30-\ufe4f\uff00-\uffef"
)
_PIECE = re.compile(rf" ?[{_CJK}]| ?[^\W{_CJK}]+| ?[^\w\s{_CJK}]+|\s+")
_MAX_PIECE_BYTES = 7  # UTF-8 bytes of a piece, not counting a leading space: every id fits in 61 bits
_SPACE_FLAG = 1 << 60  # an id's flag for "this piece starts with a space"


def approximate_tokens(text: str) -> list[str]:
    """Split `text` into pieces that stand in for the upstream's tokens (they join to `text`).

    The rule, close to what byte-level BPE tokenizers give on the text a service shows: each CJK
    (Chinese, Japanese, Korean) character or full-width punctuation mark is one token; a run of
    letters/digits, a run of other punctuation, or a run of whitespace is one token, a single
    space before a word or a CJK character riding with it (" world"); a piece longer than 7 UTF-8
    bytes (the leading space aside) is split further, so a long word costs a token per ~7
    letters. English sentences come out within a few tokens of GPT-style tokenizers, CJK text at
    one token per character. An approximation: the upstream's own counts are in every answer's
    usage."""
    pieces: list[str] = []
    for match in _PIECE.finditer(text):
        piece = match.group()
        chunk = " " if piece[0] == " " and len(piece) > 1 else ""
        size = 0
        for char in piece[len(chunk):]:
            n = len(char.encode("utf-8"))
            if size and size + n > _MAX_PIECE_BYTES:
                pieces.append(chunk)
                chunk, size = "", 0
            chunk, size = chunk + char, size + n
        if chunk:
            pieces.append(chunk)
    return pieces


def _piece_id(piece: str) -> int:
    # the piece's own UTF-8 bytes behind a 0x01 marker, a leading space as a flag bit: reversible
    # without a vocabulary
    spaced = len(piece) > 1 and piece[0] == " "
    body = piece[1:] if spaced else piece
    return int.from_bytes(b"\x01" + body.encode("utf-8"), "big") | (_SPACE_FLAG if spaced else 0)


def _id_piece(token_id: int) -> str:
    spaced = token_id > 0 and bool(token_id & _SPACE_FLAG)
    value = token_id & ~_SPACE_FLAG if spaced else token_id
    raw = value.to_bytes((value.bit_length() + 7) // 8, "big") if value > 0 else b""
    if not raw or raw[0] != 1 or len(raw) > _MAX_PIECE_BYTES + 1:
        raise ValueError(f"token id {token_id} was not made by UpstreamBackend.token_ids")
    try:
        return (" " if spaced else "") + raw[1:].decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"token id {token_id} was not made by UpstreamBackend.token_ids") from None


# ---------------------------------------------------------------------------------- helpers
class _TokenTexts:
    """Per-token text from logprob entries: `bytes` decoded incrementally (a token that only
    begins a multi-byte character gets "", the completing token the character), else `token`."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    @staticmethod
    def _alone(entry: dict[str, Any]) -> str:
        raw = entry.get("bytes")
        if isinstance(raw, list):
            return bytes(raw).decode("utf-8", errors="replace")
        return str(entry.get("token") or "")

    def entry(self, entry: Any) -> TokenEntry:
        if not isinstance(entry, dict) or not isinstance(entry.get("logprob"), int | float):
            raise TypeError("a logprobs.content entry without a numeric logprob")
        raw = entry.get("bytes")
        text = self._decoder.decode(bytes(raw)) if isinstance(raw, list) else str(entry.get("token") or "")
        top = [(self._alone(t), float(t["logprob"])) for t in entry.get("top_logprobs") or []]
        return text, float(entry["logprob"]), top


def _fit(pieces: list[str], text: str) -> list[str]:
    """Token texts that add up to `text` exactly, by the rule chatforge's own generation uses: cut at
    the end of the text (a stop string: later tokens get ""), a shortfall added to the last token,
    and, when the upstream's texts disagree with its answer, the whole text on the first token."""
    fitted, left = [], len(text)
    for piece in pieces:
        fitted.append(piece[:left])
        left -= len(fitted[-1])
    joined = "".join(fitted)
    if joined != text and fitted:
        if text.startswith(joined):
            fitted[-1] += text[len(joined):]
        else:
            fitted = [text] + [""] * (len(fitted) - 1)
    return fitted


def _finish(reason: Any) -> str:
    return "length" if reason == "length" else "stop"


def _content(message: Any) -> str:
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, list):  # content parts, as some servers send
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else ""


def _usage(data: Any) -> tuple[int, int] | None:
    if not isinstance(data, dict):
        return None
    prompt, completion = data.get("prompt_tokens"), data.get("completion_tokens")
    if isinstance(prompt, int) and isinstance(completion, int):
        return prompt, completion
    return None


# ---------------------------------------------------------------------------------- backend
class UpstreamBackend:
    """A causal LM behind an OpenAI-compatible `/chat/completions` endpoint.

    `params`: the variant's serve.variants[].upstream (base_url, model, api_key_env, timeout_s).
    `confidence_tokens`: serve.confidence_tokens, the first N tokens the confidence is computed over
    (None: all). `variant`: the variant's name, for messages. `transport`: an httpx transport
    (tests). Raises ValueError when `api_key_env` names an environment variable that is not set.
    The key is sent as `Authorization: Bearer ...` and never appears in a message or a log line."""

    family = "causal_lm"

    def __init__(self, params: ServeUpstream, *, confidence_tokens: int | None, variant: str | None = None,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.params = params
        self.base_url = params.base_url.rstrip("/")
        self.model = params.model
        self.confidence_tokens = confidence_tokens
        self.variant = variant
        self._key: str | None = None
        where = f"variant {variant!r}" if variant else f"upstream {self.base_url}"
        if params.api_key_env:
            key = os.environ.get(params.api_key_env, "")
            if not key.strip():
                raise ValueError(
                    f"{where}: upstream.api_key_env names the environment variable {params.api_key_env}, "
                    "which is not set (or empty); export it with the upstream's API key before starting "
                    "`chatforge serve`, or remove api_key_env if the upstream needs no key"
                )
            self._key = key.strip()
        digest = hashlib.sha256(f"{self.base_url}\n{self.model}".encode()).hexdigest()[:16]
        # keys the answer cache: an upstream that changes its weights under the same model name
        # keeps serving cached answers until serve.cache.ttl_s expires them
        self.fingerprint = f"upstream:{digest}"
        headers = {"Accept": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        self._client = httpx.Client(headers=headers, timeout=httpx.Timeout(params.timeout_s), transport=transport)
        self._url = f"{self.base_url}/chat/completions"
        self._warned = threading.Event()

    def __repr__(self) -> str:
        return f"UpstreamBackend({self.base_url!r}, model={self.model!r})"

    def close(self) -> None:
        self._client.close()

    # -- tokens (approximate: see approximate_tokens)
    def token_ids(self, text: str) -> list[int]:
        """Approximate token ids for `text` (the upstream's tokenizer is not available over the
        OpenAI API): one id per `approximate_tokens` piece; `detokenize` of any prefix of them is a
        prefix of `text`. Not the upstream's ids."""
        return [_piece_id(p) for p in approximate_tokens(text)]

    def detokenize(self, ids: list[int]) -> str:
        return "".join(_id_piece(i) for i in ids)

    # -- requests
    def _request(self, messages: list[dict[str, str]], config: GenerationConfig, *, stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": m["role"], "content": m["content"]} for m in messages],
            "max_tokens": config.max_new_tokens,
            "temperature": config.temperature,
            "top_p": config.top_p,
            "logprobs": True,
            "top_logprobs": config.top_logprobs,
        }
        if config.stop_strings:
            body["stop"] = list(config.stop_strings)
        if config.seed is not None:
            body["seed"] = config.seed
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return body

    def _redact(self, text: str) -> str:
        return text.replace(self._key, "[redacted]") if self._key else text

    def _error(self, what: str, *, status: int | None = None, code: str = "upstream_error") -> UpstreamError:
        prefix = f"variant {self.variant!r}: " if self.variant else ""
        message = self._redact(f"{prefix}upstream {self.base_url} {what}")
        log.warning("%s", message)
        return UpstreamError(message, base_url=self.base_url, upstream_status=status, code=code)

    def _transport_error(self, exc: httpx.HTTPError) -> UpstreamError:
        if isinstance(exc, httpx.TimeoutException):
            return self._error(
                f"did not answer within {self.params.timeout_s:g} s (serve.variants[].upstream.timeout_s)",
                code="upstream_timeout",
            )
        detail = str(exc) or type(exc).__name__
        if isinstance(exc, httpx.TransportError):
            return self._error(f"is unreachable: {detail}", code="upstream_unreachable")
        return self._error(f"failed: {detail}")

    def _status_error(self, response: httpx.Response) -> UpstreamError:
        try:
            data = response.json()
        except ValueError:
            data = None
        found: Any = response.text
        if isinstance(data, dict):  # OpenAI {"error": {"message"}}, {"error": "..."} or FastAPI {"detail"}
            err = data.get("error")
            found = err.get("message") if isinstance(err, dict) else err or data.get("detail") or response.text
        detail = found if isinstance(found, str) else json.dumps(found, ensure_ascii=False)
        detail = " ".join(detail.split())[:_DETAIL_CHARS]
        reason = response.reason_phrase or ""
        return self._error(
            f"answered HTTP {response.status_code}{' ' + reason if reason else ''}" + (f": {detail}" if detail else ""),
            status=response.status_code,
        )

    def _no_logprobs(self) -> None:
        if not self._warned.is_set():
            self._warned.set()
            log.warning(
                "upstream %s (model %r) returns no logprobs: its answers get confidence 1.0, so "
                "serve.confidence_threshold cannot hold them back (the gateway cannot judge them)",
                self.base_url, self.model,
            )

    def _build(self, text: str, entries: list[TokenEntry] | None, finish: str,
               usage: tuple[int, int] | None, messages: list[dict[str, str]]) -> Answer:
        """The Answer from what the upstream sent; `entries` None when it sent no logprobs (an empty
        list with a non-empty text counts as none: there is nothing to judge the text by)."""
        if text and not entries:
            self._no_logprobs()
            confidence = 1.0
        else:
            confidence = answer_confidence([lp for _, lp, _ in entries or []], first=self.confidence_tokens)
        entries = entries or []
        if usage is None:  # an upstream without usage: count with the approximation
            usage = (sum(len(approximate_tokens(m["content"])) for m in messages),
                     len(entries) or len(approximate_tokens(text)))
        return Answer(
            text=text,
            confidence=confidence,
            finish_reason=_finish(finish),  # type: ignore[arg-type]
            prompt_tokens=usage[0],
            completion_tokens=usage[1],
            token_texts=tuple(_fit([t for t, _, _ in entries], text)),
            token_logprobs=tuple(lp for _, lp, _ in entries),
            top_logprobs=tuple(tuple(top) for _, _, top in entries),
        )

    def answer(self, messages: list[dict[str, str]], config: GenerationConfig, *, lang: str) -> Answer:
        """One chat completion from the upstream (`lang` is unused: the upstream model answers)."""
        try:
            response = self._client.post(self._url, json=self._request(messages, config, stream=False))
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from None
        if not response.is_success:
            raise self._status_error(response)
        try:
            data = response.json()
            choice = data["choices"][0]
            text = _content(choice.get("message"))
            logprobs = choice.get("logprobs")
            content = logprobs.get("content") if isinstance(logprobs, dict) else None
            decoder = _TokenTexts()
            entries = None if content is None else [decoder.entry(e) for e in content]
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            raise self._error(
                f"sent a malformed chat completion ({type(exc).__name__}: {str(exc)[:_DETAIL_CHARS]})",
                status=response.status_code,
            ) from None
        return self._build(text, entries, choice.get("finish_reason"), _usage(data.get("usage")), messages)

    def stream(self, messages: list[dict[str, str]], config: GenerationConfig, *, lang: str) -> UpstreamStream:
        """Start a streamed completion. The request is sent and its status checked here, so an
        unreachable or failing upstream raises UpstreamError before anything was streamed; iterate
        the result for (text delta, token entries) and read `.answer` at the end."""
        request = self._client.build_request("POST", self._url, json=self._request(messages, config, stream=True),
                                             headers={"Accept": "text/event-stream"})
        try:
            response = self._client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from None
        if not response.is_success:
            try:
                response.read()
            except httpx.HTTPError:
                pass
            finally:
                response.close()
            raise self._status_error(response)
        return UpstreamStream(self, response, messages)


class UpstreamStream:
    """A streamed upstream completion: iterate for (text delta, token entries) pairs as the upstream
    sends them (entries: (token text, logprob, top alternatives) per token, [] when the upstream
    sends no logprobs with that delta); `answer` holds the whole Answer once iteration has ended.
    Mid-stream failures raise UpstreamError from the iteration. `close()` (or a `with` block)
    drops the connection when the consumer stops early, e.g. when its client went away."""

    def __init__(self, backend: UpstreamBackend, response: httpx.Response, messages: list[dict[str, str]]) -> None:
        self._backend, self._response, self._messages = backend, response, messages
        self._answer: Answer | None = None
        self._events = self._run()

    def __iter__(self) -> Iterator[tuple[str, list[TokenEntry]]]:
        return self

    def __next__(self) -> tuple[str, list[TokenEntry]]:
        return next(self._events)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._events.close()
        self._response.close()

    @property
    def answer(self) -> Answer:
        if self._answer is None:
            raise RuntimeError("the stream has not ended yet: iterate it to the end before reading .answer")
        return self._answer

    def _data(self) -> Iterator[str]:
        """The `data` of each server-sent event (several data lines of one event joined by \\n)."""
        lines: list[str] = []
        for line in self._response.iter_lines():
            if not line:
                if lines:
                    yield "\n".join(lines)
                    lines = []
            elif line.startswith("data:"):
                lines.append(line[5:].removeprefix(" "))
            # comments (":"), event:, id: and retry: lines carry nothing a completion needs
        if lines:
            yield "\n".join(lines)

    def _run(self) -> Iterator[tuple[str, list[TokenEntry]]]:
        backend = self._backend
        decoder = _TokenTexts()
        text: list[str] = []
        entries: list[TokenEntry] = []
        saw_logprobs = False
        finish: str | None = None
        usage: tuple[int, int] | None = None
        done = False
        try:
            for data in self._data():
                if data.strip() == "[DONE]":
                    done = True
                    break
                try:
                    chunk = json.loads(data)
                    if not isinstance(chunk, dict):
                        raise TypeError("an event that is not a JSON object")
                    if chunk.get("error") is not None:
                        err = chunk["error"]
                        detail = err.get("message") if isinstance(err, dict) else err
                        raise backend._error(f"failed mid-stream: {str(detail)[:_DETAIL_CHARS]}",
                                             status=self._response.status_code)
                    usage = _usage(chunk.get("usage")) or usage
                    delta, new = "", []
                    for choice in chunk.get("choices") or []:
                        if choice.get("index", 0) != 0:
                            continue
                        delta = _content(choice.get("delta"))
                        logprobs = choice.get("logprobs")
                        content = logprobs.get("content") if isinstance(logprobs, dict) else None
                        if content is not None:
                            saw_logprobs = True
                            new = [decoder.entry(e) for e in content]
                        finish = choice.get("finish_reason") or finish
                except (ValueError, KeyError, TypeError, AttributeError) as exc:
                    raise backend._error(
                        f"sent a malformed stream event ({type(exc).__name__}: {str(exc)[:_DETAIL_CHARS]})",
                        status=self._response.status_code,
                    ) from None
                if delta or new:
                    text.append(delta)
                    entries.extend(new)
                    yield delta, new
        except httpx.HTTPError as exc:
            raise backend._transport_error(exc) from None
        finally:
            self._response.close()
        if not done and finish is None:
            raise backend._error("closed the stream before the answer finished",
                                 status=self._response.status_code)
        self._answer = backend._build("".join(text), entries if saw_logprobs else None, finish or "stop",
                                      usage, self._messages)


__all__ = ["TokenEntry", "UpstreamBackend", "UpstreamError", "UpstreamStream", "approximate_tokens"]
