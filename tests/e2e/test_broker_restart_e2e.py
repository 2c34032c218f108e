"""A worker survives its broker: a broker of the test's own - a private Redis with its
append-only file on, or a private RabbitMQ node - is restarted three times while a task
runs; the worker process stays up, reconnects, finishes the task in flight, and every
message queued in the broker across the restarts is processed afterwards.

The worker is a real ``celery worker`` with the real app and configuration plus one test
task (``tests/e2e/broker_app.py``); the machine's shared brokers are never touched. Before
the guard in ``campaign_worker/adapters/broker.py`` the first Redis restart ended the worker
with ``AttributeError: 'NoneType' object has no attribute 'hostname'``. On RabbitMQ the
broker requeues the message of the task in flight when the connection drops, so that task
runs a second time after the restart (allowed: every task is idempotent).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import redis
from amqp.exceptions import AMQPError
from celery import Celery
from kombu.exceptions import OperationalError

from tests.e2e.conftest import Broker, Processes, e2e_env, wait_for_workers, wait_until
from tests.e2e.private_rabbitmq import PrivateRabbitMQ
from tests.e2e.private_redis import PrivateRedis

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

BROKER_APP = "tests.e2e.broker_app"
RECORD = "e2e.record"
RESTARTS = 3
QUEUED_PER_RESTART = 3
IN_FLIGHT_SECONDS = 120.0  # at most: the test releases the task after the restart


def _started(record_file: Path, key: str) -> int:
    return events(record_file, "start")[key]


def read_records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    # Complete lines only: a task may be appending one right now.
    return [json.loads(line) for line in path.read_text().split("\n")[:-1] if line.strip()]


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
    except (redis.ConnectionError, OSError, AMQPError, OperationalError):
        return False
    return any(node in reply for reply in replies)


class BrokerUnderTest:
    """A private broker as the scenario sees it: restart it, count its messages."""

    def __init__(self, server: PrivateRedis | PrivateRabbitMQ) -> None:
        self.server = server
        self.url = server.url

    def restart(self) -> None:
        self.server.restart()

    def ready(self, queue: str) -> int:
        raise NotImplementedError

    def unacked(self) -> int:
        raise NotImplementedError


class RedisUnderTest(BrokerUnderTest):
    """Straight from Redis: a list per queue, one hash of unacked messages."""

    server: PrivateRedis

    def ready(self, queue: str) -> int:
        with self.server.client() as client:
            return int(client.llen(queue))

    def unacked(self) -> int:
        with self.server.client() as client:
            return int(client.hlen("unacked"))


class RabbitMQUnderTest(BrokerUnderTest):
    server: PrivateRabbitMQ

    def ready(self, queue: str) -> int:
        return self.server.queue_counts().get(queue, (0, 0))[0]

    def unacked(self) -> int:
        return sum(unacked for _, unacked in self.server.queue_counts().values())


def survives_restarts(broker: BrokerUnderTest, wire_uri: str, db_name: str, tmp_path: Path) -> None:
    """Restart ``broker`` RESTARTS times, each time with one task in flight and more
    messages waiting in a queue; then check that the same worker process ran them all."""
    record_file = tmp_path / "records.jsonl"
    env = e2e_env(
        Broker("broker", broker.url, ""),  # no result backend: nothing to read
        wire_uri,
        db_name,
        E2E_RECORD_FILE=str(record_file),
        METRICS_PORT="0",  # no fixed port shared with other test sessions
    )
    procs = Processes(tmp_path, env)
    client = Celery("other-service", broker=broker.url)
    try:
        # Concurrency 2 with one task running leaves a pool slot free, so the worker is
        # waiting for messages when the broker goes away (on Redis: blocked in BRPOP, the
        # case that used to end the worker).
        node = procs.worker("restarts", concurrency=2, app=BROKER_APP, extra=("-Q", "celery"))
        worker = procs.started[-1][1]
        wait_for_workers(client, [node])

        queued: list[str] = []
        for round_ in range(RESTARTS):
            in_flight = f"in-flight-{round_}"
            release = tmp_path / f"release-{round_}"  # the task runs until the test says so
            client.send_task(
                RECORD, args=[in_flight, IN_FLIGHT_SECONDS, str(release)], queue="celery"
            )
            wait_until(partial(_started, record_file, in_flight), 20, f"{in_flight}")
            # Messages waiting in the broker across the restart: a queue this worker does
            # not consume yet (it subscribes after the last restart).
            for n in range(QUEUED_PER_RESTART):
                key = f"queued-{round_}-{n}"
                client.send_task(RECORD, args=[key], queue="inbound")
                queued.append(key)
            wait_until(lambda: broker.ready("inbound") == len(queued), 10, "messages queued")
            assert events(record_file, "done")[in_flight] == 0, "restart while in flight"

            restarted_at = time.time()
            broker.restart()

            # Nothing queued was lost by the restart (Redis: the AOF; RabbitMQ: durable).
            assert broker.ready("inbound") == len(queued)
            release.touch()
            # The task in flight finishes after the restart, in the same worker process.
            finished = wait_until(
                partial(last_time, record_file, "done", in_flight), 30, f"{in_flight} done"
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
            inspect = client.control.inspect(destination=[node], timeout=1)
            busy = (inspect.active() or {}).get(node, []) + (inspect.reserved() or {}).get(node, [])
            return (
                not busy
                and broker.ready("celery") == 0
                and broker.ready("inbound") == 0
                and broker.unacked() == 0
            )

        # Every message acked: nothing left to be redelivered later.
        wait_until(drained, 30, "queues and unacknowledged messages to drain")
        done = events(record_file, "done")
        expected = [f"in-flight-{r}" for r in range(RESTARTS)] + queued
        assert [key for key in expected if done[key] == 0] == []
        assert worker.poll() is None
        log = procs.log("restarts")
        assert "Unrecoverable error" not in log
        assert "AttributeError" not in log
        assert log.count("Connection to broker lost") >= RESTARTS
    finally:
        client.close()
        procs.stop_all()


def test_worker_survives_redis_restarts_with_a_task_in_flight(
    private_redis: PrivateRedis, wire_uri: str, e2e_db_name: str, tmp_path: Path
) -> None:
    survives_restarts(RedisUnderTest(private_redis), wire_uri, e2e_db_name, tmp_path)


def test_worker_survives_rabbitmq_restarts_with_a_task_in_flight(
    private_rabbitmq: PrivateRabbitMQ, wire_uri: str, e2e_db_name: str, tmp_path: Path
) -> None:
    survives_restarts(RabbitMQUnderTest(private_rabbitmq), wire_uri, e2e_db_name, tmp_path)
