"""The Celery application and its configuration; nothing else happens on import.

Start a worker and beat with::

    celery -A campaign_worker.entrypoints.celery_app worker -l INFO
    celery -A campaign_worker.entrypoints.celery_app beat -l INFO

Settings come from ``celeryconfig`` (repo root; ``CELERY_CONFIG_MODULE`` names another
module) and from ``campaign_worker.settings`` (MongoDB, batch sizes, poll interval), read
when the configuration is first needed, not when this module is imported. Settings that
do not validate stop the process then with one line naming the variable and exit code 78
(``on_configure``): a process that cannot be configured must not run.

The rest lives by concern: the task policy and base class (``task_policy.py``), the
worker's start and process lifecycle (``worker_lifecycle.py``), observability through
signals (``observability.py``), this process's container (``container.py``).
"""

from __future__ import annotations

import os
import sys
from typing import Any

from celery import Celery

from campaign_worker.domain.errors import ConfigurationError
from campaign_worker.entrypoints import observability, worker_lifecycle
from campaign_worker.entrypoints.preflight import EXIT_CONFIG
from campaign_worker.settings import Settings, get_settings

TASKS_MODULE = "campaign_worker.entrypoints.tasks"
DELIVERY_TASKS_MODULE = "campaign_worker.entrypoints.delivery_tasks"


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    """The poller runs every ``POLL_INTERVAL_SECONDS``; a poll nobody picked up within one
    interval expires (the next one supersedes it) instead of piling up."""
    interval = settings.poll_interval_seconds
    reconcile = settings.reconcile_interval_seconds
    return {
        "poll-campaigns": {
            "task": "campaign_worker.poll_campaigns",
            "schedule": interval,
            "options": {"queue": "polling", "expires": max(interval, 1.0)},
        },
        "reconcile-metrics": {
            "task": "campaign_worker.reconcile_metrics",
            "schedule": reconcile,
            "options": {"queue": "polling", "expires": max(reconcile, 1.0)},
        },
        # The dispatcher's backstop: a full batch enqueues the next one itself.
        "dispatch-deliveries": {
            "task": "campaign_worker.dispatch_deliveries",
            "schedule": settings.delivery_interval_seconds,
            "options": {
                "queue": "delivery",
                "expires": max(settings.delivery_interval_seconds, 1.0),
            },
        },
    }


def _settings_or_exit(**_: Any) -> None:
    """Before the configuration loads: the settings (Celery's included, via celeryconfig)
    validate, or a one-line reason and exit code 78 before anything starts."""
    try:
        get_settings()
    except ConfigurationError as exc:
        sys.stderr.write(f"campaign-worker: {exc}\n")
        raise SystemExit(EXIT_CONFIG) from None


def _schedule(source: Any = None, **_: Any) -> None:
    """Once configured: the beat schedule, from the settings."""
    source.beat_schedule = beat_schedule(get_settings())


app = Celery("campaign_worker", include=[TASKS_MODULE, DELIVERY_TASKS_MODULE])
app.config_from_object(os.environ.get("CELERY_CONFIG_MODULE") or "celeryconfig")
# Every task message is checked before Celery sees it: kept as a dead letter, never dropped.
app.conf.worker_consumer = "campaign_worker.entrypoints.consumer:GuardedConsumer"
app.on_configure.connect(_settings_or_exit, weak=False)
app.on_after_configure.connect(_schedule, weak=False)
observability.install(app)
worker_lifecycle.install()


__all__ = ["app", "beat_schedule"]
