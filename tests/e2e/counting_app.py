"""The real Celery app plus counters, for measuring one e2e run (``-A tests.e2e.counting_app``).

Counts, per process, the MongoDB commands sent (one command = one round trip; a pymongo
``CommandListener`` registered globally, so the Container's client reports to it) and the
task messages published (``after_task_publish``). Each process writes its counts to
``$E2E_COUNTERS_DIR/<pid>.json`` after every task it runs or publishes; the test sums them.
The worker parent's start-up work (index creation) is left out: a forked child starts
from zero.
"""

from __future__ import annotations

import json
import os
import threading
from collections import Counter
from pathlib import Path
from typing import Any

from celery import signals
from pymongo import monitoring

from campaign_worker.entrypoints.celery_app import app

__all__ = ["app"]

_DIR = Path(os.environ["E2E_COUNTERS_DIR"])
_lock = threading.Lock()
_commands: Counter[str] = Counter()
_published: Counter[str] = Counter()
# Round trips per task name: a prefork child runs one task at a time, so every command a
# child sends between task_prerun and task_postrun belongs to that task.
_by_task: Counter[str] = Counter()
_runs: Counter[str] = Counter()
_current: list[str] = ["(no task)"]


class _CommandCounter(monitoring.CommandListener):
    def started(self, event: monitoring.CommandStartedEvent) -> None:
        with _lock:
            _commands[event.command_name] += 1
            _by_task[_current[0]] += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        return None

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        return None


monitoring.register(_CommandCounter())


def _dump() -> None:
    with _lock:
        data = {
            "mongo_commands": dict(_commands),
            "published": dict(_published),
            "mongo_commands_by_task": dict(_by_task),
            "task_runs": dict(_runs),
        }
    path = _DIR / f"{os.getpid()}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)


@signals.worker_process_init.connect
def _reset(**_: Any) -> None:
    with _lock:
        _commands.clear()
        _published.clear()
        _by_task.clear()
        _runs.clear()


@signals.task_prerun.connect
def _task_started(sender: Any = None, **_: Any) -> None:
    name = str(getattr(sender, "name", sender))
    with _lock:
        _current[0] = name
        _runs[name] += 1


@signals.after_task_publish.connect
def _count_publish(sender: str | None = None, **_: Any) -> None:
    with _lock:
        _published[str(sender)] += 1
    _dump()


@signals.task_postrun.connect
def _after_task(**_: Any) -> None:
    with _lock:
        _current[0] = "(no task)"
    _dump()
