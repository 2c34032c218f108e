"""Scoring a classifier against labelled replies, pure: the figures ``intents eval`` and
the bench report.

A reply held for review counts as its own prediction, ``needs_review``: wrong for
accuracy and not an opt-out for opt-out recall (the strict reading). "Opt-out safety"
is the share of gold opt-outs that were opt-outs or held for review, i.e. never
advanced; the false opt-out rate is false opt-outs over the replies that were not
opt-outs.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from campaign_worker.domain.intents import OPT_OUT
from campaign_worker.domain.understanding import NEEDS_REVIEW


@dataclass(frozen=True, slots=True)
class Scored:
    """One labelled reply and what the classifier made of it."""

    gold: str
    predicted: str  # an intent, or NEEDS_REVIEW
    language: str | None = None
    tags: tuple[str, ...] = ()


def _ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _accuracy_by(groups: dict[str, list[Scored]]) -> dict[str, dict[str, Any]]:
    return {
        name: {
            "replies": len(items),
            "accuracy": _ratio(sum(s.gold == s.predicted for s in items), len(items)),
        }
        for name, items in sorted(groups.items())
    }


def _confusion(scored: Sequence[Scored]) -> dict[str, dict[str, int]]:
    """gold -> predicted -> count; the columns every label seen plus ``needs_review``."""
    gold_labels = sorted({s.gold for s in scored})
    predicted_labels = {s.predicted for s in scored} - {NEEDS_REVIEW}
    columns = [*sorted(set(gold_labels) | predicted_labels), NEEDS_REVIEW]
    confusion = {gold: dict.fromkeys(columns, 0) for gold in gold_labels}
    for s in scored:
        confusion[s.gold][s.predicted] += 1
    return confusion


def _per_intent(
    confusion: dict[str, dict[str, int]], predicted_counts: Counter[str]
) -> dict[str, dict[str, Any]]:
    labels = sorted(set(confusion) | (set(predicted_counts) - {NEEDS_REVIEW}))
    per_intent = {}
    for label in labels:
        hit = confusion.get(label, {}).get(label, 0)
        support = sum(confusion.get(label, {}).values())
        precision = _ratio(hit, predicted_counts[label])
        recall = _ratio(hit, support)
        f1 = (
            round(2 * precision * recall / (precision + recall), 4)
            if precision and recall
            else (0.0 if support else None)
        )
        per_intent[label] = {
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "support": support,
            "predicted": predicted_counts[label],
        }
    return per_intent


def _groups(scored: Sequence[Scored]) -> tuple[dict[str, list[Scored]], dict[str, list[Scored]]]:
    by_language: dict[str, list[Scored]] = defaultdict(list)
    by_tag: dict[str, list[Scored]] = defaultdict(list)
    for s in scored:
        if s.language:
            by_language[s.language].append(s)
        for tag in s.tags:
            by_tag[tag].append(s)
    return by_language, by_tag


def report(scored: Sequence[Scored]) -> dict[str, Any]:
    """Every figure, JSON-ready: per intent precision/recall/F1 and support, the
    confusion matrix (gold -> predicted -> count, predictions including
    ``needs_review``), accuracy, opt-out recall and safety, the false opt-out rate, the
    review rate, and accuracy per language and per tag when those are given (and over
    the replies tagged ``quoted*`` or ``sign*`` together)."""
    confusion = _confusion(scored)
    predicted_counts = Counter(s.predicted for s in scored)
    opt_outs = [s for s in scored if s.gold == OPT_OUT]
    others = [s for s in scored if s.gold != OPT_OUT]
    by_language, by_tag = _groups(scored)
    false_opt_outs = sum(s.predicted == OPT_OUT for s in others)
    # Email replies quoting the original or signed (tags such as quoted, signature).
    quoted_or_signed = [s for s in scored if any(t.startswith(("quot", "sign")) for t in s.tags)]
    correct = sum(s.gold == s.predicted for s in scored)
    return {
        "replies": len(scored),
        "accuracy": _ratio(correct, len(scored)),
        "opt_out_recall": _ratio(sum(s.predicted == OPT_OUT for s in opt_outs), len(opt_outs)),
        "opt_out_safety": _ratio(
            sum(s.predicted in (OPT_OUT, NEEDS_REVIEW) for s in opt_outs), len(opt_outs)
        ),
        "false_opt_outs": false_opt_outs,
        "false_opt_out_rate": _ratio(false_opt_outs, len(others)),
        "needs_review_rate": _ratio(predicted_counts[NEEDS_REVIEW], len(scored)),
        "accuracy_when_decided": _ratio(correct, len(scored) - predicted_counts[NEEDS_REVIEW]),
        "quoted_or_signed": _accuracy_by({"all": quoted_or_signed})["all"],
        "per_intent": _per_intent(confusion, predicted_counts),
        "confusion": confusion,
        "by_language": _accuracy_by(by_language),
        "by_tag": _accuracy_by(by_tag),
    }


__all__ = ["Scored", "report"]
