"""The one update document that turns a conversation's old state into its new one: a diff
(``$set`` changed fields, ``$push`` appended messages), a version bump, the write token,
and the outbound ids it records as unpublished (see docs/architecture.md, "Outbound
path")."""

from __future__ import annotations

from datetime import datetime

from campaign_worker.domain.aliases import Doc
from campaign_worker.domain.documents import ConversationState
from campaign_worker.domain.partitions import partition_of

# Attributes the diff leaves alone (each maintained otherwise, below or elsewhere).
_NOT_DIFFED = frozenset(
    {
        "id",
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
)
_DIFFED = tuple(name for name in ConversationState.model_fields if name not in _NOT_DIFFED)
# Write tokens kept per conversation: a write is recognised as landed as long as fewer
# than this many writes came after it before the check (which follows at once).
WRITE_TOKENS_KEPT = 16


def changed_fields(old: ConversationState, new: ConversationState) -> list[str]:
    """Attributes ``new`` changed. A step builds ``new`` by shallow copies, so an
    untouched field is the very same object: most are skipped without comparing."""
    changed = []
    for name in _DIFFED:
        before, after = getattr(old, name), getattr(new, name)
        if before is not after and before != after:
            changed.append(name)
    return changed


def appended_messages(old: ConversationState, new: ConversationState) -> list[Doc]:
    """The messages ``new`` appended to the history, as stored; anything but an append
    is refused."""
    old_history, new_history = old.message_history, new.message_history
    if new_history is old_history:
        return []  # the step left the history alone (a shallow copy shares the list)
    kept = new_history[: len(old_history)]
    if len(kept) != len(old_history) or any(
        a is not b and a != b for a, b in zip(kept, old_history, strict=True)
    ):
        raise ValueError("message_history may only be appended to")
    return [message.model_dump(mode="python") for message in new_history[len(old_history) :]]


def state_update(
    old: ConversationState, new: ConversationState, token: str, now: datetime | None = None
) -> Doc:
    """The single atomic update that turns ``old`` into ``new``: ``$set`` of the fields
    the step changed (only those are serialized), ``$push`` of the messages it appended.

    Outbound messages it appends are also pushed to ``unpublished`` under this write's
    token: they are recorded now and published to the outbox after the write landed."""
    names = changed_fields(old, new)
    changes: Doc = new.model_dump(by_alias=True, mode="python", include=set(names)) if names else {}
    appended = appended_messages(old, new)
    push: Doc = {"last_write": {"$each": [token], "$slice": -WRITE_TOKENS_KEPT}}
    if appended:
        push["message_history"] = {"$each": appended}
    # A holdout's withheld messages are recorded only: nothing to publish.
    outbound = [
        m["message_id"]
        for m in appended
        if m["direction"] == "outbound" and m["metadata"].get("withheld") is not True
    ]
    if outbound:
        push["unpublished"] = {"$each": outbound}
        changes["publish_token"] = token
        changes["publish_due_at"] = now or new.last_active
    update: Doc = {"$inc": {"version": 1}, "$push": push}
    if changes:
        update["$set"] = changes
    if old.partition is None:
        # Created before partitions: it gets its bucket with its first write.
        update.setdefault("$set", {})["partition"] = partition_of(old.id)
    if old.lease_owner is not None or old.lease_until is not None:
        # Written by a release that leased documents: nothing reads leases any more.
        update["$unset"] = {"lease_owner": "", "lease_until": ""}
    return update


__all__ = ["WRITE_TOKENS_KEPT", "appended_messages", "changed_fields", "state_update"]
