"""CampaignManager: the seed's service. Orchestrates domain rules over the ports.

Every state change is computed purely (``domain.progression``) and written as one
compare-and-set on the conversation's ``version``; a lost race is retried from a fresh
read, and a replay of the same request finds nothing left to do.
"""

from __future__ import annotations

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
    UnknownStageError,
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

    def as_dict(self) -> Doc:
        return {
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

    # ------------------------------------------------------------------ campaigns

    def create_campaign(self, data: Doc | Campaign) -> str:
        """Validate and store a campaign; returns its id. Replaying with the same id is a
        no-op that returns the same id."""
        campaign = (
            data if isinstance(data, Campaign) else parse_document(Campaign, data, what="campaign")
        )
        self.config_manager.get_campaign_type(campaign.template_id, campaign.campaign_type)
        if campaign.status not in (CampaignStatus.DRAFT, CampaignStatus.SCHEDULED):
            raise InvalidInputError(
                f"status: a new campaign must be draft or scheduled, not {campaign.status.value!r}"
            )
        now = self.clock.now()
        campaign = campaign.model_copy(update={"created_at": now, "updated_at": now})
        created = self.campaigns.insert(campaign)
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
        """Stop the campaign: nothing more is sent. Conversations keep their state."""
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

        result = InitResult(campaign_id=campaign_id)
        batches = 0
        for batch, position in self.campaigns.iter_recipients(
            campaign, self.init_batch_size, progress.get("position")
        ):
            now = self.clock.now()
            docs = []
            for raw in batch:
                try:
                    recipient = Recipient.model_validate(raw)
                except ValueError as exc:
                    invalid += 1
                    log.warning("recipient_invalid", campaign_id=campaign_id, error=str(exc))
                    continue
                docs.append(self._new_conversation(campaign, recipient, stages, start_at, now))
            inserted = self.conversation_state_repository.insert_many_states(docs)
            result.created += inserted
            self.metrics.batch_size("initialize", len(docs))
            if inserted:
                delta = MetricsDelta(total_recipients=inserted, active=inserted)
                delta.stage_entered[stages[0]] = inserted
                self.campaign_metrics.apply_delta(campaign_id, delta, now)
                self.metrics.conversations_initialized(campaign["campaign_type"], inserted)
            progress = {"position": position, "invalid": invalid}
            batches += 1
            if status != CampaignStatus.RUNNING and not self.campaigns.save_init_progress(
                campaign_id, progress, now + timedelta(seconds=self.lease_seconds * 5), now
            ):
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
        """Due conversations (``next_action_at`` <= now), oldest first, via the index."""
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
        doc = metrics.model_dump(mode="python", exclude={"revision"})
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
                return state
            new_state, effects = outcome
            self.outbox.enqueue_many(effects.outbound)
            if self.conversation_state_repository.save_transitions([(state, new_state)]):
                self._account(state.campaign_id, state.campaign_type, [effects], now)
                # What is stored now: the write bumped the version and dropped any lease.
                return new_state.model_copy(
                    update={"version": state.version + 1, "lease_owner": None, "lease_until": None}
                )
            self._withdraw([effects], now)
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
        campaign = self.get_campaign(campaign_id)
        doc = self.conversation_state_repository.get_by_user(campaign_id, user_id)
        if doc is None:
            raise ConversationNotFoundError(f"campaign {campaign_id!r} / user {user_id!r}")
        conversation_id = str(doc["_id"])
        evaluate_now = campaign["status"] == CampaignStatus.RUNNING.value
        result: Doc = {"conversation_id": conversation_id, "duplicate": False, "actions": []}

        def change(
            state: ConversationState,
            template: Template,
            type_template: CampaignTypeTemplate,
            now: datetime,
        ) -> tuple[ConversationState, Effects] | None:
            if any(m.message_id == message_id for m in state.message_history):
                result["duplicate"] = True
                return None
            message = Message(
                message_id=message_id,
                direction=Direction.INBOUND,
                content=content,
                timestamp=timestamp or now,
                metadata={**(metadata or {}), "stage": state.current_stage, "received_at": now},
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
            if state.status in FINISHED_STATUSES:
                pass
            elif evaluate_now:
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

        Round trips per batch: campaign read, claim (3), outbox insert, bulk_write,
        metrics $inc - whatever the batch size. ``on_claimed(claimed, limit)`` runs right
        after the claim, before the work: a caller can fan out the next batch while this
        one is processed.
        """
        result = BatchResult(campaign_id=campaign_id)
        campaign = self.get_campaign(campaign_id)
        if campaign["status"] != CampaignStatus.RUNNING.value:
            result.skipped_reason = f"campaign is {campaign['status']}"
            return result
        template, type_template = self._type_template(campaign)
        if stage is not None and stage not in type_template.stage_names:
            raise UnknownStageError(stage, type_template.stage_names)
        batch_limit = self.process_batch_size if limit is None else limit
        if batch_limit < 1:
            raise InvalidInputError("limit must be a positive integer")
        now = self.clock.now()
        owner = owner or uuid.uuid4().hex
        claimed = self.conversation_state_repository.claim_due(
            campaign_id,
            now,
            owner=owner,
            lease_until=now + timedelta(seconds=self.lease_seconds),
            stage=stage,
            limit=batch_limit,
        )
        result.claimed = len(claimed)
        if on_claimed is not None:
            on_claimed(len(claimed), batch_limit)
        self.metrics.batch_size("process", len(claimed))
        changes: list[tuple[ConversationState, ConversationState]] = []
        effects_by_id: dict[str, Effects] = {}
        for doc in claimed:
            try:
                state = ConversationState.model_validate(doc)
            except ValueError as exc:
                result.invalid += 1
                self._quarantine(doc, str(exc), owner)
                continue
            new_state, effects = run(state, template, type_template, now)
            changes.append((state, new_state))
            effects_by_id[state.id] = effects
        self.outbox.enqueue_many(
            [envelope for effects in effects_by_id.values() for envelope in effects.outbound]
        )
        applied = self.conversation_state_repository.save_transitions(changes)
        result.written = len(applied)
        result.conflicts = len(changes) - len(applied)
        self._withdraw(
            [effects for cid, effects in effects_by_id.items() if cid not in applied], now
        )
        landed = [effects_by_id[cid] for cid in applied]
        self._account(campaign_id, campaign["campaign_type"], landed, now)
        for effects in landed:
            result.sent += len(effects.outbound)
            for transition in effects.transitions:
                if transition.to_stage is not None:
                    result.advanced += 1
                else:
                    outcome = transition.outcome or "unknown"
                    result.finished[outcome] = result.finished.get(outcome, 0) + 1
        log.info(
            "batch_processed",
            campaign_id=campaign_id,
            **{k: v for k, v in result.as_dict().items() if k != "campaign_id"},
        )
        return result

    def _quarantine(self, doc: Doc, error: str, owner: str) -> None:
        """A stored conversation that no longer validates: fail it so it stops being due."""
        log.error("conversation_invalid", conversation_id=doc.get("_id"), error=error)
        updated = self.conversation_state_repository.update_conversation_state(
            str(doc["_id"]),
            {
                "$set": {
                    "status": ConversationStatus.FAILED.value,
                    "status_reason": f"invalid document: {error[:500]}",
                    "next_action_at": None,
                },
                "$unset": {"lease_owner": "", "lease_until": ""},
            },
        )
        if updated is not None and doc.get("status") == ConversationStatus.ACTIVE.value:
            delta = MetricsDelta(active=-1, failed=1)
            self.campaign_metrics.apply_delta(str(doc["campaign_id"]), delta, self.clock.now())

    def _withdraw(self, lost: list[Effects], now: datetime) -> None:
        """Cancel the outbox messages of writes that lost their compare-and-set: the
        conversation never recorded them (the re-evaluation decides afresh, and revives a
        message it decides to send again)."""
        message_ids = [envelope.message_id for effects in lost for envelope in effects.outbound]
        if message_ids:
            withdrawn = self.outbox.cancel_pending(message_ids, now)
            log.info("outbox_withdrawn", messages=len(message_ids), withdrawn=withdrawn)

    def _account(
        self, campaign_id: str, campaign_type: str, landed: list[Effects], now: datetime
    ) -> None:
        """Fold the effects of writes that landed into one metrics $inc and counters."""
        delta = MetricsDelta()
        sent_by_channel: dict[str, int] = {}
        for effects in landed:
            delta.add(effects.delta)
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
        if not delta.is_empty():
            self.campaign_metrics.apply_delta(campaign_id, delta, now)

    # ------------------------------------------------------------------ reconcile

    def campaigns_to_reconcile(self, recent: timedelta = timedelta(days=1)) -> list[str]:
        """Running and paused campaigns, and those completed within ``recent``."""
        now = self.clock.now()
        ids = []
        for doc in self.campaigns.find_by_status(
            [CampaignStatus.RUNNING, CampaignStatus.PAUSED, CampaignStatus.COMPLETED]
        ):
            updated = doc.get("updated_at")
            if doc["status"] != CampaignStatus.COMPLETED.value or (
                updated is not None and to_utc(updated) >= now - recent
            ):
                ids.append(str(doc["_id"]))
        return ids

    def reconcile_campaign_metrics(self, campaign_id: str) -> dict[str, float]:
        """Recompute the metrics document from the conversations; correct any drift.

        Returns the drift corrected per field (expected minus stored; empty when exact).
        The correction is a $inc guarded by the document's ``updated_at``, and is only
        made when no increment landed while the aggregation ran: otherwise an in-flight
        batch would be counted twice, and the next run decides instead.
        """
        self.get_campaign(campaign_id)
        before = self.campaign_metrics.get(campaign_id) or {}
        expected = _expected_counts(
            self.conversation_state_repository.aggregate_campaign(campaign_id)
        )
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
        if drift:
            applied = self.campaign_metrics.correct(
                campaign_id, drift, int(after.get("revision") or 0), self.clock.now()
            )
            if not applied:
                return {}
            log.warning("metrics_drift_corrected", campaign_id=campaign_id, drift=drift)
        return drift

    # ------------------------------------------------------------------ polling

    def poll_campaigns(self, owner: str | None = None, claim_limit: int = 10) -> PollResult:
        """One poller pass: claim campaigns due for initialization, list running ones with
        due conversations, and complete running ones with nothing left active."""
        now = self.clock.now()
        result = PollResult()
        claimed = self.campaigns.claim_for_initialization(
            now,
            owner or uuid.uuid4().hex,
            now + timedelta(seconds=self.lease_seconds * 5),
            claim_limit,
        )
        result.initialize = [str(doc["_id"]) for doc in claimed]
        repo = self.conversation_state_repository
        for campaign in self.campaigns.find_by_status([CampaignStatus.RUNNING]):
            campaign_id = str(campaign["_id"])
            if repo.has_due(campaign_id, now):
                result.process.append(campaign_id)
            elif repo.count_active(campaign_id) == 0:
                self.campaigns.transition(
                    campaign_id, [CampaignStatus.RUNNING], CampaignStatus.COMPLETED, now
                )
                result.completed.append(campaign_id)
                log.info("campaign_completed", campaign_id=campaign_id)
        result.oldest_due = repo.oldest_due(now)
        lag = (now - to_utc(result.oldest_due)).total_seconds() if result.oldest_due else 0.0
        self.metrics.poller_lag(max(0.0, lag))
        return result


__all__ = ["BatchResult", "CampaignManager", "PollResult", "evaluate_rule"]


def _expected_counts(aggregate: Doc) -> dict[str, float]:
    """Flatten a conversation aggregation into metrics-document field paths."""
    counts: dict[str, float] = {"total_recipients": 0}
    field_for_status = {
        "active": "active_conversations",
        "completed": "completed_conversations",
        "failed": "failed_conversations",
        "opted_out": "opted_out_conversations",
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
    ):
        counts[key] = doc.get(key, 0)
    messages = doc.get("message_metrics", {})
    counts["message_metrics.total_sent"] = messages.get("total_sent", 0)
    counts["message_metrics.total_received"] = messages.get("total_received", 0)
    for stage, values in doc.get("stage_metrics", {}).items():
        for name in ("entered", "completed", "total_duration_seconds"):
            counts[f"stage_metrics.{stage}.{name}"] = values.get(name, 0)
    return {key: value for key, value in counts.items() if value}
