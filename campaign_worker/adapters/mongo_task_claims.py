"""Task-id claims (collection ``task_claims``, ``_id`` = task id): one run per delayed
task message, however many copies the broker hands out.

Redis hands an unacknowledged message out again every visibility timeout, and a worker
holds a message with an ETA unacknowledged until it is due: a task sent with an ETA past
the visibility timeout arrives as several copies, all due at once. Before running such a
copy, the worker claims its task id here with a lease (the task's hard time limit and a
margin): the first copy runs; a copy whose task is done is acknowledged without running;
a copy whose task is still running (lease not expired) is put off until the lease ends;
a copy whose runner died (lease expired, not done) runs. A claim is released when its run
ends in a retry (the retry is the same task id, due later), and kept as done for a while
(``expires_at``, a TTL index) after a final outcome.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from pymongo import ASCENDING
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

from campaign_worker.adapters.mongo import TASK_CLAIMS, translate_errors
from campaign_worker.domain.aliases import Doc

ClaimState = Literal["claimed", "running", "done"]


@dataclass(frozen=True)
class Claim:
    """What a claim attempt found: ``claimed`` (run it), ``done`` (skip it), or
    ``running`` (another runner holds it until ``lease_until``)."""

    state: ClaimState
    lease_until: datetime | None = None


class MongoTaskClaims:
    """Claims on task ids with a lease; a claim outlives its run as a done mark."""

    def __init__(self, db: Database[Doc]) -> None:
        self._collection: Collection[Doc] = db[TASK_CLAIMS]

    @translate_errors
    def initialize(self) -> None:
        # Done marks (and claims whose runner died) go away by themselves.
        self._collection.create_index(
            [("expires_at", ASCENDING)], name="expires", expireAfterSeconds=0
        )

    @translate_errors
    def claim(self, task_id: str, owner: str, now: datetime, lease_until: datetime) -> Claim:
        """Claim ``task_id`` unless it is done or another runner's lease is still valid.

        One round trip for the first copy (an insert); a later copy takes over a claim
        that is not done and whose lease expired (its runner died), else reads which of
        done or running it is.
        """
        fields = {"owner": owner, "lease_until": lease_until, "claimed_at": now}
        try:
            self._collection.insert_one(
                {"_id": task_id, **fields, "done_at": None, "runs": 1, "expires_at": lease_until}
            )
            return Claim("claimed", lease_until)
        except DuplicateKeyError:
            pass
        taken = self._collection.find_one_and_update(
            {"_id": task_id, "done_at": None, "lease_until": {"$lte": now}},
            {"$set": {**fields, "expires_at": lease_until}, "$inc": {"runs": 1}},
            projection={"_id": 1},
        )
        if taken is not None:
            return Claim("claimed", lease_until)
        doc = self._collection.find_one({"_id": task_id}, {"done_at": 1, "lease_until": 1})
        if doc is None:  # expired or released meanwhile: the next copy will claim it
            return Claim("running", now)
        if doc.get("done_at") is not None:
            return Claim("done")
        held = doc.get("lease_until")
        return Claim("running", _aware(held, now) if isinstance(held, datetime) else now)

    @translate_errors
    def finish(self, task_id: str, owner: str, now: datetime, keep_until: datetime) -> bool:
        """Mark the claim done (a final outcome) and keep the mark until ``keep_until``."""
        result = self._collection.update_one(
            {"_id": task_id, "owner": owner},
            {"$set": {"done_at": now, "lease_until": None, "expires_at": keep_until}},
        )
        return result.modified_count == 1

    @translate_errors
    def release(self, task_id: str, owner: str) -> bool:
        """Drop a claim whose run ended in a retry: the retry (same task id) runs."""
        result = self._collection.delete_one({"_id": task_id, "owner": owner, "done_at": None})
        return result.deleted_count == 1

    @translate_errors
    def get(self, task_id: str) -> Doc | None:
        return self._collection.find_one({"_id": task_id})


def _aware(value: datetime, like: datetime) -> datetime:
    """Compare as aware datetimes (a client without ``tz_aware`` reads naive UTC)."""
    if value.tzinfo is None and like.tzinfo is not None:
        return value.replace(tzinfo=like.tzinfo)
    return value


__all__ = ["Claim", "ClaimState", "MongoTaskClaims"]
