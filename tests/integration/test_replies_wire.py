"""Round trips of inbound replies over the wire: a batch costs a handful of commands
whatever its size (counted on the wire with ``CommandCounter``; the counts are exact)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, timedelta
from typing import Any

import pymongo
import pytest

from campaign_worker.adapters.clock import ManualClock
from campaign_worker.service.campaign_manager import CampaignManager
from campaign_worker.service.reply_recording import InboundReply
from tests.conftest import ManagerFactory, sample_campaign
from tooling.mongo_monitoring import CommandCounter

pytestmark = pytest.mark.wire

N = 1000
BATCH = 500


@pytest.fixture
def counted(
    wire_uri: str, wire_db: Any, make_manager: ManagerFactory
) -> Iterator[tuple[CampaignManager, CommandCounter]]:
    """A manager whose every MongoDB command is counted, with N conversations waiting for
    a reply (the first message sent)."""
    counter = CommandCounter()
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
        wire_uri, tz_aware=True, tzinfo=UTC, event_listeners=[counter]
    )
    manager = make_manager(client[wire_db.name], init_batch_size=N, process_batch_size=N)
    manager.create_campaign(sample_campaign(N))
    assert manager.initialize_campaign_conversations("camp-1") == N
    assert manager.process_due_conversations("camp-1").written == N
    yield manager, counter
    client.close()


def replies(start: int, count: int, text: str = "Yes, tell me more") -> list[InboundReply]:
    return [
        InboundReply("camp-1", f"user-{i:05d}", f"in-{i}", text)
        for i in range(start, start + count)
    ]


def test_a_thousand_replies_cost_tens_of_round_trips(
    counted: tuple[CampaignManager, CommandCounter], clock: ManualClock
) -> None:
    manager, counter = counted
    clock.advance(timedelta(hours=1))
    with counter.measure() as span:
        for start in range(0, N, BATCH):
            outcomes = manager.record_inbound_messages(replies(start, BATCH))
            assert all(o.error is None and o.result for o in outcomes)
    # Per batch: campaign, conversations, the suppression check of its senders, metrics
    # registration, bulk write, outbox insert, publication marks, metrics increment.
    assert span.counts.total == 8 * (N // BATCH), span.counts.as_dict()
    assert dict(span.counts.by_name) == {"find": 6, "insert": 2, "update": 8}
    assert span.counts.total <= 50
    metrics = manager.get_campaign_metrics("camp-1")
    assert metrics["message_metrics"]["total_received"] == N
    assert manager.reconcile_campaign_metrics("camp-1") == {}

    # Delivered again (a redelivered batch): all duplicates, nothing written or counted.
    with counter.measure() as again:
        outcomes = manager.record_inbound_messages(replies(0, BATCH))
    assert all(o.result and o.result["duplicate"] for o in outcomes)
    assert again.counts.by_name == {"find": 2}, again.counts.as_dict()


def test_one_reply_alone_costs_what_it_did(
    counted: tuple[CampaignManager, CommandCounter], clock: ManualClock
) -> None:
    """The single-message path is a batch of one: the batch's eight round trips (seven
    before the send guard's suppression check)."""
    manager, counter = counted
    clock.advance(timedelta(hours=1))
    with counter.measure() as span:
        result = manager.record_inbound_message("camp-1", "user-00000", "in-0", "Yes, tell me more")
    assert result["current_stage"] == "consideration"
    assert span.counts.total == 8, span.counts.as_dict()
