"""The compare-and-set update is built from what the step changed: ``$set`` of changed
fields only, ``$push`` of new messages, never a rewrite of the whole document."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from campaign_worker.adapters.mongo_updates import state_update
from campaign_worker.domain.documents import (
    ConversationContext,
    ConversationState,
    Direction,
    Message,
    StageEntry,
)
from campaign_worker.domain.partitions import partition_of
from campaign_worker.domain.progression import run
from campaign_worker.domain.templates import Template

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
DAY = timedelta(days=1)
TEMPLATE = Template.model_validate(
    {
        "template_id": "t",
        "campaign_types": {
            "x": {
                "stages": [
                    {"name": "a", "messages": [{"text": "hi {first_name}", "wait": "1d"}]},
                    {"name": "b", "messages": [{"text": "b0", "wait": "1d"}]},
                ]
            }
        },
    }
)
TYPE = TEMPLATE.for_type("x")


def state(**extra: object) -> ConversationState:
    history = [
        Message(
            message_id=f"m{i}",
            direction=Direction.INBOUND,
            content="hello",
            timestamp=T0 - timedelta(minutes=i),
        )
        for i in range(7)
    ]
    return ConversationState.model_validate(
        {
            "_id": "conv-1",
            "user_id": "u",
            "campaign_id": "c",
            "campaign_type": "x",
            "current_stage": "a",
            "stages": [StageEntry(name="a", entered_at=T0)],
            "message_history": history,
            "context": ConversationContext(
                template_id="t", available_stages=["a", "b"], attributes={"first_name": "Ann"}
            ),
            "created_at": T0,
            "last_active": T0,
            "next_action_at": T0,
            "partition": partition_of("conv-1"),
            **extra,
        }
    )


def test_a_send_pushes_its_message_and_sets_only_what_changed() -> None:
    assert TYPE is not None
    old = state()
    later = T0 + timedelta(hours=1)
    new, effects = run(old, TEMPLATE, TYPE, later)
    assert [d.action.value for d in effects.decisions] == ["send", "wait"]
    update = state_update(old, new, "tok", later)
    [pushed] = update["$push"]["message_history"]["$each"]
    assert pushed["content"] == "hi Ann" and pushed["direction"] == "outbound"
    assert update["$push"]["unpublished"] == {"$each": [pushed["message_id"]]}
    assert set(update["$set"]) == {
        "stage_step",
        "metrics",
        "next_action_at",
        "last_active",
        "publish_token",
        "publish_due_at",
    }
    assert update["$inc"] == {"version": 1}
    assert "$unset" not in update


def test_a_wait_that_changes_nothing_writes_only_the_version_and_token() -> None:
    assert TYPE is not None
    old = state(stage_step=1, next_action_at=None)  # nothing left to send, no rule
    new, effects = run(old, TEMPLATE, TYPE, T0)
    assert [d.action.value for d in effects.decisions] == ["wait"]
    assert new is old  # no copy at all
    update = state_update(old, new, "tok", T0)
    assert update == {
        "$inc": {"version": 1},
        "$push": {"last_write": {"$each": ["tok"], "$slice": -16}},
    }


def test_an_advance_sets_the_stage_fields_and_keeps_the_history_out() -> None:
    old = state(stage_step=1)
    new = old.model_copy(update={"current_stage": "b", "stage_step": 0})
    update = state_update(old, new, "tok", T0)
    assert update["$set"] == {"current_stage": "b", "stage_step": 0}
    assert "message_history" not in update["$push"]


def test_an_old_document_gets_its_partition_and_loses_its_lease() -> None:
    old = state(partition=None, lease_owner="w", lease_until=T0)
    update = state_update(old, old, "tok", T0)
    assert update["$set"] == {"partition": partition_of("conv-1")}
    assert update["$unset"] == {"lease_owner": "", "lease_until": ""}


def test_rewriting_the_history_is_refused() -> None:
    old = state()
    new = old.model_copy(update={"message_history": old.message_history[1:]})
    with pytest.raises(ValueError, match="appended"):
        state_update(old, new, "tok", T0)
