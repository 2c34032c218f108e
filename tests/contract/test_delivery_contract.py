"""Delivery's rows and statuses: their contract, on every backend."""

from __future__ import annotations

from campaign_worker.domain.delivery import (
    Attempt,
    DeliveryEvent,
    LatestStatus,
    RowMove,
    RowStatus,
    StatusCount,
    StatusWrite,
)
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
    back = RowMove("m-4", RowStatus.PENDING)
    assert rows.finish_many("nobody", [back]) == set()  # not leased: nothing moves
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
    assert rows.start_attempts("b", LEASE, [("m-1", attempt)]) == set()
    both = [("m-1", attempt), ("m-3", attempt), ("m-9", attempt)]
    assert rows.start_attempts("a", LEASE + MINUTE, both) == {"m-1", "m-3"}
    sent = RowMove("m-1", RowStatus.SENT, at=START)
    assert rows.finish_many("b", [sent]) == set()
    retry = RowMove("m-2", RowStatus.PENDING, next_attempt_at=LEASE, reason="timeout")
    failed = RowMove("m-3", RowStatus.FAILED, at=START, reason="gave up", channel="webhook")
    assert rows.finish_many("a", [sent, retry, failed]) == {"m-1", "m-2", "m-3"}
    again = RowMove("m-1", RowStatus.SENT, at=START, provider_id="again")
    assert rows.finish_many("a", [again]) == set()  # no longer leased
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
    assert stored["m-3"]["attempts"] == 1
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


def test_many_deliveries_are_counted_at_once_and_once_per_key(store: Store) -> None:
    statuses = store.statuses
    store.repos.metrics.apply_delta("camp-1", MetricsDelta(sent=1), START)
    first = [StatusCount("webhook", "sent", f"m-{i}:sent") for i in range(3)]
    assert statuses.count_many("camp-1", first) == {"m-0:sent", "m-1:sent", "m-2:sent"}
    again = [*first[1:], StatusCount("smtp", "failed", "m-7:failed")]
    assert statuses.count_many("camp-1", again) == {"m-7:failed"}  # repeats are not counted
    assert statuses.count_many("missing", first) == set()
    stored = store.repos.metrics.get("camp-1")
    assert stored is not None
    assert stored.delivery == {"webhook": {"sent": 3}, "smtp": {"failed": 1}}


def test_many_statuses_are_recorded_once_with_the_latest_on_row_and_history(
    store: Store,
) -> None:
    conversation = state("user-0000")
    store.repos.conversations.insert_states([conversation])
    written = sent(conversation, "m-1")
    store.repos.conversations.write_transitions([(conversation, written)], START)
    store.repos.outbox.enqueue_many(
        [envelope("m-1", conversation_id=conversation.id), envelope("m-2")]
    )
    statuses = store.statuses
    event = DeliveryEvent(status="sent", at=START, detail=None, recorded_at=START)
    latest = LatestStatus(status="sent", rank=0, at=START)
    writes = [StatusWrite("m-1", conversation.id, event, latest)]
    statuses.record_many([*writes, StatusWrite("m-2", "nobody", event, latest)])
    statuses.record_many(writes)  # a repeat adds no second event
    row = statuses.row("m-1")
    assert row is not None and [e.status for e in row.events] == ["sent"]
    assert row.delivery is not None and row.delivery.status == "sent"
    other = statuses.row("m-2")
    assert other is not None and [e.status for e in other.events] == ["sent"]
    # The latest wins by rank, then time, as with set_latest.
    report = DeliveryEvent(status="delivered", at=LEASE, recorded_at=LEASE)
    delivered = LatestStatus(status="delivered", rank=1, at=LEASE)
    statuses.record_many([StatusWrite("m-2", "nobody", report, delivered)])
    late_sent = latest.model_copy(update={"at": LEASE + MINUTE})
    statuses.record_many([StatusWrite("m-2", "nobody", event, late_sent)])
    other = statuses.row("m-2")
    assert other is not None and other.delivery is not None
    assert other.delivery.status == "delivered"
    later = delivered.model_copy(update={"status": "bounced", "at": LEASE + MINUTE})
    bounced = report.model_copy(update={"status": "bounced"})
    statuses.record_many([StatusWrite("m-2", "nobody", bounced, later)])
    other = statuses.row("m-2")
    assert other is not None and other.delivery is not None
    assert other.delivery.status == "bounced"
    assert [e.status for e in other.events] == ["sent", "delivered", "bounced"]
    stored = store.repos.conversations.get_state(conversation.id)
    assert isinstance(stored, ConversationState)
    assert stored.message_history[0].metadata["delivery"]["status"] == "sent"
    assert stored.version == written.version + 1  # the status did not bump the version
