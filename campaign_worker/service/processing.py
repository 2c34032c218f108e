"""Processing batches: read a partition range's due conversations in one query, progress
each, write them in one bulk compare-and-set, publish what landed, account once per batch.

For a cancelled campaign a batch settles active conversations instead (each ends
``cancelled``). A conversation that cannot be evaluated or written is failed alone, with
the reason; the rest of its batch lands.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import structlog
from pydantic import ValidationError

from campaign_worker.domain.aliases import Doc
from campaign_worker.domain.campaign_documents import CampaignStatus
from campaign_worker.domain.documents import (
    FINISHED_STATUSES,
    ConversationState,
    StoredState,
    Unreadable,
    describe_validation_error,
)
from campaign_worker.domain.effects import Action, Decision, Effects, MetricsDelta
from campaign_worker.domain.errors import InvalidInputError, UnknownStageError
from campaign_worker.domain.partitions import PartitionRange
from campaign_worker.domain.progression import run
from campaign_worker.domain.templates import CampaignTypeTemplate, Template
from campaign_worker.domain.transitions import apply
from campaign_worker.service.context import Services
from campaign_worker.service.dispatch_tokens import Dispatch, dispatch_token
from campaign_worker.service.metrics_ledger import MetricsLedger
from campaign_worker.service.send_guard import Verdict
from campaign_worker.service.template_versions import CampaignTemplates
from campaign_worker.service.writes import Current, Evaluated, guard_sends, write_changes

log = structlog.get_logger(__name__)
WHOLE = PartitionRange()

Step = Callable[
    [ConversationState, Template, CampaignTypeTemplate, datetime],
    tuple[ConversationState, Effects],
]


@dataclass
class BatchResult:
    """What one processing batch did (returned by tasks as JSON)."""

    campaign_id: str
    claimed: int = 0  # read (no longer leased; the name is kept for callers)
    written: int = 0
    conflicts: int = 0
    invalid: int = 0
    sent: int = 0
    advanced: int = 0
    finished: dict[str, int] = field(default_factory=dict)
    skipped_reason: str | None = None
    more: bool = False  # more was due in the range than this batch took
    settling: bool = False  # a cancelled campaign's conversations were settled
    failures: int = 0  # conversations that could not be evaluated or written: failed alone

    def as_dict(self) -> Doc:
        return {
            "failures": self.failures,
            "campaign_id": self.campaign_id,
            "claimed": self.claimed,
            "written": self.written,
            "conflicts": self.conflicts,
            "invalid": self.invalid,
            "sent": self.sent,
            "advanced": self.advanced,
            "finished": dict(self.finished),
            "skipped_reason": self.skipped_reason,
            "more": self.more,
        }

    def count(self, landed: list[Effects]) -> None:
        for effects in landed:
            self.sent += len(effects.outbound)
            for transition in effects.transitions:
                if transition.to_stage is not None:
                    self.advanced += 1
                else:
                    outcome = transition.outcome or "unknown"
                    self.finished[outcome] = self.finished.get(outcome, 0) + 1


@dataclass
class EvaluatedBatch:
    """One batch's evaluated changes, before they are written."""

    changes: list[Evaluated] = field(default_factory=list)
    broken: dict[str, str] = field(default_factory=dict)  # id -> why it fails alone


def process_due_conversations(
    svc: Services,
    campaign_id: str,
    stage: str | None = None,
    limit: int | None = None,
    owner: str | None = None,
    on_claimed: Callable[[int, int], None] | None = None,
    *,
    span: PartitionRange = WHOLE,
    registration: str | None = None,
    on_more: Callable[[list[Dispatch]], None] | None = None,
) -> BatchResult:
    """Read a batch of due conversations of ``span`` in one query, progress each, write
    them in one bulk compare-and-set, publish, account once.

    ``registration``: this task's metrics registration, made by whoever enqueued it (so
    it needs none of its own). ``on_more(dispatches)``: when more is due in ``span``,
    the ranges to continue with (``span``, or its halves below the fan-out limit), each
    already registered by this batch's one metrics write; the caller enqueues them.
    ``owner`` is unused (batches are no longer leased) and kept for old callers;
    ``on_claimed(read, limit)`` runs right after the read."""
    result = BatchResult(campaign_id=campaign_id)
    ledger = svc.ledger(campaign_id, registration)
    try:
        _process(svc, campaign_id, stage, limit, span, on_claimed, ledger, result)
        continued = _continue(svc, span, result, on_more, ledger)
    except BaseException:
        ledger.close(failed=True)  # what landed is counted all the same
        raise
    # The batch's one metrics write: its counts, its deregistration and, when it
    # continues, the registration of what it hands over.
    ledger.close()
    if continued and on_more is not None:
        on_more(continued)
    return result


def _process(
    svc: Services,
    campaign_id: str,
    stage: str | None,
    limit: int | None,
    span: PartitionRange,
    on_claimed: Callable[[int, int], None] | None,
    ledger: MetricsLedger,
    result: BatchResult,
) -> None:
    campaign = svc.campaign(campaign_id)
    status = campaign.status
    if status not in (CampaignStatus.RUNNING, CampaignStatus.CANCELLED):
        result.skipped_reason = f"campaign is {status.value}"
        return
    templates = svc.campaign_templates(campaign)
    _, type_template = templates.pinned
    if stage is not None and stage not in type_template.stage_names:
        raise UnknownStageError(stage, type_template.stage_names)
    batch_limit = svc.process_batch_size if limit is None else limit
    if batch_limit < 1:
        raise InvalidInputError("limit must be a positive integer")
    settling = result.settling = status == CampaignStatus.CANCELLED
    # One more than the batch: whether more is due, at no extra round trip.
    read = svc.conversation_state_repository.read_due(
        campaign_id,
        svc.clock.now(),
        stage=stage,
        limit=batch_limit + 1,
        span=span,
        settling=settling,
    )
    result.more = len(read) > batch_limit
    claimed = read[:batch_limit]
    result.claimed = len(claimed)
    if on_claimed is not None:
        on_claimed(len(claimed), batch_limit)
    svc.metrics.batch_size("process", len(claimed))
    if not claimed:
        return
    batch = _evaluate(claimed, _settle if settling else run, templates, svc)
    if not settling:
        _guard(svc, batch, templates)
    write_evaluated(svc, batch, ledger, result)
    log.info(
        "batch_processed",
        campaign_id=campaign_id,
        partition=span.key,
        **{k: v for k, v in result.as_dict().items() if k != "campaign_id"},
    )


def _continue(
    svc: Services,
    span: PartitionRange,
    result: BatchResult,
    on_more: Callable[[list[Dispatch]], None] | None,
    ledger: MetricsLedger,
) -> list[Dispatch]:
    """The ranges to continue with, registered by this batch's metrics write: the two
    halves while two more batches are due and the fan-out allows, else the range
    itself, or nothing once nothing is due (one count, only when more was seen). A batch
    that mostly lost its writes shares its range with another task: it lets that one go
    on alone, so doubled chains merge instead of running side by side."""
    if on_more is None or not result.more or result.conflicts > result.written:
        return []
    batch = max(result.claimed, 1)
    left = svc.conversation_state_repository.count_due(
        result.campaign_id,
        svc.clock.now(),
        settling=result.settling,
        limit=2 * batch,
        span=span,
    )
    if not left:
        return []
    halves = left >= 2 * batch and span.count * 2 <= svc.process_fanout
    ranges = list(span.split()) if halves else [span]
    dispatches = [Dispatch(r, dispatch_token(r)) for r in ranges]
    ledger.hand_over([d.token for d in dispatches])
    return dispatches


def _evaluate(
    claimed: list[StoredState], step: Step, templates: CampaignTemplates, svc: Services
) -> EvaluatedBatch:
    """Each claimed conversation's next state, on its template version; what cannot be
    evaluated fails alone."""
    batch = EvaluatedBatch()
    now = svc.clock.now()
    for state in claimed:
        if isinstance(state, Unreadable):
            batch.broken[state.id] = f"invalid document: {state.error[:500]}"
            continue
        try:
            template, type_template = templates(state.context.template_version)
        except InvalidInputError as exc:  # its version is gone from the store
            batch.broken[state.id] = f"template version: {str(exc)[:300]}"
            continue
        try:
            new_state, effects = step(state, template, type_template, now)
        except Exception as exc:  # one conversation's bug must not sink its batch
            log.exception("conversation_evaluation_failed", conversation_id=state.id)
            try:
                new_state, effects = _failed(state, template, type_template, now, exc)
            except Exception:
                batch.broken[state.id] = f"could not be evaluated: {type(exc).__name__}"
                continue
        batch.changes.append(Evaluated(state, new_state, effects))
    return batch


def _guard(svc: Services, batch: EvaluatedBatch, templates: CampaignTemplates) -> None:
    """The batch's sends through the send guard (``writes.guard_sends``): a step it
    refuses runs again, to opt out or to wait for a held channel."""
    now = svc.clock.now()

    def rerun(change: Evaluated, verdict: Verdict) -> Evaluated:
        old = change.old
        template, type_template = templates(old.context.template_version)
        ruled = Current(old, template, type_template, now, verdict.suppressed, verdict.holds)
        return Evaluated(old, *ruled.run(old))

    batch.changes = guard_sends(svc, batch.changes, now, rerun)


def write_evaluated(
    svc: Services, batch: EvaluatedBatch, ledger: MetricsLedger, result: BatchResult
) -> None:
    """Write evaluated changes in one bulk compare-and-set, published and accounted as
    ``write_changes`` does (counts to ``ledger``, applied when the caller closes it); fail
    the broken alone."""
    result.invalid = sum(reason.startswith("invalid document") for reason in batch.broken.values())
    written = write_changes(svc, batch.changes, lambda _: ledger, svc.clock.now())
    batch.broken.update(written.failed)
    applied = written.applied
    result.written = len(applied)
    result.conflicts = len(batch.changes) - len(applied) - len(written.failed)
    result.failures = fail_alone(svc, batch.broken, ledger)
    result.count([c.effects for c in batch.changes if c.old.id in applied])


def fail_alone(svc: Services, broken: dict[str, str], ledger: MetricsLedger) -> int:
    """Fail conversations that could not be evaluated or stored, one by one, so they
    stop being due; each is counted as failed (if it was active)."""
    failed = 0
    for conversation_id, reason in broken.items():
        log.error("conversation_failed_alone", conversation_id=conversation_id, reason=reason)
        ledger.before_write()
        was_active = svc.conversation_state_repository.fail_conversation(
            conversation_id, reason, svc.clock.now()
        )
        ledger.after_write()
        if was_active:
            ledger.add(MetricsDelta(active=-1, failed=1))
            failed += 1
    return failed


def _settle(
    state: ConversationState, template: Template, type_template: CampaignTypeTemplate, now: datetime
) -> tuple[ConversationState, Effects]:
    """A cancelled campaign's active conversation ends as ``cancelled``."""
    effects = Effects()
    if state.status in FINISHED_STATUSES:
        return state, effects
    decision = Decision(Action.CANCEL, "campaign cancelled")
    return apply(state, decision, template, type_template, now, effects), effects


def _failed(
    state: ConversationState,
    template: Template,
    type_template: CampaignTypeTemplate,
    now: datetime,
    error: Exception,
) -> tuple[ConversationState, Effects]:
    """The conversation failed, with the evaluation error as its reason."""
    effects = Effects()
    reason = f"could not be evaluated: {type(error).__name__}: {str(error)[:300]}"
    failed = apply(state, Decision(Action.FAIL, reason), template, type_template, now, effects)
    return failed, effects


def validation_summary(exc: ValueError) -> str:
    """Which fields failed and why, without echoing the values (they may be personal)."""
    if isinstance(exc, ValidationError):
        return describe_validation_error(exc)[:500]
    return str(exc)[:500]


__all__ = [
    "BatchResult",
    "EvaluatedBatch",
    "fail_alone",
    "process_due_conversations",
    "validation_summary",
    "write_evaluated",
]
