"""Ports: what the service layer needs from the outside, as Protocols."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from campaign_worker.domain.audited import AuditedConversation, AuditedRow
from campaign_worker.domain.campaign_documents import (
    AudiencePosition,
    AudienceRow,
    Campaign,
    CampaignStatus,
    InitCheckpoint,
    MigrationRecord,
    StoredCampaign,
)
from campaign_worker.domain.documents import ConversationState, StoredState
from campaign_worker.domain.effects import MetricsDelta, OutboundEnvelope
from campaign_worker.domain.enrollment import EnrollmentContext, EventFact
from campaign_worker.domain.metrics_documents import StoredMetrics
from campaign_worker.domain.partitions import PartitionRange
from campaign_worker.domain.suppressions import FrequencyCap, Suppression
from campaign_worker.domain.templates import CampaignTypeTemplate, Template
from campaign_worker.domain.versions import TemplateVersion


@dataclass
class WriteOutcome:
    """What a batch of compare-and-set writes did: ids that applied (with their write
    token), ids the store refused with an error (with the reason); the rest lost a race."""

    applied: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)


class Clock(Protocol):
    def now(self) -> datetime: ...


class TemplateSource(Protocol):
    """Where templates come from (TemplateFiles, the seed's ConfigManager, reads files)."""

    def get_template(self, template_id: str) -> Template: ...
    def template_ids(self) -> list[str]: ...
    def get_campaign_type(self, template_id: str, campaign_type: str) -> CampaignTypeTemplate: ...


class TemplateVersionRepository(Protocol):
    """Stored template versions (``domain.versions``)."""

    def register(self, template: Template, now: datetime, source: str = "") -> TemplateVersion: ...
    def get(self, template_id: str, version: int) -> TemplateVersion | None: ...
    def list(self, template_id: str) -> list[TemplateVersion]: ...


class ConversationStateRepository(Protocol):
    """The conversations (the seed's ``ConversationStateRepository``), as the flows use
    them. Reads return ``StoredState``: a document that no longer validates comes back as
    ``Unreadable`` beside the others, to be failed or refused alone."""

    def get_state(self, conversation_id: str) -> StoredState | None: ...
    def insert_states(self, states: Sequence[ConversationState]) -> int:
        """Insert new conversations; one that exists (same id, or same campaign and user)
        is skipped. Returns how many were inserted."""
        ...

    def insert_new(self, states: Sequence[ConversationState]) -> set[str]:
        """Insert new conversations as ``insert_states`` does; returns the ids inserted
        (the others existed: same id, or same campaign, user and enrollment)."""
        ...

    def find_listening(self, user_ids: Sequence[str], since: datetime) -> list[StoredState]:
        """The conversations of these users that may take an event: active ones, and
        finished ones whose goal window is open at ``since`` (``goal_until``)."""
        ...

    def find_due(
        self, campaign_id: str, now: datetime, *, stage: str | None, status: str, limit: int
    ) -> list[StoredState]:
        """Active: due (``next_action_at <= now``), oldest due first. A finished status:
        the conversations in it, most recently finished first."""
        ...

    def read_due(
        self,
        campaign_id: str,
        now: datetime,
        *,
        stage: str | None = None,
        limit: int,
        span: PartitionRange = ...,
        settling: bool = False,
    ) -> list[StoredState]:
        """Up to ``limit`` due active conversations of ``span``, oldest due first;
        ``settling``: every active one, due or not."""
        ...

    def write_transitions(
        self,
        changes: Sequence[tuple[ConversationState, ConversationState]],
        now: datetime | None = None,
    ) -> WriteOutcome:
        """Each (old, new) as a compare-and-set on ``old.version``: applied (with the
        write's token), refused by the store (with the reason), or lost to a writer."""
        ...

    def fail_conversation(self, conversation_id: str, reason: str, now: datetime) -> bool:
        """End it as failed without reading it; False if it was not active."""
        ...

    def mark_published(self, items: Sequence[tuple[str, str, Sequence[str]]]) -> int:
        """(conversation id, publish token, message ids): clear those ids from
        ``unpublished`` while the token is the stored one."""
        ...

    def find_unpublished(self, before: datetime, limit: int) -> list[StoredState]: ...
    def find_by_users(self, pairs: Sequence[tuple[str, str]]) -> list[StoredState]:
        """The conversations of these (campaign id, user id) pairs."""
        ...

    def get_many(self, ids: Sequence[str]) -> list[StoredState]: ...
    def count_due(
        self,
        campaign_id: str,
        now: datetime,
        *,
        settling: bool,
        limit: int,
        span: PartitionRange = ...,
    ) -> int:
        """How many are due (``settling``: active) in ``span``, counted up to ``limit``."""
        ...

    def count_conversations(self, campaign_id: str) -> int: ...
    def count_active(self, campaign_id: str) -> int: ...
    def page_active(self, campaign_id: str, after: str | None, limit: int) -> list[StoredState]:
        """Active conversations by id, those after ``after``."""
        ...

    def oldest_due(self, now: datetime, campaign_ids: Sequence[str]) -> datetime | None: ...
    def recount(self, campaign_id: str) -> dict[str, float]:
        """The metrics-document counters (field paths, zeros left out) recomputed from
        the campaign's conversations."""
        ...


class CampaignRepository(Protocol):
    """Campaigns (collection ``campaigns``): conditional status moves, the poller's
    claim, the audience, the initialization checkpoint and migrations."""

    def insert(self, campaign: Campaign) -> bool:
        """Store a new campaign; False if one with its id exists (a replay)."""
        ...

    def get(self, campaign_id: str, *, with_recipients: bool = False) -> StoredCampaign | None: ...
    def transition(
        self,
        campaign_id: str,
        allowed_from: Iterable[CampaignStatus],
        to: CampaignStatus,
        now: datetime,
    ) -> StoredCampaign | None:
        """Move to ``to`` if the status is one of ``allowed_from``; else None."""
        ...

    def finish_initialization(
        self,
        campaign_id: str,
        allowed_from: Iterable[CampaignStatus],
        now: datetime,
        total_recipients: int,
        checkpoint: InitCheckpoint,
    ) -> StoredCampaign | None:
        """Running, with its total and last checkpoint, in one conditional update."""
        ...

    def claim_for_initialization(
        self, now: datetime, owner: str, lease_until: datetime, limit: int
    ) -> list[StoredCampaign]:
        """Scheduled campaigns due to start, and initializations whose lease expired:
        each leased to ``owner``, one winner per campaign."""
        ...

    def find_by_status(self, statuses: Iterable[CampaignStatus]) -> list[StoredCampaign]:
        """Campaigns in ``statuses`` (cancelled ones until they are settled)."""
        ...

    def list_recent(self, status: CampaignStatus | None, limit: int) -> list[StoredCampaign]: ...
    def iter_recipients(
        self,
        campaign: StoredCampaign,
        batch_size: int,
        position: AudiencePosition | None = None,
        read_ahead: int = 1,
    ) -> Iterator[tuple[list[AudienceRow], AudiencePosition]]:
        """The audience in batches, from after ``position``, each with the position
        after it; rows that fail validation come as ``InvalidRow``."""
        ...

    def has_recipients(self, campaign: Campaign) -> bool: ...
    def with_entry_events(self, events: Sequence[str]) -> list[StoredCampaign]:
        """Campaigns that enroll people on one of these events (``entry_event``) and may
        still take them: scheduled, initializing, running or paused."""
        ...

    def mark_settled(self, campaign_id: str, now: datetime) -> bool: ...
    def save_init_progress(
        self, campaign_id: str, checkpoint: InitCheckpoint, lease_until: datetime, now: datetime
    ) -> bool:
        """Checkpoint and extend the lease; False once it left ``initializing``."""
        ...

    def begin_migration(
        self, campaign_id: str, record: MigrationRecord, now: datetime
    ) -> StoredCampaign:
        """Set ``migrating`` unless one is being applied; the campaign either way."""
        ...

    def count_migration(
        self, campaign_id: str, migration_id: str, counts: dict[str, dict[str, int]]
    ) -> bool: ...
    def finish_migration(
        self, campaign_id: str, record: MigrationRecord, version: TemplateVersion, now: datetime
    ) -> bool:
        """Record the migration and pin ``version``, if ``record`` is still the one
        being applied, at its revision."""
        ...


class CampaignMetricsRepository(Protocol):
    def ensure(self, campaign_id: str, now: datetime) -> None: ...
    def begin(self, campaign_id: str, token: str, now: datetime) -> None: ...
    def register(self, campaign_id: str, tokens: Sequence[str], now: datetime) -> None: ...
    def apply_delta(
        self,
        campaign_id: str,
        delta: MetricsDelta,
        now: datetime,
        *,
        token: str | None = None,
        register: Sequence[str] = (),
    ) -> None: ...
    def get(self, campaign_id: str) -> StoredMetrics | None: ...
    def correct(
        self,
        campaign_id: str,
        drift: dict[str, float],
        seen_revision: int,
        now: datetime,
        drop: Sequence[str] = (),
    ) -> bool: ...


class EventRepository(Protocol):
    """Users' events (collection ``events``, ``_id`` = event id): recorded once each."""

    def record(self, events: Sequence[EventFact]) -> set[str]:
        """Store the events; returns the ids that were new (the others were recorded)."""
        ...

    def get_many(self, event_ids: Sequence[str]) -> dict[str, EventFact]: ...
    def recent_of_users(self, user_ids: Sequence[str], since: datetime) -> list[EventFact]:
        """Events of these users that happened at ``since`` or later, oldest first."""
        ...


class EnrollmentReads(Protocol):
    def context(
        self, campaign_id: str, user_ids: Sequence[str], suppression_keys: Sequence[str]
    ) -> EnrollmentContext | None:
        """None if there is no such campaign."""
        ...


class OutboxRepository(Protocol):
    def enqueue_many(self, envelopes: Sequence[OutboundEnvelope]) -> int: ...


class InvariantReads(Protocol):
    """The invariant checker's reads: streamed in batches with projections, so a campaign
    of millions of conversations is checked in one pass in bounded memory."""

    def conversations(
        self, campaign_id: str, batch_size: int
    ) -> Iterator[list[AuditedConversation]]:
        """The campaign's conversations, projected to what the checks read."""
        ...

    def conversations_by_id(self, ids: Sequence[str]) -> list[AuditedConversation]:
        """The same projection for these conversation ids (a re-read)."""
        ...

    def conversations_of_users(
        self, campaign_id: str, user_ids: Sequence[str]
    ) -> list[tuple[str, str]]:
        """(conversation id, user id) of every conversation of these users."""
        ...

    def outbox_rows(self, conversation_ids: Sequence[str]) -> list[AuditedRow]:
        """Outbox rows of these conversations (no content)."""
        ...

    def count_outbox(self, campaign_id: str) -> int: ...


class SuppressionRepository(Protocol):
    """The suppression list (``domain.suppressions``), shared with the delivering service."""

    def add_many(self, entries: Sequence[Suppression]) -> int:
        """Add entries (one listed already keeps its first reason); returns how many
        are new."""
        ...

    def matching(self, keys: Sequence[str]) -> dict[str, Suppression]:
        """The entries among ``keys`` (suppression ids), by id."""
        ...

    def list(
        self, *, user_id: str | None = None, channel: str | None = None, limit: int = 100
    ) -> list[Suppression]:
        """Entries, oldest first, optionally of one user or one channel."""
        ...

    def lift(self, key: str) -> Suppression | None:
        """Remove one entry; returns it, or None if it was not listed."""
        ...


@dataclass(frozen=True)
class SendRequest:
    """One message that wants a frequency-cap slot."""

    channel: str
    user_id: str
    message_id: str


class SendBudgetRepository(Protocol):
    """Frequency-cap slots across campaigns, taken atomically."""

    def reserve(
        self, requests: Sequence[SendRequest], caps: dict[str, FrequencyCap], now: datetime
    ) -> dict[str, datetime]: ...


class MetricsRecorder(Protocol):
    """Operational counters (Prometheus in production, nothing in unit tests)."""

    def conversations_initialized(self, campaign_type: str, count: int) -> None: ...
    def stage_transition(self, campaign_type: str, from_stage: str, to_stage: str) -> None: ...
    def conversation_finished(self, campaign_type: str, outcome: str) -> None: ...
    def messages_sent(self, channel: str, count: int) -> None: ...
    def messages_received(self, channel: str, count: int) -> None: ...
    def batch_size(self, operation: str, size: int) -> None: ...
    def poller_lag(self, seconds: float) -> None: ...
    def messages_deferred(self, channel: str, count: int) -> None: ...
    def suppressed(self, campaign_type: str, count: int) -> None: ...
    def reviews(self, campaign_type: str, event: str, count: int) -> None: ...


class NullRecorder:
    def conversations_initialized(self, campaign_type: str, count: int) -> None:
        return None

    def stage_transition(self, campaign_type: str, from_stage: str, to_stage: str) -> None:
        return None

    def conversation_finished(self, campaign_type: str, outcome: str) -> None:
        return None

    def messages_sent(self, channel: str, count: int) -> None:
        return None

    def messages_received(self, channel: str, count: int) -> None:
        return None

    def batch_size(self, operation: str, size: int) -> None:
        return None

    def poller_lag(self, seconds: float) -> None:
        return None

    def messages_deferred(self, channel: str, count: int) -> None:
        return None

    def suppressed(self, campaign_type: str, count: int) -> None:
        return None

    def reviews(self, campaign_type: str, event: str, count: int) -> None:
        return None
