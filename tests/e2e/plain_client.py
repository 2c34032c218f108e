"""Another service's view of the task API: only ``celery``, task names and JSON.

Run as a script (the e2e test does) so nothing of ``campaign_worker`` can be imported by
accident::

    python plain_client.py BROKER_URL RESULT_BACKEND TASK_NAME KWARGS_JSON [QUEUE]

prints the task's JSON result and exits 1 if ``campaign_worker`` got imported.
"""

from __future__ import annotations

import json
import sys

from celery import Celery


def main(argv: list[str]) -> int:
    broker, backend, name, kwargs_json, *rest = argv
    client = Celery("other-service", broker=broker, backend=backend)
    result = client.send_task(name, kwargs=json.loads(kwargs_json), queue=rest[0] if rest else None)
    value = result.get(timeout=60)
    client.close()
    print(json.dumps({"task_id": result.id, "result": value}))
    leaked = sorted(module for module in sys.modules if module.startswith("campaign_worker"))
    if leaked:
        print(f"campaign_worker modules imported: {leaked}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
