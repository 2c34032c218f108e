"""Replies in batches on a real worker: a queued burst (duplicates, malformed envelopes,
invalid requests among valid ones) is run in batches; every valid reply is recorded exactly
once, every bad one is a dead letter, each client gets its own result; and a worker killed
while it holds a batch loses nothing (the broker delivers the batch again)."""

from __future__ import annotations

import json
import os
import signal
from typing import Any

import pytest
from celery import Celery

from tests.e2e.broker_tools import publish_raw, queued
from tests.e2e.conftest import Broker, Processes, wait_for_workers, wait_until
from tests.e2e.scenario import CREATE, INBOUND, METRICS, campaign_payload, user_id

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

N = 20
CAMPAIGN = "batch-camp"


def _reply(user: int, message_id: str, content: str = "yes") -> dict[str, Any]:
    return {
        "campaign_id": CAMPAIGN,
        "user_id": user_id(user),
        "message_id": message_id,
        "content": content,
    }


def _inbound_ids(mongo: Any) -> dict[str, list[str]]:
    return {
        doc["user_id"]: [
            m["message_id"] for m in doc["message_history"] if m["direction"] == "inbound"
        ]
        for doc in mongo["conversation_states"].find({"campaign_id": CAMPAIGN})
    }


def _outbound_ids(mongo: Any) -> list[str]:
    return [
        m["message_id"]
        for doc in mongo["conversation_states"].find({"campaign_id": CAMPAIGN})
        for m in doc["message_history"]
        if m["direction"] == "outbound"
    ]


def _batch_sizes(log: str) -> list[int]:
    """Messages per batch the worker settled (its ``batch_settled`` log lines)."""
    sizes = []
    for line in log.splitlines():
        if '"batch_settled"' not in line:
            continue
        event = json.loads(line[line.index("{") :])
        sizes.append(event["batch_size"])
    return sizes


def _started_campaign(client: Celery, mongo: Any) -> None:
    payload = {"campaign": {**campaign_payload(N, CAMPAIGN), "campaign_type": "slow"}}
    client.send_task(CREATE, kwargs=payload, task_id="batch-create").get(timeout=60)
    client.send_task("campaign_worker.initialize_campaign", kwargs={"campaign_id": CAMPAIGN}).get(
        timeout=60
    )
    wait_until(lambda: len(_outbound_ids(mongo)) == N, 60, "the first message to everyone")


def js_headers(task_id: str) -> dict[str, Any]:
    return {"lang": "js", "task": INBOUND, "id": task_id}


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"], indirect=True)
def test_a_queued_burst_runs_in_batches_and_records_each_reply_once(
    broker: Broker, processes: Processes, client: Celery, mongo: Any
) -> None:
    first = processes.worker("e2e-batch-1", concurrency=2)
    wait_for_workers(client, [first])
    _started_campaign(client, mongo)
    processes.stop(processes.started[-1][1])  # the burst queues up while no worker runs

    sent: dict[str, list[Any]] = {}
    for user in range(N):
        # The same reply sent three times (b: twice), each under its own task id.
        for message_id, text, copies in ((f"a-{user}", "yes", 3), (f"b-{user}", "more", 2)):
            for _ in range(copies):
                result = client.send_task(
                    INBOUND, kwargs=_reply(user, message_id, text), queue="inbound"
                )
                sent.setdefault(message_id, []).append(result)
    # celery-node's sendTask(name, undefined, kwargs): args null, run as []
    publish_raw(broker, [None, _reply(0, "c-0"), None], js_headers("null-args"))
    # args and kwargs null: no arguments at all -> invalid input
    publish_raw(broker, [None, None, None], js_headers("no-arguments"))
    # a JSON object where [args, kwargs, embed] belongs -> malformed envelope
    publish_raw(broker, _reply(1, "c-1"), js_headers("object-body"))
    # a reply without message_id, and one to a campaign that does not exist
    missing = {k: v for k, v in _reply(2, "x").items() if k != "message_id"}
    publish_raw(broker, [[], missing, {}], js_headers("no-message-id"))
    publish_raw(broker, [[], {**_reply(3, "c-3"), "campaign_id": "nope"}, {}], js_headers("nope"))

    second = processes.worker("e2e-batch-2", concurrency=2)
    wait_for_workers(client, [second])

    expected = {user_id(u): {f"a-{u}", f"b-{u}"} for u in range(N)}
    expected[user_id(0)].add("c-0")

    def recorded() -> dict[str, list[str]]:
        found = _inbound_ids(mongo)
        return found if {u: set(ids) for u, ids in found.items()} == expected else {}

    found = wait_until(recorded, 90, "every valid reply recorded")
    assert all(len(ids) == len(set(ids)) for ids in found.values()), found  # exactly once
    wait_until(lambda: mongo["dead_letters"].count_documents({}) == 4, 60, "four dead letters")
    letters = {doc["_id"]: doc for doc in mongo["dead_letters"].find()}
    assert set(letters) == {"no-arguments", "object-body", "no-message-id", "nope"}
    assert letters["object-body"]["reason"] == "malformed_envelope"
    for task_id in ("no-arguments", "no-message-id", "nope"):
        assert letters[task_id]["reason"] == "invalid_input", letters[task_id]
    assert "message_id: Missing required argument" in letters["no-message-id"]["error"]
    assert "campaign not found: 'nope'" in letters["nope"]["error"]

    # Each client's own result: of the copies of one reply, exactly one recorded it.
    for message_id, results in sent.items():
        outcomes = [r.get(timeout=60) for r in results]
        recorded_by = [o for o in outcomes if not o["duplicate"]]
        assert len(recorded_by) == 1, (message_id, outcomes)
        assert all(o["conversation_id"] and o["status"] == "active" for o in outcomes)

    # Everything recorded is deliverable once; counters agree; the queue is drained.
    outbound = _outbound_ids(mongo)
    assert len(outbound) == len(set(outbound)) == mongo["outbox"].count_documents({})
    metrics = client.send_task(METRICS, kwargs={"campaign_id": CAMPAIGN}).get(timeout=30)
    assert metrics["message_metrics"]["total_received"] == 2 * N + 1
    wait_until(lambda: queued(broker, "inbound") == 0, 30, "the queue to drain")
    sizes = _batch_sizes(processes.log("e2e-batch-2"))
    assert sum(sizes) >= 5 * N + 4  # every message that reached a task ran
    assert max(sizes) > 1, sizes  # and they ran together, not one by one


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"], indirect=True)
def test_a_worker_killed_while_holding_a_batch_loses_nothing(
    broker: Broker, processes: Processes, client: Celery, mongo: Any
) -> None:
    # The first worker holds replies for up to a minute before it runs them; on Redis an
    # unacknowledged message comes back after the (short) visibility timeout, swept often.
    processes.env.update(
        {
            "CELERY_CONFIG_MODULE": "tests.e2e.short_visibility_config",
            "CELERY_VISIBILITY_TIMEOUT": "8",
            "CELERY_TASK_SOFT_TIME_LIMIT": "5",
            "CELERY_TASK_TIME_LIMIT": "6",
            "INBOUND_BATCH_INTERVAL": "60",
        }
    )
    holder = processes.worker("e2e-holder", concurrency=1)
    wait_for_workers(client, [holder])
    _, holder_proc = processes.started[-1]
    _started_campaign(client, mongo)

    for user in range(N):
        client.send_task(INBOUND, kwargs=_reply(user, f"k-{user}"), queue="inbound")

    def held() -> bool:
        reserved = client.control.inspect(destination=[holder], timeout=1).reserved() or {}
        return len(reserved.get(holder, [])) == N

    wait_until(held, 30, "the worker to hold every reply in its buffer")
    assert _inbound_ids(mongo) == {user_id(u): [] for u in range(N)}
    os.killpg(holder_proc.pid, signal.SIGKILL)
    holder_proc.wait(10)

    processes.env["INBOUND_BATCH_INTERVAL"] = "0.5"
    wait_for_workers(client, [processes.worker("e2e-after", concurrency=1)])

    expected = {user_id(u): [f"k-{u}"] for u in range(N)}
    wait_until(lambda: _inbound_ids(mongo) == expected, 90, "every held reply recorded once")
    assert mongo["dead_letters"].count_documents({}) == 0
