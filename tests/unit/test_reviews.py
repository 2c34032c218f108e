"""Replies held for review, on the in-memory fakes: the conversation holds (nothing sent,
no timeout, no advance) until a person resolves the reply; the resolution acts exactly as
if the reply had been classified so, once; the counts in the metrics document and in
Prometheus; the resolutions exported as labelled examples."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from typing import Any

import pytest

from campaign_worker.adapters.clock import ManualClock
from campaign_worker.adapters.memory_store import MemoryDatabase
from campaign_worker.domain.documents import conversation_id_for
from campaign_worker.domain.errors import (
    InvalidInputError,
    ReviewConflictError,
    ReviewNotFoundError,
)
from campaign_worker.domain.labelled_replies import parse_lines
from campaign_worker.service.campaign_manager import CampaignManager
from campaign_worker.service.ports import NullRecorder
from tests.conftest import ManagerFactory, sample_campaign
from tests.fakes import ScriptedUnderstanding

Doc = dict[str, Any]
HOUR, DAY = timedelta(hours=1), timedelta(days=1)
UNSURE = "hmm, could be, depends"


class Recorder(NullRecorder):
    """The recorder's review counts (what Prometheus gets; the rest ignored)."""

    def __init__(self) -> None:
        self.counted: Counter[tuple[str, str]] = Counter()

    def reviews(self, campaign_type: str, event: str, count: int) -> None:
        self.counted[(campaign_type, event)] += count


def user(index: int) -> str:
    return f"user-{index:05d}"


def conversation(manager: CampaignManager, index: int = 0) -> Doc:
    return manager.get_conversation(conversation_id_for("camp-1", user(index)))


def sent(manager: CampaignManager, index: int = 0) -> list[str]:
    return [
        m["metadata"]["stage"]
        for m in conversation(manager, index)["message_history"]
        if m["direction"] == "outbound"
    ]


@pytest.fixture
def scripted() -> ScriptedUnderstanding:
    understanding = ScriptedUnderstanding()
    understanding.hold(UNSURE, suggested="positive")
    return understanding


@pytest.fixture
def manager(make_manager: ManagerFactory, scripted: ScriptedUnderstanding) -> CampaignManager:
    """A manager on the in-memory fakes whose understanding holds ``UNSURE``."""
    built = make_manager(MemoryDatabase("reviews"), understanding=scripted)
    built.metrics = Recorder()
    return built


def start(manager: CampaignManager, n: int = 2, campaign_type: str = "sales") -> None:
    manager.create_campaign(sample_campaign(n, campaign_type=campaign_type))
    manager.initialize_campaign_conversations("camp-1")
    manager.process_due_conversations("camp-1")  # the first message to everyone


def reply(manager: CampaignManager, text: str, message_id: str = "in-1", index: int = 0) -> Doc:
    return manager.record_inbound_message("camp-1", user(index), message_id, text)


def test_an_unsure_reply_holds_the_conversation_and_is_queued(
    manager: CampaignManager, clock: ManualClock
) -> None:
    start(manager)
    clock.advance(HOUR)
    result = reply(manager, UNSURE)
    assert result["actions"] == ["wait"] and result["current_stage"] == "awareness"
    held = conversation(manager)
    assert held["next_action_at"] is None  # nothing scheduled while held
    assert held["review_pending_since"] == clock.now()
    [message] = [m for m in held["message_history"] if m["direction"] == "inbound"]
    assert message["content"] == UNSURE  # the original, as it came
    assert message["metadata"]["needs_review"] is True
    assert message["metadata"]["intent"] == "positive"  # the classifier's best reading
    assert "extracted_text" not in message["metadata"]  # the words are the content itself

    # Days pass: no follow-up (the stage has two more), no follow-up limit, no timeout.
    for _ in range(12):
        clock.advance(DAY)
        manager.process_due_conversations("camp-1")
    assert sent(manager) == ["awareness"]
    assert sent(manager, 1) == ["awareness", "awareness", "awareness"]  # the other, quiet
    assert conversation(manager)["status"] == "active"

    [row] = manager.list_reviews()
    assert row["message_id"] == "in-1" and row["text"] == UNSURE
    assert (row["suggested"], row["reason"], row["stage"]) == (
        "positive",
        "low_confidence",
        "awareness",
    )
    assert manager.list_reviews(campaign_id="camp-2") == []
    metrics = manager.get_campaign_metrics("camp-1")
    assert metrics["reviews"] == {"pending": 1, "resolved": 0}
    assert manager.reconcile_campaign_metrics("camp-1") == {}
    assert manager.metrics.counted == {("sales", "held"): 1}  # type: ignore[attr-defined]


def test_a_resolution_acts_as_the_classification_once(
    manager: CampaignManager, clock: ManualClock
) -> None:
    start(manager)
    clock.advance(HOUR)
    reply(manager, UNSURE)
    clock.advance(DAY)

    first = manager.resolve_reply("in-1", "positive", resolved_by="ops:ann")
    assert first["already_resolved"] is False
    assert first["current_stage"] == "consideration"  # on_reply positive
    assert first["actions"] == ["advance", "send", "wait"]
    again = manager.resolve_reply("in-1", "positive")
    assert again["already_resolved"] is True and again["actions"] == []
    assert sent(manager) == ["awareness", "consideration"]  # advanced once

    with pytest.raises(ReviewConflictError, match="already resolved as 'positive'"):
        manager.resolve_reply("in-1", "opt_out")
    assert manager.list_reviews() == []
    state = conversation(manager)
    assert state["review_pending_since"] is None
    [review] = state["reviews"]
    assert (review["status"], review["intent"], review["resolved_by"]) == (
        "resolved",
        "positive",
        "ops:ann",
    )
    metrics = manager.get_campaign_metrics("camp-1")
    assert metrics["reviews"] == {"pending": 0, "resolved": 1}
    assert manager.reconcile_campaign_metrics("camp-1") == {}
    assert manager.metrics.counted == {  # type: ignore[attr-defined]
        ("sales", "held"): 1,
        ("sales", "resolved"): 1,
    }
    # The resolution is a labelled example, in the format ``intents train`` reads.
    [line] = list(manager.export_labels())
    [label] = parse_lines([line])
    assert (label.intent, label.text, label.tags) == (
        "positive",
        UNSURE,
        ("review", "low_confidence"),
    )
    assert list(manager.export_labels(clock.now() + HOUR)) == []


def test_bad_resolutions_are_refused(manager: CampaignManager, clock: ManualClock) -> None:
    start(manager)
    reply(manager, UNSURE)
    reply(manager, "Yes please", "in-2", index=1)  # sure: not held
    with pytest.raises(ReviewNotFoundError):
        manager.resolve_reply("in-2", "positive")
    with pytest.raises(ReviewNotFoundError):
        manager.resolve_reply("nope", "positive")
    with pytest.raises(InvalidInputError, match="unknown intent 'maybe'"):
        manager.resolve_reply("in-1", "maybe")
    assert manager.resolve_reply("in-1", "pricing")["current_stage"] == "decision"  # custom


def test_an_opt_out_resolution_opts_out_everywhere(
    manager: CampaignManager, clock: ManualClock
) -> None:
    start(manager)
    reply(manager, UNSURE)
    result = manager.resolve_reply("in-1", "opt_out")
    assert result["status"] == "opted_out" and result["actions"] == ["opt_out"]
    assert [e["_id"] for e in manager.list_suppressions(user_id=user(0))]


def test_an_out_of_office_resolution_pauses_the_follow_ups(
    manager: CampaignManager, scripted: ScriptedUnderstanding, clock: ManualClock
) -> None:
    start(manager)
    away = "Away until the 3rd, then happy to talk"
    scripted.hold(away, suggested="positive")
    reply(manager, away)
    result = manager.resolve_reply("in-1", "out_of_office")
    assert result["current_stage"] == "awareness" and result["actions"] == ["wait"]
    [review] = conversation(manager)["reviews"]
    assert review["resume_at"] > clock.now()
    assert conversation(manager)["next_action_at"] == review["resume_at"]


def test_a_later_sure_opt_out_ends_a_held_conversation(
    manager: CampaignManager, clock: ManualClock
) -> None:
    start(manager)
    reply(manager, UNSURE)
    assert reply(manager, "STOP", "in-2")["status"] == "opted_out"  # never waits for a person
    assert manager.resolve_reply("in-1", "positive")["status"] == "opted_out"  # labelled only
    assert sent(manager) == ["awareness"]


def test_an_opt_out_risk_is_held_never_followed_by_a_message(
    manager: CampaignManager, scripted: ScriptedUnderstanding, clock: ManualClock
) -> None:
    start(manager)
    risky = "ok whatever, enough"
    scripted.hold(risky, suggested="positive", reason="opt_out_risk", opt_out_probability=0.4)
    clock.advance(HOUR)
    assert reply(manager, risky)["actions"] == ["wait"]
    clock.advance(10 * DAY)
    manager.process_due_conversations("camp-1")
    assert sent(manager) == ["awareness"]
    assert manager.list_reviews()[0]["reason"] == "opt_out_risk"


def test_a_paused_campaign_evaluates_a_resolution_on_resume(
    manager: CampaignManager, clock: ManualClock
) -> None:
    start(manager)
    reply(manager, UNSURE)
    manager.pause_campaign("camp-1")
    result = manager.resolve_reply("in-1", "question")
    assert (result["current_stage"], result["actions"]) == ("awareness", [])
    manager.resume_campaign("camp-1")
    manager.process_due_conversations("camp-1")
    assert conversation(manager)["current_stage"] == "consideration"
    assert sent(manager) == ["awareness", "consideration"]


def test_the_real_engine_records_what_it_understood(make_manager: ManagerFactory) -> None:
    """The worker's own engine (the shipped model): the extracted text and the facts are
    recorded beside the original, and the rules read the extracted text."""
    manager = make_manager(MemoryDatabase("engine"))
    start(manager, campaign_type="onboarding")
    quoted = (
        "Not yet, still stuck at the password screen\n\n"
        "On Mon, Jan 5, 2026 at 9:00 AM Acme <hi@acme.example> wrote:\n"
        "> Welcome aboard, Ann0! Reply DONE once you have logged in."
    )
    assert reply(manager, quoted)["current_stage"] == "welcome"  # "DONE" is only quoted
    message = conversation(manager)["message_history"][-1]
    assert message["content"] == quoted
    assert message["metadata"]["extracted_text"] == "Not yet, still stuck at the password screen"
    assert message["metadata"]["language"] == "en"
    assert message["metadata"]["intent_source"] in ("model", "rule")
    assert 0 <= message["metadata"]["confidence"] <= 1
    assert reply(manager, "Done, logged in!", "in-2")["current_stage"] == "setup"
