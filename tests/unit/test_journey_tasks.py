"""The always-on tasks without a broker: ``enroll_recipients`` called as a task (validated
arguments, JSON result, invalid input dead-lettered), and ``record_event``'s worker-side
batches settled message by message (``BatchedTask.run_batch``), as replies are."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from campaign_worker.adapters.mongo import MongoClientProvider
from campaign_worker.bootstrap import Container
from campaign_worker.domain.errors import InvalidInputError
from campaign_worker.entrypoints import journey_tasks
from campaign_worker.entrypoints.batch_task import BatchedTask
from campaign_worker.entrypoints.batching import BatchItem
from campaign_worker.entrypoints.container import set_container
from campaign_worker.settings import Settings
from tests.always_on_support import open_campaign, people, write_template
from tests.conftest import ManagerFactory

EVENTS = cast(BatchedTask, journey_tasks.record_event)


@pytest.fixture
def worker(
    mock_db: Any, make_manager: ManagerFactory, settings: Settings, tmp_path: Path
) -> Iterator[Container]:
    manager = make_manager(mock_db, campaign_templates_dir=write_template(tmp_path))
    provider = MongoClientProvider(settings, factory=lambda: mock_db.client)
    built = Container(settings=settings, mongo=provider, manager=manager)
    built.dead_letters.initialize()
    set_container(built)
    manager.create_campaign(open_campaign("always"))
    manager.initialize_campaign_step("always")
    yield built
    set_container(None)


def test_enroll_recipients_as_a_task(worker: Container) -> None:
    result = journey_tasks.enroll_recipients.apply(
        kwargs={"campaign_id": "always", "recipients": [*people(3), {"x": 1}]}
    ).get()
    assert result == {
        "campaign_id": "always",
        "enrolled": 3,
        "already": 0,
        "suppressed": 0,
        "invalid": 1,
        "invalid_samples": [result["invalid_samples"][0]],
    }
    with pytest.raises(InvalidInputError, match="recipients"):
        journey_tasks.enroll_recipients.apply(
            kwargs={"campaign_id": "always", "recipients": "nope"}, throw=True
        ).get()


def item(task_id: str, **kwargs: Any) -> BatchItem:
    event = {"user_id": "u0000", "event": "meeting_booked", "event_id": task_id}
    return BatchItem(task_id, [], {**event, **kwargs})


def test_each_event_of_a_batch_is_settled_alone(worker: Container) -> None:
    worker.manager.enroll_recipients("always", people(2))
    batch = [
        item("e-1"),
        item("e-1-again", event_id="e-1"),
        item("bad-name", event="no spaces please"),
        item("bad-time", timestamp="yesterday"),
        item("too-big", properties={"blob": "x" * 5000}),
        BatchItem("positional", ["u0001", "purchased", "p-1"], {}),
    ]
    outcomes = EVENTS.run_batch(batch)
    assert [(o.settled, o.state) for o in outcomes] == [
        (True, "SUCCESS"),
        (True, "SUCCESS"),
        (True, "FAILURE"),
        (True, "FAILURE"),
        (True, "FAILURE"),
        (True, "SUCCESS"),
    ]
    assert outcomes[0].result["applied"] == 1 and outcomes[1].result["duplicate"] is True
    assert outcomes[5].result["converted"] == 1
    letters = {doc["_id"]: doc for doc in worker.db["dead_letters"].find()}
    assert set(letters) == {"bad-name", "bad-time", "too-big"}
    assert {doc["reason"] for doc in letters.values()} == {"invalid_input"}
    assert worker.db["events"].count_documents({}) == 2
