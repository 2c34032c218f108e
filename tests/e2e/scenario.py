"""The e2e campaign: four kinds of recipients, replies fed by task name, exact outcomes.

Template ``e2e`` / type ``quick`` (tests/e2e/templates/e2e.yaml): stage ``hello`` (a
message, an 8 s wait, one follow-up, then 3 s) advances on an understood reply (any intent
but ``other``); stage ``offer`` (one message, 8 s) completes on BUY. User ``i`` behaves
by ``i % 4``:

====  =====================  ==========  ====  ========  ===================
kind  replies                outcome     sent  received  stages entered
====  =====================  ==========  ====  ========  ===================
0     YES to hello, BUY      completed   2     2         hello, offer
1     STOP to hello          opted_out   1     1         hello
2     YES to hello, silence  failed      2     1         hello, offer
3     silence                failed      2     0         hello (+ follow-up)
====  =====================  ==========  ====  ========  ===================
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from celery import Celery

INBOUND = "campaign_worker.record_inbound_message"
CREATE = "campaign_worker.create_campaign"
METRICS = "campaign_worker.get_campaign_metrics"

OUTCOME = {0: "completed", 1: "opted_out", 2: "failed", 3: "failed"}
FINAL_STAGE = {0: "offer", 1: "hello", 2: "offer", 3: "hello"}
SENT = {0: 2, 1: 1, 2: 2, 3: 2}
RECEIVED = {0: 2, 1: 1, 2: 1, 3: 0}


def user_id(index: int) -> str:
    return f"user-{index:04d}"


def kind_of(user: str) -> int:
    return int(user.rsplit("-", 1)[1]) % 4


def messaged(campaign_id: str) -> dict[str, Any]:
    """Conversations whose first message is recorded *and* in the outbox: a write records
    a message in the conversation first and publishes it to the outbox after."""
    return {"campaign_id": campaign_id, "stage_step": 1, "publish_due_at": None}


def campaign_payload(n: int, campaign_id: str | None = None) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "name": "e2e quick campaign",
        "campaign_type": "quick",
        "template_id": "e2e",
        "recipients": [
            {"user_id": user_id(i), "attributes": {"first_name": f"Tester{i}"}} for i in range(n)
        ],
    }
    if campaign_id is not None:
        payload["_id"] = campaign_id
    return payload


def reply_for(outbound: dict[str, Any]) -> str | None:
    """What user ``outbound['user_id']`` answers to this outbound message (None: silence)."""
    kind = kind_of(outbound["user_id"])
    stage, step = outbound["stage"], outbound["step"]
    if stage == "hello" and step == 0:
        return {0: "yes!", 1: "STOP", 2: "Yes"}.get(kind)
    if stage == "offer" and kind == 0:
        return "ok, buy it"
    return None


@dataclass
class Driver:
    """Plays the delivering service and the audience: reads the outbox, answers each
    outbound message as ``reply_for`` says (the fault suite's audiences extend it)."""

    client: Celery
    db: Any
    campaign_id: str
    handled: set[str] = field(default_factory=set)
    replies: int = 0
    poll_every: float = 0.25

    def outbox(self) -> list[dict[str, Any]]:
        """The outbound messages the audience can see (the fault suite's see only what a
        channel delivered, or nothing while the database is down)."""
        return list(
            self.db["outbox"].find(
                {"campaign_id": self.campaign_id}, {"user_id": 1, "stage": 1, "step": 1}
            )
        )

    def step(self) -> None:
        for row in self.outbox():
            if row["_id"] in self.handled:
                continue
            self.handled.add(row["_id"])
            content = reply_for(row)
            if content is not None:
                self.send(row["user_id"], f"reply-{row['_id']}", content)

    def reply(self, user: str, message_id: str, content: str) -> dict[str, Any]:
        """The keyword arguments of ``record_inbound_message`` for one reply."""
        return {
            "campaign_id": self.campaign_id,
            "user_id": user,
            "message_id": message_id,
            "content": content,
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "metadata": {"channel": "sms"},
        }

    def send(self, user: str, message_id: str, content: str) -> None:
        self.client.send_task(
            INBOUND, kwargs=self.reply(user, message_id, content), queue="inbound"
        )
        self.replies += 1

    def status(self) -> str | None:
        doc = self.db["campaigns"].find_one({"_id": self.campaign_id}, {"status": 1})
        return None if doc is None else str(doc["status"])

    def stuck(self) -> str:
        """What a campaign that did not complete in time looks like (for the failure)."""
        return f"status {self.status()!r}, {len(self.handled)} outbound seen"

    def run_until_completed(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self.step()
            if self.status() == "completed":
                return
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"campaign {self.campaign_id} not completed after {timeout}s ({self.stuck()})"
                )
            time.sleep(self.poll_every)


def expected_metrics(n: int) -> dict[str, Any]:
    kinds = Counter(i % 4 for i in range(n))
    sent = sum(SENT[k] * c for k, c in kinds.items())
    received = sum(RECEIVED[k] * c for k, c in kinds.items())
    return {
        "total_recipients": n,
        "active_conversations": 0,
        "completed_conversations": kinds[0],
        "failed_conversations": kinds[2] + kinds[3],
        "opted_out_conversations": kinds[1],
        "stage_entered": {"hello": n, "offer": kinds[0] + kinds[2]},
        "stage_completed": {"hello": kinds[0] + kinds[2], "offer": kinds[0]},
        "total_sent": sent,
        "total_received": received,
    }


def assert_final_state(db: Any, campaign_id: str, n: int) -> dict[str, Any]:
    """Every conversation, the outbox and the metrics document, to the unit."""
    campaign = db["campaigns"].find_one({"_id": campaign_id})
    assert campaign["status"] == "completed"
    assert campaign["total_recipients"] == n

    conversations = list(db["conversation_states"].find({"campaign_id": campaign_id}))
    assert sorted(c["user_id"] for c in conversations) == [user_id(i) for i in range(n)]
    outbox = list(db["outbox"].find({"campaign_id": campaign_id}))
    outbox_by_conversation = Counter(m["conversation_id"] for m in outbox)
    for conv in conversations:
        kind = kind_of(conv["user_id"])
        history = conv["message_history"]
        outbound = [m for m in history if m["direction"] == "outbound"]
        inbound = [m for m in history if m["direction"] == "inbound"]
        where = f"{conv['user_id']} (kind {kind})"
        assert conv["status"] == OUTCOME[kind], where
        assert conv["current_stage"] == FINAL_STAGE[kind], where
        assert len(outbound) == SENT[kind] == conv["metrics"]["messages_sent"], where
        assert len(inbound) == RECEIVED[kind] == conv["metrics"]["messages_received"], where
        assert len({m["message_id"] for m in history}) == len(history), where
        assert outbox_by_conversation[conv["_id"]] == SENT[kind], where
        assert [s["name"] for s in conv["stages"]] == (
            ["hello", "offer"] if kind in (0, 2) else ["hello"]
        ), where
        assert conv["next_action_at"] is None, where
        assert conv.get("lease_owner") is None and conv.get("lease_until") is None, where
    assert len(outbox) == sum(outbox_by_conversation.values())

    expected = expected_metrics(n)
    metrics = db["campaign_metrics"].find_one({"_id": campaign_id})
    for key in (
        "total_recipients",
        "active_conversations",
        "completed_conversations",
        "failed_conversations",
        "opted_out_conversations",
    ):
        assert metrics.get(key, 0) == expected[key], key
    for stage in ("hello", "offer"):
        assert metrics["stage_metrics"][stage]["entered"] == expected["stage_entered"][stage]
        assert (
            metrics["stage_metrics"][stage].get("completed", 0)
            == (expected["stage_completed"][stage])
        )
    assert metrics["message_metrics"]["total_sent"] == expected["total_sent"] == len(outbox)
    assert metrics["message_metrics"]["total_received"] == expected["total_received"]
    assert db["dead_letters"].count_documents({}) == 0
    return expected
