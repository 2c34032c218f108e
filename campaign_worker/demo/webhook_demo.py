"""``campaign-worker demo --webhook``: the sample campaign delivered through the webhook
channel to a local receiver (``webhook_receiver.py``) that verifies each signature and
reports delivery statuses back by task name."""

from __future__ import annotations

import secrets
import threading
import time
from typing import Any, TextIO

from campaign_worker.demo.webhook_receiver import DemoReceiver

STATUS_TASK = "campaign_worker.record_delivery_status"


def start_receiver(out: TextIO, client: Any, env: dict[str, str]) -> DemoReceiver:
    """Start the receiver and point the worker's webhook channel at it (``env``)."""
    secret = secrets.token_hex(16)
    lock = threading.Lock()  # one Celery producer, shared by the server's threads

    def report(message_id: str, status: str, detail: dict[str, Any] | None) -> None:
        with lock:
            client.send_task(
                STATUS_TASK, kwargs={"message_id": message_id, "status": status, "detail": detail}
            )

    receiver = DemoReceiver(secret.encode(), report)
    receiver.start()
    env.update(
        {
            "DELIVERY_DEFAULT_CHANNEL": "webhook",
            "WEBHOOK_URL": receiver.url,
            "WEBHOOK_SECRET": secret,
            "DELIVERY_INTERVAL_SECONDS": "1",
        }
    )
    out.write(f"Webhook receiver at {receiver.url} (messages go out on the webhook channel)\n")
    return receiver


def wait_for_deliveries(
    out: TextIO, db: Any, campaign_id: str, receiver: DemoReceiver, timeout: float = 30.0
) -> None:
    """Until every outbox row is sent or failed and every status came back; then a summary."""
    deadline = time.monotonic() + timeout
    outbox = db.outbox
    while time.monotonic() < deadline:
        waiting = outbox.count_documents(
            {"campaign_id": campaign_id, "status": {"$in": ["pending", "sending"]}}
        )
        reported = receiver.counts["reported_delivered"] + receiver.counts["reported_bounced"]
        recorded = outbox.count_documents(
            {"campaign_id": campaign_id, "delivery.status": {"$in": ["delivered", "bounced"]}}
        )
        if waiting == 0 and recorded >= reported:
            break
        time.sleep(0.5)
    metrics = db.campaign_metrics.find_one({"_id": campaign_id}) or {}
    counts = dict(receiver.counts)
    out.write(
        "\nWebhook receiver: "
        f"{counts.get('accepted', 0)} messages accepted (each Idempotency-Key once), "
        f"{counts.get('repeats', 0)} repeats, {counts.get('rejected', 0)} bad signatures; "
        f"reported {counts.get('reported_delivered', 0)} delivered, "
        f"{counts.get('reported_bounced', 0)} bounced\n"
        f"Metrics document, delivery per channel and status: {metrics.get('delivery', {})}\n"
        "Suppressed addresses (bounces, complaints): "
        f"{db.suppressions.count_documents({'source': {'$in': ['bounce', 'complaint']}})}; "
        "conversations "
        "ended by a bounce: "
        f"{db.conversation_states.count_documents({'status_reason': {'$regex': '^hard bounce'}})}\n"
    )


__all__ = ["start_receiver", "wait_for_deliveries"]
