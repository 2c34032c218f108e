"""Support for the process-fault scenarios (branch faults-proc): real ``celery worker`` and
``beat`` processes under a supervisor-like restart loop, a private Redis without
persistence (a kill loses every queue), optionally a private secantusdb the scenario kills,
a driver playing the audience, and the end of every scenario: metrics drift measured before
any reconcile, the documented self-correction awaited, the invariant checker passing, and
the figures printed and appended to ``$FAULT_REPORT``.

The campaign is ``e2e``/``quick`` (tests/e2e/templates/e2e.yaml, seconds-long waits);
messages go out on the ``outbox`` channel, which the driver reads like a delivering service.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path
from typing import Any

import pymongo
from celery import Celery
from pymongo.errors import PyMongoError

from campaign_worker.adapters.clock import SystemClock
from campaign_worker.bootstrap import build_manager
from campaign_worker.service.campaign_manager import CampaignManager
from campaign_worker.settings import Settings
from tests.e2e.conftest import APP, Broker, Processes, e2e_env, wait_until
from tests.e2e.private_rabbitmq import PrivateRabbitMQ
from tests.e2e.private_redis import PrivateRedis
from tests.e2e.scenario import CREATE, INBOUND, Driver, campaign_payload

# Seconds, chosen so that a dead writer, a lost task or a lost broker message is noticed
# within a scenario: the poller re-dispatches a range whose task died after LEASE_SECONDS,
# a prefetched message of a killed worker comes back after the visibility timeout, and a
# dead writer's metrics registration expires after the in-flight timeout.
INFLIGHT_TIMEOUT = 18
FAULT_ENV = {
    "POLL_INTERVAL_SECONDS": "1",
    "PROCESS_BATCH_SIZE": "10",
    "PROCESS_FANOUT": "4",
    "LEASE_SECONDS": "6",
    "CELERY_TASK_SOFT_TIME_LIMIT": "12",
    "CELERY_TASK_TIME_LIMIT": "15",
    "CELERY_VISIBILITY_TIMEOUT": "20",
    "CELERY_RETRY_BACKOFF_MAX": "2",
    "CELERY_MAX_RETRIES": "30",
    "METRICS_INFLIGHT_TIMEOUT_SECONDS": str(INFLIGHT_TIMEOUT),
    "MONGODB_SERVER_SELECTION_TIMEOUT_MS": "2000",
    "METRICS_PORT": "0",
    "LOG_FORMAT": "json",
}
PROCESS = "campaign_worker.process_conversations"
INITIALIZE = "campaign_worker.initialize_campaign"
RESEND_AFTER = 6.0  # a reply not recorded after this is sent again (same message id)
MAX_SENDS = 6


def record_figures(figures: dict[str, Any]) -> None:
    """Print the scenario's figures and append them as one JSON line to $FAULT_REPORT."""
    line = json.dumps(figures, sort_keys=True)
    print(f"\nFAULT FIGURES {line}")
    target = os.environ.get("FAULT_REPORT")
    if target:
        with open(target, "a") as handle:
            handle.write(line + "\n")


@dataclass
class Managed:
    """One supervised process: how to start it, and its current incarnation."""

    label: str
    argv: list[str]
    proc: subprocess.Popen[bytes]
    generation: int = 0

    @property
    def logs(self) -> list[str]:
        return [self.label] + [f"{self.label}.{n}" for n in range(1, self.generation + 1)]


@dataclass
class Supervisor:
    """What systemd's ``Restart=always`` (``KillMode=control-group``) does for the
    scenario's processes: one that exited has its group killed and is started again."""

    procs: Processes
    managed: dict[str, Managed] = field(default_factory=dict)
    restarts: Counter[str] = field(default_factory=Counter)

    def _start(self, label: str, argv: list[str]) -> Managed:
        managed = Managed(label, argv, self.procs.start(label, argv))
        self.managed[label] = managed
        return managed

    def worker(self, name: str, concurrency: int = 2) -> str:
        self._start(name, Processes.worker_argv(name, concurrency=concurrency))
        return f"{name}@{socket.gethostname()}"

    def beat(self, name: str) -> Managed:
        workdir = self.procs.workdir
        argv = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            APP,
            "beat",
            "-s",
            str(workdir / f"{name}-schedule"),
            "--pidfile",
            str(workdir / f"{name}.pid"),
            "-l",
            "INFO",
        ]
        return self._start(name, argv)

    def tick(self) -> None:
        for managed in self.managed.values():
            if managed.proc.poll() is None:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.killpg(managed.proc.pid, signal.SIGKILL)  # orphaned pool children
            managed.generation += 1
            self.restarts[managed.label] += 1
            managed.proc = self.procs.start(f"{managed.label}.{managed.generation}", managed.argv)

    def pid(self, label: str) -> int:
        return self.managed[label].proc.pid

    def log(self, label: str) -> str:
        return "".join(self.procs.log(name) for name in self.managed[label].logs)


def busy_pids(client: Celery, node: str, names: tuple[str, ...]) -> list[int]:
    """Pool processes of ``node`` running one of the tasks ``names`` right now."""
    try:
        active = client.control.inspect(destination=[node], timeout=1.0).active() or {}
    except Exception:  # broker unreachable: nothing known
        return []
    return [int(t["worker_pid"]) for t in active.get(node, []) if t.get("name") in names]


@dataclass
class Audience(Driver):
    """The e2e ``Driver`` for a world where the broker and the database fail: it sends a
    reply again (same message id) until it is recorded, as a producer that wants
    at-least-once does when its broker may lose messages."""

    pending: dict[str, tuple[dict[str, Any], float, int]] = field(default_factory=dict)
    resent: int = 0
    last_check: float = 0.0
    delivered_only: bool = False  # answer only what the channel delivered (webhook)

    def outbox(self) -> list[dict[str, Any]]:
        query = {"campaign_id": self.campaign_id}
        if self.delivered_only:
            query["status"] = "sent"
        try:
            return list(self.db["outbox"].find(query, {"user_id": 1, "stage": 1, "step": 1}))
        except PyMongoError:
            return []

    def send(self, user: str, message_id: str, content: str) -> None:
        self.pending[message_id] = (self.reply(user, message_id, content), 0.0, 0)
        self.replies += 1

    def step(self) -> None:
        super().step()
        with contextlib.suppress(PyMongoError):
            self._forget_recorded()
        self._send_due()

    def _forget_recorded(self) -> None:
        now = time.monotonic()
        waiting = [k for k, (_, sent, n) in self.pending.items() if n and now - sent > 2.0]
        if not waiting or now - self.last_check < 2.0:
            return
        self.last_check = now
        users = list({self.pending[k][0]["user_id"] for k in waiting})
        recorded = {
            entry.get("message_id")
            for doc in self.db["conversation_states"].find(
                {"campaign_id": self.campaign_id, "user_id": {"$in": users}},
                {"message_history": 1},
            )
            for entry in doc.get("message_history", [])
        }
        for key in waiting:
            if key in recorded:
                del self.pending[key]

    def _send_due(self) -> None:
        now = time.monotonic()
        for key, (kwargs, sent, count) in list(self.pending.items()):
            if count >= MAX_SENDS or (count and now - sent < RESEND_AFTER):
                continue
            try:
                self.client.send_task(INBOUND, kwargs=kwargs, queue="inbound", retry=False)
            except Exception:  # broker down: the next step tries again
                return
            self.pending[key] = (kwargs, now, count + 1)
            if count:
                self.resent += 1

    def status(self) -> str | None:
        try:
            return super().status()
        except PyMongoError:
            return None


Fault = Callable[["Scenario"], bool]  # called every loop; True when it fired (once)


@dataclass
class Scenario:
    """One fault scenario's world and its run."""

    name: str
    workdir: Path
    redis: PrivateRedis | PrivateRabbitMQ  # the broker (a private RabbitMQ node: backend rpc)
    mongo_uri: str
    db_name: str
    extra_env: dict[str, str] = field(default_factory=dict)
    faults: Counter[str] = field(default_factory=Counter)
    notes: dict[str, Any] = field(default_factory=dict)
    fault_times: list[str] = field(default_factory=list)
    client_transport_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        rabbit = isinstance(self.redis, PrivateRabbitMQ)
        backend = "rpc://" if rabbit else self.redis.url
        broker = Broker("rabbitmq" if rabbit else "redis", self.redis.url, backend)
        self.env = e2e_env(broker, self.mongo_uri, self.db_name, **{**FAULT_ENV, **self.extra_env})
        self.procs = Processes(self.workdir, self.env)
        self.supervisor = Supervisor(self.procs)
        self.client = self.new_client()
        self.mongo: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
            self.mongo_uri, tz_aware=True, tzinfo=UTC, serverSelectionTimeoutMS=2000
        )
        self.db = self.mongo[self.db_name]
        self.started = time.monotonic()
        self.audience: Audience | None = None

    def new_client(self) -> Celery:
        """The other service's bare Celery app (what publishes replies)."""
        client = Celery("other-service", broker=self.redis.url)
        client.conf.broker_connection_retry = False
        client.conf.broker_connection_max_retries = 1
        client.conf.broker_transport_options = dict(self.client_transport_options)
        return client

    def close(self) -> None:
        self.procs.stop_all()
        self.client.close()
        self.mongo.close()

    def fault(self, kind: str) -> None:
        self.faults[kind] += 1
        self.fault_times.append(f"{time.strftime('%H:%M:%S')}.{int(time.time() * 1000) % 1000:03d}")
        print(f"[{self.name}] t={time.monotonic() - self.started:5.1f}s fault {kind}")

    def create(self, n: int, campaign_id: str, payload: dict[str, Any] | None = None) -> None:
        """create_campaign by task name (no result read: the document appearing is enough)."""
        campaign = payload or campaign_payload(n, campaign_id)
        self.client.send_task(CREATE, kwargs={"campaign": campaign})
        wait_until(
            lambda: self.db["campaigns"].find_one({"_id": campaign_id}) is not None,
            30,
            f"campaign {campaign_id} to be created",
        )
        self.started = time.monotonic()

    def sent(self, campaign_id: str) -> int:
        try:
            return int(self.db["outbox"].count_documents({"campaign_id": campaign_id}))
        except PyMongoError:
            return 0

    def run(
        self, audience: Audience, faults: list[Fault], timeout: float, interval: float = 0.25
    ) -> float:
        self.audience = audience
        """Until the campaign is completed: feed replies, inject ``faults``, restart what
        died. Returns the run time in seconds (from creation)."""
        armed = list(faults)
        deadline = time.monotonic() + timeout
        while True:
            audience.step()
            self.supervisor.tick()
            armed = [f for f in armed if not f(self)]
            if not armed and audience.status() == "completed":
                return time.monotonic() - self.started
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{self.name}: campaign not completed after {timeout}s (status "
                    f"{audience.status()!r}, {len(audience.handled)} outbound seen, faults "
                    f"{dict(self.faults)}, faults left {len(armed)})\n"
                    + "\n".join(
                        f"--- {label}\n{self.supervisor.log(label)[-3000:]}"
                        for label in self.supervisor.managed
                    )
                )
            time.sleep(interval)

    def manager(self) -> CampaignManager:
        settings = Settings(
            mongodb_db=self.db_name,
            celery_task_soft_time_limit=int(FAULT_ENV["CELERY_TASK_SOFT_TIME_LIMIT"]),
            celery_task_time_limit=int(FAULT_ENV["CELERY_TASK_TIME_LIMIT"]),
            celery_visibility_timeout=int(FAULT_ENV["CELERY_VISIBILITY_TIMEOUT"]),
            metrics_inflight_timeout_seconds=INFLIGHT_TIMEOUT,
            campaign_templates_dir=Path(self.env["CAMPAIGN_TEMPLATES_DIR"]),
        )
        return build_manager(self.db, settings, clock=SystemClock())

    def finish(self, campaign_id: str, recipients: int, run_seconds: float) -> dict[str, Any]:
        """Measure the metrics drift before any reconcile (the beat's reconcile runs every
        300 s, never within a scenario), then wait for the documented self-correction: the
        reconcile (called here, the code the beat's task runs) corrects a dead writer's
        missing increment once its registration is older than the in-flight timeout.
        Then the checker must pass on the quiet system; figures recorded."""
        manager = self.manager()
        _settle(self.db, campaign_id)
        checked = time.monotonic()
        before = manager.check_invariants(campaign_id, quiet=False)
        waited = time.monotonic()
        self.notes["check_seconds"] = round(waited - checked, 1)
        deadline = waited + INFLIGHT_TIMEOUT + 30
        while True:
            manager.reconcile_campaign_metrics(campaign_id)
            report = manager.check_invariants(campaign_id, quiet=True)
            if report.ok or time.monotonic() > deadline:
                break
            print(f"[{self.name}] waiting for: {[v.invariant for v in report.violations]}")
            time.sleep(1.0)
        figures = {
            "scenario": self.name,
            "recipients": recipients,
            "faults_injected": sum(self.faults.values()),
            "faults": dict(self.faults),
            "restarts": dict(self.supervisor.restarts),
            "conversations_lost": report.figures["conversations_lost"],
            "conversations_duplicated": report.figures["conversations_duplicated"],
            "messages_recorded": report.figures["messages_recorded"],
            "messages_lost": report.figures["messages_lost"],
            "messages_sent_twice": report.figures["messages_sent_twice"],
            "replies_recorded": report.figures["replies_recorded"],
            "replies_recorded_twice": report.figures["replies_recorded_twice"],
            "metrics_drift_before_reconcile": before.figures["metrics_drift"],
            "metrics_drift_after_reconcile": report.figures["metrics_drift"],
            "reconcile_wait_seconds": round(time.monotonic() - waited, 1),
            "run_seconds": round(run_seconds, 1),
            **self.notes,
        }
        if self.audience is not None:
            # Every distinct reply the audience sent (it resends until recorded) was
            # recorded: none lost, whatever the faults did to it on the way.
            figures["replies_sent"] = self.audience.replies
            figures["replies_resent"] = self.audience.resent
        record_figures(figures)
        if not report.ok:
            self._forensics(report)
        if self.audience is not None:
            assert figures["replies_recorded"] == self.audience.replies, figures
        assert report.ok, [(v.invariant, v.detail, v.sample) for v in report.violations]
        for key in (
            "conversations_lost",
            "conversations_duplicated",
            "messages_lost",
            "messages_sent_twice",
            "replies_recorded_twice",
        ):
            assert figures[key] == 0, (key, figures)
        assert figures["conversations_lost"] == 0 and report.figures["recipients"] == recipients
        return figures

    def _forensics(self, report: Any) -> None:
        """Print what the documents and the logs say about each message the checker
        called lost: enough to tell a lost publication from a checker's wrong window."""
        lost = [v for v in report.violations if v.invariant == "outbound_in_outbox"]
        ids = [m for v in lost for m in v.sample]
        logs = {label: self.supervisor.log(label) for label in self.supervisor.managed}
        for mid in ids:
            doc = self.db["conversation_states"].find_one({"message_history.message_id": mid})
            row = self.db["outbox"].find_one({"_id": mid})
            print(f"\n=== forensics {mid}: outbox row {row!r}")
            if doc is None:
                print("no conversation records it")
                continue
            keys = ("_id", "version", "status", "unpublished", "publish_token", "publish_due_at")
            print({k: doc.get(k) for k in keys}, "last_write", doc.get("last_write"))
            seen = self.audience is not None and mid in self.audience.handled
            print("seen by the delivering service:", seen, "faults at:", self.fault_times)
            for m in doc["message_history"]:
                meta = m.get("metadata", {})
                print("  ", m.get("direction"), m.get("message_id"), m.get("timestamp"), meta)
            for label, text in logs.items():
                for line in text.splitlines():
                    if doc["_id"] in line or mid in line:
                        print(f"[{label}] {line[:400]}")


def _settle(db: Any, campaign_id: str, timeout: float = 15.0) -> None:
    """Until no live writer can still be between its writes and its increment: every
    registration left is either gone or has not moved for a few seconds (a dead one)."""
    seen: dict[str, Any] = {}
    stable_since = time.monotonic()
    deadline = stable_since + timeout
    while time.monotonic() < deadline:
        doc = db["campaign_metrics"].find_one({"_id": campaign_id}, {"inflight": 1}) or {}
        inflight = dict(doc.get("inflight") or {})
        if inflight != seen:
            seen, stable_since = inflight, time.monotonic()
        elif time.monotonic() - stable_since >= 3.0:
            return
        time.sleep(0.5)


def at_progress(
    campaign_id: str, thresholds: list[int], action: Callable[[Scenario], bool]
) -> Iterator[Fault]:
    """One fault per threshold: fires ``action`` once the outbox holds that many rows
    (so faults land while the campaign is under way); ``action`` may decline (False) and
    is asked again on the next loop."""
    for threshold in thresholds:

        def fault(s: Scenario, threshold: int = threshold) -> bool:
            return s.sent(campaign_id) >= threshold and action(s)

        yield fault


def wait_busy(s: Scenario, node: str, names: tuple[str, ...], wait: float = 4.0) -> list[int]:
    """Pool pids running one of ``names``, asked for up to ``wait`` seconds."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        pids = busy_pids(s.client, node, names)
        if pids:
            return pids
        time.sleep(0.1)
    return []


__all__ = [
    "FAULT_ENV",
    "INFLIGHT_TIMEOUT",
    "INITIALIZE",
    "PROCESS",
    "Audience",
    "Scenario",
    "Supervisor",
    "at_progress",
    "busy_pids",
    "record_figures",
    "wait_busy",
]


@contextlib.contextmanager
def scenario(
    name: str,
    tmp_path: Path,
    mongo_uri: str,
    db_name: str,
    **extra_env: str,
) -> Iterator[Scenario]:
    """A scenario with a private Redis without persistence (broker and result backend)."""
    redis = PrivateRedis(tmp_path / "redis", persistent=False)
    redis.start()
    world = Scenario(name, tmp_path, redis, mongo_uri, db_name, extra_env=dict(extra_env))
    try:
        yield world
    finally:
        world.close()
        redis.stop()
