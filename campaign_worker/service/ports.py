"""Ports: what the service layer needs from the outside, as Protocols."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from campaign_worker.domain.campaign_documents import Campaign, CampaignStatus, StoredCampaign
from campaign_worker.domain.documents import ConversationState
from campaign_worker.domain.partitions import PartitionRange
from campaign_worker.domain.progression import MetricsDelta, OutboundEnvelope
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
    """Where templates come from (ConfigManager reads files)."""

    def get_template(self, template_id: str) -> Template: ...
    def template_ids(self) -> list[str]: ...
    def get_campaign_type(self, template_id: str, campaign_type: str) -> CampaignTypeTemplate: ...


class TemplateVersionRepository(Protocol):
    """Stored template versions (``domain.versions``)."""

    def initialize(self) -> None: ...
    def register(self, template: Template, now: datetime, source: str = "") -> TemplateVersion: ...
    def get(self, template_id: str, version: int) -> TemplateVersion | None: ...
    def list(self, template_id: str) -> list[TemplateVersion]: ...


class ConversationStateRepository(Protocol):
    def initialize(self) -> None: ...
    def create_conversation_state(self, data: dict[str, Any]) -> dict[str, Any]: ...
    def get_conversation_state(self, id: str) -> dict[str, Any] | None: ...
    def update_conversation_state(
        self, id: str, updates: dict[str, Any]
    ) -> dict[str, Any] | None: ...
    def delete_conversation_state(self, id: str) -> bool: ...
    def find_conversation_states(
        self, query: dict[str, Any], *, limit: int = 0, sort: list[tuple[str, int]] | None = None
    ) -> list[dict[str, Any]]: ...
    def insert_many_states(self, docs: Sequence[dict[str, Any]]) -> int: ...
    def find_due(
        self, campaign_id: str, now: datetime, *, stage: str | None, status: str, limit: int
    ) -> list[dict[str, Any]]: ...
    def read_due(
        self,
        campaign_id: str,
        now: datetime,
        *,
        stage: str | None = None,
        limit: int,
        span: PartitionRange = ...,
        settling: bool = False,
    ) -> list[dict[str, Any]]: ...
    def save_transitions(
        self, changes: Sequence[tuple[ConversationState, ConversationState]]
    ) -> set[str]: ...
    def write_transitions(
        self,
        changes: Sequence[tuple[ConversationState, ConversationState]],
        now: datetime | None = None,
    ) -> WriteOutcome: ...
    def fail_conversation(self, conversation_id: str, reason: str, now: datetime) -> bool: ...
    def mark_published(self, items: Sequence[tuple[str, str, Sequence[str]]]) -> int: ...
    def find_unpublished(self, before: datetime, limit: int) -> list[dict[str, Any]]: ...
    def get_by_user(self, campaign_id: str, user_id: str) -> ConversationState | None: ...
    def find_by_users(self, pairs: Sequence[tuple[str, str]]) -> list[dict[str, Any]]: ...
    def get_many(self, ids: Sequence[str]) -> list[dict[str, Any]]: ...
    def has_due(self, campaign_id: str, now: datetime) -> bool: ...
    def count_due(
        self,
        campaign_id: str,
        now: datetime,
        *,
        settling: bool,
        limit: int,
        span: PartitionRange = ...,
    ) -> int: ...
    def count_conversations(self, campaign_id: str) -> int: ...
    def count_active(self, campaign_id: str) -> int: ...
    def page_active(
        self, campaign_id: str, after: str | None, limit: int
    ) -> list[dict[str, Any]]: ...
    def oldest_due(self, now: datetime, campaign_ids: Sequence[str]) -> datetime | None: ...
    def aggregate_campaign(self, campaign_id: str) -> dict[str, Any]: ...


class CampaignRepository(Protocol):
    def initialize(self) -> None: ...
    def insert(self, campaign: Campaign) -> bool: ...
    def get(self, campaign_id: str, *, with_recipients: bool = False) -> StoredCampaign | None: ...
    def transition(
        self,
        campaign_id: str,
        allowed_from: Iterable[CampaignStatus],
        to: CampaignStatus,
        now: datetime,
        extra: dict[str, Any] | None = None,
    ) -> StoredCampaign | None: ...
    def claim_for_initialization(
        self, now: datetime, owner: str, lease_until: datetime, limit: int
    ) -> list[StoredCampaign]: ...
    def find_by_status(self, statuses: Iterable[CampaignStatus]) -> list[StoredCampaign]: ...
    def list_recent(self, status: CampaignStatus | None, limit: int) -> list[StoredCampaign]: ...
    def iter_recipients(
        self,
        campaign: StoredCampaign,
        batch_size: int,
        position: dict[str, Any] | None = None,
        read_ahead: int = 1,
    ) -> Iterator[tuple[list[dict[str, Any]], dict[str, Any]]]: ...
    def has_recipients(self, campaign: Campaign) -> bool: ...
    def mark_settled(self, campaign_id: str, now: datetime) -> bool: ...
    def save_init_progress(
        self, campaign_id: str, progress: dict[str, Any], lease_until: datetime, now: datetime
    ) -> bool: ...
    def begin_migration(
        self, campaign_id: str, record: dict[str, Any], now: datetime
    ) -> StoredCampaign: ...
    def count_migration(
        self, campaign_id: str, migration_id: str, counts: dict[str, dict[str, int]]
    ) -> bool: ...
    def finish_migration(
        self,
        campaign_id: str,
        migration_id: str,
        revision: int,
        pin: dict[str, Any],
        record: dict[str, Any],
        now: datetime,
    ) -> bool: ...


class CampaignMetricsRepository(Protocol):
    def initialize(self) -> None: ...
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
    def get(self, campaign_id: str) -> dict[str, Any] | None: ...
    def correct(
        self,
        campaign_id: str,
        drift: dict[str, float],
        seen_revision: int,
        now: datetime,
        drop: Sequence[str] = (),
    ) -> bool: ...


class OutboxRepository(Protocol):
    def initialize(self) -> None: ...
    def enqueue_many(self, envelopes: Sequence[OutboundEnvelope]) -> int: ...


class InvariantReads(Protocol):
    """The invariant checker's reads: streamed in batches with projections, so a campaign
    of millions of conversations is checked in one pass in bounded memory."""

    def conversations(self, campaign_id: str, batch_size: int) -> Iterator[list[dict[str, Any]]]:
        """The campaign's conversations, projected to what the checks read."""
        ...

    def conversations_by_id(self, ids: Sequence[str]) -> list[dict[str, Any]]:
        """The same projection for these conversation ids (a re-read)."""
        ...

    def conversations_of_users(
        self, campaign_id: str, user_ids: Sequence[str]
    ) -> list[tuple[str, str]]:
        """(conversation id, user id) of every conversation of these users."""
        ...

    def outbox_rows(self, conversation_ids: Sequence[str]) -> list[dict[str, Any]]:
        """Outbox rows of these conversations (no content)."""
        ...

    def count_outbox(self, campaign_id: str) -> int: ...


class SuppressionRepository(Protocol):
    """The suppression list (``domain.suppressions``), shared with the delivering service."""

    def initialize(self) -> None: ...
    def add_many(self, entries: Sequence[Suppression]) -> int: ...
    def matching(self, keys: Sequence[str]) -> dict[str, dict[str, Any]]: ...
    def list(
        self, *, user_id: str | None = None, channel: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]: ...
    def lift(self, key: str) -> dict[str, Any] | None: ...


@dataclass(frozen=True)
class SendRequest:
    """One message that wants a frequency-cap slot."""

    channel: str
    user_id: str
    message_id: str


class SendBudgetRepository(Protocol):
    """Frequency-cap slots across campaigns, taken atomically."""

    def initialize(self) -> None: ...
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
