"""Global opt-out on a real worker: an opt-out phrase in one campaign's reply keeps every
later campaign from messaging that person; operators list and lift suppressions through
the public tasks; lifting lets a new campaign message them again."""

from __future__ import annotations

from typing import Any

import pytest
from celery import Celery

from tests.e2e.conftest import Broker, Processes, wait_for_workers, wait_until
from tests.e2e.scenario import CREATE, INBOUND, campaign_payload, messaged, user_id

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

N = 4


def _started(client: Celery, mongo: Any, campaign_id: str) -> None:
    payload = {"campaign": {**campaign_payload(N, campaign_id), "campaign_type": "slow"}}
    client.send_task(CREATE, kwargs=payload).get(timeout=60)
    wait_until(
        lambda: (
            mongo["conversation_states"].count_documents(
                {
                    "$or": [
                        messaged(campaign_id),
                        {"campaign_id": campaign_id, "status": "opted_out"},
                    ]
                }
            )
            == N
        ),
        90,
        f"{campaign_id}: every conversation messaged or opted out",
    )


@pytest.mark.parametrize("broker", ["redis"], indirect=True)
def test_opt_out_reaches_every_campaign_and_can_be_lifted(
    broker: Broker, processes: Processes, client: Celery, mongo: Any
) -> None:
    node = processes.worker("e2e-suppress")
    processes.beat()
    wait_for_workers(client, [node])
    _started(client, mongo, "first")
    reply = client.send_task(
        INBOUND,
        kwargs={
            "campaign_id": "first",
            "user_id": user_id(2),
            "message_id": "in-1",
            "content": "Please unsubscribe me from this list",
        },
        queue="inbound",
    ).get(timeout=30)
    assert reply["status"] == "opted_out"
    listed = client.send_task("campaign_worker.list_suppressions").get(timeout=30)
    assert [entry["_id"] for entry in listed] == [f"user:{user_id(2)}"]
    assert listed[0]["campaign_id"] == "first"

    _started(client, mongo, "second")
    second = mongo["conversation_states"].find_one({"campaign_id": "second", "user_id": user_id(2)})
    assert (second["status"], second["status_reason"]) == ("opted_out", "suppressed (opt_out)")
    outbox = mongo["outbox"]
    assert outbox.count_documents({"campaign_id": "second"}) == N - 1
    assert outbox.count_documents({"user_id": user_id(2), "campaign_id": "second"}) == 0

    lifted = client.send_task(
        "campaign_worker.lift_suppression", kwargs={"user_id": user_id(2)}
    ).get(timeout=30)
    assert lifted["_id"] == f"user:{user_id(2)}"
    assert client.send_task("campaign_worker.list_suppressions").get(timeout=30) == []
    _started(client, mongo, "third")
    assert outbox.count_documents({"campaign_id": "third"}) == N
