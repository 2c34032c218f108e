"""SIGTERM during a large initialization (thousands of recipients, small batches), then a
restart: the initialization resumes from its checkpoint instead of starting over.

Twice: first a plain SIGTERM (Celery's warm shutdown lets the step in flight finish and
its successor message is already queued), then SIGTERM followed by SIGKILL after a short
grace (``docker stop -t 1``): the step in flight dies between checkpoints, its message is
redelivered after the visibility timeout or the poller claims the initialization again once
its lease expired. Either way the next step starts at the saved checkpoint: every step
logs where it starts (``campaign_initialization_step``), only the very first starts from
nothing, and after each restart the first step starts at or after the checkpoint saved
before the stop.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from campaign_worker.service.initialization import CHECKPOINT_EVERY
from tests.fault.proc_support import Audience, Scenario, scenario

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

N = 1500
BATCH = 20
SLICE = 0.005  # seconds the worker runs between two looks at its progress
CAMPAIGN = "fault-init-sigterm"
TEMPLATES = Path(__file__).with_name("templates")


def payload() -> dict[str, Any]:
    return {
        "_id": CAMPAIGN,
        "name": "fault: large initialization",
        "campaign_type": "notice",
        "template_id": "fault_init",
        "recipients": [
            {"user_id": f"user-{i:05d}", "attributes": {"first_name": f"T{i}"}} for i in range(N)
        ],
    }


def steps(s: Scenario) -> list[dict[str, Any]]:
    """Every initialization step's start, in order, from every worker incarnation."""
    found = []
    for line in s.supervisor.log("worker").splitlines():
        with contextlib.suppress(ValueError):
            event = json.loads(line)
            if event.get("event") == "campaign_initialization_step":
                found.append(event)
    return sorted(found, key=lambda e: str(e.get("timestamp")))


def offset(position: Any) -> int:
    return int((position or {}).get("offset", 0)) if isinstance(position, dict) else 0


def checkpoint(s: Scenario) -> int:
    doc = s.db["campaigns"].find_one({"_id": CAMPAIGN}, {"init_progress": 1}) or {}
    return offset((doc.get("init_progress") or {}).get("position"))


def stop_mid_initialization(s: Scenario, hard: bool) -> dict[str, int]:
    """Once the initialization has inserted a few more checkpoints' worth (mid-step), stop
    the worker: SIGTERM, and for ``hard`` SIGKILL of its group a moment later.

    The worker runs in slices of ``SLICE`` seconds and is frozen (SIGSTOP of its group)
    while the test reads the progress, so the stop lands where the test saw it, not where
    a fast machine got to meanwhile: a slice inserts a few batches at most, far from the
    end of a step, whatever the speed of the machine or the database."""
    proc = s.supervisor.managed["worker"].proc

    def count() -> int:
        return int(s.db["conversation_states"].count_documents({"campaign_id": CAMPAIGN}))

    os.killpg(proc.pid, signal.SIGSTOP)
    before = count()
    deadline = time.monotonic() + 120
    while count() < before + 7 * BATCH:
        assert time.monotonic() < deadline, "the initialization made no progress"
        os.killpg(proc.pid, signal.SIGCONT)
        time.sleep(SLICE)
        os.killpg(proc.pid, signal.SIGSTOP)
    stopped = {"conversations": count(), "checkpoint": checkpoint(s), "steps": len(steps(s))}
    proc.send_signal(signal.SIGTERM)  # delivered with the SIGCONT
    os.killpg(proc.pid, signal.SIGCONT)
    if hard:
        time.sleep(0.3)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(60)
    s.fault("sigterm_then_sigkill_during_init" if hard else "sigterm_during_init")
    s.supervisor.tick()  # the supervisor starts it again
    return stopped


def test_sigterm_during_large_initialization_resumes_from_checkpoint(
    wire_uri: str, e2e_db_name: str, tmp_path: Path
) -> None:
    with scenario(
        "init_sigterm",
        tmp_path,
        wire_uri,
        e2e_db_name,
        INIT_BATCH_SIZE=str(BATCH),
        INIT_BATCHES_PER_TASK="25",
        PROCESS_BATCH_SIZE="100",
        LEASE_SECONDS="5",  # a dead initializer's campaign is claimed again after 25 s
        CAMPAIGN_TEMPLATES_DIR=str(TEMPLATES),
    ) as s:
        s.supervisor.worker("worker", concurrency=2)
        s.supervisor.beat("beat")
        s.create(N, CAMPAIGN, payload())
        stops = [stop_mid_initialization(s, hard=False), stop_mid_initialization(s, hard=True)]
        audience = Audience(s.client, s.db, CAMPAIGN)
        run_seconds = s.run(audience, [], timeout=240)

        started = steps(s)
        # Exactly one step started from nothing: no restart started over.
        assert [offset(e["position"]) for e in started].count(0) == 1, started
        for stop in stops:
            assert 0 < stop["checkpoint"] < N, stops
            resumed = started[stop["steps"]]  # the first step after the restart
            assert offset(resumed["position"]) >= stop["checkpoint"], (stop, resumed)
            # At most the batches inserted since the last checkpoint are attempted again.
            assert stop["conversations"] - offset(resumed["position"]) <= BATCH * (
                CHECKPOINT_EVERY * 2
            ), (stop, resumed)
        s.notes["stops"] = stops
        s.notes["init_steps"] = len(started)
        s.finish(CAMPAIGN, N, run_seconds)
