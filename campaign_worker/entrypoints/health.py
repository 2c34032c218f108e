"""`campaign-worker health`: is the broker, MongoDB and a worker reachable?

Exit code is a bitmask of what failed: 1 broker, 2 MongoDB, 4 worker (0 = healthy), so
a docker healthcheck or an operator can tell which part is down.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from campaign_worker.adapters.logs import redact_uri
from campaign_worker.settings import Settings

BROKER_FAILED = 1
MONGO_FAILED = 2
WORKER_FAILED = 4


@dataclass
class HealthReport:
    checks: dict[str, dict[str, Any]] = field(default_factory=dict)
    exit_code: int = 0

    def as_json(self) -> str:
        return json.dumps(
            {"healthy": self.exit_code == 0, "exit_code": self.exit_code, "checks": self.checks},
            sort_keys=True,
        )


def check_broker(url: str, timeout: float) -> dict[str, Any]:
    from kombu import Connection

    try:
        with Connection(url, connect_timeout=timeout) as connection:
            connection.ensure_connection(max_retries=1, timeout=max(1, int(timeout)))
        return {"ok": True, "url": redact_uri(url)}
    except Exception as exc:  # any failure means "unreachable" here
        return {"ok": False, "url": redact_uri(url), "error": f"{type(exc).__name__}: {exc}"}


def check_mongo(uri: str, timeout: float) -> dict[str, Any]:
    from pymongo import MongoClient

    client: MongoClient[dict[str, Any]] = MongoClient(
        uri, serverSelectionTimeoutMS=int(timeout * 1000), connectTimeoutMS=int(timeout * 1000)
    )
    try:
        client.admin.command("ping")
        return {"ok": True, "uri": redact_uri(uri)}
    except Exception as exc:
        return {"ok": False, "uri": redact_uri(uri), "error": f"{type(exc).__name__}: {exc}"}
    finally:
        client.close()


def check_worker(app: Any, destination: str | None, timeout: float) -> dict[str, Any]:
    try:
        replies = app.control.ping(
            destination=[destination] if destination else None, timeout=timeout
        )
    except Exception as exc:
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    names = sorted(name for reply in replies or [] for name in reply)
    return {
        "ok": bool(names),
        "workers": names,
        **({} if names else {"error": "no worker answered the ping"}),
    }


def run_health(
    settings: Settings,
    *,
    app: Any = None,
    worker: str | None = None,
    check_workers: bool = True,
    timeout: float = 3.0,
) -> HealthReport:
    report = HealthReport()
    report.checks["broker"] = check_broker(settings.celery_broker_url, timeout)
    if not report.checks["broker"]["ok"]:
        report.exit_code |= BROKER_FAILED
    report.checks["mongodb"] = check_mongo(settings.mongodb_uri, timeout)
    if not report.checks["mongodb"]["ok"]:
        report.exit_code |= MONGO_FAILED
    if check_workers:
        if report.exit_code & BROKER_FAILED or app is None:
            report.checks["worker"] = {"ok": False, "error": "broker unreachable"}
        else:
            report.checks["worker"] = check_worker(app, worker, timeout)
        if not report.checks["worker"]["ok"]:
            report.exit_code |= WORKER_FAILED
    return report
