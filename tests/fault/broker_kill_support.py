"""The broker killed with -9 while replies are queued in it, with the persistence the README
recommends (tests/fault/test_broker_kill_persistence_fault.py).

A campaign sends its first message to every recipient; the worker and beat are stopped
(warm shutdown), so what the other service publishes next stays in the broker. The other
service publishes one reply per recipient, each acknowledged by the broker (Redis answered
the LPUSH; RabbitMQ confirmed the publish): an *early* half, a pause, then a *late* half
right before ``kill -9``. The broker is restarted on its data, the worker and beat are
started again and drain the queue, the audience answers what follows, the campaign completes
and the checker passes. Figures: how many of each half the broker kept (counted in the
broker before any consumer is back) and how many were recorded.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.e2e.conftest import wait_until
from tests.e2e.private_rabbitmq import PrivateRabbitMQ
from tests.e2e.private_redis import PrivateRedis
from tests.e2e.scenario import INBOUND, reply_for, user_id
from tests.fault.proc_support import Audience, Scenario

TEMPLATES = Path(__file__).resolve().parent / "templates"
# Between the halves (then the kill at once): past the 2 s Redis may postpone a write.
SETTLE_SECONDS = 3.0


def answering_payload(n: int, campaign_id: str) -> dict[str, Any]:
    """``n`` recipients who all answer the first message (kinds 0-2 of tests/e2e/scenario:
    YES then BUY, STOP, YES then silence), on the ``queued`` flow: a conversation whose
    reply the broker lost waits its 40 s and fails."""
    indices = [i for i in range(n * 4) if i % 4 != 3][:n]
    return {
        "_id": campaign_id,
        "name": "fault broker kill",
        "campaign_type": "queued",
        "template_id": "fault",
        "recipients": [
            {"user_id": user_id(i), "attributes": {"first_name": f"Tester{i}"}} for i in indices
        ],
    }


@contextlib.contextmanager
def broker_scenario(
    name: str, broker: PrivateRedis | PrivateRabbitMQ, tmp_path: Path, uri: str, db: str
) -> Iterator[Scenario]:
    """A scenario on ``broker`` (started here, stopped at the end), the fault templates,
    and a client that asks RabbitMQ to confirm every publish."""
    broker.start()
    confirm = {"confirm_publish": True} if isinstance(broker, PrivateRabbitMQ) else {}
    world = Scenario(
        name,
        tmp_path,
        broker,
        uri,
        db,
        extra_env={"CAMPAIGN_TEMPLATES_DIR": str(TEMPLATES)},
        client_transport_options=confirm,
    )
    try:
        yield world
    finally:
        world.close()
        broker.stop()


def start_processes(s: Scenario, suffix: str = "") -> None:
    s.supervisor.worker(f"worker{suffix}", concurrency=2)
    s.supervisor.beat(f"beat{suffix}")


def stop_processes(s: Scenario) -> None:
    """SIGTERM (Celery's warm shutdown) to every supervised process; none is restarted."""
    for label in list(s.supervisor.managed):
        s.procs.stop(s.supervisor.managed.pop(label).proc)


def first_messages(s: Scenario, campaign_id: str, n: int) -> list[dict[str, Any]]:
    query = {"campaign_id": campaign_id, "stage": "hello", "step": 0}

    def all_sent() -> list[dict[str, Any]] | None:
        rows = list(s.db["outbox"].find(query, {"user_id": 1, "stage": 1, "step": 1}))
        return rows if len(rows) >= n else None

    rows: list[dict[str, Any]] = wait_until(all_sent, 45, f"{n} first messages in the outbox")
    return sorted(rows, key=lambda row: str(row["_id"]))


def publish(s: Scenario, campaign_id: str, rows: list[dict[str, Any]]) -> list[str]:
    """One reply per row, each published once (no resend): returns the message ids. Each
    ``send_task`` returns once the broker acknowledged it (RabbitMQ: confirmed)."""
    ids = []
    for row in rows:
        content = reply_for(row)
        assert content is not None
        message_id = f"reply-{row['_id']}"
        kwargs = {
            "campaign_id": campaign_id,
            "user_id": row["user_id"],
            "message_id": message_id,
            "content": content,
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "metadata": {"channel": "sms"},
        }
        s.client.send_task(INBOUND, kwargs=kwargs, queue="inbound", retry=False)
        ids.append(message_id)
    return ids


def queued_in_broker(s: Scenario) -> int:
    """Replies waiting in the ``inbound`` queue (no consumer runs)."""
    if isinstance(s.redis, PrivateRabbitMQ):
        return s.redis.queue_counts().get("inbound", (0, 0))[0]
    client = s.redis.client()
    try:
        return int(client.llen("inbound"))
    finally:
        client.close()


def recorded(s: Scenario, campaign_id: str, ids: list[str]) -> int:
    wanted = set(ids)
    found = {
        entry.get("message_id")
        for doc in s.db["conversation_states"].find(
            {"campaign_id": campaign_id}, {"message_history.message_id": 1}
        )
        for entry in doc.get("message_history", [])
    }
    return len(wanted & found)


def kill_with_replies_queued(s: Scenario, campaign_id: str, n: int) -> dict[str, Any]:
    """The whole scenario up to the campaign's completion and the checker (``finish``).
    Returns the figures, with ``early``/``late`` published, kept in the broker, recorded."""
    start_processes(s)
    s.create(n, campaign_id, answering_payload(n, campaign_id))
    rows = first_messages(s, campaign_id, n)
    stop_processes(s)
    early = publish(s, campaign_id, rows[: n // 2])
    time.sleep(SETTLE_SECONDS)
    late = publish(s, campaign_id, rows[n // 2 :])
    s.redis.kill()  # at once: the late half was acknowledged a few milliseconds ago
    s.fault("broker_kill9_replies_queued")
    s.redis.start()  # same port, same data directory
    kept = queued_in_broker(s)
    s.client.close()
    s.client = s.new_client()  # the old connection died with the broker
    start_processes(s, "-after")
    audience = Audience(s.client, s.db, campaign_id)
    audience.handled |= {str(row["_id"]) for row in rows}  # answered above, never again
    run_seconds = s.run(audience, [], timeout=75)
    got_early, got_late = recorded(s, campaign_id, early), recorded(s, campaign_id, late)
    audience.replies += got_early + got_late  # finish: every reply sent was recorded once
    s.notes.update(
        published_early=len(early),
        published_late=len(late),
        kept_in_broker=kept,
        lost_early=len(early) - got_early,
        lost_late=len(late) - got_late,
    )
    return s.finish(campaign_id, n, run_seconds)
