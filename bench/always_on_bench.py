"""Always-on campaigns in ``make bench``: MongoDB round trips per 1,000 people enrolled
(one ``enroll_recipients`` call of 1,000) and per 1,000 events (``record_events`` in
batches of ``INBOUND_BATCH_SIZE``, each a ``meeting_booked`` that ends a conversation),
through the manager, counted on the wire; beside the naive cost of the same work (an
insert per person; a read and a write per event)."""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.figures import Figure
from bench.wire import Recorder
from campaign_worker.adapters.clock import ManualClock
from campaign_worker.bootstrap import build_manager, ensure_indexes
from campaign_worker.service.event_recording import InboundEvent
from campaign_worker.settings import Settings
from tests.always_on_support import open_campaign, people, write_template

CAMPAIGN = "bench-always-on"


def per_1000(count: int, items: int) -> float:
    return round(count * 1000 / items, 1)


def always_on_section(db: Any, recorder: Recorder, settings: Settings, n: int) -> list[Figure]:
    """Enroll ``n`` people in calls of 1,000, then record one event for each in batches."""
    templates = write_template(Path(tempfile.mkdtemp(prefix="cw-bench-always-on-")))
    clock = ManualClock(datetime.now(UTC))
    manager = build_manager(
        db, settings.model_copy(update={"campaign_templates_dir": templates}), clock=clock
    )
    ensure_indexes(manager)
    manager.create_campaign(open_campaign(CAMPAIGN))
    manager.initialize_campaign_step(CAMPAIGN)
    calls = 0
    with recorder.span() as enrolled:
        for start in range(0, n, 1000):
            assert manager.enroll_recipients(CAMPAIGN, people(min(1000, n - start), start=start))
            calls += 1
    clock.advance(timedelta(minutes=5))
    batch = settings.inbound_batch_size
    events = [InboundEvent(f"u{i:04d}", "meeting_booked", f"m-{i}") for i in range(n)]
    with recorder.span() as recorded:
        for start in range(0, n, batch):
            outcomes = manager.record_events(events[start : start + batch])
            assert all(o.result and o.result["applied"] == 1 for o in outcomes)
    return [
        Figure(
            "enroll_round_trips_per_1000",
            per_1000(enrolled.total, n),
            "one insert per person: 1,000",
            f"{n:,} people in {calls} calls of up to 1,000",
            {"round_trips": enrolled.total, "items": n, "by_command": enrolled.by_name()},
        ),
        Figure(
            "event_round_trips_per_1000",
            per_1000(recorded.total, n),
            "a read and a write per event: 2,000",
            f"{n:,} events in batches of {batch:,} (INBOUND_BATCH_SIZE)",
            {"round_trips": recorded.total, "items": n, "by_command": recorded.by_name()},
        ),
    ]


__all__ = ["always_on_section"]
