"""Message intake on a real worker: every message it receives is run or kept as a dead
letter with its raw body and a reason; a poison message is kept once and kills no worker;
a message whose dead letter cannot be stored is not acknowledged."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from tests.e2e.broker_tools import publish_raw, queued
from tests.e2e.conftest import Broker, Processes, wait_for_workers, wait_until
from tests.e2e.scenario import CREATE, campaign_payload

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

CLI = str(Path(sys.executable).with_name("campaign-worker"))
PAUSE = "campaign_worker.pause_campaign"
CANCEL = "campaign_worker.cancel_campaign"
MARKER = "intake-marker-reply-7f3a"


def js_headers(task: str, task_id: str) -> dict[str, Any]:
    """What celery-node (protocol 2) puts in the headers."""
    return {"lang": "js", "task": task, "id": task_id}


def status(mongo: Any, campaign_id: str) -> str | None:
    doc = mongo["campaigns"].find_one({"_id": campaign_id})
    return None if doc is None else str(doc["status"])


def letters(mongo: Any) -> dict[str, dict[str, Any]]:
    return {doc["_id"]: doc for doc in mongo["dead_letters"].find()}


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, "dead-letters", *args], env=env, capture_output=True, text=True, timeout=60
    )


def test_every_message_is_run_or_dead_lettered(
    broker: Broker, processes: Processes, client: Celery, mongo: Any
) -> None:
    wait_for_workers(client, [processes.worker("intake", concurrency=1)])
    _, worker = processes.started[-1]
    for campaign_id in ("camp-a", "camp-b"):
        payload = {**campaign_payload(1, campaign_id), "start_at": "2099-01-01T00:00:00Z"}
        client.send_task(CREATE, kwargs={"campaign": payload}).get(timeout=30)

    # celery-node's sendTask(name, undefined, kwargs): args is null. Run, not lost.
    publish_raw(broker, [None, {"campaign_id": "camp-a"}, {}], js_headers(PAUSE, "null-args"))
    # Protocol 1 (a mapping body, name and id inside it), args omitted: run too.
    publish_raw(broker, {"task": CANCEL, "id": "proto-1", "kwargs": {"campaign_id": "camp-b"}}, {})
    # A misspelt task name, a reply text in its arguments.
    reply = {"campaign_id": "camp-a", "user_id": "u", "message_id": "m", "content": MARKER}
    publish_raw(broker, [[], reply, {}], js_headers(PAUSE + "d", "misspelt"))
    # Poison: a JSON object where [args, kwargs, embed] belongs, delivered twice.
    for _ in range(2):
        publish_raw(broker, {"campaign_id": "camp-a"}, js_headers(PAUSE, "object-body"))
    # Not JSON at all, and a body without any task header.
    publish_raw(broker, b"\x00not json", js_headers(PAUSE, "undecodable"))
    headerless = [[], {"campaign_id": "camp-a"}, {}]
    publish_raw(broker, headerless, {"x-other": "1"})

    wait_until(lambda: status(mongo, "camp-a") == "paused", 60, "the null-args pause to run")
    wait_until(lambda: status(mongo, "camp-b") == "cancelled", 60, "the protocol 1 cancel")
    wait_until(lambda: len(letters(mongo)) == 4, 60, "four dead letters")
    found = letters(mongo)
    hashed = [key for key in found if key.startswith("sha256:")]
    assert sorted(found) == sorted(["misspelt", "object-body", "undecodable", *hashed])
    assert len(hashed) == 1
    assert found["misspelt"]["reason"] == "unknown_task"
    assert found["misspelt"]["task_name"] == PAUSE + "d"
    assert found["misspelt"]["payload"] == {"args": [], "kwargs": reply}
    assert found["object-body"]["reason"] == "malformed_envelope"
    assert found["object-body"]["envelope"]["body"] == '{"campaign_id": "camp-a"}'
    assert found["object-body"]["envelope"]["headers"]["id"] == "object-body"
    assert found["undecodable"]["reason"] == "undecodable_body"
    assert found[hashed[0]]["reason"] == "malformed_envelope"
    assert found[hashed[0]]["envelope"]["headers"] == {"x-other": "1"}
    assert MARKER not in found["misspelt"]["error"]

    # Nothing left behind, the poison killed nobody, and the worker still serves.
    assert worker.poll() is None
    wait_until(lambda: queued(broker, "inbound") == 0, 30, "the queue to drain")
    assert client.send_task(
        "campaign_worker.resume_campaign", kwargs={"campaign_id": "camp-a"}
    ).get(timeout=30) == {"campaign_id": "camp-a", "status": "scheduled"}

    # The operator: listing hides bodies; an unknown name replays only under a real one.
    listed = cli(processes.env, "list", "--json")
    assert listed.returncode == 0 and MARKER not in listed.stdout
    assert "misspelt" in listed.stdout
    refused = cli(processes.env, "replay", "misspelt")
    assert refused.returncode == 1 and "--task" in refused.stderr
    unreadable = cli(processes.env, "replay", "object-body")
    assert unreadable.returncode == 1 and "no readable arguments" in unreadable.stderr
    corrected = ("--task", CANCEL, "--kwargs", '{"campaign_id": "camp-a"}')
    replayed = cli(processes.env, "replay", "misspelt", *corrected)
    assert replayed.returncode == 0, replayed.stderr
    wait_until(lambda: status(mongo, "camp-a") == "cancelled", 60, "the replayed cancel")


def test_a_message_whose_dead_letter_cannot_be_stored_is_not_acknowledged(
    broker: Broker, processes: Processes, client: Celery
) -> None:
    # MongoDB unreachable: the worker starts (indexes are retried later) but cannot store.
    processes.env["MONGODB_URI"] = "mongodb://127.0.0.1:9/?serverSelectionTimeoutMS=200"
    processes.env["MONGODB_SERVER_SELECTION_TIMEOUT_MS"] = "200"
    wait_for_workers(client, [processes.worker("no-store", concurrency=1)])
    task_id = uuid.uuid4().hex
    publish_raw(broker, b"\x00not json", js_headers(PAUSE, task_id))

    def attempts() -> int:
        return processes.log("no-store").count('"dead_letter_not_stored"')

    # Given back and received again: at least two attempts to store it.
    wait_until(lambda: attempts() >= 2, 60, "the message to come back after a failed store")
    processes.stop_all()
    assert queued(broker, "inbound") == 1


@pytest.mark.parametrize("broker", ["redis"], indirect=True)
def test_a_failed_task_whose_dead_letter_cannot_be_stored_is_not_acknowledged(
    broker: Broker, processes: Processes, client: Celery
) -> None:
    """A task that fails for good (here: its retries, set to none, run out against an
    unreachable MongoDB) is dead-lettered before its ack; when even that cannot be
    stored, the message goes back to the broker instead of being acknowledged."""
    processes.env["MONGODB_URI"] = "mongodb://127.0.0.1:9/?serverSelectionTimeoutMS=200"
    processes.env["MONGODB_SERVER_SELECTION_TIMEOUT_MS"] = "200"
    processes.env["CELERY_MAX_RETRIES"] = "0"
    wait_for_workers(client, [processes.worker("no-store-task", concurrency=1)])
    client.send_task(PAUSE, kwargs={"campaign_id": "camp-x"}, queue="inbound")

    def attempts() -> int:
        return processes.log("no-store-task").count('"dead_letter_not_stored"')

    wait_until(lambda: attempts() >= 2, 60, "the failed task's message to come back")
    processes.stop_all()
    assert queued(broker, "inbound") == 1
    assert '"reason": "retries_exhausted"' in processes.log("no-store-task")
