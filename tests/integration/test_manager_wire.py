"""CampaignManager over the real MongoDB wire protocol (MONGODB_URI or secantusdb).

The end state of every flow is checked against the conversation documents themselves:
the metrics document maintained by $inc must equal a recount from the states.
"""

from __future__ import annotations

import math
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, timedelta
from typing import Any

import pymongo
import pytest

from campaign_worker.adapters.clock import ManualClock
from campaign_worker.adapters.mongo import CAMPAIGNS, CONVERSATIONS, METRICS, OUTBOX
from campaign_worker.domain.documents import conversation_id_for
from campaign_worker.service.campaign_manager import CampaignManager
from campaign_worker.service.initialization import CHECKPOINT_EVERY
from tests.conftest import ManagerFactory, sample_campaign
from tooling.mongo_monitoring import CommandCounter

pytestmark = pytest.mark.wire

Doc = dict[str, Any]
DAY = timedelta(days=1)

STATUS_COUNTERS = (
    "completed_conversations",
    "opted_out_conversations",
    "failed_conversations",
    "active_conversations",
    "total_recipients",
)


@pytest.fixture
def counted_db(wire_uri: str, wire_db: Any) -> Iterator[tuple[Any, CommandCounter]]:
    """The test's database through a second client whose commands are counted."""
    counter = CommandCounter()
    client: pymongo.MongoClient[Doc] = pymongo.MongoClient(
        wire_uri, tz_aware=True, tzinfo=UTC, event_listeners=[counter]
    )
    yield client[wire_db.name], counter
    client.close()


@pytest.fixture
def extra_clients(wire_uri: str) -> Iterator[Callable[[], pymongo.MongoClient[Doc]]]:
    clients: list[pymongo.MongoClient[Doc]] = []

    def make() -> pymongo.MongoClient[Doc]:
        client: pymongo.MongoClient[Doc] = pymongo.MongoClient(wire_uri, tz_aware=True, tzinfo=UTC)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def drain(manager: CampaignManager, campaign_id: str = "camp-1") -> Counter[str]:
    """Process batches until nothing is due now; returns the summed batch results."""
    total: Counter[str] = Counter()
    while True:
        result = manager.process_due_conversations(campaign_id)
        if result.claimed == 0:
            return total
        total.update(
            claimed=result.claimed, written=result.written, sent=result.sent,
            advanced=result.advanced, conflicts=result.conflicts,
        )  # fmt: skip


def recount(db: Any, campaign_id: str = "camp-1") -> Doc:
    """The campaign's metrics derived from scratch from its conversation documents."""
    statuses: Counter[str] = Counter()
    entered: Counter[str] = Counter()
    completed: Counter[str] = Counter()
    duration: Counter[str] = Counter()
    sent = received = 0
    for doc in db[CONVERSATIONS].find({"campaign_id": campaign_id}):
        statuses[doc["status"]] += 1
        outbound = [m for m in doc["message_history"] if m["direction"] == "outbound"]
        inbound = [m for m in doc["message_history"] if m["direction"] == "inbound"]
        assert doc["metrics"]["messages_sent"] == len(outbound)
        assert doc["metrics"]["messages_received"] == len(inbound)
        sent += len(outbound)
        received += len(inbound)
        for entry in doc["stages"]:
            entered[entry["name"]] += 1
            if entry["completed"]:
                completed[entry["name"]] += 1
                duration[entry["name"]] += (
                    entry["exited_at"] - entry["entered_at"]
                ).total_seconds()
    return {
        "total_recipients": sum(statuses.values()),
        "active_conversations": statuses["active"],
        "completed_conversations": statuses["completed"],
        "failed_conversations": statuses["failed"],
        "opted_out_conversations": statuses["opted_out"],
        "sent": sent,
        "received": received,
        "entered": dict(entered),
        "completed": dict(completed),
        "duration": dict(duration),
    }


def assert_metrics_match_states(manager: CampaignManager, db: Any) -> Doc:
    """The metrics document equals a recount from the states, and the outbox holds
    exactly the messages the states recorded, each once and deliverable."""
    expected = recount(db)
    metrics = manager.get_campaign_metrics("camp-1")
    for key in (
        "total_recipients",
        "active_conversations",
        "completed_conversations",
        "failed_conversations",
        "opted_out_conversations",
    ):
        assert metrics[key] == expected[key], key
    assert metrics["message_metrics"]["total_sent"] == expected["sent"]
    assert metrics["message_metrics"]["total_received"] == expected["received"]
    if expected["sent"]:
        assert metrics["message_metrics"]["response_rate"] == pytest.approx(
            expected["received"] / expected["sent"]
        )
    for stage, data in metrics["stage_metrics"].items():
        assert data["entered"] == expected["entered"].get(stage, 0), stage
        assert data["completed"] == expected["completed"].get(stage, 0), stage
        if data["completed"]:
            average = expected["duration"][stage] / data["completed"]
            assert data["avg_duration_seconds"] == pytest.approx(average), stage
    raw = db[METRICS].find_one({"_id": "camp-1"})
    for stage, seconds in expected["duration"].items():
        # A zero duration is never $inc'ed, so the field may be absent.
        stored = raw["stage_metrics"][stage].get("total_duration_seconds", 0.0)
        assert stored == pytest.approx(seconds), stage
    # Every message the states record is in the outbox (ids are unique there), and
    # nothing else is: a write that lost its race published nothing.
    recorded = {
        m["message_id"]
        for doc in db[CONVERSATIONS].find({"campaign_id": "camp-1"})
        for m in doc["message_history"]
        if m["direction"] == "outbound"
    }
    outbox = {doc["_id"]: doc for doc in db[OUTBOX].find({"campaign_id": "camp-1"})}
    assert recorded <= set(outbox), "a recorded message never reached the outbox"
    extra = {outbox[mid]["conversation_id"] for mid in set(outbox) - recorded}
    assert not extra, f"outbox messages no conversation recorded: {extra}"
    assert {doc["status"] for doc in outbox.values()} <= {"pending"}
    return metrics


# ------------------------------------------------------------------ initialization


def test_initialize_twice_creates_each_conversation_once(
    wire_db: Any, make_manager: ManagerFactory
) -> None:
    manager = make_manager(wire_db)
    manager.create_campaign(sample_campaign(120))

    assert manager.initialize_campaign_conversations("camp-1") == 120
    assert manager.initialize_campaign_conversations("camp-1") == 0

    states = wire_db[CONVERSATIONS]
    assert states.count_documents({}) == 120
    assert len(states.distinct("user_id")) == 120
    assert {doc["_id"] for doc in states.find({}, {"_id": 1})} == {
        conversation_id_for("camp-1", f"user-{i:05d}") for i in range(120)
    }
    campaign = wire_db[CAMPAIGNS].find_one({"_id": "camp-1"})
    assert campaign["status"] == "running"
    assert campaign["total_recipients"] == 120
    metrics = manager.get_campaign_metrics("camp-1")
    assert metrics["total_recipients"] == 120
    assert metrics["active_conversations"] == 120
    assert metrics["stage_metrics"]["awareness"]["entered"] == 120


def test_initialization_round_trips_are_per_batch_not_per_recipient(
    wire_db: Any, counted_db: tuple[Any, CommandCounter], make_manager: ManagerFactory
) -> None:
    db, counter = counted_db
    manager = make_manager(db, init_batch_size=50)
    manager.create_campaign(sample_campaign(600))

    with counter.measure() as span:
        assert manager.initialize_campaign_conversations("camp-1") == 600
    batches = math.ceil(600 / 50)
    checkpoints = batches // CHECKPOINT_EVERY
    # Fixed: campaign read, two status changes, the final count, the writer's one
    # registration and one metrics increment. Per batch: the suppression check (one
    # find) and its insert, and a checkpoint every CHECKPOINT_EVERY batches. Nothing per
    # recipient.
    assert dict(span.counts.by_name) == {
        "aggregate": 1,
        "find": 1 + batches,
        "findAndModify": 2,
        "insert": batches,
        "update": 2 + checkpoints,
    }
    assert span.counts.total == 6 + 2 * batches + checkpoints

    with counter.measure() as span:
        assert manager.initialize_campaign_conversations("camp-1") == 0
    assert span.counts.total <= 6 + 2 * batches + checkpoints, span.counts.as_dict()


def test_referenced_recipients_are_streamed_from_their_collection(
    wire_db: Any, make_manager: ManagerFactory
) -> None:
    manager = make_manager(wire_db, init_batch_size=40)
    wire_db["recipients"].insert_many(
        [
            {"_id": i, "list": "spring" if i % 2 else "other", "user_id": f"u{i:04d}"}
            for i in range(200)
        ]
    )
    campaign = sample_campaign(0)
    campaign["recipients"] = {"collection": "recipients", "query": {"list": "spring"}}
    manager.create_campaign(campaign)

    assert manager.initialize_campaign_conversations("camp-1") == 100
    assert manager.initialize_campaign_conversations("camp-1") == 0
    assert wire_db[CONVERSATIONS].count_documents({"campaign_id": "camp-1"}) == 100
    assert wire_db[CAMPAIGNS].find_one({"_id": "camp-1"})["total_recipients"] == 100


# ------------------------------------------------------------------ a whole campaign


def test_campaign_over_the_wire_ends_with_exact_metrics(
    wire_db: Any, make_manager: ManagerFactory, clock: ManualClock
) -> None:
    manager = make_manager(wire_db, process_batch_size=25)
    manager.create_campaign(sample_campaign(80))
    assert manager.initialize_campaign_conversations("camp-1") == 80
    uid = [f"user-{i:05d}" for i in range(80)]
    cid = [conversation_id_for("camp-1", user) for user in uid]

    first = drain(manager)
    assert first["claimed"] == 80 and first["sent"] == 80 and first["written"] == 80
    assert drain(manager) == Counter(), "nothing is due again at the same time"
    assert wire_db[OUTBOX].count_documents({}) == 80

    # Replies: 30 say yes (awareness -> consideration, whose first message goes out at
    # once), 5 opt out; a redelivered reply is recognised as a duplicate.
    clock.advance(timedelta(hours=2))
    for i in range(30):
        result = manager.record_inbound_message("camp-1", uid[i], f"in-{i}", "YES please")
        assert result["current_stage"] == "consideration" and "advance" in result["actions"]
    for i in range(30, 35):
        result = manager.record_inbound_message("camp-1", uid[i], f"in-{i}", "stop")
        assert result["status"] == "opted_out"
    again = manager.record_inbound_message("camp-1", uid[0], "in-0", "YES please")
    assert again["duplicate"] is True
    history = manager.get_conversation_history(cid[0])
    assert [m["message_id"] for m in history if m["direction"] == "inbound"] == ["in-0"]

    # Explicit advance, then replays of it (and a move backwards) change nothing.
    for i in range(5):
        advanced = manager.advance_conversation_stage(cid[i], "decision")
        assert advanced["current_stage"] == "decision"
        # The returned state is the stored one (version included), so a caller can use it.
        stored = wire_db[CONVERSATIONS].find_one({"_id": cid[i]})
        assert advanced["version"] == stored["version"]
        replay = manager.advance_conversation_stage(cid[i], "decision")
        assert replay["version"] == advanced["version"]
        assert (
            manager.advance_conversation_stage(cid[i], "awareness")["version"]
            == (advanced["version"])
        )
    before = wire_db[METRICS].find_one({"_id": "camp-1"})
    manager.advance_conversation_stage(cid[0], "decision")
    after = wire_db[METRICS].find_one({"_id": "camp-1"})
    assert {k: v for k, v in after.items() if k != "updated_at"} == {
        k: v for k, v in before.items() if k != "updated_at"
    }

    # Five ask for pricing (consideration -> decision), the five in decision buy.
    for i in range(5, 10):
        result = manager.record_inbound_message("camp-1", uid[i], f"price-{i}", "pricing?")
        assert result["current_stage"] == "decision"
    for i in range(5):
        result = manager.record_inbound_message("camp-1", uid[i], f"buy-{i}", "ok, buy")
        assert result["status"] == "completed"
    assert_metrics_match_states(manager, wire_db)

    # Let time run out for everyone else: follow-ups go out, then rules fail them.
    for _ in range(30):
        clock.advance(DAY)
        drain(manager)
        if manager.conversation_state_repository.count_active("camp-1") == 0:
            break
    poll = manager.poll_campaigns()
    assert "camp-1" in poll.completed
    assert wire_db[CAMPAIGNS].find_one({"_id": "camp-1"})["status"] == "completed"

    metrics = assert_metrics_match_states(manager, wire_db)
    assert metrics["active_conversations"] == 0
    assert metrics["completed_conversations"] == 5
    assert metrics["opted_out_conversations"] == 5
    assert metrics["failed_conversations"] == 70
    assert metrics["stage_metrics"]["consideration"]["entered"] == 30
    assert metrics["stage_metrics"]["decision"]["entered"] == 10
    assert metrics["stage_metrics"]["decision"]["completed"] == 5
    # The aggregation over the states agrees with the incremental document.
    counts = manager.conversation_state_repository.recount("camp-1")
    assert {key: counts.get(key) for key in STATUS_COUNTERS} == {
        "completed_conversations": 5,
        "opted_out_conversations": 5,
        "failed_conversations": 70,
        "active_conversations": None,  # zero: left out
        "total_recipients": 80,
    }


@pytest.mark.parametrize("batch", [40, 150, 1000])
def test_processing_round_trips_are_per_batch(
    counted_db: tuple[Any, CommandCounter], make_manager: ManagerFactory, batch: int
) -> None:
    db, counter = counted_db
    manager = make_manager(db, process_batch_size=batch)
    manager.create_campaign(sample_campaign(batch + 10))
    manager.initialize_campaign_conversations("camp-1")

    with counter.measure() as span:
        result = manager.process_due_conversations("camp-1")
    assert result.claimed == batch and result.written == batch and result.more
    # campaign read, the batch read in full (one find, no getMore, no lease write, no
    # re-read), the suppression check of the batch's senders (one find), metrics
    # registration, bulk_write, outbox insert, publication marks, metrics increment: 8
    # whatever the batch size.
    assert span.counts.total == 8, span.counts.as_dict()
    assert dict(span.counts.by_name) == {"find": 3, "insert": 1, "update": 4}


def test_a_dispatched_batch_writes_the_metrics_document_once(
    counted_db: tuple[Any, CommandCounter], make_manager: ManagerFactory
) -> None:
    """Registered by its dispatcher, a batch needs no registration of its own: its one
    metrics write counts, deregisters it and registers its successors."""
    db, counter = counted_db
    manager = make_manager(db, process_batch_size=100)
    manager.create_campaign(sample_campaign(350))
    manager.initialize_campaign_conversations("camp-1")
    [first] = manager.dispatch_processing("camp-1")
    handed: list[Any] = []

    with counter.measure() as span:
        result = manager.process_due_conversations(
            "camp-1", registration=first.token, on_more=handed.extend
        )
    assert (result.written, result.more, len(handed)) == (100, True, 2)
    # campaign read, batch read, suppression check, bulk_write, outbox insert,
    # publication marks, the one metrics write; and, because more was due, one count of
    # what is left in the range.
    assert dict(span.counts.by_name) == {"aggregate": 1, "find": 3, "insert": 1, "update": 3}
    assert set(db[METRICS].find_one({"_id": "camp-1"})["inflight"]) == {d.token for d in handed}

    done = 0
    with counter.measure() as span:
        while done < len(handed):
            d = handed[done]
            done += 1
            manager.process_due_conversations(
                "camp-1", registration=d.token, on_more=handed.extend, **d.span.as_kwargs()
            )
    assert db[CONVERSATIONS].count_documents({"metrics.messages_sent": 0}) == 0
    # Per task 7 round trips, plus a count for each that saw more: nothing per conversation.
    saw_more = span.counts.by_name.get("aggregate", 0)
    assert span.counts.total == 7 * done + saw_more, (done, span.counts.as_dict())
    assert db[METRICS].find_one({"_id": "camp-1"})["inflight"] == {}
    assert_metrics_match_states(manager, db)


# ------------------------------------------------------------------ concurrency


def test_two_workers_processing_concurrently_send_each_message_once(
    wire_db: Any,
    make_manager: ManagerFactory,
    extra_clients: Callable[[], pymongo.MongoClient[Doc]],
) -> None:
    make_manager(wire_db).create_campaign(sample_campaign(100))
    make_manager(wire_db).initialize_campaign_conversations("camp-1")
    workers = [make_manager(extra_clients()[wire_db.name], process_batch_size=15) for _ in "ab"]
    totals: list[Counter[str]] = []
    barrier = threading.Barrier(len(workers))
    errors: list[BaseException] = []

    def work(manager: CampaignManager) -> None:
        try:
            barrier.wait(timeout=30)
            done: Counter[str] = Counter()
            while True:
                done.update(drain(manager))
                now = manager.clock.now()
                if not manager.conversation_state_repository.count_due(
                    "camp-1", now, settling=False, limit=1
                ):
                    break
            totals.append(done)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(m,)) for m in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    assert len(totals) == 2

    assert sum(t["written"] for t in totals) == 100
    assert sum(t["sent"] for t in totals) == 100
    assert wire_db[OUTBOX].count_documents({}) == 100
    for doc in wire_db[CONVERSATIONS].find():
        assert doc["metrics"]["messages_sent"] == 1
        assert doc["version"] == 1
    assert_metrics_match_states(workers[0], wire_db)


def test_a_reply_landing_during_a_batch_wins_and_the_batch_reports_the_conflict(
    wire_db: Any, make_manager: ManagerFactory, clock: ManualClock
) -> None:
    manager = make_manager(wire_db, process_batch_size=10)
    manager.create_campaign(sample_campaign(10))
    manager.initialize_campaign_conversations("camp-1")
    repo = manager.conversation_state_repository
    write = repo.write_transitions
    replied = conversation_id_for("camp-1", "user-00003")

    def reply_then_write(*args: Any, **kwargs: Any) -> Any:
        # The reply arrives after the batch computed its changes, before it writes them
        # (the reply's own write goes through the real write_transitions).
        repo.write_transitions = write  # type: ignore[method-assign]
        manager.record_inbound_message("camp-1", "user-00003", "in-3", "YES")
        return write(*args, **kwargs)

    repo.write_transitions = reply_then_write  # type: ignore[method-assign]
    result = manager.process_due_conversations("camp-1")

    assert result.claimed == 10
    assert result.written == 9 and result.conflicts == 1
    state = manager.get_conversation(replied)
    assert state["current_stage"] == "consideration"
    assert state["metrics"]["messages_received"] == 1
    # The reply's own evaluation sent what it decided; the losing batch's computation
    # for this conversation left no trace in its state, the metrics or the outbox.
    assert [
        m["metadata"]["stage"] for m in state["message_history"] if m["direction"] == "outbound"
    ] == ["consideration"]
    assert_metrics_match_states(manager, wire_db)
    assert wire_db["outbox"].find_one({"conversation_id": replied, "stage": "awareness"}) is None
