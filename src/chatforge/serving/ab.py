"""A/B testing: sticky weighted assignment by a hash of the user id, the satisfaction report, and
the decision whether a new model may replace the served one (`decide`).

Assignment is a pure function of (salt, user id, variants and weights): every instance behind a
load balancer routes a user the same way without sharing state, and a user keeps their variant
for as long as the variant list and weights stay the same.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any, Literal


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


def non_inferiority_test(s_new: int, n_new: int, s_base: int, n_base: int, *, margin: float) -> tuple[float, float]:
    """One-sided non-inferiority z-test for two proportions, unpooled (Wald) variance: (z, p-value).

    H0: p_new - p_base <= -margin (the new variant is worse by the margin or more) against
    H1: p_new - p_base > -margin. With the observed rates p = s / n,

        z = (p_new - p_base + margin) / sqrt(p_new (1 - p_new) / n_new + p_base (1 - p_base) / n_base)
        p = P(Z >= z) = erfc(z / sqrt(2)) / 2

    (Blackwelder 1982, "Proving the null hypothesis in clinical trials", Controlled Clinical Trials
    3:345-353; Chow, Shao & Wang, Sample Size Calculations in Clinical Research, 2nd ed. 2008,
    section 4.2). H0 is rejected at level alpha when p < alpha, which is the same as the one-sided
    (1 - alpha) lower confidence bound of p_new - p_base lying above -margin. When both observed
    rates are 0 or 1 the variance is 0: z is +inf (p = 0) if p_new - p_base > -margin, -inf (p = 1)
    if below, and 0 (p = 0.5) at equality. Raises ValueError when a variant has no rated answer or
    the margin is outside [0, 1)."""
    if n_new <= 0 or n_base <= 0:
        raise ValueError(f"the non-inferiority test needs rated answers for both variants (got {n_new} and {n_base})")
    if not 0.0 <= margin < 1.0:
        raise ValueError(f"the non-inferiority margin must be in [0, 1) (a difference of rates), got {margin}")
    p_new, p_base = s_new / n_new, s_base / n_base
    shifted = p_new - p_base + margin
    se = math.sqrt(p_new * (1 - p_new) / n_new + p_base * (1 - p_base) / n_base)
    z = shifted / se if se > 0 else (math.inf if shifted > 0 else -math.inf if shifted < 0 else 0.0)
    return z, math.erfc(z / math.sqrt(2)) / 2


@dataclass(frozen=True)
class Decision:
    """Whether the new variant may replace the baseline (`decide`): replace | keep | wait, why, and the
    non-inferiority test behind it (None where it could not be computed: a variant without ratings)."""

    action: Literal["replace", "keep", "wait"]
    reason: str
    baseline: str
    new: str
    difference: float | None  # new thumbs-up rate - baseline's
    z: float | None
    p_value: float | None  # one-sided non-inferiority p (non_inferiority_test)
    lower_bound: float | None  # one-sided (1 - alpha) lower confidence bound of the difference
    margin: float
    alpha: float
    min_rated: int


def decide(stats: Sequence[VariantStats], *, new: str | None = None, min_rated: int = 100, margin: float = 0.02,
           alpha: float = 0.05) -> Decision:
    """May the `new` variant (default: the last of `stats`) replace the baseline (the first)?

    - wait: either has fewer than `min_rated` rated answers; the reason says how many more each needs;
    - replace: its thumbs-up rate is not worse than the baseline's by `margin` (a difference of rates)
      or more: `non_inferiority_test` rejects H0 at `alpha` (one-sided p < alpha);
    - keep: otherwise (worse, or not enough evidence that it is not worse), and when there is only one
      variant.

    Raises ValueError when `new` names no variant of `stats` or names the baseline (the message lists
    the variants), when `stats` is empty, or when `min_rated` < 1."""
    if not stats:
        raise ValueError("no variants to compare: configure serve.variants (the first is the baseline)")
    if min_rated < 1:
        raise ValueError(f"--min-rated must be >= 1 (rated answers per variant before deciding), got {min_rated}")
    base = stats[0]
    names = [s.variant for s in stats]
    if new is not None and new not in names[1:]:
        what = "is the baseline (the first variant)" if new == base.variant else "is not a variant"
        raise ValueError(f"--new {new[:80]!r} {what}; choose one of: {', '.join(n[:80] for n in names[1:]) or 'none'}")
    other = next(s for s in stats if s.variant == new) if new is not None else stats[-1]
    common: dict[str, Any] = {"baseline": base.variant, "new": other.variant, "margin": margin, "alpha": alpha,
                              "min_rated": min_rated}
    tested: dict[str, Any] = {"difference": None, "z": None, "p_value": None, "lower_bound": None}
    if other is base:
        return Decision("keep", f"only one variant ({base.variant}): nothing to replace it with; serve the new model as "
                                "a second serve.variants entry", **tested, **common)
    if base.rated and other.rated:
        z, p = non_inferiority_test(other.positive, other.rated, base.positive, base.rated, margin=margin)
        tested = {"difference": other.positive / other.rated - base.positive / base.rated, "z": z, "p_value": p,
                  "lower_bound": _lower_bound(other, base, alpha)}
    shortfall = {s.variant: max(0, min_rated - s.rated) for s in (base, other)}
    if any(shortfall.values()):
        more = ", ".join(f"{s.variant} {shortfall[s.variant]} more ({s.rated} rated)" for s in (base, other))
        return Decision("wait", f"more ratings needed per variant (each needs {min_rated}): {more}", **tested, **common)
    p = tested["p_value"]
    rates = (f"{other.variant} {other.positive / other.rated:.1%} vs {base.variant} {base.positive / base.rated:.1%} "
             f"thumbs-up (difference {tested['difference']:+.3f}, one-sided {1 - alpha:.0%} lower bound "
             f"{tested['lower_bound']:+.3f})")
    if p < alpha:
        return Decision("replace", f"{other.variant} is not worse than {base.variant} by the margin {margin} or more: "
                                   f"non-inferiority p = {p:.4f} < alpha {alpha}; {rates}", **tested, **common)
    return Decision("keep", f"not shown that {other.variant} is within {margin} of {base.variant}: non-inferiority "
                            f"p = {p:.4f} >= alpha {alpha}; {rates}. Keep {base.variant}, or collect more ratings",
                    **tested, **common)


def _lower_bound(new: VariantStats, base: VariantStats, alpha: float) -> float:
    """One-sided (1 - alpha) Wald lower confidence bound of p_new - p_base (both rated)."""
    p_new, p_base = new.positive / new.rated, base.positive / base.rated
    se = math.sqrt(p_new * (1 - p_new) / new.rated + p_base * (1 - p_base) / base.rated)
    return p_new - p_base - NormalDist().inv_cdf(1 - alpha) * se


def format_decision(decision: Decision) -> str:
    """The report's last lines: the non-inferiority test (when computed) and `decision: ACTION (reason)`."""
    lines = []
    if decision.p_value is not None and decision.z is not None:
        lines.append(f"non-inferiority ({decision.new} vs {decision.baseline}, margin {decision.margin}): "
                     f"z = {decision.z:+.2f}, one-sided p = {decision.p_value:.4f}")
    lines.append(f"decision: {decision.action} ({decision.reason})")
    return "\n".join(lines)


def report_json(stats: Sequence[VariantStats], decision: Decision, *, alpha: float = 0.05) -> dict[str, Any]:
    """`chatforge ab report --json`: the table, the two-sided comparisons with the baseline and the
    decision, as one JSON object (infinite z written as null)."""
    def finite(x: float | None) -> float | None:
        return x if x is None or math.isfinite(x) else None

    variants = [{"variant": s.variant, "requests": s.requests, "rated": s.rated, "positive": s.positive,
                 "satisfaction": s.satisfaction, "interval_95": list(wilson_interval(s.positive, s.rated))} for s in stats]
    comparisons = [{"baseline": c.baseline, "variant": c.variant, "z": c.z, "p_value": c.p_value,
                    "significant": c.significant} for c in compare_variants(stats, alpha=alpha)]
    return {"variants": variants, "comparisons": comparisons, "alpha": alpha,
            "decision": {**asdict(decision), "z": finite(decision.z)}}


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
    "Decision",
    "VariantStats",
    "assign_variant",
    "compare_variants",
    "decide",
    "format_decision",
    "format_report",
    "non_inferiority_test",
    "report_json",
    "two_proportion_z_test",
    "user_bucket",
    "wilson_interval",
]
