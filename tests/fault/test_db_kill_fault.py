"""kill -9 of the database server several times while a campaign runs, each time started
again on the same port over the same on-disk storage (a private secantusdb, the wire
stand-in). Workers see connection errors: tasks retry (transient errors), the poller's
passes fail until the server is back, writes whose outcome was unknown are settled by the
compare-and-set on the next pass. The supervisor restarts any process that dies.

With the default write concern a write acknowledged just before the kill can be lost
(tests/integration/test_faults_wire.py, ``j-default``): the server forgets a suffix of its
history, as a standalone MongoDB without the journal does. The campaign must still
converge, and nothing may be lost: a write that later writes build on must be durable
first (the outbox publication: ``adapters/mongo.DURABLE``).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.conftest import SecantusServer
from tests.fault.proc_support import Audience, Scenario, at_progress, scenario

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(300),
    pytest.mark.skipif(
        bool(os.environ.get("MONGODB_URI")),
        reason="kills its database server: only against a secantusdb it starts itself",
    ),
]

N = 150
CAMPAIGN = "fault-db-kill"


def test_database_server_killed_and_restarted_mid_run(tmp_path: Path) -> None:
    server = SecantusServer(tmp_path / "db")
    server.start()

    def kill_db(s: Scenario) -> bool:
        server.kill()
        s.fault("database_kill9")
        time.sleep(1.0)
        server.start()  # same port, same storage
        return True

    try:
        with scenario("db_kill", tmp_path, server.uri, "fault_db") as s:
            s.supervisor.worker("worker", concurrency=2)
            s.supervisor.beat("beat")
            s.create(N, CAMPAIGN)
            expected_sends = N * 7 // 4
            # The first kill lands as soon as the first publication is in the outbox, which
            # is where a publication acknowledged before it was durable was lost.
            progress = [1] + [expected_sends * k // 10 for k in (3, 5, 7)]
            faults = list(at_progress(CAMPAIGN, progress, kill_db))
            audience = Audience(s.client, s.db, CAMPAIGN)
            run_seconds = s.run(audience, faults, timeout=240)
            assert s.faults["database_kill9"] == 4
            s.finish(CAMPAIGN, N, run_seconds)
    finally:
        server.stop()
