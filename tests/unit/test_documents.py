"""Documents: validation, field-naming errors, UTC/ms datetimes and derived metrics."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from campaign_worker.domain.campaign_documents import Campaign, CampaignStatus, RecipientsReference
from campaign_worker.domain.documents import (
    ConversationState,
    ConversationStatus,
    conversation_id_for,
    message_id_for,
    parse_document,
    to_utc,
)
from campaign_worker.domain.errors import InvalidDocumentError, InvalidInputError
from campaign_worker.domain.metrics_documents import CampaignMetrics, MessageMetrics, StageMetrics

# The seed's examples, verbatim.
SEED_CONVERSATION: dict[str, Any] = {
    "_id": "conversation_id",
    "user_id": "recipient_id",
    "campaign_id": "campaign_id",
    "campaign_type": "sales",
    "current_stage": "awareness",
    "stages": [
        {
            "name": "awareness",
            "entered_at": "2023-06-01T12:00:00Z",
            "exited_at": None,
            "completed": False,
        }
    ],
    "message_history": [
        {
            "message_id": "msg123",
            "direction": "outbound",
            "content": "Hello!",
            "timestamp": "2023-06-01T12:05:00Z",
            "metadata": {},
        }
    ],
    "context": {
        "template_id": "template123",
        "available_stages": ["awareness", "consideration", "decision"],
    },
    "metrics": {"messages_sent": 1, "messages_received": 0, "stage_progressions": 0},
    "status": "active",
    "created_at": "2023-06-01T12:00:00Z",
    "last_active": "2023-06-01T12:05:00Z",
}

SEED_METRICS: dict[str, Any] = {
    "campaign_id": "campaign123",
    "total_recipients": 100,
    "active_conversations": 80,
    "completed_conversations": 15,
    "failed_conversations": 5,
    "stage_metrics": {
        "awareness": {"entered": 100, "completed": 50, "avg_duration_seconds": 3600},
        "consideration": {"entered": 50, "completed": 20, "avg_duration_seconds": 7200},
        "decision": {"entered": 20, "completed": 15, "avg_duration_seconds": 10800},
    },
    "message_metrics": {"total_sent": 250, "total_received": 120, "response_rate": 0.48},
    "updated_at": "2023-06-05T12:00:00Z",
}


def campaign_data(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "_id": "camp-1",
        "name": "Spring sale",
        "campaign_type": "sales",
        "template_id": "default",
        "recipients": [{"user_id": "u1", "attributes": {"first_name": "Ann"}}],
    }
    data.update(overrides)
    return data


def conversation(**overrides: Any) -> dict[str, Any]:
    data = copy.deepcopy(SEED_CONVERSATION)
    data.update(overrides)
    return data


def error_for(model: type[Any], data: Any) -> str:
    with pytest.raises(InvalidDocumentError) as excinfo:
        parse_document(model, data, what="thing")
    return str(excinfo.value)


# ---------------------------------------------------------------- conversation state


def test_seed_conversation_document_parses_field_for_field() -> None:
    state = parse_document(ConversationState, SEED_CONVERSATION, what="conversation")
    assert state.id == "conversation_id"
    assert state.current_stage == "awareness"
    assert state.status == ConversationStatus.ACTIVE
    assert state.stages[0].entered_at == datetime(2023, 6, 1, 12, tzinfo=UTC)
    assert state.message_history[0].direction == "outbound"
    assert state.metrics.messages_sent == 1
    assert state.context.available_stages == ["awareness", "consideration", "decision"]


def test_conversation_to_mongo_uses_id_alias_and_keeps_datetimes() -> None:
    doc = parse_document(ConversationState, SEED_CONVERSATION, what="c").to_mongo()
    assert doc["_id"] == "conversation_id"
    assert "id" not in doc
    assert isinstance(doc["created_at"], datetime)
    assert isinstance(doc["stages"][0]["entered_at"], datetime)
    assert isinstance(doc["message_history"][0]["timestamp"], datetime)


def test_conversation_missing_field_is_named() -> None:
    data = conversation()
    del data["campaign_id"]
    assert "campaign_id" in error_for(ConversationState, data)


def test_conversation_unknown_status_is_named() -> None:
    assert "status" in error_for(ConversationState, conversation(status="sleeping"))


def test_conversation_unknown_field_is_refused() -> None:
    assert "surprise" in error_for(ConversationState, conversation(surprise=1))


def test_conversation_negative_metric_is_named() -> None:
    bad = conversation(metrics={"messages_sent": -1})
    assert "metrics.messages_sent" in error_for(ConversationState, bad)


def test_conversation_bad_message_direction_is_named() -> None:
    data = conversation()
    data["message_history"][0]["direction"] = "sideways"
    assert "message_history.0.direction" in error_for(ConversationState, data)


def test_conversation_current_stage_must_be_available() -> None:
    message = error_for(ConversationState, conversation(current_stage="nirvana"))
    assert "nirvana" in message
    assert "available_stages" in message


def test_conversation_needs_a_stage_entry() -> None:
    assert "stages" in error_for(ConversationState, conversation(stages=[]))


def test_conversation_empty_user_id_is_named() -> None:
    assert "user_id" in error_for(ConversationState, conversation(user_id=""))


def test_invalid_document_error_is_an_invalid_input_error() -> None:
    with pytest.raises(InvalidInputError):
        parse_document(ConversationState, {"_id": "x"}, what="conversation")


def test_invalid_document_error_names_what_was_parsed() -> None:
    with pytest.raises(InvalidDocumentError, match="invalid conversation c-9"):
        parse_document(ConversationState, {}, what="conversation c-9")


def test_current_stage_entry_is_the_latest_entry_of_that_stage() -> None:
    data = conversation(
        current_stage="consideration",
        stages=[
            {"name": "awareness", "entered_at": "2023-06-01T12:00:00Z", "completed": True},
            {"name": "consideration", "entered_at": "2023-06-02T12:00:00Z"},
        ],
    )
    state = parse_document(ConversationState, data, what="c")
    assert state.current_stage_entry().entered_at == datetime(2023, 6, 2, 12, tzinfo=UTC)


# ---------------------------------------------------------------- datetimes


def test_offset_datetime_is_converted_to_utc() -> None:
    campaign = parse_document(
        Campaign, campaign_data(start_at="2026-01-01T10:00:00+02:00"), what="campaign"
    )
    assert campaign.start_at == datetime(2026, 1, 1, 8, tzinfo=UTC)
    assert campaign.start_at is not None and campaign.start_at.utcoffset() == timedelta(0)


def test_naive_datetime_is_taken_as_utc() -> None:
    campaign = parse_document(
        Campaign, campaign_data(start_at=datetime(2026, 1, 1, 10)), what="campaign"
    )
    assert campaign.start_at == datetime(2026, 1, 1, 10, tzinfo=UTC)
    assert campaign.start_at is not None and campaign.start_at.tzinfo is not None


def test_datetimes_are_truncated_to_milliseconds() -> None:
    campaign = parse_document(
        Campaign, campaign_data(start_at="2026-01-01T10:00:00.123987Z"), what="campaign"
    )
    assert campaign.start_at is not None
    assert campaign.start_at.microsecond == 123000


def test_to_utc_truncates_and_converts() -> None:
    plus_five = timezone(timedelta(hours=5))
    value = to_utc(datetime(2026, 3, 1, 5, 0, 0, 999999, tzinfo=plus_five))
    assert value == datetime(2026, 3, 1, 0, 0, 0, 999000, tzinfo=UTC)
    assert value.tzinfo == UTC


def test_conversation_datetimes_are_utc_and_truncated() -> None:
    data = conversation(created_at="2023-06-01T14:00:00.000999+02:00")
    state = parse_document(ConversationState, data, what="c")
    assert state.created_at == datetime(2023, 6, 1, 12, tzinfo=UTC)


def test_unparseable_datetime_is_named() -> None:
    assert "start_at" in error_for(Campaign, campaign_data(start_at="next tuesday"))


# ---------------------------------------------------------------- campaign


def test_campaign_defaults() -> None:
    campaign = parse_document(Campaign, campaign_data(), what="campaign")
    assert campaign.status == CampaignStatus.SCHEDULED
    assert campaign.total_recipients == 0
    assert campaign.created_at.tzinfo is not None
    assert campaign.recipients[0].timezone == "UTC"  # type: ignore[index]


def test_campaign_id_is_generated_when_missing() -> None:
    data = campaign_data()
    del data["_id"]
    first = parse_document(Campaign, data, what="campaign")
    second = parse_document(Campaign, data, what="campaign")
    assert first.id and second.id and first.id != second.id


def test_duplicate_recipients_are_refused_with_index_and_user() -> None:
    data = campaign_data(recipients=[{"user_id": "a"}, {"user_id": "b"}, {"user_id": "a"}])
    message = error_for(Campaign, data)
    assert "recipients" in message
    assert "recipients[2].user_id 'a' is duplicated" in message


def test_unknown_timezone_is_refused_and_named() -> None:
    data = campaign_data(recipients=[{"user_id": "a", "timezone": "Mars/Olympus_Mons"}])
    message = error_for(Campaign, data)
    assert "0.timezone: Value error, unknown timezone" in message
    assert "Mars/Olympus_Mons" not in message  # a recipient's value: kept out of errors


def test_known_timezone_is_kept() -> None:
    data = campaign_data(recipients=[{"user_id": "a", "timezone": "Europe/Paris"}])
    campaign = parse_document(Campaign, data, what="campaign")
    assert campaign.recipients[0].timezone == "Europe/Paris"  # type: ignore[index]


def test_recipient_without_user_id_is_named() -> None:
    message = error_for(Campaign, campaign_data(recipients=[{"attributes": {}}]))
    assert "user_id" in message


def test_campaign_unknown_status_is_named() -> None:
    assert "status" in error_for(Campaign, campaign_data(status="exploded"))


def test_campaign_empty_name_is_named() -> None:
    assert "name" in error_for(Campaign, campaign_data(name=""))


def test_campaign_missing_template_id_is_named() -> None:
    data = campaign_data()
    del data["template_id"]
    assert "template_id" in error_for(Campaign, data)


def test_campaign_recipients_reference() -> None:
    data = campaign_data(recipients={"collection": "people", "query": {"segment": "b2b"}})
    campaign = parse_document(Campaign, data, what="campaign")
    assert isinstance(campaign.recipients, RecipientsReference)
    assert campaign.recipients.collection == "people"
    assert campaign.recipients.query == {"segment": "b2b"}


def test_campaign_recipients_reference_bad_collection_name_is_named() -> None:
    data = campaign_data(recipients={"collection": "bad name; drop"})
    assert "collection" in error_for(Campaign, data)


def test_campaign_negative_total_recipients_is_named() -> None:
    assert "total_recipients" in error_for(Campaign, campaign_data(total_recipients=-3))


def test_campaign_to_mongo_uses_id_alias() -> None:
    doc = parse_document(Campaign, campaign_data(), what="campaign").to_mongo()
    assert doc["_id"] == "camp-1"
    assert doc["status"] == "scheduled"
    assert isinstance(doc["created_at"], datetime)


# ---------------------------------------------------------------- metrics


def test_seed_metrics_document_parses() -> None:
    metrics = parse_document(CampaignMetrics, SEED_METRICS, what="metrics")
    assert metrics.total_recipients == 100
    assert metrics.stage_metrics["decision"].completed == 15
    assert metrics.message_metrics.response_rate == 0.48
    assert metrics.updated_at == datetime(2023, 6, 5, 12, tzinfo=UTC)


def test_seed_metrics_document_keeps_its_average_durations() -> None:
    metrics = parse_document(CampaignMetrics, SEED_METRICS, what="metrics")
    assert metrics.stage_metrics["awareness"].avg_duration_seconds == 3600
    assert metrics.stage_metrics["consideration"].avg_duration_seconds == 7200
    assert metrics.stage_metrics["decision"].avg_duration_seconds == 10800


def test_response_rate_is_derived_from_totals() -> None:
    assert MessageMetrics(total_sent=250, total_received=120).response_rate == 0.48


def test_response_rate_given_wrong_is_recomputed() -> None:
    metrics = MessageMetrics(total_sent=4, total_received=1, response_rate=0.9)
    assert metrics.response_rate == 0.25


def test_response_rate_with_nothing_sent_is_zero() -> None:
    assert MessageMetrics(total_sent=0, total_received=3).response_rate == 0.0


def test_avg_duration_is_total_over_completed() -> None:
    metrics = StageMetrics(entered=10, completed=4, total_duration_seconds=400)
    assert metrics.avg_duration_seconds == 100.0


def test_avg_duration_given_wrong_is_recomputed_from_total() -> None:
    metrics = StageMetrics(completed=2, total_duration_seconds=30, avg_duration_seconds=999)
    assert metrics.avg_duration_seconds == 15.0


def test_avg_duration_with_nothing_completed_is_zero() -> None:
    assert StageMetrics(entered=5).avg_duration_seconds == 0.0


def test_metrics_missing_campaign_id_is_named() -> None:
    data = dict(SEED_METRICS)
    del data["campaign_id"]
    assert "campaign_id" in error_for(CampaignMetrics, data)


def test_metrics_negative_stage_count_is_named() -> None:
    data = copy.deepcopy(SEED_METRICS)
    data["stage_metrics"]["awareness"]["entered"] = -1
    assert "stage_metrics.awareness.entered" in error_for(CampaignMetrics, data)


# ---------------------------------------------------------------- ids


def test_conversation_id_is_deterministic_per_campaign_and_user() -> None:
    assert conversation_id_for("c1", "u1") == conversation_id_for("c1", "u1")
    assert conversation_id_for("c1", "u1") != conversation_id_for("c1", "u2")
    assert conversation_id_for("c1", "u1") != conversation_id_for("c2", "u1")


def test_message_id_is_deterministic_per_conversation_stage_and_step() -> None:
    base = message_id_for("conv", "awareness", 0)
    assert base == message_id_for("conv", "awareness", 0)
    assert base.startswith("out-")
    others = {
        message_id_for("conv", "awareness", 1),
        message_id_for("conv", "consideration", 0),
        message_id_for("other", "awareness", 0),
    }
    assert base not in others
    assert len(others) == 3


def test_too_many_inline_recipients_point_to_a_recipients_collection() -> None:
    from campaign_worker.domain.campaign_documents import MAX_INLINE_RECIPIENTS, Campaign
    from campaign_worker.domain.documents import parse_document
    from campaign_worker.domain.errors import InvalidDocumentError

    data = {
        "name": "huge",
        "campaign_type": "sales",
        "template_id": "default",
        "recipients": [{"user_id": f"u{i}"} for i in range(MAX_INLINE_RECIPIENTS + 1)],
    }
    with pytest.raises(InvalidDocumentError, match=r"recipients.*collection"):
        parse_document(Campaign, data, what="campaign")
    data["recipients"] = data["recipients"][:MAX_INLINE_RECIPIENTS]
    recipients = parse_document(Campaign, data, what="campaign").recipients
    assert isinstance(recipients, list) and len(recipients) == MAX_INLINE_RECIPIENTS
