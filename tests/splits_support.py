"""An A/B template with a holdout, a campaign driven through it (manager, ManualClock,
replies), and the stored split counters flattened for comparison with a recount."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from campaign_worker.adapters.clock import ManualClock
from campaign_worker.domain.documents import ConversationState
from campaign_worker.service.campaign_manager import CampaignManager

SPLIT_TEMPLATE = """
template_id: ab
campaign_types:
  sales:
    holdout: 0.25
    stages:
      - name: pitch
        messages:
          - variants:
              - {id: short, weight: 3, text: "Hi {first_name}, interested?"}
              - {id: long, weight: 1, text: "Hello {first_name}, our spring offer is ..."}
            wait: 1d
          - variants:
              - {id: short, weight: 3, text: "Still interested, {first_name}?"}
              - {id: long, weight: 1, text: "A reminder of our spring offer, {first_name}"}
            wait: 1d
        on_reply: {not_interested: {exit: failed}}
        advance_when: {intent: [positive]}
        max_followups_without_reply: {count: 1, then: fail}
      - name: close
        messages:
          - {text: "Great, here is the link", wait: 2d}
        advance_when: {reply_received: true}
        max_time_in_stage: {after: 3d, then: fail}
"""


def write_split_template(directory: Path) -> Path:
    path = directory / "ab.yaml"
    path.write_text(SPLIT_TEMPLATE, encoding="utf-8")
    return path


def user(index: int) -> str:
    return f"u-{index:04d}"


def drive_split_campaign(
    manager: CampaignManager, clock: ManualClock, n: int, campaign_id: str = "ab-1"
) -> None:
    """Create, initialize and run ``n`` recipients: a quarter say yes to the pitch (and
    half of those buy), a quarter say no, a few reply only after the follow-up, the rest
    stay silent; everyone ends."""
    manager.create_campaign(
        {
            "_id": campaign_id,
            "name": "A/B",
            "campaign_type": "sales",
            "template_id": "ab",
            "recipients": [
                {"user_id": user(i), "attributes": {"first_name": f"P{i}"}} for i in range(n)
            ],
        }
    )
    manager.initialize_campaign_conversations(campaign_id)
    manager.process_due_conversations(campaign_id, limit=n + 10)
    clock.advance(timedelta(hours=2))
    replies = []
    for i in range(n):
        if i % 4 == 0:
            replies.append((user(i), f"in-{i}-a", "Yes, tell me more"))
        elif i % 4 == 1:
            replies.append((user(i), f"in-{i}-a", "No thanks"))
    for user_id, message_id, content in replies:
        manager.record_inbound_message(campaign_id, user_id, message_id, content)
    clock.advance(timedelta(days=1))
    manager.process_due_conversations(campaign_id, limit=n + 10)  # follow-ups, in the same variant
    clock.advance(timedelta(hours=3))
    for i in range(n):
        if i % 8 == 0:
            manager.record_inbound_message(campaign_id, user(i), f"in-{i}-b", "sure")
        elif i % 4 == 2 and i % 3 == 0:
            manager.record_inbound_message(campaign_id, user(i), f"in-{i}-b", "ok, sure")
    for _ in range(3):
        clock.advance(timedelta(days=2))
        manager.process_due_conversations(campaign_id, limit=n + 10)


def conversations(db: Any, campaign_id: str) -> list[ConversationState]:
    return [
        ConversationState.model_validate(doc)
        for doc in db["conversation_states"].find({"campaign_id": campaign_id})
    ]


def stored_split_counts(metrics: dict[str, Any]) -> dict[str, int]:
    """``variants`` and ``holdout`` of a metrics document as field paths, zeros left out."""
    flat: dict[str, int] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}.{key}", inner)
        elif value:
            flat[prefix] = int(value)

    walk("variants", metrics.get("variants", {}))
    walk("holdout", metrics.get("holdout", {}))
    return flat
