"""Inbound replies, recorded in batches: a handful of round trips per batch, whatever its size.

A batch reads each campaign once and every affected conversation in one ``find``; each
new reply is understood once (``ReplyUnderstanding``: extraction, rules, model,
thresholds); each conversation gets its new replies appended in arrival order (a
``message_id`` already in its history, or earlier in the batch, is a duplicate) and is
evaluated after each, in memory; then all conversations are written in one bulk compare-
and-set, published and accounted once. A conversation whose write lost a race is re-read
and recomputed (bounded by ``CAS_ATTEMPTS``). Each reply gets its own outcome: a result,
or the error that refuses it (``InvalidInputError``: dead letter) or defers it
(``ConcurrencyConflictError``: retry); infrastructure errors fail the whole call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import structlog

from campaign_worker.domain.aliases import Doc
from campaign_worker.domain.campaign_documents import StoredCampaign
from campaign_worker.domain.documents import (
    ConversationState,
    Unreadable,
)
from campaign_worker.domain.effects import Effects
from campaign_worker.domain.errors import (
    CampaignNotFoundError,
    ConcurrencyConflictError,
    ConversationNotFoundError,
    InvalidInputError,
)
from campaign_worker.domain.templates import CampaignTypeTemplate, Template
from campaign_worker.service.context import Services
from campaign_worker.service.metrics_ledger import MetricsLedger
from campaign_worker.service.reply_recording import CheckedReply, InboundReply, ReplyOutcome
from campaign_worker.service.send_guard import Verdict
from campaign_worker.service.writes import (
    CAS_ATTEMPTS,
    Evaluated,
    guard_sends,
    write_changes,
)

log = structlog.get_logger(__name__)


@dataclass
class _Conversation:
    """One conversation of the batch and the replies (by batch index) addressed to it."""

    campaign: StoredCampaign
    state: ConversationState
    templates: tuple[Template, CampaignTypeTemplate]
    replies: list[tuple[int, CheckedReply]] = field(default_factory=list)
    verdict: Verdict | None = None  # the send guard's ruling on its sends, once asked


def record_inbound_messages(svc: Services, replies: Sequence[InboundReply]) -> list[ReplyOutcome]:
    """Record ``replies`` (idempotent by message_id); one outcome per reply, in order."""
    outcomes = [ReplyOutcome() for _ in replies]
    checked: dict[int, CheckedReply] = {}
    for index, reply in enumerate(replies):
        try:
            checked[index] = CheckedReply.checked(reply)
        except InvalidInputError as exc:
            outcomes[index].error = exc
    campaigns = _campaigns(svc, {replies[i].campaign_id for i in checked})
    wanted = [i for i in checked if replies[i].campaign_id in campaigns]
    for index in [i for i in checked if replies[i].campaign_id not in campaigns]:
        outcomes[index].error = CampaignNotFoundError(replies[index].campaign_id)
    conversations = _conversations(svc, replies, wanted, checked, campaigns, outcomes)
    _understand(svc, conversations)
    ledgers: dict[str, MetricsLedger] = {}
    try:
        _write_all(svc, conversations, outcomes, ledgers)
    finally:
        for ledger in ledgers.values():
            ledger.close()
    received: dict[str, int] = {}
    for index, outcome in enumerate(outcomes):
        if outcome.result is not None and not outcome.result["duplicate"]:
            channel = str((replies[index].metadata or {}).get("channel", "default"))
            received[channel] = received.get(channel, 0) + 1
    for channel, count in received.items():
        svc.metrics.messages_received(channel, count)
    return outcomes


def _campaigns(svc: Services, ids: set[str]) -> dict[str, StoredCampaign]:
    """Each campaign once (a batch usually addresses one or a few)."""
    found: dict[str, StoredCampaign] = {}
    for campaign_id in sorted(ids):
        stored = svc.campaigns.get(campaign_id)
        if stored is not None:
            found[campaign_id] = stored
    return found


def _conversations(
    svc: Services,
    replies: Sequence[InboundReply],
    wanted: list[int],
    checked: dict[int, CheckedReply],
    campaigns: dict[str, StoredCampaign],
    outcomes: list[ReplyOutcome],
) -> dict[str, _Conversation]:
    """The conversations the replies address (one read), with their replies in order."""
    pairs = sorted({(replies[i].campaign_id, replies[i].user_id) for i in wanted})
    by_pair: dict[tuple[str | None, str | None], ConversationState | InvalidInputError] = {}
    for read in svc.conversation_state_repository.find_by_users(pairs):
        if isinstance(read, Unreadable):
            by_pair[(read.campaign_id, read.user_id)] = InvalidInputError(str(read.problem()))
        elif _latest(by_pair.get((read.campaign_id, read.user_id)), read):
            by_pair[(read.campaign_id, read.user_id)] = read  # a re-entry: the latest entry
    found: dict[str, _Conversation] = {}
    for index in wanted:
        reply = replies[index]
        state = by_pair.get((reply.campaign_id, reply.user_id))
        if state is None:
            error = f"campaign {reply.campaign_id!r} / user {reply.user_id!r}"
            outcomes[index].error = ConversationNotFoundError(error)
        elif isinstance(state, InvalidInputError):
            outcomes[index].error = state
        elif state.id in found:
            found[state.id].replies.append((index, checked[index]))
        else:
            try:
                templates = svc.type_template(state)
            except InvalidInputError as exc:  # e.g. its template was removed
                outcomes[index].error = exc
                continue
            found[state.id] = _Conversation(campaigns[reply.campaign_id], state, templates)
            found[state.id].replies.append((index, checked[index]))
    return found


def _latest(known: object, read: ConversationState) -> bool:
    """Whether ``read`` is the person's latest entry so far (a reply goes to it)."""
    if not isinstance(known, ConversationState):
        return True
    return (read.enrollment or 0) > (known.enrollment or 0)


def _understand(svc: Services, conversations: dict[str, _Conversation]) -> None:
    """Each new reply understood once, before the first attempt to record it (a reply
    already in its conversation's history is a duplicate: nothing to understand)."""
    for conversation in conversations.values():
        recorded = {message.message_id for message in conversation.state.message_history}
        template = conversation.templates[0]
        for _, reply in conversation.replies:
            if reply.message_id not in recorded:
                reply.understand(svc.understanding, conversation.state, template)


def _write_all(
    svc: Services,
    conversations: dict[str, _Conversation],
    outcomes: list[ReplyOutcome],
    ledgers: dict[str, MetricsLedger],
) -> None:
    """Evaluate and write every conversation; re-read and retry those that lost a race."""

    def ledger_of(campaign_id: str) -> MetricsLedger:
        if campaign_id not in ledgers:
            ledgers[campaign_id] = svc.ledger(campaign_id)
        return ledgers[campaign_id]

    pending = dict(conversations)
    for attempt in range(CAS_ATTEMPTS):
        if attempt:
            _reread(svc, pending, outcomes)
        now = svc.clock.now()
        changes, unchanged = _evaluate_all(pending, outcomes, now)
        changes = _guard(svc, pending, changes, outcomes, now)
        svc.publisher.leftovers(unchanged)  # a replay after a crash: publish what is left
        written = write_changes(svc, changes, ledger_of, now)
        for conversation_id, reason in written.failed.items():
            error: Exception = InvalidInputError(
                f"conversation {conversation_id!r} cannot store this change: {reason}"
            )
            _refuse(pending.pop(conversation_id), outcomes, error)
        for conversation_id in written.applied:
            pending.pop(conversation_id)
        for state in unchanged:
            pending.pop(state.id, None)
        if not pending:
            return
        log.info("replies_conflict", conversations=len(pending), attempt=attempt + 1)
    for conversation in pending.values():
        error = ConcurrencyConflictError(
            f"conversation {conversation.state.id!r} kept changing under us; try again later"
        )
        _refuse(conversation, outcomes, error)


def _evaluate_all(
    pending: dict[str, _Conversation], outcomes: list[ReplyOutcome], now: datetime
) -> tuple[list[Evaluated], list[ConversationState]]:
    """Each pending conversation's change (or, if no reply in it is new, its state)."""
    changes: list[Evaluated] = []
    unchanged: list[ConversationState] = []
    for conversation in pending.values():
        conversation.verdict = None  # asked again about this attempt's sends
        change = _evaluate(conversation, outcomes, now)
        if change is None:
            unchanged.append(conversation.state)
        else:
            changes.append(change)
    return changes, unchanged


def _guard(
    svc: Services,
    pending: dict[str, _Conversation],
    changes: list[Evaluated],
    outcomes: list[ReplyOutcome],
    now: datetime,
) -> list[Evaluated]:
    """The batch's sends through the send guard (``writes.guard_sends``): a conversation it
    rules on is evaluated again (a suppressed recipient opts out, a capped channel waits)."""

    def rerun(change: Evaluated, verdict: Verdict) -> Evaluated | None:
        conversation = pending[change.old.id]
        conversation.verdict = verdict
        return _evaluate(conversation, outcomes, now)

    return guard_sends(svc, changes, now, rerun)


def _evaluate(c: _Conversation, outcomes: list[ReplyOutcome], now: datetime) -> Evaluated | None:
    """Append each new reply in order and evaluate after each (as if they had come one by
    one); each reply's result is the state right after it. None if none is new."""
    state = c.state
    effects = Effects()
    seen = {m.message_id for m in state.message_history}
    for index, reply in c.replies:
        result: Doc = {"conversation_id": state.id, "duplicate": False, "actions": []}
        outcomes[index].error = None  # what an earlier, lost attempt decided does not count
        if reply.message_id in seen:
            result["duplicate"] = True
        else:
            try:
                state, step = reply.applied_to(state, now, c.campaign, c.templates, c.verdict)
            except Exception as exc:  # refused alone (a full conversation, a bug)
                outcomes[index].result, outcomes[index].error = None, exc
                continue
            seen.add(reply.message_id)
            _merge(effects, step)
            result["actions"] = [decision.action.value for decision in step.decisions]
        result.update({"status": state.status.value, "current_stage": state.current_stage})
        outcomes[index].result = result
    if state is c.state:
        return None
    return Evaluated(c.state, state, effects)


def _reread(svc: Services, pending: dict[str, _Conversation], outcomes: list[ReplyOutcome]) -> None:
    """Fresh states for conversations that lost a race (one read)."""
    read = svc.conversation_state_repository.get_many(sorted(pending))
    fresh = {found.id: found for found in read}
    for conversation_id in list(pending):
        found = fresh.get(conversation_id)
        if isinstance(found, ConversationState):
            pending[conversation_id].state = found
            continue
        error = ConversationNotFoundError(conversation_id) if found is None else found.problem()
        _refuse(pending.pop(conversation_id), outcomes, error)


def _refuse(c: _Conversation, outcomes: list[ReplyOutcome], error: Exception) -> None:
    """Every reply to ``c`` that would have been recorded fails with ``error``."""
    for index, _ in c.replies:
        result = outcomes[index].result
        if result is None or not result["duplicate"]:
            outcomes[index].result, outcomes[index].error = None, error


def _merge(into: Effects, step: Effects) -> None:
    into.outbound.extend(step.outbound)
    into.transitions.extend(step.transitions)
    into.decisions.extend(step.decisions)
    into.delta.add(step.delta)


def record_one(svc: Services, reply: InboundReply) -> Doc:
    """One reply (the seed's ``record_inbound_message``): its result, or its error raised."""
    outcome = record_inbound_messages(svc, [reply])[0]
    if outcome.error is not None:
        raise outcome.error
    assert outcome.result is not None
    return outcome.result


__all__ = ["CheckedReply", "InboundReply", "ReplyOutcome", "record_inbound_messages", "record_one"]
