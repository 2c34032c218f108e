"""The size limits README states ("Limits") are the ones the code enforces, at the limit
and one byte beyond it, through the public entry points."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from campaign_worker.adapters.clock import ManualClock
from campaign_worker.domain import limits
from campaign_worker.domain.campaign_documents import MAX_INLINE_RECIPIENTS
from campaign_worker.domain.documents import conversation_id_for
from campaign_worker.domain.errors import InvalidInputError, LimitExceededError
from campaign_worker.entrypoints.envelope import BODY_LIMIT
from campaign_worker.service.campaign_manager import CampaignManager
from tests import fakes
from tests.conftest import sample_campaign

manager = fakes.manager  # fixture: a manager on the fakes

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
UNITS = {"KiB": 1024, "MiB": 1024 * 1024}


def stated(what: str) -> int:
    """The limit in README's Limits table for the row starting with ``what``."""
    table = README.split("## Limits", 1)[1].split("\n\n", 2)[1]
    for row in table.splitlines():
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        if cells[0].startswith(what):
            number = re.match(r"([\d,]+)\s*(KiB|MiB)?", cells[1])
            assert number is not None, row
            return int(number.group(1).replace(",", "")) * UNITS.get(number.group(2) or "", 1)
    raise AssertionError(f"README states no limit for {what!r}")


def test_readme_states_the_limits_the_code_has() -> None:
    assert stated("reply `content`") == limits.MAX_CONTENT_BYTES
    assert stated("reply `metadata`") == limits.MAX_METADATA_BYTES
    assert stated("recipient `attributes`") == limits.MAX_ATTRIBUTES_BYTES
    assert stated("inline recipients") == MAX_INLINE_RECIPIENTS
    assert stated("messages per conversation") == limits.MAX_HISTORY_MESSAGES
    assert stated("delivery status `detail`") == limits.MAX_METADATA_BYTES
    assert stated("raw task message") == BODY_LIMIT


def padded(size: int, key: str = "k") -> dict[str, str]:
    """A mapping whose JSON encoding is exactly ``size`` bytes."""
    overhead = limits.encoded_size({key: ""})
    return {key: "x" * (size - overhead)}


@pytest.fixture
def running(manager: CampaignManager, clock: ManualClock) -> CampaignManager:
    manager.create_campaign(sample_campaign(2))
    manager.initialize_campaign_conversations("camp-1")
    manager.process_due_conversations("camp-1")
    clock.advance(timedelta(minutes=5))
    return manager


def test_reply_content_is_kept_whole_up_to_the_limit_then_cut(running: CampaignManager) -> None:
    whole = "a" * limits.MAX_CONTENT_BYTES
    running.record_inbound_message("camp-1", "user-00000", "in-1", whole)
    running.record_inbound_message("camp-1", "user-00001", "in-2", whole + "é")
    replies = {
        m["message_id"]: m
        for user in ("user-00000", "user-00001")
        for m in running.get_conversation_history(conversation_id_for("camp-1", user))
        if m["direction"] == "inbound"
    }
    assert replies["in-1"]["content"] == whole and "truncated" not in replies["in-1"]["metadata"]
    assert replies["in-2"]["content"] == whole
    assert replies["in-2"]["metadata"]["truncated"] is True
    assert replies["in-2"]["metadata"]["original_bytes"] == limits.MAX_CONTENT_BYTES + 2


def test_reply_metadata_at_the_limit_and_one_byte_over(running: CampaignManager) -> None:
    ok = padded(limits.MAX_METADATA_BYTES)
    running.record_inbound_message("camp-1", "user-00000", "in-1", "hi", metadata=ok)
    with pytest.raises(LimitExceededError, match="metadata: 4097 bytes exceed the limit of 4096"):
        running.record_inbound_message(
            "camp-1", "user-00001", "in-2", "hi", metadata=padded(limits.MAX_METADATA_BYTES + 1)
        )


def test_recipient_attributes_at_the_limit_and_one_byte_over(manager: CampaignManager) -> None:
    data: dict[str, Any] = sample_campaign(2)
    data["recipients"][0]["attributes"] = padded(limits.MAX_ATTRIBUTES_BYTES)
    manager.validate_campaign(data)
    data["recipients"][1]["attributes"] = padded(limits.MAX_ATTRIBUTES_BYTES + 1)
    with pytest.raises(
        InvalidInputError, match=r"recipients\.list\[Recipient\]\.1\.attributes.*8193 bytes exceed"
    ):
        manager.validate_campaign(data)
