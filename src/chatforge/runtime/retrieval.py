"""The retrieval FAQ bot: the bar a trained model must beat.

What a team could deploy instead of training: for a new message, find the most similar user turn
of the train conversations and answer with the assistant turn that followed it. Similarity is the
cosine of character 1-3-gram TF-IDF vectors (scikit-learn's TfidfVectorizer, sublinear tf), which
needs no word segmentation for Chinese. The last user message counts fully and the messages before
it (the preceding context, e.g. "Could you tell me your order number?") with weight
`context_weight`, so a bare "2024091027599, please hurry" finds an answer about an order.
Candidates are restricted to the query's language when it has any.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from chatforge.data.lang import detect_lang
from chatforge.runtime.conversation import Conversation


@dataclass(frozen=True)
class Entry:
    conversation_id: str
    lang: str
    user: str  # the user turn
    context: str  # the messages before it, joined
    answer: str  # the assistant turn that followed
    messages: tuple[dict[str, str], ...] = ()  # the dialogue up to and including the user turn
    intent: str | None = None  # the conversation's intent, when it has one


def _entries(convs: Sequence[Conversation]) -> list[Entry]:
    out = []
    for conv in sorted(convs, key=lambda c: c.conversation_id):
        msgs = conv.messages
        for i in range(1, len(msgs)):
            if msgs[i]["role"] == "assistant" and msgs[i - 1]["role"] == "user" and msgs[i]["content"].strip():
                context = "\n".join(m["content"] for m in msgs[: i - 1])
                out.append(Entry(conv.conversation_id, conv.lang, msgs[i - 1]["content"], context, msgs[i]["content"],
                                 tuple(msgs[:i]), conv.intent))
    return out


class RetrievalBot:
    """Nearest train user turn (+ context) by character n-gram TF-IDF cosine -> its answer.

    Fit once on train conversations; `answer(prompt)` takes chat messages (the last must be the
    user's) and returns the stored answer. Deterministic: ties go to the first entry in
    conversation-id order. Raises ValueError when the train conversations hold no user -> assistant
    exchange."""

    def __init__(self, convs: Sequence[Conversation], *, context_weight: float = 0.5, ngram_max: int = 3) -> None:
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.entries = _entries(convs)
        if not self.entries:
            raise ValueError("the retrieval baseline found no user -> assistant exchange in the train conversations")
        self.context_weight = context_weight
        self.vectorizer = TfidfVectorizer(analyzer="char", ngram_range=(1, ngram_max), sublinear_tf=True, lowercase=True)
        self.vectorizer.fit([e.user for e in self.entries] + [e.context for e in self.entries if e.context])
        self.users = self.vectorizer.transform([e.user for e in self.entries])
        self.contexts = self.vectorizer.transform([e.context for e in self.entries])
        self.langs = np.asarray([e.lang for e in self.entries])

    def scores(self, prompt: Sequence[dict[str, str]]) -> np.ndarray:
        """Similarity of the prompt to every entry, shape (len(entries),)."""
        if not prompt or prompt[-1]["role"] != "user":
            raise ValueError("the retrieval baseline answers a prompt whose last message is the user's")
        user = prompt[-1]["content"]
        context = "\n".join(m["content"] for m in prompt[:-1] if m["role"] != "system")
        sim = (self.users @ self.vectorizer.transform([user]).T).toarray()[:, 0]
        if context and self.context_weight:
            sim = sim + self.context_weight * (self.contexts @ self.vectorizer.transform([context]).T).toarray()[:, 0]
        return sim

    def match(self, prompt: Sequence[dict[str, str]], *, lang: str | None = None) -> tuple[Entry, float]:
        """The best entry and its similarity; `lang` (default: detected from the user message)
        restricts candidates to that language when any exist."""
        sim = self.scores(prompt)
        lang = lang or detect_lang(prompt[-1]["content"])
        same = self.langs == lang
        if same.any():
            sim = np.where(same, sim, -np.inf)
        best = int(np.argmax(sim))  # first maximum: ties go to the earlier entry
        return self.entries[best], float(sim[best])

    def top(self, prompt: Sequence[dict[str, str]], *, k: int, lang: str | None = None) -> list[tuple[Entry, float]]:
        """The `k` best entries with their similarities, best first (ties: earlier entry first);
        `lang` restricts candidates as in `match`. `match` is `top(k=1)[0]`."""
        sim = self.scores(prompt)
        lang = lang or detect_lang(prompt[-1]["content"])
        same = self.langs == lang
        if same.any():
            sim = np.where(same, sim, -np.inf)
        order = np.argsort(-sim, kind="stable")[:k]
        return [(self.entries[int(i)], float(sim[int(i)])) for i in order if np.isfinite(sim[int(i)])]

    def answer(self, prompt: Sequence[dict[str, str]], *, lang: str | None = None) -> str:
        return self.match(prompt, lang=lang)[0].answer

    def size_bytes(self) -> int:
        """Bytes of what the bot keeps: the sparse matrices and the answer texts."""
        mats: list[Any] = [self.users, self.contexts]
        return int(sum(m.data.nbytes + m.indices.nbytes + m.indptr.nbytes for m in mats)
                   + sum(len(e.answer.encode()) for e in self.entries))
