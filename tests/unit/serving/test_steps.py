"""ChatService is cut into named steps, one module each (issue 21): a newcomer finds each step of a
request by its module name, and the one answer-or-fall-back rule lives in chatforge.runtime."""

from __future__ import annotations

import re
from pathlib import Path

from chatforge.serving.app import ChatService

SRC = Path(__file__).resolve().parents[3] / "src" / "chatforge"
STEPS = {  # method -> the module that holds it, in the order a request meets them
    "authenticate": "screen", "check_supported": "screen", "check_bounds": "screen", "fit_context": "screen",
    "screen_messages": "screen", "resolve": "settings", "prepare": "settings", "_cached": "cache",
    "stream": "decode", "_stream_live": "decode", "_decode": "decode", "confidence": "judge", "replaced": "judge",
    "record": "record", "feedback": "record", "answer": "app",
}


def test_each_step_of_a_request_lives_in_its_module() -> None:
    owners = {name: getattr(ChatService, name).__module__.rsplit(".", 1)[-1] for name in STEPS}
    assert owners == STEPS


def test_the_fallback_rule_is_written_once() -> None:
    """Only runtime/fallback.py compares a confidence with the threshold; the rest call falls_back
    (the pattern matches each of the four copies the rule had before)."""
    compare = re.compile(r"(conf\w*|judged)\s*(<|>=)\s*(\w+\.)?(confidence_)?(threshold|t)\b")
    comparing = sorted({p.relative_to(SRC).as_posix() for p in SRC.rglob("*.py")
                        for line in p.read_text(encoding="utf-8").splitlines() if compare.search(line)})
    assert comparing == [], f"compare a confidence with the threshold through chatforge.runtime.fallback.falls_back: {comparing}"
    assert "confidence(answer, first_tokens) < threshold" in (SRC / "runtime" / "fallback.py").read_text(encoding="utf-8")


def test_no_tiny_model_factory_ships_in_the_wheel() -> None:
    shipped = [p.relative_to(SRC).as_posix() for p in SRC.rglob("*.py")
               if "def build_tiny" in p.read_text(encoding="utf-8") or "tinymodels" in p.read_text(encoding="utf-8")]
    assert shipped == []
