"""A/B splits over the wire: a campaign driven through a split template with a holdout
(manager, ManualClock, replies) stores per-variant and holdout counters equal to a
recount from the conversation documents, and the reconcile's aggregation agrees."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from campaign_worker.adapters.clock import ManualClock
from campaign_worker.domain.splits import recount
from tests.conftest import ManagerFactory
from tests.splits_support import (
    conversations,
    drive_split_campaign,
    stored_split_counts,
    write_split_template,
)


@pytest.mark.wire
def test_split_metrics_over_the_wire_equal_a_recount(
    tmp_path: Path, wire_db: Any, make_manager: ManagerFactory, clock: ManualClock
) -> None:
    write_split_template(tmp_path)
    manager = make_manager(wire_db, campaign_templates_dir=tmp_path)
    drive_split_campaign(manager, clock, 40)

    metrics = manager.get_campaign_metrics("ab-1")
    states = conversations(wire_db, "ab-1")
    expected = recount(states)
    assert stored_split_counts(metrics) == expected
    assert any(key.startswith("variants.pitch.short.") for key in expected)
    assert any(key.startswith("variants.pitch.long.") for key in expected)
    assert expected["holdout.conversations"] == sum(s.holdout for s in states) > 0
    rows = list(wire_db["outbox"].find({"campaign_id": "ab-1"}))
    assert len(rows) == metrics["message_metrics"]["total_sent"]
    held = {s.id for s in states if s.holdout}
    assert not [row for row in rows if row["conversation_id"] in held]

    # The reconcile's aggregation computes the same figures: no drift; and it restores
    # counts a lost increment would have left out.
    assert manager.reconcile_campaign_metrics("ab-1") == {}
    wire_db["campaign_metrics"].update_one(
        {"_id": "ab-1"}, {"$inc": {"variants.pitch.long.replies": -1, "holdout.replies": -1}}
    )
    drift = manager.reconcile_campaign_metrics("ab-1")
    assert drift == {"variants.pitch.long.replies": 1, "holdout.replies": 1}
    assert stored_split_counts(manager.get_campaign_metrics("ab-1")) == expected


@pytest.mark.parametrize("tier", ["mock", pytest.param("wire", marks=pytest.mark.wire)])
def test_a_split_campaign_with_a_holdout_passes_the_invariant_checker(
    tier: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    make_manager: ManagerFactory,
    clock: ManualClock,
) -> None:
    """A holdout's withheld messages are recorded but never reach the outbox: the checker
    counts neither a lost message nor a counter at odds with the history for them."""
    db = request.getfixturevalue(f"{tier}_db")
    write_split_template(tmp_path)
    manager = make_manager(db, campaign_templates_dir=tmp_path)
    drive_split_campaign(manager, clock, 40)
    manager.poll_campaigns()

    report = manager.check_invariants("ab-1")
    assert report.ok, report.violations
    withheld = sum(
        1
        for state in conversations(db, "ab-1")
        for message in state.message_history
        if (message.metadata or {}).get("withheld")
    )
    assert withheld > 0
    sent = db["outbox"].count_documents({"campaign_id": "ab-1"})
    assert report.figures["messages_recorded"] == sent
    assert report.figures["messages_lost"] == 0
