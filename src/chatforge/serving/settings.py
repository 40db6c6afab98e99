"""Step 2 of a chat request, the settings: which model answers (a pinned variant, or the A/B split
by user), with which persona, the messages it sees, the generation config and the cache key.
`prepare` runs the screening (serving/screen.py) and returns a Turn: everything decided before
any output.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

from chatforge.data.lang import detect_lang
from chatforge.runtime.decode import GenerationConfig, conversation_seed
from chatforge.params import ServeParams
from chatforge.serving.ab import assign_variant
from chatforge.runtime.backends import ModelBackend
from chatforge.serving.cache import cache_key
from chatforge.serving.errors import APIError
from chatforge.serving.filters import SensitiveFilter
from chatforge.serving.screen import UNSUPPORTED, ScreenStep
from chatforge.serving.wire import ChatCompletionRequest

BASE_MODEL = "chatforge"  # the A/B-routed model name; a variant name pins that variant


@dataclass
class Turn:
    """One request after every check (ChatService.prepare), before the model answers it."""

    req: ChatCompletionRequest
    key_id: str | None
    started: float  # perf_counter at arrival
    variant: str
    backend: ModelBackend
    persona: str | None
    messages: list[dict[str, str]]  # after the input filter and the persona's system prompt
    lang: str
    input_action: str
    terms: set[str] = field(default_factory=set)
    gen: GenerationConfig = field(default_factory=GenerationConfig)
    cache_key: str = ""
    cacheable: bool = False


class SettingsStep(ScreenStep):
    """Model, persona, messages and generation settings of one request (ChatService.prepare)."""

    params: ServeParams
    backends: dict[str, ModelBackend]
    weights: list[tuple[str, float]]
    filter: SensitiveFilter

    def model_names(self) -> list[str]:
        return [BASE_MODEL, *(f"{BASE_MODEL}:{p}" for p in self.params.personas), *self.backends]

    def resolve(self, req: ChatCompletionRequest) -> tuple[str | None, str | None]:
        """(pinned variant or None for A/B, persona) from the model name and the persona field."""
        base, _, suffix = req.model.partition(":")
        if base != BASE_MODEL and base not in self.backends:
            raise APIError(
                404,
                f"model {req.model!r} not found; available models: {', '.join(self.model_names())}",
                code="model_not_found",
                param="model",
            )
        if suffix and req.persona and suffix != req.persona:
            raise APIError(
                400,
                f"persona given twice and differently: model suffix {suffix!r}, persona {req.persona!r}",
                param="persona",
            )
        persona = suffix or req.persona
        if persona is not None and persona not in self.params.personas:
            valid = ", ".join(self.params.personas) or "(none configured in serve.personas)"
            raise APIError(
                400,
                f"unknown persona {persona!r}; valid personas: {valid}",
                code="unknown_persona",
                param="persona",
            )
        return (base if base != BASE_MODEL else None), persona

    def prepare(self, req: ChatCompletionRequest, key_id: str | None) -> Turn:
        """Every check that can refuse a request (raises APIError), the variant, the messages after
        the input filter and persona, the generation config and the cache key: all before any output."""
        started = time.perf_counter()
        self.check_supported(req)
        max_new_tokens = self.check_bounds(req)
        pinned, persona_name = self.resolve(req)
        p = self.params
        user = req.user or key_id or uuid.uuid4().hex
        variant = pinned or assign_variant(user, self.weights, salt=p.ab_salt)
        backend = self.backends[variant]
        if req.logprobs and backend.family != "causal_lm":
            raise APIError(
                400,
                f"logprobs are not available from variant {variant!r}: it is an intent classifier that "
                "answers with canned text; omit logprobs or pin a causal LM variant",
                code=UNSUPPORTED,
                param="logprobs",
            )
        # `developer` is what current OpenAI clients send for instructions: the system role here
        messages = [
            {"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in req.messages
        ]
        last_user = next(m["content"] for m in reversed(messages) if m["role"] == "user")
        lang = detect_lang(last_user)

        input_action, terms = self.screen_messages(messages)

        persona = p.personas.get(persona_name) if persona_name else None
        if persona and persona.system_prompt and messages[0]["role"] != "system":
            messages.insert(0, {"role": "system", "content": persona.system_prompt})
        asked = ("max_completion_tokens" if req.max_completion_tokens is not None
                 else "max_tokens" if req.max_tokens is not None else None)
        max_new_tokens = self.fit_context(backend, messages, max_new_tokens, asked=asked)
        temperature = (
            req.temperature if req.temperature is not None else (persona.temperature if persona else p.temperature)
        )
        top_p = req.top_p if req.top_p is not None else (persona.top_p if persona else p.top_p)
        # a sampled reply without a request seed is seeded by the conversation: same conversation, same reply
        seed = req.seed if req.seed is not None or temperature == 0.0 else conversation_seed(messages, p.seed)
        stops = tuple([req.stop] if isinstance(req.stop, str) else (req.stop or []))
        top_k = (req.top_logprobs or 0) if req.logprobs else 0
        gen = GenerationConfig(
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            stop_strings=stops,
            seed=seed,
            top_logprobs=top_k,
        )
        key = cache_key(
            fingerprint=backend.fingerprint,
            messages=messages,
            sampling={
                "max_new_tokens": max_new_tokens,
                "temperature": temperature,
                "top_p": top_p,
                "stop": list(stops),
                "seed": seed,
                "lang": lang,
                "top_logprobs": top_k,
            },
            persona=persona_name,
            filter_version=self.filter.version,
        )
        return Turn(req=req, key_id=key_id, started=started, variant=variant, backend=backend,
                    persona=persona_name, messages=messages, lang=lang, input_action=input_action, terms=terms,
                    gen=gen, cache_key=key, cacheable=True)
