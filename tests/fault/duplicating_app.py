"""The real Celery app, but every task message it publishes goes to the broker twice
(``-A tests.fault.duplicating_app``, for worker and beat): two broker messages with one
task id and one body, as a redelivery or a retried publish looks to the consumer.

Only task messages (a ``task`` header) are doubled, not results or control messages. Each
process counts its extra copies in ``$FAULT_DUP_DIR/<pid>.json`` (the test sums them).
"""

from __future__ import annotations

import json
import os
import threading
from collections import Counter
from pathlib import Path
from typing import Any

from kombu.messaging import Producer

from campaign_worker.entrypoints.celery_app import app

__all__ = ["app"]

_DIR = Path(os.environ["FAULT_DUP_DIR"])
_lock = threading.Lock()
_doubled: Counter[str] = Counter()
_publish = Producer.publish


def _publish_twice(self: Producer, body: Any, *args: Any, **kwargs: Any) -> Any:
    result = _publish(self, body, *args, **kwargs)
    headers = kwargs.get("headers") or {}
    if "task" in headers and "id" in headers:
        _publish(self, body, *args, **kwargs)
        with _lock:
            _doubled[str(headers["task"])] += 1
            data = json.dumps(dict(_doubled))
        path = _DIR / f"{os.getpid()}.json"
        tmp = path.with_suffix(f".{threading.get_ident()}.tmp")
        tmp.write_text(data)
        tmp.replace(path)
    return result


Producer.publish = _publish_twice  # type: ignore[method-assign]
