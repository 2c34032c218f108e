"""Delivery's rows and statuses: their contract, on every backend."""

from __future__ import annotations

from campaign_worker.domain.delivery import Attempt, DeliveryEvent, LatestStatus
from campaign_worker.domain.documents import ConversationState
from campaign_worker.domain.effects import MetricsDelta
from tests.contract.support import MINUTE, START, Store, campaign, envelope, sent, state

LEASE = START + MINUTE


def rows_of(store: Store) -> dict[str, dict[str, object]]:
    return {row["_id"]: row for row in store.db["outbox"].find({})}


def test_a_claim_leases_due_rows_of_its_channels_oldest_first(store: Store) -> None:
    store.repos.outbox.enqueue_many(
        [
            envelope("m-2", created_at=START + MINUTE),
            envelope("m-1", created_at=START),
            envelope("m-3", channel="sms"),
            envelope("m-4", created_at=START + 2 * MINUTE),
        ]
    )
    rows = store.rows
    assert rows.requeue("m-4", "nobody") is False  # not leased: nothing moves
    claimed = rows.claim(["webhook"], START, 2, "a", LEASE)
    assert len(claimed) == 2 and all(r.channel == "webhook" for r in claimed)
    assert [r.created_at for r in claimed] == sorted(r.created_at for r in claimed)
    second = rows.claim(["webhook"], START, 5, "b", LEASE)
    assert rows.claim(["webhook"], START, 5, "b", LEASE) == []  # nothing left to claim
    everyone = {r.id for r in claimed} | {r.id for r in second}
    assert everyone == {"m-1", "m-2", "m-4"}
    assert rows.claim(["webhook"], START, 5, "c", LEASE) == []  # all leased
    expired = rows.claim(["webhook"], LEASE + MINUTE, 5, "c", LEASE + 2 * MINUTE)
    assert {r.id for r in expired} == {"m-1", "m-2", "m-4"}  # leases ran out
    stored = rows_of(store)["m-1"]
    assert (stored["status"], stored["lease_owner"]) == ("sending", "c")


def test_every_move_of_a_row_needs_its_lease(store: Store) -> None:
    store.repos.outbox.enqueue_many([envelope("m-1"), envelope("m-2"), envelope("m-3")])
    rows = store.rows
    rows.claim(["webhook"], START, 5, "a", LEASE)
    attempt = Attempt("webhook", "u@x", START, "a")
    assert not rows.start_attempt("m-1", "b", LEASE, attempt)
    assert rows.start_attempt("m-1", "a", LEASE + MINUTE, attempt)
    assert not rows.mark_sent("m-1", "b", START, "p-1")
    assert rows.mark_sent("m-1", "a", START, None)
    assert not rows.mark_sent("m-1", "a", START, "again")  # no longer leased
    assert rows.requeue("m-2", "a", next_attempt_at=LEASE, last_error="timeout")
    assert rows.mark_failed("m-3", "a", START, "gave up", "webhook")
    stored = rows_of(store)
    fields = ("status", "attempts", "provider_id", "last_error")
    assert {k: stored["m-1"].get(k) for k in fields} == {
        "status": "sent",
        "attempts": 1,
        "provider_id": None,
        "last_error": None,
    }
    assert (stored["m-1"]["address"], stored["m-1"]["attempted_by"]) == ("u@x", "a")
    assert "lease_owner" not in stored["m-1"] and "lease_until" not in stored["m-1"]
    assert (stored["m-2"]["status"], stored["m-2"]["last_error"]) == ("pending", "timeout")
    assert stored["m-2"]["next_attempt_at"] == LEASE
    assert (stored["m-3"]["status"], stored["m-3"]["last_error"]) == ("failed", "gave up")
    assert rows.claim(["webhook"], START, 5, "b", LEASE) == []  # m-2 not due yet
    assert [r.id for r in rows.claim(["webhook"], LEASE, 5, "b", LEASE)] == ["m-2"]


def test_attributes_and_campaign_statuses_for_a_batch(store: Store) -> None:
    one = state("user-0000")
    one = one.model_copy(
        update={"context": one.context.model_copy(update={"attributes": {"email": "a@x"}})}
    )
    store.repos.conversations.insert_states([one, state("user-0001")])
    store.repos.campaigns.insert(campaign())
    found = store.rows.attributes_of([one.id, state("user-0001").id, "missing"])
    assert found == {one.id: {"email": "a@x"}, state("user-0001").id: {}}
    assert store.rows.campaign_statuses(["camp-1", "missing"]) == {"camp-1": "scheduled"}


def test_a_status_is_recorded_once_and_the_latest_wins_by_rank_then_time(store: Store) -> None:
    conversation = state("user-0000")
    store.repos.conversations.insert_states([conversation])
    written = sent(conversation, "m-1")
    store.repos.conversations.write_transitions([(conversation, written)], START)
    store.repos.outbox.enqueue_many([envelope("m-1", conversation_id=conversation.id)])
    statuses = store.statuses
    event = DeliveryEvent(status="sent", at=START, detail=None, recorded_at=START)
    assert statuses.add_event("m-1", event)
    assert not statuses.add_event("m-1", event.model_copy(update={"at": LEASE}))
    assert statuses.add_event("m-1", DeliveryEvent(status="delivered", at=LEASE, detail={"id": 7}))
    assert not statuses.add_event("missing", event)
    row = statuses.row("m-1")
    assert row is not None and [e.status for e in row.events] == ["sent", "delivered"]
    assert row.events[1].detail == {"id": 7} and row.content == ""  # content left out

    def latest(status: str, rank: int, minutes: int) -> None:
        at = START + minutes * MINUTE
        statuses.set_latest("m-1", conversation.id, LatestStatus(status=status, rank=rank, at=at))

    latest("delivered", 1, 5)
    latest("sent", 0, 10)  # a lower rank, however late, does not replace it
    latest("failed", 1, 4)  # the same rank, earlier: neither
    row = statuses.row("m-1")
    assert row is not None and row.delivery is not None and row.delivery.status == "delivered"
    latest("bounced", 1, 6)
    row = statuses.row("m-1")
    assert row is not None and row.delivery is not None and row.delivery.status == "bounced"
    stored = store.repos.conversations.get_state(conversation.id)
    assert isinstance(stored, ConversationState)
    assert stored.message_history[0].metadata["delivery"]["status"] == "bounced"
    assert stored.version == written.version + 1  # the status did not bump the version


def test_a_delivery_is_counted_once_per_key_in_an_existing_metrics_document(store: Store) -> None:
    statuses = store.statuses
    assert not statuses.count("camp-1", "webhook", "sent", "m-1:sent")  # no document yet
    store.repos.metrics.apply_delta("camp-1", MetricsDelta(sent=1), START)
    assert statuses.count("camp-1", "webhook", "sent", "m-1:sent")
    assert not statuses.count("camp-1", "webhook", "sent", "m-1:sent")
    assert statuses.count("camp-1", "webhook", "delivered", "m-1:delivered")
    stored = store.repos.metrics.get("camp-1")
    assert stored is not None
    assert stored.delivery == {"webhook": {"sent": 1, "delivered": 1}}
    assert stored.delivery_counted == ["m-1:sent", "m-1:delivered"]
