"""What evaluate and serving both answer with: the backend protocol (whose `Answer` is
chatforge.runtime.quality.Answer, the one answer type evaluate scores too), and the intent
classifier backend (a causal LM answers through chatforge.runtime.decode; serving wraps it in its
request batcher, chatforge.serving.backends.CausalLMBackend).

A classifier answers the last user message with its intent's canned answer in the user's language
(responses.json) and a confidence: the top softmax probability after the calibration temperature
fitted on val (chatforge.json details["calibration_temperature"]). Its ONNX files run through
`OnnxClassifier`, the one place chatforge feeds an exported classifier.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from chatforge.runtime.decode import Backend, GenerationConfig
from chatforge.runtime.device import onnx_session, place
from chatforge.runtime.folder import MANIFEST_NAME, load_torch, read_manifest
from chatforge.runtime.quality import Answer

log = logging.getLogger("chatforge.runtime.backends")


class ModelBackend(Protocol):
    family: str
    fingerprint: str

    def answer(self, messages: list[dict[str, str]], config: GenerationConfig, *, lang: str) -> Answer: ...

    def token_ids(self, text: str) -> list[int]:
        """The model's tokens for `text` alone (no special tokens): how usage counts shown text."""
        ...

    def detokenize(self, ids: list[int]) -> str: ...


class Tokens:
    """Token counting every tokenizer-backed backend shares (usage numbers, max_tokens cuts)."""

    tokenizer: Any

    def token_ids(self, text: str) -> list[int]:
        return [int(i) for i in self.tokenizer(text, add_special_tokens=False)["input_ids"]]

    def detokenize(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True)).rstrip("\ufffd")


class OnnxClassifier:
    """An exported sequence classifier (chatforge.compress.onnx_export.export_classifier) in an
    onnxruntime session on the execution `providers` (quantize.providers; None: CPU)."""

    def __init__(self, path: Path, *, providers: Sequence[str] | None = None) -> None:
        self.path = Path(path)
        self.session = onnx_session(self.path, providers=providers)
        self.inputs = [i.name for i in self.session.get_inputs()]

    def logits(self, encoding: Mapping[str, Any]) -> np.ndarray:
        """Logits [num_labels] (float32) of one text, from its tokenizer `encoding` (input_ids,
        attention_mask, ...: one sequence of ints each). Every input the graph declares must be in
        it (ValueError naming the missing one); keys the graph does not take are ignored."""
        missing = [name for name in self.inputs if name not in encoding]
        if missing:
            raise ValueError(f"{self.path}: the graph needs inputs {missing} the tokenizer did not give "
                             f"(it gave {sorted(encoding)}); re-export the folder with `dvc repro quantize`.")
        feeds = {name: np.asarray(encoding[name], dtype=np.int64).reshape(1, -1) for name in self.inputs}
        return np.asarray(self.session.run(None, feeds)[0][0])


class ClassifierBackend(Tokens):
    """Intent classifier: the last user message -> intent -> the canned answer in the user's language."""

    family = "classifier"

    def __init__(self, folder: Path | str, *, backend: Backend = "auto", providers: Sequence[str] | None = None) -> None:
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
            self.onnx: OnnxClassifier | None = OnnxClassifier(onnx_path, providers=providers)  # quantize.providers
            self.model = None
            weights = onnx_path
        else:
            weights = folder / "model.safetensors"
            self.onnx = None
            self.model = place(load_torch(folder, family=self.family, tokenizer=self.tokenizer)[0])
        h.update(weights.read_bytes())
        self.fingerprint = f"classifier:{h.hexdigest()[:16]}"
        self._lock = threading.Lock()

    def _logits(self, text: str) -> np.ndarray:
        if self.onnx is not None:
            return np.asarray(self.onnx.logits(self.tokenizer(text, truncation=True)), dtype=np.float64)
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


__all__ = ["ClassifierBackend", "ModelBackend", "OnnxClassifier", "Tokens"]
