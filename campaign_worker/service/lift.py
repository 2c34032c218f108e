"""Lift of a goal's conversion rate, with its uncertainty, from ``scipy.stats``: the
relative risk of converting (group over baseline) and its 95% confidence interval
(``scipy.stats.contingency.relative_risk``, Katz's log method), the lift being that ratio
minus one; and the p-value of Fisher's exact test on the 2x2 table
(``scipy.stats.fisher_exact``, exact at any sample size, where a two-proportion z-test is
not). Below ``MIN_GROUP`` conversations in a group or ``MIN_CONVERSIONS`` conversions in
both, the sample is too small to tell, and the report says so plainly.

Comparisons: the treatment (everyone not held out) over the holdout, and each A/B variant
of a stage over the stage's first variant.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from scipy.stats import fisher_exact
from scipy.stats.contingency import relative_risk

MIN_GROUP = 30  # conversations in each group
MIN_CONVERSIONS = 10  # conversions in both groups together
CONFIDENCE = 0.95
TOO_SMALL = "sample too small to tell"


@dataclass(frozen=True)
class Lift:
    """One comparison: ``group`` over ``baseline``."""

    group: str
    baseline: str
    converted: int
    conversations: int
    baseline_converted: int
    baseline_conversations: int
    rate: float
    baseline_rate: float
    lift: float | None  # rate / baseline_rate - 1 (None: no baseline conversion)
    ci95: tuple[float, float] | None  # of the lift (None: not estimable)
    p_value: float | None
    verdict: str

    def as_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["ci95"] = None if self.ci95 is None else list(self.ci95)
        return doc


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def lift(group: tuple[str, int, int], baseline: tuple[str, int, int]) -> Lift:
    """``group`` and ``baseline`` as (name, converted, conversations)."""
    name, converted, n = group
    base_name, base_converted, base_n = baseline
    rate = converted / n if n else 0.0
    base_rate = base_converted / base_n if base_n else 0.0
    ratio = ci = p_value = None
    if n and base_n:
        table = [[converted, n - converted], [base_converted, base_n - base_converted]]
        p_value = float(fisher_exact(table).pvalue)
        if converted and base_converted:
            result = relative_risk(converted, n, base_converted, base_n)
            ratio = _finite(result.relative_risk - 1)
            interval = result.confidence_interval(confidence_level=CONFIDENCE)
            low, high = _finite(interval.low - 1), _finite(interval.high - 1)
            ci = None if low is None or high is None else (low, high)
    return Lift(
        name,
        base_name,
        converted,
        n,
        base_converted,
        base_n,
        rate,
        base_rate,
        ratio,
        ci,
        p_value,
        _verdict(converted + base_converted, min(n, base_n), p_value),
    )


def _verdict(conversions: int, smaller: int, p_value: float | None) -> str:
    if smaller < MIN_GROUP or conversions < MIN_CONVERSIONS or p_value is None:
        return TOO_SMALL
    if p_value < 1 - CONFIDENCE:
        return "significant at 95%"
    return "no significant difference at 95%"


def goal_lifts(report: dict[str, Any]) -> list[Lift]:
    """A goal report's comparisons (``domain.goals.goal_report``): treatment over holdout
    (when there is a holdout), each variant over its stage's first (of those sent)."""
    lifts = []
    held, treated = report["holdout"], report["treatment"]
    if held["conversations"]:
        lifts.append(
            lift(
                ("treatment", treated["converted"], treated["conversations"]),
                ("holdout", held["converted"], held["conversations"]),
            )
        )
    for stage, variants in report["variants"].items():
        names = [name for name, values in variants.items() if values["conversations"]]
        first = variants[names[0]] if names else None
        for variant in names[1:]:  # only variants sent to someone: 0 of 0 compares nothing
            assert first is not None
            values = variants[variant]
            lifts.append(
                lift(
                    (f"{stage}:{variant}", values["converted"], values["conversations"]),
                    (f"{stage}:{names[0]}", first["converted"], first["conversations"]),
                )
            )
    return lifts


__all__ = ["MIN_CONVERSIONS", "MIN_GROUP", "TOO_SMALL", "Lift", "goal_lifts", "lift"]
