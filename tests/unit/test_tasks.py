"""The public Celery tasks, run in-process (``Task.apply``) over the manager on mongomock.

Nothing here talks to a broker: the tasks' own enqueues (``apply_async``) are recorded.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from celery.result import EagerResult
from pymongo.errors import AutoReconnect

import celeryconfig
from campaign_worker.adapters.clock import ManualClock
from campaign_worker.adapters.mongo import MongoClientProvider, translate_errors
from campaign_worker.adapters.mongo_dead_letters import MongoDeadLetterRepository
from campaign_worker.bootstrap import Container
from campaign_worker.domain.documents import conversation_id_for
from campaign_worker.domain.errors import (
    ConcurrencyConflictError,
    ConfigurationError,
    InvalidInputError,
    InvalidStateTransitionError,
    TransientError,
)
from campaign_worker.domain.templates import Template
from campaign_worker.entrypoints import tasks
from campaign_worker.entrypoints.celery_app import app
from campaign_worker.entrypoints.container import set_container
from campaign_worker.settings import Settings
from tests.conftest import START, ManagerFactory, sample_campaign

Doc = dict[str, Any]


class Enqueued:
    """Records ``apply_async`` calls of the tasks the tasks themselves enqueue."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Doc]] = []
        self.task_ids: list[str | None] = []

    def recorder(self, name: str) -> Any:
        def apply_async(args: Any = None, kwargs: Doc | None = None, **options: Any) -> None:
            # A task id is given only to registered processing tasks (see dispatch_tokens.py).
            assert args is None and set(options) <= {"task_id"}, (
                "tasks enqueue by kwargs and route by name"
            )
            self.calls.append((name, dict(kwargs or {})))
            self.task_ids.append(options.get("task_id"))

        return apply_async

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]


@pytest.fixture
def worker(mock_db: Any, make_manager: ManagerFactory, settings: Settings) -> Iterator[Container]:
    manager = make_manager(mock_db)
    provider = MongoClientProvider(settings, factory=lambda: mock_db.client)
    built = Container(settings=settings, mongo=provider, manager=manager)
    built.dead_letters.initialize()
    set_container(built)
    yield built
    set_container(None)


@pytest.fixture
def enqueued(monkeypatch: pytest.MonkeyPatch) -> Enqueued:
    record = Enqueued()
    for task in (tasks.initialize_campaign, tasks.process_conversations):
        monkeypatch.setattr(task, "apply_async", record.recorder(task.name))
    return record


def run(task: Any, task_id: str | None = None, **kwargs: Any) -> EagerResult[Any]:
    return task.apply(kwargs=kwargs, task_id=task_id)  # type: ignore[no-any-return]


def dead_letters(worker: Container) -> list[Doc]:
    return list(worker.db["dead_letters"].find())


def count_calls(monkeypatch: pytest.MonkeyPatch, obj: Any, name: str, *effects: Any) -> list[int]:
    """Replace ``obj.name`` with a stub: each call takes the next effect (an exception is
    raised, anything else returned; the last one repeats). Returns a one-item call counter."""
    calls = [0]

    def stub(*args: Any, **kwargs: Any) -> Any:
        effect = effects[min(calls[0], len(effects) - 1)]
        calls[0] += 1
        if isinstance(effect, BaseException):
            raise effect
        return effect

    monkeypatch.setattr(obj, name, stub)
    return calls


def translated(error: Exception) -> Exception:
    """What an adapter raises when PyMongo raises ``error`` (``translate_errors``)."""

    @translate_errors
    def read() -> None:
        raise error

    try:
        read()
    except Exception as exc:
        return exc
    raise AssertionError("nothing raised")


def running_campaign(worker: Container, n: int = 4, campaign_id: str = "camp-1") -> str:
    manager = worker.manager
    manager.create_campaign(sample_campaign(n, campaign_id=campaign_id))
    manager.initialize_campaign_conversations(campaign_id)
    return campaign_id


# --------------------------------------------------------------------- configuration


def test_config_is_json_only_late_ack_and_limits_below_visibility_timeout() -> None:
    conf = app.conf
    assert conf.accept_content == ["json"]
    assert conf.task_serializer == "json" and conf.result_serializer == "json"
    assert conf.task_acks_late is True
    assert conf.task_reject_on_worker_lost is True
    assert conf.worker_prefetch_multiplier == 1
    visibility = conf.broker_transport_options["visibility_timeout"]
    assert conf.task_soft_time_limit < conf.task_time_limit < visibility
    assert tasks.create_campaign.retry_backoff_max < visibility


@pytest.mark.parametrize(
    ("name", "queue"),
    [
        ("campaign_worker.poll_campaigns", "polling"),
        ("campaign_worker.reconcile_metrics", "polling"),
        ("campaign_worker.initialize_campaign", "initialization"),
        ("campaign_worker.migrate_campaign", "initialization"),
        ("campaign_worker.process_conversations", "processing"),
        ("campaign_worker.record_inbound_message", "inbound"),
        ("campaign_worker.record_event", "inbound"),
        ("campaign_worker.enroll_recipients", "initialization"),
        ("campaign_worker.mark_conversation_complete", "inbound"),
        ("campaign_worker.resolve_reply", "inbound"),
        ("campaign_worker.create_campaign", celeryconfig.task_default_queue),
    ],
)
def test_tasks_are_routed_by_name(name: str, queue: str) -> None:
    route = app.amqp.router.route({}, name)
    assert route["queue"].name == queue


def test_public_task_names_are_registered() -> None:
    assert {task.name for task in tasks.PUBLIC_TASKS} == {
        f"campaign_worker.{name}"
        for name in (
            "create_campaign",
            "poll_campaigns",
            "reconcile_metrics",
            "initialize_campaign",
            "process_conversations",
            "record_inbound_message",
            "mark_conversation_complete",
            "resolve_reply",
            "pause_campaign",
            "resume_campaign",
            "cancel_campaign",
            "get_campaign_metrics",
            "list_suppressions",
            "add_suppression",
            "lift_suppression",
            "migrate_campaign",
            "enroll_recipients",
            "record_event",
        )
    }
    assert all(task.name in app.tasks for task in tasks.PUBLIC_TASKS)


def test_time_limits_must_stay_below_visibility_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import importlib

    monkeypatch.setenv("CELERY_VISIBILITY_TIMEOUT", "100")
    monkeypatch.setenv("CELERY_TASK_TIME_LIMIT", "300")
    try:
        with pytest.raises(ConfigurationError, match="VISIBILITY_TIMEOUT"):
            importlib.reload(celeryconfig)
    finally:
        monkeypatch.undo()
        importlib.reload(celeryconfig)


@pytest.mark.parametrize(
    ("url", "confirmed"),
    [("amqp://guest:guest@localhost:5672//", True), ("redis://localhost:6379/0", False)],
)
def test_rabbitmq_publishes_wait_for_the_brokers_confirm(
    monkeypatch: pytest.MonkeyPatch, url: str, confirmed: bool
) -> None:
    """A retry is published before its message is acknowledged: on RabbitMQ, only once
    confirmed (tests/fault/test_broker_kill_persistence_fault.py shows a kill -9 otherwise)."""
    import importlib

    monkeypatch.setenv("CELERY_BROKER_URL", url)
    try:
        options = importlib.reload(celeryconfig).broker_transport_options
        assert options.get("confirm_publish", False) is confirmed
        assert options["visibility_timeout"] == celeryconfig.visibility_timeout
    finally:
        monkeypatch.undo()
        importlib.reload(celeryconfig)


# --------------------------------------------------------------------- create_campaign


def test_create_campaign_without_id_derives_it_from_the_task_id(worker: Container) -> None:
    payload = sample_campaign(3)
    del payload["_id"]
    first = run(tasks.create_campaign, "task-1", campaign=payload)
    redelivered = run(tasks.create_campaign, "task-1", campaign=payload)
    other = run(tasks.create_campaign, "task-2", campaign=payload)

    assert first.get() == redelivered.get() == tasks.campaign_id_for_task("task-1")
    assert other.get() == tasks.campaign_id_for_task("task-2") != first.get()
    assert worker.db["campaigns"].count_documents({}) == 2
    assert dead_letters(worker) == []


def test_create_campaign_keeps_a_given_id(worker: Container) -> None:
    assert run(tasks.create_campaign, "t", campaign=sample_campaign(2)).get() == "camp-1"
    assert (worker.db["campaigns"].find_one({"_id": "camp-1"}) or {})["status"] == "scheduled"


def test_invalid_campaign_is_dead_lettered_with_its_reason_and_not_retried(
    worker: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    payload = sample_campaign(2)
    del payload["name"]
    payload["recipients"][0]["timezone"] = "Mars/Olympus"
    spy = worker.manager.create_campaign
    calls = [0]

    def counting(data: Any, idempotency_key: str | None = None) -> str:
        calls[0] += 1
        return spy(data, idempotency_key)

    monkeypatch.setattr(worker.manager, "create_campaign", counting)

    result = run(tasks.create_campaign, "bad-1", campaign=payload)

    assert result.state == "FAILURE"
    assert isinstance(result.result, InvalidInputError)
    assert calls[0] == 1
    [letter] = dead_letters(worker)
    assert letter["_id"] == letter["task_id"] == "bad-1"
    assert letter["task_name"] == "campaign_worker.create_campaign"
    assert letter["reason"] == "invalid_input"
    assert letter["payload"] == {"args": [], "kwargs": {"campaign": payload}}
    assert "name: Field required" in letter["error"]
    assert "0.timezone: Value error, unknown timezone" in letter["error"]
    assert "Mars/Olympus" not in letter["error"]  # a recipient's value stays in the payload
    assert letter["created_at"] == START
    assert letter["replayed_at"] is None
    assert worker.db["campaigns"].count_documents({}) == 0


def test_redelivered_bad_message_is_stored_once(worker: Container) -> None:
    for _ in range(2):
        assert run(tasks.create_campaign, "bad-1", campaign={"name": "x"}).failed()
    assert len(dead_letters(worker)) == 1


# --------------------------------------------------------------------- argument validation


@pytest.mark.parametrize(
    ("task", "kwargs", "reason"),
    [
        (tasks.process_conversations, {}, "campaign_id: Missing required argument"),
        (tasks.process_conversations, {"campaign_id": 7}, "campaign_id: Input should be a valid"),
        (tasks.process_conversations, {"campaign_id": ""}, "campaign_id: String should have"),
        (
            tasks.process_conversations,
            {"campaign_id": "c", "limit": "5"},
            "limit: Input should be a valid integer",
        ),
        (
            tasks.process_conversations,
            {"campaign_id": "c", "limit": 0},
            "limit: Input should be greater than 0",
        ),
        (
            tasks.process_conversations,
            {"campaign_id": "c", "bogus": 1},
            "bogus: Unexpected keyword argument",
        ),
        (tasks.create_campaign, {"campaign": ["not", "an", "object"]}, "campaign: Input should"),
        (
            tasks.record_inbound_message,
            {
                "campaign_id": "c",
                "user_id": "u",
                "message_id": "m",
                "content": "hi",
                "timestamp": 1700000000,
            },
            "timestamp: Value error, must be an ISO 8601",
        ),
        (
            tasks.record_inbound_message,
            {
                "campaign_id": "c",
                "user_id": "u",
                "message_id": "m",
                "content": "hi",
                "timestamp": "yesterday",
            },
            "timestamp: Input should be a valid datetime",
        ),
        (
            tasks.record_inbound_message,
            {"campaign_id": "c", "user_id": "u", "content": "hi"},
            "message_id: Missing required argument",
        ),
        (tasks.get_campaign_metrics, {"campaign_id": "nope"}, "campaign not found: 'nope'"),
        (tasks.pause_campaign, {"campaign_id": "nope"}, "campaign not found: 'nope'"),
        (tasks.mark_conversation_complete, {"conversation_id": "x"}, "conversation not found"),
        (
            tasks.record_inbound_message,
            {"campaign_id": "nope", "user_id": "u", "message_id": "m", "content": "hi"},
            "campaign not found: 'nope'",
        ),
    ],
)
def test_bad_payloads_are_rejected_with_a_reason_and_dead_lettered(
    worker: Container, task: Any, kwargs: Doc, reason: str
) -> None:
    result = run(task, "bad-task", **kwargs)

    assert result.state == "FAILURE"
    assert isinstance(result.result, InvalidInputError)
    assert reason in str(result.result)
    [letter] = dead_letters(worker)
    assert letter["task_name"] == task.name
    assert reason in letter["error"]
    assert letter["payload"]["kwargs"] == kwargs


def test_positional_arguments_are_accepted_and_kept(worker: Container) -> None:
    result = tasks.get_campaign_metrics.apply(args=("nope",), task_id="pos")
    assert result.failed()
    assert dead_letters(worker)[0]["payload"] == {"args": ["nope"], "kwargs": {}}


# --------------------------------------------------------------------- retries


@pytest.mark.parametrize(
    "error",
    [
        TransientError("mongo down"),
        # MongoDB's own errors reach the task as the adapters translate them.
        translated(AutoReconnect("primary stepped down")),
        ConcurrencyConflictError("busy"),
        ConnectionError("broker reset"),
    ],
)
def test_transient_errors_are_retried_until_they_pass(
    worker: Container, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    running_campaign(worker)
    real = worker.manager.get_campaign_metrics("camp-1")
    calls = count_calls(monkeypatch, worker.manager, "get_campaign_metrics", error, error, real)

    result = run(tasks.get_campaign_metrics, "t", campaign_id="camp-1")

    assert result.successful()
    assert calls[0] == 3
    assert result.get()["total_recipients"] == 4
    assert dead_letters(worker) == []


def test_retries_are_capped_and_then_dead_lettered(
    worker: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = count_calls(monkeypatch, worker.manager, "pause_campaign", TransientError("down"))
    monkeypatch.setattr(tasks.pause_campaign, "max_retries", 2)

    result = run(tasks.pause_campaign, "t-exhausted", campaign_id="camp-1")

    assert result.failed() and isinstance(result.result, TransientError)
    assert calls[0] == 3  # the first attempt and two retries
    [letter] = dead_letters(worker)
    assert letter["reason"] == "retries_exhausted"
    assert letter["error_type"] == "TransientError"
    assert letter["payload"]["kwargs"] == {"campaign_id": "camp-1"}


def test_invalid_input_from_the_manager_is_never_retried(
    worker: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = count_calls(
        monkeypatch, worker.manager, "resume_campaign", InvalidStateTransitionError("cancelled")
    )
    result = run(tasks.resume_campaign, "t", campaign_id="camp-1")
    assert result.failed() and calls[0] == 1
    assert dead_letters(worker)[0]["error_type"] == "InvalidStateTransitionError"


def test_an_unexpected_error_is_not_retried_but_kept_for_replay(
    worker: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = count_calls(monkeypatch, worker.manager, "cancel_campaign", KeyError("bug"))
    result = run(tasks.cancel_campaign, "t-bug", campaign_id="camp-1")
    assert result.failed() and isinstance(result.result, KeyError)
    assert calls[0] == 1
    [letter] = dead_letters(worker)
    assert (letter["_id"], letter["reason"], letter["error_type"]) == ("t-bug", "error", "KeyError")


def test_a_failed_poll_is_not_dead_lettered(
    worker: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    count_calls(monkeypatch, worker.manager, "poll_campaigns", TransientError("down"))
    monkeypatch.setattr(tasks.poll_campaigns, "max_retries", 0)
    assert run(tasks.poll_campaigns, "poll").failed()
    assert dead_letters(worker) == []


def test_retry_backoff_has_jitter_and_a_cap() -> None:
    task = tasks.process_conversations
    assert task.retry_backoff and task.retry_jitter
    assert task.retry_backoff_max == celeryconfig.campaign_retry_backoff_max
    assert task.max_retries == celeryconfig.campaign_max_retries
    assert InvalidInputError in task.dont_autoretry_for


def test_a_dead_letter_that_cannot_be_stored_yet_is_retried_not_lost(
    worker: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_add = MongoDeadLetterRepository.add
    failures = [1]

    def flaky_add(self: MongoDeadLetterRepository, *args: Any, **kwargs: Any) -> bool:
        if failures[0]:
            failures[0] -= 1
            raise TransientError("mongo down while storing the dead letter")
        return real_add(self, *args, **kwargs)

    monkeypatch.setattr(MongoDeadLetterRepository, "add", flaky_add)

    result = run(tasks.get_campaign_metrics, "t", campaign_id="nope")

    assert result.failed() and isinstance(result.result, InvalidInputError)
    assert len(dead_letters(worker)) == 1


# --------------------------------------------------------------------- poller and batches


def test_poller_claims_a_campaign_once_and_enqueues_its_initialization(
    worker: Container, enqueued: Enqueued
) -> None:
    worker.manager.create_campaign(sample_campaign(3))

    first = run(tasks.poll_campaigns, "poll-1").get()
    second = run(tasks.poll_campaigns, "poll-2").get()

    assert first["initialize"] == ["camp-1"] and second["initialize"] == []
    assert enqueued.calls == [("campaign_worker.initialize_campaign", {"campaign_id": "camp-1"})]
    assert (worker.db["campaigns"].find_one({"_id": "camp-1"}) or {})["status"] == "initializing"


def test_initialization_starts_processing_and_the_poller_finds_due_work(
    worker: Container, enqueued: Enqueued, clock: ManualClock
) -> None:
    worker.manager.create_campaign(sample_campaign(3))
    run(tasks.poll_campaigns, "poll-1")

    assert run(tasks.initialize_campaign, "init", campaign_id="camp-1").get() == 3
    assert run(tasks.initialize_campaign, "init", campaign_id="camp-1").get() == 0  # replay
    process = ("campaign_worker.process_conversations", {"campaign_id": "camp-1"})
    assert enqueued.calls[1:] == [process]
    registered = enqueued.task_ids[1]
    assert registered is not None and registered.startswith("range-0of1-")

    # The dispatched task is registered (and has not run): the poller leaves it alone.
    polled = run(tasks.poll_campaigns, "poll-2").get()
    assert polled["process"] == [] and polled["in_progress"] == ["camp-1"]
    assert enqueued.calls[1:] == [process]
    assert json.dumps(polled)  # JSON-safe, oldest_due included
    assert datetime.fromisoformat(polled["oldest_due"]) == START

    # Lost (never ran within the lease time): the poller dispatches the work again.
    clock.advance(timedelta(seconds=worker.manager.lease_seconds + 1))
    polled = run(tasks.poll_campaigns, "poll-3").get()
    assert polled["process"] == ["camp-1"] and polled["partitions"] == {"camp-1": 1}
    assert enqueued.calls[1:] == [process, process]


def test_the_poller_fans_out_over_partition_ranges_by_due_count(
    worker: Container, enqueued: Enqueued, settings: Settings
) -> None:
    worker.manager.process_batch_size = 2
    worker.manager.process_fanout = 4
    running_campaign(worker, n=5)
    polled = run(tasks.poll_campaigns, "poll").get()
    # 5 due at 2 a batch: 3 ranges, each its own registered task.
    assert polled["partitions"] == {"camp-1": 3}
    calls = [kwargs for name, kwargs in enqueued.calls if name.endswith("process_conversations")]
    assert calls == [{"campaign_id": "camp-1", "partition": i, "partitions": 3} for i in range(3)]
    tokens = enqueued.task_ids[-3:]
    inflight = (worker.db["campaign_metrics"].find_one({"_id": "camp-1"}) or {})["inflight"]
    assert set(inflight) == set(tokens)

    # Each runs under its token (no registration of its own) and deregisters; one with
    # more due than a batch hands over to a successor, until every range is drained.
    done = 0
    claimed = 0
    while done < len(enqueued.calls):
        name, kwargs = enqueued.calls[done]
        token = enqueued.task_ids[done]
        done += 1
        if name.endswith("process_conversations"):
            claimed += run(tasks.process_conversations, token, **kwargs).get()["claimed"]
    assert claimed == 5
    metrics = worker.db["campaign_metrics"].find_one({"_id": "camp-1"}) or {}
    assert metrics["inflight"] == {}
    assert metrics["message_metrics"]["total_sent"] == 5


def test_a_batch_with_more_due_hands_over_to_its_two_halves(
    worker: Container, enqueued: Enqueued
) -> None:
    running_campaign(worker, n=7)

    first = run(tasks.process_conversations, "p1", campaign_id="camp-1", limit=2).get()
    assert first["claimed"] == 2 and first["sent"] == 2 and first["more"]
    # 5 left, at least two more batches: the range continues as its two halves.
    halves = [
        {"campaign_id": "camp-1", "limit": 2, "partition": i, "partitions": 2} for i in range(2)
    ]
    assert enqueued.calls == [("campaign_worker.process_conversations", h) for h in halves]
    assert all(t is not None and t.startswith("range-") for t in enqueued.task_ids)

    rest = run(tasks.process_conversations, "p2", campaign_id="camp-1", limit=10).get()
    assert rest["claimed"] == 5 and not rest["more"]
    assert len(enqueued.calls) == 2  # nothing more due: the chain ends


def test_a_batch_with_less_than_two_batches_left_continues_its_own_range(
    worker: Container, enqueued: Enqueued
) -> None:
    running_campaign(worker, n=5)
    run(tasks.process_conversations, "p1", campaign_id="camp-1", limit=2).get()
    assert enqueued.calls == [
        ("campaign_worker.process_conversations", {"campaign_id": "camp-1", "limit": 2})
    ]


@pytest.mark.parametrize(
    "arguments",
    [
        {"partition": 1},
        {"partitions": 2},
        {"partition": 2, "partitions": 2},
        {"partition": -1, "partitions": 2},
    ],
)
def test_malformed_partition_arguments_are_dead_lettered_not_retried(
    worker: Container, enqueued: Enqueued, arguments: Doc
) -> None:
    running_campaign(worker, n=1)
    result = run(tasks.process_conversations, "bad", campaign_id="camp-1", **arguments)
    assert result.failed()
    [letter] = dead_letters(worker)
    assert letter["reason"] == "invalid_input"
    assert "partition" in letter["error"]


def test_processing_twice_sends_each_message_once(worker: Container, enqueued: Enqueued) -> None:
    running_campaign(worker, n=4)

    first = run(tasks.process_conversations, "same-id", campaign_id="camp-1").get()
    again = run(tasks.process_conversations, "same-id", campaign_id="camp-1").get()

    assert first["sent"] == 4 and first["claimed"] == 4
    assert again["claimed"] == 0 and again["sent"] == 0
    assert worker.db["outbox"].count_documents({}) == 4
    metrics = run(tasks.get_campaign_metrics, "m", campaign_id="camp-1").get()
    assert metrics["message_metrics"]["total_sent"] == 4


def test_processing_a_paused_campaign_does_nothing(worker: Container, enqueued: Enqueued) -> None:
    running_campaign(worker, n=2)
    run(tasks.pause_campaign, "pause", campaign_id="camp-1").get()
    result = run(tasks.process_conversations, "p", campaign_id="camp-1").get()
    assert result["claimed"] == 0 and result["skipped_reason"] == "campaign is paused"


# --------------------------------------------------------------------- inbound and control


def test_inbound_message_is_recorded_once_and_advances_once(
    worker: Container, enqueued: Enqueued, clock: ManualClock
) -> None:
    running_campaign(worker, n=2)
    run(tasks.process_conversations, "p", campaign_id="camp-1").get()
    clock.advance(timedelta(minutes=5))
    reply = {
        "campaign_id": "camp-1",
        "user_id": "user-00000",
        "message_id": "in-1",
        "content": "YES please",
        "timestamp": "2026-01-05T09:04:00Z",
        "metadata": {"channel": "sms"},
    }

    first = run(tasks.record_inbound_message, "r1", **reply).get()
    second = run(tasks.record_inbound_message, "r2", **reply).get()

    conversation_id = conversation_id_for("camp-1", "user-00000")
    assert first == {
        "conversation_id": conversation_id,
        "duplicate": False,
        "actions": ["advance", "send", "wait"],
        "status": "active",
        "current_stage": "consideration",
    }
    assert second["duplicate"] is True and second["actions"] == []
    doc = worker.db["conversation_states"].find_one({"_id": conversation_id}) or {}
    inbound = [m for m in doc["message_history"] if m["direction"] == "inbound"]
    assert len(inbound) == 1
    assert inbound[0]["timestamp"] == START + timedelta(minutes=4)
    metrics = run(tasks.get_campaign_metrics, "m", campaign_id="camp-1").get()
    assert metrics["message_metrics"]["total_received"] == 1
    assert metrics["stage_metrics"]["consideration"]["entered"] == 1


def test_control_tasks_return_the_new_status(worker: Container) -> None:
    running_campaign(worker, n=1)
    assert run(tasks.pause_campaign, "a", campaign_id="camp-1").get() == {
        "campaign_id": "camp-1",
        "status": "paused",
    }
    assert run(tasks.resume_campaign, "b", campaign_id="camp-1").get()["status"] == "running"
    assert run(tasks.cancel_campaign, "c", campaign_id="camp-1").get()["status"] == "cancelled"
    assert run(tasks.cancel_campaign, "d", campaign_id="camp-1").get()["status"] == "cancelled"


def test_mark_conversation_complete_is_idempotent(worker: Container) -> None:
    running_campaign(worker, n=1)
    conversation_id = conversation_id_for("camp-1", "user-00000")
    for task_id in ("a", "b"):
        result = run(tasks.mark_conversation_complete, task_id, conversation_id=conversation_id)
        assert result.get() == {
            "conversation_id": conversation_id,
            "status": "completed",
            "current_stage": "awareness",
        }
    metrics = worker.manager.get_campaign_metrics("camp-1")
    assert metrics["completed_conversations"] == 1 and metrics["active_conversations"] == 0


def test_metrics_result_is_json_safe(worker: Container) -> None:
    running_campaign(worker, n=3)
    metrics = run(tasks.get_campaign_metrics, "m", campaign_id="camp-1").get()
    assert json.loads(json.dumps(metrics)) == metrics
    assert metrics["updated_at"] == "2026-01-05T09:00:00Z"  # ISO 8601, UTC
    assert metrics["total_recipients"] == 3 and metrics["active_conversations"] == 3
    assert list(metrics["stage_metrics"]) == ["awareness", "consideration", "decision"]


def test_initialization_hands_over_to_a_new_task_at_its_batch_budget(
    worker: Container, enqueued: Enqueued, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker.manager, "init_batch_size", 2)
    monkeypatch.setattr(
        worker, "settings", worker.settings.model_copy(update={"init_batches_per_task": 2})
    )
    worker.manager.create_campaign(sample_campaign(9))
    again = ("campaign_worker.initialize_campaign", {"campaign_id": "camp-1"})
    process = ("campaign_worker.process_conversations", {"campaign_id": "camp-1"})

    assert run(tasks.initialize_campaign, "i1", campaign_id="camp-1").get() == 4
    assert run(tasks.initialize_campaign, "i2", campaign_id="camp-1").get() == 4
    assert enqueued.calls == [again, again]
    assert run(tasks.initialize_campaign, "i3", campaign_id="camp-1").get() == 1
    assert enqueued.calls == [again, again, process]
    assert (worker.db["campaigns"].find_one({"_id": "camp-1"}) or {})["status"] == "running"


class SteppedMonotonic:
    """``time.monotonic`` that moves ``step`` seconds at every call: a step's time
    budget runs out after a known number of batches, however fast the machine is."""

    def __init__(self, step: float) -> None:
        self.step, self.now = step, 1000.0

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def test_initialization_hands_over_to_a_new_task_at_its_time_budget(
    worker: Container, enqueued: Enqueued, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker.manager, "init_batch_size", 2)
    monkeypatch.setattr(
        worker,
        "settings",
        worker.settings.model_copy(update={"init_batches_per_task": 1000, "init_step_seconds": 5}),
    )
    # 2 s per reading: the budget (5 s) is spent after the third batch of each step.
    monkeypatch.setattr(tasks, "time", SimpleNamespace(monotonic=SteppedMonotonic(2.0)))
    worker.manager.create_campaign(sample_campaign(9))
    again = ("campaign_worker.initialize_campaign", {"campaign_id": "camp-1"})
    process = ("campaign_worker.process_conversations", {"campaign_id": "camp-1"})

    assert run(tasks.initialize_campaign, "i1", campaign_id="camp-1").get() == 6
    assert enqueued.calls == [again]
    assert (worker.db["campaigns"].find_one({"_id": "camp-1"}) or {})["init_progress"][
        "position"
    ] is not None
    assert run(tasks.initialize_campaign, "i2", campaign_id="camp-1").get() == 3
    assert enqueued.calls == [again, process]
    assert worker.db["conversation_states"].count_documents({"campaign_id": "camp-1"}) == 9


# --------------------------------------------------------------------- migrations


def _edited_default(worker: Container) -> int:
    """Register an edit of the packaged template (a changed text) as a new version;
    returns its number."""
    versions = worker.manager.versions
    assert versions is not None
    content = versions.current("default").content
    content["campaign_types"]["sales"]["stages"][0]["messages"][1]["text"] = "Edited, {first_name}"
    return versions.repository.register(Template.model_validate(content), START).version


def _pinned(worker: Container, campaign_id: str) -> Any:
    return worker.manager.get_campaign(campaign_id)["template_version"]


def test_migrate_campaign_task_dry_runs_by_default_then_applies(worker: Container) -> None:
    campaign_id = running_campaign(worker)
    version = _edited_default(worker)
    assert version == 2

    dry = run(tasks.migrate_campaign, campaign_id=campaign_id, to_version=version).get()
    assert dry["dry_run"] is True and dry["moved"] == {"awareness -> awareness": 4}
    assert _pinned(worker, campaign_id) == 1

    applied = run(
        tasks.migrate_campaign,
        campaign_id=campaign_id,
        to_version=version,
        stage_map={"decision": "exit:failed"},
        dry_run=False,
    ).get()
    assert applied["finished"] is True and applied["migrated"] == 4
    assert _pinned(worker, campaign_id) == 2
    again = run(tasks.migrate_campaign, campaign_id=campaign_id, to_version=2, dry_run=False)
    assert again.get()["migrated"] == 0 and again.get()["already"] == 4


def test_migrate_campaign_task_refuses_bad_input_without_retry(worker: Container) -> None:
    campaign_id = running_campaign(worker)
    for kwargs in (
        {"to_version": 9},  # no such version
        {"to_version": "latest"},  # neither a number nor "current"
        {"to_version": 1, "stage_map": {"awareness": "nowhere"}},
    ):
        result = run(tasks.migrate_campaign, campaign_id=campaign_id, **kwargs)
        assert isinstance(result.result, InvalidInputError), kwargs
    assert len(dead_letters(worker)) == 3
