"""The real Celery app plus counters (``-A tooling.counting_app``), for the bench's worker
runs and the e2e tests that count round trips.

Each worker process counts the MongoDB commands it sends (a pymongo ``CommandListener``
registered globally, so the Container's client reports to it; one command = one round
trip), those per task name (a prefork child runs one task at a time, so every command
between ``task_prerun`` and ``task_postrun`` belongs to that task), the task messages it
publishes (``after_task_publish``) and the tasks it runs. It writes them to
``$COUNTERS_DIR/<pid>.json`` after every task it runs, every message it publishes, and
every 0.1 s while its counts change (work a pool process runs outside Celery's task tracer,
such as a batch of buffered messages, sends no task signals); the caller sums the files. A
forked child starts from zero, so the parent's start-up work (indexes) is left out.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from celery import signals
from pymongo import monitoring

from campaign_worker.entrypoints.celery_app import app

__all__ = ["app"]

_DIR = Path(os.environ["COUNTERS_DIR"])
_IDLE = "(no task)"
_lock = threading.Lock()
_commands: Counter[str] = Counter()
_by_task: Counter[str] = Counter()
_published: Counter[str] = Counter()
_runs: Counter[str] = Counter()
_current: list[str] = [_IDLE]
_dumped: list[tuple[int, int, int]] = [(0, 0, 0)]


def _version() -> tuple[int, int, int]:
    return (_commands.total(), _published.total(), _runs.total())


def _dump_while_changing() -> None:
    while True:
        time.sleep(0.1)
        with _lock:
            changed = _version() != _dumped[0]
        if changed:
            _dump()


class _Counting(monitoring.CommandListener):
    def started(self, event: monitoring.CommandStartedEvent) -> None:
        with _lock:
            _commands[event.command_name] += 1
            _by_task[_current[0]] += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        return None

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        return None


monitoring.register(_Counting())


def _dump() -> None:
    with _lock:
        _dumped[0] = _version()
        data = {
            "mongo_commands": dict(_commands),
            "mongo_commands_by_task": dict(_by_task),
            "published": dict(_published),
            "task_runs": dict(_runs),
        }
    path = _DIR / f"{os.getpid()}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)


@signals.worker_process_init.connect
def _reset(**_: Any) -> None:
    with _lock:
        for counter in (_commands, _by_task, _published, _runs):
            counter.clear()
    threading.Thread(target=_dump_while_changing, name="counters", daemon=True).start()


@signals.task_prerun.connect
def _started(sender: Any = None, **_: Any) -> None:
    name = str(getattr(sender, "name", sender))
    with _lock:
        _current[0] = name
        _runs[name] += 1


@signals.after_task_publish.connect
def _published_one(sender: str | None = None, **_: Any) -> None:
    with _lock:
        _published[str(sender)] += 1
    _dump()


@signals.task_postrun.connect
def _finished(**_: Any) -> None:
    with _lock:
        _current[0] = _IDLE
    _dump()
