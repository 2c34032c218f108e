"""The webhook dispatcher against an ideal client, same run, same local receiver.

For each provider latency (0, 50, 200 ms): a fresh campaign whose N first messages wait
in the outbox on the webhook channel; a local receiver (the demo's ``LocalReceiver``,
HTTP/1.1 keep-alive) that answers 200 after the latency; the dispatcher (one process,
``build_delivery`` with the real ``WebhookChannel``, no rate limit) draining the outbox
batch by batch; and beside it an ideal client: ``httpx.Client`` with the same
``max_in_flight`` threads and connections POSTing N bodies to the same receiver. The
ratio is the dispatcher's msgs/s over the ideal client's. MongoDB round trips of the
dispatcher (every command its batches send) are counted per 1,000 messages sent.
"""

from __future__ import annotations

import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import httpx
import yaml

from bench.figures import Figure
from bench.wire import Recorder
from campaign_worker.adapters.clock import SystemClock
from campaign_worker.adapters.memory_store import MemoryDatabase
from campaign_worker.adapters.rate_limit import NoRateLimit
from campaign_worker.bootstrap import build_manager, ensure_indexes
from campaign_worker.delivery_wiring import build_delivery, ensure_delivery_indexes
from campaign_worker.demo.webhook_receiver import LocalReceiver
from campaign_worker.settings import Settings

LATENCIES_MS = (0, 50, 200)
SECRET = "bench-webhook-secret"
TEMPLATE = {
    "template_id": "deliver",
    "channel": "webhook",
    "campaign_types": {
        "notice": {
            "stages": [
                {
                    "name": "hello",
                    "messages": [{"text": "Hello {first_name}", "wait": "1h"}],
                    "max_time_in_stage": {"after": "30d", "then": "fail"},
                }
            ]
        }
    },
}


class SlowReceiver(LocalReceiver):
    """Answers every POST with 200 after ``latency`` seconds."""

    def __init__(self, latency: float) -> None:
        super().__init__()
        self.latency = latency
        self.requests = 0

    def handle(self, request: BaseHTTPRequestHandler) -> None:
        request.rfile.read(int(request.headers.get("Content-Length") or 0))
        if self.latency:
            time.sleep(self.latency)
        self.requests += 1  # a rough count (not locked): only for a sanity check
        request.send_response(200)
        request.send_header("Content-Length", "0")
        request.end_headers()


@dataclass
class Run:
    latency_ms: int
    sent: int
    dispatcher_rate: float
    ideal_rate: float
    round_trips: int
    batches: int
    memory_rate: float  # the same dispatcher over the in-memory store (no database)

    @property
    def ratio(self) -> float:
        return self.dispatcher_rate / self.ideal_rate if self.ideal_rate else 0.0


def ideal(url: str, n: int, in_flight: int) -> float:
    """msgs/s of ``n`` POSTs through one kept-alive ``httpx.Client``, ``in_flight`` at once."""
    limits = httpx.Limits(max_connections=in_flight, max_keepalive_connections=in_flight)
    body = b'{"content":"Hello","message_id":"m"}'
    with httpx.Client(limits=limits, timeout=30) as client:

        def post(i: int) -> int:
            return client.post(url, content=body, headers={"Idempotency-Key": f"k-{i}"}).status_code

        began = time.perf_counter()
        with ThreadPoolExecutor(in_flight) as pool:
            codes = list(pool.map(post, range(n)))
        seconds = time.perf_counter() - began
    assert set(codes) == {200}, set(codes)
    return n / seconds


def dispatcher(
    db: Any, recorder: Recorder, settings: Settings, n: int, url: str
) -> tuple[float, int, int, int]:
    """Fill the outbox with ``n`` first messages, then drain it: msgs/s, sent, commands,
    batches."""
    manager = build_manager(db, settings, clock=SystemClock())
    if not isinstance(db, MemoryDatabase):
        ensure_indexes(manager)
        ensure_delivery_indexes(db)
    campaign_id = f"bench-{uuid.uuid4().hex[:6]}"
    recipients = [
        {"user_id": f"u-{i:06d}", "attributes": {"first_name": f"Ann{i}"}} for i in range(n)
    ]
    manager.create_campaign(
        {
            "_id": campaign_id,
            "name": "dispatch bench",
            "campaign_type": "notice",
            "template_id": "deliver",
            "recipients": recipients,
        }
    )
    manager.initialize_campaign_conversations(campaign_id)
    while manager.process_due_conversations(campaign_id).claimed:
        pass
    configured = settings.model_copy(update={"webhook_url": url})
    delivery = build_delivery(db, manager, configured, limiter=NoRateLimit(), clock=SystemClock())
    sent = batches = 0
    try:
        with recorder.span() as span:
            began = time.perf_counter()
            while True:
                result = delivery.dispatcher.dispatch(f"bench-{uuid.uuid4().hex[:8]}")
                if not result.claimed:
                    break
                batches += 1
                sent += result.as_dict().get("sent", 0)
            seconds = time.perf_counter() - began
    finally:
        delivery.close()
    return sent / seconds, sent, span.total, batches


def measure(
    client: Any, recorder: Recorder, prefix: str, n: int, in_flight: int, batch: int
) -> list[Run]:
    runs: list[Run] = []
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "deliver.yaml").write_text(yaml.safe_dump(TEMPLATE))
        for latency in LATENCIES_MS:
            name = f"{prefix}_dispatch_{latency}"
            settings = Settings(
                mongodb_db=name,
                campaign_templates_dir=Path(tmp),
                webhook_url="http://127.0.0.1:1/",
                webhook_secret=SECRET,
                webhook_max_in_flight=in_flight,
                delivery_batch_size=batch,
            )
            receiver = SlowReceiver(latency / 1000)
            receiver.start()
            try:
                rate, sent, commands, batches = dispatcher(
                    client[name], recorder, settings, n, receiver.url
                )
                ideal_rate = ideal(receiver.url, n, in_flight)
                memory_rate = dispatcher(MemoryDatabase(), recorder, settings, n, receiver.url)[0]
            finally:
                receiver.stop()
            runs.append(Run(latency, sent, rate, ideal_rate, commands, batches, memory_rate))
            print(
                f"  {latency:>3} ms: dispatcher {rate:,.0f} msgs/s ({sent} sent, {batches} "
                f"batches, {commands} commands), ideal {ideal_rate:,.0f} msgs/s, dispatcher "
                f"over the in-memory store {memory_rate:,.0f} msgs/s",
                flush=True,
            )
    return runs


def dispatch_section(
    client: Any, recorder: Recorder, prefix: str, n: int, in_flight: int = 32, batch: int = 1000
) -> list[Figure]:
    runs = measure(client, recorder, prefix, n, in_flight, batch)
    figures = []
    for run in runs:
        figures.append(
            Figure(
                f"dispatch_over_ideal_{run.latency_ms}ms",
                round(run.ratio, 3),
                f"ideal httpx client {run.ideal_rate:,.0f} msgs/s; dispatcher "
                f"{run.dispatcher_rate:,.0f} msgs/s",
                f"{n:,} messages, max_in_flight {in_flight}, batch {batch}, one process; over "
                f"the in-memory store (no database) {run.memory_rate / run.ideal_rate:.2f}",
                {"runs": [vars(r) for r in runs]} if run.latency_ms == 0 else None,
            )
        )
    sent = sum(r.sent for r in runs)
    commands = sum(r.round_trips for r in runs)
    figures.append(
        Figure(
            "dispatch_round_trips_per_1000",
            round(commands * 1000 / sent, 1) if sent else 0.0,
            f"before issue 23: 8.1 per message (8,100 per 1,000); {commands:,} commands for "
            f"{sent:,} sent",
            f"batch {batch}",
            {"commands": commands, "sent": sent},
        )
    )
    return figures


__all__ = ["dispatch_section", "ideal", "measure"]
