"""``campaign-worker demo --webhook``: the sample campaign delivered through the webhook
channel to a local receiver (``webhook_receiver.py``) that verifies each signature and
reports delivery statuses back by task name."""

from __future__ import annotations

import secrets
import threading
import time
from typing import Any, TextIO

from campaign_worker.adapters.mongo_demo_reads import MongoDemoReads
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
    out: TextIO,
    reads: MongoDemoReads,
    campaign_id: str,
    receiver: DemoReceiver,
    stall: float = 30.0,
    cap: float = 300.0,
) -> bool:
    """Until every outbox row is sent or failed and every status came back; then a summary.

    The statuses queue up behind the campaign (hundreds at the default size, on a slow
    stand-in), so it waits while they are still being recorded: it gives up only after
    ``stall`` seconds without progress, or ``cap`` in all, and then says the figures are
    partial. True if everything was settled."""
    start = last_progress = time.monotonic()
    seen: tuple[int, int] | None = None
    while True:
        waiting = reads.deliveries_waiting(campaign_id)
        reported = receiver.counts["reported_delivered"] + receiver.counts["reported_bounced"]
        recorded = reads.statuses_recorded(campaign_id, ["delivered", "bounced"])
        unrecorded = max(0, reported - recorded)
        settled = waiting == 0 and unrecorded == 0
        now = time.monotonic()
        if (waiting, recorded) != seen:
            seen, last_progress = (waiting, recorded), now
        if settled or now - last_progress >= stall or now - start >= cap:
            break
        time.sleep(0.5)
    _summary(out, reads, campaign_id, receiver)
    if not settled:
        out.write(
            f"(stopped waiting after {time.monotonic() - start:.0f} s: {waiting} messages not "
            f"sent yet, {unrecorded} reported statuses not recorded yet; the figures above "
            "are partial)\n"
        )
    return settled


def _summary(out: TextIO, reads: MongoDemoReads, campaign_id: str, receiver: DemoReceiver) -> None:
    counts = dict(receiver.counts)
    delivery = reads.metrics(campaign_id).get("delivery", {})
    out.write(
        "\nWebhook receiver: "
        f"{counts.get('accepted', 0)} messages accepted (each Idempotency-Key once), "
        f"{counts.get('repeats', 0)} repeats (of {reads.sends_retried(campaign_id)} sends "
        f"retried), {counts.get('rejected', 0)} bad signatures; "
        f"reported {counts.get('reported_delivered', 0)} delivered, "
        f"{counts.get('reported_bounced', 0)} bounced\n"
        f"Metrics document, delivery per channel and status: {delivery}\n"
        f"Suppressed addresses (bounces, complaints): {reads.suppressed_by_delivery()}; "
        f"conversations ended by a bounce: {reads.ended_by_bounce(campaign_id)}\n"
    )


__all__ = ["start_receiver", "wait_for_deliveries"]
