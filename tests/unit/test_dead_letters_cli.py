"""`campaign-worker dead-letters list|replay` over mongomock, publishing recorded."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from campaign_worker.adapters.clock import ManualClock
from campaign_worker.adapters.mongo import MongoClientProvider
from campaign_worker.bootstrap import Container
from campaign_worker.entrypoints import cli, tasks
from campaign_worker.entrypoints.celery_app import app
from campaign_worker.entrypoints.container import set_container
from campaign_worker.settings import Settings
from tests.conftest import START, ManagerFactory

Doc = dict[str, Any]


@pytest.fixture
def worker(mock_db: Any, make_manager: ManagerFactory, settings: Settings) -> Iterator[Container]:
    provider = MongoClientProvider(settings, factory=lambda: mock_db.client)
    built = Container(settings=settings, mongo=provider, manager=make_manager(mock_db))
    set_container(built)
    yield built
    set_container(None)


@pytest.fixture
def published(monkeypatch: pytest.MonkeyPatch) -> list[Doc]:
    sent: list[Doc] = []

    def send_task(name: str, args: Any = None, kwargs: Any = None, **options: Any) -> None:
        sent.append({"name": name, "args": args, "kwargs": kwargs, **options})

    monkeypatch.setattr(app, "send_task", send_task)
    return sent


def reject(task: Any, task_id: str, **kwargs: Any) -> None:
    assert task.apply(kwargs=kwargs, task_id=task_id).failed()


def test_list_shows_newest_first_with_reason(
    worker: Container, clock: ManualClock, capsys: pytest.CaptureFixture[str]
) -> None:
    reject(tasks.get_campaign_metrics, "older", campaign_id="nope")
    clock.advance(timedelta(minutes=1))
    reject(tasks.process_conversations, "newer", campaign_id="c", limit="x")
    capsys.readouterr()

    assert cli.main(["dead-letters", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("newer  2026-01-05T09:01:00Z  campaign_worker.process_conversations")
    assert "limit: Input should be a valid integer" in lines[0]
    assert lines[1].startswith("older  2026-01-05T09:00:00Z  campaign_worker.get_campaign_metrics")
    assert "invalid_input: campaign not found: 'nope'" in lines[1]

    assert (
        cli.main(["dead-letters", "list", "--json", "--task", tasks.get_campaign_metrics.name]) == 0
    )
    [doc] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert doc["_id"] == "older"
    assert "payload" not in doc
    assert doc["payload_hidden"] is True

    listing = ["dead-letters", "list", "--json", "--payload"]
    assert cli.main([*listing, "--task", tasks.get_campaign_metrics.name]) == 0
    [doc] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert doc["payload"] == {"args": [], "kwargs": {"campaign_id": "nope"}}


def test_list_when_empty(worker: Container, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["dead-letters", "list"]) == 0
    assert capsys.readouterr().out == "no dead letters\n"


def test_replay_publishes_the_payload_once_under_a_new_task_id(
    worker: Container, published: list[Doc], capsys: pytest.CaptureFixture[str]
) -> None:
    reject(tasks.pause_campaign, "t-1", campaign_id="nope")
    capsys.readouterr()

    assert cli.main(["dead-letters", "replay", "t-1"]) == 0
    [message] = published
    assert message["name"] == "campaign_worker.pause_campaign"
    assert message["args"] == [] and message["kwargs"] == {"campaign_id": "nope"}
    assert message["task_id"] != "t-1"
    assert f"as task {message['task_id']}" in capsys.readouterr().out

    letter = worker.dead_letters.get("t-1")
    assert letter is not None
    assert letter["replayed_as"] == message["task_id"] and letter["replayed_at"] == START
    # Replayed ones leave the default listing and cannot be replayed twice.
    assert worker.dead_letters.recent() == []
    assert cli.main(["dead-letters", "replay", "t-1"]) == 1
    assert len(published) == 1
    assert "replayed already" in capsys.readouterr().err


def test_replay_with_corrected_kwargs(worker: Container, published: list[Doc]) -> None:
    reject(tasks.process_conversations, "t-1", campaign_id="c", limit="x")
    fixed = '{"campaign_id": "c", "limit": 5}'
    assert cli.main(["dead-letters", "replay", "t-1", "--kwargs", fixed]) == 0
    assert published[0]["kwargs"] == {"campaign_id": "c", "limit": 5}
    assert cli.main(["dead-letters", "replay", "t-1", "--kwargs", fixed]) == 1  # replayed
    assert len(published) == 1


def test_replay_rejects_bad_kwargs_and_unknown_ids(
    worker: Container, published: list[Doc], capsys: pytest.CaptureFixture[str]
) -> None:
    reject(tasks.pause_campaign, "t-1", campaign_id="nope")
    assert cli.main(["dead-letters", "replay", "t-1", "--kwargs", "{oops"]) == 2
    assert cli.main(["dead-letters", "replay", "t-1", "--kwargs", "[1]"]) == 2
    assert cli.main(["dead-letters", "replay", "missing"]) == 1
    assert "dead letter not found: missing" in capsys.readouterr().err
    assert published == []
    assert worker.dead_letters.get("t-1")["replayed_at"] is None  # type: ignore[index]


def test_a_failed_publish_leaves_the_dead_letter_replayable(
    worker: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    reject(tasks.pause_campaign, "t-1", campaign_id="nope")

    def broker_down(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("broker unreachable")

    monkeypatch.setattr(app, "send_task", broker_down)
    assert cli.main(["dead-letters", "replay", "t-1"]) == 2
    letter = worker.dead_letters.get("t-1")
    assert letter is not None and letter["replayed_at"] is None


def test_the_group_and_its_commands_are_registered(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["dead-letters", "--help"]) == 0
    out = capsys.readouterr().out
    assert "list" in out and "replay" in out
    assert cli.main(["dead-letters", "replay"]) == 2  # ID missing: a usage error
