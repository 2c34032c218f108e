"""Measurements through real ``celery worker`` processes on a real broker.

The bench plays beat and the other services: it prepares conversations in MongoDB through
``CampaignManager`` (not counted), starts a worker (``tooling.counting_app``: the real app plus
counters), sends public task names (``campaign_worker.poll_campaigns``,
``campaign_worker.record_inbound_message``) from a plain Celery client, and waits until the
work is done and the broker is idle. It counts the worker's MongoDB commands and the task
messages published (by the bench and by the worker), and reads the worker's CPU time from
/proc. Celery's own cost is measured with ``bench.noop_app`` on the same broker.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import redis
from celery import Celery

import celeryconfig
from bench.wire import Server, cpu_seconds, group_cpu_seconds
from campaign_worker.adapters.clock import ManualClock
from campaign_worker.bootstrap import build_manager, ensure_indexes
from campaign_worker.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
# Every queue the project's Celery settings declare (a worker consumes them all).
QUEUES = ",".join(queue.name for queue in celeryconfig.task_queues)
POLL = "campaign_worker.poll_campaigns"
INBOUND = "campaign_worker.record_inbound_message"


@dataclass
class Run:
    """What one worker run cost: items done, wall seconds, commands, messages, CPU."""

    label: str
    items: int
    seconds: float
    mongo_commands: dict[str, int]
    published_by_worker: dict[str, int]
    published_by_bench: int
    worker_cpu: float
    server_cpu: float | None
    concurrency: int

    @property
    def round_trips(self) -> int:
        return sum(self.mongo_commands.values())

    @property
    def messages(self) -> int:
        return sum(self.published_by_worker.values()) + self.published_by_bench

    def per_1000(self, value: float) -> float:
        return value * 1000 / self.items

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.__dict__,
            "round_trips": self.round_trips,
            "messages": self.messages,
            "rate_per_s": self.items / self.seconds if self.seconds else 0.0,
        }


@dataclass
class Worker:
    proc: subprocess.Popen[bytes]
    node: str
    counters: Path
    log: Path

    def counts(self) -> tuple[dict[str, int], dict[str, int]]:
        """(mongo commands, messages published) summed over the worker's processes."""
        commands: dict[str, int] = {}
        published: dict[str, int] = {}
        for path in self.counters.glob("*.json"):
            with contextlib.suppress(ValueError, OSError):
                data = json.loads(path.read_text())
                for key, value in data.get("mongo_commands", {}).items():
                    commands[key] = commands.get(key, 0) + value
                for key, value in data.get("published", {}).items():
                    published[key] = published.get(key, 0) + value
        return commands, published

    def cpu(self) -> float:
        return group_cpu_seconds(self.proc.pid)


def _diff(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    keys = sorted(set(after) | set(before))
    return {
        k: after.get(k, 0) - before.get(k, 0) for k in keys if after.get(k, 0) != before.get(k, 0)
    }


@dataclass
class CeleryBench:
    broker: Server
    mongo: Server
    client: Any  # the bench's own MongoClient (not counted)
    db_prefix: str
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="cw-bench-w-")))
    timeout: float = 600.0

    def __post_init__(self) -> None:
        self.celery = Celery("bench-client", broker=self.broker.uri)
        self.redis = redis.Redis.from_url(self.broker.uri)

    def close(self) -> None:
        self.celery.close()
        self.redis.close()
        shutil.rmtree(self.workdir, ignore_errors=True)

    # ------------------------------------------------------------------ processes

    def env(self, db_name: str, counters: Path) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("CELERY_", "MONGODB_", "CAMPAIGN_", "CLOCK_"))
        }
        env.update(
            {
                "CELERY_BROKER_URL": self.broker.uri,
                "MONGODB_URI": self.mongo.uri,
                "MONGODB_DB": db_name,
                "METRICS_PORT": "0",
                "LOG_LEVEL": "WARNING",
                "LOG_FORMAT": "console",
                "COUNTERS_DIR": str(counters),
                "PYTHONPATH": str(ROOT),
            }
        )
        return env

    @contextmanager
    def worker(
        self,
        label: str,
        db_name: str,
        concurrency: int,
        app: str = "tooling.counting_app",
        queues: str = QUEUES,
    ) -> Iterator[Worker]:
        counters = self.workdir / f"{label}-counters"
        counters.mkdir(parents=True, exist_ok=True)
        log = self.workdir / f"{label}.log"
        node = f"bench-{label}-{os.getpid()}@{socket.gethostname()}"
        argv = [
            sys.executable, "-m", "celery", "-A", app, "worker", "-n", node,
            "-c", str(concurrency), "-P", "prefork", "-Q", queues, "-l", "WARNING",
            "--without-mingle", "--without-gossip", "--without-heartbeat",
        ]  # fmt: skip
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                argv, cwd=ROOT, env=self.env(db_name, counters), stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        worker = Worker(proc, node, counters, log)
        try:
            self._wait_ready(worker)
            yield worker
        finally:
            self._stop(proc)

    def _wait_ready(self, worker: Worker) -> None:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if worker.proc.poll() is not None:
                raise RuntimeError(f"worker exited: {worker.log.read_text()[-2000:]}")
            replies = self.celery.control.ping(destination=[worker.node], timeout=0.5) or []
            if any(worker.node in reply for reply in replies):
                return
        raise TimeoutError(f"worker {worker.node} did not answer: {worker.log.read_text()[-2000:]}")

    @staticmethod
    def _stop(proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # warm shutdown
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(30)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # leftovers of this worker's own group
        proc.wait(10)

    # ------------------------------------------------------------------ broker state

    def broker_idle(self) -> bool:
        """No message queued nor held unacknowledged (Redis transport keys)."""
        queued = sum(int(self.redis.llen(q)) for q in QUEUES.split(","))
        return queued == 0 and int(self.redis.hlen("unacked")) == 0

    def server_cpu(self) -> float | None:
        return cpu_seconds(self.mongo.pid) if self.mongo.pid else None

    def measure(
        self, label: str, worker: Worker, items: int, concurrency: int,
        kick: Callable[[], int], done: Callable[[], bool], nudge: Callable[[], int] | None = None,
    ) -> Run:  # fmt: skip
        """Run ``kick`` (returns messages it sent), wait for ``done`` and an idle broker,
        and count what happened in between. ``nudge`` is sent again (the beat's job) when
        the broker is idle but the work is not done."""
        commands0, published0 = worker.counts()
        cpu0, server0 = worker.cpu(), self.server_cpu()
        begun = time.perf_counter()
        sent = kick()
        finished: float | None = None
        server1: float | None = None
        idle_since: float | None = None
        deadline = time.monotonic() + self.timeout
        while True:
            time.sleep(0.05)
            if finished is None and done():
                # The server's CPU over the same window as the rate (its use, the bound).
                finished, server1 = time.perf_counter(), self.server_cpu()
            idle = self.broker_idle()
            idle_since = (idle_since or time.monotonic()) if idle else None
            if finished is not None and idle_since and time.monotonic() - idle_since > 0.5:
                break
            if finished is None and nudge and idle_since and time.monotonic() - idle_since > 2:
                sent += nudge()
                idle_since = None
            if time.monotonic() > deadline:
                raise TimeoutError(f"{label}: not done after {self.timeout}s")
        cpu1 = worker.cpu()
        time.sleep(0.5)  # counter files are written after the task returns, or every 0.1 s
        commands1, published1 = worker.counts()
        seconds = finished - begun
        return Run(
            label, items, seconds, _diff(commands1, commands0), _diff(published1, published0),
            sent, cpu1 - cpu0,
            None if server0 is None or server1 is None else server1 - server0, concurrency,
        )  # fmt: skip

    # ------------------------------------------------------------------ scenarios

    def manager_on(self, db_name: str, at: datetime) -> Any:
        db = self.client[db_name]
        manager = build_manager(db, Settings(mongodb_db=db_name), clock=ManualClock(at))
        ensure_indexes(manager)
        return manager

    def prepare_advance(self, db_name: str, campaign_id: str, m: int) -> None:
        """m onboarding conversations whose welcome went out 4 days ago: each is due to
        advance welcome -> setup (min_time_in_stage 3d) now, by the worker's real clock."""
        manager = self.manager_on(db_name, datetime.now(UTC) - timedelta(days=4))
        manager.create_campaign(
            {
                "_id": campaign_id,
                "name": campaign_id,
                "campaign_type": "onboarding",
                "template_id": "default",
                "recipients": [{"user_id": f"w-{i:06d}"} for i in range(m)],
            }
        )
        manager.initialize_campaign_conversations(campaign_id)
        while manager.process_due_conversations(campaign_id).claimed:
            pass

    def poll(self) -> int:
        self.celery.send_task(POLL, queue="polling")
        return 1

    def advance(self, label: str, m: int, concurrency: int) -> Run:
        db_name = f"{self.db_prefix}_{label}"
        campaign_id = "bench-celery-advance"
        self.prepare_advance(db_name, campaign_id, m)
        states = self.client[db_name]["conversation_states"]

        def advanced() -> bool:
            found = states.count_documents({"campaign_id": campaign_id, "current_stage": "setup"})
            return bool(found >= m)

        with self.worker(label, db_name, concurrency) as worker:
            return self.measure(label, worker, m, concurrency, self.poll, advanced, self.poll)

    def replies(self, label: str, m: int) -> Run:
        """m replies through the public task, each moving its conversation awareness ->
        consideration (and sending that stage's first message)."""
        db_name = f"{self.db_prefix}_{label}"
        campaign_id = "bench-celery-replies"
        manager = self.manager_on(db_name, datetime.now(UTC) - timedelta(hours=1))
        manager.create_campaign(
            {
                "_id": campaign_id,
                "name": campaign_id,
                "campaign_type": "sales",
                "template_id": "default",
                "recipients": [{"user_id": f"r-{i:06d}"} for i in range(m)],
            }
        )
        manager.initialize_campaign_conversations(campaign_id)
        while manager.process_due_conversations(campaign_id).claimed:
            pass
        states = self.client[db_name]["conversation_states"]
        now = datetime.now(UTC).isoformat()

        def send_all() -> int:
            for i in range(m):
                self.celery.send_task(
                    INBOUND,
                    kwargs={
                        "campaign_id": campaign_id,
                        "user_id": f"r-{i:06d}",
                        "message_id": f"reply-{i}",
                        "content": "YES",
                        "timestamp": now,
                    },
                    queue="inbound",
                )
            return m

        def moved() -> bool:
            found = states.count_documents(
                {"campaign_id": campaign_id, "current_stage": "consideration"}
            )
            return bool(found >= m)

        with self.worker(label, db_name, 1) as worker:
            return self.measure(label, worker, m, 1, send_all, moved)

    def noop(self, k: int) -> Run:
        """Celery's own cost: k no-op tasks through one worker process."""
        client = Celery("bench-noop-client", broker=self.broker.uri)

        def send(count: int) -> int:
            for _ in range(count):
                client.send_task("bench.noop", queue="celery")
            return count

        try:
            with self.worker("noop", "unused", 1, app="bench.noop_app", queues="celery") as worker:
                send(20)  # warm up: the first tasks import and connect
                deadline = time.monotonic() + 60
                while not self.broker_idle() and time.monotonic() < deadline:
                    time.sleep(0.05)
                return self.measure("noop", worker, k, 1, lambda: send(k), self.broker_idle)
        finally:
            client.close()
