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
from collections.abc import Iterable
from datetime import datetime

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


__all__ = ["conversion_for", "conversion_paths", "count_conversion", "recount", "variants_of"]
