"""An always-on campaign under faults: every enrollment and event sent twice (half under
the same task id, as a redelivery, half under a new one, as a producer's resend), while
worker processes are SIGKILLed in the middle of event and enrollment batches (pool
children, and the main process under a supervisor). Nothing is lost and nothing is done
twice: one conversation per person, every event recorded once and applied (meetings end
their conversations, purchases convert once), the metrics equal a recount once the dead
writers' registrations expire, and the checker passes."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.fault.proc_support import INFLIGHT_TIMEOUT, Scenario, record_figures, scenario, wait_busy

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

CAMPAIGN = "fault-always-on"
ENROLL = "campaign_worker.enroll_recipients"
EVENT = "campaign_worker.record_event"
WAVES = 12
PER_WAVE = 60  # people per enrollment call; consecutive waves share half of them
TRIALS = 300  # people enrolled by entry events
ENROLLED = (WAVES + 1) * PER_WAVE // 2
BOOKED = [f"u{i:04d}" for i in range(0, ENROLLED, 3)] + [f"t{i:04d}" for i in range(0, TRIALS, 3)]
BUYERS = [f"u{i:04d}" for i in range(1, ENROLLED, 3)] + [f"t{i:04d}" for i in range(1, TRIALS, 3)]


def twice(s: Scenario, name: str, kwargs: dict[str, Any], task_id: str, n: int) -> None:
    """Send a message and its copy: a redelivery (same id) or a resend (a new id)."""
    for copy in (task_id, task_id if n % 2 else f"{task_id}-again"):
        s.client.send_task(name, kwargs=kwargs, task_id=copy, queue=_queue(name))


def _queue(name: str) -> str:
    return "inbound" if name == EVENT else "initialization"


Load = list[tuple[str, dict[str, Any], str]]


def messages() -> tuple[Load, Load]:
    """The load: enrollment waves, entry events and meetings (which may arrive before
    their conversation exists: applied when it is created); then, once everyone is
    enrolled, purchases (a goal converts only after entry)."""
    load: Load = []
    for wave in range(WAVES):
        rows = [{"user_id": f"u{i:04d}"} for i in range(wave * 30, wave * 30 + PER_WAVE)]
        load.append((ENROLL, {"campaign_id": CAMPAIGN, "recipients": rows}, f"enroll-{wave}"))
    for name, users in (
        ("trial_started", [f"t{i:04d}" for i in range(TRIALS)]),
        ("meeting_booked", BOOKED),
    ):
        load += [event(name, user) for user in users]
    return load, [event("purchased", user) for user in BUYERS]


def event(name: str, user: str) -> tuple[str, dict[str, Any], str]:
    kwargs = {"user_id": user, "event": name, "event_id": f"{name}-{user}"}
    return EVENT, kwargs, f"task-{name}-{user}"


def everyone_enrolled(s: Scenario) -> bool:
    count = s.db["conversation_states"].count_documents({"campaign_id": CAMPAIGN})
    return bool(count == ENROLLED + TRIALS)


def kill_mid_batch(node: str, target: str, killed: set[int]) -> Callable[[Scenario], bool]:
    """SIGKILL a pool process running an event or enrollment batch right now (or, for
    ``main``, the worker's main process then), never one killed before."""

    def action(s: Scenario) -> bool:
        pids = [pid for pid in wait_busy(s, node, (EVENT, ENROLL), wait=1.0) if pid not in killed]
        if not pids:
            return False
        victim = pids[0] if target == "child" else s.supervisor.pid("worker")
        killed.add(victim)
        os.kill(victim, signal.SIGKILL)
        s.fault(f"sigkill_{target}_mid_batch")
        return True

    return action


def settled(s: Scenario) -> bool:
    db = s.db["conversation_states"]
    return (
        db.count_documents({"campaign_id": CAMPAIGN}) == ENROLLED + TRIALS
        and db.count_documents({"campaign_id": CAMPAIGN, "status": "completed"}) == len(BOOKED)
        and db.count_documents({"campaign_id": CAMPAIGN, "conversion": {"$ne": None}})
        == len(BUYERS)
    )


def test_enrollments_and_events_twice_with_workers_killed_mid_batch(
    wire_uri: str, e2e_db_name: str, tmp_path: Path
) -> None:
    with scenario("always_on", tmp_path, wire_uri, e2e_db_name) as s:
        node = s.supervisor.worker("worker", concurrency=2)
        s.supervisor.beat("beat")
        campaign = {
            "_id": CAMPAIGN,
            "name": "x",
            "campaign_type": "onboarding",
            "template_id": "always_on",
        }
        s.create(0, CAMPAIGN, campaign)
        first, purchases = messages()
        load = first + purchases
        killed: set[int] = set()
        faults = [kill_mid_batch(node, t, killed) for t in ("child", "child", "main", "child")]
        last_fault = 0.0
        began, sent, deadline = time.monotonic(), 0, time.monotonic() + 240
        while not (sent == len(load) and not faults and settled(s)):
            ready = sent < len(first) or everyone_enrolled(s)
            running = s.db["campaigns"].find_one({"_id": CAMPAIGN, "status": "running"})
            if sent < len(load) and ready and running:
                end = min(len(first) if sent < len(first) else len(load), sent + 40)
                for n, (name, kwargs, task_id) in enumerate(load[sent:end], start=sent):
                    twice(s, name, kwargs, task_id, n)
                sent = end
            s.supervisor.tick()
            # One fault at a time, a few seconds apart, once the load is under way.
            due = faults and sent > len(load) // 5 and time.monotonic() - last_fault > 4
            if due and faults[0](s):
                faults.pop(0)
                last_fault = time.monotonic()
            assert time.monotonic() < deadline, (
                sent,
                dict(s.faults),
                s.supervisor.log("worker")[-3000:],
            )
            time.sleep(0.05)
        run_seconds = time.monotonic() - began

        manager = s.manager()
        before = manager.check_invariants(CAMPAIGN, quiet=False)
        waited, report = time.monotonic(), None
        while time.monotonic() < waited + INFLIGHT_TIMEOUT + 30:
            manager.reconcile_campaign_metrics(CAMPAIGN)
            report = manager.check_invariants(CAMPAIGN)
            if report.ok:
                break
            time.sleep(1.0)
        assert report is not None
        events = s.db["events"]
        figures = {
            "scenario": "always_on",
            "faults": dict(s.faults),
            "restarts": dict(s.supervisor.restarts),
            "messages_sent": 2 * len(load),
            "people": ENROLLED + TRIALS,
            "conversations": report.figures["conversations"],
            "conversations_duplicated": report.figures["conversations_duplicated"],
            "events_recorded": events.count_documents({}),
            "events_sent": len(load) - WAVES,
            "completed": len(BOOKED),
            "conversions": report.figures["conversions"],
            "conversions_unrecorded": report.figures["conversions_unrecorded"],
            "metrics_drift_before_reconcile": before.figures["metrics_drift"],
            "metrics_drift_after_reconcile": report.figures["metrics_drift"],
            "run_seconds": round(run_seconds, 1),
        }
        record_figures(figures)
        assert report.ok, [(v.invariant, v.detail) for v in report.violations]
        assert sum(s.faults.values()) == 4 and s.supervisor.restarts["worker"] == 1
        assert figures["conversations"] == ENROLLED + TRIALS
        assert figures["events_recorded"] == figures["events_sent"]
        assert figures["conversions"] == len(BUYERS)
        goals = (s.db["campaign_metrics"].find_one({"_id": CAMPAIGN}) or {})["goals"]["purchased"]
        assert goals["converted"] == len(BUYERS)
        assert s.db["dead_letters"].count_documents({}) == 0
