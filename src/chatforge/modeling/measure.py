"""What distill and prune report for a model before and after: answer quality on val (the one
quality path, chatforge.runtime.quality), latency, parameters and size."""

from __future__ import annotations

from typing import Any, Literal

import torch

from chatforge.metrics import classification_scores
from chatforge.modeling.short_train import make_batches, target_logits
from chatforge.runtime.conversation import Conversation
from chatforge.runtime.device import to_device
from chatforge.runtime.quality import assistant_perplexity, model_answer_scores, request_latency


def parameter_count(model: Any) -> int:
    """Distinct parameters (a tied embedding/head counts once)."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if p.data_ptr() not in seen:
            seen.add(p.data_ptr())
            total += p.numel()
    return total


def size_mb(model: Any) -> float:
    """Bytes of the float32 safetensors file the model would write, in MB (tied weights once)."""
    return parameter_count(model) * 4 / 1e6


@torch.no_grad()
def quality(model: Any, tokenizer: Any, convs: list[Conversation], *, family: str, labels: list[str] | None,
            max_seq_len: int, bleu_samples: int, max_new_tokens: int, seed: int,
            classifier_input: Literal["first_user", "all_user"] = "first_user") -> dict[str, float]:
    """Causal LM: perplexity on assistant tokens + full answers scored by the one quality path
    (BLEU, slot carry ...); classifier: accuracy + macro-F1."""
    model.eval()
    if family == "classifier":
        batches = make_batches(convs, tokenizer, family=family, labels=labels, max_seq_len=max_seq_len, batch_size=8,
                               classifier_input=classifier_input)
        truth, pred = [], []
        for batch in batches:
            logits, targets = target_logits(model, to_device(batch, model.device), family)
            truth += [labels[i] for i in targets.tolist()]  # type: ignore[index]
            pred += [labels[i] for i in logits.argmax(-1).tolist()]  # type: ignore[index]
        scores = classification_scores(truth, pred, labels=labels or [])
        return {"accuracy": scores.accuracy, "macro_f1": scores.macro_f1}
    from chatforge.runtime.decode import TorchGenerator

    # the one perplexity path (chatforge.runtime.quality), as evaluate measures it
    scored = assistant_perplexity(TorchGenerator(model, tokenizer, fingerprint="quality"), convs, max_seq_len=max_seq_len)
    out = {"perplexity": scored["perplexity"]}
    if bleu_samples:
        out.update(model_answer_scores(model, tokenizer, convs, samples_per_lang=bleu_samples, max_new_tokens=max_new_tokens, seed=seed))
    return out


@torch.no_grad()
def latency(model: Any, tokenizer: Any, convs: list[Conversation], *, family: str, requests: int, max_new_tokens: int) -> dict[str, float]:
    """latency_p50_ms / latency_p95_ms as evaluate measures them (chatforge.runtime.quality.request_latency:
    one warm-up request, then each request timed once, ms): one request is the first user message of
    one of the first `requests` conversations; a classifier forward, or greedy generation of
    max_new_tokens for a causal LM."""
    from chatforge.runtime.decode import GenerationConfig, TorchGenerator

    model.eval()
    prompts = [[m for m in c.messages if m["role"] != "assistant"][:1] for c in convs[:requests]]
    prompts = [p for p in prompts if p]
    if family == "classifier":
        def serve(p: list[dict[str, str]]) -> Any:
            enc = tokenizer(p[0]["content"], return_tensors="pt").to(model.device)
            return model(**enc).logits.cpu()  # .cpu(): waits for an accelerator to finish
    else:
        gen = TorchGenerator(model, tokenizer, fingerprint="latency")
        config = GenerationConfig(max_new_tokens=max_new_tokens)

        def serve(p: list[dict[str, str]]) -> Any:
            return gen.generate(p, config)
    out, _ = request_latency(serve, prompts)
    return out
