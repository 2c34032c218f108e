"""A conversation grown toward MongoDB's 16 MiB document limit (issue 15: "a conversation
grown to 16 MB blocked its campaign from ever finishing").

What can grow a conversation document: its message history (capped at 500 messages:
a further reply is refused, and the conversation fails instead of sending more), each
reply's content (cut at 16 KiB) and metadata (4 KiB), the outbound messages' delivery
status (one latest status per message, its detail within 4 KiB), the stage timeline
(one entry per stage entered: bounded by the messages each stage sends), and the outbox
marks (``unpublished``: ids of messages in the history). Sizes were measured in JSON,
and BSON can be several times larger: 4 KiB of JSON metadata as an array of zeros takes
19 KiB in the document, and 500 such replies (with full content) outgrow 16 MiB, after
which no write to that conversation succeeds. Sizes now count the larger of the two.

Not capped (a known gap): the text of an outbound message, which is the template's text
after rendering. Templates are the operator's own validated files and attributes hold at
most 8 KiB, but a text that renders to tens of KiB (or repeats a large attribute), in a
flow that loops through its stages for hundreds of messages, could still outgrow 16 MiB;
cutting the rendered text at 16 KiB (as replies are) would close it.

Wire-level rather than a process scenario: the history is filled through the reply path
in large batches (one write per batch), which a worker would need thousands of task
messages for.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import bson
import pytest

from campaign_worker.domain.documents import conversation_id_for
from campaign_worker.domain.errors import LimitExceededError
from campaign_worker.domain.limits import (
    MAX_CONTENT_BYTES,
    MAX_EXTRACTED_BYTES,
    MAX_HISTORY_MESSAGES,
    MAX_METADATA_BYTES,
    bson_size,
    check_size,
)
from campaign_worker.service.campaign_manager import CampaignManager
from campaign_worker.service.reply_recording import InboundReply
from tests.conftest import ManagerFactory, sample_campaign

pytestmark = pytest.mark.wire

BSON_LIMIT = 16 * 1024 * 1024
USER = "user-00000"


@pytest.mark.parametrize(
    "value",
    [
        {"a": [0] * 2040},
        {"a": [{}] * 100, "b": "héllo", "c": None, "d": True, "e": 2**40, "f": 1.5},
        {"x": {"y": {"z": [1, "a", [2, 3]]}}, "n": -(2**31)},
    ],
)
def test_bson_size_is_what_the_driver_encodes(value: dict[str, Any]) -> None:
    assert bson_size(value) == len(bson.encode(value))


def test_metadata_small_in_json_but_large_in_bson_is_refused() -> None:
    zeros = {"a": [0] * 2040}  # 6 KiB of JSON at most ... 19 KiB of BSON
    with pytest.raises(LimitExceededError, match="exceed the limit of 4096"):
        check_size(zeros, MAX_METADATA_BYTES, "metadata")
    check_size({"a": [0] * 400}, MAX_METADATA_BYTES, "metadata")  # 4 KiB either way


def _worst_reply(n: int) -> InboundReply:
    """A reply at every limit: content cut at 16 KiB, metadata just under 4 KiB of BSON,
    and the author's own words unlike the content (lines with trailing blanks, which the
    extraction strips), so they are stored beside it."""
    metadata = {"pad": "m" * (MAX_METADATA_BYTES - 40), "n": n}
    assert bson_size(metadata) <= MAX_METADATA_BYTES
    content = "I am interested, tell me more   \n" * (MAX_CONTENT_BYTES // 30)
    return InboundReply("camp-1", USER, f"big-{n}", content, None, metadata)


def test_a_conversation_at_every_limit_stays_writable_and_its_campaign_finishes(
    wire_db: Any, make_manager: ManagerFactory, clock: Any
) -> None:
    manager: CampaignManager = make_manager(wire_db)
    manager.create_campaign(sample_campaign(1))
    manager.initialize_campaign_conversations("camp-1")
    manager.process_due_conversations("camp-1")  # the first message
    cid = conversation_id_for("camp-1", USER)
    clock.advance(timedelta(minutes=1))
    outcomes = manager.record_inbound_messages([_worst_reply(n) for n in range(3)])
    assert [o.error for o in outcomes] == [None] * 3
    # Grown to one message short of the cap with copies of the worst reply just recorded
    # (one write here; through the reply path it takes as many batches).
    doc = wire_db["conversation_states"].find_one({"_id": cid})
    worst = doc["message_history"][-1]
    assert len(worst["content"].encode()) == MAX_CONTENT_BYTES
    assert len(worst["metadata"]["extracted_text"].encode()) == MAX_EXTRACTED_BYTES
    missing = MAX_HISTORY_MESSAGES - 1 - len(doc["message_history"])
    filler = [{**worst, "message_id": f"fill-{n}"} for n in range(missing)]
    wire_db["conversation_states"].update_one(
        {"_id": cid},
        {
            "$push": {"message_history": {"$each": filler}},
            "$inc": {"metrics.messages_received": missing},
        },
    )
    wire_db["campaign_metrics"].update_one(
        {"_id": "camp-1"}, {"$inc": {"message_metrics.total_received": missing}}
    )

    clock.advance(timedelta(minutes=1))
    outcomes = manager.record_inbound_messages([_worst_reply(n) for n in range(3, 6)])
    assert outcomes[0].error is None  # the 500th message
    assert all(isinstance(o.error, LimitExceededError) for o in outcomes[1:])
    doc = wire_db["conversation_states"].find_one({"_id": cid})
    size = len(bson.encode(doc))
    assert len(doc["message_history"]) == MAX_HISTORY_MESSAGES
    assert size < BSON_LIMIT * 0.75, size  # about 12 MiB at most, as the README says

    # Still writable: the history limit fails the conversation, and the campaign ends.
    clock.advance(timedelta(days=30))
    manager.process_due_conversations("camp-1")
    doc = wire_db["conversation_states"].find_one({"_id": cid})
    assert doc["status"] == "failed"
    inbound = sum(m["direction"] == "inbound" for m in doc["message_history"])
    manager.poll_campaigns()
    assert wire_db["campaigns"].find_one({"_id": "camp-1"})["status"] == "completed"
    report = manager.check_invariants("camp-1")
    assert report.ok, report.violations
    assert report.figures["replies_recorded"] == inbound
    print(
        f"\nDOCUMENT SIZE {size} bytes ({size / 2**20:.1f} MiB) at {MAX_HISTORY_MESSAGES} messages"
    )
