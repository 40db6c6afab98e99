"""The intent-classifier family: inputs, labels, responses and calibrated confidences.

Input text: the first user message (`first_user`, what a serving request starts with) or all user
messages joined (`all_user`). Labels: the conversation's intent; conversations without one are
left out and counted. Responses: per intent and language, the most frequent first assistant answer
in the train data (ties: the lexicographically smallest), unless a responses file is given.
Confidences are calibrated by temperature scaling (one scalar T fitted on val by minimising NLL;
softmax(logits / T)), and the expected calibration error is reported before and after.
"""

from __future__ import annotations

from collections import Counter
from itertools import pairwise
from typing import Any, Literal

import torch

from chatforge.runtime.conversation import Conversation, Example, TokenStats


def classifier_text(conv: Conversation, mode: Literal["first_user", "all_user"]) -> str:
    users = [m["content"] for m in conv.messages if m["role"] == "user"]
    if not users:
        return ""
    return users[0] if mode == "first_user" else "\n".join(users)


def label_names(convs: list[Conversation]) -> list[str]:
    return sorted({c.intent for c in convs if c.intent})


def classifier_examples(
    convs: list[Conversation],
    tokenizer: Any,
    *,
    labels: list[str],
    mode: Literal["first_user", "all_user"],
    max_seq_len: int,
) -> tuple[list[Example], TokenStats]:
    """One example per conversation with a known intent; input truncated at max_seq_len tokens."""
    index = {name: i for i, name in enumerate(labels)}
    stats = TokenStats(conversations=len(convs), extra={"no_intent": 0, "unknown_intent": 0, "no_user_text": 0})
    out: list[Example] = []
    for conv in convs:
        if not conv.intent:
            stats.extra["no_intent"] += 1
            continue
        if conv.intent not in index:
            stats.extra["unknown_intent"] += 1  # a val intent the train data never had
            continue
        text = classifier_text(conv, mode)
        if not text.strip():
            stats.extra["no_user_text"] += 1
            continue
        ids = tokenizer(text, add_special_tokens=True, verbose=False)["input_ids"]
        if len(ids) > max_seq_len:
            stats.truncated += 1
            ids = ids[: max_seq_len - 1] + ids[-1:]  # keep the closing [SEP]
        stats.tokens += len(ids)
        out.append(Example(ids, [index[conv.intent]], conv.conversation_id, conv.lang))
    return out, stats


def collate_classifier(batch: list[Example], *, pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(e.input_ids) for e in batch)
    return {
        "input_ids": torch.tensor([e.input_ids + [pad_id] * (width - len(e.input_ids)) for e in batch]),
        "attention_mask": torch.tensor([[1] * len(e.input_ids) + [0] * (width - len(e.input_ids)) for e in batch]),
        "labels": torch.tensor([e.labels[0] for e in batch]),
        "num_tokens": torch.tensor(sum(len(e.input_ids) for e in batch)),  # non-padding
    }


def learn_responses(convs: list[Conversation]) -> dict[str, dict[str, str]]:
    """{intent: {lang: most frequent first assistant answer}} from the train conversations."""
    counts: dict[tuple[str, str], Counter[str]] = {}
    for conv in convs:
        answer = next((m["content"] for m in conv.messages if m["role"] == "assistant"), None)
        if conv.intent and answer:
            counts.setdefault((conv.intent, conv.lang), Counter())[answer] += 1
    out: dict[str, dict[str, str]] = {}
    for (intent, lang), counter in sorted(counts.items()):
        best = max(counter.values())
        out.setdefault(intent, {})[lang] = min(a for a, n in counter.items() if n == best)
    return out


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, *, bins: int = 10) -> float:
    """ECE: bin by confidence, average |accuracy - confidence| weighted by bin size."""
    if len(labels) == 0:
        return 0.0
    conf, pred = probs.max(dim=-1)
    correct = (pred == labels).float()
    edges = torch.linspace(0, 1, bins + 1)
    ece = 0.0
    for lo, hi in pairwise(edges.tolist()):
        in_bin = (conf > lo) & (conf <= hi)
        if in_bin.any():
            ece += in_bin.float().mean().item() * abs(correct[in_bin].mean().item() - conf[in_bin].mean().item())
    return float(ece)


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, *, max_iter: int = 200) -> float:
    """The temperature T > 0 minimising val NLL of softmax(logits / T) (optimised in log T)."""
    if len(labels) == 0:
        return 1.0
    logits = logits.detach().double()
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    opt.step(closure)
    t = float(log_t.exp().item())
    return min(max(t, 0.05), 20.0)  # a degenerate val set must not produce an absurd temperature


def read_responses(path: str) -> dict[str, dict[str, str]]:
    """A responses file: {intent: {"zh": answer, "en": answer}}."""
    import json
    from pathlib import Path

    from chatforge.params import ParamsError

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ParamsError(f"train.responses_path = {path!r}: cannot read a JSON object ({exc}).") from None
    if not isinstance(data, dict) or not all(
        isinstance(v, dict) and all(isinstance(t, str) for t in v.values()) for v in data.values()
    ):
        raise ParamsError(f"train.responses_path = {path!r}: expected {{intent: {{\"zh\": text, \"en\": text}}}}.")
    return data
