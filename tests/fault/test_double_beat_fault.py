"""Two beats and two workers from the start: every poll, dispatch and reconcile is sent
twice as often, by two schedulers that know nothing of each other. Harmless: the poller's
claims are conditional updates, a dispatched range is registered once and not dispatched
again while its registration is fresh, processing writes are compare-and-set. The
campaign ends exactly as with one beat (tests/e2e/scenario.py's table, to the unit)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.conftest import wait_for_workers
from tests.e2e.scenario import assert_final_state
from tests.fault.proc_support import Audience, scenario

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

N = 120
CAMPAIGN = "fault-double-beat"


def test_two_beats_and_two_workers_from_the_start(
    wire_uri: str, e2e_db_name: str, tmp_path: Path
) -> None:
    with scenario("double_beat", tmp_path, wire_uri, e2e_db_name) as s:
        nodes = [s.supervisor.worker("worker-a"), s.supervisor.worker("worker-b")]
        s.supervisor.beat("beat-a")
        s.supervisor.beat("beat-b")
        s.fault("second_beat")
        s.fault("second_worker")
        wait_for_workers(s.client, nodes)
        s.create(N, CAMPAIGN)
        audience = Audience(s.client, s.db, CAMPAIGN)
        run_seconds = s.run(audience, [], timeout=180)
        # Both schedulers were sending polls the whole time.
        for beat in ("beat-a", "beat-b"):
            assert s.supervisor.log(beat).count("campaign_worker.poll_campaigns") >= 5, beat
        assert_final_state(s.db, CAMPAIGN, N)
        s.finish(CAMPAIGN, N, run_seconds)
