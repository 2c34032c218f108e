"""Observability, in one place, recorded at the edges through Celery signals
(``install(app)``, called by the Celery app module), as dramatiq's Prometheus middleware:

- Logging: Celery's ``setup_logging`` signal hands logging to our structlog pipeline, so
  Celery's and the standard library's records come out as the same JSON (or console) lines.
- Context: ``task_prerun``/``task_postrun`` bind and clear task_id, task_name and the ids
  among each task's arguments (named from its signature: no task list to keep up).
- Metrics (defined once in ``adapters/metrics.py``): task durations, failures and retries
  from task signals; the manager's recorder and a PyMongo command timer per worker
  process; dead letters by task and reason; reconcile drift; broker queue depth, read at
  scrape time. The multiprocess directory is prepared in ``celeryd_init``, before anything
  imports prometheus_client (its value store is chosen at import time), and ``/metrics``
  is served from the worker's main process.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import structlog
from celery import Celery, signals

from campaign_worker.entrypoints.requests import parameter_names
from campaign_worker.service.ports import MetricsRecorder
from campaign_worker.settings import Settings, get_settings

log = structlog.get_logger(__name__)

_CONTEXT_KEYS = ("campaign_id", "conversation_id", "user_id", "message_id")
_installed = False
_started: dict[str, float] = {}
_created_dir: str | None = None  # a directory we made (env unset), removed at shutdown


def prepare_multiprocess_dir(reset: bool = False) -> str:
    """Ensure PROMETHEUS_MULTIPROC_DIR exists (creating one under /tmp if unset).

    ``reset`` wipes files of a previous run; only the process that starts the worker (before
    any child forks) may do that.
    """
    global _created_dir
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not path:
        path = tempfile.mkdtemp(prefix="campaign-worker-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
        _created_dir = path
    directory = Path(path)
    if reset and directory.exists():
        for child in directory.iterdir():
            if child.is_file():
                child.unlink()
            else:
                shutil.rmtree(child, ignore_errors=True)
    directory.mkdir(parents=True, exist_ok=True)
    _use_multiprocess_values()
    return path


def _use_multiprocess_values() -> None:
    """Make metrics created from now on use the multiprocess (mmap file) value store.

    prometheus_client picks its value class when ``prometheus_client.values`` is first
    imported. The ``celery`` command imports it before any signal fires (Flower, installed
    as a celery command plugin, imports prometheus_client at load), so without this every
    metric would live in process memory and the /metrics endpoint would serve nothing.
    Our metrics module is imported later (lazily), so re-picking the class here is enough.
    """
    values = sys.modules.get("prometheus_client.values")
    if values is not None and not getattr(values.ValueClass, "_multiprocess", False):
        values.ValueClass = values.get_value_class()  # type: ignore[attr-defined]


def remove_created_multiprocess_dir() -> None:
    """At worker shutdown: delete the directory ``prepare_multiprocess_dir`` created."""
    global _created_dir
    if _created_dir is not None:
        shutil.rmtree(_created_dir, ignore_errors=True)
        _created_dir = None


def task_context(
    task_id: str | None,
    task_name: str | None,
    args: Sequence[Any] | None,
    kwargs: Mapping[str, Any] | None,
    names: Sequence[str] = (),
) -> dict[str, Any]:
    """The log context of one task run: the ids among its arguments, keyword or
    positional (``names``: the task's positional parameter names)."""
    context: dict[str, Any] = {"task_id": task_id, "task_name": task_name}
    positional = dict(zip(names, args if isinstance(args, list | tuple) else (), strict=False))
    for key in _CONTEXT_KEYS:
        value = (kwargs or {}).get(key, positional.get(key))
        if isinstance(value, str | int) and not isinstance(value, bool):
            context[key] = value
    return context


def on_task_prerun(
    task_id: str | None = None,
    task: Any = None,
    args: Sequence[Any] | None = None,
    kwargs: Mapping[str, Any] | None = None,
    **_: Any,
) -> None:
    from campaign_worker.adapters.logs import TaskSecrets, task_secrets

    structlog.contextvars.clear_contextvars()
    run = getattr(task, "run", None)
    names = parameter_names(run) if callable(run) else []
    structlog.contextvars.bind_contextvars(
        **task_context(task_id, getattr(task, "name", None), args, kwargs, names)
    )
    task_secrets.set(TaskSecrets(args, kwargs))  # scrubbed from this task's log lines
    if task_id:
        _started[task_id] = time.perf_counter()


def on_task_postrun(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    from campaign_worker.adapters import metrics

    begun = _started.pop(task_id or "", None)
    if begun is not None:
        metrics.TASK_DURATION.labels(getattr(task, "name", "unknown")).observe(
            time.perf_counter() - begun
        )
    structlog.contextvars.clear_contextvars()
    from campaign_worker.adapters.logs import task_secrets

    task_secrets.set(None)


def on_task_failure(
    sender: Any = None,
    task_id: str | None = None,
    exception: BaseException | None = None,
    **_: Any,
) -> None:
    from campaign_worker.adapters import metrics

    reason = type(exception).__name__ if exception is not None else "unknown"
    metrics.TASK_FAILURES.labels(getattr(sender, "name", "unknown"), reason).inc()


def on_task_retry(sender: Any = None, reason: Any = None, **_: Any) -> None:
    from campaign_worker.adapters import metrics

    label = type(reason).__name__ if isinstance(reason, BaseException) else "retry"
    metrics.TASK_RETRIES.labels(getattr(sender, "name", "unknown"), label).inc()


def start_metrics_server(port: int, host: str = "0.0.0.0", app: Celery | None = None) -> None:
    """Serve /metrics, aggregating every prefork child (worker main process only), with
    the depth of ``app``'s queues read from the broker at each scrape."""
    if port <= 0:
        return
    from prometheus_client import REGISTRY, start_http_server

    from campaign_worker.adapters.metrics import QueueDepthCollector, registry_for_exposition

    registry = registry_for_exposition(os.environ.get("PROMETHEUS_MULTIPROC_DIR")) or REGISTRY
    if app is not None:
        registry.register(QueueDepthCollector(app))
    start_http_server(port, addr=host, registry=registry)
    log.info(
        "metrics_server_started",
        host=host,
        port=port,
        multiprocess_dir=os.environ.get("PROMETHEUS_MULTIPROC_DIR"),
    )


def mark_process_dead(pid: int) -> None:
    """Let multiprocess mode drop a finished child's live gauges."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


# ----------------------------------------------------------------------------- wiring


def _setup_logging(**_: Any) -> None:
    from campaign_worker.adapters.logs import configure_logging, register_credentials

    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format, settings.log_redact_bodies)
    register_credentials(*settings.credentials())


def _json_console(instance: Any = None, **_: Any) -> None:
    """celeryd_init: with JSON logs, Celery's banner and console lines become JSON events
    too (``worker_starting``; ``worker: Warm shutdown`` via ``json_say``)."""
    from celery.apps import worker as celery_worker

    from campaign_worker.adapters.logs import json_say, uses_json

    if instance is None or not uses_json(get_settings().log_format, sys.__stdout__):
        return
    instance.quiet = True  # no ASCII-art banner on stdout
    celery_worker.safe_say = json_say  # type: ignore[attr-defined]


def _worker_starting(instance: Any = None, **_: Any) -> None:
    """celeryd_after_setup (queues from -Q applied): what the banner would have said."""
    from campaign_worker.adapters.logs import redact_uri

    if instance is None:
        return
    app = instance.app
    consumed = app.amqp.queues.consume_from or app.amqp.queues
    log.info(
        "worker_starting",
        hostname=instance.hostname,
        broker=redact_uri(str(app.conf.broker_url)),
        queues=sorted(consumed.keys()),
        concurrency=getattr(instance, "concurrency", None),
        pool=getattr(getattr(instance, "pool_cls", None), "__name__", None),
    )


def _prepare_metrics_dir(**_: Any) -> None:
    # celeryd_init: the worker's main process, before the pool forks.
    prepare_multiprocess_dir(reset=True)


def _start_metrics_server(sender: Any = None, **_: Any) -> None:
    settings = get_settings()
    app = getattr(sender, "app", None)
    start_metrics_server(settings.metrics_port, settings.metrics_host, app)


def _child_exited(pid: int | None = None, **_: Any) -> None:
    mark_process_dead(pid or os.getpid())


def _worker_stopped(**_: Any) -> None:
    remove_created_multiprocess_dir()


def install(app: Celery) -> None:
    """Connect the signal handlers; called once per process at import of the app."""
    global _installed
    if _installed:
        return
    _installed = True
    signals.setup_logging.connect(_setup_logging, weak=False)
    # Celery's setup_logging comes after celeryd_init and worker_init, whose handlers log
    # (metrics server, indexes) and its privilege warning: configure before them too.
    signals.celeryd_init.connect(_setup_logging, weak=False)
    signals.celeryd_init.connect(_json_console, weak=False)
    signals.celeryd_after_setup.connect(_worker_starting, weak=False)
    signals.celeryd_init.connect(_prepare_metrics_dir, weak=False)
    signals.worker_init.connect(_start_metrics_server, weak=False)
    signals.worker_process_shutdown.connect(_child_exited, weak=False)
    signals.worker_shutdown.connect(_worker_stopped, weak=False)
    signals.task_prerun.connect(on_task_prerun, weak=False)
    signals.task_postrun.connect(on_task_postrun, weak=False)
    signals.task_failure.connect(on_task_failure, weak=False)
    signals.task_retry.connect(on_task_retry, weak=False)


def metrics_recorder(settings: Settings) -> MetricsRecorder | None:
    """The recorder for this worker process's CampaignManager."""
    from campaign_worker.adapters.metrics import PrometheusRecorder

    return PrometheusRecorder()


def mongo_event_listeners(settings: Settings) -> Sequence[Any]:
    """PyMongo event listeners for this worker process's MongoClient."""
    from campaign_worker.adapters.metrics import MongoCommandTimer

    return (MongoCommandTimer(),)


def dead_lettered(task_name: str, reason: str) -> None:
    from campaign_worker.adapters.metrics import DEAD_LETTERS

    DEAD_LETTERS.labels(task_name, reason).inc()


def batch_ran(task_name: str, messages: int, seconds: float) -> None:
    """A batched task ran ``messages`` messages together: each counts as one run that took
    the batch's time (``task_duration_seconds`` stays one observation per message)."""
    from campaign_worker.adapters.metrics import TASK_DURATION

    histogram = TASK_DURATION.labels(task_name)
    for _ in range(messages):
        histogram.observe(seconds)


def drift_corrected(drift: dict[str, float]) -> None:
    from campaign_worker.adapters.metrics import METRICS_DRIFT

    for field, amount in drift.items():
        # Per-stage fields collapse to their kind, keeping label cardinality bounded.
        METRICS_DRIFT.labels(field.rsplit(".", 1)[-1]).inc(abs(amount))
