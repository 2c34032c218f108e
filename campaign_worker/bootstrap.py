"""The composition root: builds a CampaignManager from settings with real adapters."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from pymongo import MongoClient
from pymongo.database import Database

from campaign_worker.adapters.clock import OffsetClock, SystemClock
from campaign_worker.adapters.memory_campaigns import (
    MemoryCampaignMetricsRepository,
    MemoryCampaignRepository,
)
from campaign_worker.adapters.memory_conversations import MemoryConversationStateRepository
from campaign_worker.adapters.memory_events import MemoryEnrollmentReads, MemoryEventRepository
from campaign_worker.adapters.memory_records import (
    MemoryInvariantReads,
    MemoryOutboxRepository,
    MemorySendBudgetRepository,
    MemorySuppressionRepository,
    MemoryTemplateVersionRepository,
)
from campaign_worker.adapters.memory_reviews import MemoryReplyReviewRepository
from campaign_worker.adapters.memory_store import MemoryDatabase
from campaign_worker.adapters.mongo import MongoClientProvider
from campaign_worker.adapters.mongo_campaigns import MongoCampaignRepository
from campaign_worker.adapters.mongo_conversations import MongoConversationStateRepository
from campaign_worker.adapters.mongo_dead_letters import MongoDeadLetterRepository
from campaign_worker.adapters.mongo_events import MongoEnrollmentReads, MongoEventRepository
from campaign_worker.adapters.mongo_invariants import MongoInvariantReads
from campaign_worker.adapters.mongo_metrics import MongoCampaignMetricsRepository
from campaign_worker.adapters.mongo_outbox import MongoOutboxRepository
from campaign_worker.adapters.mongo_reviews import MongoReplyReviewRepository
from campaign_worker.adapters.mongo_send_budget import MongoSendBudgetRepository
from campaign_worker.adapters.mongo_suppressions import MongoSuppressionRepository
from campaign_worker.adapters.mongo_task_claims import MongoTaskClaims
from campaign_worker.adapters.mongo_template_versions import MongoTemplateVersionRepository
from campaign_worker.adapters.template_files import TemplateFiles
from campaign_worker.delivery_wiring import ensure_delivery_indexes
from campaign_worker.service.campaign_manager import CampaignManager
from campaign_worker.service.ports import (
    CampaignMetricsRepository,
    CampaignRepository,
    Clock,
    ConversationStateRepository,
    EnrollmentReads,
    EventRepository,
    InvariantReads,
    MetricsRecorder,
    OutboxRepository,
    SendBudgetRepository,
    SuppressionRepository,
    TemplateVersionRepository,
)
from campaign_worker.service.review_ports import ReplyReviewRepository
from campaign_worker.service.send_guard import SendGuard
from campaign_worker.service.understanding import ReplyUnderstanding
from campaign_worker.settings import Settings, get_settings


@dataclass
class Container:
    """Everything one process needs, built once."""

    settings: Settings
    mongo: MongoClientProvider
    manager: CampaignManager

    @property
    def db(self) -> Database[dict[str, Any]]:
        return self.mongo.database

    @property
    def dead_letters(self) -> MongoDeadLetterRepository:
        return MongoDeadLetterRepository(self.db)

    @property
    def task_claims(self) -> MongoTaskClaims:
        return MongoTaskClaims(self.db)

    def close(self) -> None:
        self.mongo.close()


@dataclass(frozen=True)
class Repositories:
    """The store-facing adapters of one database: MongoDB's, or the in-memory ones."""

    conversations: ConversationStateRepository
    campaigns: CampaignRepository
    metrics: CampaignMetricsRepository
    outbox: OutboxRepository
    suppressions: SuppressionRepository
    send_budget: SendBudgetRepository
    template_versions: TemplateVersionRepository
    invariant_reads: InvariantReads
    events: EventRepository
    enrollment_reads: EnrollmentReads
    reviews: ReplyReviewRepository


def repositories(db: Database[dict[str, Any]] | MemoryDatabase) -> Repositories:
    """MongoDB adapters over ``db``; over a ``MemoryDatabase``, the in-memory ones (unit
    tests and dry runs: the same behaviour, proven by ``tests/contract``)."""
    if isinstance(db, MemoryDatabase):
        return Repositories(
            MemoryConversationStateRepository(db),
            MemoryCampaignRepository(db),
            MemoryCampaignMetricsRepository(db),
            MemoryOutboxRepository(db),
            MemorySuppressionRepository(db),
            MemorySendBudgetRepository(db),
            MemoryTemplateVersionRepository(db),
            MemoryInvariantReads(db),
            MemoryEventRepository(db),
            MemoryEnrollmentReads(db),
            MemoryReplyReviewRepository(db),
        )
    return Repositories(
        MongoConversationStateRepository(db),
        MongoCampaignRepository(db),
        MongoCampaignMetricsRepository(db),
        MongoOutboxRepository(db),
        MongoSuppressionRepository(db),
        MongoSendBudgetRepository(db),
        MongoTemplateVersionRepository(db),
        MongoInvariantReads(db),
        MongoEventRepository(db),
        MongoEnrollmentReads(db),
        MongoReplyReviewRepository(db),
    )


def build_manager(
    db: Database[dict[str, Any]] | MemoryDatabase,
    settings: Settings,
    *,
    clock: Clock | None = None,
    recorder: MetricsRecorder | None = None,
    config_manager: TemplateFiles | None = None,
    understanding: ReplyUnderstanding | None = None,
) -> CampaignManager:
    """The manager over ``db`` (see ``repositories``), configured from ``settings``; the
    reply understanding is this process's (``shared_understanding``) unless given."""
    repos = repositories(db)
    return CampaignManager(
        repos.conversations,
        config_manager or TemplateFiles(settings.campaign_templates_dir),
        recorder,
        campaign_repository=repos.campaigns,
        metrics_repository=repos.metrics,
        outbox_repository=repos.outbox,
        clock=clock or _clock(settings),
        init_batch_size=settings.init_batch_size,
        process_batch_size=settings.process_batch_size,
        process_fanout=settings.process_fanout,
        lease_seconds=settings.lease_seconds,
        inflight_timeout_seconds=settings.metrics_inflight_timeout_seconds,
        send_guard=SendGuard(
            repos.suppressions,
            repos.send_budget,
            caps=settings.caps,
            address_attributes=settings.address_attributes,
        ),
        template_versions=repos.template_versions,
        invariant_reads=repos.invariant_reads,
        event_repository=repos.events,
        enrollment_reads=repos.enrollment_reads,
        understanding=understanding or shared_understanding(settings),
        reviews=repos.reviews,
    )


def _clock(settings: Settings) -> Clock:
    if settings.clock_speed != 1.0:
        return OffsetClock(speed=settings.clock_speed, epoch=settings.clock_epoch)
    return SystemClock()


@runtime_checkable
class Indexed(Protocol):
    """An adapter whose collection has indexes to create (the in-memory ones have none)."""

    def initialize(self) -> None: ...


def build_understanding(settings: Settings | None = None) -> ReplyUnderstanding:
    """The reply understanding engine (the shipped model, or ``INTENT_MODEL_DIR``'s).
    Cheap to build: models load on first use or ``warm_up()``."""
    from campaign_worker.adapters.understanding import NgramReplyUnderstanding

    settings = settings or get_settings()
    return NgramReplyUnderstanding(model_dir=settings.intent_model_dir)


_understandings: dict[Path | None, ReplyUnderstanding] = {}
_understandings_lock = threading.Lock()


def shared_understanding(settings: Settings) -> ReplyUnderstanding:
    """One engine per model directory in this process (thread-safe, immutable once
    loaded): every manager of the process shares its model and language detector."""
    with _understandings_lock:
        found = _understandings.get(settings.intent_model_dir)
        if found is None:
            found = _understandings[settings.intent_model_dir] = build_understanding(settings)
        return found


def ensure_indexes(manager: CampaignManager) -> None:
    """Create every collection's indexes (idempotent; run at process start)."""
    guard = manager.send_guard
    for repository in (
        manager.conversation_state_repository,
        manager.campaigns,
        manager.campaign_metrics,
        manager.outbox,
        None if manager.versions is None else manager.versions.repository,
        manager.reviews,
        guard.suppressions,
        guard.budget,
        manager.events,
    ):
        if isinstance(repository, Indexed):
            repository.initialize()


def bootstrap(
    settings: Settings | None = None,
    *,
    clock: Clock | None = None,
    recorder: MetricsRecorder | None = None,
    client_factory: Callable[[], MongoClient[dict[str, Any]]] | None = None,
    event_listeners: Sequence[Any] = (),
    create_indexes: bool = True,
) -> Container:
    """Wire real adapters from settings. Call once per process (after fork)."""
    settings = settings or get_settings()
    provider = MongoClientProvider(settings, client_factory, event_listeners)
    manager = build_manager(provider.database, settings, clock=clock, recorder=recorder)
    if create_indexes:
        ensure_indexes(manager)
        ensure_delivery_indexes(provider.database)
    return Container(settings=settings, mongo=provider, manager=manager)
