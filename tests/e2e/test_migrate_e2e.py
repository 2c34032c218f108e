"""Template versions on a real worker: a campaign pins the version its worker stored at
start; the public task ``campaign_worker.migrate_campaign`` previews, applies and reverses
a migration to an edited version (stage ``offer`` renamed ``deal``, texts changed)."""

from __future__ import annotations

from typing import Any

import pytest
from celery import Celery

from campaign_worker.adapters.clock import SystemClock
from campaign_worker.adapters.mongo_template_versions import MongoTemplateVersionRepository
from campaign_worker.adapters.template_files import parse_template
from campaign_worker.domain.templates import Template
from campaign_worker.domain.versions import content_of
from tests.e2e.conftest import TEMPLATES, Broker, Processes, wait_for_workers, wait_until
from tests.e2e.scenario import CREATE, INBOUND, campaign_payload, user_id

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

MIGRATE = "campaign_worker.migrate_campaign"
N = 4


def _edited() -> Template:
    """e2e.yaml with its slow type's ``offer`` renamed ``deal`` and new texts."""
    content = content_of(parse_template((TEMPLATES / "e2e.yaml").read_text(), "e2e.yaml"))
    stages = content["campaign_types"]["slow"]["stages"]
    stages[0]["messages"][0]["text"] = "Hello again {first_name}"
    stages[1] = {**stages[1], "name": "deal"}
    stages[1]["messages"][0]["text"] = "The deal, {first_name}: reply BUY."
    return Template.model_validate(content)


@pytest.mark.parametrize("broker", ["redis"], indirect=True)
def test_migrate_task_previews_applies_and_reverses_on_a_worker(
    broker: Broker, processes: Processes, client: Celery, mongo: Any
) -> None:
    node = processes.worker("e2e-migrate")
    processes.beat()
    wait_for_workers(client, [node])
    # The worker stored its template files' contents as versions as it started.
    stored = {d["_id"].split("@")[0]: d["version"] for d in mongo["template_versions"].find()}
    assert stored == {"always_on": 1, "default": 1, "e2e": 1, "reviewed": 1}
    payload = {**campaign_payload(N, "edit"), "campaign_type": "slow"}
    client.send_task(CREATE, kwargs={"campaign": payload}).get(timeout=60)
    states = mongo["conversation_states"]
    wait_until(
        lambda: states.count_documents({"campaign_id": "edit", "stage_step": 1}) == N,
        90,
        "every conversation messaged",
    )
    first = client.send_task(
        INBOUND,
        kwargs={
            "campaign_id": "edit",
            "user_id": user_id(0),
            "message_id": "in-0",
            "content": "YES",
        },
        queue="inbound",
    ).get(timeout=30)
    assert first["current_stage"] == "offer"
    assert mongo["campaigns"].find_one({"_id": "edit"})["template_version"] == 1
    edited = MongoTemplateVersionRepository(mongo).register(_edited(), SystemClock().now())
    assert edited.version == 2

    preview = client.send_task(MIGRATE, kwargs={"campaign_id": "edit", "to_version": 2}).get(
        timeout=60
    )
    assert preview["dry_run"] and preview["unresolved"] == {"offer: stage offer removed": 1}
    applied = client.send_task(
        MIGRATE,
        kwargs={
            "campaign_id": "edit",
            "to_version": 2,
            "stage_map": {"offer": "deal"},
            "dry_run": False,
        },
    ).get(timeout=60)
    assert applied["finished"] and applied["moved"] == {"hello -> hello": 3, "offer -> deal": 1}
    assert {d["context"]["template_version"] for d in states.find({"campaign_id": "edit"})} == {2}

    # On version 2 a reply leads into the renamed stage... which user 0 is in already:
    # its message went out as "offer"; a second reply in hello moves user 1 into "deal".
    moved = client.send_task(
        INBOUND,
        kwargs={
            "campaign_id": "edit",
            "user_id": user_id(1),
            "message_id": "in-1",
            "content": "YES",
        },
        queue="inbound",
    ).get(timeout=30)
    assert moved["current_stage"] == "deal"
    user1 = states.find_one({"campaign_id": "edit", "user_id": user_id(1)})
    outbound = [m["content"] for m in user1["message_history"] if m["direction"] == "outbound"]
    assert outbound[-1] == "The deal, Tester1: reply BUY."
    user0 = states.find_one({"campaign_id": "edit", "user_id": user_id(0)})
    assert sum(m["direction"] == "outbound" for m in user0["message_history"]) == 2

    back = client.send_task(
        MIGRATE,
        kwargs={
            "campaign_id": "edit",
            "to_version": 1,
            "stage_map": {"deal": "offer"},
            "dry_run": False,
        },
    ).get(timeout=60)
    assert back["finished"] and back["moved"] == {"deal -> offer": 2, "hello -> hello": 2}
    campaign = mongo["campaigns"].find_one({"_id": "edit"})
    assert campaign["template_version"] == 1
    assert [(m["from_version"], m["to_version"]) for m in campaign["migrations"]] == [
        (1, 2),
        (2, 1),
    ]
    ids = [m["_id"] for m in mongo["outbox"].find({"campaign_id": "edit"})]
    assert len(ids) == N + 2
