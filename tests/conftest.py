"""Shared fixtures: an in-process fake MongoDB and a real wire-protocol server.

Tier 1 (unit): ``mongomock-ng``. We chose the maintained fork over mongomock 4.3.0 because
the latter breaks ``bulk_write(UpdateOne)`` on pymongo >= 4.11, and bulk_write is how
every processing batch is written.

Tier 2 (wire): ``MONGODB_URI`` when set (a real MongoDB), otherwise a ``secantusdb``
server started here on a free port. Each test gets its own database, dropped afterwards.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mongomock_ng
import pymongo
import pytest
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings

from campaign_worker.adapters.clock import ManualClock
from campaign_worker.bootstrap import build_manager, ensure_indexes
from campaign_worker.demo.embedded import free_port, wait_for_port
from campaign_worker.service.campaign_manager import CampaignManager
from campaign_worker.service.understanding import ReplyUnderstanding
from campaign_worker.settings import Settings

START = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)

# Property tests assert outcomes, never speed: no per-example deadline and no "too slow"
# health check, which fail on a busy machine (the suite runs in parallel processes).
hypothesis_settings.register_profile(
    "campaign-worker", deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
hypothesis_settings.load_profile("campaign-worker")


class SecantusServer:
    """A secantusdb process (MongoDB wire protocol) with persistent storage."""

    def __init__(self, storage: Path, port: int | None = None) -> None:
        self.storage = storage
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}"

    def start(self) -> None:
        exe = shutil.which("secantusd-py") or str(Path(sys.executable).parent / "secantusd-py")
        self.storage.mkdir(parents=True, exist_ok=True)
        log = open(self.storage.parent / f"secantus-{self.port}.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                exe,
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--storage-path",
                str(self.storage),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        wait_for_port(self.port)
        client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
            self.uri, serverSelectionTimeoutMS=20000
        )
        client.admin.command("ping")
        client.close()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture(scope="session")
def wire_uri() -> Iterator[str]:
    """URI of a real wire-protocol server for the whole session."""
    if os.environ.get("MONGODB_URI"):
        yield os.environ["MONGODB_URI"]
        return
    base = Path(tempfile.mkdtemp(prefix="cw-secantus-"))
    server = SecantusServer(base / "data")
    server.start()
    try:
        yield server.uri
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def wire_client(wire_uri: str) -> Iterator[pymongo.MongoClient[dict[str, Any]]]:
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
        wire_uri, tz_aware=True, tzinfo=UTC, serverSelectionTimeoutMS=20000
    )
    yield client
    client.close()


@pytest.fixture
def wire_db(wire_client: pymongo.MongoClient[dict[str, Any]]) -> Iterator[Any]:
    name = f"cw_test_{uuid.uuid4().hex[:12]}"
    yield wire_client[name]
    wire_client.drop_database(name)


@pytest.fixture
def mock_db() -> Iterator[Any]:
    client: Any = mongomock_ng.MongoClient(tz_aware=True)
    yield client["campaign_worker_test"]
    client.close()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(mongodb_db="campaign_worker_test", init_batch_size=50, process_batch_size=50)


ManagerFactory = Callable[..., CampaignManager]


@pytest.fixture
def make_manager(settings: Settings, clock: ManualClock) -> ManagerFactory:
    def factory(
        db: Any, understanding: ReplyUnderstanding | None = None, **overrides: Any
    ) -> CampaignManager:
        manager = build_manager(
            db, settings.model_copy(update=overrides), clock=clock, understanding=understanding
        )
        ensure_indexes(manager)
        return manager

    return factory


@pytest.fixture
def manager(mock_db: Any, make_manager: ManagerFactory) -> CampaignManager:
    return make_manager(mock_db)


@pytest.fixture(params=["mock", pytest.param("wire", marks=pytest.mark.wire)])
def any_db(request: pytest.FixtureRequest) -> Any:
    """Runs a test on the in-process fake and over the wire."""
    if request.param == "mock":
        return request.getfixturevalue("mock_db")
    return request.getfixturevalue("wire_db")


@pytest.fixture
def db(any_db: Any) -> Any:
    """The test's database, on mongomock-ng and over the wire (secantusdb or MONGODB_URI)."""
    return any_db


@pytest.fixture
def manager_on_both(db: Any, make_manager: ManagerFactory) -> CampaignManager:
    """A manager over ``db``: the test runs once per tier."""
    return make_manager(db)


def sample_campaign(n: int = 10, campaign_id: str = "camp-1", **extra: Any) -> dict[str, Any]:
    return {
        "_id": campaign_id,
        "name": "Spring sale",
        "campaign_type": "sales",
        "template_id": "default",
        "recipients": [
            {"user_id": f"user-{i:05d}", "attributes": {"first_name": f"Ann{i}"}} for i in range(n)
        ],
        **extra,
    }


@pytest.fixture
def cli_env(wire_uri: str, wire_db: Any) -> dict[str, str]:
    """Environment for a ``campaign-worker`` subprocess on this test's own database."""
    return {"MONGODB_URI": wire_uri, "MONGODB_DB": wire_db.name}


# Slowest first: with pytest-xdist handing out one test at a time (``make test``), the long
# scenarios start at once on separate workers and the quick tests fill the gaps around them.
_ORDER = ("tests/fault/", "tests/integration/test_bench_smoke", "tests/e2e/", "tests/integration/")


def _rank(item: pytest.Item) -> int:
    path = Path(str(item.fspath)).as_posix()
    for rank, part in enumerate(_ORDER):
        if f"/{part}" in path:
            return rank
    return len(_ORDER)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=_rank)  # stable: the collection order within each rank
