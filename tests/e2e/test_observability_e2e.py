"""Observability on real processes: a prefork worker (two children) runs a campaign, a real
Prometheus server scrapes the worker's /metrics and answers queries with the exact totals
the MongoDB documents imply (summed over both children: multiprocess mode), and the
worker's log is JSON lines with task context and without message bodies.

Prometheus is the Debian ``prometheus`` binary; the test is skipped without it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from campaign_worker.demo.embedded import free_port, wait_for_port
from campaign_worker.entrypoints.celery_app import beat_schedule
from campaign_worker.settings import Settings
from tests.e2e import scenario
from tests.e2e.conftest import REPO, Broker, Processes, wait_for_workers, wait_until
from tests.e2e.scenario import CREATE, INBOUND, Driver, assert_final_state, campaign_payload

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

PROMETHEUS = Path("/usr/bin/prometheus")
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
JOB = "campaign-worker"
CAMPAIGN = "obs-camp"
N = 8
# In every reply but STOP (an opt-out keyword must be the whole message): it must never
# reach a log line at INFO.
MARKER = "zebra-quartz-7731"


ORIGINAL_REPLY_FOR = scenario.reply_for


def marked_reply(outbound: dict[str, Any]) -> str | None:
    text = ORIGINAL_REPLY_FOR(outbound)
    return text if text in (None, "STOP") else f"{text} {MARKER}"


# ----------------------------------------------------------------------------- helpers


def http_get(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return str(response.read().decode())


class PrometheusAPI:
    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.answers: list[str] = []  # "query = value", for the report

    def ready(self) -> bool:
        """Prometheus answers 503 between opening its port and loading its TSDB."""
        try:
            http_get(f"{self.base}/-/ready")
        except (urllib.error.URLError, ConnectionError):
            return False
        return True

    def get(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        body = json.loads(http_get(f"{self.base}{path}{query}"))
        assert body["status"] == "success", body
        return body["data"]

    def vector(self, expr: str) -> list[dict[str, Any]]:
        data = self.get("/api/v1/query", query=expr)
        assert data["resultType"] == "vector", data
        return list(data["result"])

    def value(self, expr: str) -> float:
        """The single sample of an instant query (0 when the series does not exist)."""
        result = self.vector(expr)
        assert len(result) <= 1, (expr, result)
        value = float(result[0]["value"][1]) if result else 0.0
        self.answers.append(f"{expr} = {value:g}{'' if result else ' (no series)'}")
        return value


def prometheus_config(target_port: int) -> str:
    return textwrap.dedent(
        f"""\
        global:
          scrape_interval: 1s
          scrape_timeout: 1s
          evaluation_interval: 1s
        rule_files:
          - {ALERTS}
        scrape_configs:
          - job_name: {JOB}
            metrics_path: /metrics
            static_configs:
              - targets: ["127.0.0.1:{target_port}"]
        """
    )


# Not log records: Celery's shutdown signal handler prints this straight to stdout.
CELERY_PRINTS = re.compile(r"worker: (Warm|Cold) shutdown \(MainProcess\)")


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every non-empty line, parsed; a line that is not a JSON object fails the test."""
    events = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or CELERY_PRINTS.fullmatch(line):
            continue
        try:
            event = json.loads(line)
        except json.JSONDecodeError as exc:
            raise AssertionError(f"log line {number} is not JSON: {line!r}") from exc
        assert isinstance(event, dict), line
        events.append(event)
    return events


def runs_by_task(directory: Path, pid: int) -> Counter[str]:
    """Task runs one process recorded: the task-duration counts in its own files only."""
    runs: Counter[str] = Counter()
    with tempfile.TemporaryDirectory() as only:
        for path in directory.glob(f"*_{pid}.db"):
            shutil.copy(path, only)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=only)  # type: ignore[no-untyped-call]
        for metric in registry.collect():
            for sample in metric.samples:
                if sample.name == "campaign_worker_task_duration_seconds_count":
                    runs[sample.labels["task"]] += int(sample.value)
    return runs


def report(title: str, lines: list[str]) -> None:
    print(f"\n----- {title} -----")
    for line in lines:
        print(line)


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture
def prometheus_binary() -> Path:
    if not PROMETHEUS.exists():
        pytest.skip(f"{PROMETHEUS} not found: install the Debian package `prometheus`")
    return PROMETHEUS


# ----------------------------------------------------------------------------- the test


@pytest.mark.parametrize("broker", ["redis"], indirect=True)
def test_prometheus_scrapes_exact_totals_and_logs_are_redacted_json(
    broker: Broker,
    processes: Processes,
    client: Celery,
    mongo: Any,
    tmp_path: Path,
    prometheus_binary: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(scenario, "reply_for", marked_reply)
    metrics_port = free_port()
    processes.env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # the worker makes its own
    processes.env.update(
        {
            "METRICS_PORT": str(metrics_port),
            "METRICS_HOST": "127.0.0.1",
            "LOG_FORMAT": "json",
            "LOG_LEVEL": "INFO",
            "CELERY_QUIET": "1",  # no startup banner: the whole log is JSON lines
            # One reply per batch: the replies spread over both children, as other tasks
            # do (batching itself: tests/e2e/test_reply_batches_e2e.py).
            "INBOUND_BATCH_SIZE": "1",
        }
    )
    node = processes.worker("obs-worker", concurrency=2)
    processes.beat()
    wait_for_workers(client, [node])
    wait_for_port(metrics_port)

    # ------------------------------------------------------------- a campaign, to the end
    assert client.send_task(CREATE, kwargs={"campaign": campaign_payload(N, CAMPAIGN)}).get(
        timeout=30
    )
    driver = Driver(client, mongo, CAMPAIGN)
    driver.run_until_completed(timeout=60)
    assert_final_state(mongo, CAMPAIGN, N)
    conversations = list(mongo["conversation_states"].find({"campaign_id": CAMPAIGN}))
    transitions = sum(len(c["stages"]) - 1 for c in conversations)
    outcomes = Counter(c["status"] for c in conversations)
    sent = mongo["outbox"].count_documents({"campaign_id": CAMPAIGN})
    received = sum(c["metrics"]["messages_received"] for c in conversations)
    assert driver.replies == received > 0
    bodies = [m["content"] for c in conversations for m in c["message_history"]]
    assert sum(MARKER in body for body in bodies) == received - outcomes["opted_out"]

    # ------------------------------------------------------------- health, all reachable
    health = subprocess.run(
        [sys.executable, "-m", "campaign_worker.entrypoints.cli", "health", "--worker", node],
        env=processes.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert health.returncode == 0, health.stdout + health.stderr
    assert json.loads(health.stdout)["checks"]["worker"]["workers"] == [node]

    # ------------------------------------------------------------- a real Prometheus
    prom_port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(prometheus_config(metrics_port))
    processes.start(
        "prometheus",
        [
            str(prometheus_binary),
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
        ],
    )
    prom = PrometheusAPI(prom_port)
    wait_for_port(prom_port)
    wait_until(prom.ready, 60, "Prometheus to be ready", interval=0.5)
    up = f'up{{job="{JOB}"}}'
    wait_until(lambda: prom.vector(up), 30, "a first scrape of the worker", interval=0.5)
    assert prom.value(up) == 1.0

    inbound_task = f'task="{INBOUND}"'
    assert prom.value("sum(campaign_worker_conversations_initialized_total)") == N
    assert (
        prom.value('sum(campaign_worker_stage_transitions_total{to_stage!~"exit:.*"})')
        == transitions
        > 0
    )
    assert (
        prom.value(
            'campaign_worker_stage_transitions_total{campaign_type="quick",'
            'from_stage="hello",to_stage="offer"}'
        )
        == transitions
    )
    for outcome, count in outcomes.items():
        assert (
            prom.value(f'sum(campaign_worker_conversations_finished_total{{outcome="{outcome}"}})')
            == count
        ), outcome
    assert prom.value("sum(campaign_worker_messages_sent_total)") == sent
    assert prom.value("sum(campaign_worker_messages_received_total)") == received
    # One run per reply, plus one per retry of it (a retry is a run too).
    retries = prom.value(f"sum(campaign_worker_task_retries_total{{{inbound_task}}})")
    inbound_runs = prom.value(f"campaign_worker_task_duration_seconds_count{{{inbound_task}}}")
    assert inbound_runs == driver.replies + retries
    assert prom.value("sum(campaign_worker_task_failures_total)") == 0
    assert prom.value("sum(campaign_worker_dead_letters_total)") == 0
    assert prom.value("sum(campaign_worker_mongo_operation_duration_seconds_count)") > 0
    assert prom.value('sum(campaign_worker_batch_size_count{operation="initialize"})') >= 1
    assert prom.value("campaign_worker_poller_lag_seconds") == 0  # nothing due any more
    # Queue depth is read from the broker at each scrape: one series per worker queue, and
    # every queue drained once the campaign is over.
    depths = {
        row["metric"]["queue"]: float(row["value"][1])
        for row in prom.vector("campaign_worker_queue_depth")
    }
    assert set(depths) == {
        "celery",
        "polling",
        "initialization",
        "processing",
        "inbound",
        "delivery",
    }
    assert depths["inbound"] == depths["initialization"] == 0

    # The alert rules load and evaluate on the live series; none stays pending or firing
    # (CampaignWorkerNoneUp is pending until an evaluation after the first scrape).
    def rules_now() -> list[dict[str, Any]]:
        groups = prom.get("/api/v1/rules")["groups"]
        return [rule for group in groups for rule in group["rules"]]

    def quiet() -> list[dict[str, Any]]:
        rules = rules_now()
        return rules if rules and all(r["state"] == "inactive" for r in rules) else []

    try:
        rules = wait_until(quiet, 20, "every alert rule to be inactive", interval=0.5)
    except AssertionError as exc:
        raise AssertionError([(r["name"], r["state"], r["health"]) for r in rules_now()]) from exc
    assert {r["name"] for r in rules} >= {"CampaignWorkerDown", "CampaignWorkerPollerLagHigh"}
    assert all(r["health"] == "ok" for r in rules), rules

    # ------------------------------------------------------------- both children counted
    events = json_lines(processes.log("obs-worker"))
    started = next(e for e in events if e["event"] == "metrics_server_started")
    directory = Path(started["multiprocess_dir"])
    children = {e["pid"] for e in events if e["event"] == "worker_process_ready"}
    assert len(children) == 2, children
    # Runs of campaign tasks (not the beat-driven ones, which go on) per child, from each
    # child's own files: both ran some, and Prometheus saw exactly their sum.
    # Every task beat sends (the poller, the reconcile, the delivery dispatcher) goes on
    # after the campaign: only the campaign's own runs are fixed once it is over.
    beat_driven = tuple(sorted({e["task"] for e in beat_schedule(Settings()).values()}))
    runs_by_child = {pid: runs_by_task(directory, pid) for pid in children}
    campaign_runs = {
        pid: sum(n for task, n in runs.items() if task not in beat_driven)
        for pid, runs in runs_by_child.items()
    }
    assert all(n > 0 for n in campaign_runs.values()), runs_by_child
    assert sum(campaign_runs.values()) == prom.value(
        f'sum(campaign_worker_task_duration_seconds_count{{task!~"{"|".join(beat_driven)}"}})'
    )
    assert sum(runs[INBOUND] for runs in runs_by_child.values()) == inbound_runs
    report(
        "campaign task runs per prefork child (each child's own files)",
        [f"pid {pid}: {n}" for pid, n in sorted(campaign_runs.items())],
    )

    report("Prometheus /api/v1/query answers", prom.answers)
    scraped = http_get(f"http://127.0.0.1:{metrics_port}/metrics").splitlines()
    report(
        "scraped /metrics (excerpt)",
        [
            line
            for line in scraped
            if line.startswith(
                (
                    "# HELP campaign_worker_stage",
                    "# TYPE campaign_worker_stage",
                    "campaign_worker_conversations_",
                    "campaign_worker_stage_transitions_total",
                    "campaign_worker_messages_",
                    "campaign_worker_poller_lag_seconds",
                    f"campaign_worker_task_duration_seconds_count{{{inbound_task}}}",
                    f"campaign_worker_task_duration_seconds_sum{{{inbound_task}}}",
                )
            )
        ],
    )

    # ------------------------------------------------------------- the log: JSON, redacted
    assert processes.stop(processes.started[0][1]) == 0  # the worker, warm shutdown
    text = processes.log("obs-worker")
    assert MARKER not in text, "an inbound message body reached the log"
    events = json_lines(text)
    assert all({"event", "level", "logger", "timestamp"} <= set(e) for e in events)
    assert any(
        e["logger"] == "celery.apps.worker" and e["event"].endswith("ready.") for e in events
    )
    assert any(e["logger"] == "celery.worker.strategy" for e in events)  # "received"
    assert any(e["event"] == "worker_stopped" for e in events)
    assert not directory.exists()  # the worker removed the directory it made

    # Celery's own records from inside a task carry the context the signals bound.
    inbound_done = [
        e for e in events if e["logger"] == "celery.app.trace" and e.get("task_name") == INBOUND
    ]
    assert len(inbound_done) == inbound_runs
    for event in inbound_done:
        assert event["campaign_id"] == CAMPAIGN, event
        assert event["task_id"] in event["event"], event
        assert event["user_id"].startswith("user-"), event
    # Our own events inside tasks too; and no event has a task id without a task name.
    batches = [e for e in events if e["event"] == "batch_processed"]
    assert batches
    for event in batches:
        assert event["task_name"] == "campaign_worker.process_conversations", event
        assert event["campaign_id"] == CAMPAIGN and event["task_id"], event
    assert all("task_name" in e for e in events if "task_id" in e)
    # Task payloads (which hold the bodies) are redacted in Celery's records at INFO.
    received_records = [e for e in events if e["logger"] == "celery.worker.strategy"]
    assert all(e["data"]["kwargs"] == "[redacted]" for e in received_records)

    report(
        "worker log, JSON lines (excerpt)",
        [
            json.dumps(e)
            for e in (
                started,
                next(e for e in events if e["event"] == "worker_process_ready"),
                next(e for e in events if e["event"].endswith("ready.")),
                next(e for e in received_records if e["data"]["name"] == INBOUND),
                inbound_done[0],
                batches[0],
                next(e for e in events if e["event"] == "worker_stopped"),
            )
        ],
    )
