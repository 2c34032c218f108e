"""Hook points for observability (structured logs, Prometheus): the Celery runtime calls
these, and the observability code plugs in here (or in modules imported from here).

``celery_app`` calls, in every process that imports it (worker parent and children, beat,
Flower, CLI):

- ``install(app)`` once, at import: connect Celery signals here, e.g. ``task_prerun`` /
  ``task_postrun`` to bind and clear structlog context (task_id, task_name, campaign_id),
  ``task_success`` / ``task_failure`` / ``task_retry`` for task counters and durations
  (an ``InvalidInputError`` failure is a dead letter), ``worker_process_init`` for
  per-process exporters.

and, once per worker process after the fork, while building that process's Container:

- ``metrics_recorder(settings)``: the CampaignManager's ``MetricsRecorder`` (None: none).
- ``mongo_event_listeners(settings)``: PyMongo monitoring listeners for the process's
  MongoClient (e.g. a command latency histogram).

They do nothing yet.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from celery import Celery

from campaign_worker.service.ports import MetricsRecorder
from campaign_worker.settings import Settings


def install(app: Celery) -> None:
    """Connect signal handlers for ``app``; called once per process at import."""
    return None


def metrics_recorder(settings: Settings) -> MetricsRecorder | None:
    """The recorder for this worker process's CampaignManager."""
    return None


def mongo_event_listeners(settings: Settings) -> Sequence[Any]:
    """PyMongo event listeners for this worker process's MongoClient."""
    return ()
