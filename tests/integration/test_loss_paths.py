"""The loss paths of "Nothing lost, nothing leaked", each on the in-process fake and over
the wire (``any_db``): outbound publication, limits, per-conversation isolation, cancel,
reconcile under in-flight batches and the smaller contract fixes."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from campaign_worker.adapters.clock import ManualClock
from campaign_worker.adapters.mongo import CAMPAIGNS, CONVERSATIONS, METRICS, OUTBOX
from campaign_worker.adapters.template_files import ConfigManager
from campaign_worker.bootstrap import build_manager, ensure_indexes
from campaign_worker.domain import progression
from campaign_worker.domain.documents import ConversationState, conversation_id_for
from campaign_worker.domain.errors import InvalidInputError, LimitExceededError
from campaign_worker.domain.limits import MAX_CONTENT_BYTES, MAX_HISTORY_MESSAGES
from campaign_worker.service import campaign_manager as cm
from campaign_worker.service import processing
from campaign_worker.service.campaign_manager import CampaignManager
from campaign_worker.settings import Settings
from tests.conftest import ManagerFactory, sample_campaign

pytestmark = pytest.mark.wire

Doc = dict[str, Any]
USER = "user-00000"
CID = conversation_id_for("camp-1", USER)


def started(manager: CampaignManager, n: int = 1, **extra: Any) -> None:
    """A running campaign whose conversations got their first message."""
    manager.create_campaign(sample_campaign(n, **extra))
    manager.initialize_campaign_conversations("camp-1")
    manager.process_due_conversations("camp-1")


def outbox_of(db: Any) -> dict[str, str]:
    return {doc["_id"]: doc["status"] for doc in db[OUTBOX].find()}


def recorded(db: Any) -> list[str]:
    return [
        m["message_id"]
        for doc in db[CONVERSATIONS].find()
        for m in doc["message_history"]
        if m["direction"] == "outbound"
    ]


def reply_racing(
    manager: CampaignManager,
    monkeypatch: pytest.MonkeyPatch,
    first: tuple[str, str, str, str],
    second: tuple[str, str, str, str],
) -> Doc:
    """Record ``second``; ``first`` lands after ``second`` computed its change and
    before it writes (a concurrent writer winning the race)."""
    repo = manager.conversation_state_repository
    real = repo.write_transitions

    def other_lands_first(*args: Any, **kwargs: Any) -> Any:
        monkeypatch.setattr(repo, "write_transitions", real)
        manager.record_inbound_message(*first)
        return real(*args, **kwargs)

    monkeypatch.setattr(repo, "write_transitions", other_lands_first)
    return manager.record_inbound_message(*second)


def assert_exact(manager: CampaignManager, db: Any) -> None:
    """Outbox = recorded messages, all deliverable; metrics = a recount (no drift)."""
    ids = recorded(db)
    assert len(ids) == len(set(ids))
    assert outbox_of(db) == dict.fromkeys(ids, "pending")
    assert manager.reconcile_campaign_metrics("camp-1") == {}


# ------------------------------------------------------------ 1 and 11: outbound path


def test_two_replies_racing_never_cancel_a_recorded_message(
    any_db: Any, make_manager: ManagerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both replies compute the same next message id; the loser must not withdraw what
    the winner recorded (finding 1: it was cancelled in the outbox)."""
    manager = make_manager(any_db)
    started(manager)
    first = ("camp-1", USER, "in-b", "tell me more")
    result = reply_racing(manager, monkeypatch, first, ("camp-1", USER, "in-a", "yes please"))

    assert result["duplicate"] is False
    state = manager.get_conversation(CID)
    assert [m["message_id"] for m in state["message_history"] if m["direction"] == "inbound"] == [
        "in-b",
        "in-a",
    ]
    assert state["unpublished"] == []
    assert_exact(manager, any_db)


def test_a_duplicate_delivery_that_loses_its_race_reports_no_actions(
    any_db: Any, make_manager: ManagerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Finding 8: the lost attempt's actions were returned with ``duplicate: true``."""
    manager = make_manager(any_db)
    started(manager)
    reply = ("camp-1", USER, "in-a", "yes please")
    result = reply_racing(manager, monkeypatch, reply, reply)
    assert (result["duplicate"], result["actions"]) == (True, [])
    assert_exact(manager, any_db)


def test_a_write_the_store_refuses_publishes_nothing_and_fails_alone(
    wire_db: Any, make_manager: ManagerFactory
) -> None:
    """Finding 11 (and 5): a state write that errors, rather than losing its race, left
    a delivered message no conversation recorded; here it fails only its conversation.
    Wire only: mongomock-ng raises a TypeError where a server reports a write error."""
    any_db = wire_db
    manager = make_manager(any_db, process_batch_size=10)
    manager.create_campaign(sample_campaign(3))
    manager.initialize_campaign_conversations("camp-1")
    broken = conversation_id_for("camp-1", "user-00001")
    # A field the write $pushes to that is no array: the server refuses that one write.
    any_db[CONVERSATIONS].update_one({"_id": broken}, {"$set": {"last_write": "corrupt"}})

    result = manager.process_due_conversations("camp-1")

    assert (result.claimed, result.written, result.failures) == (3, 2, 1)
    doc = any_db[CONVERSATIONS].find_one({"_id": broken})
    assert doc["status"] == "failed" and doc["message_history"] == []
    assert doc["status_reason"]
    assert {row["conversation_id"] for row in any_db[OUTBOX].find()} == {
        conversation_id_for("camp-1", "user-00000"),
        conversation_id_for("camp-1", "user-00002"),
    }
    metrics = manager.get_campaign_metrics("camp-1")
    assert (metrics["failed_conversations"], metrics["active_conversations"]) == (1, 2)
    assert_exact(manager, any_db)


def test_an_unencodable_change_fails_its_own_write_only(
    wire_db: Any, make_manager: ManagerFactory
) -> None:
    """Wire only: mongomock-ng stores any Python int, where BSON refuses to encode it."""
    any_db = wire_db
    manager = make_manager(any_db)
    manager.create_campaign(sample_campaign(2))
    manager.initialize_campaign_conversations("camp-1")
    repo = manager.conversation_state_repository
    states = [ConversationState.model_validate(doc) for doc in any_db[CONVERSATIONS].find()]
    bad = states[0].model_copy(deep=True, update={"status_reason": "x"})
    bad.context.attributes["n"] = 2**70  # BSON holds 64-bit integers only
    good = states[1].model_copy(update={"status_reason": "fine"})

    outcome = repo.write_transitions([(states[0], bad), (states[1], good)])

    assert set(outcome.applied) == {states[1].id}
    assert set(outcome.failed) == {states[0].id}
    assert any_db[CONVERSATIONS].find_one({"_id": states[0].id})["status_reason"] is None


# ------------------------------------------------------------ 4: limits


def test_an_over_long_reply_is_kept_cut_and_marked(
    any_db: Any, make_manager: ManagerFactory
) -> None:
    manager = make_manager(any_db)
    started(manager)
    huge = "é" * 5_000_000  # 10 MB of UTF-8
    manager.record_inbound_message("camp-1", USER, "in-huge", huge)
    [reply] = [
        m for m in manager.get_conversation(CID)["message_history"] if m["direction"] == "inbound"
    ]
    assert len(reply["content"].encode()) <= MAX_CONTENT_BYTES
    assert huge.startswith(reply["content"])
    assert reply["metadata"]["truncated"] is True
    assert reply["metadata"]["original_bytes"] == 10_000_000
    # Next replies still land: the document stays far below MongoDB's limit.
    manager.record_inbound_message("camp-1", USER, "in-huge-2", huge)
    assert manager.get_conversation(CID)["metrics"]["messages_received"] == 2


def test_an_over_long_rendered_message_is_sent_cut_and_marked(
    any_db: Any, make_manager: ManagerFactory, tmp_path: Path
) -> None:
    """Outbound texts are capped like replies: a placeholder repeated over a large
    attribute renders 24 KiB; the message is recorded and sent cut at the limit."""
    source = Path(cm.__file__).parents[1] / "templates" / "default.yaml"
    template = yaml.safe_load(source.read_text())
    first = template["campaign_types"]["sales"]["stages"][0]["messages"][0]
    first["text"] = "{bio}{bio}{bio}"
    (tmp_path / "default.yaml").write_text(yaml.safe_dump(template))
    manager = make_manager(any_db, campaign_templates_dir=tmp_path)
    bio = "ü" * 4_000  # 8,000 bytes of UTF-8: within the attribute limit
    manager.create_campaign(
        {**sample_campaign(1), "recipients": [{"user_id": USER, "attributes": {"bio": bio}}]}
    )
    manager.initialize_campaign_conversations("camp-1")
    manager.process_due_conversations("camp-1")
    [sent] = manager.get_conversation(CID)["message_history"]
    assert len(sent["content"].encode()) <= MAX_CONTENT_BYTES
    assert (bio * 3).startswith(sent["content"]) and len(sent["content"]) > 8_000
    assert sent["metadata"]["truncated"] is True
    assert sent["metadata"]["original_bytes"] == 24_000
    [row] = any_db[OUTBOX].find()
    assert row["content"] == sent["content"]


@pytest.mark.parametrize(
    "metadata, match",
    [
        ({"blob": "x" * 5000}, "metadata: .* bytes exceed the limit"),
        ({"n": 2**70}, "does not fit in 64 bits"),
        ({"$where": 1}, "cannot be stored"),
    ],
)
def test_reply_metadata_over_the_limits_is_refused_before_any_write(
    any_db: Any, make_manager: ManagerFactory, metadata: Doc, match: str
) -> None:
    manager = make_manager(any_db)
    started(manager)
    before = any_db[CONVERSATIONS].find_one({"_id": CID})
    with pytest.raises(LimitExceededError, match=match):
        manager.record_inbound_message("camp-1", USER, "in-1", "yes", metadata=metadata)
    assert any_db[CONVERSATIONS].find_one({"_id": CID}) == before
    assert len(outbox_of(any_db)) == 1


def test_oversized_attributes_are_refused_naming_the_recipient(
    any_db: Any, make_manager: ManagerFactory
) -> None:
    manager = make_manager(any_db)
    campaign = sample_campaign(2)
    campaign["recipients"][1]["attributes"] = {"notes": "x" * 9000}
    with pytest.raises(InvalidInputError, match=r"recipients\S*\.1\.attributes: .*8192"):
        manager.create_campaign(campaign)


def test_history_is_capped_and_the_conversation_cannot_outgrow_it(
    any_db: Any, make_manager: ManagerFactory
) -> None:
    manager = make_manager(any_db)
    manager.create_campaign(sample_campaign(1))
    manager.initialize_campaign_conversations("camp-1")
    manager.pause_campaign("camp-1")  # replies are recorded, nothing is evaluated
    manager.record_inbound_message("camp-1", USER, "in-0", "hello")
    first = any_db[CONVERSATIONS].find_one({"_id": CID})["message_history"][0]
    history = [{**first, "message_id": f"in-{i}"} for i in range(MAX_HISTORY_MESSAGES)]
    any_db[CONVERSATIONS].update_one({"_id": CID}, {"$set": {"message_history": history}})
    with pytest.raises(LimitExceededError, match="holds 500 messages"):
        manager.record_inbound_message("camp-1", USER, "in-over", "hello")
    manager.resume_campaign("camp-1")
    manager.process_due_conversations("camp-1")
    state = manager.get_conversation(CID)
    assert state["status"] == "failed"
    assert "history limit" in state["status_reason"]
    assert len(state["message_history"]) == MAX_HISTORY_MESSAGES
    assert state["metrics"]["messages_sent"] == 0  # nothing sent past the cap


# ------------------------------------------------------------ 5: isolation


def _edited_templates(tmp_path: Path) -> ConfigManager:
    """The packaged default template with awareness cut to one message (and so to no
    follow-up)."""
    source = Path(cm.__file__).parents[1] / "templates" / "default.yaml"
    template = yaml.safe_load(source.read_text())
    stage = template["campaign_types"]["sales"]["stages"][0]
    stage["messages"] = stage["messages"][:1]
    stage["max_followups_without_reply"]["count"] = 0
    (tmp_path / "default.yaml").write_text(yaml.safe_dump(template))
    return ConfigManager(tmp_path)


def test_a_template_edit_that_removes_sent_messages_never_raises(
    any_db: Any, clock: ManualClock, tmp_path: Path
) -> None:
    """Finding 5: progression raised IndexError for conversations that already sent more
    messages than the edited stage has, and the whole batch stayed leased."""
    settings = Settings(mongodb_db="x", process_batch_size=50)
    manager = build_manager(any_db, settings, clock=clock)
    ensure_indexes(manager)
    manager.create_campaign(sample_campaign(4))
    manager.initialize_campaign_conversations("camp-1")
    manager.process_due_conversations("camp-1")
    clock.advance(timedelta(days=1, minutes=1))
    assert manager.process_due_conversations("camp-1").sent == 4  # step 2 of awareness

    edited = build_manager(
        any_db, settings, clock=clock, config_manager=_edited_templates(tmp_path)
    )
    # Campaigns stay on the version they pinned: the edit reaches them by a migration.
    moved = edited.migrate_campaign("camp-1", "current", dry_run=False)
    assert moved.finished and moved.report.total == 4
    clock.advance(timedelta(days=3))
    result = edited.process_due_conversations("camp-1")
    assert (result.claimed, result.written, result.failures) == (4, 4, 0)
    states = list(any_db[CONVERSATIONS].find())
    assert {s["status"] for s in states} == {"failed"}  # the follow-up limit, as configured
    assert all(s.get("lease_owner") is None for s in states)
    assert_exact(edited, any_db)


def test_one_conversation_that_cannot_be_evaluated_fails_alone(
    any_db: Any, make_manager: ManagerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    manager = make_manager(any_db)
    manager.create_campaign(sample_campaign(5))
    manager.initialize_campaign_conversations("camp-1")
    victim = conversation_id_for("camp-1", "user-00002")
    real_run = progression.run

    def run(state: ConversationState, *args: Any) -> Any:
        if state.id == victim:
            raise ZeroDivisionError("a bug")
        return real_run(state, *args)

    monkeypatch.setattr(processing, "run", run)
    result = manager.process_due_conversations("camp-1")
    assert (result.claimed, result.written, result.sent) == (5, 5, 4)
    assert result.finished == {"failed": 1}
    doc = any_db[CONVERSATIONS].find_one({"_id": victim})
    assert doc["status"] == "failed"
    assert "ZeroDivisionError" in doc["status_reason"]
    assert doc["stages"][-1]["exited_at"] is not None
    assert_exact(manager, any_db)


# ------------------------------------------------------------ 6: cancel settles


def test_cancel_settles_every_open_conversation_in_batches(
    any_db: Any, make_manager: ManagerFactory
) -> None:
    manager = make_manager(any_db, process_batch_size=4)
    started(manager, 10)
    manager.record_inbound_message("camp-1", "user-00003", "in-3", "STOP")  # opted out
    manager.cancel_campaign("camp-1")
    assert manager.poll_campaigns().process == ["camp-1"]
    settled = [manager.process_due_conversations("camp-1").finished for _ in range(3)]
    assert settled == [{"cancelled": 4}, {"cancelled": 4}, {"cancelled": 1}]
    assert manager.process_due_conversations("camp-1").claimed == 0

    metrics = manager.get_campaign_metrics("camp-1")
    assert metrics["active_conversations"] == 0
    assert metrics["cancelled_conversations"] == 9
    assert metrics["opted_out_conversations"] == 1
    assert manager.poll_campaigns().process == []  # settled: the poller stops looking
    assert any_db[CAMPAIGNS].find_one({"_id": "camp-1"})["settled_at"] is not None

    # A reply after cancel is recorded and changes nothing else.
    before = manager.get_conversation(CID)
    manager.record_inbound_message("camp-1", USER, "late", "yes, tell me more")
    after = manager.get_conversation(CID)
    assert (after["status"], after["current_stage"]) == ("cancelled", before["current_stage"])
    assert after["message_history"][-1]["message_id"] == "late"
    assert after["next_action_at"] is None
    assert_exact(manager, any_db)


def test_lag_ignores_paused_and_cancelled_campaigns(
    any_db: Any, make_manager: ManagerFactory, clock: ManualClock
) -> None:
    manager = make_manager(any_db)
    started(manager, 2)
    manager.create_campaign(sample_campaign(2, campaign_id="camp-2"))
    manager.initialize_campaign_conversations("camp-2")
    manager.pause_campaign("camp-1")
    manager.cancel_campaign("camp-2")
    manager.record_inbound_message("camp-1", USER, "in-1", "yes")  # due on resume
    clock.advance(timedelta(days=5))
    result = manager.poll_campaigns()
    assert result.oldest_due is None
    assert "camp-1" not in result.process


# ------------------------------------------------------------ 12: reconcile in flight


def test_reconcile_while_a_batch_is_between_its_writes_defers(
    any_db: Any, make_manager: ManagerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Finding 12: states written, increment not yet landed: the reconcile counted the
    batch, then the increment counted it again."""
    manager = make_manager(any_db)
    manager.create_campaign(sample_campaign(6))
    manager.initialize_campaign_conversations("camp-1")
    repo = manager.campaign_metrics
    real = repo.apply_delta
    drift: list[dict[str, float]] = []

    def reconcile_first(*args: Any, **kwargs: Any) -> None:
        monkeypatch.setattr(repo, "apply_delta", real)
        drift.append(manager.reconcile_campaign_metrics("camp-1"))
        real(*args, **kwargs)

    monkeypatch.setattr(repo, "apply_delta", reconcile_first)
    assert manager.process_due_conversations("camp-1").sent == 6
    assert drift == [{}]
    assert manager.get_campaign_metrics("camp-1")["message_metrics"]["total_sent"] == 6
    assert_exact(manager, any_db)


def test_a_writer_that_died_mid_batch_is_corrected_once_its_registration_expires(
    any_db: Any, make_manager: ManagerFactory, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    manager = make_manager(any_db)
    manager.create_campaign(sample_campaign(3))
    manager.initialize_campaign_conversations("camp-1")

    def die(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("killed before the increment")

    monkeypatch.setattr(manager.campaign_metrics, "apply_delta", die)
    with pytest.raises(RuntimeError):
        manager.process_due_conversations("camp-1")
    monkeypatch.undo()
    assert manager.reconcile_campaign_metrics("camp-1") == {}  # the writer may be alive
    clock.advance(manager.inflight_timeout + timedelta(seconds=1))
    assert manager.reconcile_campaign_metrics("camp-1") == {"message_metrics.total_sent": 3}
    stored = any_db[METRICS].find_one({"_id": "camp-1"})
    assert stored["inflight"] == {}
    assert_exact(manager, any_db)


# ------------------------------------------------------------ 8: contract


def test_create_with_an_idempotency_key_makes_one_campaign(
    any_db: Any, make_manager: ManagerFactory
) -> None:
    manager = make_manager(any_db)
    request = sample_campaign(2)
    del request["_id"]
    first = manager.create_campaign(dict(request), idempotency_key="order-77")
    second = manager.create_campaign(dict(request), idempotency_key="order-77")
    assert first == second
    assert any_db[CAMPAIGNS].count_documents({}) == 1
    with pytest.raises(InvalidInputError, match="different content"):
        manager.create_campaign({**request, "name": "Other"}, idempotency_key="order-77")


def test_empty_audiences_are_refused(any_db: Any, make_manager: ManagerFactory) -> None:
    manager = make_manager(any_db)
    with pytest.raises(InvalidInputError, match="audience is empty"):
        manager.create_campaign(sample_campaign(0))
    referenced = sample_campaign(0)
    referenced["recipients"] = {"collection": "people", "query": {"list": "nobody"}}
    with pytest.raises(InvalidInputError, match="audience is empty"):
        manager.create_campaign(referenced)
    assert any_db[CAMPAIGNS].count_documents({}) == 0


def test_invalid_audience_rows_are_counted_on_the_campaign_and_in_metrics(
    any_db: Any, make_manager: ManagerFactory
) -> None:
    manager = make_manager(any_db)
    any_db["people"].insert_many(
        [{"_id": f"r{i}", "user_id": f"user-{i}", "list": "a"} for i in range(5)]
        + [
            {"_id": "r5", "user_id": "", "list": "a"},
            {"_id": "r6", "user_id": "user-6", "timezone": "Mars/Base", "list": "a"},
        ]
    )
    campaign = sample_campaign(0)
    campaign["recipients"] = {"collection": "people", "query": {"list": "a"}}
    manager.create_campaign(campaign)
    assert manager.initialize_campaign_conversations("camp-1") == 5
    stored = any_db[CAMPAIGNS].find_one({"_id": "camp-1"})
    assert stored["invalid_recipients"] == 2
    assert [sample["user_id"] for sample in stored["invalid_samples"]] == ["", "user-6"]
    error = stored["invalid_samples"][1]["error"]
    assert "timezone" in error and "Mars/Base" not in error  # the field, not the value
    assert manager.get_campaign_metrics("camp-1")["invalid_recipients"] == 2
    assert manager.reconcile_campaign_metrics("camp-1") == {}


def test_the_stored_metrics_document_has_its_documented_shape(
    any_db: Any, make_manager: ManagerFactory, clock: ManualClock
) -> None:
    """Other services read ``campaign_metrics`` directly: derived fields are stored."""
    manager = make_manager(any_db)
    started(manager, 4)
    clock.advance(timedelta(hours=2))
    manager.record_inbound_message("camp-1", USER, "in-1", "yes")
    raw = any_db[METRICS].find_one({"_id": "camp-1"})
    assert raw["message_metrics"]["response_rate"] == pytest.approx(1 / 5)
    assert raw["stage_metrics"]["awareness"]["avg_duration_seconds"] == pytest.approx(7200.0)
    assert raw["stage_metrics"]["consideration"]["avg_duration_seconds"] == 0.0


def test_a_negative_stored_counter_is_not_blamed_on_the_caller(
    any_db: Any, make_manager: ManagerFactory
) -> None:
    """Finding 12: counters that went negative made get_campaign_metrics fail as invalid
    input (and so be dead-lettered); the reconcile then puts them right."""
    manager = make_manager(any_db)
    started(manager, 2)
    any_db[METRICS].update_one({"_id": "camp-1"}, {"$inc": {"active_conversations": -5}})
    assert manager.get_campaign_metrics("camp-1")["active_conversations"] == 0
    assert manager.reconcile_campaign_metrics("camp-1") == {"active_conversations": 5}
    assert manager.get_campaign_metrics("camp-1")["active_conversations"] == 2


def test_pending_conversations_are_honest_for_every_status(
    any_db: Any, make_manager: ManagerFactory
) -> None:
    manager = make_manager(any_db)
    started(manager, 3)
    manager.mark_conversation_complete(CID)
    completed = manager.get_pending_conversations("camp-1", status="completed")
    assert [doc["_id"] for doc in completed] == [CID]
    assert manager.get_pending_conversations("camp-1", status="failed") == []
