"""Every Prometheus metric of the worker, defined once.

Names are ``campaign_worker_<what>_<unit>``. Prefork children share values through
prometheus-client's multiprocess mode: the process that starts the worker sets
``PROMETHEUS_MULTIPROC_DIR`` *before* this module is imported (see
``entrypoints.observability.prepare_multiprocess_dir``) and the ``/metrics`` endpoint
aggregates every child's files.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from pymongo import monitoring

log = structlog.get_logger(__name__)

NAMESPACE = "campaign_worker"

_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_MONGO_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
_BATCH_BUCKETS = (1, 5, 10, 25, 50, 100, 200, 500, 1000, 2000, 5000)

CONVERSATIONS_INITIALIZED = Counter(
    "conversations_initialized",
    "Conversations created by campaign initialization.",
    ["campaign_type"],
    namespace=NAMESPACE,
)
STAGE_TRANSITIONS = Counter(
    "stage_transitions",
    "Transitions that happened: from a stage to another (to_stage) or out (exit:<outcome>).",
    ["campaign_type", "from_stage", "to_stage"],
    namespace=NAMESPACE,
)
CONVERSATIONS_FINISHED = Counter(
    "conversations_finished",
    "Conversations that ended, by outcome.",
    ["campaign_type", "outcome"],
    namespace=NAMESPACE,
)
MESSAGES_SENT = Counter(
    "messages_sent",
    "Outbound messages written to the outbox.",
    ["channel"],
    namespace=NAMESPACE,
)
MESSAGES_RECEIVED = Counter(
    "messages_received",
    "Inbound messages recorded (duplicates excluded).",
    ["channel"],
    namespace=NAMESPACE,
)
DELIVERY_STATUSES = Counter(
    "delivery_statuses",
    "Messages per delivery status (sent, delivered, bounced, failed, complained) and "
    "channel, each message counted once per status.",
    ["channel", "status"],
    namespace=NAMESPACE,
)
DELIVERY_ATTEMPTS = Counter(
    "delivery_attempts",
    "Dispatcher outcomes per channel: sent, retry, failed, deferred (rate limit), lost "
    "(lease taken over).",
    ["channel", "outcome"],
    namespace=NAMESPACE,
)
MESSAGES_DEFERRED = Counter(
    "messages_deferred",
    "Sends held back by the cross-campaign frequency cap (deferred, not dropped).",
    ["channel"],
    namespace=NAMESPACE,
)
SUPPRESSED_SENDS = Counter(
    "suppressed_conversations",
    "Conversations ended because their recipient is on the suppression list.",
    ["campaign_type"],
    namespace=NAMESPACE,
)
REPLY_REVIEWS = Counter(
    "reply_reviews",
    "Replies held for review (event=held) and reviews resolved (event=resolved); pending "
    "is held minus resolved (exactly: the metrics document's reviews.pending)",
    ["campaign_type", "event"],
    namespace=NAMESPACE,
)
TASK_DURATION = Histogram(
    "task_duration_seconds",
    "Wall time of each task run.",
    ["task"],
    namespace=NAMESPACE,
    buckets=_SECONDS_BUCKETS,
)
TASK_FAILURES = Counter(
    "task_failures",
    "Task runs that raised, by exception class.",
    ["task", "reason"],
    namespace=NAMESPACE,
)
TASK_RETRIES = Counter(
    "task_retries",
    "Task runs scheduled for retry.",
    ["task", "reason"],
    namespace=NAMESPACE,
)
BATCH_SIZE = Histogram(
    "batch_size",
    "Documents handled per batch.",
    ["operation"],
    namespace=NAMESPACE,
    buckets=_BATCH_BUCKETS,
)
MONGO_OPERATION_DURATION = Histogram(
    "mongo_operation_duration_seconds",
    "MongoDB command round-trip time.",
    ["command"],
    namespace=NAMESPACE,
    buckets=_MONGO_BUCKETS,
)
DEAD_LETTERS = Counter(
    "dead_letters",
    "Task messages stored in dead_letters, by task and reason (invalid_input, "
    "retries_exhausted, error, unknown_task, malformed_envelope, undecodable_body).",
    ["task", "reason"],
    namespace=NAMESPACE,
)
POLLER_LAG = Gauge(
    "poller_lag_seconds",
    "Now minus the oldest due next_action_at (0 when none is due).",
    namespace=NAMESPACE,
    multiprocess_mode="mostrecent",
)
METRICS_DRIFT = Counter(
    "metrics_drift",
    "Absolute drift corrected by the metrics reconcile, by field.",
    ["field"],
    namespace=NAMESPACE,
)


class PrometheusRecorder:
    """The service's MetricsRecorder port, backed by the counters above."""

    def conversations_initialized(self, campaign_type: str, count: int) -> None:
        CONVERSATIONS_INITIALIZED.labels(campaign_type).inc(count)

    def stage_transition(self, campaign_type: str, from_stage: str, to_stage: str) -> None:
        STAGE_TRANSITIONS.labels(campaign_type, from_stage, to_stage).inc()

    def conversation_finished(self, campaign_type: str, outcome: str) -> None:
        CONVERSATIONS_FINISHED.labels(campaign_type, outcome).inc()

    def messages_sent(self, channel: str, count: int) -> None:
        MESSAGES_SENT.labels(channel).inc(count)

    def messages_received(self, channel: str, count: int) -> None:
        MESSAGES_RECEIVED.labels(channel).inc(count)

    def batch_size(self, operation: str, size: int) -> None:
        BATCH_SIZE.labels(operation).observe(size)

    def messages_deferred(self, channel: str, count: int) -> None:
        MESSAGES_DEFERRED.labels(channel).inc(count)

    def suppressed(self, campaign_type: str, count: int) -> None:
        SUPPRESSED_SENDS.labels(campaign_type).inc(count)

    def reviews(self, campaign_type: str, event: str, count: int) -> None:
        REPLY_REVIEWS.labels(campaign_type, event).inc(count)

    def poller_lag(self, seconds: float) -> None:
        POLLER_LAG.set(seconds)


def delivery_counted(channel: str, status: str) -> None:
    DELIVERY_STATUSES.labels(channel, status).inc()


def delivery_attempts(channel: str, outcome: str, count: int) -> None:
    DELIVERY_ATTEMPTS.labels(channel, outcome).inc(count)


class MongoCommandTimer(monitoring.CommandListener):
    """Times every MongoDB command on the wire (pymongo command monitoring)."""

    def __init__(self) -> None:
        self._started: dict[tuple[Any, int], float] = {}

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self._started[(event.connection_id, event.request_id)] = time.perf_counter()

    def _finish(self, event: Any) -> None:
        begun = self._started.pop((event.connection_id, event.request_id), None)
        if begun is not None:
            MONGO_OPERATION_DURATION.labels(event.command_name).observe(time.perf_counter() - begun)

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        self._finish(event)

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        self._finish(event)


class QueueDepthCollector:
    """``campaign_worker_queue_depth{queue}``: messages ready in each of the app's queues,
    read from the broker when Prometheus scrapes (one connection per scrape). On Redis an
    empty queue has no key, which reads as 0; a broker that cannot be reached yields no
    samples (and a log line), so the scrape itself never fails."""

    NAME = f"{NAMESPACE}_queue_depth"

    def __init__(self, app: Any, timeout: float = 2.0) -> None:
        self.app = app
        self.timeout = timeout

    def describe(self) -> list[Metric]:
        return []  # registering must not touch the broker

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            self.NAME,
            "Messages waiting in each broker queue (not yet delivered).",
            labels=["queue"],
        )
        try:
            for queue, depth in self.depths():
                family.add_metric([queue], depth)
        except Exception as exc:  # the broker is down or slow: no samples this time
            log.warning("queue_depth_unavailable", error=str(exc))
        yield family

    def depths(self) -> Iterator[tuple[str, int]]:
        from kombu.exceptions import ChannelError

        with self.app.connection_for_read() as connection:
            connection.ensure_connection(max_retries=1, timeout=self.timeout)
            redis_like = connection.transport.driver_type == "redis"
            for queue in self.app.amqp.queues.values():
                with connection.channel() as channel:
                    try:
                        declared = queue(channel).queue_declare(passive=True)
                    except ChannelError:
                        if redis_like:
                            yield queue.name, 0  # no key: an empty list
                        continue
                    yield queue.name, int(declared.message_count)


def registry_for_exposition(multiprocess_dir: str | None) -> CollectorRegistry | None:
    """A registry aggregating all prefork children when in multiprocess mode."""
    if not multiprocess_dir:
        return None  # the default registry
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=multiprocess_dir)  # type: ignore[no-untyped-call]
    return registry
