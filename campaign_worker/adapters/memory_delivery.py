"""Delivery's rows and statuses in memory (``DeliveryRows``, ``DeliveryStatuses``): the
same results as ``mongo_delivery`` for the same calls (``tests/contract``): every move
of a row requires its lease, a status is recorded once, the latest wins by rank then
time, a delivery count is taken once per key."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from campaign_worker.adapters.memory_store import MemoryDatabase, apply_update
from campaign_worker.adapters.mongo import CAMPAIGNS, CONVERSATIONS, METRICS, OUTBOX
from campaign_worker.adapters.mongo_delivery import (
    COUNTED_KEYS_KEPT,
    attempt_update,
    move_update,
)
from campaign_worker.domain.aliases import Attributes, Doc
from campaign_worker.domain.delivery import (
    Attempt,
    DeliveryEvent,
    LatestStatus,
    OutboxRow,
    RowMove,
    RowStatus,
    StatusCount,
    StatusWrite,
)


def _claimable(row: Doc, channels: Sequence[str], now: datetime) -> bool:
    if row.get("channel") not in channels:
        return False
    if row.get("status") == RowStatus.PENDING.value:
        due = row.get("next_attempt_at")
        return due is None or due <= now
    lease = row.get("lease_until")
    return row.get("status") == RowStatus.SENDING.value and lease is not None and lease < now


def _leased(row: Doc | None, owner: str) -> bool:
    return (
        row is not None
        and row.get("status") == RowStatus.SENDING.value
        and row.get("lease_owner") == owner
    )


class MemoryDeliveryRows:
    def __init__(self, db: MemoryDatabase) -> None:
        self._db = db
        self._outbox = db.documents(OUTBOX)

    def claim(
        self, channels: Sequence[str], now: datetime, limit: int, owner: str, until: datetime
    ) -> list[OutboxRow]:
        lease = {"status": RowStatus.SENDING.value, "lease_owner": owner, "lease_until": until}
        with self._db.lock:
            rows = [row for row in self._outbox.values() if _claimable(row, channels, now)]
            if not rows:
                return []
            for row in rows[:limit] if limit else rows:
                row.update(lease)
            won = [row for row in self._outbox.values() if _leased(row, owner)]
            won.sort(key=lambda row: row["created_at"])
            return [OutboxRow.model_validate(copy.deepcopy(row)) for row in won]

    def start_attempts(
        self, owner: str, until: datetime, attempts: Sequence[tuple[str, Attempt]]
    ) -> set[str]:
        ours: set[str] = set()
        with self._db.lock:
            for message_id, attempt in attempts:
                row = self._outbox.get(message_id)
                if row is not None and _leased(row, owner):
                    apply_update(row, attempt_update(attempt, until))
                    ours.add(message_id)
        return ours

    def finish_many(self, owner: str, moves: Sequence[RowMove]) -> set[str]:
        moved: set[str] = set()
        with self._db.lock:
            for move in moves:
                row = self._outbox.get(move.message_id)
                if row is not None and _leased(row, owner):
                    apply_update(row, move_update(move, owner))
                    moved.add(move.message_id)
        return moved

    def attributes_of(self, conversation_ids: Sequence[str]) -> dict[str, Attributes]:
        conversations = self._db.documents(CONVERSATIONS)
        with self._db.lock:
            return {
                cid: copy.deepcopy(
                    dict(conversations[cid].get("context", {}).get("attributes") or {})
                )
                for cid in conversation_ids
                if cid in conversations
            }

    def campaign_statuses(self, campaign_ids: Sequence[str]) -> dict[str, str]:
        campaigns = self._db.documents(CAMPAIGNS)
        with self._db.lock:
            return {
                cid: str(campaigns[cid].get("status")) for cid in campaign_ids if cid in campaigns
            }


def _attributes(conversation: Doc) -> Mapping[str, Any]:
    return (conversation.get("context") or {}).get("attributes") or {}


def _older(current: Any, latest: LatestStatus) -> bool:
    """Whether ``latest`` replaces ``current``: none yet, a lower rank, or the same rank
    at an earlier or equal time."""
    if not isinstance(current, Mapping):
        return current is None
    rank, at = current.get("rank"), current.get("at")
    if not isinstance(rank, int | float):
        return False
    return rank < latest.rank or (
        rank == latest.rank and isinstance(at, datetime) and at <= latest.at
    )


class MemoryDeliveryStatuses:
    def __init__(self, db: MemoryDatabase) -> None:
        self._db = db
        self._outbox = db.documents(OUTBOX)

    def row(self, message_id: str) -> OutboxRow | None:
        with self._db.lock:
            row = self._outbox.get(message_id)
            if row is None:
                return None
            shown = {key: value for key, value in row.items() if key != "content"}
            return OutboxRow.model_validate(copy.deepcopy(shown))

    def add_event(self, message_id: str, event: DeliveryEvent) -> bool:
        with self._db.lock:
            row = self._outbox.get(message_id)
            events = [] if row is None else row.get("events") or []
            if row is None or any(e.get("status") == event.status for e in events):
                return False
            row["events"] = [*events, event.model_dump(mode="python")]
            return True

    def set_latest(self, message_id: str, conversation_id: str, latest: LatestStatus) -> None:
        stored = latest.model_dump(mode="python")
        with self._db.lock:
            row = self._outbox.get(message_id)
            if row is not None and _older(row.get("delivery"), latest):
                row["delivery"] = copy.deepcopy(stored)
            conversation = self._db.documents(CONVERSATIONS).get(conversation_id)
            for entry in [] if conversation is None else conversation.get("message_history", []):
                metadata = entry.get("metadata") or {}
                if entry.get("message_id") == message_id and _older(
                    metadata.get("delivery"), latest
                ):
                    entry.setdefault("metadata", {})["delivery"] = copy.deepcopy(stored)
                    break

    def count(self, campaign_id: str, channel: str, status: str, key: str) -> bool:
        with self._db.lock:
            doc = self._db.documents(METRICS).get(campaign_id)
            if doc is None or key in (doc.get("delivery_counted") or []):
                return False
            apply_update(
                doc,
                {
                    "$inc": {f"delivery.{channel}.{status}": 1},
                    "$push": {"delivery_counted": {"$each": [key], "$slice": -COUNTED_KEYS_KEPT}},
                },
            )
            return True

    def count_many(self, campaign_id: str, counts: Sequence[StatusCount]) -> set[str]:
        return {c.key for c in counts if self.count(campaign_id, c.channel, c.status, c.key)}

    def record_many(self, writes: Sequence[StatusWrite]) -> None:
        for write in writes:
            self.add_event(write.message_id, write.event)
            self.set_latest(write.message_id, write.conversation_id, write.latest)


__all__ = ["MemoryDeliveryRows", "MemoryDeliveryStatuses"]
