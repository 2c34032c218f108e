"""Reply bursts and duplicated deliveries racing on a real worker (two processes): every
message a conversation records is deliverable in the outbox exactly once, none is
withdrawn, and the metrics document equals a recount (finding 1 of "Nothing lost")."""

from __future__ import annotations

from typing import Any

import pytest
from celery import Celery

from tests.e2e.conftest import Broker, Processes, wait_for_workers, wait_until
from tests.e2e.scenario import CREATE, INBOUND, campaign_payload, user_id

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

N = 24
CAMPAIGN = "race-camp"


def _reply(user: int, message_id: str, content: str) -> dict[str, Any]:
    return {
        "campaign_id": CAMPAIGN,
        "user_id": user_id(user),
        "message_id": message_id,
        "content": content,
    }


def _outbound(mongo: Any) -> list[str]:
    return [
        message["message_id"]
        for doc in mongo["conversation_states"].find({"campaign_id": CAMPAIGN})
        for message in doc["message_history"]
        if message["direction"] == "outbound"
    ]


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"], indirect=True)
def test_reply_bursts_and_duplicates_never_lose_a_recorded_message(
    broker: Broker, processes: Processes, client: Celery, mongo: Any
) -> None:
    node = processes.worker("e2e-race", concurrency=2)
    wait_for_workers(client, [node])
    payload = {"campaign": {**campaign_payload(N, CAMPAIGN), "campaign_type": "slow"}}
    client.send_task(CREATE, kwargs=payload, task_id="race-create").get(timeout=60)
    client.send_task("campaign_worker.initialize_campaign", kwargs={"campaign_id": CAMPAIGN}).get(
        timeout=60
    )
    wait_until(lambda: len(_outbound(mongo)) == N, 60, "the first message to everyone")

    # Per conversation: two different replies at once (both move hello -> offer and so
    # compute the same next message id), each sent twice with two task ids, and once
    # more redelivered under the same task id.
    sent = []
    for user in range(N):
        for message_id, text in ((f"a-{user}", "yes"), (f"b-{user}", "tell me more")):
            for copy in range(2):
                sent.append(
                    client.send_task(
                        INBOUND,
                        kwargs=_reply(user, message_id, text),
                        queue="inbound",
                        task_id=f"{message_id}-{copy}",
                    )
                )
            client.send_task(
                INBOUND,
                kwargs=_reply(user, message_id, text),
                queue="inbound",
                task_id=f"{message_id}-0",
            )
    results = [result.get(timeout=120) for result in sent]
    assert all(r["actions"] == [] for r in results if r["duplicate"])

    def settled() -> bool:
        docs = list(mongo["conversation_states"].find({"campaign_id": CAMPAIGN}))
        return all(
            sum(m["direction"] == "inbound" for m in d["message_history"]) == 2 for d in docs
        )

    wait_until(settled, 60, "both replies recorded everywhere")
    recorded = _outbound(mongo)
    assert len(recorded) == 2 * N  # hello's message, then offer's, once each
    assert len(set(recorded)) == len(recorded)

    def published() -> bool:
        rows = {d["_id"]: d["status"] for d in mongo["outbox"].find({"campaign_id": CAMPAIGN})}
        return rows == dict.fromkeys(recorded, "pending")

    wait_until(published, 30, "the outbox to hold exactly the recorded messages, pending")
    for doc in mongo["conversation_states"].find({"campaign_id": CAMPAIGN}):
        assert doc["current_stage"] == "offer"
        assert doc["metrics"]["messages_received"] == 2
        assert doc["unpublished"] == []

    reconciled = client.send_task(
        "campaign_worker.reconcile_metrics", kwargs={"campaign_id": CAMPAIGN}
    ).get(timeout=60)
    assert reconciled == {"checked": 1, "drift": {}}
    metrics = client.send_task(
        "campaign_worker.get_campaign_metrics", kwargs={"campaign_id": CAMPAIGN}
    ).get(timeout=60)
    assert metrics["message_metrics"]["total_sent"] == 2 * N
    assert metrics["message_metrics"]["total_received"] == 2 * N
    assert metrics["stage_metrics"]["offer"]["entered"] == N
