"""chatforge.runtime.fallback: the one answer-or-fall-back rule serve and evaluate share."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest

from chatforge.metrics import answer_confidence
from chatforge.runtime.fallback import confidence, falls_back


@dataclass
class Served:
    confidence: float
    token_logprobs: tuple[float, ...] = ()


def test_a_number_is_compared_as_is_and_nan_never_falls_back() -> None:
    assert falls_back(0.69, 0.7) and not falls_back(0.7, 0.7) and not falls_back(0.9, 0.7)
    assert not falls_back(float("nan"), 0.7)  # not generated: nothing to judge


def test_an_answer_is_judged_on_its_first_tokens_or_its_own_confidence() -> None:
    sure_then_not = (math.log(0.9), math.log(0.9), math.log(0.1), math.log(0.1))
    answer = Served(confidence=0.2, token_logprobs=sure_then_not)
    assert confidence(answer, 2) == pytest.approx(0.9)
    assert confidence(answer, None) == pytest.approx(answer_confidence(sure_then_not))
    assert not falls_back(answer, 0.7, 2) and falls_back(answer, 0.7, None)
    assert confidence(Served(confidence=0.8), 2) == 0.8  # a classifier: its own confidence
    assert not falls_back(Served(confidence=0.8), 0.7, 2)


def test_a_stream_is_judged_on_the_log_probabilities_so_far() -> None:
    assert falls_back([math.log(0.5)] * 3, 0.7, 4) and not falls_back([math.log(0.8)] * 5, 0.7, 4)
    assert falls_back([], 0.7, 4)  # no token: confidence 0
