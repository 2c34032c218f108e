"""Checks before a send that no campaign may skip: the suppression list and the
cross-campaign frequency cap. A flow runs a conversation's step, and only if the step
sends does it ask the guard (so a step that sends nothing costs no round trip):

- a suppressed recipient's conversation ends ``opted_out`` instead of sending;
- a send over its channel's cap is deferred: the step runs again with that channel held
  until a slot frees up (the conversation waits; nothing is dropped), and is counted.

After writes land, opt-outs are added to the suppression list (``record_opt_outs``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import structlog

from campaign_worker.domain.documents import ConversationState, ConversationStatus
from campaign_worker.domain.effects import Effects
from campaign_worker.domain.suppressions import (
    FrequencyCap,
    Suppression,
    keys_for,
    opt_out_entries,
)
from campaign_worker.service.ports import SendBudgetRepository, SendRequest, SuppressionRepository

log = structlog.get_logger(__name__)

DEFAULT_ADDRESS_ATTRIBUTES = {"email": "email", "sms": "phone"}


@dataclass
class Verdict:
    """What the guard says about one conversation's sends."""

    suppressed: str | None = None  # why, if its recipient is on the list
    holds: dict[str, datetime] = field(default_factory=dict)  # channel -> not before


@dataclass
class SendGuard:
    suppressions: SuppressionRepository | None = None
    budget: SendBudgetRepository | None = None
    caps: dict[str, FrequencyCap] = field(default_factory=dict)
    address_attributes: Mapping[str, str] = field(
        default_factory=lambda: dict(DEFAULT_ADDRESS_ATTRIBUTES)
    )

    def suppressed(self, states: Sequence[ConversationState]) -> dict[str, str]:
        """Conversation id -> reason, for those whose recipient is suppressed (one query)."""
        return self.suppressed_people(
            [(state.id, state.user_id, state.context.attributes) for state in states]
        )

    def suppressed_people(
        self, people: Sequence[tuple[str, str, Mapping[str, Any]]]
    ) -> dict[str, str]:
        """For (key, user id, attributes) rows: key -> reason, for those on the list."""
        if self.suppressions is None or not people:
            return {}
        keys = self.keys_of(people)
        found = self.suppressions.matching(sorted({key for ks in keys.values() for key in ks}))
        return self.reasons(keys, found)

    def keys_of(self, people: Sequence[tuple[str, str, Mapping[str, Any]]]) -> dict[str, list[str]]:
        """For (key, user id, attributes) rows: key -> the suppression ids that stop it
        (none when this guard checks no list)."""
        if self.suppressions is None:
            return {}
        return {
            key: keys_for(user_id, attributes, self.address_attributes)
            for key, user_id, attributes in people
        }

    @staticmethod
    def reasons(keys: Mapping[str, list[str]], found: Mapping[str, Suppression]) -> dict[str, str]:
        """key -> reason, for the rows of ``keys`` that an entry of ``found`` stops."""
        reasons = {}
        for key, candidates in keys.items():
            hit = next((candidate for candidate in candidates if candidate in found), None)
            if hit is not None:
                reasons[key] = f"suppressed ({found[hit].source})"
        return reasons

    def check(
        self, outcomes: Sequence[tuple[ConversationState, Effects]], now: datetime
    ) -> dict[str, Verdict]:
        """Verdicts for the conversations whose step sends (others are not asked about)."""
        sending = [(state, effects) for state, effects in outcomes if effects.outbound]
        verdicts: dict[str, Verdict] = {}
        for conversation_id, reason in self.suppressed([s for s, _ in sending]).items():
            verdicts[conversation_id] = Verdict(suppressed=reason)
        if self.budget is None or not self.caps:
            return verdicts
        requests = {
            envelope.message_id: (
                state.id,
                SendRequest(envelope.channel, state.user_id, envelope.message_id),
            )
            for state, effects in sending
            if state.id not in verdicts
            for envelope in effects.outbound
        }
        free_at = self.budget.reserve([request for _, request in requests.values()], self.caps, now)
        for message_id, until in free_at.items():
            conversation_id, request = requests[message_id]
            verdict = verdicts.setdefault(conversation_id, Verdict())
            verdict.holds[request.channel] = max(until, verdict.holds.get(request.channel, until))
        return verdicts

    def record_opt_outs(
        self, landed: Sequence[tuple[ConversationState, ConversationState]], now: datetime
    ) -> int:
        """Add each conversation that just opted out to the suppression list."""
        if self.suppressions is None:
            return 0
        entries = [
            entry
            for old, new in landed
            if new.status == ConversationStatus.OPTED_OUT
            and old.status != ConversationStatus.OPTED_OUT
            and not (new.status_reason or "").startswith("suppressed")
            for entry in opt_out_entries(
                new.user_id,
                new.context.attributes,
                self.address_attributes,
                campaign_id=new.campaign_id,
                reason=new.status_reason or "opt-out",
                now=now,
            )
        ]
        added = self.suppressions.add_many(entries) if entries else 0
        if added:
            log.info("suppressions_added", count=added)
        return added


__all__ = ["DEFAULT_ADDRESS_ATTRIBUTES", "SendGuard", "Verdict"]
