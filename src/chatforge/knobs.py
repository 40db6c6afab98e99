"""Size-like knobs a stage may not reach: what was asked, what came out, and why.

A vocabulary size, a pruning ratio, a number of test samples: params ask for a size, the data or the
model's shape decides what is possible. Every stage records both sides with the reason in its
metrics JSON (`knobs: {key: {requested, reached, share, far, reason}}`), logs them, and warns when the
result is far from the request: outside [FAR_SHARE, 1 / FAR_SHARE] x the requested value.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

FAR_SHARE = 0.9  # a result below 90% (or above 1 / 0.9) of the request is "far" and warned about


@dataclass(frozen=True)
class Reached:
    """One size-like knob: `requested` (the params value), `reached` (what the stage got), `reason`
    (why they differ, or "as requested")."""

    key: str  # the params key, e.g. "model.scratch.vocab_size"
    requested: float
    reached: float
    reason: str = "as requested"

    @property
    def share(self) -> float:
        """reached / requested (nan for a zero request)."""
        return self.reached / self.requested if self.requested else math.nan

    @property
    def far(self) -> bool:
        """True when the result is outside [FAR_SHARE, 1 / FAR_SHARE] x the request."""
        share = self.share
        return not math.isnan(share) and not FAR_SHARE <= share <= 1 / FAR_SHARE

    def record(self) -> dict[str, Any]:
        return {"requested": self.requested, "reached": self.reached, "share": round(self.share, 4),
                "far": self.far, "reason": self.reason}

    def message(self) -> str:
        return f"{self.key}: requested {_num(self.requested)}, reached {_num(self.reached)} ({self.share:.0%}): {self.reason}"


def report_knobs(knobs: Iterable[Reached], log: logging.Logger) -> dict[str, dict[str, Any]]:
    """Log every knob (a warning when it is far from its request); return {key: record} for the metrics."""
    out: dict[str, dict[str, Any]] = {}
    for knob in knobs:
        (log.warning if knob.far else log.info)("%s", knob.message())
        out[knob.key] = knob.record()
    return out


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:.4g}"
