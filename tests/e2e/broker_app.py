"""The real Celery app plus one test task, ``e2e.record`` (``-A tests.e2e.broker_app``).

``e2e.record(key, seconds, until)`` appends a ``start`` line to ``$E2E_RECORD_FILE``, waits
(``seconds``; with ``until``, until that file exists, ``seconds`` at most: in flight for as
long as the test needs, however slow the machine), then appends a ``done`` line: one JSON
object per line with the key, the pid and the wall-clock time. The
test counts executions from that file. The task runs under the real configuration
(``celeryconfig``: late acks, reject on worker lost, prefetch) and the real app's hooks.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from campaign_worker.entrypoints.celery_app import app

__all__ = ["app", "record"]


def _append(event: str, key: str) -> None:
    line = json.dumps({"event": event, "key": key, "pid": os.getpid(), "t": time.time()})
    # One short write in append mode: lines from both pool processes never interleave.
    with open(os.environ["E2E_RECORD_FILE"], "a", encoding="utf-8") as handle:
        handle.write(line + "\n")


@app.task(name="e2e.record")
def record(key: str, seconds: float = 0.0, until: str | None = None) -> Any:
    _append("start", key)
    deadline = time.monotonic() + seconds
    while until is not None and not os.path.exists(until) and time.monotonic() < deadline:
        time.sleep(0.05)
    if until is None:
        time.sleep(seconds)
    _append("done", key)
    return key
