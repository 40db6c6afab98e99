"""Retrieval in the loop: when the model is unsure, answer with the team's own past answer.

A small model trained for minutes knows the phrasings it saw; a new phrasing makes it unsure, and
an unsure generation is usually a wrong one. Deployed customer-service systems combine the two
(AliMe Chat, Qiu et al. ACL 2017: retrieve candidates from past exchanges, rerank them with the
generative model, answer from retrieval when a candidate is good enough, generate otherwise). The
rule here, the same in `chatforge serve` and in evaluate:

1. The model generates; when its confidence (geometric-mean probability of the first
   serve.confidence_tokens tokens) reaches serve.confidence_threshold, its answer is served.
2. Otherwise the `top_k` train exchanges nearest the prompt (the retrieval baseline's character
   1-3-gram TF-IDF cosine over the user turn and its context) are candidates. Each candidate's answer
   is moved into this dialogue (its slot values replaced by this dialogue's through the model's slot
   placeholders; a candidate that needs a value this dialogue never gave is left out) and scored by
   the model: the mean log-probability of its tokens after this prompt. The best scoring candidate
   is served.
3. When no candidate reaches `min_similarity` (nothing in the team's history resembles the
   question), the fallback message is served.

The exchanges travel inside the model folder (`retrieval.jsonl`, written by train from the train
split's original conversations and copied down the chain), so a folder answers the same wherever
it is opened. The `retrieval` variant of evaluate stays the plain top-1 baseline: it is the bar.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from chatforge.modeling.data import Conversation
from chatforge.params import ServeHybrid

INDEX_NAME = "retrieval.jsonl"
Source = Literal["model", "retrieval", "fallback"]


@dataclass(frozen=True)
class Choice:
    text: str  # the candidate answer moved into this dialogue
    similarity: float  # its TF-IDF cosine to the prompt (user turn + context_weight x context)
    score: float  # mean log-probability of its tokens under the model, after the prompt
    conversation_id: str  # where it came from


def write_index(folder: Path, convs: Sequence[Conversation]) -> int:
    """Write the exchanges a folder answers from (`retrieval.jsonl`, one conversation per line,
    sorted by id) into a folder being built; returns the number of conversations written."""
    lines = [json.dumps({"conversation_id": c.conversation_id, "lang": c.lang, "intent": c.intent,
                         "messages": c.messages}, ensure_ascii=False)
             for c in sorted(convs, key=lambda c: c.conversation_id)]
    (folder / INDEX_NAME).write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return len(lines)


def read_index(folder: Path) -> list[Conversation] | None:
    """The conversations of a folder's `retrieval.jsonl`; None when the folder has none."""
    path = Path(folder) / INDEX_NAME
    if not path.exists():
        return None
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        try:
            rec = json.loads(line)
            out.append(Conversation(rec["conversation_id"], rec["lang"], rec.get("intent"), rec["messages"]))
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}:{n}: not a retrieval record ({type(exc).__name__}); rebuild the folder "
                             "with `dvc repro`") from None
    return out


class RetrievalInTheLoop:
    """Candidates from a folder's exchanges, reranked by the folder's own model (module docstring).

    `generator` is the folder's generator (torch or ONNX, chatforge.modeling.generate); `choose`
    returns the best Choice for a prompt, or None when no candidate reaches min_similarity or can
    be moved into the dialogue."""

    def __init__(self, convs: Sequence[Conversation], generator: Any, settings: ServeHybrid) -> None:
        from chatforge.modeling.retrieval import RetrievalBot

        self.bot = RetrievalBot(convs)
        self.generator = generator
        self.settings = settings

    @classmethod
    def open(cls, folder: Path, generator: Any, settings: ServeHybrid) -> RetrievalInTheLoop | None:
        """The folder's retrieval-in-the-loop, or None when it carries no exchanges or it is off."""
        convs = read_index(folder) if settings.enabled else None
        return cls(convs, generator, settings) if convs else None

    def choose(self, prompt: list[dict[str, str]], *, lang: str) -> Choice | None:
        from chatforge.modeling.quality import sequence_logprobs
        from chatforge.modeling.slots import codec_for

        ranked = self.bot.top(prompt, k=self.settings.top_k, lang=lang)
        codec = codec_for(self.generator.tokenizer)
        prompt_ids, values = self.generator.encode_prompt(prompt)
        eos = self.generator.tokenizer.eos_token_id
        best: Choice | None = None
        for entry, sim in ranked:
            if sim < self.settings.min_similarity:
                continue
            answer = entry.answer
            if codec is not None:  # the candidate's own slot values -> placeholders -> this dialogue's
                own = codec.encode([*entry.messages, {"role": "assistant", "content": answer}])
                answer = own.messages[-1]["content"]
                needed = set(_placeholders(answer))
                if not needed <= set(values or {}):
                    continue
            answer_ids = self.generator.tokenizer(answer, add_special_tokens=False)["input_ids"]
            if not answer_ids:
                continue
            ids = [*prompt_ids, *answer_ids, *([eos] if eos is not None else [])]
            logp = sequence_logprobs(self.generator, ids)[len(prompt_ids) - 1:]
            score = float(np.mean(logp))
            if best is None or score > best.score:
                text = codec.decode(answer, values or {}) if codec is not None else answer
                best = Choice(text, float(sim), score, entry.conversation_id)
        return best


def _placeholders(text: str) -> list[str]:
    from chatforge.modeling.slots import PLACEHOLDER

    return [m.group(0) for m in PLACEHOLDER.finditer(text)]


def served_answer(text: str, confidence: float, *, threshold: float, prompt: list[dict[str, str]], lang: str,
                  loop: RetrievalInTheLoop | None, fallback: str) -> tuple[str, Source]:
    """What a user is shown for one generated answer (module docstring): the answer itself at or
    above `threshold`, else the reranked retrieval candidate, else `fallback`. A nan confidence
    (not generated) never falls back."""
    if not confidence < threshold:
        return text, "model"
    choice = loop.choose(prompt, lang=lang) if loop is not None else None
    return (choice.text, "retrieval") if choice is not None else (fallback, "fallback")
