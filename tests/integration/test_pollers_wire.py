"""Doubled beats: concurrent pollers never claim one campaign twice (wire tier)."""

from __future__ import annotations

import threading
from datetime import UTC
from typing import Any

import pymongo
import pytest

from campaign_worker.adapters.clock import ManualClock
from campaign_worker.bootstrap import build_manager, ensure_indexes
from campaign_worker.settings import Settings
from tests.conftest import START, sample_campaign

pytestmark = pytest.mark.wire

CAMPAIGNS = 6
POLLERS = 4


def test_concurrent_pollers_claim_each_campaign_once(wire_uri: str, wire_db: Any) -> None:
    settings = Settings(mongodb_db=wire_db.name)
    setup = build_manager(wire_db, settings, clock=ManualClock(START))
    ensure_indexes(setup)
    for index in range(CAMPAIGNS):
        setup.create_campaign(sample_campaign(2, campaign_id=f"camp-{index}"))

    claims: dict[int, list[str]] = {}
    barrier = threading.Barrier(POLLERS)

    def poll(poller: int) -> None:
        client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
            wire_uri, tz_aware=True, tzinfo=UTC
        )
        try:
            manager = build_manager(client[wire_db.name], settings, clock=ManualClock(START))
            barrier.wait(30)
            claims[poller] = manager.poll_campaigns(owner=f"poller-{poller}").initialize
        finally:
            client.close()

    threads = [threading.Thread(target=poll, args=(p,)) for p in range(POLLERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)

    claimed = [campaign for found in claims.values() for campaign in found]
    assert len(claims) == POLLERS
    assert sorted(claimed) == sorted(f"camp-{index}" for index in range(CAMPAIGNS))
    owners = {
        doc["_id"]: doc["lease_owner"]
        for doc in wire_db["campaigns"].find({}, {"lease_owner": 1, "status": 1})
    }
    for poller, found in claims.items():
        assert all(owners[campaign] == f"poller-{poller}" for campaign in found)
    # A later poll finds nothing left to claim while the leases hold.
    assert setup.poll_campaigns(owner="late").initialize == []
