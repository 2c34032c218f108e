"""The worker side of batched replies, without a broker: how ``BatchedTask.run_batch``
settles each message (result, dead letter, retry, or unsettled), and how the consumer's
``Buffer`` acknowledges only settled messages and gives the others back to the broker.
The same through a real worker and broker: tests/e2e/test_reply_batches_e2e.py."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, cast

import pytest
from pymongo.errors import AutoReconnect

from campaign_worker.adapters.mongo import MongoClientProvider
from campaign_worker.adapters.mongo_dead_letters import MongoDeadLetterRepository
from campaign_worker.bootstrap import Container
from campaign_worker.domain.errors import TransientError
from campaign_worker.entrypoints import tasks
from campaign_worker.entrypoints.batch_task import BatchedTask
from campaign_worker.entrypoints.batching import (
    REQUEUE_PAUSE_SECONDS,
    BatchItem,
    Buffer,
    ItemOutcome,
)
from campaign_worker.entrypoints.container import set_container
from campaign_worker.settings import Settings
from tests.conftest import ManagerFactory, sample_campaign

Doc = dict[str, Any]
TASK = cast(BatchedTask, tasks.record_inbound_message)


@pytest.fixture
def worker(mock_db: Any, make_manager: ManagerFactory, settings: Settings) -> Iterator[Container]:
    manager = make_manager(mock_db)
    provider = MongoClientProvider(settings, factory=lambda: mock_db.client)
    built = Container(settings=settings, mongo=provider, manager=manager)
    built.dead_letters.initialize()
    set_container(built)
    manager.create_campaign(sample_campaign(2))
    manager.initialize_campaign_conversations("camp-1")
    yield built
    set_container(None)


def item(task_id: str, retries: int = 0, **kwargs: Any) -> BatchItem:
    reply = {"campaign_id": "camp-1", "user_id": "user-00000", "message_id": task_id}
    return BatchItem(task_id, [], {**reply, "content": "hi", **kwargs}, retries=retries)


def letters(worker: Container) -> dict[str, Doc]:
    return {doc["_id"]: doc for doc in worker.db["dead_letters"].find()}


def test_each_message_is_settled_alone(worker: Container) -> None:
    batch = [
        item("ok-1"),
        item("bad-args", timestamp="yesterday"),
        item("ghost", campaign_id="ghost"),
        item("ok-1-again", message_id="ok-1"),
        BatchItem("positional", ["camp-1", "user-00001", "m-9", "yes"], {}),
    ]

    outcomes = TASK.run_batch(batch)

    assert [(o.settled, o.state) for o in outcomes] == [
        (True, "SUCCESS"),
        (True, "FAILURE"),
        (True, "FAILURE"),
        (True, "SUCCESS"),
        (True, "SUCCESS"),
    ]
    assert outcomes[0].result["duplicate"] is False
    assert outcomes[3].result["duplicate"] is True
    found = letters(worker)
    assert set(found) == {"bad-args", "ghost"}
    assert found["bad-args"]["reason"] == "invalid_input"
    assert "timestamp: Input should be a valid datetime" in found["bad-args"]["error"]
    assert found["ghost"]["error"] == "campaign not found: 'ghost'"
    assert "hi" not in outcomes[1].error  # bodies stay out of events


def test_a_transient_failure_retries_each_message_with_backoff(
    worker: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    def down(batch: Any) -> Any:
        raise TransientError("MongoDB unavailable: it went away")  # as the adapters raise it

    published: list[Doc] = []
    monkeypatch.setattr(worker.manager, "record_inbound_messages", down)
    monkeypatch.setattr(TASK, "apply_async", lambda *a, **kw: published.append({"args": a, **kw}))

    outcomes = TASK.run_batch([item("t-1"), item("t-2", retries=TASK.max_retries)])

    assert [(o.settled, o.state) for o in outcomes] == [(True, "RETRY"), (True, "FAILURE")]
    assert [(p["task_id"], p["retries"]) for p in published] == [("t-1", 1)]
    assert published[0]["args"][1]["message_id"] == "t-1"
    assert 0 <= published[0]["countdown"] <= TASK.retry_backoff_max
    assert letters(worker)["t-2"]["reason"] == "retries_exhausted"


def test_a_batch_out_of_its_soft_time_limit_is_retried_not_dead_lettered(
    worker: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    from celery.exceptions import SoftTimeLimitExceeded

    def slow(batch: Any) -> Any:
        raise SoftTimeLimitExceeded()

    published: list[Doc] = []
    monkeypatch.setattr(worker.manager, "record_inbound_messages", slow)
    monkeypatch.setattr(TASK, "apply_async", lambda *a, **kw: published.append(kw))

    outcomes = TASK.run_batch([item("t-slow")])

    assert [(o.settled, o.state) for o in outcomes] == [(True, "RETRY")]
    assert [p["task_id"] for p in published] == ["t-slow"]
    assert letters(worker) == {}


def test_a_message_that_cannot_be_stored_or_retried_is_left_unsettled(
    worker: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    def store_down(*args: Any, **kwargs: Any) -> bool:
        raise AutoReconnect("MongoDB went away")

    def broker_down(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("broker went away")

    monkeypatch.setattr(MongoDeadLetterRepository, "add", store_down)
    outcomes = TASK.run_batch([item("ok"), item("ghost", campaign_id="ghost")])
    assert [o.settled for o in outcomes] == [True, False]

    monkeypatch.setattr(worker.manager, "record_inbound_messages", store_down)
    monkeypatch.setattr(TASK, "apply_async", broker_down)
    assert [o.settled for o in TASK.run_batch([item("t-3")])] == [False]


def delayed(task_id: str, message_id: str) -> BatchItem:
    """A copy of a message sent with an ETA (a countdown)."""
    reply = {"campaign_id": "camp-1", "user_id": "user-00000", "message_id": message_id}
    return BatchItem(task_id, [], {**reply, "content": "hi"}, delayed=True)


def inbound_ids(worker: Container) -> list[str]:
    doc = worker.db["conversation_states"].find_one({"user_id": "user-00000"})
    assert doc is not None
    return [m["message_id"] for m in doc["message_history"] if m["direction"] == "inbound"]


def test_copies_of_a_delayed_message_run_once(
    worker: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two copies in one batch (Redis redelivered it while it waited for its ETA): one
    runs, the other is settled with it; a later copy of the done task does not run."""
    worker.task_claims.initialize()
    batches: list[int] = []
    record = worker.manager.record_inbound_messages

    def counting(replies: Any) -> Any:
        batches.append(len(replies))
        return record(replies)

    monkeypatch.setattr(worker.manager, "record_inbound_messages", counting)
    first = TASK.run_batch([delayed("late-1", "m-late"), delayed("late-1", "m-late")])
    assert [(o.settled, o.state) for o in first] == [(True, "SUCCESS")] * 2
    assert batches == [1]
    claim = worker.task_claims.get("late-1")
    assert claim is not None and claim["runs"] == 1 and claim["done_at"] is not None

    again = TASK.run_batch([delayed("late-1", "m-late"), item("plain")])
    assert [(o.settled, o.state) for o in again] == [(True, "SUCCESS")] * 2
    assert batches == [1, 1]  # only the message without an ETA ran
    assert inbound_ids(worker) == ["m-late", "plain"]


def test_a_copy_of_a_delayed_message_running_elsewhere_is_put_off(
    worker: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    from datetime import UTC, datetime, timedelta

    now = datetime.now(UTC)
    worker.task_claims.claim("late-2", "other-worker", now, now + timedelta(seconds=60))
    published: list[Doc] = []
    monkeypatch.setattr(TASK, "apply_async", lambda *a, **kw: published.append(kw))

    outcomes = TASK.run_batch([delayed("late-2", "m-2")])

    assert [(o.settled, o.state) for o in outcomes] == [(True, "RETRY")]
    assert [(p["task_id"], p["retries"]) for p in published] == [("late-2", 0)]
    assert 1 <= published[0]["countdown"] <= 10
    assert inbound_ids(worker) == []  # not run here


def test_a_single_task_copy_with_an_eta_claims_its_task_id(
    worker: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``CampaignTask.__call__``, the path of every task not run in batches."""
    from datetime import UTC, datetime, timedelta

    worker.task_claims.initialize()
    published: list[Doc] = []
    monkeypatch.setattr(TASK, "apply_async", lambda *a, **kw: published.append(kw))
    kwargs = {"campaign_id": "camp-1", "user_id": "user-00000", "content": "hi"}

    def copy(task_id: str, message_id: str) -> Any:
        TASK.push_request(id=task_id, eta="2026-01-01T00:00:00+00:00", called_directly=False)
        try:
            return TASK(**kwargs, message_id=message_id)
        finally:
            TASK.pop_request()

    assert copy("eta-1", "m-eta")["duplicate"] is False
    assert copy("eta-1", "m-eta") is None  # done: not run again
    now = datetime.now(UTC)
    worker.task_claims.claim("eta-2", "elsewhere", now, now + timedelta(seconds=60))
    assert copy("eta-2", "m-other") is None  # running elsewhere: put off
    assert [(p["task_id"], p["retries"]) for p in published] == [("eta-2", 0)]
    assert inbound_ids(worker) == ["m-eta"]
    claim = worker.task_claims.get("eta-1")
    assert claim is not None and claim["runs"] == 1 and claim["done_at"] is not None


# ---------------------------------------------------------------- the consumer's buffer


class FakeRequest:
    def __init__(self, task_id: str) -> None:
        self.id = task_id
        self.name = TASK.name
        self.args: list[Any] = []
        self.kwargs: Doc = {"message_id": task_id}
        self.request_dict: Doc = {"retries": 0}
        self.reply_to = self.correlation_id = None
        self.time_start: float | None = None
        self.worker_pid: int | None = None
        self.acked = False
        self.requeued = False
        self.events: list[str] = []

    def revoked(self) -> bool:
        return False

    def acknowledge(self) -> None:
        self.acked = True

    def reject(self, requeue: bool = False) -> None:
        self.requeued = requeue

    def send_event(self, type: str, **fields: Any) -> None:
        self.events.append(type)


class FakeConsumer:
    """What a Buffer uses of Celery's consumer: pool, timer, QoS."""

    hostname = "test@host"
    event_dispatcher = None
    connection_errors = ()

    def __init__(self) -> None:
        self.jobs: list[Doc] = []
        self.timers: list[tuple[float, Any]] = []
        self.prefetch = 1
        consumer = self

        class Pool:
            def apply_async(self, target: Any, args: Any = (), **callbacks: Any) -> None:
                consumer.jobs.append({"target": target, "args": args, **callbacks})

        class Entry:
            def __init__(self, secs: float, call: Any) -> None:
                self.secs, self.call = secs, call

            def cancel(self) -> None:
                if (self.secs, self.call) in consumer.timers:
                    consumer.timers.remove((self.secs, self.call))

        class Timer:
            def call_after(self, secs: float, fun: Any, args: Any = ()) -> Any:
                entry = Entry(secs, lambda: fun(*args))
                consumer.timers.append((secs, entry.call))
                return entry

        class QoS:
            def increment_eventually(self, n: int = 1) -> None:
                consumer.prefetch += n

            def decrement_eventually(self, n: int = 1) -> None:
                consumer.prefetch -= n

        self.pool, self.timer, self.qos = Pool(), Timer(), QoS()

    def fire_timers(self) -> None:
        timers, self.timers = self.timers, []
        for _, fun in timers:
            fun()


def buffered(consumer: FakeConsumer, size: int, ids: list[str]) -> tuple[Buffer, list[Any]]:
    buffer = Buffer(TASK, TASK.app, consumer, size=size, interval=0.5)
    requests = [FakeRequest(task_id) for task_id in ids]
    for request in requests:
        buffer._hold(request, delayed=False)
        buffer.add(request)
    return buffer, requests


def test_the_buffer_acknowledges_settled_messages_only() -> None:
    consumer = FakeConsumer()
    buffer, requests = buffered(consumer, 3, ["a", "b", "c"])  # full: flushed at once
    assert len(consumer.jobs) == 1 and consumer.prefetch == 1 + 3
    job = consumer.jobs[0]
    assert [i.id for i in job["args"][1]] == ["a", "b", "c"]

    job["callback"](
        [ItemOutcome(True, "SUCCESS"), ItemOutcome(False), ItemOutcome(True, "FAILURE")]
    )

    assert [r.acked for r in requests] == [True, False, True]
    assert requests[0].events == ["task-succeeded"] and requests[2].events == ["task-failed"]
    assert not requests[1].requeued  # not at once: after a pause, no hot loop
    assert consumer.timers[0][0] == REQUEUE_PAUSE_SECONDS
    consumer.fire_timers()
    assert requests[1].requeued and not requests[1].acked
    assert consumer.prefetch == 1 and buffer.held == 0


def test_a_lost_batch_goes_back_whole_and_a_partial_one_flushes_on_time() -> None:
    consumer = FakeConsumer()
    buffer, requests = buffered(consumer, 10, ["a", "b"])
    assert consumer.jobs == []  # waiting for more, or for the interval
    assert consumer.prefetch == 1 + 10  # room for a whole batch, granted at once
    consumer.fire_timers()  # the interval passed
    assert consumer.prefetch == 1 + 2  # the unused room is given back
    consumer.jobs[0]["error_callback"]("WorkerLostError")  # the pool process died
    consumer.fire_timers()
    assert all(r.requeued and not r.acked for r in requests)
    assert consumer.prefetch == 1 and buffer.held == 0
