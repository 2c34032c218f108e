"""The server dies mid-campaign and comes back: nothing is duplicated.

Needs a server this test owns (it kills it), so it runs only on the secantusdb tier,
not against a shared MONGODB_URI. The kill happens from a pymongo CommandListener right
after a chosen command was acknowledged, so the crash point is exact, not timed.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, timedelta
from pathlib import Path
from typing import Any

import pymongo
import pytest
from pymongo import monitoring

from campaign_worker.adapters.clock import ManualClock
from campaign_worker.adapters.mongo import CAMPAIGNS, CONVERSATIONS, OUTBOX
from campaign_worker.domain.errors import TransientError
from campaign_worker.service.campaign_manager import CampaignManager
from tests.conftest import ManagerFactory, SecantusServer, sample_campaign

pytestmark = [
    pytest.mark.wire,
    pytest.mark.skipif(
        bool(os.environ.get("MONGODB_URI")),
        reason="kills the server: only against a secantusdb this test starts itself",
    ),
]

Doc = dict[str, Any]
RECIPIENTS = 150


class KillAfter(monitoring.CommandListener):
    """Kills the server once the ``nth`` acknowledged ``command`` on ``collection``."""

    def __init__(self, server: SecantusServer) -> None:
        self.server = server
        self.armed: tuple[str, str, int] | None = None
        self._pending: set[int] = set()
        self._seen = 0
        self.fired = False

    def arm(self, command: str, collection: str, nth: int) -> None:
        self.armed, self._seen, self.fired = (command, collection, nth), 0, False

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if self.armed is None:
            return
        command, collection, _ = self.armed
        if event.command_name == command and event.command.get(command) == collection:
            self._pending.add(event.request_id)

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        if self.armed is None or event.request_id not in self._pending:
            return
        self._pending.discard(event.request_id)
        self._seen += 1
        if self._seen == self.armed[2]:
            self.armed = None
            self.fired = True
            self.server.kill()  # acknowledged, and then the process is gone (SIGKILL)

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        self._pending.discard(event.request_id)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[SecantusServer]:
    owned = SecantusServer(tmp_path / "data")
    owned.start()
    yield owned
    owned.stop()


def restart(server: SecantusServer) -> None:
    assert server.proc is not None and server.proc.poll() is not None, "server still running"
    server.start()  # same port, same storage directory


@pytest.mark.parametrize("journal", [True, False], ids=["j-true", "j-default"])
def test_server_killed_during_initialization_and_processing_leaves_no_duplicates(
    server: SecantusServer, make_manager: ManagerFactory, clock: ManualClock, journal: bool
) -> None:
    """With ``journal=True`` an acknowledged write survives the kill (MongoDB's documented
    j:true guarantee), so the crash points are exact. With the default write concern on a
    standalone server the last acknowledged writes may be lost too (also documented:
    they wait for the next journal commit); the rerun must still converge."""
    killer = KillAfter(server)
    client: pymongo.MongoClient[Doc] = pymongo.MongoClient(
        server.uri,
        tz_aware=True,
        tzinfo=UTC,
        serverSelectionTimeoutMS=1500,
        journal=journal,
        event_listeners=[killer],
    )
    try:
        db = client["faults"]
        manager: CampaignManager = make_manager(db, init_batch_size=40, process_batch_size=40)
        manager.create_campaign(sample_campaign(RECIPIENTS))

        # Crash 1: the second batch of conversations was inserted, its metrics $inc not.
        killer.arm("insert", CONVERSATIONS, 2)
        with pytest.raises(TransientError):
            manager.initialize_campaign_conversations("camp-1")
        assert killer.fired
        restart(server)
        assert (db[CAMPAIGNS].find_one({"_id": "camp-1"}) or {})["status"] == "initializing"
        survived = db[CONVERSATIONS].count_documents({})
        if journal:
            assert survived == 80, "acknowledged journaled inserts survive"
        assert manager.initialize_campaign_conversations("camp-1") == RECIPIENTS - survived

        # Crash 2: a processing batch recorded its messages in the states, and died
        # publishing them to the outbox.
        assert manager.process_due_conversations("camp-1").written == 40
        killer.arm("insert", OUTBOX, 1)
        with pytest.raises(TransientError):
            manager.process_due_conversations("camp-1")
        assert killer.fired
        restart(server)
        if journal:
            assert db[CONVERSATIONS].count_documents({"unpublished.0": {"$exists": True}}) == 40
        clock.advance(timedelta(seconds=manager.lease_seconds + 1))
        while manager.process_due_conversations("camp-1").claimed:
            pass
        # The sweep publishes what the crash left unpublished, once.
        manager.poll_campaigns()
        assert db[CONVERSATIONS].count_documents({"unpublished.0": {"$exists": True}}) == 0

        states = list(db[CONVERSATIONS].find({"campaign_id": "camp-1"}))
        users = Counter(doc["user_id"] for doc in states)
        assert len(users) == RECIPIENTS and set(users.values()) == {1}
        assert (db[CAMPAIGNS].find_one({"_id": "camp-1"}) or {})["total_recipients"] == RECIPIENTS

        outbox = list(db[OUTBOX].find({"campaign_id": "camp-1"}))
        keys = Counter((doc["conversation_id"], doc["stage"], doc["step"]) for doc in outbox)
        assert len(outbox) == RECIPIENTS and set(keys.values()) == {1}
        recorded = [
            m["message_id"]
            for doc in states
            for m in doc["message_history"]
            if m["direction"] == "outbound"
        ]
        assert sorted(recorded) == sorted(doc["_id"] for doc in outbox)
        assert all(doc["metrics"]["messages_sent"] == 1 for doc in states)
        # Crash 1 fell after the step's second insert, before its first checkpoint and
        # its one metrics $inc (at the step's end), and the rerun found those 80
        # conversations already there: their $inc is lost; crash 2 lost a batch's $inc
        # with the server. The dead writers stay registered, so the reconcile waits
        # until their registrations expire; then one aggregation over the states finds
        # exactly that drift and corrects it.
        assert manager.reconcile_campaign_metrics("camp-1") == {}
        clock.advance(manager.inflight_timeout)
        drift = manager.reconcile_campaign_metrics("camp-1")
        if journal:
            assert drift == {
                "total_recipients": 80,
                "active_conversations": 80,
                "stage_metrics.awareness.entered": 80,
                "message_metrics.total_sent": 40,
            }
        assert manager.reconcile_campaign_metrics("camp-1") == {}
        metrics = manager.get_campaign_metrics("camp-1")
        assert metrics["total_recipients"] == metrics["active_conversations"] == RECIPIENTS
        assert metrics["stage_metrics"]["awareness"]["entered"] == RECIPIENTS
        assert metrics["message_metrics"]["total_sent"] == RECIPIENTS
    finally:
        client.close()


class RestartAfter(KillAfter):
    """Kills the server once the ``nth`` acknowledged ``command`` on ``collection``, and
    starts it again at once over the same storage, before the client's next command: a
    crash the client does not notice, except that the server may have forgotten writes it
    acknowledged (w:1 without the journal, which is the stand-in's default and a standalone
    MongoDB's)."""

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        fired = self.fired
        super().succeeded(event)
        if self.fired and not fired:
            self.server.start()


def test_a_publication_the_server_acknowledged_survives_a_crash_right_after_it(
    server: SecantusServer, make_manager: ManagerFactory, clock: ManualClock
) -> None:
    """A processing batch records its messages (the compare-and-set), publishes them to the
    outbox, then clears their marks. The database server crashes right after acknowledging
    the publication and is back before the marks are cleared. Had the publication been
    acknowledged before it was durable, the crash would forget the rows while the marks
    were then cleared on the restarted server: recorded messages in no outbox, never to be
    sent (the fault suite's database kill found this). The client uses the server's
    default write concern; the publication asks for a durable one itself."""
    restarter = RestartAfter(server)
    client: pymongo.MongoClient[Doc] = pymongo.MongoClient(
        server.uri,
        tz_aware=True,
        tzinfo=UTC,
        serverSelectionTimeoutMS=5000,
        event_listeners=[restarter],
    )
    try:
        db = client["faults"]
        manager = make_manager(db, init_batch_size=40, process_batch_size=10)
        manager.create_campaign(sample_campaign(30))
        manager.initialize_campaign_conversations("camp-1")
        restarter.arm("insert", OUTBOX, 1)
        manager.process_due_conversations("camp-1")
        assert restarter.fired

        recorded = {
            m["message_id"]: doc["unpublished"]
            for doc in db[CONVERSATIONS].find({"campaign_id": "camp-1"})
            for m in doc["message_history"]
            if m["direction"] == "outbound"
        }
        assert len(recorded) == 10
        rows = {doc["_id"] for doc in db[OUTBOX].find({"campaign_id": "camp-1"})}
        # Every recorded message is in the outbox, or still marked for the sweep.
        assert [m for m, marked in recorded.items() if m not in rows and m not in marked] == []
        assert rows == set(recorded)
    finally:
        client.close()
