"""End-to-end fixtures: real ``celery worker`` / ``beat`` / ``flower`` processes against
the machine's Redis or RabbitMQ and the wire-tier MongoDB (``wire_uri``).

Every process is started in its own session (process group); teardown sends SIGTERM to
the main process (Celery's warm shutdown), then SIGKILL to whatever is left of the group.
Each pytest process (an xdist worker) has brokers of its own: a private redis-server and a
vhost on the machine's RabbitMQ, so e2e tests run in parallel (``make test``: pytest-xdist).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pymongo
import pytest
import redis
from celery import Celery
from kombu import Connection, Exchange, Queue

from tests.e2e.private_rabbitmq import PrivateRabbitMQ
from tests.e2e.private_redis import PrivateRedis

REPO = Path(__file__).resolve().parents[2]
TEMPLATES = Path(__file__).resolve().parent / "templates"
APP = "campaign_worker.entrypoints.celery_app"
COUNTING_APP = "tooling.counting_app"
QUEUES = ("celery", "polling", "initialization", "processing", "inbound", "delivery")

# The machine's RabbitMQ; each pytest process (an xdist worker) gets a vhost of its own.
AMQP_URL = os.environ.get("E2E_AMQP_URL", "amqp://guest:guest@localhost:5672//")
RABBITMQCTL = "rabbitmqctl"


@dataclass(frozen=True)
class Broker:
    name: str
    url: str
    backend: str


def xdist_worker() -> str:
    """This pytest process's xdist worker id (``gw0``, ``gw1``, ...), ``main`` without xdist."""
    return os.environ.get("PYTEST_XDIST_WORKER", "main")


def _flush_redis(url: str) -> None:
    client = redis.Redis.from_url(url, socket_connect_timeout=5)
    try:
        client.flushdb()
    except redis.ConnectionError as exc:
        raise RuntimeError(f"e2e tests need Redis at {url}: {exc}") from exc
    finally:
        client.close()


def _purge_rabbitmq(url: str) -> None:
    try:
        with Connection(url, connect_timeout=5) as connection:
            channel = connection.channel()
            for name in QUEUES:
                Queue(name, Exchange(name), routing_key=name)(channel).declare()
                channel.queue_purge(name)  # type: ignore[attr-defined]  # amqp Channel
    except OSError as exc:
        raise RuntimeError(f"e2e tests need RabbitMQ at {url}: {exc}") from exc


@pytest.fixture(scope="session")
def e2e_redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A redis-server of this pytest process's own (no persistence), so parallel test
    processes and other sessions on the machine never share queues, results or
    broadcasts. ``E2E_REDIS_URL`` names an existing server instead (one database per xdist
    worker from 11 on, flushed before and after every test)."""
    shared = os.environ.get("E2E_REDIS_URL")
    if shared:
        index = int("".join(ch for ch in xdist_worker() if ch.isdigit()) or 0)
        yield f"{shared.rstrip('/')}/{11 + index}"
        return
    server = PrivateRedis(tmp_path_factory.mktemp("e2e-redis"), persistent=False)
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


def _rabbitmqctl(*args: str) -> None:
    subprocess.run([RABBITMQCTL, *args], check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="session")
def e2e_amqp_url() -> Iterator[str]:
    """A vhost of this pytest process's own on the machine's RabbitMQ (``rabbitmqctl``),
    deleted at the end: parallel test processes never share a queue. Where ``rabbitmqctl``
    cannot be used, the default vhost, shared (run those tests one session at a time)."""
    vhost = f"cw-test-{uuid.uuid4().hex[:8]}-{xdist_worker()}"
    try:
        _rabbitmqctl("add_vhost", vhost)
        _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    except (OSError, subprocess.SubprocessError):
        yield AMQP_URL
        return
    try:
        server = AMQP_URL.split("://", 1)[1].split("/", 1)[0]  # user:password@host:port
        yield f"{AMQP_URL.split('://', 1)[0]}://{server}/{vhost}"
    finally:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            _rabbitmqctl("delete_vhost", vhost)


@pytest.fixture
def redis_broker(e2e_redis_url: str) -> Iterator[Broker]:
    _flush_redis(e2e_redis_url)
    yield Broker("redis", e2e_redis_url, e2e_redis_url)
    _flush_redis(e2e_redis_url)


@pytest.fixture
def rabbitmq_broker(e2e_amqp_url: str) -> Iterator[Broker]:
    _purge_rabbitmq(e2e_amqp_url)
    yield Broker("rabbitmq", e2e_amqp_url, "rpc://")
    _purge_rabbitmq(e2e_amqp_url)


@pytest.fixture(params=["redis", "rabbitmq"])
def broker(request: pytest.FixtureRequest) -> Broker:
    fixture: Broker = request.getfixturevalue(f"{request.param}_broker")
    return fixture


@pytest.fixture
def e2e_db_name(wire_uri: str) -> Iterator[str]:
    name = f"cw_e2e_{uuid.uuid4().hex[:10]}"
    yield name
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
        wire_uri, serverSelectionTimeoutMS=20000
    )
    client.drop_database(name)
    client.close()


@pytest.fixture
def mongo(wire_uri: str, e2e_db_name: str) -> Iterator[Any]:
    """The test's database, as the test (the 'other service') sees it."""
    from datetime import UTC

    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
        wire_uri, tz_aware=True, tzinfo=UTC, serverSelectionTimeoutMS=20000
    )
    yield client[e2e_db_name]
    client.close()


def plain_client(broker: Broker) -> Celery:
    """What another service uses: a bare Celery app that knows only names."""
    return Celery("other-service", broker=broker.url, backend=broker.backend)


@pytest.fixture(autouse=True)
def _no_broker_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Celery lets CELERY_BROKER_URL / CELERY_RESULT_BACKEND override an explicit URL."""
    for name in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "CELERY_CONFIG_MODULE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def client(broker: Broker) -> Iterator[Celery]:
    app = plain_client(broker)
    yield app
    app.close()


@dataclass
class Processes:
    """Starts celery processes with one environment; stops every one of them."""

    workdir: Path
    env: dict[str, str]
    started: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)

    def start(self, label: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.workdir / f"{label}.log", "wb")  # noqa: SIM115 - owned by the child
        proc = subprocess.Popen(
            argv,
            cwd=self.workdir,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self.started.append((label, proc))
        return proc

    def log(self, label: str) -> str:
        return (self.workdir / f"{label}.log").read_text(errors="replace")

    def worker(
        self, name: str, *, concurrency: int = 2, app: str = APP, extra: tuple[str, ...] = ()
    ) -> str:
        """Start ``celery worker`` named ``name@host``; returns the node name."""
        self.start(name, self.worker_argv(name, concurrency=concurrency, app=app, extra=extra))
        return f"{name}@{socket.gethostname()}"

    @staticmethod
    def worker_argv(
        name: str, *, concurrency: int = 2, app: str = APP, extra: tuple[str, ...] = ()
    ) -> list[str]:
        return [
            sys.executable,
            "-m",
            "celery",
            "-A",
            app,
            "worker",
            "-n",
            f"{name}@%h",
            "-c",
            str(concurrency),
            "-P",
            "prefork",
            "-l",
            "INFO",
            "--without-mingle",
            "--without-gossip",
            *extra,
        ]

    def beat(self, *, app: str = APP) -> subprocess.Popen[bytes]:
        return self.start(
            "beat",
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                app,
                "beat",
                "-s",
                str(self.workdir / "beat-schedule"),
                "-l",
                "INFO",
            ],
        )

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> int:
        """SIGTERM the main process (warm shutdown), then SIGKILL its whole group."""
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # leftovers: prefork children, if any
        return proc.wait(10)

    def stop_all(self) -> None:
        for _, proc in reversed(self.started):
            self.stop(proc)


def e2e_env(broker: Broker, wire_uri: str, db_name: str, **extra: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("CELERY_", "MONGODB_", "CAMPAIGN_", "CLOCK_"))
    }
    env.update(
        {
            "CELERY_BROKER_URL": broker.url,
            "CELERY_RESULT_BACKEND": broker.backend,
            "MONGODB_URI": wire_uri,
            "MONGODB_DB": db_name,
            "CAMPAIGN_TEMPLATES_DIR": str(TEMPLATES),
            "POLL_INTERVAL_SECONDS": "1",
            "PROCESS_BATCH_SIZE": "25",
            "LEASE_SECONDS": "30",
            "PYTHONPATH": str(REPO),
            "PYTHONUNBUFFERED": "1",
            # No fixed Prometheus port: tests run in parallel (a test that scrapes sets one).
            "METRICS_PORT": "0",
        }
    )
    env.update(extra)
    return env


@pytest.fixture
def processes(
    broker: Broker, wire_uri: str, e2e_db_name: str, tmp_path: Path
) -> Iterator[Processes]:
    procs = Processes(tmp_path, e2e_env(broker, wire_uri, e2e_db_name))
    try:
        yield procs
    finally:
        procs.stop_all()


def wait_until(
    condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.2
) -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def wait_for_workers(client: Celery, nodes: list[str], timeout: float = 60.0) -> None:
    """Until every node answers a ping over the broker."""

    def answered() -> bool:
        replies = client.control.ping(destination=nodes, timeout=0.5) or []
        names = {name for reply in replies for name in reply}
        return set(nodes) <= names

    wait_until(answered, timeout, f"workers {nodes} to answer a ping", interval=0.5)


def _running(server: PrivateRedis | PrivateRabbitMQ) -> Iterator[Any]:
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A Redis of the test's own (AOF on), for tests that restart or reconfigure it."""
    yield from _running(PrivateRedis(tmp_path / "redis"))


@pytest.fixture
def private_rabbitmq(tmp_path: Path) -> Iterator[PrivateRabbitMQ]:
    """A RabbitMQ node of the test's own (not the machine's), for tests that restart it."""
    yield from _running(PrivateRabbitMQ(tmp_path / "rabbitmq"))
