"""Delivery on real ``celery worker`` and ``beat`` processes: a webhook that fails for a
while (500s, then timeouts) and recovers gets each message exactly once, with statuses
flowing back by task name; and two worker processes share one rate limit in Redis."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from celery import Celery

from campaign_worker.adapters.rate_limit import RedisRateLimiter
from tests.delivery_support import WebhookReceiver, channel_template
from tests.e2e.conftest import Broker, Processes, e2e_env, wait_for_workers, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

SECRET = "e2e-webhook-signing-key"
STATUS = "campaign_worker.record_delivery_status"
CREATE = "campaign_worker.create_campaign"


@pytest.fixture
def delivery_processes(
    redis_broker: Broker, wire_uri: str, e2e_db_name: str, tmp_path: Path
) -> Iterator[Processes]:
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "deliver.yaml").write_text(yaml.safe_dump(channel_template("webhook")))
    env = e2e_env(
        redis_broker,
        wire_uri,
        e2e_db_name,
        CAMPAIGN_TEMPLATES_DIR=str(templates),
        WEBHOOK_SECRET=SECRET,
        WEBHOOK_CONNECT_TIMEOUT_SECONDS="1",
        WEBHOOK_READ_TIMEOUT_SECONDS="1",
        DELIVERY_INTERVAL_SECONDS="1",
        DELIVERY_LEASE_SECONDS="10",
        DELIVERY_BACKOFF_BASE_SECONDS="0.5",
        DELIVERY_BACKOFF_MAX_SECONDS="2",
        DELIVERY_MAX_ATTEMPTS="40",
        RATE_LIMIT_KEY_PREFIX=f"cw-e2e-{uuid.uuid4().hex[:8]}",
    )
    procs = Processes(tmp_path, env)
    try:
        yield procs
    finally:
        procs.stop_all()


@pytest.fixture
def status_client(redis_broker: Broker) -> Iterator[Celery]:
    app = Celery("provider", broker=redis_broker.url, backend=redis_broker.backend)
    app.conf.task_routes = {STATUS: {"queue": "inbound"}}
    yield app
    app.close()


def create(client: Celery, n: int) -> str:
    recipients = [
        {"user_id": f"u-{i:03d}", "attributes": {"first_name": f"P{i}"}} for i in range(n)
    ]
    campaign = {
        "_id": f"deliver-{uuid.uuid4().hex[:6]}",
        "name": "delivery e2e",
        "campaign_type": "notice",
        "template_id": "deliver",
        "recipients": recipients,
    }
    return str(client.send_task(CREATE, kwargs={"campaign": campaign}).get(timeout=60))


def report(name: str, figures: dict[str, Any]) -> None:
    print(f"\nE2E FIGURES {json.dumps({'e2e': name, **figures}, sort_keys=True)}")


def test_flaky_webhook_gets_each_message_once_and_statuses_flow_back(
    delivery_processes: Processes, status_client: Celery, mongo: Any
) -> None:
    n = 20
    lock = threading.Lock()

    def flaky(number: int) -> Any:
        if number < 25:
            return 500
        if number < 33:
            return ("sleep", 2.5, 503)  # the sender's read timeout is 1 s
        return 200

    def provider_reports(payload: dict[str, Any]) -> None:
        # u-003's mailbox bounces hard; every other message is delivered.
        status = "bounced" if payload["user_id"] == "u-003" else "delivered"
        with lock:
            status_client.send_task(
                STATUS, kwargs={"message_id": payload["message_id"], "status": status}
            )

    with WebhookReceiver(SECRET.encode(), flaky, on_accepted=provider_reports) as receiver:
        procs = delivery_processes
        procs.env["WEBHOOK_URL"] = receiver.url
        nodes = [procs.worker("deliver-a"), procs.worker("deliver-b")]
        procs.beat()
        wait_for_workers(status_client, nodes)
        campaign_id = create(status_client, n)
        wait_until(lambda: len(receiver.accepted()) == n, 150, "every message accepted")
        outbox = mongo["outbox"]
        wait_until(
            lambda: outbox.count_documents({"campaign_id": campaign_id, "status": "sent"}) == n,
            30,
            "every row sent",
        )

        def statuses_back() -> bool:
            doc = mongo["campaign_metrics"].find_one({"_id": campaign_id}) or {}
            return bool(
                doc.get("delivery", {}).get("webhook")
                == {"sent": n, "delivered": n - 1, "bounced": 1}
            )

        wait_until(statuses_back, 60, "statuses counted in the metrics document")
        time.sleep(3)  # a late duplicate would show up here
        accepted, attempts = receiver.accepted(), receiver.attempts()
        answered = Counter(r.answered for r in receiver.received)

    assert len(accepted) == n and set(accepted.values()) == {1}, accepted
    assert all(r.verified for r in receiver.received)
    rows = list(outbox.find({"campaign_id": campaign_id}))
    assert sum(row["attempts"] for row in rows) == len(receiver.raw)
    bounced = mongo["conversation_states"].find_one(
        {"campaign_id": campaign_id, "user_id": "u-003"}
    )
    assert bounced["status"] == "failed"
    assert bounced["status_reason"].startswith("hard bounce for message ")
    assert bounced["message_history"][0]["metadata"]["delivery"]["status"] == "bounced"
    assert mongo["suppressions"].count_documents({"user_id": "u-003", "channel": "webhook"}) == 1
    delivered = mongo["conversation_states"].find_one(
        {"campaign_id": campaign_id, "user_id": "u-000"}
    )
    assert delivered["message_history"][0]["metadata"]["delivery"]["status"] == "delivered"
    senders = {row["attempted_by"].split(":")[0] for row in rows}
    report(
        "webhook_flaky_then_recovers",
        {
            "messages": n,
            "requests": len(receiver.raw),
            "answered": {str(k): v for k, v in sorted(answered.items())},
            "accepted_per_key": sorted(set(accepted.values())),
            "attempts_per_key_max": max(attempts.values()),
            "sent_by_nodes": sorted(senders),
        },
    )


def test_two_worker_processes_share_one_rate_limit(
    delivery_processes: Processes, status_client: Celery, mongo: Any
) -> None:
    n, limit, period = 15, 3, 2.0
    with WebhookReceiver(SECRET.encode()) as receiver:
        procs = delivery_processes
        procs.env |= {
            "WEBHOOK_URL": receiver.url,
            "DELIVERY_RATE_LIMITS": f"webhook={limit} per {int(period)} seconds",
            "DELIVERY_BATCH_SIZE": "2",
        }
        nodes = [procs.worker("limit-a"), procs.worker("limit-b")]
        procs.beat()
        wait_for_workers(status_client, nodes)
        create(status_client, n)
        wait_until(lambda: len(receiver.accepted()) == n, 150, "every message accepted")
        arrivals = sorted(r.at for r in receiver.received)
    rows = list(mongo["outbox"].find())
    senders = Counter(row["attempted_by"].split(":")[0] for row in rows)
    # Both worker processes sent, and never more than the limit within one period: the
    # window is taken a quarter second short for the request's own latency.
    assert len(senders) == 2, senders
    window = period - 0.25
    busiest = max(sum(1 for t in arrivals if start <= t < start + window) for start in arrivals)
    assert busiest <= limit, arrivals
    # n sends at `limit` per `period` cannot take less than this.
    span = arrivals[-1] - arrivals[0]
    assert span >= (-(-n // limit) - 1) * period - 0.25
    report(
        "rate_limit_two_workers",
        {
            "messages": n,
            "limit": f"{limit} per {period:g} s",
            "sent_by_node": dict(senders),
            "busiest_window": busiest,
            "span_seconds": round(span, 2),
        },
    )


def test_slots_taken_in_blocks_by_two_limiters_never_exceed_the_limit(
    redis_broker: Broker,
) -> None:
    """Two limiters (as two processes hold) take blocks of slots of one channel as fast as
    they can: no window of the limit's length ever holds more than the limit, and the
    limit is reached (the blocks lose no slot)."""
    limit, seconds = 10, 2.5
    prefix = f"cw-e2e-blocks-{uuid.uuid4().hex[:8]}"
    limiters = [
        RedisRateLimiter(redis_broker.url, {"webhook": f"{limit}/second"}, prefix) for _ in range(2)
    ]
    grants: list[tuple[float, int]] = []
    lock = threading.Lock()
    end = time.monotonic() + seconds

    def take(limiter: RedisRateLimiter, block: int) -> None:
        while time.monotonic() < end:
            granted, wait = limiter.take("webhook", block)
            with lock:
                if granted:
                    grants.append((time.monotonic(), granted))
            if granted < block:
                time.sleep(min(wait, 0.05))

    threads = [
        threading.Thread(target=take, args=(lim, b))
        for lim, b in zip(limiters, (4, 7), strict=True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    # A grant is timed when its call returned, so the window is taken a little short.
    busiest = max(sum(n for t, n in grants if start <= t < start + 0.95) for start, _ in grants)
    assert busiest <= limit, grants
    assert sum(n for _, n in grants) >= 2 * limit, grants  # about 2.5 windows' worth
