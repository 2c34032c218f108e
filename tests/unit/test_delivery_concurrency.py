"""The dispatcher's concurrent sends, on the in-memory fakes: rows of a batch in flight at
once (proved by a channel that blocks until N sends are in flight, not by timing), never
more than ``max_in_flight``, one row's failure leaving the others alone, ``Retry-After``
honoured, rate-limit slots taken in blocks, each row sent once."""

from __future__ import annotations

import dataclasses
import threading
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from campaign_worker.adapters.clock import ManualClock
from campaign_worker.adapters.memory_store import MemoryDatabase
from campaign_worker.adapters.mongo import OUTBOX
from campaign_worker.delivery_wiring import Delivery, build_delivery
from campaign_worker.domain.delivery import Outgoing
from campaign_worker.domain.errors import PermanentDeliveryError, TransientDeliveryError
from campaign_worker.service.campaign_manager import CampaignManager
from campaign_worker.service.delivery_ports import RateLimiter
from campaign_worker.settings import Settings
from tests import fakes
from tests.conftest import ManagerFactory
from tests.delivery_support import webhook_campaign

fake_db = fakes.fake_db

WAIT = 10.0  # seconds a blocked send waits for the others before the test fails


class GateChannel:
    """Each send waits at a barrier of ``parties``: it passes only when that many sends
    are in flight at once (a sequential sender breaks the barrier). Counts the peak."""

    name = "webhook"
    needs_attributes = False

    def __init__(self, parties: int, answer: Callable[[str], str | None] | None = None) -> None:
        self.barrier = threading.Barrier(parties, timeout=WAIT)
        self.answer = answer or (lambda message_id: None)
        self.sent: Counter[str] = Counter()
        self.in_flight = self.peak = 0
        self._lock = threading.Lock()

    def address(self, user_id: str, attributes: Any) -> str:
        return user_id

    def send(self, message: Outgoing) -> str | None:
        with self._lock:
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
            self.sent[message.message_id] += 1
        try:
            self.barrier.wait()
            return self.answer(message.message_id)
        finally:
            with self._lock:
                self.in_flight -= 1


class Blocks:
    """Grants at most ``block`` slots per call while ``left`` lasts, then asks to wait."""

    def __init__(self, block: int, left: int, wait: float) -> None:
        self.block, self.left, self.wait = block, left, wait
        self.calls: list[int] = []

    def take(self, channel: str, wanted: int) -> tuple[int, float]:
        self.calls.append(wanted)
        granted = min(wanted, self.block, self.left)
        self.left -= granted
        return (granted, 0.0) if granted == wanted else (granted, self.wait)


class Unlimited:
    def take(self, channel: str, wanted: int) -> tuple[int, float]:
        return wanted, 0.0


@pytest.fixture
def campaign(fake_db: MemoryDatabase, make_manager: ManagerFactory, tmp_path: Path) -> Any:
    def create(n: int) -> CampaignManager:
        users = [f"u-{i:02d}" for i in range(n)]
        manager: CampaignManager = webhook_campaign(make_manager, fake_db, tmp_path, users)
        return manager

    return create


def delivery(
    db: MemoryDatabase,
    manager: CampaignManager,
    channel: GateChannel,
    in_flight: int,
    limiter: RateLimiter | None = None,
) -> Delivery:
    return build_delivery(
        db,
        manager,
        Settings(webhook_max_in_flight=in_flight),
        channels=[channel],
        limiter=limiter or Unlimited(),
        clock=manager.clock,
    )


def outbox(db: MemoryDatabase) -> dict[str, dict[str, Any]]:
    return {doc["user_id"]: doc for doc in db[OUTBOX].find()}


def test_a_batch_has_its_rows_in_flight_at_once(fake_db: MemoryDatabase, campaign: Any) -> None:
    manager = campaign(6)
    channel = GateChannel(parties=6)  # passes only with all six in flight together
    result = delivery(fake_db, manager, channel, in_flight=6).dispatcher.dispatch("a")
    assert result.as_dict() == {"claimed": 6, "sent": 6}
    assert channel.peak == 6 and set(channel.sent.values()) == {1}
    assert {d["status"] for d in outbox(fake_db).values()} == {"sent"}
    assert manager.get_campaign_metrics("c")["delivery"] == {"webhook": {"sent": 6}}
    assert all(s.counted for s in result.statuses)


def test_sends_in_flight_never_exceed_max_in_flight(fake_db: MemoryDatabase, campaign: Any) -> None:
    manager = campaign(12)
    channel = GateChannel(parties=3)  # groups of three pass together
    result = delivery(fake_db, manager, channel, in_flight=3).dispatcher.dispatch("a")
    assert result.as_dict() == {"claimed": 12, "sent": 12}
    assert channel.peak == 3
    assert len(channel.sent) == 12 and set(channel.sent.values()) == {1}


def test_one_row_failing_leaves_the_others_alone_and_retry_after_is_honoured(
    fake_db: MemoryDatabase, campaign: Any, clock: ManualClock
) -> None:
    manager = campaign(4)
    ids = {d["user_id"]: d["_id"] for d in fake_db[OUTBOX].find()}

    def answer(message_id: str) -> str | None:
        if message_id == ids["u-00"]:
            raise TransientDeliveryError("webhook answered HTTP 429", retry_after=120)
        if message_id == ids["u-01"]:
            raise PermanentDeliveryError("webhook answered HTTP 410")
        if message_id == ids["u-02"]:
            raise RuntimeError("a bug in the channel")
        return "p-3"

    channel = GateChannel(parties=4, answer=answer)
    result = delivery(fake_db, manager, channel, in_flight=4).dispatcher.dispatch("a")
    assert result.as_dict() == {"claimed": 4, "retry": 2, "failed": 1, "sent": 1}
    rows = outbox(fake_db)
    assert rows["u-00"]["status"] == "pending" and rows["u-00"]["attempts"] == 1
    assert rows["u-00"]["next_attempt_at"] >= clock.now() + timedelta(seconds=120)
    assert (rows["u-01"]["status"], rows["u-01"]["last_error"]) == (
        "failed",
        "webhook answered HTTP 410",
    )
    assert rows["u-02"]["last_error"] == "channel error (RuntimeError)"
    assert (rows["u-03"]["status"], rows["u-03"]["provider_id"]) == ("sent", "p-3")
    assert rows["u-01"]["events"][0]["status"] == "failed"
    assert manager.get_campaign_metrics("c")["delivery"] == {"webhook": {"sent": 1, "failed": 1}}
    # The 429 is not sent again before its Retry-After (the bug's retry, backed off by
    # seconds, is); then it goes, once more.
    channel.barrier = threading.Barrier(1)
    clock.advance(timedelta(seconds=119))
    delivery(fake_db, manager, channel, 4).dispatcher.dispatch("b")
    assert channel.sent[ids["u-00"]] == 1 and channel.sent[ids["u-02"]] == 2
    clock.advance(timedelta(minutes=15))
    delivery(fake_db, manager, channel, 4).dispatcher.dispatch("c")
    assert channel.sent[ids["u-00"]] == 2
    assert (channel.sent[ids["u-01"]], channel.sent[ids["u-03"]]) == (1, 1)


def test_rate_limit_slots_come_in_blocks_and_the_rest_is_deferred_uncounted(
    fake_db: MemoryDatabase, campaign: Any, clock: ManualClock
) -> None:
    manager = campaign(10)
    limiter = Blocks(block=4, left=6, wait=50)  # beyond the batch's wait budget (20 s)
    channel = GateChannel(parties=1)
    result = delivery(fake_db, manager, channel, 4, limiter).dispatcher.dispatch("a")
    assert result.as_dict() == {"claimed": 10, "sent": 6, "deferred": 4}
    assert len(limiter.calls) <= 4  # slots taken a block at a time, not one per message
    assert sum(channel.sent.values()) == 6
    pending = [d for d in outbox(fake_db).values() if d["status"] == "pending"]
    assert len(pending) == 4
    for doc in pending:
        assert doc["next_attempt_at"] == clock.now() + timedelta(seconds=50)
        assert not doc.get("attempts")  # a deferral is not an attempt


def test_no_send_starts_once_the_lease_would_not_cover_it(
    fake_db: MemoryDatabase, campaign: Any
) -> None:
    manager = campaign(3)
    channel = GateChannel(parties=1)
    sending = delivery(fake_db, manager, channel, 4)
    policy = sending.dispatcher.policy
    sending.dispatcher.policy = dataclasses.replace(policy, longest_send=policy.lease_seconds)
    assert sending.dispatcher.dispatch("a").as_dict() == {"claimed": 3}
    assert not channel.sent
    docs = list(fake_db[OUTBOX].find())
    assert {d["status"] for d in docs} == {"pending"}
    assert all(not d.get("attempts") and "lease_owner" not in d for d in docs)
