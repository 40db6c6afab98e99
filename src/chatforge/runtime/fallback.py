"""Answer or fall back: the one confidence rule that `chatforge serve` and evaluate share.

An answer's confidence is the geometric-mean probability exp(mean log p) of its first
`first_tokens` generated tokens (serve.confidence_tokens; None: all of them), log-probabilities
at temperature 1 (chatforge.metrics.answer_confidence). Below `threshold` (serve.confidence_threshold;
evaluate.confidence_threshold when set, for classifiers) the user is shown the fallback message,
or, with retrieval in the loop, a past answer (chatforge.runtime.hybrid.served_answer).

Deciding on the first tokens lets a server decide before it streams the rest: a streamed and a
plain request get the same decision. An answer whose confidence is unknown (nan: not generated)
never falls back; a generated answer with no tokens has confidence 0.0 and always does (unless
the threshold is 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from chatforge.metrics import answer_confidence


@runtime_checkable
class Judged(Protocol):
    """An answer as serving backends return it: its own `confidence` (a classifier's softmax, or
    all-token confidence) and the log-probability of each generated token (empty when none)."""

    confidence: float
    token_logprobs: Sequence[float]


def confidence(answer: Judged | Sequence[float] | float, first_tokens: int | None = None) -> float:
    """The confidence the rule compares with the threshold, in [0, 1] (nan: unknown).

    `answer` is one of: a number (a confidence already computed, e.g. over the first tokens), the
    token log-probabilities decoded so far (a stream), or an answer with `token_logprobs` (judged on
    its first `first_tokens` of them) and `confidence` (used when it has no token log-probabilities:
    a classifier, or an upstream that returns none)."""
    if isinstance(answer, (int, float)):
        return float(answer)
    if isinstance(answer, Judged):
        if not answer.token_logprobs:
            return float(answer.confidence)
        return answer_confidence(answer.token_logprobs, first=first_tokens)
    return answer_confidence(list(answer), first=first_tokens)


def falls_back(answer: Judged | Sequence[float] | float, threshold: float, first_tokens: int | None = None) -> bool:
    """True when the fallback is shown instead of `answer`: its `confidence` (see there; over the
    first `first_tokens` token log-probabilities) is below `threshold` (in [0, 1]). A nan
    confidence never falls back."""
    return confidence(answer, first_tokens) < threshold


__all__ = ["Judged", "confidence", "falls_back"]
