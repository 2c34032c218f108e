"""Reply understanding on a real worker and beat, driven by task name from a plain Celery
client (issue 21's "done when"): an email reply "Yes please" quoting our "Reply STOP to opt
out" advances; "no more texts please" opts out and nothing more is sent to that person by
any campaign; a reply the worker is unsure of holds its conversation (no follow-up, no
timeout) and is listed by ``campaign-worker replies review`` until resolved, and
``resolve_reply`` sent twice at once advances it exactly once.

Template ``reviewed`` (tests/e2e/templates/reviewed.yaml): stage ``hello`` sends a message
and a follow-up 4 s later, routes positive/question replies to ``offer`` (and advances on
any other understood reply), fails after one follow-up without a reply or after 12 s; a
reply less than 90 % sure needs review."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import pytest
from celery import Celery

from tests.e2e.conftest import Broker, Processes, wait_for_workers, wait_until
from tests.e2e.scenario import CREATE, INBOUND, METRICS, user_id

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

RESOLVE = "campaign_worker.resolve_reply"
N = 3
QUOTED_YES = (
    "Yes please\n\n"
    "On Mon, 7 Dec 2026 at 09:00, Acme <hello@acme.example> wrote:\n"
    "> Hi Tester0! Want to hear more? Reply YES, or STOP to opt out."
)
OPT_OUT = "no more texts please"
UNSURE = "Interesting... tell me the catch"


def start(client: Celery, mongo: Any, campaign_id: str) -> None:
    recipients = [
        {"user_id": user_id(i), "attributes": {"first_name": f"Tester{i}"}} for i in range(N)
    ]
    campaign = {
        "_id": campaign_id,
        "name": campaign_id,
        "campaign_type": "quick",
        "template_id": "reviewed",
        "recipients": recipients,
    }
    client.send_task(CREATE, kwargs={"campaign": campaign}).get(timeout=60)
    wait_until(
        lambda: (
            mongo["conversation_states"].count_documents(
                {"campaign_id": campaign_id, "stage_step": 1}
            )
            == N
        ),
        60,
        f"{campaign_id}: the first message to everyone",
    )


def reply(client: Celery, campaign_id: str, index: int, text: str) -> dict[str, Any]:
    kwargs = {
        "campaign_id": campaign_id,
        "user_id": user_id(index),
        "message_id": f"{campaign_id}-in-{index}",
        "content": text,
    }
    result: dict[str, Any] = client.send_task(INBOUND, kwargs=kwargs, queue="inbound").get(
        timeout=30
    )
    return result


def conversation(mongo: Any, campaign_id: str, index: int) -> dict[str, Any]:
    found: dict[str, Any] = mongo["conversation_states"].find_one(
        {"campaign_id": campaign_id, "user_id": user_id(index)}
    )
    return found


def sent_to(mongo: Any, campaign_id: str, index: int) -> list[str]:
    rows = mongo["outbox"].find({"campaign_id": campaign_id, "user_id": user_id(index)})
    return sorted(f"{row['stage']}:{row['step']}" for row in rows)


def review_queue(processes: Processes) -> list[dict[str, Any]]:
    """``campaign-worker replies review --json``, as an operator runs it."""
    done = subprocess.run(
        [sys.executable, "-m", "campaign_worker.entrypoints.cli", "replies", "review", "--json"],
        env=processes.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


@pytest.mark.parametrize("broker", ["redis"], indirect=True)
def test_replies_understood_held_and_resolved_on_a_real_worker(
    broker: Broker, processes: Processes, client: Celery, mongo: Any
) -> None:
    node = processes.worker("e2e-understand")
    processes.beat()
    wait_for_workers(client, [node])
    started = time.monotonic()
    start(client, mongo, "one")
    start(client, mongo, "two")

    # A yes quoting our own "Reply ... STOP to opt out": the person's words are read.
    yes = reply(client, "one", 0, QUOTED_YES)
    assert (yes["status"], yes["current_stage"]) == ("active", "offer")
    [message] = [
        m for m in conversation(mongo, "one", 0)["message_history"] if m["direction"] == "inbound"
    ]
    assert message["content"] == QUOTED_YES  # the original, unchanged
    assert message["metadata"]["extracted_text"] == "Yes please"
    assert (message["metadata"]["intent"], message["metadata"]["needs_review"]) == (
        "positive",
        False,
    )
    assert sent_to(mongo, "one", 0) == ["hello:0", "offer:0"]

    # A plainly worded opt-out: opted out here, suppressed everywhere.
    stop = reply(client, "one", 1, OPT_OUT)
    assert stop["status"] == "opted_out"

    # A reply the worker is unsure of: the conversation holds for a person.
    unsure = reply(client, "one", 2, UNSURE)
    assert (unsure["status"], unsure["current_stage"], unsure["actions"]) == (
        "active",
        "hello",
        ["wait"],
    )

    # Campaign two's follow-ups come and go (its users are silent); the person who opted
    # out in campaign one gets nothing more from it.
    wait_until(
        lambda: conversation(mongo, "two", 0)["status"] == "failed",
        60,
        "campaign two's silence to end",
    )
    assert sent_to(mongo, "two", 0) == ["hello:0", "hello:1"]
    two = conversation(mongo, "two", 1)
    assert (two["status"], two["status_reason"]) == ("opted_out", "suppressed (opt_out)")
    assert sent_to(mongo, "two", 1) == ["hello:0"]  # sent before the opt-out, nothing after
    assert sent_to(mongo, "one", 1) == ["hello:0"]

    # Past every wait and limit of the stage (follow-up 4 s, fail after 12 s): still held.
    wait_until(lambda: time.monotonic() > started + 16, 30, "the stage's limits to pass")
    held = conversation(mongo, "one", 2)
    assert (held["status"], held["current_stage"]) == ("active", "hello")
    assert sent_to(mongo, "one", 2) == ["hello:0"]
    [row] = review_queue(processes)
    assert (row["message_id"], row["text"], row["campaign_id"]) == ("one-in-2", UNSURE, "one")

    # Resolved twice at once by another service: advanced exactly once.
    kwargs = {"message_id": "one-in-2", "intent": "positive", "resolved_by": "e2e"}
    pending = [client.send_task(RESOLVE, kwargs=kwargs, queue="inbound") for _ in range(2)]
    results = [result.get(timeout=60) for result in pending]
    assert sorted(r["already_resolved"] for r in results) == [False, True]
    assert {(r["status"], r["current_stage"]) for r in results} == {("active", "offer")}
    assert sent_to(mongo, "one", 2) == ["hello:0", "offer:0"]
    assert review_queue(processes) == []
    metrics = client.send_task(METRICS, kwargs={"campaign_id": "one"}).get(timeout=30)
    assert metrics["reviews"] == {"pending": 0, "resolved": 1}
    assert "reply_understanding_loaded" in processes.log("e2e-understand")
