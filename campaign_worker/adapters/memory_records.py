"""The outbox, the suppression list, frequency-cap slots, template versions and the
invariant checker's reads, in memory: the same results as their MongoDB adapters for the
same calls (``tests/contract``)."""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from datetime import datetime

from campaign_worker.adapters.memory_conversations import sort_key
from campaign_worker.adapters.memory_store import MemoryDatabase
from campaign_worker.adapters.mongo import CONVERSATIONS, OUTBOX
from campaign_worker.adapters.mongo_send_budget import SEND_BUDGET, cap_for
from campaign_worker.adapters.mongo_suppressions import SUPPRESSIONS
from campaign_worker.adapters.mongo_template_versions import TEMPLATE_VERSIONS
from campaign_worker.domain.audited import AuditedConversation, AuditedRow
from campaign_worker.domain.effects import OutboundEnvelope
from campaign_worker.domain.suppressions import FrequencyCap, Suppression
from campaign_worker.domain.templates import Template
from campaign_worker.domain.versions import TemplateVersion, new_version
from campaign_worker.service.ports import SendRequest


class MemoryOutboxRepository:
    def __init__(self, db: MemoryDatabase) -> None:
        self._db = db
        self._docs = db.documents(OUTBOX)

    def enqueue_many(self, envelopes: Sequence[OutboundEnvelope]) -> int:
        inserted = 0
        with self._db.lock:
            for envelope in envelopes:
                if envelope.message_id not in self._docs:  # published before: skipped
                    self._docs[envelope.message_id] = envelope.outbox_row()
                    inserted += 1
        return inserted


class MemorySuppressionRepository:
    def __init__(self, db: MemoryDatabase) -> None:
        self._db = db
        self._docs = db.documents(SUPPRESSIONS)

    def add_many(self, entries: Sequence[Suppression]) -> int:
        added = 0
        with self._db.lock:
            for entry in entries:
                if entry.key not in self._docs:  # listed already: keeps its first reason
                    self._docs[entry.key] = entry.as_doc()
                    added += 1
        return added

    def matching(self, keys: Sequence[str]) -> dict[str, Suppression]:
        with self._db.lock:
            return {key: Suppression.of(self._docs[key]) for key in keys if key in self._docs}

    def list(
        self, *, user_id: str | None = None, channel: str | None = None, limit: int = 100
    ) -> list[Suppression]:
        with self._db.lock:
            found = [
                doc
                for doc in self._docs.values()
                if (user_id is None or doc.get("user_id") == user_id)
                and (channel is None or doc.get("channel") == channel)
            ]
        found.sort(key=lambda doc: sort_key(doc.get("created_at")))
        return [Suppression.of(doc) for doc in found[:limit]]

    def lift(self, key: str) -> Suppression | None:
        with self._db.lock:
            found = self._docs.pop(key, None)
        return None if found is None else Suppression.of(found)


class MemorySendBudgetRepository:
    """Slots ``<channel>:<user>:<n>`` as in ``mongo_send_budget``: a slot is taken by a
    send when it is free (its send older than the window) or already that send's."""

    def __init__(self, db: MemoryDatabase) -> None:
        self._db = db
        self._docs = db.documents(SEND_BUDGET)

    def reserve(
        self, requests: Sequence[SendRequest], caps: dict[str, FrequencyCap], now: datetime
    ) -> dict[str, datetime]:
        pending = [
            (request, cap) for request in requests if (cap := cap_for(caps, request.channel))
        ]
        capped: list[tuple[SendRequest, FrequencyCap]] = []
        slot = 0
        with self._db.lock:
            while pending:
                capped += [(r, cap) for r, cap in pending if slot >= cap.messages]
                pending = [(r, cap) for r, cap in pending if slot < cap.messages]
                pending = [(r, cap) for r, cap in pending if not self._take(r, cap, slot, now)]
                slot += 1
            return {r.message_id: self._free_at(r, cap, now) for r, cap in capped}

    def _take(self, request: SendRequest, cap: FrequencyCap, slot: int, now: datetime) -> bool:
        key = f"{request.channel}:{request.user_id}:{slot}"
        held = self._docs.get(key)
        busy = held is not None and held["at"] > now - cap.window
        if busy and held is not None and held["message_id"] != request.message_id:
            return False  # another send in the window holds it
        self._docs[key] = {
            "_id": key,
            "at": now,
            "message_id": request.message_id,
            "user_id": request.user_id,
            "channel": request.channel,
        }
        return True

    def _free_at(self, request: SendRequest, cap: FrequencyCap, now: datetime) -> datetime:
        keys = [f"{request.channel}:{request.user_id}:{slot}" for slot in range(cap.messages)]
        times = [self._docs[key]["at"] for key in keys if key in self._docs]
        return (min(times) if times else now) + cap.window


class MemoryTemplateVersionRepository:
    def __init__(self, db: MemoryDatabase) -> None:
        self._db = db
        self._docs = db.documents(TEMPLATE_VERSIONS)

    def register(self, template: Template, now: datetime, source: str = "") -> TemplateVersion:
        probe = new_version(template, 1, now, source)
        with self._db.lock:
            found = self._docs.get(probe.id)
            if found is not None:
                return TemplateVersion.model_validate(copy.deepcopy(found))
            numbers = [
                doc["version"]
                for doc in self._docs.values()
                if doc["template_id"] == template.template_id
            ]
            stored = probe.model_copy(update={"version": max(numbers, default=0) + 1})
            self._docs[stored.id] = stored.to_mongo()
            return stored

    def get(self, template_id: str, version: int) -> TemplateVersion | None:
        found = [v for v in self.list(template_id) if v.version == version]
        return found[0] if found else None

    def list(self, template_id: str) -> list[TemplateVersion]:
        with self._db.lock:
            docs = [
                copy.deepcopy(doc)
                for doc in self._docs.values()
                if doc["template_id"] == template_id
            ]
        versions = [TemplateVersion.model_validate(doc) for doc in docs]
        return sorted(versions, key=lambda v: v.version)


class MemoryInvariantReads:
    def __init__(self, db: MemoryDatabase) -> None:
        self._db = db
        self._conversations = db.documents(CONVERSATIONS)
        self._outbox = db.documents(OUTBOX)

    def conversations(
        self, campaign_id: str, batch_size: int
    ) -> Iterator[list[AuditedConversation]]:
        with self._db.lock:
            found = [
                AuditedConversation.of(copy.deepcopy(doc))
                for doc in self._conversations.values()
                if doc.get("campaign_id") == campaign_id
            ]
        for begin in range(0, len(found), batch_size):
            yield found[begin : begin + batch_size]

    def conversations_by_id(self, ids: Sequence[str]) -> list[AuditedConversation]:
        wanted = set(ids)
        with self._db.lock:
            return [
                AuditedConversation.of(copy.deepcopy(doc))
                for doc in self._conversations.values()
                if doc["_id"] in wanted
            ]

    def conversations_of_users(
        self, campaign_id: str, user_ids: Sequence[str]
    ) -> list[tuple[str, str]]:
        wanted = set(user_ids)
        with self._db.lock:
            return [
                (str(doc["_id"]), str(doc.get("user_id")))
                for doc in self._conversations.values()
                if doc.get("campaign_id") == campaign_id and doc.get("user_id") in wanted
            ]

    def outbox_rows(self, conversation_ids: Sequence[str]) -> list[AuditedRow]:
        wanted = set(conversation_ids)
        with self._db.lock:
            return [
                AuditedRow.of(copy.deepcopy(row))
                for row in self._outbox.values()
                if row.get("conversation_id") in wanted
            ]

    def count_outbox(self, campaign_id: str) -> int:
        with self._db.lock:
            return sum(row.get("campaign_id") == campaign_id for row in self._outbox.values())


__all__ = [
    "MemoryInvariantReads",
    "MemoryOutboxRepository",
    "MemorySendBudgetRepository",
    "MemorySuppressionRepository",
    "MemoryTemplateVersionRepository",
]
