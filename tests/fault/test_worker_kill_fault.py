"""SIGKILL of worker processes mid-batch, several times during a campaign: pool children
(Celery replaces them; the task's message is rejected and requeued, ``acks_late`` with
``task_reject_on_worker_lost``) and the main process (its children die with it, as under
systemd's ``KillMode=control-group``; the supervisor starts the worker again, and its
prefetched messages come back after the visibility timeout). Every kill is aimed at a pool
process running a processing batch (``inspect().active()``), so it lands mid-batch.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.fault.proc_support import PROCESS, Audience, Scenario, at_progress, scenario, wait_busy

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

N = 200
CAMPAIGN = "fault-worker-kill"


def kill_mid_batch(target: str, node: str) -> Callable[[Scenario], bool]:
    def action(s: Scenario) -> bool:
        pids = wait_busy(s, node, (PROCESS,))
        if not pids:
            return False
        victim = pids[0] if target == "child" else s.supervisor.pid("worker")
        os.kill(victim, signal.SIGKILL)
        s.fault(f"sigkill_{target}_mid_batch")
        return True

    return action


def test_sigkill_of_worker_main_and_pool_processes_mid_batch(
    wire_uri: str, e2e_db_name: str, tmp_path: Path
) -> None:
    with scenario("worker_kill", tmp_path, wire_uri, e2e_db_name) as s:
        node = s.supervisor.worker("worker", concurrency=2)
        s.supervisor.beat("beat")
        s.create(N, CAMPAIGN)
        expected_sends = N * 7 // 4
        targets = ["child", "main", "child", "main", "child"]
        thresholds = [expected_sends * k // 10 for k in (1, 2, 4, 5, 7)]
        faults = [
            next(at_progress(CAMPAIGN, [threshold], kill_mid_batch(target, node)))
            for threshold, target in zip(thresholds, targets, strict=True)
        ]
        run_seconds = s.run(Audience(s.client, s.db, CAMPAIGN), faults, timeout=180)
        assert s.faults["sigkill_child_mid_batch"] == 3
        assert s.faults["sigkill_main_mid_batch"] == 2
        assert s.supervisor.restarts["worker"] == 2
        s.finish(CAMPAIGN, N, run_seconds)
