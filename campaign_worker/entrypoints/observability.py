"""Observability at the edges: Celery signals bind log context and record task metrics.

Imported by the Celery app module. ``prepare_multiprocess_dir`` must run before anything
imports prometheus_client, because the client picks its value store at import time.
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

log = structlog.get_logger(__name__)

_CONTEXT_KEYS = ("campaign_id", "conversation_id", "user_id", "message_id")
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
) -> dict[str, Any]:
    """The log context of one task run: ids from its arguments where known."""
    context: dict[str, Any] = {"task_id": task_id, "task_name": task_name}
    for key in _CONTEXT_KEYS:
        value = (kwargs or {}).get(key)
        if isinstance(value, str | int):
            context[key] = value
    # Public tasks take the campaign id first; bind it for positional calls too.
    if (
        "campaign_id" not in context
        and args
        and task_name
        and task_name.endswith(
            (
                "initialize_campaign",
                "process_conversations",
                "record_inbound_message",
                "pause_campaign",
                "resume_campaign",
                "cancel_campaign",
                "get_campaign_metrics",
                "reconcile_metrics",
            )
        )
        and isinstance(args[0], str)
    ):
        context["campaign_id"] = args[0]
    if (
        "conversation_id" not in context
        and args
        and task_name
        and task_name.endswith("mark_conversation_complete")
        and isinstance(args[0], str)
    ):
        context["conversation_id"] = args[0]
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
    structlog.contextvars.bind_contextvars(
        **task_context(task_id, getattr(task, "name", None), args, kwargs)
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


def start_metrics_server(port: int, host: str = "0.0.0.0") -> None:
    """Serve /metrics, aggregating every prefork child (worker main process only)."""
    if port <= 0:
        return
    from prometheus_client import start_http_server

    from campaign_worker.adapters.metrics import registry_for_exposition

    registry = registry_for_exposition(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
    if registry is None:
        start_http_server(port, addr=host)
    else:
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
