"""What is recorded with an inbound message when it is appended: what the reply
understanding made of it, and for an out-of-office reply when follow-ups resume. Pure;
called once per message (the reply is classified once, when it is recorded; evaluation
reads what was recorded, never the text again)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from campaign_worker.domain.intents import OUT_OF_OFFICE
from campaign_worker.domain.limits import MAX_EXTRACTED_BYTES, truncate_utf8
from campaign_worker.domain.return_dates import resume_at
from campaign_worker.domain.templates import Template
from campaign_worker.domain.understanding import Classification


def out_of_office_until(
    text: str, received_at: datetime, timezone: str, template: Template
) -> datetime:
    """When follow-ups resume after an auto-reply whose text is ``text`` (its return date,
    at most the template's ``max_pause`` away, else its ``pause``)."""
    policy = template.out_of_office
    return resume_at(
        text, received_at, timezone, default_pause=policy.pause, max_pause=policy.max_pause
    )


def understood_facts(
    understood: Classification,
    received_at: datetime,
    timezone: str,
    template: Template,
    content: str | None = None,
) -> dict[str, Any]:
    """``intent`` (the best reading, also when held), ``needs_review`` (a flow acts on the
    intent only when False; a held reply's resolution replaces it), ``extracted_text``
    (the author's own words: what every rule reads; the content is kept as it came; left
    out when the words are the ``content`` itself, cut at ``MAX_EXTRACTED_BYTES``),
    ``confidence``, ``language``, ``intent_source`` (rule, model, example), the
    ``review_reason`` of a held reply, and ``resume_at`` for a decided out-of-office
    reply."""
    facts: dict[str, Any] = {
        "intent": understood.intent,
        "needs_review": understood.needs_review,
        **_own_words(understood.extracted_text, content),
        "confidence": round(understood.confidence, 4),
        "language": understood.language,
        "intent_source": understood.source,
    }
    if understood.review_reason is not None:
        facts["review_reason"] = understood.review_reason
    if understood.decided == OUT_OF_OFFICE:
        facts["resume_at"] = out_of_office_until(
            understood.extracted_text, received_at, timezone, template
        )
    return facts


def _own_words(extracted: str, content: str | None) -> dict[str, str]:
    if extracted == content:
        return {}  # rules read the content (``rules.reply_text``)
    return {"extracted_text": truncate_utf8(extracted, MAX_EXTRACTED_BYTES)[0]}


__all__ = ["out_of_office_until", "understood_facts"]
