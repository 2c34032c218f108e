"""Duplicate deliveries on a real worker change nothing twice; bad payloads become dead
letters with a reason, and an operator replays one with the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from tests.e2e.conftest import Broker, Processes, wait_for_workers, wait_until
from tests.e2e.scenario import CREATE, INBOUND, METRICS, campaign_payload, user_id

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

INITIALIZE = "campaign_worker.initialize_campaign"
PROCESS = "campaign_worker.process_conversations"
CAMPAIGN = "dup-camp"
N = 6
CLI = str(Path(sys.executable).with_name("campaign-worker"))


def executed(client: Celery, node: str, counts: dict[str, int]) -> None:
    """Wait until ``node`` has taken at least ``counts[name]`` tasks of each name and is
    idle, so duplicates sent with one task id (which share one result) have all run."""

    def done() -> bool:
        inspect = client.control.inspect(destination=[node], timeout=1)
        stats = (inspect.stats() or {}).get(node)
        if stats is None:
            return False
        totals = stats["total"]
        if any(totals.get(name, 0) < count for name, count in counts.items()):
            return False
        busy = (inspect.active() or {}).get(node, []) + (inspect.reserved() or {}).get(node, [])
        return not busy

    wait_until(done, 60, f"{node} to run {counts}", interval=0.3)


def inbound(user: int, message_id: str, content: str) -> dict[str, Any]:
    return {
        "campaign_id": CAMPAIGN,
        "user_id": user_id(user),
        "message_id": message_id,
        "content": content,
        "timestamp": "2026-01-05T10:00:00Z",
    }


def cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [CLI, "dead-letters", *args], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def conversation(mongo: Any, user: int) -> dict[str, Any]:
    doc: dict[str, Any] = mongo["conversation_states"].find_one(
        {"campaign_id": CAMPAIGN, "user_id": user_id(user)}
    )
    return doc


def directions(doc: dict[str, Any]) -> list[str]:
    return [message["direction"] for message in doc["message_history"]]


@pytest.mark.parametrize("broker", ["redis"], indirect=True)
def test_duplicate_deliveries_and_dead_letters(
    broker: Broker, processes: Processes, client: Celery, mongo: Any
) -> None:
    node = processes.worker("e2e-dup")  # no beat: this test sends every task itself
    wait_for_workers(client, [node])
    # The worker ensured the indexes at start, before any task ran.
    assert {"pending", "campaign_user_entry_unique", "due"} <= set(
        mongo["conversation_states"].index_information()
    )
    assert {"created", "task_created"} <= set(mongo["dead_letters"].index_information())

    # A reply that arrives before its campaign exists: rejected with a reason, kept.
    early = client.send_task(
        INBOUND, kwargs=inbound(0, "m-early", "yes"), queue="inbound", task_id="early-inbound"
    )
    with pytest.raises(Exception, match=f"campaign not found: '{CAMPAIGN}'"):
        early.get(timeout=30)
    # A mistyped argument: rejected before anything runs.
    bad = client.send_task(PROCESS, kwargs={"campaign_id": CAMPAIGN, "limit": "ten"})
    with pytest.raises(Exception, match="limit: Input should be a valid integer"):
        bad.get(timeout=30)
    letters = {doc["_id"]: doc for doc in mongo["dead_letters"].find()}
    assert set(letters) == {"early-inbound", bad.id}
    assert letters["early-inbound"]["task_name"] == INBOUND
    assert letters["early-inbound"]["payload"]["kwargs"] == inbound(0, "m-early", "yes")
    assert letters[bad.id]["reason"] == "invalid_input"

    # The same create, initialize and process messages delivered twice (same task ids,
    # as a broker redelivery looks), on a worker with two processes.
    payload = {"campaign": {**campaign_payload(N, CAMPAIGN), "campaign_type": "slow"}}
    for _ in range(2):
        client.send_task(CREATE, kwargs=payload, task_id="create-1")
    executed(client, node, {CREATE: 2})
    for _ in range(2):
        client.send_task(INITIALIZE, kwargs={"campaign_id": CAMPAIGN}, task_id="init-1")
    for _ in range(2):
        client.send_task(PROCESS, kwargs={"campaign_id": CAMPAIGN}, task_id="process-1")
    # initialize also enqueues one processing batch itself: 1 + 2 (+1 the bad one above)
    executed(client, node, {INITIALIZE: 2, PROCESS: 4})

    assert mongo["campaigns"].count_documents({}) == 1
    assert mongo["conversation_states"].count_documents({"campaign_id": CAMPAIGN}) == N
    assert mongo["outbox"].count_documents({"campaign_id": CAMPAIGN}) == N
    for user in range(N):
        assert directions(conversation(mongo, user)) == ["outbound"], user

    # The operator replays the early reply now that its campaign exists.
    out = cli(processes.env, "replay", "early-inbound")
    replay_id = out.split(" as task ")[1].split()[0]
    replayed = client.AsyncResult(replay_id).get(timeout=30)
    assert replayed["duplicate"] is False and replayed["current_stage"] == "offer"
    listed = json_lines(cli(processes.env, "list", "--all", "--json"))
    assert {doc["_id"]: doc["replayed_as"] for doc in listed} == {
        "early-inbound": replay_id,
        bad.id: None,
    }
    assert [doc["_id"] for doc in json_lines(cli(processes.env, "list", "--json"))] == [bad.id]

    # One reply sent twice by its sender (two task ids) and one redelivered (same task id).
    first = client.send_task(INBOUND, kwargs=inbound(1, "m-1", "YES"), queue="inbound")
    second = client.send_task(INBOUND, kwargs=inbound(1, "m-1", "YES"), queue="inbound")
    outcomes = sorted(r.get(timeout=30)["duplicate"] for r in (first, second))
    assert outcomes == [False, True]
    for _ in range(2):
        client.send_task(
            INBOUND, kwargs=inbound(2, "m-2", "yes"), queue="inbound", task_id="inbound-2"
        )
    executed(client, node, {INBOUND: 1 + 1 + 2 + 2})  # early, replay, two pairs

    for user in (0, 1, 2):
        doc = conversation(mongo, user)
        assert directions(doc) == ["outbound", "inbound", "outbound"], user
        assert doc["current_stage"] == "offer" and doc["metrics"]["stage_progressions"] == 1
    for user in range(3, N):
        assert directions(conversation(mongo, user)) == ["outbound"], user

    metrics = client.send_task(METRICS, kwargs={"campaign_id": CAMPAIGN}).get(timeout=30)
    assert metrics["total_recipients"] == N
    assert metrics["active_conversations"] == N
    assert metrics["message_metrics"]["total_sent"] == N + 3
    assert metrics["message_metrics"]["total_received"] == 3
    assert metrics["stage_metrics"]["hello"] == {
        "entered": N,
        "completed": 3,
        "avg_duration_seconds": metrics["stage_metrics"]["hello"]["avg_duration_seconds"],
    }
    assert metrics["stage_metrics"]["offer"]["entered"] == 3
    assert mongo["outbox"].count_documents({"campaign_id": CAMPAIGN}) == N + 3
    assert mongo["dead_letters"].count_documents({}) == 2
