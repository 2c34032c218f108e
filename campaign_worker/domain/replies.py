"""What is recorded with an inbound message when it is appended: its intent, and for an
out-of-office reply when follow-ups resume. Pure; called once per message."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from campaign_worker.domain.intents import OUT_OF_OFFICE
from campaign_worker.domain.return_dates import resume_at
from campaign_worker.domain.templates import Template


def reply_facts(
    content: str, received_at: datetime, timezone: str, template: Template
) -> dict[str, Any]:
    """``{"intent": ...}`` plus ``resume_at`` for an out-of-office reply."""
    intent = template.classifier.classify(content)
    facts: dict[str, Any] = {"intent": intent}
    if intent == OUT_OF_OFFICE:
        policy = template.out_of_office
        facts["resume_at"] = resume_at(
            content,
            received_at,
            timezone,
            default_pause=policy.pause,
            max_pause=policy.max_pause,
        )
    return facts


__all__ = ["reply_facts"]
