"""Support for the message-fault scenarios (branch faults-msg): duplicated and delayed task
messages, reply bursts, a flaky webhook. Each scenario runs a whole campaign on real
worker and beat processes, then asks the invariant checker and records its figures.

Figures: one JSON line per scenario, printed (``FAULT FIGURES {...}``) and appended to the
file named by ``FAULT_REPORT`` if set: the checker's figures (measured before any
reconcile: beat's reconcile runs hourly here, and no test calls it) plus the scenario's
faults injected and run time.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path
from typing import Any

import pymongo

from campaign_worker.bootstrap import build_manager
from campaign_worker.settings import Settings
from tests.e2e.conftest import Broker, e2e_env
from tests.e2e.scenario import INBOUND, Driver, kind_of, user_id

TEMPLATES = Path(__file__).resolve().parent / "templates"
CREATE = "campaign_worker.create_campaign"

#: The checker's figures every scenario reports (issue 15).
REPORTED = (
    "recipients",
    "conversations_lost",
    "messages_lost",
    "messages_sent_twice",
    "replies_recorded_twice",
    "metrics_drift",
)


def fault_env(broker: Broker, wire_uri: str, db_name: str, **extra: str) -> dict[str, str]:
    """The e2e environment with the fault templates, no reconcile during the run (drift is
    measured before any), and no Prometheus port (several workers on one machine)."""
    env = e2e_env(
        broker,
        wire_uri,
        db_name,
        CAMPAIGN_TEMPLATES_DIR=str(TEMPLATES),
        RECONCILE_INTERVAL_SECONDS="3600",
        METRICS_PORT="0",
    )
    env.update(extra)
    return env


def payload(n: int, campaign_id: str, campaign_type: str = "quick") -> dict[str, Any]:
    return {
        "_id": campaign_id,
        "name": f"fault {campaign_type}",
        "campaign_type": campaign_type,
        "template_id": "fault",
        "recipients": [
            {"user_id": user_id(i), "attributes": {"first_name": f"Tester{i}"}} for i in range(n)
        ],
    }


def check(wire_uri: str, db_name: str, campaign_id: str, *, quiet: bool = True) -> Any:
    """``CampaignManager.check_invariants`` on the scenario's database."""
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
        wire_uri, tz_aware=True, tzinfo=UTC, serverSelectionTimeoutMS=20000
    )
    try:
        manager = build_manager(client[db_name], Settings(mongodb_db=db_name))
        return manager.check_invariants(campaign_id, quiet=quiet)
    finally:
        client.close()


def record(
    scenario: str, report: Any, *, faults: dict[str, int], seconds: float, **extra: Any
) -> dict[str, Any]:
    """Print the scenario's figures and append them to ``$FAULT_REPORT`` (one JSON line)."""
    figures = {key: int(report.figures[key]) for key in REPORTED}
    line = {
        "scenario": scenario,
        "branch": "faults-msg",
        **figures,
        "faults_injected": faults,
        "seconds": round(seconds, 1),
        "ok": bool(report.ok),
        "all_figures": dict(report.figures),
        **extra,
    }
    text = json.dumps(line, sort_keys=True, default=str)
    print(f"\nFAULT FIGURES {text}")
    target = os.environ.get("FAULT_REPORT")
    if target:
        with open(target, "a") as handle:
            handle.write(text + "\n")
    return line


def assert_clean(report: Any) -> None:
    """Every invariant holds, and the loss/duplicate figures are zero."""
    detail = [f"{v.invariant}: {v.detail} {list(v.sample)}" for v in report.violations]
    assert report.ok, detail
    for key in REPORTED[1:]:
        assert report.figures[key] == 0, (key, dict(report.figures))
    assert report.figures["recipients"] == report.figures["conversations"]


def reply_for(outbound: dict[str, Any]) -> str | None:
    """The audience of ``quick``/``late`` (tests/e2e/scenario.py): by ``user % 4``, YES then
    BUY (completed), STOP (opted out), YES then silence, silence (failed)."""
    kind = kind_of(outbound["user_id"])
    if outbound["stage"] == "hello" and outbound["step"] == 0:
        return {0: "yes!", 1: "STOP", 2: "Yes"}.get(kind)
    if outbound["stage"] == "offer" and kind == 0:
        return "ok, buy it"
    return None


@dataclass
class Audience(Driver):
    """The e2e ``Driver``, each reply published ``copies`` times under one task id (a
    broker redelivery), with an optional countdown."""

    copies: int = 1
    countdown: float | None = None
    published: int = 0
    task_ids: list[str] = field(default_factory=list)
    poll_every: float = 0.5

    def send(self, user: str, message_id: str, content: str) -> None:
        task_id = f"task-{message_id}"
        options: dict[str, Any] = {"queue": "inbound", "task_id": task_id}
        if self.countdown is not None and message_id.startswith("reply-"):
            options["countdown"] = self.countdown
        kwargs = self.reply(user, message_id, content)
        del kwargs["metadata"]
        for _ in range(self.copies):
            self.client.send_task(INBOUND, kwargs=kwargs, **options)
            self.published += 1
        self.replies += 1
        self.task_ids.append(task_id)

    def stuck(self) -> str:
        counts = {
            s: self.db["conversation_states"].count_documents(
                {"campaign_id": self.campaign_id, "status": s}
            )
            for s in ("active", "completed", "failed", "opted_out")
        }
        examples = [
            {
                "user": d["user_id"],
                "stage": d.get("current_stage"),
                "next": d.get("next_action_at"),
                "lease": d.get("lease_until"),
                "unpublished": len(d.get("unpublished") or []),
                "history": [m["direction"][0] for m in d["message_history"]][-8:],
                "n": len(d["message_history"]),
            }
            for d in self.db["conversation_states"]
            .find({"campaign_id": self.campaign_id, "status": "active"})
            .limit(3)
        ]
        return f"status {self.status()!r}, conversations {counts}, e.g. {examples}"


def doubled(directory: Path) -> dict[str, int]:
    """Extra task messages ``tests.fault.duplicating_app`` published, per task name,
    summed over every process that wrote a count into ``directory``."""
    total: dict[str, int] = {}
    for path in directory.glob("*.json"):
        for name, count in json.loads(path.read_text()).items():
            total[name] = total.get(name, 0) + int(count)
    return total


def inbound_recorded(db: Any, campaign_id: str) -> int:
    """Inbound messages recorded in the campaign's conversations."""
    pipeline = [
        {"$match": {"campaign_id": campaign_id}},
        {
            "$project": {
                "n": {
                    "$size": {
                        "$filter": {
                            "input": "$message_history",
                            "cond": {"$eq": ["$$this.direction", "inbound"]},
                        }
                    }
                }
            }
        },
        {"$group": {"_id": None, "n": {"$sum": "$n"}}},
    ]
    rows = list(db["conversation_states"].aggregate(pipeline))
    return int(rows[0]["n"]) if rows else 0


def wait_recorded(db: Any, campaign_id: str, expected: int, timeout: float) -> None:
    """Until ``expected`` inbound messages are recorded, then a moment for the last
    batch's metrics write (the check compares the metrics document with a recount)."""
    deadline = time.monotonic() + timeout
    while (got := inbound_recorded(db, campaign_id)) < expected:
        if time.monotonic() > deadline:
            raise AssertionError(f"{got} of {expected} replies recorded after {timeout}s")
        time.sleep(0.5)
    time.sleep(2)


def dead_letters(db: Any) -> list[dict[str, Any]]:
    return list(db["dead_letters"].find({}, {"task_name": 1, "reason": 1, "error": 1}))


__all__ = [
    "CREATE",
    "REPORTED",
    "TEMPLATES",
    "Audience",
    "assert_clean",
    "check",
    "dead_letters",
    "doubled",
    "fault_env",
    "inbound_recorded",
    "payload",
    "record",
    "reply_for",
    "wait_recorded",
]
