"""The contract suite: one set of tests, run against the in-memory adapters (the fakes
the service's unit tests use), against the MongoDB adapters on mongomock-ng, and against
the MongoDB adapters over the wire. Each test states what a port answers; passing on all
three proves the fakes honest: the same results for the same calls, compare-and-set
losses, duplicates, ordering and limits included."""

from __future__ import annotations

from typing import Any

import pytest

from campaign_worker.adapters.memory_store import MemoryDatabase
from campaign_worker.bootstrap import Indexed, repositories
from campaign_worker.delivery_wiring import delivery_stores, ensure_delivery_indexes
from tests.contract.support import Store


@pytest.fixture(params=["memory", "mongomock", pytest.param("wire", marks=pytest.mark.wire)])
def store(request: pytest.FixtureRequest) -> Store:
    """The ports over one backend, indexes created as a worker creates them."""
    db: Any
    if request.param == "memory":
        db = MemoryDatabase("contract")
    else:
        db = request.getfixturevalue("mock_db" if request.param == "mongomock" else "wire_db")
    repos = repositories(db)
    for repository in vars(repos).values():
        if isinstance(repository, Indexed):
            repository.initialize()
    if not isinstance(db, MemoryDatabase):
        ensure_delivery_indexes(db)
    rows, statuses, _ = delivery_stores(db)
    return Store(request.param, db, repos, rows, statuses)
