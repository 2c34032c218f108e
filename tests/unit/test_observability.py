"""Observability in-process: task context from Celery signals, task and campaign metrics
(read from prometheus_client's default registry: unit tests run without multiprocess
mode), the structlog/stdlib JSON pipeline with redaction, the reconcile and poller metrics
through the tasks, ``campaign-worker health`` failure bits, and (in a subprocess) the
multiprocess value store that lets /metrics aggregate prefork children."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import pytest
import structlog
from prometheus_client import REGISTRY

from campaign_worker.adapters import metrics
from campaign_worker.adapters.clock import ManualClock
from campaign_worker.adapters.logs import REDACTED, Redactor, configure_logging, redact_uri
from campaign_worker.bootstrap import Container
from campaign_worker.demo.embedded import free_port
from campaign_worker.entrypoints import cli, tasks
from campaign_worker.entrypoints import observability as obs
from campaign_worker.entrypoints.requests import parameter_names
from campaign_worker.settings import Settings
from tests.unit import test_tasks
from tests.unit.test_tasks import Enqueued, run, running_campaign

# The tasks' fixtures: a Container on mongomock installed for the tasks; recorded enqueues.
worker = test_tasks.worker
enqueued = test_tasks.enqueued

INBOUND = "campaign_worker.record_inbound_message"


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# --------------------------------------------------------------------- task context


def test_task_context_takes_ids_from_keyword_arguments() -> None:
    context = obs.task_context(
        "t-1",
        INBOUND,
        (),
        {
            "campaign_id": "camp-1",
            "user_id": "user-7",
            "message_id": "m-1",
            "content": "a body is not context",
            "metadata": {"campaign_id": "nested, ignored"},
        },
    )
    assert context == {
        "task_id": "t-1",
        "task_name": INBOUND,
        "campaign_id": "camp-1",
        "user_id": "user-7",
        "message_id": "m-1",
    }


def test_task_context_names_positional_ids_from_the_task_signature() -> None:
    """No task list: a positional argument counts when the task's signature names it an id."""
    pause = parameter_names(tasks.pause_campaign.run)
    assert obs.task_context("t", "campaign_worker.pause_campaign", ["camp-1"], None, pause) == {
        "task_id": "t",
        "task_name": "campaign_worker.pause_campaign",
        "campaign_id": "camp-1",
    }
    complete = parameter_names(tasks.mark_conversation_complete.run)
    assert obs.task_context("t", "x", ["conv-1"], {}, complete)["conversation_id"] == "conv-1"
    inbound = parameter_names(tasks.record_inbound_message.run)
    context = obs.task_context("t", INBOUND, ["c", "u", "m", "a reply"], {}, inbound)
    assert (context["campaign_id"], context["user_id"], context["message_id"]) == ("c", "u", "m")
    assert "a reply" not in context.values()
    # No names (an unknown task), or not a string: nothing guessed.
    assert "campaign_id" not in obs.task_context("t", "other.task", ["camp-1"], {})
    assert "campaign_id" not in obs.task_context("t", "x", [7.5], {}, pause)
    # A keyword wins over a positional argument.
    assert obs.task_context("t", "x", ["pos"], {"campaign_id": "kw"}, pause)["campaign_id"] == "kw"
    assert obs.task_context(None, None, None, None) == {"task_id": None, "task_name": None}


def test_prerun_binds_and_postrun_clears_context_and_observes_the_duration() -> None:
    task = SimpleNamespace(name="campaign_worker.test_signal_task")
    count = "campaign_worker_task_duration_seconds_count"
    before = sample(count, task=task.name)
    structlog.contextvars.bind_contextvars(leftover="from a previous task")

    obs.on_task_prerun(task_id="t-9", task=task, args=(), kwargs={"campaign_id": "camp-9"})
    assert structlog.contextvars.get_contextvars() == {
        "task_id": "t-9",
        "task_name": task.name,
        "campaign_id": "camp-9",
    }
    obs.on_task_postrun(task_id="t-9", task=task)

    assert structlog.contextvars.get_contextvars() == {}
    assert sample(count, task=task.name) == before + 1
    assert sample("campaign_worker_task_duration_seconds_sum", task=task.name) > 0
    # A postrun without its prerun (e.g. a revoked task) observes nothing.
    obs.on_task_postrun(task_id="never-started", task=task)
    assert sample(count, task=task.name) == before + 1


def test_failure_and_retry_signals_count_by_exception_class() -> None:
    task = SimpleNamespace(name="campaign_worker.test_failing_task")
    failures = ("campaign_worker_task_failures_total", {"task": task.name, "reason": "KeyError"})
    retries = ("campaign_worker_task_retries_total", {"task": task.name, "reason": "TimeoutError"})
    before = sample(failures[0], **failures[1]), sample(retries[0], **retries[1])
    obs.on_task_failure(sender=task, task_id="t", exception=KeyError("x"))
    obs.on_task_retry(sender=task, reason=TimeoutError("slow"))
    assert sample(failures[0], **failures[1]) == before[0] + 1
    assert sample(retries[0], **retries[1]) == before[1] + 1


def test_a_task_run_through_celery_signals_is_timed_and_its_dead_letter_counted(
    worker: Container,
) -> None:
    before_runs = sample("campaign_worker_task_duration_seconds_count", task=INBOUND)
    before_dead = sample("campaign_worker_dead_letters_total", task=INBOUND, reason="invalid_input")
    result = run(
        tasks.record_inbound_message, campaign_id="nope", user_id="u", message_id="m", content="x"
    )
    assert result.failed()
    assert sample("campaign_worker_task_duration_seconds_count", task=INBOUND) == before_runs + 1
    assert (
        sample("campaign_worker_dead_letters_total", task=INBOUND, reason="invalid_input")
        == before_dead + 1
    )
    assert structlog.contextvars.get_contextvars() == {}


# --------------------------------------------------------------------- logging pipeline


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    """configure_logging into a buffer; logging and structlog restored afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    stream = io.StringIO()
    yield stream
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(False)
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_json_lines_redact_bodies_at_info_and_secrets_always(log_stream: io.StringIO) -> None:
    configure_logging("INFO", "json", redact_bodies=True, stream=log_stream)
    log = structlog.get_logger("test.json")
    structlog.contextvars.bind_contextvars(task_id="t-1", campaign_id="camp-1")
    log.info(
        "inbound_stored",
        content="my secret reply",
        password="hunter2",
        uri="mongodb://app:s3cret@db:27017/x",
        count=3,
    )
    log.debug("not at INFO", content="dropped")

    [event] = lines(log_stream)
    assert event["event"] == "inbound_stored"
    assert event["level"] == "info" and event["logger"] == "test.json"
    assert event["task_id"] == "t-1" and event["campaign_id"] == "camp-1"
    assert event["content"] == REDACTED and event["password"] == REDACTED
    assert event["uri"] == f"mongodb://app:{REDACTED}@db:27017/x"
    assert event["count"] == 3 and "timestamp" in event
    assert "my secret reply" not in log_stream.getvalue()
    assert "s3cret" not in log_stream.getvalue() and "hunter2" not in log_stream.getvalue()


def test_bodies_show_at_debug_but_secrets_do_not(log_stream: io.StringIO) -> None:
    configure_logging("DEBUG", "json", redact_bodies=True, stream=log_stream)
    log = structlog.get_logger("test.debug")
    log.debug("inbound_debug", content="visible at debug", token="abc", body="too")
    log.info("inbound_info", content="hidden at info")

    debug, info = lines(log_stream)
    assert debug["content"] == "visible at debug" and debug["body"] == "too"
    assert debug["token"] == REDACTED
    assert info["content"] == REDACTED


def test_body_redaction_can_be_switched_off(log_stream: io.StringIO) -> None:
    configure_logging("INFO", "json", redact_bodies=False, stream=log_stream)
    structlog.get_logger("test.off").info("inbound", content="kept", api_key="k")
    [event] = lines(log_stream)
    assert event["content"] == "kept" and event["api_key"] == REDACTED


def test_stdlib_records_and_warnings_go_through_the_same_json_pipeline(
    log_stream: io.StringIO,
) -> None:
    configure_logging("INFO", "json", redact_bodies=True, stream=log_stream)
    structlog.contextvars.bind_contextvars(task_id="t-2", task_name=INBOUND)
    # What Celery's worker logs when a message arrives: the payload repr under "data".
    logging.getLogger("celery.worker.strategy").info(
        "Task %s[%s] received",
        INBOUND,
        "t-2",
        extra={"data": {"id": "t-2", "kwargs": "{'content': 'stdlib body'}", "args": "()"}},
    )
    logging.getLogger("pymongo.test").info("below the WARNING floor of chatty libraries")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("careful", UserWarning, stacklevel=1)

    received, warned = lines(log_stream)
    assert received["event"] == f"Task {INBOUND}[t-2] received"
    assert received["logger"] == "celery.worker.strategy" and received["level"] == "info"
    assert received["task_id"] == "t-2" and received["task_name"] == INBOUND
    assert received["data"] == {"id": "t-2", "kwargs": REDACTED, "args": REDACTED}
    assert "stdlib body" not in log_stream.getvalue()
    assert warned["logger"] == "py.warnings" and "careful" in warned["event"]


def test_redactor_leaves_the_callers_nested_dicts_alone() -> None:
    data = {"kwargs": "{'content': 'x'}", "nested": {"password": "p"}}
    out = Redactor(redact_bodies=True)(None, "info", {"event": "e", "data": data})
    assert out["data"] == {"kwargs": REDACTED, "nested": {"password": REDACTED}}
    assert data == {"kwargs": "{'content': 'x'}", "nested": {"password": "p"}}
    assert redact_uri("amqp://guest:guest@host//") == f"amqp://guest:{REDACTED}@host//"
    assert redact_uri("redis://host:6379/0") == "redis://host:6379/0"
    assert redact_uri("redis://:pw@host:6379/0") == f"redis://:{REDACTED}@host:6379/0"


# --------------------------------------------------------------------- metrics via tasks


def test_reconcile_task_corrects_injected_drift_and_counts_it(worker: Container) -> None:
    campaign_id = running_campaign(worker, n=4)
    worker.manager.process_due_conversations(campaign_id)
    exact = worker.manager.get_campaign_metrics(campaign_id)
    worker.db["campaign_metrics"].update_one(
        {"_id": campaign_id},
        {"$inc": {"active_conversations": -3, "message_metrics.total_sent": 2}},
    )
    drift_before = {
        field: sample("campaign_worker_metrics_drift_total", field=field)
        for field in ("active_conversations", "total_sent")
    }

    result = run(tasks.reconcile_metrics, campaign_id=campaign_id).get()

    assert result == {
        "checked": 1,
        "drift": {campaign_id: {"active_conversations": 3, "message_metrics.total_sent": -2}},
    }
    corrected = worker.manager.get_campaign_metrics(campaign_id)
    assert {**corrected, "updated_at": None} == {**exact, "updated_at": None}
    assert (
        sample("campaign_worker_metrics_drift_total", field="active_conversations")
        == drift_before["active_conversations"] + 3
    )
    assert (
        sample("campaign_worker_metrics_drift_total", field="total_sent")
        == drift_before["total_sent"] + 2
    )
    # Exact now: the next run finds nothing and counts nothing.
    assert run(tasks.reconcile_metrics).get() == {"checked": 1, "drift": {}}
    assert (
        sample("campaign_worker_metrics_drift_total", field="active_conversations")
        == drift_before["active_conversations"] + 3
    )


def test_poll_campaigns_sets_the_poller_lag(
    worker: Container, enqueued: Enqueued, clock: ManualClock
) -> None:
    worker.manager.metrics = metrics.PrometheusRecorder()
    campaign_id = running_campaign(worker, n=3)  # due now
    clock.advance(timedelta(seconds=90))

    result = run(tasks.poll_campaigns).get()

    assert result["process"] == [campaign_id]
    assert sample("campaign_worker_poller_lag_seconds") == 90.0
    worker.manager.process_due_conversations(campaign_id)  # nothing due any more
    run(tasks.poll_campaigns).get()
    assert sample("campaign_worker_poller_lag_seconds") == 0.0


def test_recorder_and_mongo_timer_feed_their_metrics() -> None:
    recorder = metrics.PrometheusRecorder()
    checks: list[tuple[Callable[[], None], str, dict[str, str], float]] = [
        (
            lambda: recorder.conversations_initialized("t-unit", 5),
            "campaign_worker_conversations_initialized_total",
            {"campaign_type": "t-unit"},
            5,
        ),
        (
            lambda: recorder.stage_transition("t-unit", "a", "b"),
            "campaign_worker_stage_transitions_total",
            {"campaign_type": "t-unit", "from_stage": "a", "to_stage": "b"},
            1,
        ),
        (
            lambda: recorder.conversation_finished("t-unit", "completed"),
            "campaign_worker_conversations_finished_total",
            {"campaign_type": "t-unit", "outcome": "completed"},
            1,
        ),
        (
            lambda: recorder.messages_sent("ch-unit", 4),
            "campaign_worker_messages_sent_total",
            {"channel": "ch-unit"},
            4,
        ),
        (
            lambda: recorder.messages_received("ch-unit", 2),
            "campaign_worker_messages_received_total",
            {"channel": "ch-unit"},
            2,
        ),
        (
            lambda: recorder.batch_size("op-unit", 40),
            "campaign_worker_batch_size_sum",
            {"operation": "op-unit"},
            40,
        ),
    ]
    for action, name, labels, amount in checks:
        before = sample(name, **labels)
        action()
        assert sample(name, **labels) == before + amount, name

    timer = metrics.MongoCommandTimer()
    event = SimpleNamespace(connection_id=("h", 1), request_id=7, command_name="unitPing")
    before = sample("campaign_worker_mongo_operation_duration_seconds_count", command="unitPing")
    timer.started(event)  # type: ignore[arg-type]
    timer.succeeded(event)  # type: ignore[arg-type]
    timer.failed(event)  # type: ignore[arg-type]  # no matching start: ignored
    assert (
        sample("campaign_worker_mongo_operation_duration_seconds_count", command="unitPing")
        == before + 1
    )


# --------------------------------------------------------------------- multiprocess mode

MULTIPROCESS_SCRIPT = """
import json, multiprocessing, os
import prometheus_client  # as the `celery` command does (Flower's plugin) before any signal
from campaign_worker.entrypoints import observability as obs

directory = obs.prepare_multiprocess_dir(reset=True)
from campaign_worker.adapters import metrics  # imported later, as in the worker

def child(amount):
    metrics.CONVERSATIONS_INITIALIZED.labels("mp").inc(amount)

context = multiprocessing.get_context("fork")
for amount in (2, 5):
    process = context.Process(target=child, args=(amount,))
    process.start()
    process.join()
registry = metrics.registry_for_exposition(directory)
value = registry.get_sample_value(
    "campaign_worker_conversations_initialized_total", {"campaign_type": "mp"}
)
files = sorted(os.listdir(directory))
obs.remove_created_multiprocess_dir()
print(json.dumps({"value": value, "files": files, "removed": not os.path.exists(directory)}))
"""


def test_prefork_children_are_aggregated_even_if_prometheus_client_came_first() -> None:
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    done = subprocess.run(
        [sys.executable, "-c", MULTIPROCESS_SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["value"] == 7.0  # 2 + 5, from two forked processes' files
    assert sum(name.startswith("counter_") for name in report["files"]) == 2
    assert report["removed"]


# --------------------------------------------------------------------- health


@pytest.fixture
def health_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """``campaign-worker health`` reads get_settings(); point it at what the test says."""
    chosen: dict[str, str] = {}

    def settings() -> Settings:
        return Settings(**chosen)  # type: ignore[arg-type]

    monkeypatch.setattr("campaign_worker.settings.get_settings", settings)
    yield chosen


def closed_port() -> int:
    return free_port()  # bound, then released: nothing listens there


def health(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    code = cli.main(["health", "--timeout", "0.5", *argv])
    return code, json.loads(capsys.readouterr().out)


def test_health_unreachable_mongodb_is_bit_2(
    health_settings: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    health_settings["celery_broker_url"] = "memory://"
    health_settings["mongodb_uri"] = f"mongodb://app:pw@127.0.0.1:{closed_port()}"
    code, report = health(capsys, "--skip-worker")
    assert code == 2
    assert report["healthy"] is False and report["exit_code"] == 2
    assert report["checks"]["broker"]["ok"] is True
    mongo = report["checks"]["mongodb"]
    assert mongo["ok"] is False and mongo["error"]
    assert mongo["uri"].startswith(f"mongodb://app:{REDACTED}@127.0.0.1:")
    assert "worker" not in report["checks"]


def test_health_unreachable_broker_is_bit_1_and_no_worker_can_answer(
    health_settings: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    health_settings["celery_broker_url"] = f"redis://:pw@127.0.0.1:{closed_port()}/0"
    health_settings["mongodb_uri"] = f"mongodb://127.0.0.1:{closed_port()}"
    code, report = health(capsys, "--skip-worker")
    assert code == 1 | 2
    broker = report["checks"]["broker"]
    assert broker["ok"] is False and broker["error"] and "pw" not in broker["url"]

    code, report = health(capsys)  # with the worker check: it cannot pass either
    assert code == 1 | 2 | 4
    assert report["checks"]["worker"] == {"ok": False, "error": "broker unreachable"}


# --------------------------------------------------------------------- queue depth


def test_queue_depth_is_read_from_the_broker_per_queue() -> None:
    from celery import Celery
    from kombu import Exchange, Queue

    from campaign_worker.adapters.metrics import QueueDepthCollector

    app = Celery("depth", broker="memory://")
    app.conf.task_queues = [Queue(n, Exchange(n), routing_key=n) for n in ("inbound", "polling")]
    for _ in range(3):
        app.send_task("campaign_worker.record_inbound_message", queue="inbound")
    app.send_task("campaign_worker.poll_campaigns", queue="polling")
    [family] = list(QueueDepthCollector(app).collect())
    assert family.name == "campaign_worker_queue_depth"
    assert {s.labels["queue"]: s.value for s in family.samples} == {"inbound": 3, "polling": 1}


def test_queue_depth_yields_no_samples_when_the_broker_is_down() -> None:
    from celery import Celery

    from campaign_worker.adapters.metrics import QueueDepthCollector

    app = Celery("depth", broker="redis://127.0.0.1:1/0")  # nothing listens on port 1
    [family] = list(QueueDepthCollector(app, timeout=0.5).collect())
    assert family.samples == []


# --------------------------------------------------------------------- task results


def test_task_results_become_structured_fields() -> None:
    from campaign_worker.adapters.logs import task_result_fields

    record = {
        "event": "Task x[1] succeeded in 0.01s: {'campaign_id': 'c', 'sent': 3}",
        "data": {
            "id": "1",
            "name": "x",
            "runtime": 0.0123,
            "return_value": "{'campaign_id': 'c', 'sent': 3}",
        },
    }
    out = task_result_fields(None, "info", dict(record))
    assert out["result"] == {"campaign_id": "c", "sent": 3}
    assert out["event"] == "Task x[1] succeeded in 0.012s"
    assert "return_value" not in out["data"]
    # A repr that does not read back (an object) stays text; other records are untouched.
    odd = task_result_fields(None, "info", {"event": "e", "data": {"return_value": "<obj>"}})
    assert odd["result"] == "<obj>"
    assert task_result_fields(None, "info", {"event": "plain"}) == {"event": "plain"}


def test_warnings_reach_the_pipeline_after_showwarning_was_replaced_since_the_last_setup(
    log_stream: io.StringIO,
) -> None:
    # An earlier configuration, then something (pytest, a library) replaces showwarning: a
    # plain captureWarnings(True) would think it still captures and warnings were lost.
    configure_logging("INFO", "json", redact_bodies=True, stream=io.StringIO())
    with warnings.catch_warnings(record=True):
        configure_logging("INFO", "json", redact_bodies=True, stream=log_stream)
        warnings.simplefilter("always")
        warnings.warn("careful again", UserWarning, stacklevel=1)
    assert any("careful again" in json.dumps(line) for line in lines(log_stream))
