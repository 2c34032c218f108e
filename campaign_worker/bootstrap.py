"""The composition root: builds a CampaignManager from settings with real adapters."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pymongo import MongoClient
from pymongo.database import Database

from campaign_worker.adapters.clock import OffsetClock, SystemClock
from campaign_worker.adapters.config_manager import ConfigManager
from campaign_worker.adapters.mongo import MongoClientProvider
from campaign_worker.adapters.mongo_campaigns import MongoCampaignRepository
from campaign_worker.adapters.mongo_conversations import MongoConversationStateRepository
from campaign_worker.adapters.mongo_dead_letters import MongoDeadLetterRepository
from campaign_worker.adapters.mongo_invariants import MongoInvariantReads
from campaign_worker.adapters.mongo_metrics import MongoCampaignMetricsRepository
from campaign_worker.adapters.mongo_outbox import MongoOutboxRepository
from campaign_worker.adapters.mongo_send_budget import MongoSendBudgetRepository
from campaign_worker.adapters.mongo_suppressions import MongoSuppressionRepository
from campaign_worker.adapters.mongo_task_claims import MongoTaskClaims
from campaign_worker.adapters.mongo_template_versions import MongoTemplateVersionRepository
from campaign_worker.delivery_wiring import ensure_delivery_indexes
from campaign_worker.service.campaign_manager import CampaignManager
from campaign_worker.service.ports import Clock, MetricsRecorder
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


def build_manager(
    db: Database[dict[str, Any]],
    settings: Settings,
    *,
    clock: Clock | None = None,
    recorder: MetricsRecorder | None = None,
    config_manager: ConfigManager | None = None,
) -> CampaignManager:
    return CampaignManager(
        MongoConversationStateRepository(db),
        config_manager or ConfigManager(settings.campaign_templates_dir),
        recorder,
        campaign_repository=MongoCampaignRepository(db),
        metrics_repository=MongoCampaignMetricsRepository(db),
        outbox_repository=MongoOutboxRepository(db),
        clock=clock
        or (
            OffsetClock(speed=settings.clock_speed, epoch=settings.clock_epoch)
            if settings.clock_speed != 1.0
            else SystemClock()
        ),
        init_batch_size=settings.init_batch_size,
        process_batch_size=settings.process_batch_size,
        process_fanout=settings.process_fanout,
        lease_seconds=settings.lease_seconds,
        inflight_timeout_seconds=settings.metrics_inflight_timeout_seconds,
        send_guard=SendGuard(
            MongoSuppressionRepository(db),
            MongoSendBudgetRepository(db),
            caps=settings.caps,
            address_attributes=settings.address_attributes,
        ),
        template_versions=MongoTemplateVersionRepository(db),
        invariant_reads=MongoInvariantReads(db),
    )


def build_understanding(settings: Settings | None = None) -> ReplyUnderstanding:
    """The reply understanding engine (the shipped model, or ``INTENT_MODEL_DIR``'s).
    Cheap to build: models load on first use or ``warm_up()``."""
    from campaign_worker.adapters.understanding import NgramReplyUnderstanding

    settings = settings or get_settings()
    return NgramReplyUnderstanding(model_dir=settings.intent_model_dir)


def ensure_indexes(manager: CampaignManager) -> None:
    """Create every collection's indexes (idempotent; run at process start)."""
    manager.conversation_state_repository.initialize()
    manager.campaigns.initialize()
    manager.campaign_metrics.initialize()
    manager.outbox.initialize()
    if manager.versions is not None:
        manager.versions.repository.initialize()
    guard = manager.send_guard
    if guard.suppressions is not None:
        guard.suppressions.initialize()
    if guard.budget is not None:
        guard.budget.initialize()


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
