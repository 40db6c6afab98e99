"""Model backends: a causal LM through the shared generation path, or an intent classifier.

Both answer a list of chat messages with an `Answer` carrying a confidence, so the service applies
one threshold to either family:
- causal LM: the geometric-mean token probability of the answer (Generation.confidence), computed
  under the model's own distribution whatever the sampling temperature;
- classifier: the top softmax probability after the calibration temperature fitted on val
  (chatforge.json details["calibration_temperature"]), answered from responses.json.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from chatforge.modeling.device import onnx_session, place
from chatforge.modeling.generate import GenerationConfig, load_generator
from chatforge.runtime.folder import MANIFEST_NAME, read_family, read_manifest

log = logging.getLogger("chatforge.serving.backends")

BackendName = Literal["auto", "torch", "onnx", "onnx_int8"]


@dataclass(frozen=True)
class Answer:
    text: str
    confidence: float
    finish_reason: Literal["stop", "length"]
    prompt_tokens: int
    completion_tokens: int
    intent: str | None = None
    # per generated token: its text (they add up to `text`), log-probability and top alternatives;
    # empty for a classifier, whose answer is not generated
    token_texts: tuple[str, ...] = ()
    token_logprobs: tuple[float, ...] = ()
    top_logprobs: tuple[tuple[tuple[str, float], ...], ...] = ()

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Answer:
        data = dict(data)
        data["token_texts"] = tuple(data.get("token_texts", ()))
        data["token_logprobs"] = tuple(data.get("token_logprobs", ()))
        data["top_logprobs"] = tuple(tuple((str(t), float(lp)) for t, lp in top) for top in data.get("top_logprobs", ()))
        return cls(**data)

    def tokens(self) -> list[tuple[str, float, list[tuple[str, float]]]] | None:
        """(text, logprob, top alternatives) per token; None when the answer has no tokens."""
        if not self.token_texts:
            return None
        tops = self.top_logprobs or tuple(() for _ in self.token_texts)
        return [(t, lp, list(top)) for t, lp, top in zip(self.token_texts, self.token_logprobs, tops, strict=True)]


class ModelBackend(Protocol):
    family: str
    fingerprint: str

    def answer(self, messages: list[dict[str, str]], config: GenerationConfig, *, lang: str) -> Answer: ...

    def token_ids(self, text: str) -> list[int]:
        """The model's tokens for `text` alone (no special tokens): how usage counts shown text."""
        ...

    def detokenize(self, ids: list[int]) -> str: ...


class _Tokens:
    tokenizer: Any

    def token_ids(self, text: str) -> list[int]:
        return [int(i) for i in self.tokenizer(text, add_special_tokens=False)["input_ids"]]

    def detokenize(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True)).rstrip("\ufffd")


class PromptError(ValueError):
    """The model's chat template refused these messages (its own rule: Gemma- and Qwen-family
    templates allow one system message, first; some require user/assistant to alternate)."""


class CausalLMBackend(_Tokens):
    """A causal LM behind a DecodeScheduler: requests that arrive together are decoded as one batch
    on the scheduler's thread (serving.batching). Its confidence is over the whole answer; the
    service judges the first serve.confidence_tokens of `token_logprobs`."""

    family = "causal_lm"

    def __init__(self, folder: Path | str, *, backend: BackendName = "auto", max_batch_size: int = 8,
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


class ClassifierBackend(_Tokens):
    """Intent classifier: the last user message -> intent -> the canned answer in the user's language."""

    family = "classifier"

    def __init__(self, folder: Path | str, *, backend: BackendName = "auto", providers: Sequence[str] | None = None) -> None:
        from transformers import AutoConfig, AutoTokenizer

        folder = Path(folder)
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        config = AutoConfig.from_pretrained(folder)
        self.labels = [config.id2label[i] for i in range(len(config.id2label))]
        responses_path = folder / "responses.json"
        if not responses_path.exists():
            raise FileNotFoundError(
                f"{responses_path}: a classifier folder needs responses.json (intent -> {{zh, en}})."
            )
        self.responses: dict[str, dict[str, str]] = json.loads(responses_path.read_text(encoding="utf-8"))
        missing = [label for label in self.labels if label not in self.responses]
        if missing:
            raise ValueError(
                f"{responses_path}: no response for intents {missing}; add them (with 'zh' and 'en')."
            )
        details = read_manifest(folder).details if (folder / MANIFEST_NAME).exists() else {}
        self.temperature = float(details.get("calibration_temperature", 1.0))
        if "calibration_temperature" not in details:
            log.warning(
                "%s: no calibration_temperature in %s; confidences are uncalibrated", folder, MANIFEST_NAME
            )
        if not self.temperature > 0:
            raise ValueError(f"{folder}: calibration_temperature = {self.temperature} must be > 0")
        onnx_path = {"onnx": folder / "model.onnx", "onnx_int8": folder / "model.int8.onnx"}.get(backend)
        if backend == "auto":
            onnx_path = next(
                (p for p in (folder / "model.int8.onnx", folder / "model.onnx") if p.exists()), None
            )
        h = hashlib.sha256(f"classifier:{self.temperature}:".encode())
        h.update(responses_path.read_bytes())
        if onnx_path is not None:
            if not onnx_path.exists():
                raise FileNotFoundError(
                    f"{onnx_path}: missing for backend={backend!r}. Run `dvc repro quantize`."
                )
            self._session = onnx_session(onnx_path, providers=providers)  # quantize.providers (default CPU)
            self._inputs = {i.name for i in self._session.get_inputs()}
            self.model = None
            weights = onnx_path
        else:
            from transformers import AutoModelForSequenceClassification

            weights = folder / "model.safetensors"
            self.model = place(AutoModelForSequenceClassification.from_pretrained(folder, dtype="float32").eval())
        h.update(weights.read_bytes())
        self.fingerprint = f"classifier:{h.hexdigest()[:16]}"
        self._lock = threading.Lock()

    def _logits(self, text: str) -> np.ndarray:
        if self.model is None:
            enc = self.tokenizer(text, truncation=True, return_tensors="np")
            feeds = {k: v.astype(np.int64) for k, v in enc.items() if k in self._inputs}
            return np.asarray(self._session.run(None, feeds)[0][0], dtype=np.float64)
        import torch

        enc = self.tokenizer(text, truncation=True, return_tensors="pt").to(self.model.device)
        with torch.inference_mode():
            return self.model(**enc).logits[0].double().cpu().numpy()

    def answer(self, messages: list[dict[str, str]], config: GenerationConfig, *, lang: str) -> Answer:
        text = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        with self._lock:
            logits = self._logits(text) / self.temperature
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        top = int(np.argmax(probs))
        intent = self.labels[top]
        reply = self.responses[intent]
        shown = reply.get(lang) or reply.get("en") or next(iter(reply.values()))
        return Answer(
            text=shown,
            confidence=float(probs[top]),
            finish_reason="stop",
            prompt_tokens=len(self.tokenizer(text)["input_ids"]),
            completion_tokens=len(self.token_ids(shown)),  # the canned answer the user receives
            intent=intent,
        )


def open_backend(folder: Path | str, *, backend: BackendName = "auto", providers: Sequence[str] | None = None,
                 **causal: Any) -> ModelBackend:
    """Open any model folder the pipeline built; the family comes from chatforge.json (or config.json).
    `causal` (max_batch_size, max_wait_ms, hybrid: serve.hybrid) configures a causal LM's batching
    and retrieval in the loop; ONNX files run on the
    execution `providers` (quantize.providers; None: CPU), torch weights on the accelerator if any."""
    family = read_family(folder, plain_ok=True)
    if family == "classifier":
        return ClassifierBackend(folder, backend=backend, providers=providers)
    return CausalLMBackend(folder, backend=backend, providers=providers, **causal)


__all__ = ["Answer", "CausalLMBackend", "ClassifierBackend", "ModelBackend", "PromptError", "open_backend"]
