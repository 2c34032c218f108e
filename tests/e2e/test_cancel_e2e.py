"""Cancelling a running campaign on a real worker and beat: every open conversation ends
``cancelled`` in batches, the campaign settles, a later reply changes nothing, and the
poller's lag stays at zero (finding 6 of "Nothing lost")."""

from __future__ import annotations

from typing import Any

import pytest
from celery import Celery

from tests.e2e.conftest import Broker, Processes, wait_for_workers, wait_until
from tests.e2e.scenario import CREATE, INBOUND, METRICS, campaign_payload, messaged, user_id

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

N = 30  # more than one processing batch (PROCESS_BATCH_SIZE=25 in the e2e env)
CAMPAIGN = "cancel-camp"


@pytest.mark.parametrize("broker", ["redis"], indirect=True)
def test_cancel_settles_every_conversation_on_a_real_worker(
    broker: Broker, processes: Processes, client: Celery, mongo: Any
) -> None:
    node = processes.worker("e2e-cancel")
    processes.beat()
    wait_for_workers(client, [node])
    payload = {"campaign": {**campaign_payload(N, CAMPAIGN), "campaign_type": "slow"}}
    client.send_task(CREATE, kwargs=payload).get(timeout=60)
    conversations = mongo["conversation_states"]
    wait_until(
        lambda: conversations.count_documents(messaged(CAMPAIGN)) == N,
        90,
        "every conversation to get its first message",
    )

    cancelled = client.send_task(
        "campaign_worker.cancel_campaign", kwargs={"campaign_id": CAMPAIGN}
    ).get(timeout=30)
    assert cancelled == {"campaign_id": CAMPAIGN, "status": "cancelled"}
    wait_until(
        lambda: (mongo["campaigns"].find_one({"_id": CAMPAIGN}) or {}).get("settled_at"),
        60,
        "the cancelled campaign to settle",
    )
    assert conversations.count_documents({"campaign_id": CAMPAIGN, "status": "cancelled"}) == N

    late = client.send_task(
        INBOUND,
        kwargs={
            "campaign_id": CAMPAIGN,
            "user_id": user_id(0),
            "message_id": "late-1",
            "content": "YES",
        },
        queue="inbound",
    ).get(timeout=30)
    assert (late["status"], late["actions"]) == ("cancelled", [])
    metrics = client.send_task(METRICS, kwargs={"campaign_id": CAMPAIGN}).get(timeout=30)
    assert metrics["active_conversations"] == 0
    assert metrics["cancelled_conversations"] == N
    assert metrics["message_metrics"] == {
        "total_sent": N,
        "total_received": 1,
        "response_rate": pytest.approx(1 / N),
        "deferred": 0,
    }
    assert mongo["outbox"].count_documents({"campaign_id": CAMPAIGN}) == N
    polled = client.send_task("campaign_worker.poll_campaigns", queue="polling").get(timeout=30)
    assert polled["oldest_due"] is None and CAMPAIGN not in polled["process"]
