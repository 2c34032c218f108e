"""kill -9 of Redis (broker and result backend, no persistence) several times while a
campaign runs, each time restarted empty: every queued and unacknowledged task message is
lost. The worker and beat survive or are started again by the supervisor, and the poller
rebuilds every piece of work from MongoDB: an initialization whose task was lost is claimed
again once its lease expires, a processing range whose task was lost is dispatched again
once its registration is older than the lease, and outbox rows are dispatched by the next
``dispatch_deliveries`` (webhook channel, a local receiver). Replies lost with the broker
are sent again by the audience (same message ids) until recorded: the other service's
at-least-once, and the reason recording a reply is idempotent.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.delivery_support import WebhookReceiver
from tests.fault.proc_support import Audience, Scenario, at_progress, scenario

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

N = 120
CAMPAIGN = "fault-redis-kill"
SECRET = "fault-secret-0123456789abcdef"


def kill_redis(s: Scenario) -> bool:
    s.redis.kill()
    s.fault("redis_kill9_queues_lost")
    time.sleep(1.0)
    s.redis.start()  # same port, empty
    return True


def while_initializing(s: Scenario) -> bool:
    doc = s.db["campaigns"].find_one({"_id": CAMPAIGN}, {"status": 1}) or {}
    if doc.get("status") != "initializing":
        return False
    if s.db["conversation_states"].count_documents({"campaign_id": CAMPAIGN}) == 0:
        return False
    return kill_redis(s)


def test_redis_killed_and_restarted_empty_mid_run(
    wire_uri: str, e2e_db_name: str, tmp_path: Path
) -> None:
    with (
        WebhookReceiver(SECRET.encode()) as receiver,
        scenario(
            "redis_kill",
            tmp_path,
            wire_uri,
            e2e_db_name,
            INIT_BATCH_SIZE="5",  # a slow initialization, so a kill lands in it
            INIT_BATCHES_PER_TASK="2",
            DELIVERY_DEFAULT_CHANNEL="webhook",
            WEBHOOK_URL=receiver.url,
            WEBHOOK_SECRET=SECRET,
            WEBHOOK_CONNECT_TIMEOUT_SECONDS="1",
            WEBHOOK_READ_TIMEOUT_SECONDS="1",
            DELIVERY_INTERVAL_SECONDS="1",
            DELIVERY_LEASE_SECONDS="10",
            DELIVERY_BATCH_SIZE="50",
        ) as s,
    ):
        s.supervisor.worker("worker", concurrency=2)
        s.supervisor.beat("beat")
        s.create(N, CAMPAIGN)
        expected_sends = N * 7 // 4
        faults: list[Callable[[Scenario], bool]] = [
            while_initializing,
            *at_progress(CAMPAIGN, [expected_sends * k // 10 for k in (2, 4, 6)], kill_redis),
        ]
        audience = Audience(s.client, s.db, CAMPAIGN, delivered_only=True)
        run_seconds = s.run(audience, faults, timeout=240)
        assert s.faults["redis_kill9_queues_lost"] == 4
        s.notes["worker_restarts"] = s.supervisor.restarts["worker"]
        accepted = receiver.accepted()
        s.notes["webhook_accepted"] = sum(accepted.values())
        s.notes["webhook_accepted_twice"] = sum(1 for n in accepted.values() if n > 1)
        figures = s.finish(CAMPAIGN, N, run_seconds)
        assert figures["webhook_accepted_twice"] == 0, figures
        assert figures["webhook_accepted"] == figures["messages_recorded"]
