"""Observability hook points, connected by the Celery app module (``install(app)``).

- Logging: Celery's ``setup_logging`` signal hands logging to our structlog pipeline, so
  Celery's and the standard library's records come out as the same JSON (or console) lines.
- Context: ``task_prerun``/``task_postrun`` bind and clear task_id, task_name and the
  campaign/conversation ids of every task, so no task binds anything by hand.
- Metrics: task durations, failures and retries from task signals; the manager's
  recorder and a PyMongo command timer per worker process; the multiprocess directory is
  prepared in ``celeryd_init``, before anything imports prometheus_client, and the
  ``/metrics`` server runs in the worker's main process.

Nothing here imports prometheus_client at module level: its value store is chosen at
import time, and must be the multiprocess one in workers.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from celery import Celery, signals

from campaign_worker.entrypoints import observability as obs
from campaign_worker.service.ports import MetricsRecorder
from campaign_worker.settings import Settings, get_settings

_installed = False


def _setup_logging(**_: Any) -> None:
    from campaign_worker.adapters.logs import configure_logging

    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format, settings.log_redact_bodies)


def _prepare_metrics_dir(**_: Any) -> None:
    # celeryd_init: the worker's main process, before the pool forks.
    obs.prepare_multiprocess_dir(reset=True)


def _start_metrics_server(**_: Any) -> None:
    settings = get_settings()
    obs.start_metrics_server(settings.metrics_port, settings.metrics_host)


def _child_exited(pid: int | None = None, **_: Any) -> None:
    obs.mark_process_dead(pid or os.getpid())


def _worker_stopped(**_: Any) -> None:
    obs.remove_created_multiprocess_dir()


def install(app: Celery) -> None:
    """Connect signal handlers; called once per process at import of the app."""
    global _installed
    if _installed:
        return
    _installed = True
    signals.setup_logging.connect(_setup_logging, weak=False)
    # Celery's setup_logging comes after celeryd_init and worker_init, whose handlers log
    # (metrics server, indexes) and its privilege warning: configure before them too.
    signals.celeryd_init.connect(_setup_logging, weak=False)
    signals.celeryd_init.connect(_prepare_metrics_dir, weak=False)
    signals.worker_init.connect(_start_metrics_server, weak=False)
    signals.worker_process_shutdown.connect(_child_exited, weak=False)
    signals.worker_shutdown.connect(_worker_stopped, weak=False)
    signals.task_prerun.connect(obs.on_task_prerun, weak=False)
    signals.task_postrun.connect(obs.on_task_postrun, weak=False)
    signals.task_failure.connect(obs.on_task_failure, weak=False)
    signals.task_retry.connect(obs.on_task_retry, weak=False)


def metrics_recorder(settings: Settings) -> MetricsRecorder | None:
    """The recorder for this worker process's CampaignManager."""
    from campaign_worker.adapters.metrics import PrometheusRecorder

    return PrometheusRecorder()


def mongo_event_listeners(settings: Settings) -> Sequence[Any]:
    """PyMongo event listeners for this worker process's MongoClient."""
    from campaign_worker.adapters.metrics import MongoCommandTimer

    return (MongoCommandTimer(),)


def dead_lettered(task_name: str) -> None:
    from campaign_worker.adapters.metrics import DEAD_LETTERS

    DEAD_LETTERS.labels(task_name).inc()


def drift_corrected(drift: dict[str, float]) -> None:
    from campaign_worker.adapters.metrics import METRICS_DRIFT

    for field, amount in drift.items():
        # Per-stage fields collapse to their kind, keeping label cardinality bounded.
        METRICS_DRIFT.labels(field.rsplit(".", 1)[-1]).inc(abs(amount))
