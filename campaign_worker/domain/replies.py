"""What is recorded with an inbound message when it is appended: its intent, and for an
out-of-office reply when follow-ups resume. Pure; called once per message.

``reply_facts`` is the keyword classifier's (``Template.classifier`` on the raw content);
``understood_facts`` records a reply understanding ``Classification`` (its intent read
from the author's own words, confidence, language, whether it needs review), the return
date read from the extracted text.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from campaign_worker.domain.intents import OUT_OF_OFFICE
from campaign_worker.domain.return_dates import resume_at
from campaign_worker.domain.templates import Template
from campaign_worker.domain.understanding import Classification


def _resume_at(text: str, received_at: datetime, timezone: str, template: Template) -> datetime:
    policy = template.out_of_office
    return resume_at(
        text, received_at, timezone, default_pause=policy.pause, max_pause=policy.max_pause
    )


def reply_facts(
    content: str, received_at: datetime, timezone: str, template: Template
) -> dict[str, Any]:
    """``{"intent": ...}`` plus ``resume_at`` for an out-of-office reply."""
    intent = template.classifier.classify(content)
    facts: dict[str, Any] = {"intent": intent}
    if intent == OUT_OF_OFFICE:
        facts["resume_at"] = _resume_at(content, received_at, timezone, template)
    return facts


def understood_facts(
    understood: Classification, received_at: datetime, timezone: str, template: Template
) -> dict[str, Any]:
    """``intent`` (the best reading, also when held), ``needs_review`` (a flow acts on
    the intent only when False), ``confidence``, ``language``, ``intent_source`` (rule,
    model, example), and ``resume_at`` for a decided out-of-office reply."""
    facts: dict[str, Any] = {
        "intent": understood.intent,
        "needs_review": understood.needs_review,
        "confidence": round(understood.confidence, 4),
        "language": understood.language,
        "intent_source": understood.source,
    }
    if understood.decided == OUT_OF_OFFICE:
        facts["resume_at"] = _resume_at(understood.extracted_text, received_at, timezone, template)
    return facts


__all__ = ["reply_facts", "understood_facts"]
