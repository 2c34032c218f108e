"""The one update document that turns a conversation's old state into its new one: a diff
(``$set`` changed fields, ``$push`` appended messages), a version bump, the write token,
and the outbound ids it records as unpublished (see docs/architecture.md, "Outbound
path")."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from campaign_worker.domain.documents import ConversationState
from campaign_worker.domain.partitions import partition_of

Doc = dict[str, Any]


_NOT_DIFFED = {
    "_id",
    "message_history",
    "version",
    "lease_owner",
    "lease_until",
    "partition",
    "last_write",
    # Maintained by $push here and $pullAll in mark_published, which commute: a write
    # never overwrites the list that a publication is clearing.
    "unpublished",
    "publish_token",
    "publish_due_at",
}
# Write tokens kept per conversation: a write is recognised as landed as long as fewer
# than this many writes came after it before the check (which follows at once).
WRITE_TOKENS_KEPT = 16


def state_update(
    old: ConversationState, new: ConversationState, token: str, now: datetime | None = None
) -> Doc:
    """The single atomic update that turns ``old`` into ``new`` (appends are $push).

    Outbound messages it appends are also pushed to ``unpublished`` under this write's
    token: they are recorded now and published to the outbox after the write landed."""
    before, after = old.to_mongo(), new.to_mongo()
    changes = {
        key: value
        for key, value in after.items()
        if key not in _NOT_DIFFED and before.get(key) != value
    }
    old_history, new_history = before["message_history"], after["message_history"]
    if new_history[: len(old_history)] != old_history:
        raise ValueError("message_history may only be appended to")
    push: Doc = {"last_write": {"$each": [token], "$slice": -WRITE_TOKENS_KEPT}}
    appended = new_history[len(old_history) :]
    if appended:
        push["message_history"] = {"$each": appended}
    outbound = [m["message_id"] for m in appended if m["direction"] == "outbound"]
    if outbound:
        push["unpublished"] = {"$each": outbound}
        changes["publish_token"] = token
        changes["publish_due_at"] = now or new.last_active
    update: Doc = {"$inc": {"version": 1}, "$push": push}
    if changes:
        update["$set"] = changes
    if old.partition is None:
        # Created before partitions: it gets its bucket with its first write.
        changes["partition"] = partition_of(old.id)
    if old.lease_owner is not None or old.lease_until is not None:
        # Written by a release that leased documents: nothing reads leases any more.
        update["$unset"] = {"lease_owner": "", "lease_until": ""}
    return update


__all__ = ["WRITE_TOKENS_KEPT", "state_update"]
