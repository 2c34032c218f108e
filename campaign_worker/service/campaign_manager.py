"""CampaignManager: the seed's service. Orchestrates domain rules over the ports.

Every state change is computed purely (``domain.progression``) and written as one
compare-and-set on the conversation's ``version``; a lost race is retried from a fresh
read, and a replay of the same request finds nothing left to do.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import structlog

from campaign_worker.domain.documents import (
    CAMPAIGN_TRANSITIONS,
    FINISHED_STATUSES,
    Campaign,
    CampaignMetrics,
    CampaignStatus,
    ConversationContext,
    ConversationState,
    ConversationStatus,
    Direction,
    Message,
    Recipient,
    StageEntry,
    conversation_id_for,
    describe_validation_error,
    parse_document,
    to_utc,
)
from campaign_worker.domain.errors import (
    CampaignNotFoundError,
    ConcurrencyConflictError,
    ConversationNotFoundError,
    InvalidDocumentError,
    InvalidInputError,
    InvalidStateTransitionError,
    LimitExceededError,
    UnknownStageError,
)
from campaign_worker.domain.limits import (
    MAX_CONTENT_BYTES,
    MAX_HISTORY_MESSAGES,
    MAX_METADATA_BYTES,
    check_size,
    truncate_utf8,
)
from campaign_worker.domain.progression import (
    Action,
    Decision,
    Effects,
    MetricsDelta,
    apply,
    evaluate,
    evaluate_rule,
    first_action_at,
    run,
    should_advance,
)
from campaign_worker.domain.templates import CampaignTypeTemplate, Stage, Template
from campaign_worker.service.ledger import MetricsLedger
from campaign_worker.service.outbound import Publisher
from campaign_worker.service.ports import (
    CampaignMetricsRepository,
    CampaignRepository,
    Clock,
    ConversationStateRepository,
    MetricsRecorder,
    NullRecorder,
    OutboxRepository,
    TemplateSource,
)

log = structlog.get_logger(__name__)

Doc = dict[str, Any]
_CAS_ATTEMPTS = 8
_UPDATABLE_FIELDS = {"context", "next_action_at", "status_reason"}
_SETTLED = frozenset({CampaignStatus.CANCELLED, CampaignStatus.COMPLETED})
_SETTLED_VALUES = frozenset(status.value for status in _SETTLED)
_INVALID_SAMPLES = 10  # invalid audience rows kept (position and error) on the campaign


@dataclass
class BatchResult:
    """What one processing batch did (returned by tasks as JSON)."""

    campaign_id: str
    claimed: int = 0
    written: int = 0
    conflicts: int = 0
    invalid: int = 0
    sent: int = 0
    advanced: int = 0
    finished: dict[str, int] = field(default_factory=dict)
    skipped_reason: str | None = None
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
        }


@dataclass
class InitResult:
    """What one initialization step did."""

    campaign_id: str
    created: int = 0
    done: bool = False
    stopped: bool = False


@dataclass
class PollResult:
    initialize: list[str] = field(default_factory=list)
    process: list[str] = field(default_factory=list)
    completed: list[str] = field(default_factory=list)
    oldest_due: datetime | None = None
    republished: int = 0


class CampaignManager:
    """Runs campaigns: initialization, progression, inbound replies and metrics."""

    def __init__(
        self,
        conversation_state_repository: ConversationStateRepository,
        config_manager: TemplateSource,
        metrics: MetricsRecorder | None = None,
        *,
        campaign_repository: CampaignRepository,
        metrics_repository: CampaignMetricsRepository,
        outbox_repository: OutboxRepository,
        clock: Clock,
        init_batch_size: int = 1000,
        process_batch_size: int = 200,
        lease_seconds: int = 120,
        inflight_timeout_seconds: int = 900,
    ) -> None:
        self.conversation_state_repository = conversation_state_repository
        self.config_manager = config_manager
        self.metrics = metrics or NullRecorder()
        self.campaigns = campaign_repository
        self.campaign_metrics = metrics_repository
        self.outbox = outbox_repository
        self.clock = clock
        self.init_batch_size = init_batch_size
        self.process_batch_size = process_batch_size
        self.lease_seconds = lease_seconds
        # A registered writer older than this is dead (beyond any task's time limit).
        self.inflight_timeout = timedelta(seconds=inflight_timeout_seconds)
        # Messages still unpublished this long after their write are a crash's leftovers.
        self.publish_grace = timedelta(seconds=30)
        self.publisher = Publisher(conversation_state_repository, outbox_repository)

    # ------------------------------------------------------------------ campaigns

    def create_campaign(self, data: Doc | Campaign, idempotency_key: str | None = None) -> str:
        """Validate and store a campaign; returns its id.

        Replaying the same request (same ``_id``, or same ``idempotency_key`` without an
        ``_id``) is a no-op that returns the same id; a different campaign under an id or
        key already used is refused.
        """
        raw = data.to_mongo() if isinstance(data, Campaign) else dict(data)
        if idempotency_key is not None:
            if not idempotency_key or len(idempotency_key) > 512:
                raise InvalidInputError("idempotency_key: must be 1 to 512 characters")
            raw.setdefault("idempotency_key", idempotency_key)
            if "_id" not in raw and "id" not in raw:
                raw["_id"] = campaign_id_for_key(idempotency_key)
        fingerprint = _fingerprint(raw)
        campaign = parse_document(Campaign, raw, what="campaign")
        self.config_manager.get_campaign_type(campaign.template_id, campaign.campaign_type)
        if campaign.status not in (CampaignStatus.DRAFT, CampaignStatus.SCHEDULED):
            raise InvalidInputError(
                f"status: a new campaign must be draft or scheduled, not {campaign.status.value!r}"
            )
        if not self.campaigns.has_recipients(campaign.to_mongo()):
            raise InvalidInputError(
                "recipients: the audience is empty (no document matches the query)"
            )
        now = self.clock.now()
        campaign = campaign.model_copy(
            update={"created_at": now, "updated_at": now, "request_fingerprint": fingerprint}
        )
        created = self.campaigns.insert(campaign)
        if not created:
            existing = self.get_campaign(campaign.id)
            stored = existing.get("request_fingerprint")
            if stored is not None and stored != fingerprint:
                raise InvalidInputError(
                    f"campaign {campaign.id!r} exists with different content; an id or "
                    "idempotency key names one campaign"
                )
        self.campaign_metrics.ensure(campaign.id, now)
        log.info(
            "campaign_created",
            campaign_id=campaign.id,
            created=created,
            campaign_type=campaign.campaign_type,
        )
        return campaign.id

    def get_campaign(self, campaign_id: str) -> Doc:
        doc = self.campaigns.get(campaign_id)
        if doc is None:
            raise CampaignNotFoundError(campaign_id)
        return doc

    def _transition_campaign(
        self, campaign_id: str, to: CampaignStatus, extra: Doc | None = None
    ) -> Doc:
        allowed = [status for status, targets in CAMPAIGN_TRANSITIONS.items() if to in targets]
        doc = self.campaigns.transition(campaign_id, allowed, to, self.clock.now(), extra)
        if doc is None:
            current = self.get_campaign(campaign_id)
            if current["status"] == to.value:
                return current  # replay: already there
            raise InvalidStateTransitionError(
                f"campaign {campaign_id!r} is {current['status']!r}; cannot move to {to.value!r}"
            )
        log.info("campaign_status_changed", campaign_id=campaign_id, status=to.value)
        return doc

    def schedule_campaign(self, campaign_id: str) -> Doc:
        return self._transition_campaign(campaign_id, CampaignStatus.SCHEDULED)

    def pause_campaign(self, campaign_id: str) -> Doc:
        return self._transition_campaign(campaign_id, CampaignStatus.PAUSED)

    def resume_campaign(self, campaign_id: str) -> Doc:
        current = self.get_campaign(campaign_id)
        target = (
            CampaignStatus.RUNNING if current.get("initialized_at") else CampaignStatus.SCHEDULED
        )
        return self._transition_campaign(campaign_id, target)

    def cancel_campaign(self, campaign_id: str) -> Doc:
        """Stop the campaign: nothing more is sent. Its active conversations are then
        settled in batches (each ends ``cancelled``) by processing, which the poller and
        the cancel task start."""
        return self._transition_campaign(campaign_id, CampaignStatus.CANCELLED)

    def _type_template(self, campaign_or_state: Doc) -> tuple[Template, CampaignTypeTemplate]:
        template_id = campaign_or_state.get("template_id") or campaign_or_state.get(
            "context", {}
        ).get("template_id")
        template = self.config_manager.get_template(str(template_id))
        return template, self.config_manager.get_campaign_type(
            str(template_id), str(campaign_or_state["campaign_type"])
        )

    # ------------------------------------------------------------------ initialization

    def initialize_campaign_conversations(self, campaign_id: str) -> int:
        """Create one conversation per recipient, in batches; returns how many are new.

        Safe to run twice or concurrently: conversation ids are deterministic and
        (campaign_id, user_id) is unique, so a duplicate means "already initialized".
        """
        return self.initialize_campaign_step(campaign_id).created

    def initialize_campaign_step(
        self, campaign_id: str, max_batches: int | None = None
    ) -> InitResult:
        """Initialize up to ``max_batches`` batches from the saved checkpoint.

        Progress (recipient position, counts) is checkpointed with every batch, so a task
        can stop within its time limit and the next one resume where it left off; a
        crashed initializer loses at most one batch of work, never correctness.
        """
        campaign = self.campaigns.get(campaign_id, with_recipients=True)
        if campaign is None:
            raise CampaignNotFoundError(campaign_id)
        status = CampaignStatus(campaign["status"])
        if status in (
            CampaignStatus.DRAFT,
            CampaignStatus.CANCELLED,
            CampaignStatus.COMPLETED,
            CampaignStatus.PAUSED,
        ):
            raise InvalidStateTransitionError(
                f"campaign {campaign_id!r} is {status.value!r}; it cannot be initialized"
            )
        if status == CampaignStatus.SCHEDULED:
            self._transition_campaign(campaign_id, CampaignStatus.INITIALIZING)
        _, type_template = self._type_template(campaign)
        stages = type_template.stage_names
        start_at = campaign.get("start_at")
        progress: Doc = dict(campaign.get("init_progress") or {})
        invalid = int(progress.get("invalid", 0))
        samples: list[Doc] = list(progress.get("invalid_samples") or [])

        result = InitResult(campaign_id=campaign_id)
        batches = 0
        for batch, position in self.campaigns.iter_recipients(
            campaign, self.init_batch_size, progress.get("position")
        ):
            now = self.clock.now()
            docs = []
            ledger = MetricsLedger(self.campaign_metrics, campaign_id, self.clock)
            for raw in batch:
                try:
                    recipient = Recipient.model_validate(raw)
                except ValueError as exc:
                    invalid += 1
                    ledger.delta.invalid_recipients += 1
                    error = _validation_summary(exc)
                    if len(samples) < _INVALID_SAMPLES:
                        samples.append({"user_id": str(raw.get("user_id"))[:512], "error": error})
                    log.warning("recipient_invalid", campaign_id=campaign_id, error=error)
                    continue
                docs.append(self._new_conversation(campaign, recipient, stages, start_at, now))
            # Registered until the checkpoint is saved: the reconcile compares the invalid
            # count with the campaign's, and the conversations with the increment.
            ledger.before_write()
            inserted = self.conversation_state_repository.insert_many_states(docs)
            result.created += inserted
            self.metrics.batch_size("initialize", len(docs))
            if inserted:
                ledger.delta.total_recipients += inserted
                ledger.delta.active += inserted
                ledger.delta.stage_entered[stages[0]] += inserted
                self.metrics.conversations_initialized(campaign["campaign_type"], inserted)
            progress = {"position": position, "invalid": invalid, "invalid_samples": samples}
            batches += 1
            saved = status == CampaignStatus.RUNNING or self.campaigns.save_init_progress(
                campaign_id, progress, now + timedelta(seconds=self.lease_seconds * 5), now
            )
            ledger.after_write()
            ledger.close()
            if not saved:
                result.stopped = True  # paused or cancelled meanwhile
                log.info("campaign_initialization_stopped", campaign_id=campaign_id)
                return result
            if max_batches is not None and batches >= max_batches:
                log.info(
                    "campaign_initialization_checkpoint",
                    campaign_id=campaign_id,
                    created=result.created,
                    position=position,
                )
                return result
        # Status and total in one conditional update; a pause or cancel that arrived
        # meanwhile wins (the filter no longer matches). The total is counted, so it is
        # exact even if two initializers overlapped.
        total = self.conversation_state_repository.count_conversations(campaign_id)
        now = self.clock.now()
        self.campaigns.transition(
            campaign_id,
            [CampaignStatus.INITIALIZING, CampaignStatus.SCHEDULED, CampaignStatus.RUNNING],
            CampaignStatus.RUNNING,
            now,
            {
                "total_recipients": total,
                "initialized_at": now,
                "init_progress": {**progress, "done": True},
                "invalid_recipients": invalid,
                "invalid_samples": samples,
            },
        )
        result.done = True
        log.info(
            "campaign_initialized",
            campaign_id=campaign_id,
            created=result.created,
            total_recipients=total,
            invalid_recipients=invalid,
        )
        return result

    def _new_conversation(
        self,
        campaign: Doc,
        recipient: Recipient,
        stages: list[str],
        start_at: datetime | None,
        now: datetime,
    ) -> Doc:
        conversation_id = conversation_id_for(campaign["_id"], recipient.user_id)
        return ConversationState(
            id=conversation_id,
            user_id=recipient.user_id,
            campaign_id=campaign["_id"],
            campaign_type=campaign["campaign_type"],
            current_stage=stages[0],
            stages=[StageEntry(name=stages[0], entered_at=now)],
            context=ConversationContext(
                template_id=campaign["template_id"],
                available_stages=stages,
                attributes=recipient.attributes,
                timezone=recipient.timezone,
            ),
            created_at=now,
            last_active=now,
            next_action_at=first_action_at(to_utc(start_at) if start_at else None, now),
        ).to_mongo()

    # ------------------------------------------------------------------ queries

    def _load(self, conversation_id: str) -> ConversationState:
        doc = self.conversation_state_repository.get_conversation_state(conversation_id)
        if doc is None:
            raise ConversationNotFoundError(conversation_id)
        return parse_document(ConversationState, doc, what=f"conversation {conversation_id}")

    def get_pending_conversations(
        self,
        campaign_id: str,
        stage: str | None = None,
        limit: int = 100,
        status: str = "active",
    ) -> list[Doc]:
        """For ``active`` (the default): due conversations (``next_action_at`` <= now),
        oldest first, via the index. For a finished status, where nothing is ever due: the
        conversations in it, most recently finished first."""
        if limit < 1:
            raise InvalidInputError("limit must be a positive integer")
        try:
            ConversationStatus(status)
        except ValueError:
            raise InvalidInputError(f"status: unknown conversation status {status!r}") from None
        campaign = self.get_campaign(campaign_id)
        if stage is not None:
            _, type_template = self._type_template(campaign)
            if stage not in type_template.stage_names:
                raise UnknownStageError(stage, type_template.stage_names)
        return self.conversation_state_repository.find_due(
            campaign_id, self.clock.now(), stage=stage, status=status, limit=limit
        )

    def get_conversation_history(self, conversation_id: str) -> list[Doc]:
        state = self._load(conversation_id)
        return [message.model_dump(mode="python") for message in state.message_history]

    def get_conversation(self, conversation_id: str) -> Doc:
        return self._load(conversation_id).to_mongo()

    def get_campaign_metrics(self, campaign_id: str) -> Doc:
        """The seed's Campaign Metrics Document (avg durations and response rate derived)."""
        campaign = self.get_campaign(campaign_id)
        raw = self.campaign_metrics.get(campaign_id) or {}
        raw = {key: value for key, value in raw.items() if key != "_id"}
        raw.setdefault("campaign_id", campaign_id)
        raw.setdefault("updated_at", self.clock.now())
        negative = _clamp_negative(raw)
        if negative:
            # Stored drift, not the caller's input: report zero; the reconcile corrects it.
            log.warning("metrics_document_negative", campaign_id=campaign_id, fields=negative)
        metrics = parse_document(CampaignMetrics, raw, what=f"metrics of {campaign_id}")
        try:
            _, type_template = self._type_template(campaign)
            order = type_template.stage_names
        except InvalidInputError:
            order = []
        names = order + [name for name in metrics.stage_metrics if name not in order]
        stage_metrics = {
            name: metrics.stage_metrics[name].model_dump(exclude={"total_duration_seconds"})
            if name in metrics.stage_metrics
            else {"entered": 0, "completed": 0, "avg_duration_seconds": 0.0}
            for name in names
        }
        doc = metrics.model_dump(mode="python", exclude={"revision", "inflight"})
        doc["stage_metrics"] = stage_metrics
        return doc

    # ------------------------------------------------------------------ progression

    def _get_stages_for_campaign_type(
        self, template: Template | Doc, campaign_type: str
    ) -> list[str]:
        """Ordered stage names of ``campaign_type`` in ``template``."""
        model = (
            template
            if isinstance(template, Template)
            else parse_document(Template, template, what="template")
        )
        type_template = model.for_type(campaign_type)
        if type_template is None:
            raise InvalidInputError(
                f"template {model.template_id!r} has no campaign_type {campaign_type!r}"
            )
        return type_template.stage_names

    def _get_stage_data(self, conversation_state: Doc, stage: str) -> Doc:
        """The template definition of ``stage`` for this conversation's campaign type."""
        state = parse_document(ConversationState, conversation_state, what="conversation")
        _, type_template = self._type_template(state.to_mongo())
        found = type_template.stage(stage)
        if found is None:
            raise UnknownStageError(stage, type_template.stage_names)
        return found.model_dump(mode="python")

    def _should_advance_to_next_stage(
        self, conversation_state: Doc, stage_data: Doc
    ) -> tuple[bool, str]:
        """Whether the stage's progression rule is met now, and why (not)."""
        state = parse_document(ConversationState, conversation_state, what="conversation")
        stage = parse_document(Stage, stage_data, what="stage")
        return should_advance(state, stage, self.clock.now())

    def evaluate_stage_progression(
        self, conversation_id: str, conversation_state: Doc | None = None
    ) -> tuple[bool, str, Doc]:
        """(advance?, next stage or "", details). Reads nothing but the template when the
        state is given; details carry the full decision (action, reason, next_action_at)."""
        state = (
            self._load(conversation_id)
            if conversation_state is None
            else parse_document(ConversationState, conversation_state, what="conversation")
        )
        template, type_template = self._type_template(state.to_mongo())
        decision = evaluate(state, template, type_template, self.clock.now())
        return decision.action == Action.ADVANCE, decision.next_stage or "", decision.as_dict()

    def _write_one(
        self,
        conversation_id: str,
        change: Callable[
            [ConversationState, Template, CampaignTypeTemplate, datetime],
            tuple[ConversationState, Effects] | None,
        ],
        first_read: Doc | None = None,
    ) -> ConversationState:
        """Read, compute, compare-and-set; retried on a lost race. ``change`` returns None
        when there is nothing to do (a replay). ``first_read`` saves the first read when
        the caller has just loaded the document."""
        ledger: MetricsLedger | None = None
        try:
            for _ in range(_CAS_ATTEMPTS):
                if first_read is not None:
                    state = parse_document(
                        ConversationState, first_read, what=f"conversation {conversation_id}"
                    )
                    first_read = None
                else:
                    state = self._load(conversation_id)
                template, type_template = self._type_template(state.to_mongo())
                now = self.clock.now()
                outcome = change(state, template, type_template, now)
                if outcome is None:
                    self.publisher.leftovers([state])  # a replay after a crash
                    return state
                new_state, effects = outcome
                ledger = ledger or MetricsLedger(
                    self.campaign_metrics, state.campaign_id, self.clock
                )
                # A write that changes no count cannot be counted twice: no registration.
                counts = not effects.delta.is_empty()
                if counts:
                    ledger.before_write()
                written = self.conversation_state_repository.write_transitions(
                    [(state, new_state)], now
                )
                if counts:
                    ledger.after_write()
                if state.id in written.failed:
                    raise InvalidDocumentError(
                        f"conversation {conversation_id!r} cannot store this change: "
                        f"{written.failed[state.id]}"
                    )
                token = written.applied.get(state.id)
                if token is None:
                    continue  # lost the race: nothing was recorded, nothing to withdraw
                ledger.add(effects.delta)
                self.publisher.after_writes([(state, new_state, token)])
                self._record_counters(state.campaign_type, [effects])
                # What is stored now: the write bumped the version and dropped any lease.
                return new_state.model_copy(
                    update={
                        "version": state.version + 1,
                        "lease_owner": None,
                        "lease_until": None,
                        "unpublished": [],
                    }
                )
        finally:
            if ledger is not None:
                ledger.close()
        raise ConcurrencyConflictError(
            f"conversation {conversation_id!r} kept changing under us; try again later"
        )

    def advance_conversation_stage(self, conversation_id: str, next_stage: str) -> Doc:
        """Move to ``next_stage`` (compare-and-set on the current stage).

        Moving to the current or an earlier stage, or advancing a finished conversation,
        is a no-op that returns the state as it is, so replays are harmless.
        """

        def change(
            state: ConversationState,
            template: Template,
            type_template: CampaignTypeTemplate,
            now: datetime,
        ) -> tuple[ConversationState, Effects] | None:
            names = type_template.stage_names
            if next_stage not in names:
                raise UnknownStageError(next_stage, names)
            if state.status in FINISHED_STATUSES or state.current_stage not in names:
                return None
            if names.index(next_stage) <= names.index(state.current_stage):
                return None
            effects = Effects()
            decision = Decision(Action.ADVANCE, "advanced by request", next_stage=next_stage)
            return apply(state, decision, template, type_template, now, effects), effects

        return self._write_one(conversation_id, change).to_mongo()

    def mark_conversation_complete(self, conversation_id: str) -> Doc:
        """Complete the conversation now; a finished one is returned unchanged."""

        def change(
            state: ConversationState,
            template: Template,
            type_template: CampaignTypeTemplate,
            now: datetime,
        ) -> tuple[ConversationState, Effects] | None:
            if state.status in FINISHED_STATUSES:
                return None
            effects = Effects()
            decision = Decision(Action.COMPLETE, "marked complete")
            return apply(state, decision, template, type_template, now, effects), effects

        return self._write_one(conversation_id, change).to_mongo()

    def update_conversation_state(self, conversation_id: str, updates: Doc) -> Doc:
        """Update ``context`` (merged), ``next_action_at`` or ``status_reason``.

        Progress fields (stage, status, history, metrics) change only through the
        operations that keep campaign metrics right, so they are refused here.
        """
        if not isinstance(updates, dict) or not updates:
            raise InvalidInputError("updates must be a non-empty object")
        refused = sorted(set(updates) - _UPDATABLE_FIELDS)
        if refused:
            raise InvalidInputError(
                f"cannot update field(s) {refused}; updatable: {sorted(_UPDATABLE_FIELDS)}"
            )

        def change(
            state: ConversationState,
            template: Template,
            type_template: CampaignTypeTemplate,
            now: datetime,
        ) -> tuple[ConversationState, Effects] | None:
            merged = state.to_mongo()
            for key, value in updates.items():
                if key == "context":
                    if not isinstance(value, dict):
                        raise InvalidInputError("context: must be an object")
                    merged["context"] = {**merged["context"], **value}
                else:
                    merged[key] = value
            merged["last_active"] = now
            new_state = parse_document(
                ConversationState, merged, what=f"update of conversation {conversation_id}"
            )
            if new_state.context.available_stages != state.context.available_stages:
                raise InvalidInputError("context.available_stages cannot be changed")
            if new_state.context.template_id != state.context.template_id:
                raise InvalidInputError("context.template_id cannot be changed")
            return new_state, Effects()

        return self._write_one(conversation_id, change).to_mongo()

    def process_conversation(self, conversation_id: str) -> Doc:
        """Evaluate one conversation now and apply what is due (the seed's
        "Process Conversation"); returns the new state."""

        def change(
            state: ConversationState,
            template: Template,
            type_template: CampaignTypeTemplate,
            now: datetime,
        ) -> tuple[ConversationState, Effects] | None:
            if state.status in FINISHED_STATUSES:
                return None
            # As process_due_conversations: a paused or cancelled campaign sends nothing.
            if self.get_campaign(state.campaign_id)["status"] != CampaignStatus.RUNNING.value:
                return None
            return run(state, template, type_template, now)

        return self._write_one(conversation_id, change).to_mongo()

    def record_inbound_message(
        self,
        campaign_id: str,
        user_id: str,
        message_id: str,
        content: str,
        timestamp: datetime | None = None,
        metadata: Doc | None = None,
    ) -> Doc:
        """Store a reply (idempotent by message_id) and evaluate the conversation at once.

        Returns {conversation_id, duplicate, status, current_stage, actions}.
        """
        if not message_id:
            raise InvalidInputError("message_id: must not be empty")
        if not isinstance(content, str):
            raise InvalidInputError("content: must be a string")
        check_size(metadata or {}, MAX_METADATA_BYTES, "metadata")
        # An over-long reply is kept, cut at the limit and marked, rather than refused:
        # its start still counts as the reply it is.
        content, size = truncate_utf8(content, MAX_CONTENT_BYTES)
        extra: Doc = {"truncated": True, "original_bytes": size} if size > MAX_CONTENT_BYTES else {}
        campaign = self.get_campaign(campaign_id)
        doc = self.conversation_state_repository.get_by_user(campaign_id, user_id)
        if doc is None:
            raise ConversationNotFoundError(f"campaign {campaign_id!r} / user {user_id!r}")
        conversation_id = str(doc["_id"])
        campaign_status = CampaignStatus(campaign["status"])
        result: Doc = {"conversation_id": conversation_id, "duplicate": False, "actions": []}

        def change(
            state: ConversationState,
            template: Template,
            type_template: CampaignTypeTemplate,
            now: datetime,
        ) -> tuple[ConversationState, Effects] | None:
            result["actions"] = []  # what an earlier, lost attempt decided does not count
            if any(m.message_id == message_id for m in state.message_history):
                result["duplicate"] = True
                return None
            if len(state.message_history) >= MAX_HISTORY_MESSAGES:
                raise LimitExceededError(
                    f"conversation {conversation_id!r} holds {MAX_HISTORY_MESSAGES} messages, "
                    "the most one conversation keeps"
                )
            message = Message(
                message_id=message_id,
                direction=Direction.INBOUND,
                content=content,
                timestamp=timestamp or now,
                metadata={
                    **(metadata or {}),
                    **extra,
                    "stage": state.current_stage,
                    "received_at": now,
                },
            )
            metrics = state.metrics.model_copy(
                update={"messages_received": state.metrics.messages_received + 1}
            )
            updated = state.model_copy(
                update={
                    "message_history": [*state.message_history, message],
                    "metrics": metrics,
                    "last_active": now,
                }
            )
            effects = Effects()
            if state.status in FINISHED_STATUSES or campaign_status in _SETTLED:
                pass  # recorded; a cancelled campaign's conversations only wind down
            elif campaign_status == CampaignStatus.RUNNING:
                updated, effects = run(updated, template, type_template, now)
            else:
                # Paused campaign: keep the reply due so it is evaluated on resume.
                updated = updated.model_copy(update={"next_action_at": now})
            effects.delta.received += 1
            result["actions"] = [decision.action.value for decision in effects.decisions]
            return updated, effects

        try:
            state = self._write_one(conversation_id, change, first_read=doc)
        except InvalidDocumentError as exc:
            raise InvalidInputError(str(exc)) from exc
        channel = str((metadata or {}).get("channel", "default"))
        if not result["duplicate"]:
            self.metrics.messages_received(channel, 1)
        result.update({"status": state.status.value, "current_stage": state.current_stage})
        return result

    def process_due_conversations(
        self,
        campaign_id: str,
        stage: str | None = None,
        limit: int | None = None,
        owner: str | None = None,
        on_claimed: Callable[[int, int], None] | None = None,
    ) -> BatchResult:
        """Claim a batch of due conversations with a lease, progress each, write in bulk.

        For a cancelled campaign the batch settles active conversations instead (each
        ends ``cancelled``). A conversation that cannot be evaluated or written is failed
        alone, with the reason; the rest of its batch lands. ``on_claimed(claimed,
        limit)`` runs right after the claim: a caller can fan out the next batch while
        this one is processed.
        """
        result = BatchResult(campaign_id=campaign_id)
        campaign = self.get_campaign(campaign_id)
        status = campaign["status"]
        if status not in (CampaignStatus.RUNNING.value, CampaignStatus.CANCELLED.value):
            result.skipped_reason = f"campaign is {status}"
            return result
        template, type_template = self._type_template(campaign)
        if stage is not None and stage not in type_template.stage_names:
            raise UnknownStageError(stage, type_template.stage_names)
        batch_limit = self.process_batch_size if limit is None else limit
        if batch_limit < 1:
            raise InvalidInputError("limit must be a positive integer")
        now = self.clock.now()
        owner = owner or uuid.uuid4().hex
        lease_until = now + timedelta(seconds=self.lease_seconds)
        repo = self.conversation_state_repository
        settling = status == CampaignStatus.CANCELLED.value
        if settling:
            claimed = repo.claim_active(
                campaign_id, now, owner=owner, lease_until=lease_until, limit=batch_limit
            )
        else:
            claimed = repo.claim_due(
                campaign_id,
                now,
                owner=owner,
                lease_until=lease_until,
                stage=stage,
                limit=batch_limit,
            )
        result.claimed = len(claimed)
        if on_claimed is not None:
            on_claimed(len(claimed), batch_limit)
        self.metrics.batch_size("process", len(claimed))
        if not claimed:
            return result
        step = _settle if settling else run
        ledger = MetricsLedger(self.campaign_metrics, campaign_id, self.clock)
        try:
            types = (template, type_template, campaign["campaign_type"])
            self._progress_batch(claimed, step, types, now, ledger, result)
        finally:
            ledger.close()
        log.info(
            "batch_processed",
            campaign_id=campaign_id,
            **{k: v for k, v in result.as_dict().items() if k != "campaign_id"},
        )
        return result

    def _progress_batch(
        self,
        claimed: list[Doc],
        step: Callable[
            [ConversationState, Template, CampaignTypeTemplate, datetime],
            tuple[ConversationState, Effects],
        ],
        types: tuple[Template, CampaignTypeTemplate, str],
        now: datetime,
        ledger: MetricsLedger,
        result: BatchResult,
    ) -> None:
        """Evaluate each claimed conversation, write the batch, publish, account."""
        template, type_template, campaign_type = types
        changes: list[tuple[ConversationState, ConversationState]] = []
        effects_by_id: dict[str, Effects] = {}
        broken: dict[str, str] = {}
        for doc in claimed:
            try:
                state = ConversationState.model_validate(doc)
            except ValueError as exc:
                result.invalid += 1
                broken[str(doc["_id"])] = f"invalid document: {_validation_summary(exc)}"
                continue
            try:
                new_state, effects = step(state, template, type_template, now)
            except Exception as exc:  # one conversation's bug must not sink its batch
                log.exception("conversation_evaluation_failed", conversation_id=state.id)
                try:
                    new_state, effects = _failed(state, template, type_template, now, exc)
                except Exception:
                    broken[state.id] = f"could not be evaluated: {type(exc).__name__}"
                    continue
            changes.append((state, new_state))
            effects_by_id[state.id] = effects
        counts = any(not effects.delta.is_empty() for effects in effects_by_id.values())
        if counts:
            ledger.before_write()
        written = self.conversation_state_repository.write_transitions(changes, now)
        if counts:
            ledger.after_write()
        broken.update(written.failed)
        result.written = len(written.applied)
        result.conflicts = len(changes) - len(written.applied) - len(written.failed)
        landed = [effects_by_id[cid] for cid in written.applied]
        for effects in landed:
            ledger.add(effects.delta)
        self.publisher.after_writes(
            [
                (old, new, written.applied[old.id])
                for old, new in changes
                if old.id in written.applied
            ]
        )
        self._record_counters(campaign_type, landed)
        result.failures = self._fail_alone(broken, ledger)
        for effects in landed:
            result.sent += len(effects.outbound)
            for transition in effects.transitions:
                if transition.to_stage is not None:
                    result.advanced += 1
                else:
                    outcome = transition.outcome or "unknown"
                    result.finished[outcome] = result.finished.get(outcome, 0) + 1

    def _fail_alone(self, broken: dict[str, str], ledger: MetricsLedger) -> int:
        """Fail conversations that could not be evaluated or stored, one by one, so they
        stop being due; each is counted as failed (if it was active)."""
        failed = 0
        for conversation_id, reason in broken.items():
            log.error("conversation_failed_alone", conversation_id=conversation_id, reason=reason)
            ledger.before_write()
            was_active = self.conversation_state_repository.fail_conversation(
                conversation_id, reason, self.clock.now()
            )
            ledger.after_write()
            if was_active:
                ledger.add(MetricsDelta(active=-1, failed=1))
                failed += 1
        return failed

    def _record_counters(self, campaign_type: str, landed: list[Effects]) -> None:
        """Operational counters (Prometheus) for writes that landed."""
        sent_by_channel: dict[str, int] = {}
        for effects in landed:
            for envelope in effects.outbound:
                sent_by_channel[envelope.channel] = sent_by_channel.get(envelope.channel, 0) + 1
            for transition in effects.transitions:
                if transition.to_stage is not None:
                    self.metrics.stage_transition(
                        campaign_type, transition.from_stage, transition.to_stage
                    )
                else:
                    self.metrics.conversation_finished(campaign_type, transition.outcome or "")
        for channel, count in sent_by_channel.items():
            self.metrics.messages_sent(channel, count)

    # ------------------------------------------------------------------ reconcile

    def campaigns_to_reconcile(self, recent: timedelta = timedelta(days=1)) -> list[str]:
        """Running and paused campaigns, and those completed or cancelled within ``recent``."""
        now = self.clock.now()
        ids = []
        for doc in self.campaigns.find_by_status(
            [
                CampaignStatus.RUNNING,
                CampaignStatus.PAUSED,
                CampaignStatus.COMPLETED,
                CampaignStatus.CANCELLED,
            ]
        ):
            updated = doc.get("updated_at")
            if doc["status"] not in _SETTLED_VALUES or (
                updated is not None and to_utc(updated) >= now - recent
            ):
                ids.append(str(doc["_id"]))
        return ids

    def reconcile_campaign_metrics(self, campaign_id: str) -> dict[str, float]:
        """Recompute the metrics document from the conversations; correct any drift.

        Returns the drift corrected per field (expected minus stored; empty when exact).
        Exact while batches run: it defers while a writer is registered (its states may
        have landed before its increment), and when any write touched the document while
        the aggregation ran. A registration older than the in-flight timeout belongs to a
        dead writer: it is dropped with the correction.
        """
        campaign = self.get_campaign(campaign_id)
        now = self.clock.now()
        before = self.campaign_metrics.get(campaign_id) or {}
        inflight = {str(k): to_utc(v) for k, v in (before.get("inflight") or {}).items()}
        stale = [token for token, since in inflight.items() if since < now - self.inflight_timeout]
        if len(stale) < len(inflight):
            log.info("metrics_reconcile_deferred", campaign_id=campaign_id, reason="writers")
            return {}
        expected = _expected_counts(
            self.conversation_state_repository.aggregate_campaign(campaign_id)
        )
        invalid = int((campaign.get("init_progress") or {}).get("invalid", 0))
        if invalid:
            expected["invalid_recipients"] = invalid
        after = self.campaign_metrics.get(campaign_id) or {}
        if before.get("revision") != after.get("revision"):
            log.info(
                "metrics_reconcile_deferred", campaign_id=campaign_id, reason="concurrent updates"
            )
            return {}
        stored = _stored_counts(after)
        drift = {
            key: expected.get(key, 0) - stored.get(key, 0)
            for key in set(expected) | set(stored)
            if abs(expected.get(key, 0) - stored.get(key, 0)) > 1e-6
        }
        if drift or stale:
            applied = self.campaign_metrics.correct(
                campaign_id, drift, int(after.get("revision") or 0), now, stale
            )
            if not applied:
                return {}
            if drift:
                log.warning("metrics_drift_corrected", campaign_id=campaign_id, drift=drift)
        return drift

    # ------------------------------------------------------------------ polling

    def poll_campaigns(self, owner: str | None = None, claim_limit: int = 10) -> PollResult:
        """One poller pass: claim campaigns due for initialization, list running ones with
        due conversations (and cancelled ones with conversations left to settle), complete
        running ones with nothing left active, publish messages a crash left unpublished.
        The lag counts running campaigns only: paused and cancelled ones are not late."""
        now = self.clock.now()
        result = PollResult()
        # First, so a failure here leaves no campaign claimed without its task sent.
        result.republished = self.publisher.sweep(now - self.publish_grace)
        claimed = self.campaigns.claim_for_initialization(
            now,
            owner or uuid.uuid4().hex,
            now + timedelta(seconds=self.lease_seconds * 5),
            claim_limit,
        )
        result.initialize = [str(doc["_id"]) for doc in claimed]
        repo = self.conversation_state_repository
        running = []
        for campaign in self.campaigns.find_by_status(
            [CampaignStatus.RUNNING, CampaignStatus.CANCELLED]
        ):
            campaign_id = str(campaign["_id"])
            if campaign["status"] == CampaignStatus.CANCELLED.value:
                self._poll_cancelled(campaign, now, result)
                continue
            running.append(campaign_id)
            if repo.has_due(campaign_id, now):
                result.process.append(campaign_id)
            elif repo.count_active(campaign_id) == 0:
                self.campaigns.transition(
                    campaign_id, [CampaignStatus.RUNNING], CampaignStatus.COMPLETED, now
                )
                result.completed.append(campaign_id)
                log.info("campaign_completed", campaign_id=campaign_id)
        result.oldest_due = repo.oldest_due(now, running)
        lag = (now - to_utc(result.oldest_due)).total_seconds() if result.oldest_due else 0.0
        self.metrics.poller_lag(max(0.0, lag))
        return result

    def _poll_cancelled(self, campaign: Doc, now: datetime, result: PollResult) -> None:
        """A cancelled campaign is settled once no conversation of it is active."""
        campaign_id = str(campaign["_id"])
        if self.conversation_state_repository.count_active(campaign_id):
            result.process.append(campaign_id)
        else:
            self.campaigns.mark_settled(campaign_id, now)
            log.info("campaign_settled", campaign_id=campaign_id)


__all__ = ["BatchResult", "CampaignManager", "PollResult", "campaign_id_for_key", "evaluate_rule"]


def campaign_id_for_key(idempotency_key: str) -> str:
    """The campaign id a client's idempotency key stands for (same key, same campaign)."""
    return uuid.uuid5(uuid.NAMESPACE_URL, f"campaign-worker:campaign-key:{idempotency_key}").hex


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
    return apply(
        state, Decision(Action.FAIL, reason), template, type_template, now, effects
    ), effects


def _clamp_negative(doc: Doc, prefix: str = "") -> list[str]:
    """Set negative counters in ``doc`` (nested) to 0; returns their paths."""
    clamped = []
    for key, value in doc.items():
        if isinstance(value, dict) and key != "inflight":
            clamped += _clamp_negative(value, f"{prefix}{key}.")
        elif isinstance(value, int | float) and not isinstance(value, bool) and value < 0:
            doc[key] = 0
            clamped.append(prefix + key)
    return clamped


def _validation_summary(exc: ValueError) -> str:
    """Which fields failed and why, without echoing the values (they may be personal)."""
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        return describe_validation_error(exc)[:500]
    return str(exc)[:500]


def _fingerprint(raw: Doc) -> str:
    """A hash of what the client asked for (its request, less server-set fields)."""
    request = {k: v for k, v in raw.items() if k not in {"created_at", "updated_at"}}
    encoded = json.dumps(request, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(encoded.encode()).hexdigest()


def _expected_counts(aggregate: Doc) -> dict[str, float]:
    """Flatten a conversation aggregation into metrics-document field paths."""
    counts: dict[str, float] = {"total_recipients": 0}
    field_for_status = {
        "active": "active_conversations",
        "completed": "completed_conversations",
        "failed": "failed_conversations",
        "opted_out": "opted_out_conversations",
        "cancelled": "cancelled_conversations",
    }
    for row in aggregate.get("status", []):
        counts["total_recipients"] += row["n"]
        counts[field_for_status[str(row["_id"])]] = row["n"]
    for row in aggregate.get("messages", []):
        counts["message_metrics.total_sent"] = row["sent"]
        counts["message_metrics.total_received"] = row["received"]
    for row in aggregate.get("stages", []):
        stage = row["_id"]
        counts[f"stage_metrics.{stage}.entered"] = row["entered"]
        counts[f"stage_metrics.{stage}.completed"] = row["completed"]
        counts[f"stage_metrics.{stage}.total_duration_seconds"] = row["total_ms"] / 1000.0
    return {key: value for key, value in counts.items() if value}


def _stored_counts(doc: Doc) -> dict[str, float]:
    counts: dict[str, float] = {}
    for key in (
        "total_recipients",
        "active_conversations",
        "completed_conversations",
        "failed_conversations",
        "opted_out_conversations",
        "cancelled_conversations",
        "invalid_recipients",
    ):
        counts[key] = doc.get(key, 0)
    messages = doc.get("message_metrics", {})
    counts["message_metrics.total_sent"] = messages.get("total_sent", 0)
    counts["message_metrics.total_received"] = messages.get("total_received", 0)
    for stage, values in doc.get("stage_metrics", {}).items():
        for name in ("entered", "completed", "total_duration_seconds"):
            counts[f"stage_metrics.{stage}.{name}"] = values.get(name, 0)
    return {key: value for key, value in counts.items() if value}
