"""A webhook endpoint that fails for a while (500s, then requests that time out) and then
recovers, while a campaign runs to its end: every message is accepted by the receiver
exactly once (counted per ``Idempotency-Key``), none is lost or given up (no outbox row
``failed``), retries stay bounded, and the checker passes."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from tests.delivery_support import WebhookReceiver
from tests.e2e.conftest import Broker, Processes, wait_for_workers, wait_until
from tests.e2e.scenario import user_id
from tests.fault.msg_support import CREATE, assert_clean, check, dead_letters, fault_env, record

pytestmark = pytest.mark.timeout(240)

N = 60
SECRET = "fault-webhook-signing-key"
FAILING = 40  # the first requests get a 500
STALLING = 10  # the next ones stall past the sender's 1 s read timeout
MAX_ATTEMPTS = 40


def flaky(number: int) -> Any:
    if number < FAILING:
        return 500
    if number < FAILING + STALLING:
        return ("sleep", 2.5, 503)
    return 200


def test_flaky_webhook_gets_each_message_once(
    redis_broker: Broker, wire_uri: str, e2e_db_name: str, tmp_path: Path, mongo: Any
) -> None:
    began = time.monotonic()
    campaign_id = f"fault-hook-{uuid.uuid4().hex[:6]}"
    client = Celery("other-service", broker=redis_broker.url)
    with WebhookReceiver(SECRET.encode(), flaky) as receiver:
        env = fault_env(
            redis_broker,
            wire_uri,
            e2e_db_name,
            WEBHOOK_URL=receiver.url,
            WEBHOOK_SECRET=SECRET,
            WEBHOOK_CONNECT_TIMEOUT_SECONDS="1",
            WEBHOOK_READ_TIMEOUT_SECONDS="1",
            DELIVERY_INTERVAL_SECONDS="1",
            DELIVERY_LEASE_SECONDS="10",
            DELIVERY_BACKOFF_BASE_SECONDS="0.5",
            DELIVERY_BACKOFF_MAX_SECONDS="2",
            DELIVERY_MAX_ATTEMPTS=str(MAX_ATTEMPTS),
            RATE_LIMIT_KEY_PREFIX=f"cw-fault-{uuid.uuid4().hex[:8]}",
        )
        procs = Processes(tmp_path, env)
        try:
            node = procs.worker("hook", concurrency=2)
            procs.beat()
            wait_for_workers(client, [node])
            campaign = {
                "_id": campaign_id,
                "name": "fault webhook",
                "campaign_type": "notice",
                "template_id": "webhook",
                "recipients": [
                    {"user_id": user_id(i), "attributes": {"first_name": f"P{i}"}} for i in range(N)
                ],
            }
            client.send_task(CREATE, kwargs={"campaign": campaign})
            wait_until(lambda: len(receiver.accepted()) == N, 150, "every message accepted")
            outbox = mongo["outbox"]
            wait_until(
                lambda: outbox.count_documents({"campaign_id": campaign_id, "status": "sent"}) == N,
                30,
                "every row sent",
            )
            wait_until(
                lambda: (
                    (mongo["campaigns"].find_one({"_id": campaign_id}) or {}).get("status")
                    == "completed"
                ),
                60,
                "the campaign to complete",
            )
            time.sleep(3)  # a late duplicate would arrive now
            accepted, attempts = receiver.accepted(), receiver.attempts()
            answered = Counter(r.answered for r in receiver.received)
            rows = list(outbox.find({"campaign_id": campaign_id}))
            letters = dead_letters(mongo)
        finally:
            client.close()
            procs.stop_all()

    report = check(wire_uri, e2e_db_name, campaign_id)
    record(
        "webhook_fails_then_recovers",
        report,
        faults={"requests_failed_500": FAILING, "requests_timed_out": STALLING},
        seconds=time.monotonic() - began,
        requests=len(receiver.raw),
        answered={str(k): v for k, v in sorted(answered.items())},
        accepted_per_key=sorted(set(accepted.values())),
        attempts_per_key_max=max(attempts.values()),
        messages_failed=report.figures.get("messages_failed", 0),
    )
    assert_clean(report)
    assert report.figures["recipients"] == N
    assert len(accepted) == N and set(accepted.values()) == {1}, accepted
    assert all(r.verified for r in receiver.received)
    assert {row["status"] for row in rows} == {"sent"}
    assert report.figures.get("messages_failed", 0) == 0
    assert max(row["attempts"] for row in rows) < MAX_ATTEMPTS  # bounded, and not given up
    assert sum(row["attempts"] for row in rows) == len(receiver.raw)
    assert letters == []
