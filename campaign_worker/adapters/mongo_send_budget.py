"""Frequency-cap slots (collection ``send_budget``): at most N sends per recipient and
channel in any rolling window, across campaigns and workers.

A recipient has N slot documents per channel, ``_id`` = ``<channel>:<user id>:<slot>``,
each holding the time and message id of one send. A send takes a slot with one upsert
whose filter requires the slot to be free (its send older than the window) or already
its own (a replay): a busy slot makes the upsert insert a duplicate ``_id``, which the
unique ``_id`` index refuses, so two workers can never take the same slot. A batch tries
slot 0 for all its sends in one ``bulk_write``, slot 1 for those refused, and so on: at
most N round trips, one when nobody is near the cap. Since every send in the window holds
its own slot, no window ever holds more than N.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from pymongo import UpdateOne
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import BulkWriteError

from campaign_worker.adapters.mongo import DUPLICATE_KEY, translate_errors
from campaign_worker.domain.aliases import Doc
from campaign_worker.domain.documents import to_utc
from campaign_worker.domain.suppressions import FrequencyCap
from campaign_worker.service.ports import SendRequest

SEND_BUDGET = "send_budget"


def cap_for(caps: dict[str, FrequencyCap], channel: str) -> FrequencyCap | None:
    """A channel's own cap, else the ``*`` cap for every channel."""
    return caps.get(channel) or caps.get("*")


def _slot_id(request: SendRequest, slot: int) -> str:
    return f"{request.channel}:{request.user_id}:{slot}"


class MongoSendBudgetRepository:
    def __init__(self, db: Database[Doc]) -> None:
        self._collection: Collection[Doc] = db[SEND_BUDGET]

    def initialize(self) -> None:
        return None  # only _id lookups

    @translate_errors
    def reserve(
        self, requests: Sequence[SendRequest], caps: dict[str, FrequencyCap], now: datetime
    ) -> dict[str, datetime]:
        """Take a slot for each request; returns message id -> when a slot frees up, for
        the requests over their cap (the rest got a slot)."""
        pending = [
            (request, cap) for request in requests if (cap := cap_for(caps, request.channel))
        ]
        capped: list[tuple[SendRequest, FrequencyCap]] = []
        slot = 0
        while pending:
            capped += [(request, cap) for request, cap in pending if slot >= cap.messages]
            pending = [(request, cap) for request, cap in pending if slot < cap.messages]
            if not pending:
                break
            refused = self._take(pending, slot, now)
            pending = [pending[index] for index in sorted(refused)]
            slot += 1
        return self._free_at(capped, now)

    def _take(
        self, pending: list[tuple[SendRequest, FrequencyCap]], slot: int, now: datetime
    ) -> set[int]:
        """Try ``slot`` for each request in one bulk write; indexes refused (slot busy)."""
        operations = [
            UpdateOne(
                {
                    "_id": _slot_id(request, slot),
                    "$or": [
                        {"at": {"$lte": now - cap.window}},
                        {"message_id": request.message_id},
                    ],
                },
                {
                    "$set": {
                        "at": now,
                        "message_id": request.message_id,
                        "user_id": request.user_id,
                        "channel": request.channel,
                    }
                },
                upsert=True,
            )
            for request, cap in pending
        ]
        try:
            self._collection.bulk_write(operations, ordered=False)
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            if any(error.get("code") != DUPLICATE_KEY for error in errors):
                raise
            return {int(error["index"]) for error in errors}
        return set()

    def _free_at(
        self, capped: list[tuple[SendRequest, FrequencyCap]], now: datetime
    ) -> dict[str, datetime]:
        """When the oldest send in each capped recipient's window leaves it."""
        if not capped:
            return {}
        ids = [_slot_id(request, slot) for request, cap in capped for slot in range(cap.messages)]
        found = self._collection.find({"_id": {"$in": ids}})
        held = {str(doc["_id"]): to_utc(doc["at"]) for doc in found}
        free: dict[str, datetime] = {}
        for request, cap in capped:
            keys = [_slot_id(request, slot) for slot in range(cap.messages)]
            times = [held[key] for key in keys if key in held]
            # No slot left to read (removed meanwhile): try again after a window.
            free[request.message_id] = (min(times) if times else now) + cap.window
        return free


__all__ = ["SEND_BUDGET", "MongoSendBudgetRepository", "cap_for"]
