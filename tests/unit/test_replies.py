"""Replies recorded in batches (``service/replies.py``), on both tiers: each reply once, in
order, evaluated as if it had come alone; duplicates within and across batches; a batch
that races another writer; every reply gets its own outcome."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from campaign_worker.domain.documents import conversation_id_for
from campaign_worker.domain.errors import (
    CampaignNotFoundError,
    ConversationNotFoundError,
    InvalidInputError,
    LimitExceededError,
)
from campaign_worker.service.campaign_manager import CampaignManager
from campaign_worker.service.reply_recording import InboundReply
from tests import fakes
from tests.conftest import ManagerFactory, sample_campaign

any_db = fakes.any_db  # fixture: each test on the in-memory fakes, and over the wire

Doc = dict[str, Any]
HOUR = timedelta(hours=1)


def user(index: int) -> str:
    return f"user-{index:05d}"


def started(manager: CampaignManager, n: int) -> None:
    manager.create_campaign(sample_campaign(n))
    assert manager.initialize_campaign_conversations("camp-1") == n
    manager.process_due_conversations("camp-1")  # the first message to everyone


def r(
    index: int, message_id: str, content: str = "hello", campaign: str = "camp-1"
) -> InboundReply:
    return InboundReply(campaign, user(index), message_id, content)


def inbound(manager: CampaignManager, index: int) -> list[Doc]:
    doc = manager.get_conversation(conversation_id_for("camp-1", user(index)))
    return [m for m in doc["message_history"] if m["direction"] == "inbound"]


def test_a_batch_records_each_reply_once_in_order_as_if_one_by_one(
    manager_on_both: CampaignManager, make_manager: ManagerFactory, db: Any, clock: Any
) -> None:
    manager = manager_on_both
    started(manager, 3)
    clock.advance(HOUR)
    batch = [
        r(0, "m-1", "Interested!"),
        r(1, "m-2", "STOP"),
        r(0, "m-1", "Interested!"),  # the same reply delivered twice in one batch
        r(0, "m-3", "Yes, tell me more"),
        r(2, "m-4", "later"),
    ]

    outcomes = manager.record_inbound_messages(batch)

    assert [o.error for o in outcomes] == [None] * 5
    results = [o.result or {} for o in outcomes]
    assert [res["duplicate"] for res in results] == [False, False, True, False, False]
    assert results[0]["actions"] == ["advance", "send", "wait"]  # a yes moves awareness
    assert results[0]["current_stage"] == "consideration"
    assert results[1]["status"] == "opted_out"
    assert results[2]["actions"] == []
    assert results[3]["current_stage"] == "consideration"
    # In arrival order; each tagged with the stage it arrived in (after the one before).
    assert [(m["message_id"], m["metadata"]["stage"]) for m in inbound(manager, 0)] == [
        ("m-1", "awareness"),
        ("m-3", "consideration"),
    ]
    assert [m["message_id"] for m in inbound(manager, 1)] == ["m-2"]
    metrics = manager.get_campaign_metrics("camp-1")
    assert metrics["message_metrics"]["total_received"] == 4
    assert manager.reconcile_campaign_metrics("camp-1") == {}  # no drift: counted once

    # The same replies again, in a later batch: all duplicates, nothing written.
    before = manager.get_conversation(conversation_id_for("camp-1", user(0)))["version"]
    again = manager.record_inbound_messages(batch)
    assert all(o.result and o.result["duplicate"] for o in again)
    assert manager.get_conversation(conversation_id_for("camp-1", user(0)))["version"] == before
    assert manager.get_campaign_metrics("camp-1")["message_metrics"]["total_received"] == 4


def test_each_bad_reply_fails_alone_and_the_rest_lands(manager_on_both: CampaignManager) -> None:
    manager = manager_on_both
    started(manager, 2)
    batch = [
        r(0, "m-1"),
        r(0, "m-2", campaign="ghost"),
        r(7, "m-3"),  # no such recipient
        r(1, ""),  # no message id
        InboundReply("camp-1", user(1), "m-4", 42),  # type: ignore[arg-type]
        r(1, "m-5"),
    ]

    outcomes = manager.record_inbound_messages(batch)

    assert outcomes[0].error is None and outcomes[5].error is None
    assert isinstance(outcomes[1].error, CampaignNotFoundError)
    assert isinstance(outcomes[2].error, ConversationNotFoundError)
    assert isinstance(outcomes[3].error, InvalidInputError)
    assert isinstance(outcomes[4].error, InvalidInputError)
    assert [m["message_id"] for m in inbound(manager, 0)] == ["m-1"]
    assert [m["message_id"] for m in inbound(manager, 1)] == ["m-5"]


def test_a_full_conversation_refuses_its_reply_alone(
    manager_on_both: CampaignManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    manager = manager_on_both
    started(manager, 2)
    monkeypatch.setattr("campaign_worker.service.reply_recording.MAX_HISTORY_MESSAGES", 2)
    outcomes = manager.record_inbound_messages([r(0, "m-1"), r(0, "m-2"), r(1, "m-3")])
    assert outcomes[0].error is None and outcomes[2].error is None
    assert isinstance(outcomes[1].error, LimitExceededError)
    assert [m["message_id"] for m in inbound(manager, 0)] == ["m-1"]


@pytest.mark.parametrize("same_message", [False, True])
def test_a_batch_that_loses_a_race_reapplies_its_replies_on_the_fresh_state(
    manager_on_both: CampaignManager,
    make_manager: ManagerFactory,
    db: Any,
    monkeypatch: pytest.MonkeyPatch,
    same_message: bool,
) -> None:
    """Two replies to one conversation racing (two workers): both are recorded, once each;
    the same reply racing itself is recorded once."""
    manager = manager_on_both
    started(manager, 2)
    other = make_manager(db)  # another worker on the same database
    repo = manager.conversation_state_repository
    write = repo.write_transitions
    raced: list[Doc] = []

    def racing_write(changes: Any, now: Any = None) -> Any:
        if not raced:  # just before our first write, the other worker records its reply
            message_id = "m-mine" if same_message else "m-other"
            raced.append(other.record_inbound_message("camp-1", user(0), message_id, "hi"))
        return write(changes, now)

    monkeypatch.setattr(repo, "write_transitions", racing_write)
    outcomes = manager.record_inbound_messages([r(0, "m-mine", "hi"), r(1, "m-x", "hi")])

    assert [o.error for o in outcomes] == [None, None]
    assert outcomes[0].result is not None
    assert outcomes[0].result["duplicate"] is same_message
    expected = ["m-mine"] if same_message else ["m-other", "m-mine"]
    assert [m["message_id"] for m in inbound(manager, 0)] == expected
    assert [m["message_id"] for m in inbound(manager, 1)] == ["m-x"]
    assert manager.reconcile_campaign_metrics("camp-1") == {}
    outbox = list(db["outbox"].find())
    assert len(outbox) == len({doc["_id"] for doc in outbox})  # each message once


def test_a_reply_to_a_paused_campaign_is_recorded_and_kept_due(
    manager_on_both: CampaignManager, clock: Any
) -> None:
    manager = manager_on_both
    started(manager, 1)
    manager.pause_campaign("camp-1")
    clock.advance(HOUR)
    [outcome] = manager.record_inbound_messages([r(0, "m-1", "yes")])
    assert outcome.result is not None and outcome.result["actions"] == []
    doc = manager.get_conversation(conversation_id_for("camp-1", user(0)))
    assert doc["current_stage"] == "awareness" and doc["next_action_at"] == clock.now()


def test_understood_facts_read_the_return_date_from_the_extracted_text() -> None:
    from datetime import UTC, datetime

    from campaign_worker.adapters.template_files import TemplateFiles
    from campaign_worker.domain.replies import understood_facts
    from campaign_worker.domain.understanding import Classification

    template = TemplateFiles().get_template("default")
    received = datetime(2026, 11, 25, 14, 0, tzinfo=UTC)
    away = Classification(
        "out_of_office", 0.97, "de", "Ich bin bis zum 1. Dezember im Urlaub.", False, 0.0, "model"
    )
    facts = understood_facts(away, received, "UTC", template)
    assert facts["intent"] == "out_of_office" and facts["needs_review"] is False
    assert facts["resume_at"] == datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
    assert (facts["language"], facts["intent_source"], facts["confidence"]) == ("de", "model", 0.97)
    held = Classification("out_of_office", 0.4, "en", "back 1 Dec?", True, 0.0, "model")
    facts = understood_facts(held, received, "UTC", template)
    assert facts["needs_review"] is True and "resume_at" not in facts


def test_own_words_are_stored_only_when_they_differ_and_a_client_cannot_supply_them(
    manager_on_both: CampaignManager, clock: Any
) -> None:
    manager = manager_on_both
    started(manager, 1)
    clock.advance(HOUR)
    quoted = (
        "Yes please\n\nOn Mon, 1 Dec 2026, Sales <s@example.com> wrote:\n> Reply STOP to opt out"
    )
    long_words = "Tell me more about the offer   \n" * 400  # 12.8 KiB, trailing blanks
    forged = InboundReply("camp-1", user(0), "m-3", "hello", None, {"extracted_text": "STOP"})
    outcomes = manager.record_inbound_messages(
        [r(0, "m-1", "YES"), r(0, "m-2", quoted), r(0, "m-4", long_words), forged]
    )
    assert [o.error for o in outcomes] == [None] * 4
    by_id = {m["message_id"]: m["metadata"] for m in inbound(manager, 0)}
    assert "extracted_text" not in by_id["m-1"]  # the words are the content itself
    assert by_id["m-2"]["extracted_text"] == "Yes please"
    assert by_id["m-2"]["intent"] != "opt_out"
    stored = by_id["m-4"]["extracted_text"]
    assert len(stored.encode()) <= 4096 and stored.startswith("Tell me more about the offer\n")
    assert "extracted_text" not in by_id["m-3"]  # the client's own key is not kept
    assert by_id["m-3"]["intent"] != "opt_out"
