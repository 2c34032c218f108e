"""Goals, pure: a conversation converts when its campaign type's goal event arrives within
``goal.within`` of its entry (``created_at``), once; holdout conversations too (they are
enrolled and tracked, never messaged). A conversion is counted under
``goals.<event>`` of the metrics document:

- ``converted``, ``seconds_to_convert`` (a sum: the mean is derived when read);
- ``stages.<stage>.converted``: by the stage the conversation was in when it converted;
- ``variants.<stage>.<variant>.converted``: by each A/B variant it was sent;
- ``holdout.converted``, ``holdout.seconds_to_convert``: the holdout's share.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from campaign_worker.domain.documents import ConversationState, Conversion, Direction
from campaign_worker.domain.effects import MetricsDelta
from campaign_worker.domain.splits import variant_of
from campaign_worker.domain.templates import Goal


def conversion_for(
    state: ConversationState, goal: Goal | None, event: str, event_id: str, at: datetime
) -> Conversion | None:
    """The conversion this event makes, if it is the goal, within the window of the
    conversation's entry, and the conversation has not converted yet."""
    if goal is None or event != goal.event or state.conversion is not None:
        return None
    if not state.created_at <= at <= state.created_at + goal.within:
        return None
    return Conversion(
        event=event,
        event_id=event_id,
        at=at,
        seconds=(at - state.created_at).total_seconds(),
        stage=state.current_stage,
        variants=[{"stage": stage, "variant": variant} for stage, variant in variants_of(state)],
        holdout=state.holdout,
    )


def variants_of(state: ConversationState) -> list[tuple[str, str]]:
    """(stage, variant) pairs the conversation was sent, in order, each once."""
    seen: dict[tuple[str, str], None] = {}
    for message in state.message_history:
        variant, stage = variant_of(message), message.metadata.get("stage")
        if message.direction == Direction.OUTBOUND and variant and isinstance(stage, str):
            seen[(stage, variant)] = None
    return list(seen)


def conversion_paths(conversion: Conversion) -> Counter[str]:
    """What one conversion adds under ``goals`` (field paths and amounts)."""
    base = conversion.event
    paths: Counter[str] = Counter()
    paths[f"{base}.converted"] += 1
    paths[f"{base}.seconds_to_convert"] += conversion.seconds  # type: ignore[assignment]
    paths[f"{base}.stages.{conversion.stage}.converted"] += 1
    for pair in conversion.variants:
        paths[f"{base}.variants.{pair['stage']}.{pair['variant']}.converted"] += 1
    if conversion.holdout:
        paths[f"{base}.holdout.converted"] += 1
        paths[f"{base}.holdout.seconds_to_convert"] += conversion.seconds  # type: ignore[assignment]
    return paths


def count_conversion(conversion: Conversion, delta: MetricsDelta) -> None:
    delta.goals.update(conversion_paths(conversion))


def recount(states: Iterable[ConversationState]) -> dict[str, float]:
    """The goal counters recomputed from conversations, as ``goals.<path>`` field paths."""
    counts: Counter[str] = Counter()
    for state in states:
        if state.conversion is not None:
            counts.update(conversion_paths(state.conversion))
    return {f"goals.{path}": value for path, value in counts.items() if value}


def _rate(part: float, whole: float) -> float:
    return part / whole if whole else 0.0


def _mean(total: float, count: float) -> float | None:
    return total / count if count else None


def goal_report(goal: Mapping[str, Any], metrics: Mapping[str, Any]) -> dict[str, Any]:
    """One goal's counters (``goals.<event>``) with their rates, over the conversations
    of the metrics document: overall, per stage (over those that entered it), per variant
    (over those it was sent to), the holdout and everyone else (the treatment)."""
    converted, total = goal.get("converted", 0), metrics.get("total_recipients", 0)
    held = goal.get("holdout") or {}
    held_n = (metrics.get("holdout") or {}).get("conversations", 0)
    held_converted = held.get("converted", 0)
    return {
        "converted": converted,
        "conversations": total,
        "conversion_rate": _rate(converted, total),
        "mean_seconds_to_convert": _mean(goal.get("seconds_to_convert", 0), converted),
        "stages": _by_stage(goal, metrics),
        "variants": _by_variant(goal, metrics),
        "holdout": {
            "converted": held_converted,
            "conversations": held_n,
            "rate": _rate(held_converted, held_n),
            "mean_seconds_to_convert": _mean(held.get("seconds_to_convert", 0), held_converted),
        },
        "treatment": {
            "converted": converted - held_converted,
            "conversations": total - held_n,
            "rate": _rate(converted - held_converted, total - held_n),
        },
    }


def _by_stage(goal: Mapping[str, Any], metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Conversions by the stage they happened in, over the conversations that entered it."""
    stages = metrics.get("stage_metrics") or {}
    report = {}
    for stage, values in (goal.get("stages") or {}).items():
        entered = (stages.get(stage) or {}).get("entered", 0)
        converted = values.get("converted", 0)
        report[stage] = {
            "converted": converted,
            "entered": entered,
            "rate": _rate(converted, entered),
        }
    return report


def _by_variant(goal: Mapping[str, Any], metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Conversions per A/B variant, over the conversations it was sent to."""
    converted = goal.get("variants") or {}
    report: dict[str, Any] = {}
    for stage, variants in (metrics.get("variants") or {}).items():
        for variant, counters in variants.items():
            n = counters.get("conversations", 0)
            won = ((converted.get(stage) or {}).get(variant) or {}).get("converted", 0)
            report.setdefault(stage, {})[variant] = {
                "converted": won,
                "conversations": n,
                "rate": _rate(won, n),
            }
    return report


__all__ = [
    "conversion_for",
    "conversion_paths",
    "count_conversion",
    "goal_report",
    "recount",
    "variants_of",
]
