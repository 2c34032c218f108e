"""Celery's own cost, the baseline for worker CPU (``-A bench.noop_app``).

A bare Celery app with the project's Celery settings (``celeryconfig``: late acks,
prefetch, serializer) and one task that does nothing, ``bench.noop``. None of the
campaign worker's hooks, consumer or container are loaded.
"""

from __future__ import annotations

from celery import Celery

app = Celery("bench_noop")
app.config_from_object("celeryconfig")
app.conf.task_queues = None  # consume the default queue only
app.conf.task_routes = {}


@app.task(name="bench.noop")
def noop() -> None:
    return None
