"""A/B splits and the holdout, pure and deterministic.

A stage whose messages have ``variants`` is one split: a recipient gets one variant per
stage, picked by weight from a sha256 of ``campaign|user|stage`` (never Python's
``hash()``, which differs between processes), so every worker, retry and replay picks
the same one. The variant is recorded on each outbound message it chose
(``metadata.variant``) and on the replies that answer it. A share of the audience, by a
sha256 of ``campaign|user``, is held out: its conversations run through the same rules
and clock, but each message they would send is recorded as withheld (``metadata.withheld``,
no content) and never reaches the outbox.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Sequence

from campaign_worker.domain.documents import ConversationState, Direction, Message
from campaign_worker.domain.effects import MetricsDelta
from campaign_worker.domain.templates import MessageVariant

_SPACE = 2**64


def _point(key: str) -> int:
    """A uniform 64-bit integer from ``key``, the same in every process."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big")


def variant_index(campaign_id: str, user_id: str, stage: str, weights: Sequence[int]) -> int:
    """Which of ``weights`` (positive integers) the recipient gets in ``stage``: index
    ``i`` with probability ``weights[i] / sum(weights)``."""
    if not weights or min(weights) < 1:
        raise ValueError("weights must be positive integers")
    # 2**64 points over a total of at most a few million: the modulo bias is < 1e-12.
    bucket = _point(f"{campaign_id}|{user_id}|{stage}") % sum(weights)
    for index, weight in enumerate(weights):
        if bucket < weight:
            return index
        bucket -= weight
    raise AssertionError("unreachable: bucket < sum(weights)")  # pragma: no cover


def choose_variant(
    campaign_id: str, user_id: str, stage: str, variants: Sequence[MessageVariant]
) -> MessageVariant:
    """The variant of ``variants`` this recipient gets in ``stage``."""
    return variants[variant_index(campaign_id, user_id, stage, [v.weight for v in variants])]


def variant_for(
    state: ConversationState, stage: str, entry: int, variants: Sequence[MessageVariant]
) -> MessageVariant:
    """The variant of the next message in visit ``entry`` of ``stage``: the one this visit
    was sent already if the message offers it (a template edited under a running
    campaign does not switch a recipient mid-visit), else the recipient's pick."""
    current = entry_variant(state, stage, entry)
    for variant in variants:
        if variant.id == current:
            return variant
    return choose_variant(state.campaign_id, state.user_id, stage, variants)


def in_holdout(campaign_id: str, user_id: str, share: float) -> bool:
    """Whether the recipient is in the campaign's holdout (about ``share`` of them)."""
    if share <= 0:
        return False
    return _point(f"{campaign_id}|{user_id}") < share * _SPACE


def variant_of(message: Message) -> str | None:
    variant = message.metadata.get("variant")
    return variant if isinstance(variant, str) else None


def is_withheld(message: Message) -> bool:
    """A holdout's message: recorded for the timing rules, never sent."""
    return message.metadata.get("withheld") is True


def entry_variant(state: ConversationState, stage: str, entry: int) -> str | None:
    """The variant sent in stage visit ``entry`` (its latest variant message), if any."""
    for message in reversed(state.message_history):
        tagged = message.metadata.get("entry")
        if isinstance(tagged, int) and tagged < entry:
            break  # entries only grow along the history: the visit's messages are behind us
        if (
            message.direction == Direction.OUTBOUND
            and message.metadata.get("stage") == stage
            and message.metadata.get("entry") == entry
        ):
            variant = variant_of(message)
            if variant is not None:
                return variant
    return None


def count_sent(
    state: ConversationState, stage: str, entry: int, variant: str, delta: MetricsDelta
) -> None:
    """A message of ``variant`` is being sent in visit ``entry`` of ``stage`` (``state``
    as before the send): one more sent, and one more conversation on the first."""
    if entry_variant(state, stage, entry) is None:
        delta.variants[(stage, variant, "conversations")] += 1
    delta.variants[(stage, variant, "sent")] += 1


def count_reply(state: ConversationState, message: Message, delta: MetricsDelta) -> None:
    """An inbound ``message`` was appended to ``state``: its variant's reply and intent,
    and the holdout's replies."""
    variant = variant_of(message)
    stage = message.metadata.get("stage")
    if variant is not None and isinstance(stage, str):
        delta.variants[(stage, variant, "replies")] += 1
        intent = message.metadata.get("intent")
        if isinstance(intent, str):
            delta.variants[(stage, variant, f"intents.{intent}")] += 1
    if state.holdout:
        delta.holdout["replies"] += 1


HOLDOUT_COUNTERS = ("conversations", "active", "completed", "failed", "opted_out", "cancelled")
VARIANT_COUNTERS = ("conversations", "sent", "replies", "advanced")


def recount(states: Iterable[ConversationState]) -> dict[str, int]:
    """The split and holdout counters recomputed from conversations' histories, as
    metrics-document field paths (``variants.<stage>.<variant>.<counter>``,
    ``holdout.<counter>``); what the increments add up to when nothing was lost."""
    counts: Counter[str] = Counter()
    for state in states:
        visits: set[tuple[str, int | None, str]] = set()
        for message in state.message_history:
            variant, stage = variant_of(message), message.metadata.get("stage")
            if variant is None or not isinstance(stage, str):
                continue
            path = f"variants.{stage}.{variant}"
            if message.direction == Direction.OUTBOUND:
                counts[f"{path}.sent"] += 1
                visits.add((stage, message.metadata.get("entry"), variant))
            else:
                counts[f"{path}.replies"] += 1
                intent = message.metadata.get("intent")
                if isinstance(intent, str):
                    counts[f"{path}.intents.{intent}"] += 1
        for stage, _, variant in visits:
            counts[f"variants.{stage}.{variant}.conversations"] += 1
        for index, entry in enumerate(state.stages):
            variant = entry_variant(state, entry.name, index) if entry.completed else None
            if variant is not None:
                counts[f"variants.{entry.name}.{variant}.advanced"] += 1
        if state.holdout:
            counts["holdout.conversations"] += 1
            counts[f"holdout.{state.status.value}"] += 1
            counts["holdout.replies"] += sum(
                m.direction == Direction.INBOUND for m in state.message_history
            )
    return dict(+counts)


__all__ = [
    "HOLDOUT_COUNTERS",
    "VARIANT_COUNTERS",
    "choose_variant",
    "count_reply",
    "count_sent",
    "entry_variant",
    "in_holdout",
    "is_withheld",
    "recount",
    "variant_for",
    "variant_index",
    "variant_of",
]
