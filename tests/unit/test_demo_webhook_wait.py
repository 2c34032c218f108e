"""`demo --webhook` waits for the delivery statuses queued behind the campaign, and says so
when it stops waiting before they are all recorded (its figures are then partial)."""

from __future__ import annotations

import io
import threading
from collections import Counter
from types import SimpleNamespace
from typing import Any, cast

from campaign_worker.adapters.mongo_demo_reads import MongoDemoReads
from campaign_worker.demo.webhook_demo import wait_for_deliveries


def _receiver(delivered: int) -> Any:
    return cast(Any, SimpleNamespace(counts=Counter(reported_delivered=delivered, accepted=2)))


def _rows(mock_db: Any, *statuses: tuple[str, str | None]) -> None:
    for number, (status, delivery) in enumerate(statuses):
        row: dict[str, Any] = {"_id": f"m-{number}", "campaign_id": "c", "status": status}
        if delivery is not None:
            row["delivery"] = {"status": delivery}
        mock_db.outbox.insert_one(row)


def test_settled_prints_the_summary_only(mock_db: Any) -> None:
    _rows(mock_db, ("sent", "delivered"), ("sent", "delivered"))
    out = io.StringIO()
    assert wait_for_deliveries(out, MongoDemoReads(mock_db), "c", _receiver(2), stall=5) is True
    assert "Webhook receiver: 2 messages accepted" in out.getvalue()
    assert "partial" not in out.getvalue()


def test_no_progress_stops_and_says_the_figures_are_partial(mock_db: Any) -> None:
    _rows(mock_db, ("sent", "delivered"), ("sent", None), ("pending", None))
    out = io.StringIO()
    assert wait_for_deliveries(out, MongoDemoReads(mock_db), "c", _receiver(2), stall=0.3) is False
    assert "1 messages not sent yet, 1 reported statuses not recorded yet" in out.getvalue()
    assert "the figures above are partial" in out.getvalue()


def test_it_keeps_waiting_while_statuses_are_recorded(mock_db: Any) -> None:
    _rows(mock_db, ("sent", None), ("sent", None), ("sent", None))

    def record_one_by_one() -> None:
        for number in range(3):
            threading.Event().wait(0.4)
            mock_db.outbox.update_one(
                {"_id": f"m-{number}"}, {"$set": {"delivery.status": "delivered"}}
            )

    recorder = threading.Thread(target=record_one_by_one)
    recorder.start()
    out = io.StringIO()
    # 1.2 s of recording in all, never 0.8 s without progress: it waits to the end.
    settled = wait_for_deliveries(
        out, MongoDemoReads(mock_db), "c", _receiver(3), stall=0.8, cap=10
    )
    recorder.join()
    assert settled is True and "partial" not in out.getvalue()
