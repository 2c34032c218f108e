"""What every service flow works with: the ports, the clock and the sizes.

``CampaignManager`` (the seed's facade) is a ``Services``; the flow modules
(``campaigns``, ``initialization``, ``processing``, ``conversations``, ``polling``,
``reconcile``, ``queries``) are functions over it, as cosmicpython's handlers are over a
unit of work.
"""

from __future__ import annotations

from datetime import timedelta

from campaign_worker.domain.aliases import Doc
from campaign_worker.domain.campaign_documents import StoredCampaign
from campaign_worker.domain.documents import ConversationState, Unreadable
from campaign_worker.domain.effects import Effects
from campaign_worker.domain.errors import (
    CampaignNotFoundError,
    ConfigurationError,
    ConversationNotFoundError,
)
from campaign_worker.service.metrics_ledger import MetricsLedger
from campaign_worker.service.outbound import Publisher
from campaign_worker.service.ports import (
    CampaignMetricsRepository,
    CampaignRepository,
    Clock,
    ConversationStateRepository,
    EnrollmentReads,
    EventRepository,
    InvariantReads,
    MetricsRecorder,
    NullRecorder,
    OutboxRepository,
    TemplateSource,
    TemplateVersionRepository,
)
from campaign_worker.service.review_ports import ReplyReviewRepository
from campaign_worker.service.send_guard import SendGuard
from campaign_worker.service.template_versions import (
    CampaignTemplates,
    Pair,
    TemplateVersions,
    type_of,
)
from campaign_worker.service.understanding import ReplyUnderstanding


class Services:
    """The collaborators of every flow (the seed's constructor arguments and more)."""

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
        init_batch_size: int = 2000,
        process_batch_size: int = 1000,
        process_fanout: int = 8,
        lease_seconds: int = 120,
        inflight_timeout_seconds: int = 900,
        send_guard: SendGuard | None = None,
        template_versions: TemplateVersionRepository | None = None,
        invariant_reads: InvariantReads | None = None,
        event_repository: EventRepository | None = None,
        enrollment_reads: EnrollmentReads | None = None,
        understanding: ReplyUnderstanding,
        reviews: ReplyReviewRepository,
    ) -> None:
        self.conversation_state_repository = conversation_state_repository
        self.config_manager = config_manager
        self.metrics = metrics or NullRecorder()
        self.campaigns, self.campaign_metrics = campaign_repository, metrics_repository
        self.outbox, self.clock = outbox_repository, clock
        self.init_batch_size, self.process_batch_size = init_batch_size, process_batch_size
        # Most processing tasks one campaign runs in parallel (partition ranges); how long
        # a dispatched task (an initializer) keeps its range (its campaign) alone.
        self.process_fanout, self.lease_seconds = process_fanout, lease_seconds
        # A registered writer older than this is dead (beyond any task's time limit).
        self.inflight_timeout = timedelta(seconds=inflight_timeout_seconds)
        # Messages still unpublished this long after their write are a crash's leftovers.
        self.publish_grace = timedelta(seconds=30)
        self.publisher = Publisher(conversation_state_repository, outbox_repository)
        # Suppression list and frequency caps, asked before every send (none: no checks).
        self.send_guard = send_guard or SendGuard()
        # Stored template versions (none: every flow reads the template files, unpinned).
        self.versions = (
            None
            if template_versions is None
            else TemplateVersions(template_versions, config_manager, clock)
        )
        # Checker reads, users' events, enrollment reads (None: those flows unavailable).
        self.invariant_reads = invariant_reads
        self._events, self._enrollment_reads = event_repository, enrollment_reads
        # Replies: each understood once, as recorded; those held for a person (reviews).
        self.understanding, self.reviews = understanding, reviews

    @property
    def events(self) -> EventRepository:
        if self._events is None:
            raise ConfigurationError("this manager has no event repository (see bootstrap.py)")
        return self._events

    @property
    def enrollment_reads(self) -> EnrollmentReads:
        if self._enrollment_reads is None:
            raise ConfigurationError("this manager has no enrollment reads (see bootstrap.py)")
        return self._enrollment_reads

    def campaign(self, campaign_id: str) -> StoredCampaign:
        found = self.campaigns.get(campaign_id)
        if found is None:
            raise CampaignNotFoundError(campaign_id)
        return found

    def get_campaign(self, campaign_id: str) -> Doc:
        """The campaign document (without its inline recipients)."""
        return self.campaign(campaign_id).to_mongo()

    def load(self, conversation_id: str) -> ConversationState:
        found = self.conversation_state_repository.get_state(conversation_id)
        if found is None:
            raise ConversationNotFoundError(conversation_id)
        if isinstance(found, Unreadable):
            raise found.problem()
        return found

    def type_template(self, of: StoredCampaign | ConversationState) -> Pair:
        """The template and campaign type a campaign or a conversation runs on: its
        version (a conversation without one: its campaign's), else the file."""
        if isinstance(of, StoredCampaign):
            return self.templates_at(of.template_id, of.campaign_type, of.template_version)
        version = of.context.template_version
        if version is None and self.versions is not None:
            # Written before versions (or by the seed's create_conversation_state): its
            # campaign's pin, if it has one (one read: such documents are rare).
            campaign = self.campaigns.get(of.campaign_id)
            version = None if campaign is None else campaign.template_version
        return self.templates_at(of.context.template_id, of.campaign_type, version)

    def templates_at(self, template_id: str, campaign_type: str, version: int | None) -> Pair:
        if version is None or self.versions is None:
            template = self.config_manager.get_template(template_id)
            return template, self.config_manager.get_campaign_type(template_id, campaign_type)
        template = self.versions.template(template_id, version)
        return template, type_of(template, campaign_type, f"{template_id}@{version}")

    def campaign_templates(self, campaign: StoredCampaign) -> CampaignTemplates:
        """A campaign's pinned templates, and any other version its conversations have."""
        return CampaignTemplates(
            self.type_template(campaign),
            campaign.template_version,
            lambda version: self.templates_at(
                campaign.template_id, campaign.campaign_type, version
            ),
        )

    def ledger(self, campaign_id: str, registration: str | None = None) -> MetricsLedger:
        return MetricsLedger(self.campaign_metrics, campaign_id, self.clock, registration)

    def record_counters(self, campaign_type: str, landed: list[Effects]) -> None:
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
                    outcome = transition.outcome or ""
                    self.metrics.conversation_finished(campaign_type, outcome)
                    # The funnel counts exits too: from the stage the conversation ended in.
                    self.metrics.stage_transition(
                        campaign_type, transition.from_stage, f"exit:{outcome}"
                    )
        for channel, count in sent_by_channel.items():
            self.metrics.messages_sent(channel, count)
        held = sum(max(0, effects.delta.reviews["pending"]) for effects in landed)
        resolved = sum(effects.delta.reviews["resolved"] for effects in landed)
        for event, count in (("held", held), ("resolved", resolved)):
            if count:
                self.metrics.reviews(campaign_type, event, count)


__all__ = ["Services"]
