"""Delivery's part of the composition root: channels, limiter, dispatcher and status
recorder from settings, over one process's database and CampaignManager."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pymongo.database import Database

from campaign_worker.adapters.channel_smtp import SmtpChannel
from campaign_worker.adapters.channel_webhook import WebhookChannel
from campaign_worker.adapters.clock import SystemClock
from campaign_worker.adapters.memory_delivery import MemoryDeliveryRows, MemoryDeliveryStatuses
from campaign_worker.adapters.memory_records import MemorySuppressionRepository
from campaign_worker.adapters.memory_store import MemoryDatabase
from campaign_worker.adapters.mongo_delivery import MongoDeliveryRows, MongoDeliveryStatuses
from campaign_worker.adapters.mongo_delivery_suppressions import (
    ListedSuppressions,
    MongoDeliverySuppressions,
)
from campaign_worker.adapters.rate_limit import NoRateLimit, RedisRateLimiter
from campaign_worker.service.campaign_manager import CampaignManager
from campaign_worker.service.delivery import Dispatcher, DispatchPolicy
from campaign_worker.service.delivery_ports import (
    Channel,
    DeliveryRows,
    DeliveryStatuses,
    RateLimiter,
    Suppressions,
)
from campaign_worker.service.delivery_status import StatusRecorder
from campaign_worker.service.ports import Clock
from campaign_worker.settings import Settings


@dataclass
class Delivery:
    dispatcher: Dispatcher
    statuses: StatusRecorder

    def close(self) -> None:
        for channel in self.dispatcher.channels.values():
            close = getattr(channel, "close", None)
            if close is not None:
                close()


def build_channels(settings: Settings) -> list[Channel]:
    """The channels this worker sends itself: those whose settings are given."""
    channels: list[Channel] = []
    if settings.webhook_url and settings.webhook_secret is not None:
        channels.append(
            WebhookChannel(
                settings.webhook_url,
                settings.webhook_secret.get_secret_value().encode(),
                connect_timeout=settings.webhook_connect_timeout_seconds,
                read_timeout=settings.webhook_read_timeout_seconds,
                max_in_flight=settings.webhook_max_in_flight,
            )
        )
    if settings.smtp_host:
        channels.append(
            SmtpChannel(
                settings.smtp_host,
                settings.smtp_port,
                sender=settings.smtp_from,
                subject=settings.smtp_subject,
                timeout=settings.smtp_timeout_seconds,
                address_attribute=settings.smtp_address_attribute,
                username=settings.smtp_username,
                password=settings.smtp_password.get_secret_value()
                if settings.smtp_password
                else None,
                starttls=settings.smtp_starttls,
            )
        )
    return channels


def build_limiter(settings: Settings) -> RateLimiter:
    url = settings.limiter_redis_url
    if not settings.rate_limits or url is None:
        return NoRateLimit()
    return RedisRateLimiter(url, settings.rate_limits, settings.rate_limit_key_prefix)


def delivery_stores(
    db: Database[dict[str, Any]] | MemoryDatabase,
) -> tuple[DeliveryRows, DeliveryStatuses, Suppressions]:
    """Delivery's adapters over ``db``: MongoDB's, or the in-memory ones."""
    if isinstance(db, MemoryDatabase):
        listed = ListedSuppressions(MemorySuppressionRepository(db))
        return MemoryDeliveryRows(db), MemoryDeliveryStatuses(db), listed
    return MongoDeliveryRows(db), MongoDeliveryStatuses(db), MongoDeliverySuppressions(db)


def build_delivery(
    db: Database[dict[str, Any]] | MemoryDatabase,
    manager: CampaignManager,
    settings: Settings,
    *,
    channels: list[Channel] | None = None,
    limiter: RateLimiter | None = None,
    clock: Clock | None = None,
) -> Delivery:
    """``clock`` times leases, retries and rate-limit slots: real time by default, even
    when the campaign's clock runs faster (the demo), since providers live in real time."""
    rows, statuses_store, suppressions = delivery_stores(db)
    statuses = StatusRecorder(
        manager, statuses_store, suppressions, settings.delivery_default_channel
    )
    policy = DispatchPolicy(
        batch_size=settings.delivery_batch_size,
        lease_seconds=settings.delivery_lease_seconds,
        max_attempts=settings.delivery_max_attempts,
        backoff_base=settings.delivery_backoff_base_seconds,
        backoff_cap=settings.delivery_backoff_max_seconds,
        default_channel=settings.delivery_default_channel,
        batch_seconds=settings.celery_task_soft_time_limit / 2,
        longest_send=settings.longest_send_seconds,
        max_in_flight={
            "webhook": settings.webhook_max_in_flight,
            "smtp": settings.smtp_max_in_flight,
        },
    )
    dispatcher = Dispatcher(
        rows,
        {c.name: c for c in (build_channels(settings) if channels is None else channels)},
        limiter or build_limiter(settings),
        suppressions,
        statuses,
        clock or SystemClock(),
        policy,
    )
    return Delivery(dispatcher, statuses)


def ensure_delivery_indexes(db: Database[dict[str, Any]]) -> None:
    MongoDeliveryRows(db).initialize()
    MongoDeliverySuppressions(db).initialize()


__all__ = [
    "Delivery",
    "build_channels",
    "build_delivery",
    "build_limiter",
    "delivery_stores",
    "ensure_delivery_indexes",
]
