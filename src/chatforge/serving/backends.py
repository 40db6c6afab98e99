"""Serving's model backends: a causal LM behind the request batcher, or a classifier, opened by family.

Both answer a list of chat messages with an `Answer` (chatforge.runtime.quality) carrying a
confidence, so the service applies one threshold to either family:
- causal LM: the geometric-mean token probability of the answer (Generation.confidence), computed
  under the model's own distribution whatever the sampling temperature;
- classifier: chatforge.runtime.backends.ClassifierBackend, the one evaluate scores (the top softmax
  probability after the calibration temperature fitted on val, answered from responses.json).

Only serving imports this module, so a change to serving's batching reruns no pipeline stage.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from chatforge.runtime.backends import ClassifierBackend, ModelBackend, Tokens
from chatforge.runtime.decode import Backend, GenerationConfig, load_generator
from chatforge.runtime.folder import read_family
from chatforge.runtime.quality import Answer


class PromptError(ValueError):
    """The model's chat template refused these messages (its own rule: Gemma- and Qwen-family
    templates allow one system message, first; some require user/assistant to alternate)."""


class CausalLMBackend(Tokens):
    """A causal LM behind a DecodeScheduler: requests that arrive together are decoded as one batch
    on the scheduler's thread (serving.batching). Its confidence is over the whole answer; the
    service judges the first serve.confidence_tokens of `token_logprobs`."""

    family = "causal_lm"

    def __init__(self, folder: Path | str, *, backend: Backend = "auto", max_batch_size: int = 8,
                 max_wait_ms: float = 2.0, providers: Sequence[str] | None = None, hybrid: Any = None) -> None:
        from chatforge.runtime.hybrid import RetrievalInTheLoop
        from chatforge.serving.batching import DecodeScheduler

        self.generator = load_generator(folder, backend=backend, providers=providers)
        # retrieval in the loop (serve.hybrid; None: off): what an unsure answer is replaced by
        self.loop = RetrievalInTheLoop.open(Path(folder), self.generator, hybrid) if hybrid is not None else None
        self.tokenizer = self.generator.tokenizer  # type: ignore[attr-defined]
        self.fingerprint = self.generator.fingerprint
        self.scheduler = DecodeScheduler(self.generator, max_batch_size=max_batch_size, max_wait_ms=max_wait_ms)

    @property
    def context_tokens(self) -> int | None:
        """Prompt + answer tokens the model was built for (config.max_position_embeddings)."""
        return self.generator.context_tokens  # type: ignore[attr-defined,no-any-return]

    def prompt_tokens(self, messages: list[dict[str, str]]) -> int:
        return len(self.generator.prompt_ids(messages))  # type: ignore[attr-defined]

    def measure(self, messages: list[dict[str, str]]) -> int:
        """The prompt's tokens after the chat template, rendered before the request joins a batch.

        Raises PromptError when the template refuses the messages (its message, at most 200
        characters: it is the model's text, not the client's)."""
        from jinja2 import TemplateError

        try:
            return self.prompt_tokens(messages)
        except (TemplateError, ValueError, TypeError, KeyError) as exc:
            raise PromptError(str(exc)[:200] or type(exc).__name__) from None

    def answer(self, messages: list[dict[str, str]], config: GenerationConfig, *, lang: str) -> Answer:
        return self.to_answer(self.scheduler.generate(messages, config))

    def to_answer(self, generation: Any) -> Answer:
        return Answer(
            text=generation.text,
            confidence=generation.confidence,
            finish_reason=generation.finish_reason,
            prompt_tokens=generation.prompt_tokens,  # counted when the prompt was encoded for decoding
            completion_tokens=len(generation.token_ids),
            token_texts=tuple(generation.token_texts),
            token_logprobs=tuple(generation.token_logprobs),
            top_logprobs=tuple(tuple(top) for top in generation.top_logprobs),
        )


def open_backend(folder: Path | str, *, backend: Backend = "auto", providers: Sequence[str] | None = None,
                 **causal: Any) -> ModelBackend:
    """Open any model folder the pipeline built; the family comes from chatforge.json (or config.json).
    `causal` (max_batch_size, max_wait_ms, hybrid: serve.hybrid) configures a causal LM's batching
    and retrieval in the loop; ONNX files run on the
    execution `providers` (quantize.providers; None: CPU), torch weights on the accelerator if any."""
    family = read_family(folder, plain_ok=True)
    if family == "classifier":
        return ClassifierBackend(folder, backend=backend, providers=providers)
    return CausalLMBackend(folder, backend=backend, providers=providers, **causal)


__all__ = ["CausalLMBackend", "PromptError", "open_backend"]
