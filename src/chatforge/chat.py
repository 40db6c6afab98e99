"""`chatforge chat`: talk to any built variant in a terminal (torch or ONNX, both families).

Commands inside the chat: /reset (forget the conversation), /persona NAME, /temperature X, /exit.
A causal LM answers as `chatforge serve` answers (threshold, retrieval in the loop, fallback) unless
--raw asks for the model's own tokens as they come.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

from chatforge.data.lang import detect_lang
from chatforge.runtime.decode import GenerationConfig, conversation_seed


@dataclass(frozen=True)
class Persona:
    name: str
    temperature: float
    top_p: float
    system_prompt: str | None


@dataclass(frozen=True)
class Served:
    """What `chatforge serve` does to a causal LM's answer (serve.confidence_threshold,
    serve.confidence_tokens, serve.fallback; retrieval in the loop comes with the backend)."""

    threshold: float
    confidence_tokens: int | None
    fallback: dict[str, str]


def chat_loop(
    backend: Any,
    lines: Iterable[str],
    write: Callable[[str], None],
    *,
    config: GenerationConfig,
    persona: Persona | None = None,
    personas: dict[str, Persona] | None = None,
    served: Served | None = None,
    seed: int = 0,
) -> list[dict[str, str]]:
    """Read user lines, write answers; returns the conversation (for tests and transcripts).

    A sampled reply (temperature > 0, no seed in `config`) is seeded by the conversation so far and
    `seed` (serve.seed), as `chatforge serve` seeds a request without one: the same conversation
    gets the same reply in the terminal and over HTTP.

    With `served`, a causal LM's answer is shown as `chatforge serve` shows it
    (chatforge.runtime.hybrid.served_answer: the confidence threshold, retrieval in the loop, the
    fallback), whole once decided, followed by where it came from; without, tokens stream as the
    model writes them."""
    personas = personas or {}
    messages: list[dict[str, str]] = []

    def system() -> list[dict[str, str]]:
        return [{"role": "system", "content": persona.system_prompt}] if persona and persona.system_prompt else []

    for raw in lines:
        line = raw.strip()
        if not line:
            continue
        if line in ("/exit", "/quit"):
            break
        if line == "/reset":
            messages = []
            write("(conversation reset)\n")
            continue
        if line.startswith("/persona"):
            name = line.partition(" ")[2].strip()
            if name not in personas:
                write(f"(unknown persona {name!r}; choose one of: {', '.join(sorted(personas)) or 'none configured'})\n")
                continue
            persona = personas[name]
            config = replace(config, temperature=persona.temperature, top_p=persona.top_p)
            write(f"(persona {name}: temperature {persona.temperature}, top_p {persona.top_p})\n")
            continue
        if line.startswith("/temperature"):
            try:
                config = replace(config, temperature=float(line.partition(" ")[2]))
            except ValueError as exc:
                write(f"(temperature must be a number >= 0: {exc})\n")
                continue
            write(f"(temperature {config.temperature})\n")
            continue
        messages.append({"role": "user", "content": line})
        prompt = system() + messages
        turn = config
        if config.temperature > 0 and config.seed is None:
            turn = replace(config, seed=conversation_seed(prompt, seed))
        write("bot> ")
        generator = getattr(backend, "generator", None)
        if generator is not None and served is not None:  # causal LM as served: decided on the whole answer
            from chatforge.metrics import answer_confidence
            from chatforge.runtime.hybrid import served_answer

            lang = detect_lang(line)
            gen = generator.generate(prompt, turn)
            confidence = answer_confidence(gen.token_logprobs, first=served.confidence_tokens)
            text, source = served_answer(gen.text, confidence, threshold=served.threshold, prompt=prompt, lang=lang,
                                         loop=getattr(backend, "loop", None), fallback=served.fallback[lang])
            write(text)
            write(f"\n     (confidence {confidence:.2f}; {source})\n")
            messages.append({"role": "assistant", "content": text})
            continue
        if generator is not None:  # causal LM: print tokens as they come
            for delta in generator.stream(prompt, turn):
                write(delta)
            text = generator.last.text if generator.last else ""
            confidence = generator.last.confidence if generator.last else 0.0
        else:
            answer = backend.answer(prompt, turn, lang=detect_lang(line))
            text, confidence = answer.text, answer.confidence
            write(text)
        write(f"\n     (confidence {confidence:.2f})\n")
        messages.append({"role": "assistant", "content": text})
    return messages
