"""The metrics recount over documents in memory: what ``mongo_recount``'s aggregation
computes, in Python, with the same field paths (``tests/contract`` compares the two)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

from campaign_worker.domain.aliases import Doc
from campaign_worker.domain.documents import Conversion
from campaign_worker.domain.goals import conversion_paths

_MILLISECOND = timedelta(milliseconds=1)
_STATUS_FIELD = {
    "active": "active_conversations",
    "completed": "completed_conversations",
    "failed": "failed_conversations",
    "opted_out": "opted_out_conversations",
    "cancelled": "cancelled_conversations",
}


def _number(value: Any) -> float:
    """What ``$sum`` adds of a value: numbers, nothing else."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value
    return 0


class _Counts(dict[str, float]):
    """Field path -> count; a missing path counts zero (ints stay ints)."""

    def __missing__(self, key: str) -> float:
        return 0


def recount_documents(docs: Iterable[Doc]) -> dict[str, float]:
    """The counters of one campaign's conversation documents, as field paths."""
    counts = _Counts()
    visits: set[tuple[str, object, object, object]] = set()
    for doc in docs:
        counts["total_recipients"] += 1
        counts[_STATUS_FIELD[str(doc.get("status"))]] += 1
        metrics = doc.get("metrics") or {}
        counts["message_metrics.total_sent"] += _number(metrics.get("messages_sent"))
        counts["message_metrics.total_received"] += _number(metrics.get("messages_received"))
        _stages(doc, counts)
        if doc.get("holdout") is True:
            counts["holdout.conversations"] += 1
            counts[f"holdout.{doc.get('status')}"] += 1
            counts["holdout.replies"] += _number(metrics.get("messages_received"))
        _variants(doc, counts, visits)
        conversion = doc.get("conversion")
        if isinstance(conversion, Mapping) and isinstance(conversion.get("event"), str):
            for path, amount in conversion_paths(Conversion.model_validate(conversion)).items():
                counts[f"goals.{path}"] += amount
        for review in doc.get("reviews") or []:
            if isinstance(review, Mapping) and review.get("status") in ("pending", "resolved"):
                counts[f"reviews.{review['status']}"] += 1
    return {key: value for key, value in counts.items() if value}


def _stages(doc: Doc, counts: _Counts) -> None:
    for entry in doc.get("stages") or []:
        path = f"stage_metrics.{entry.get('name')}"
        counts[f"{path}.entered"] += 1
        if entry.get("completed"):
            counts[f"{path}.completed"] += 1
            entered, exited = entry.get("entered_at"), entry.get("exited_at")
            if isinstance(entered, datetime) and isinstance(exited, datetime):
                milliseconds = (exited - entered) // _MILLISECOND
                counts[f"{path}.total_duration_seconds"] += milliseconds / 1000.0


def _variants(doc: Doc, counts: _Counts, visits: set[tuple[str, object, object, object]]) -> None:
    """Sent and replies per variant (and intent), and the stage visits a variant was sent
    in, counted once each, with whether the visit completed."""
    for message in doc.get("message_history") or []:
        metadata: Mapping[str, Any] = message.get("metadata") or {}
        variant = metadata.get("variant")
        if not isinstance(variant, str):
            continue
        path = f"variants.{metadata.get('stage')}.{variant}"
        if message.get("direction") != "outbound":
            counts[f"{path}.replies"] += 1
            intent = metadata.get("intent")
            if isinstance(intent, str):
                counts[f"{path}.intents.{intent}"] += 1
            continue
        counts[f"{path}.sent"] += 1
        visit = (str(doc["_id"]), metadata.get("stage"), metadata.get("entry"), variant)
        if visit in visits:
            continue
        visits.add(visit)
        counts[f"{path}.conversations"] += 1
        if _visit_completed(doc.get("stages") or [], metadata.get("entry")):
            counts[f"{path}.advanced"] += 1


def _visit_completed(stages: list[Any], entry: object) -> bool:
    """``stages[entry].completed`` as ``$arrayElemAt`` reads it (negative: from the end)."""
    if not isinstance(entry, int) or isinstance(entry, bool):
        return False
    if not -len(stages) <= entry < len(stages):
        return False
    visit = stages[entry]
    return isinstance(visit, Mapping) and bool(visit.get("completed"))


__all__ = ["recount_documents"]
