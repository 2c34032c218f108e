"""A burst of 3,000 reply messages while processing runs: a tenth of them duplicates (half
redelivered under the same task id, half resent by their sender under a new one), and
400 distinct replies to one conversation. Every distinct reply is recorded exactly once,
nothing outbound is lost or sent twice, and the campaign finishes with the checker
passing."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from tests.e2e.conftest import Broker, Processes, wait_for_workers, wait_until
from tests.e2e.scenario import INBOUND, user_id
from tests.fault.msg_support import (
    CREATE,
    Audience,
    assert_clean,
    check,
    dead_letters,
    fault_env,
    payload,
    record,
    wait_recorded,
)

pytestmark = pytest.mark.timeout(300)

N = 300
CAMPAIGN = "fault-burst"
BURST = 3_000
DUPLICATES = BURST // 10
HOT_USER = user_id(3)  # a silent one: the burst alone moves it
HOT_REPLIES = 400  # with its few outbound messages, under the 500 a conversation keeps


@pytest.fixture
def procs(
    redis_broker: Broker, wire_uri: str, e2e_db_name: str, tmp_path: Path
) -> Iterator[Processes]:
    started = Processes(tmp_path, fault_env(redis_broker, wire_uri, e2e_db_name))
    try:
        yield started
    finally:
        started.stop_all()


def burst(client: Celery) -> tuple[int, int]:
    """Publish the burst; returns (distinct replies, duplicate messages)."""
    distinct = BURST - DUPLICATES
    others = [user_id(i) for i in range(N) if user_id(i) != HOT_USER]
    replies = []
    for n in range(distinct):
        user = HOT_USER if n < HOT_REPLIES else others[n % len(others)]
        replies.append((f"task-burst-{n}", user, f"burst-{n}"))
    sent = 0
    messages: list[tuple[str, dict[str, Any]]] = []
    for n, (task_id, user, message_id) in enumerate(replies):
        kwargs = {
            "campaign_id": CAMPAIGN,
            "user_id": user,
            "message_id": message_id,
            "content": "hmm, maybe",
        }
        copies = [task_id]
        if n % 9 == 0 and sent < DUPLICATES:  # a tenth of the burst are second copies
            copies.append(task_id if sent % 2 == 0 else f"{task_id}-resent")
            sent += 1
        for copy in copies:
            messages.append((copy, kwargs))
    with client.producer_or_acquire() as producer:  # one connection for all
        for task_id, kwargs in messages:
            client.send_task(
                INBOUND, kwargs=kwargs, queue="inbound", task_id=task_id, producer=producer
            )
    return distinct, sent


def test_reply_burst_with_duplicates_and_a_hot_conversation(
    procs: Processes, redis_broker: Broker, mongo: Any, wire_uri: str, e2e_db_name: str
) -> None:
    began = time.monotonic()
    client = Celery("other-service", broker=redis_broker.url)
    try:
        node = procs.worker("burst", concurrency=2)
        procs.beat()
        wait_for_workers(client, [node])
        client.send_task(CREATE, kwargs={"campaign": payload(N, CAMPAIGN)})
        audience = Audience(client, mongo, CAMPAIGN)
        wait_until(
            lambda: mongo["outbox"].count_documents({"campaign_id": CAMPAIGN}) >= N // 2,
            60,
            "processing under way",
        )
        audience.step()
        burst_started = time.monotonic()
        distinct, duplicates = burst(client)
        published = time.monotonic() - burst_started
        audience.run_until_completed(150)
        wait_recorded(mongo, CAMPAIGN, distinct + audience.replies, 120)
        hot = mongo["conversation_states"].find_one(
            {"campaign_id": CAMPAIGN, "user_id": HOT_USER}, {"message_history.direction": 1}
        )
    finally:
        client.close()

    report = check(wire_uri, e2e_db_name, CAMPAIGN)
    record(
        "reply_burst",
        report,
        faults={"burst_messages": distinct + duplicates, "duplicates": duplicates},
        seconds=time.monotonic() - began,
        distinct_burst_replies=distinct,
        audience_replies=audience.replies,
        hot_conversation_replies=HOT_REPLIES,
        burst_publish_seconds=round(published, 1),
    )
    assert_clean(report)
    assert distinct + duplicates == BURST
    assert report.figures["replies_recorded"] == distinct + audience.replies
    inbound = [m for m in hot["message_history"] if m["direction"] == "inbound"]
    assert len(inbound) == HOT_REPLIES
    assert dead_letters(mongo) == []
    assert procs.started[0][1].poll() is None, "the worker died"
