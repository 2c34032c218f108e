"""Editing a live campaign: template versions pin what conversations run on, and an
explicit migration moves them (issue 13). Runs on mongomock-ng and over the wire.

The edit (v1 -> v2) changes every text, drops intro's third message, renames ``pitch`` to
``offer`` (and shortens its first wait) and removes ``closing``.
"""

from __future__ import annotations

import threading
from collections import Counter
from datetime import UTC, timedelta
from pathlib import Path
from typing import Any

import pymongo
import pytest

from campaign_worker.adapters.clock import ManualClock
from campaign_worker.adapters.mongo import CAMPAIGNS, CONVERSATIONS, OUTBOX
from campaign_worker.adapters.mongo_campaigns import MongoCampaignRepository
from campaign_worker.adapters.mongo_conversations import MongoConversationStateRepository
from campaign_worker.adapters.template_files import ConfigManager
from campaign_worker.bootstrap import build_manager, ensure_indexes
from campaign_worker.domain.documents import conversation_id_for
from campaign_worker.domain.errors import InvalidInputError, InvalidStateTransitionError
from campaign_worker.service.campaign_manager import CampaignManager
from campaign_worker.settings import Settings
from tests.integration.test_manager_wire import assert_metrics_match_states

Doc = dict[str, Any]
DAY = timedelta(days=1)

V1 = """
template_id: live
campaign_types:
  sales:
    stages:
      - name: intro
        messages:
          - {text: "Hi {first_name}, intro one v1", wait: 1d}
          - {text: "intro two v1", wait: 1d}
          - {text: "intro three v1", wait: 1d}
        advance_when: {reply_received: true}
      - name: pitch
        messages:
          - {text: "pitch one v1", wait: 3d}
          - {text: "pitch two v1", wait: 1d}
        advance_when: {reply_received: true}
      - name: closing
        messages:
          - {text: "closing v1", wait: 1d}
        advance_when: {reply_received: true}
"""

V2 = """
template_id: live
campaign_types:
  sales:
    stages:
      - name: intro
        messages:
          - {text: "Hello {first_name}, intro one v2", wait: 1d}
          - {text: "intro two v2", wait: 1d}
        advance_when: {reply_received: true}
      - name: offer
        messages:
          - {text: "offer one v2", wait: 1d}
          - {text: "offer two v2", wait: 1d}
        advance_when: {reply_received: true}
"""


class Live:
    """A template directory whose file the test edits, and managers over one database
    (each a worker: a new one loads the files as they are when it starts)."""

    def __init__(self, db: Any, directory: Path, clock: ManualClock) -> None:
        self.db = db
        self.directory = directory
        self.clock = clock
        self.settings = Settings(mongodb_db="unused", init_batch_size=50, process_batch_size=50)

    def write(self, text: str) -> None:
        (self.directory / "live.yaml").write_text(text)

    def worker(self, db: Any = None) -> CampaignManager:
        files = ConfigManager(self.directory, include_packaged=False)
        manager = build_manager(
            self.db if db is None else db, self.settings, clock=self.clock, config_manager=files
        )
        ensure_indexes(manager)
        manager.register_templates()
        return manager


@pytest.fixture
def live(db: Any, tmp_path: Path, clock: ManualClock) -> Live:
    setup = Live(db, tmp_path, clock)
    setup.write(V1)
    return setup


def campaign(n: int) -> Doc:
    return {
        "_id": "camp-1",
        "name": "live edit",
        "campaign_type": "sales",
        "template_id": "live",
        "recipients": [
            {"user_id": f"u{i}", "attributes": {"first_name": f"A{i}"}} for i in range(n)
        ],
    }


def drain(manager: CampaignManager) -> None:
    while manager.process_due_conversations("camp-1").claimed:
        pass


def state(db: Any, user: str) -> Doc:
    found: Doc | None = db[CONVERSATIONS].find_one({"_id": conversation_id_for("camp-1", user)})
    assert found is not None
    return found


def texts(doc: Doc) -> list[str]:
    return [m["content"] for m in doc["message_history"] if m["direction"] == "outbound"]


def reply(manager: CampaignManager, user: str, n: int) -> None:
    manager.record_inbound_message("camp-1", user, f"in-{user}-{n}", "sounds good")


def started(live: Live) -> CampaignManager:
    """Five conversations on v1, two days in: u0 and u1 in intro (all three sent), u2 and
    u3 in pitch (pitch one sent, pitch two due on day three), u4 in closing."""
    manager = live.worker()
    manager.create_campaign(campaign(5))
    manager.initialize_campaign_conversations("camp-1")
    drain(manager)  # everyone: intro one
    for user in ("u2", "u3", "u4"):
        reply(manager, user, 1)  # -> pitch, pitch one v1 sent
    reply(manager, "u4", 2)  # -> closing, closing v1 sent
    for _ in range(2):
        live.clock.advance(DAY)
        drain(manager)  # u0, u1: intro two, then intro three
    return manager


def test_versions_are_stored_once_per_content_and_pinned(live: Live) -> None:
    manager = live.worker()
    again = live.worker()  # a second worker registering the same files: no new version
    manager.create_campaign(campaign(2))
    assert [v["version"] for v in again.template_versions("live")] == [1]
    stored = live.db[CAMPAIGNS].find_one({"_id": "camp-1"})
    assert stored["template_version"] == 1
    assert stored["template_hash"] == again.template_versions("live")[0]["content_hash"]
    live.write("# reformatted, same content\n" + V1.replace("wait: 1d", "wait: 24h"))
    assert [v["version"] for v in live.worker().template_versions("live")] == [1]
    live.write(V2)
    third = live.worker()
    versions = third.template_versions("live")
    assert [(v["version"], v["_id"].split("@")[0]) for v in versions] == [(1, "live"), (2, "live")]
    manager.initialize_campaign_conversations("camp-1")
    assert {d["context"]["template_version"] for d in live.db[CONVERSATIONS].find()} == {1}


def test_a_campaign_may_pin_a_stored_version(live: Live) -> None:
    live.worker()
    live.write(V2)
    worker = live.worker()
    worker.create_campaign({**campaign(2), "template_version": 1})
    worker.initialize_campaign_conversations("camp-1")
    worker.process_due_conversations("camp-1")
    assert texts(state(live.db, "u1")) == ["Hi A1, intro one v1"]
    with pytest.raises(InvalidInputError, match="no version 9"):
        worker.create_campaign({**campaign(2), "_id": "camp-9", "template_version": 9})


@pytest.mark.wire
def test_concurrent_registrations_make_one_version(
    wire_db: Any, tmp_path: Path, clock: ManualClock
) -> None:
    live = Live(wire_db, tmp_path, clock)
    live.write(V1)
    workers = [live.worker() for _ in range(4)]
    live.write(V2)
    edited = [live.worker() for _ in range(4)]  # each registers v2 as it is built...
    assert [v["version"] for v in edited[0].template_versions("live")] == [1, 2]
    wire_db["template_versions"].delete_many({})
    barrier = threading.Barrier(len(workers) + len(edited))
    results: list[int] = []

    def register(worker: CampaignManager) -> None:
        barrier.wait()
        assert worker.versions is not None
        results.append(
            worker.versions.repository.register(
                worker.config_manager.get_template("live"), clock.now()
            ).version
        )

    threads = [threading.Thread(target=register, args=(w,)) for w in [*workers, *edited]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stored = list(wire_db["template_versions"].find())
    # Two contents, raced by four writers each: two versions, numbered 1 and 2.
    assert sorted(doc["version"] for doc in stored) == [1, 2]
    assert len({doc["content_hash"] for doc in stored}) == 2
    assert sorted(Counter(results).values()) == [4, 4]


def test_live_edit_without_migration_keeps_the_pinned_version(live: Live) -> None:
    started(live)
    live.write(V2)
    worker = live.worker()  # restarted on the edited file
    live.clock.advance(DAY)
    drain(worker)
    # u2 goes on with v1's texts and stages (nothing crashes, nothing fails).
    assert texts(state(live.db, "u2")) == ["Hi A2, intro one v1", "pitch one v1", "pitch two v1"]
    assert len(texts(state(live.db, "u0"))) == 3
    reply(worker, "u2", 2)  # pitch (gone from the file) advances to closing as v1 says
    assert state(live.db, "u2")["current_stage"] == "closing"
    assert texts(state(live.db, "u2"))[-1] == "closing v1"
    statuses = {d["user_id"]: d["status"] for d in live.db[CONVERSATIONS].find()}
    assert set(statuses.values()) == {"active"}
    assert live.db[CAMPAIGNS].find_one({"_id": "camp-1"})["template_version"] == 1
    # A campaign created now pins the edited file.
    worker.create_campaign({**campaign(1), "_id": "camp-2"})
    assert live.db[CAMPAIGNS].find_one({"_id": "camp-2"})["template_version"] == 2


def test_a_conversation_without_its_own_version_follows_its_campaign(live: Live) -> None:
    started(live)
    live.write(V2)
    worker = live.worker()
    u2 = conversation_id_for("camp-1", "u2")
    # As written before versions existed (or by the seed's create_conversation_state).
    live.db[CONVERSATIONS].update_one({"_id": u2}, {"$unset": {"context.template_version": ""}})
    _, _, pinned = worker.evaluate_stage_progression(u2)
    assert pinned["action"] == "wait"  # v1, the campaign's pin: pitch is a stage
    # A campaign from before versions has no pin: the files apply (pitch is gone there).
    live.db[CAMPAIGNS].update_one({"_id": "camp-1"}, {"$unset": {"template_version": ""}})
    _, _, unpinned = worker.evaluate_stage_progression(u2)
    assert unpinned["action"] == "fail" and "no longer in template" in unpinned["reason"]


def test_dry_run_reports_moves_and_ends_and_writes_nothing(live: Live) -> None:
    started(live)
    live.write(V2)
    worker = live.worker()
    before = {d["_id"]: d["version"] for d in live.db[CONVERSATIONS].find()}

    report = worker.migrate_campaign("camp-1", "current", {"pitch": "offer"}).as_dict()

    assert report["dry_run"] and not report["finished"]
    assert (report["from_version"], report["to_version"]) == (1, 2)
    assert report["moved"] == {"intro -> intro": 2, "pitch -> offer": 2}
    assert report["unresolved"] == {"closing: stage closing removed": 1}
    assert report["ended"] == {}
    with pytest.raises(InvalidInputError, match="stage closing removed"):
        worker.migrate_campaign("camp-1", 2, {"pitch": "offer"}, dry_run=False)
    with pytest.raises(InvalidInputError, match="not stages of the new version"):
        worker.migrate_campaign("camp-1", 2, {"pitch": "nowhere"})
    covered = worker.migrate_campaign("camp-1", 2, {"pitch": "offer"}, "exit:completed")
    assert covered.as_dict()["ended"] == {"closing -> exit:completed (stage closing removed)": 1}
    assert {d["_id"]: d["version"] for d in live.db[CONVERSATIONS].find()} == before


def test_migration_applies_texts_removed_messages_and_renamed_and_removed_stages(
    live: Live,
) -> None:
    started(live)
    live.write(V2)
    worker = live.worker()
    sent_before = {d["user_id"]: texts(d) for d in live.db[CONVERSATIONS].find()}

    result = worker.migrate_campaign(
        "camp-1", "current", {"pitch": "offer", "closing": "exit:completed"}, dry_run=False
    )

    assert result.finished
    assert result.as_dict()["moved"] == {"intro -> intro": 2, "pitch -> offer": 2}
    assert result.as_dict()["ended"] == {"closing -> exit:completed (mapped)": 1}
    stored = live.db[CAMPAIGNS].find_one({"_id": "camp-1"})
    assert stored["template_version"] == 2 and "migrating" not in stored
    [record] = stored["migrations"]
    assert (record["from_version"], record["to_version"]) == (1, 2)
    assert record["map"] == {"closing": "exit:completed", "pitch": "offer"}
    assert record["counts"]["moved"] == {"intro -> intro": 2, "pitch -> offer": 2}
    assert record["finished_at"] is not None
    u4 = state(live.db, "u4")
    assert (u4["status"], u4["status_reason"]) == ("completed", "migration: mapped")
    # Renamed stage: same entry under its new name, its sent message not sent again.
    u2 = state(live.db, "u2")
    assert u2["current_stage"] == "offer" and u2["context"]["template_version"] == 2
    assert u2["stages"][-1]["name"] == "offer" and u2["stages"][-1]["formerly"] == ["pitch"]

    live.clock.advance(DAY)
    drain(worker)
    after = {d["user_id"]: texts(d) for d in live.db[CONVERSATIONS].find()}
    # Changed texts reach what was not sent yet (in the renamed stage, at the step it
    # had reached); nothing recorded is lost or resent.
    assert after["u2"] == [*sent_before["u2"], "offer two v2"]
    assert after["u3"] == [*sent_before["u3"], "offer two v2"]
    # u0 and u1 sent all three of v1's intro messages; v2's intro has two: they wait for
    # a reply with nothing more to send.
    assert after["u0"] == sent_before["u0"] and after["u1"] == sent_before["u1"]
    # The reply that the renamed stage waits for still moves it on (to the end: v2 has
    # no stage after offer).
    reply(worker, "u2", 2)
    assert state(live.db, "u2")["status"] == "completed"
    reply(worker, "u0", 2)  # intro, its messages cut short, still advances on a reply
    assert state(live.db, "u0")["current_stage"] == "offer"
    assert texts(state(live.db, "u0"))[-1] == "offer one v2"
    for doc in live.db[CONVERSATIONS].find():
        ids = [m["message_id"] for m in doc["message_history"]]
        assert len(ids) == len(set(ids))
    assert_metrics_match_states(worker, live.db)

    again = worker.migrate_campaign("camp-1", 2, {"pitch": "offer"}, dry_run=False)
    assert again.finished and again.report.total == 0 and again.report.already == 3
    assert len(live.db[CAMPAIGNS].find_one({"_id": "camp-1"})["migrations"]) == 1


def test_a_migration_is_reversed_by_migrating_back(live: Live) -> None:
    started(live)
    live.write(V2)
    worker = live.worker()
    original = {d["user_id"]: d for d in live.db[CONVERSATIONS].find()}
    worker.migrate_campaign(
        "camp-1", "current", {"pitch": "offer", "closing": "exit:failed"}, dry_run=False
    )

    back = worker.migrate_campaign("camp-1", 1, {"offer": "pitch"}, dry_run=False)

    assert back.finished
    assert back.as_dict()["moved"] == {"intro -> intro": 2, "offer -> pitch": 2}
    stored = live.db[CAMPAIGNS].find_one({"_id": "camp-1"})
    assert stored["template_version"] == 1
    assert [(m["from_version"], m["to_version"]) for m in stored["migrations"]] == [(1, 2), (2, 1)]
    for user in ("u0", "u1", "u2", "u3"):
        doc, before = state(live.db, user), original[user]
        assert doc["context"]["template_version"] == 1
        for key in ("current_stage", "stage_step", "message_history", "status"):
            assert doc[key] == before[key], (user, key)
        assert doc["context"]["available_stages"] == before["context"]["available_stages"]
        assert doc["stages"][-1]["entered_at"] == before["stages"][-1]["entered_at"]
    assert state(live.db, "u2")["stages"][-1]["formerly"] == ["pitch", "offer"]
    # Back on v1: u2's reply in pitch leads to closing again, with v1's text.
    reply(worker, "u2", 2)
    assert texts(state(live.db, "u2"))[-1] == "closing v1"
    assert_metrics_match_states(worker, live.db)


def test_a_half_applied_migration_runs_each_conversation_on_its_own_version(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    started(live)
    live.write(V2)
    worker = live.worker()
    counted = MongoCampaignRepository.count_migration

    def crash_after_first_batch(self: Any, *args: Any) -> bool:
        counted(self, *args)
        raise RuntimeError("worker died after its first batch")

    monkeypatch.setattr(MongoCampaignRepository, "count_migration", crash_after_first_batch)
    with pytest.raises(RuntimeError):
        worker.migrate_campaign(
            "camp-1", 2, {"pitch": "offer"}, "exit:failed", dry_run=False, batch_size=2
        )
    monkeypatch.undo()
    versions = Counter(
        d["context"]["template_version"] for d in live.db[CONVERSATIONS].find({"status": "active"})
    )
    assert versions[1] and versions[2], versions  # half applied
    stored = live.db[CAMPAIGNS].find_one({"_id": "camp-1"})
    assert stored["template_version"] == 1 and stored["migrating"]["to_version"] == 2
    live.clock.advance(DAY)
    drain(worker)  # each on its own version: nothing fails
    assert {d["status"] for d in live.db[CONVERSATIONS].find({"user_id": {"$ne": "u4"}})} == {
        "active"
    }
    with pytest.raises(InvalidStateTransitionError, match="being migrated to version 2"):
        worker.migrate_campaign("camp-1", 1, {}, dry_run=False)
    resumed = worker.migrate_campaign("camp-1", 2, {"pitch": "offer"}, "exit:failed", dry_run=False)
    assert resumed.finished and resumed.report.already >= 1
    stored = live.db[CAMPAIGNS].find_one({"_id": "camp-1"})
    assert stored["template_version"] == 2 and len(stored["migrations"]) == 1
    counts = stored["migrations"][0]["counts"]
    assert sum(counts["moved"].values()) == 4 and sum(counts["ended"].values()) == 1
    assert_metrics_match_states(worker, live.db)


def test_migration_and_processing_race_each_wins_or_loses_cleanly(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two writers on the same conversations: processing writes between the migration's
    read and its write (the migration loses, re-reads, lands); then the migration writes
    between processing's read and write (processing loses, and goes on next pass)."""
    started(live)
    live.write(V2)
    migrator, processor = live.worker(), live.worker()
    live.clock.advance(DAY)  # u2's and u3's pitch two are due
    pages = MongoConversationStateRepository.page_active
    calls = Counter[str]()

    def processing_cuts_in(self: Any, campaign_id: str, after: str | None, limit: int) -> Any:
        docs = pages(self, campaign_id, after, limit)
        calls["pages"] += 1
        if calls["pages"] == 2:  # the apply's first page (the first was the dry scan's)
            result = processor.process_due_conversations("camp-1")
            assert result.written >= 1
        return docs

    monkeypatch.setattr(MongoConversationStateRepository, "page_active", processing_cuts_in)
    result = migrator.migrate_campaign(
        "camp-1", 2, {"pitch": "offer"}, "exit:completed", dry_run=False
    )
    monkeypatch.undo()
    assert result.finished and result.report.conflicts >= 1
    u2 = state(live.db, "u2")
    # Processing won u2 first (v1's text), the migration landed on top of it.
    assert texts(u2)[-1] == "pitch two v1" and u2["context"]["template_version"] == 2
    assert u2["current_stage"] == "offer" and u2["stage_step"] == 2

    # The other way round: the migration back lands between processing's read and write.
    sent = {d["user_id"]: texts(d) for d in live.db[CONVERSATIONS].find()}
    reads = MongoConversationStateRepository.read_due

    def migration_cuts_in(self: Any, *args: Any, **kwargs: Any) -> Any:
        docs = reads(self, *args, **kwargs)
        if docs:
            migrator.migrate_campaign("camp-1", 1, {"offer": "pitch"}, dry_run=False)
        return docs

    monkeypatch.setattr(MongoConversationStateRepository, "read_due", migration_cuts_in)
    lost = processor.process_due_conversations("camp-1")
    monkeypatch.undo()
    assert lost.written == 0 and lost.conflicts == lost.claimed >= 1
    drain(processor)
    # Back on v1 with every message of their stages sent: nothing sent again.
    assert {d["user_id"]: texts(d) for d in live.db[CONVERSATIONS].find()} == sent
    active = live.db[CONVERSATIONS].find({"status": "active"})
    assert {d["context"]["template_version"] for d in active} == {1}
    # u4 ended under the first migration: it stays as it ended, on version 2.
    assert state(live.db, "u4")["context"]["template_version"] == 2
    assert state(live.db, "u2")["current_stage"] == "pitch"
    assert_metrics_match_states(processor, live.db)


@pytest.mark.wire
def test_migration_and_processing_in_parallel_threads(
    wire_db: Any, wire_uri: str, tmp_path: Path, clock: ManualClock
) -> None:
    """Real concurrency over the wire: a migration and processing batches on separate
    clients at once. Every conversation ends on the new version, each message once."""
    live = Live(wire_db, tmp_path, clock)
    live.write(V1)
    manager = live.worker()
    manager.create_campaign(campaign(60))
    manager.initialize_campaign_conversations("camp-1")
    drain(manager)
    clock.advance(DAY)
    live.write(V2)
    clients: list[pymongo.MongoClient[Doc]] = [
        pymongo.MongoClient(wire_uri, tz_aware=True, tzinfo=UTC) for _ in range(2)
    ]
    migrator, processor = (live.worker(client[wire_db.name]) for client in clients)
    errors: list[BaseException] = []

    def run(job: Any) -> None:
        try:
            job()
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [
        threading.Thread(
            target=run,
            args=(lambda: migrator.migrate_campaign("camp-1", 2, {}, dry_run=False, batch_size=7),),
        ),
        threading.Thread(target=run, args=(lambda: drain(processor),)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for client in clients:
        client.close()
    assert not errors, errors
    docs = list(wire_db[CONVERSATIONS].find())
    assert {d["context"]["template_version"] for d in docs} == {2}
    assert wire_db[CAMPAIGNS].find_one({"_id": "camp-1"})["template_version"] == 2
    manager = live.worker()
    drain(manager)
    for doc in wire_db[CONVERSATIONS].find():
        assert texts(doc)[-1] in ("intro two v1", "intro two v2")
        assert len(texts(doc)) == 2
    assert wire_db[OUTBOX].count_documents({}) == 120
    assert_metrics_match_states(manager, wire_db)
