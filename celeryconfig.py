"""Celery settings for campaign-worker (lowercase names), read from the one settings source.

Loaded by ``campaign_worker.entrypoints.celery_app`` (``CELERY_CONFIG_MODULE`` names another
module instead). Installed as a top-level module, so it imports wherever the worker runs.
Every value comes from ``campaign_worker.settings.Settings`` (the environment, validated):
a bad value raises ``ConfigurationError`` naming the variable and the expected form.

Environment variables (defaults in brackets):

- ``CELERY_BROKER_URL`` [redis://localhost:6379/0]; ``CELERY_RESULT_BACKEND`` [none]
- ``CELERY_VISIBILITY_TIMEOUT`` seconds [3600]: Redis redelivers an unacked message after it
- ``CELERY_TASK_SOFT_TIME_LIMIT`` [240] / ``CELERY_TASK_TIME_LIMIT`` [300] seconds; both must
  stay below the visibility timeout (checked), or a running task gets redelivered
- ``CELERY_PREFETCH_MULTIPLIER`` [1]: a batch task never waits behind another prefetched one
- ``CELERY_RETRY_BACKOFF_MAX`` [300] seconds, ``CELERY_MAX_RETRIES`` [10]: transient errors
- ``CELERY_DEFAULT_QUEUE`` [celery]: control tasks and anything sent without a queue
- ``CELERY_SEND_TASK_EVENTS`` [false]: Flower switches events on by itself when it starts
- ``CELERY_RESULT_EXPIRES`` [86400] seconds, ``CELERY_MAX_TASKS_PER_CHILD`` [10000]
"""

from __future__ import annotations

from kombu import Exchange, Queue

from campaign_worker.settings import load_settings

# Read afresh (not the cached copy): tests reload this module under other environments.
_settings = load_settings()

# --------------------------------------------------------------------- broker and results
broker_url = _settings.celery_broker_url
result_backend = _settings.celery_result_backend or None
task_ignore_result = result_backend is None
result_expires = _settings.celery_result_expires
broker_connection_retry_on_startup = True
# A worker waits for its broker as long as it takes (retrying every 2, 4, ... up to 30 s)
# instead of giving up after Celery's default of 100 attempts (about 45 minutes) and exiting;
# `campaign-worker health` reports the broker down meanwhile (exit code 1).
broker_connection_retry = True
broker_connection_max_retries = None

visibility_timeout = _settings.celery_visibility_timeout
# RabbitMQ: publisher confirms. Whatever the worker publishes itself (a task's retry, which
# is published before the message it came from is acknowledged; a fan-out) returns only once
# the broker confirmed it - for a durable queue, written to disk. Without them a kill -9 of
# the node a second after the publishes lost every one (tests/fault/
# test_broker_kill_persistence_fault.py). Redis answers each write after appending it to the
# AOF; the option is not passed to it.
_confirm = {"confirm_publish": True} if broker_url.startswith(("amqp", "pyamqp")) else {}
broker_transport_options = {"visibility_timeout": visibility_timeout, **_confirm}
result_backend_transport_options = {"visibility_timeout": visibility_timeout}

# --------------------------------------------------------------------- serialization
task_serializer = "json"
result_serializer = "json"
event_serializer = "json"
accept_content = ["json"]
result_accept_content = ["json"]
enable_utc = True
timezone = "UTC"

# --------------------------------------------------------------------- delivery guarantees
# Ack after the task ran: a worker that dies mid-task leaves the message to be redelivered.
# Every task is idempotent (leases, compare-and-set writes, deterministic ids), so a
# redelivery is harmless.
task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = _settings.celery_prefetch_multiplier
# Both below the visibility timeout (checked by Settings), or a running task is redelivered.
task_soft_time_limit = _settings.celery_task_soft_time_limit
task_time_limit = _settings.celery_task_time_limit

# Read by the task base class (campaign_worker.entrypoints.celery_app): autoretry policy
# for transient errors. Exponential backoff with full jitter, capped below the visibility
# timeout so a waiting retry is never redelivered early.
campaign_retry_backoff_max = min(_settings.celery_retry_backoff_max, visibility_timeout // 2)
campaign_max_retries = _settings.celery_max_retries

# --------------------------------------------------------------------- queues and routes
# Separate queues so a large initialization or a processing backlog never starves replies.
# Each queue uses Celery's default declaration (direct exchange of the same name), so a
# client that only knows the queue name declares it identically (RabbitMQ checks).
task_default_queue = _settings.celery_default_queue
task_queues = [
    Queue(name, Exchange(name), routing_key=name)
    for name in (
        task_default_queue,
        "polling",
        "initialization",
        "processing",
        "inbound",
        "delivery",
    )
]
task_routes = {
    "campaign_worker.poll_campaigns": {"queue": "polling"},
    "campaign_worker.reconcile_metrics": {"queue": "polling"},
    "campaign_worker.initialize_campaign": {"queue": "initialization"},
    # Like an initialization: a rare operator job that walks a whole campaign.
    "campaign_worker.migrate_campaign": {"queue": "initialization"},
    "campaign_worker.process_conversations": {"queue": "processing"},
    "campaign_worker.record_inbound_message": {"queue": "inbound"},
    # Users' events: batched like replies. Enrollment: inserts like an initialization.
    "campaign_worker.record_event": {"queue": "inbound"},
    "campaign_worker.enroll_recipients": {"queue": "initialization"},
    "campaign_worker.mark_conversation_complete": {"queue": "inbound"},
    "campaign_worker.resolve_reply": {"queue": "inbound"},
    "campaign_worker.dispatch_deliveries": {"queue": "delivery"},
    "campaign_worker.record_delivery_status": {"queue": "inbound"},
}

# --------------------------------------------------------------------- worker
worker_send_task_events = _settings.celery_send_task_events
task_send_sent_event = worker_send_task_events
worker_max_tasks_per_child = _settings.celery_max_tasks_per_child
# On a broker connection loss, let running tasks finish (on Redis their ack lands once Redis
# is back) rather than kill them. With Redis, a killed task's message is restored to its
# queue only if Redis is reachable at that very moment - during a restart it is not - so it
# would wait out the whole visibility timeout. With RabbitMQ the broker requeues the unacked message
# at once, so the task may run a second time alongside: every task is idempotent. Celery
# warns (CPendingDeprecationWarning) at each connection loss that 6.0 changes the default;
# this setting keeps the behaviour.
worker_cancel_long_running_tasks_on_connection_loss = False
