"""Helpers of the CampaignManager tests (tests/unit/manager)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from campaign_worker.domain.documents import conversation_id_for
from campaign_worker.service.campaign_manager import CampaignManager
from tests.conftest import sample_campaign

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
SALES = ["awareness", "consideration", "decision"]

Doc = dict[str, Any]


def running(manager: CampaignManager, n: int = 3, **extra: Any) -> str:
    campaign_id = manager.create_campaign(sample_campaign(n, **extra))
    assert manager.initialize_campaign_conversations(campaign_id) == n
    return campaign_id


def cid(user: int, campaign_id: str = "camp-1") -> str:
    return conversation_id_for(campaign_id, f"user-{user:05d}")


def conv(manager: CampaignManager, user: int, campaign_id: str = "camp-1") -> Doc:
    return manager.get_conversation(cid(user, campaign_id))


def db_of(manager: CampaignManager) -> Any:
    return manager.conversation_state_repository._db  # type: ignore[attr-defined]


def public(doc: Doc) -> Doc:
    """A conversation without its compare-and-set bookkeeping (``version``, ``last_write``)."""
    return {key: value for key, value in doc.items() if key not in ("version", "last_write")}


def outbox(manager: CampaignManager) -> list[Doc]:
    return list(db_of(manager)["outbox"].find())


def stored_metrics(manager: CampaignManager, campaign_id: str = "camp-1") -> Doc:
    stored = manager.campaign_metrics.get(campaign_id)
    assert stored is not None
    return stored.document()


def reply(manager: CampaignManager, user: int, content: str, message_id: str | None = None) -> Doc:
    return manager.record_inbound_message(
        "camp-1", f"user-{user:05d}", message_id or f"in-{user}-{content}", content
    )
