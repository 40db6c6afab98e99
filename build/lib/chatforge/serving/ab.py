"""A/B testing: sticky weighted assignment by a hash of the user id, and the satisfaction report.

Assignment is a pure function of (salt, user id, variants and weights): every instance behind a
load balancer routes a user the same way without sharing state, and a user keeps their variant
for as long as the variant list and weights stay the same.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass


def user_bucket(user: str, *, salt: str) -> float:
    """A uniform number in [0, 1) fixed by the user id (first 8 bytes of SHA-256)."""
    digest = hashlib.sha256(f"{salt}\x00{user}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_variant(user: str, variants: Sequence[tuple[str, float]], *, salt: str) -> str:
    """Pick a variant name for a user; weights need not sum to 1 (they are normalised)."""
    if not variants:
        raise ValueError("assign_variant needs at least one (name, weight) variant")
    total = sum(w for _, w in variants)
    if total <= 0 or any(w < 0 for _, w in variants):
        raise ValueError(f"variant weights must be >= 0 with a positive sum, got {list(variants)}")
    point = user_bucket(user, salt=salt) * total
    cumulative = 0.0
    for name, weight in variants:
        cumulative += weight
        if point < cumulative:
            return name
    return variants[-1][0]  # point == total only through rounding


def wilson_interval(successes: int, trials: int, *, z: float = 1.959963984540054) -> tuple[float, float]:
    """95% Wilson score interval for a proportion; (0, 1) when there are no trials."""
    if trials == 0:
        return 0.0, 1.0
    p = successes / trials
    denom = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def two_proportion_z_test(s1: int, n1: int, s2: int, n2: int) -> tuple[float, float]:
    """Pooled two-proportion z-test: (z, two-sided p-value). (0, 1) when it cannot be computed."""
    if n1 == 0 or n2 == 0:
        return 0.0, 1.0
    pooled = (s1 + s2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return 0.0, 1.0
    z = (s1 / n1 - s2 / n2) / se
    return z, math.erfc(abs(z) / math.sqrt(2))


@dataclass(frozen=True)
class VariantStats:
    variant: str
    requests: int
    rated: int  # answers with a thumbs up or down
    positive: int

    @property
    def satisfaction(self) -> float | None:
        return self.positive / self.rated if self.rated else None


@dataclass(frozen=True)
class Comparison:
    baseline: str
    variant: str
    z: float
    p_value: float
    significant: bool


def compare_variants(stats: Sequence[VariantStats], *, alpha: float = 0.05) -> list[Comparison]:
    """Each variant against the first (the baseline) on positive-feedback rate."""
    if len(stats) < 2:
        return []
    base = stats[0]
    out = []
    for other in stats[1:]:
        z, p = two_proportion_z_test(other.positive, other.rated, base.positive, base.rated)
        out.append(
            Comparison(base.variant, other.variant, z, p, bool(base.rated and other.rated and p < alpha))
        )
    return out


def format_report(stats: Sequence[VariantStats], *, alpha: float = 0.05) -> str:
    lines = [
        f"{'variant':<16} {'requests':>8} {'rated':>6} {'positive':>8} {'satisfaction':>12}  95% interval"
    ]
    for s in stats:
        low, high = wilson_interval(s.positive, s.rated)
        rate = f"{s.satisfaction:.1%}" if s.satisfaction is not None else "-"
        lines.append(
            f"{s.variant:<16} {s.requests:>8} {s.rated:>6} {s.positive:>8} {rate:>12}  [{low:.1%}, {high:.1%}]"
        )
    for c in compare_variants(stats, alpha=alpha):
        verdict = "SIGNIFICANT" if c.significant else "not significant"
        lines.append(
            f"{c.variant} vs {c.baseline}: z = {c.z:+.2f}, p = {c.p_value:.4f} -> {verdict} at alpha = {alpha}"
        )
    if len(stats) < 2:
        lines.append("only one variant has traffic: nothing to compare")
    return "\n".join(lines)


__all__ = [
    "Comparison",
    "VariantStats",
    "assign_variant",
    "compare_variants",
    "format_report",
    "two_proportion_z_test",
    "user_bucket",
    "wilson_interval",
]
