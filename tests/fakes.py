"""Fixtures that put the service's unit tests on in-memory fakes of its ports.

The fakes are the in-memory adapters (``campaign_worker/adapters/memory_*.py``, wired by
``bootstrap.build_manager`` over a ``MemoryDatabase``), proven to answer as the MongoDB
adapters do by the contract suite (``tests/contract``). A test module imports the fixtures
it wants; each replaces the one of the same name from ``tests/conftest.py`` there:

- ``fake_db``: a fresh ``MemoryDatabase`` (``db["collection"]`` shows raw documents);
- ``any_db``: the fake, and a wire-tier database (``wire`` mark): ``db`` and
  ``manager_on_both`` then run each test on both;
- ``manager``: a ``CampaignManager`` over ``fake_db``.
"""

from __future__ import annotations

from typing import Any

import pytest

from campaign_worker.adapters.memory_store import MemoryDatabase
from campaign_worker.service.campaign_manager import CampaignManager
from tests.conftest import ManagerFactory


@pytest.fixture
def fake_db() -> MemoryDatabase:
    return MemoryDatabase("campaign_worker_test")


@pytest.fixture(params=["fake", pytest.param("wire", marks=pytest.mark.wire)])
def any_db(request: pytest.FixtureRequest) -> Any:
    """Runs a test on the in-memory fakes and over the wire."""
    if request.param == "fake":
        return MemoryDatabase("campaign_worker_test")
    return request.getfixturevalue("wire_db")


@pytest.fixture
def manager(make_manager: ManagerFactory) -> CampaignManager:
    """A manager on a fresh in-memory database (its ``_db``, for raw documents)."""
    return make_manager(MemoryDatabase("campaign_worker_test"))


__all__ = ["any_db", "fake_db", "manager"]
