"""CampaignManager: the seed's service, a facade over the flow modules.

Every public method of the seed keeps its name, parameters and return shape, and
delegates to one flow (``campaigns``, ``initialization``, ``processing``,
``conversations``, ``polling``, ``reconcile``, ``queries``). Every state change is
computed purely (``domain.progression``) and written as one compare-and-set on the
conversation's ``version``; a lost race is retried from a fresh read, and a replay of the
same request finds nothing left to do.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

from campaign_worker.domain.aliases import Doc
from campaign_worker.domain.campaign_documents import Campaign, CampaignStatus
from campaign_worker.domain.documents import ConversationState, parse_document
from campaign_worker.domain.effects import Action
from campaign_worker.domain.errors import InvalidInputError, UnknownStageError
from campaign_worker.domain.migrations import StageMap
from campaign_worker.domain.partitions import PartitionRange
from campaign_worker.domain.progression import evaluate
from campaign_worker.domain.rules import evaluate_rule, should_advance
from campaign_worker.domain.templates import Stage, Template
from campaign_worker.service import (
    campaigns,
    conversations,
    enrollment,
    event_batches,
    initialization,
    invariants,
    migrations,
    polling,
    processing,
    queries,
    reconcile,
    replies,
)
from campaign_worker.service.campaigns import campaign_id_for_key
from campaign_worker.service.dispatch_tokens import Dispatch
from campaign_worker.service.enrollment import EnrollResult
from campaign_worker.service.event_recording import EventOutcome, InboundEvent
from campaign_worker.service.initialization import InitResult
from campaign_worker.service.invariants import InvariantReport
from campaign_worker.service.migrations import MigrationResult
from campaign_worker.service.operator_commands import OperatorCommands
from campaign_worker.service.polling import PollResult
from campaign_worker.service.processing import BatchResult
from campaign_worker.service.reply_recording import InboundReply, ReplyOutcome


class CampaignManager(OperatorCommands):
    """Runs campaigns: initialization, progression, inbound replies and metrics."""

    # ------------------------------------------------------------------ campaigns

    def create_campaign(self, data: Doc | Campaign, idempotency_key: str | None = None) -> str:
        """Validate and store a campaign; returns its id (idempotent by id or key)."""
        return campaigns.create_campaign(self, data, idempotency_key)

    def validate_campaign(self, data: Doc) -> Campaign:
        """Check a campaign request (fields, template, campaign type) without storing it."""
        return campaigns.validate_campaign(self, data)

    def schedule_campaign(self, campaign_id: str) -> Doc:
        return campaigns.transition_campaign(self, campaign_id, CampaignStatus.SCHEDULED).to_mongo()

    def pause_campaign(self, campaign_id: str) -> Doc:
        return campaigns.transition_campaign(self, campaign_id, CampaignStatus.PAUSED).to_mongo()

    def resume_campaign(self, campaign_id: str) -> Doc:
        return campaigns.resume_campaign(self, campaign_id).to_mongo()

    def cancel_campaign(self, campaign_id: str) -> Doc:
        """Stop the campaign: nothing more is sent. Its active conversations are then
        settled in batches (each ends ``cancelled``) by processing, which the poller and
        the cancel task start."""
        cancelled = campaigns.transition_campaign(self, campaign_id, CampaignStatus.CANCELLED)
        return cancelled.to_mongo()

    # ------------------------------------------------------------------ template versions

    def migrate_campaign(
        self,
        campaign_id: str,
        to_version: int | str,
        stage_map: dict[str, str] | None = None,
        default: str | None = None,
        *,
        dry_run: bool = True,
        batch_size: int | None = None,
    ) -> MigrationResult:
        """Move a campaign's in-flight conversations to template version ``to_version``
        (or ``"current"``, the file as loaded now). ``stage_map``: old stage -> ``new``,
        ``new:enter`` or ``exit:<outcome>``; ``default``: the target of removed stages it
        does not name. A dry run (the default) only counts (see ``service.migrations``)."""
        parsed = StageMap.parse(stage_map or {}, default)
        return migrations.migrate_campaign(
            self, campaign_id, to_version, parsed, dry_run=dry_run, batch_size=batch_size
        )

    def template_versions(self, template_id: str) -> list[Doc]:
        """The stored versions of a template, oldest first (without their content)."""
        if self.versions is None:
            raise InvalidInputError("template versions are not configured in this process")
        return [
            version.model_dump(by_alias=True, exclude={"content"})
            for version in self.versions.list(template_id)
        ]

    def register_templates(self) -> list[Doc]:
        """Store the loaded template files' contents as versions (new ones numbered)."""
        if self.versions is None:
            return []
        registered = []
        for template_id in self.config_manager.template_ids():
            version = self.versions.current(template_id)
            registered.append({"template_id": template_id, "version": version.version})
        return registered

    # ------------------------------------------------------------------ initialization

    def initialize_campaign_conversations(self, campaign_id: str) -> int:
        """Create one conversation per recipient, in batches; returns how many are new."""
        return self.initialize_campaign_step(campaign_id).created

    def initialize_campaign_step(
        self,
        campaign_id: str,
        max_batches: int | None = None,
        out_of_time: Callable[[], bool] | None = None,
    ) -> InitResult:
        """Initialize up to ``max_batches`` batches from the saved checkpoint, stopping at
        a checkpoint once ``out_of_time()`` says so (a task's time budget)."""
        return initialization.initialize_campaign_step(self, campaign_id, max_batches, out_of_time)

    # ------------------------------------------------------------------ always-on

    def enroll_recipients(
        self,
        campaign_id: str,
        recipients: Sequence[object],
        idempotency_key: str | None = None,
    ) -> EnrollResult:
        """Add people (the recipient shape of ``create_campaign``) to a scheduled,
        running or paused campaign, each once per entry (see ``service/enrollment.py``)."""
        return enrollment.enroll_recipients(self, campaign_id, recipients, idempotency_key)

    def record_events(self, batch: Sequence[InboundEvent]) -> list[EventOutcome]:
        """Record users' events (idempotent by event id) and apply them to every
        conversation that listens; one outcome per event (see ``service/events.py``)."""
        return event_batches.record_events(self, batch)

    def record_event(
        self,
        user_id: str,
        event: str,
        event_id: str,
        properties: Doc | None = None,
        timestamp: datetime | None = None,
    ) -> Doc:
        """One event (a batch of one): its result, or its error raised."""
        outcome = self.record_events(
            [InboundEvent(user_id, event, event_id, properties, timestamp)]
        )[0]
        if outcome.error is not None:
            raise outcome.error
        assert outcome.result is not None
        return outcome.result

    # ------------------------------------------------------------------ queries

    def get_pending_conversations(
        self,
        campaign_id: str,
        stage: str | None = None,
        limit: int = 100,
        status: str = "active",
    ) -> list[Doc]:
        """Due active conversations, oldest first; for a finished status, the
        conversations in it, most recently finished first."""
        return queries.get_pending_conversations(self, campaign_id, stage, limit, status)

    def list_campaigns(self, status: str | None = None, limit: int = 50) -> list[Doc]:
        """Campaigns newest first, optionally only those in ``status``."""
        return queries.list_campaigns(self, status, limit)

    def get_conversation_history(self, conversation_id: str) -> list[Doc]:
        state = self.load(conversation_id)
        return [message.model_dump(mode="python") for message in state.message_history]

    def get_conversation(self, conversation_id: str) -> Doc:
        return self.load(conversation_id).to_mongo()

    def get_campaign_metrics(self, campaign_id: str) -> Doc:
        """The seed's Campaign Metrics Document (avg durations and response rate derived)."""
        return queries.get_campaign_metrics(self, campaign_id)

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
        _, type_template = self.type_template(state)
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
            self.load(conversation_id)
            if conversation_state is None
            else parse_document(ConversationState, conversation_state, what="conversation")
        )
        template, type_template = self.type_template(state)
        decision = evaluate(state, template, type_template, self.clock.now())
        return decision.action == Action.ADVANCE, decision.next_stage or "", decision.as_dict()

    def advance_conversation_stage(self, conversation_id: str, next_stage: str) -> Doc:
        """Move to ``next_stage``; to the current or an earlier stage is a no-op."""
        return conversations.advance_conversation_stage(self, conversation_id, next_stage)

    def mark_conversation_complete(self, conversation_id: str) -> Doc:
        """Complete the conversation now; a finished one is returned unchanged."""
        return conversations.mark_conversation_complete(self, conversation_id)

    def update_conversation_state(self, conversation_id: str, updates: Doc) -> Doc:
        """Update ``context`` (merged), ``next_action_at`` or ``status_reason``."""
        return conversations.update_conversation_state(self, conversation_id, updates)

    def process_conversation(self, conversation_id: str) -> Doc:
        """Evaluate one conversation now and apply what is due; returns the new state."""
        return conversations.process_conversation(self, conversation_id)

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
        return conversations.record_inbound_message(
            self, campaign_id, user_id, message_id, content, timestamp, metadata
        )

    def record_inbound_messages(self, batch: Sequence[InboundReply]) -> list[ReplyOutcome]:
        """Record a batch of replies in a handful of round trips; one outcome (result or
        error) per reply, in order. See ``service/replies.py``."""
        return replies.record_inbound_messages(self, batch)

    def process_due_conversations(
        self,
        campaign_id: str,
        stage: str | None = None,
        limit: int | None = None,
        owner: str | None = None,
        on_claimed: Callable[[int, int], None] | None = None,
        *,
        partition: int | None = None,
        partitions: int | None = None,
        registration: str | None = None,
        on_more: Callable[[list[Dispatch]], None] | None = None,
    ) -> BatchResult:
        """Read a batch of due conversations (of partition range ``partition`` of
        ``partitions``; both None: all) in one query, progress each, write in bulk (for a
        cancelled campaign: settle its active conversations). See
        ``processing.process_due_conversations`` for the rest."""
        return processing.process_due_conversations(
            self,
            campaign_id,
            stage,
            limit,
            owner,
            on_claimed,
            span=PartitionRange.of(partition, partitions),
            registration=registration,
            on_more=on_more,
        )

    # ------------------------------------------------------------------ reconcile

    def campaigns_to_reconcile(self, recent: timedelta = timedelta(days=1)) -> list[str]:
        """Running and paused campaigns, and those completed or cancelled within ``recent``."""
        return reconcile.campaigns_to_reconcile(self, recent)

    def reconcile_campaign_metrics(self, campaign_id: str) -> dict[str, float]:
        """Recompute the metrics document from the conversations; correct any drift."""
        return reconcile.reconcile_campaign_metrics(self, campaign_id)

    # ------------------------------------------------------------------ invariants

    def check_invariants(self, campaign_id: str, *, quiet: bool = True) -> InvariantReport:
        """Check what must hold whatever crashed or ran twice: one conversation per
        recipient, metrics equal to a recount, consistent timelines, every recorded
        message once in its history and in the outbox, no reply recorded twice; with
        ``quiet``, also no lease past its expiry and a campaign over when it should be.
        See ``service/invariants.py``."""
        return invariants.check_invariants(self, campaign_id, quiet=quiet)

    # ------------------------------------------------------------------ polling

    def poll_campaigns(self, owner: str | None = None, claim_limit: int = 10) -> PollResult:
        """One poller pass (see ``service.polling``)."""
        return polling.poll_campaigns(self, owner, claim_limit)

    def dispatch_processing(self, campaign_id: str, count: int = 1) -> list[Dispatch]:
        """Register ``count`` processing tasks over partition ranges; enqueue them under
        their tokens as task ids (see ``service.polling.dispatch``)."""
        return polling.dispatch(self, campaign_id, count)


__all__ = [
    "BatchResult",
    "CampaignManager",
    "EnrollResult",
    "InitResult",
    "InvariantReport",
    "MigrationResult",
    "PollResult",
    "campaign_id_for_key",
    "evaluate_rule",
]
