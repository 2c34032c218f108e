"""The metrics reconcile: recompute a campaign's metrics document from its conversations
and correct drift, exactly, while batches run (see docs/architecture.md, "Exact
metrics")."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import structlog

from campaign_worker.domain.campaign_documents import CampaignStatus, InitCheckpoint, StoredCampaign
from campaign_worker.domain.metrics_documents import StoredMetrics
from campaign_worker.service.context import Services

log = structlog.get_logger(__name__)

_RECONCILED = [
    CampaignStatus.RUNNING,
    CampaignStatus.PAUSED,
    CampaignStatus.COMPLETED,
    CampaignStatus.CANCELLED,
]
_OVER = frozenset({CampaignStatus.COMPLETED, CampaignStatus.CANCELLED})
_STATUS_FIELD = {
    "active": "active_conversations",
    "completed": "completed_conversations",
    "failed": "failed_conversations",
    "opted_out": "opted_out_conversations",
    "cancelled": "cancelled_conversations",
}


def campaigns_to_reconcile(svc: Services, recent: timedelta = timedelta(days=1)) -> list[str]:
    """Running and paused campaigns, and those completed or cancelled within ``recent``."""
    now = svc.clock.now()
    ids = []
    for campaign in svc.campaigns.find_by_status(_RECONCILED):
        updated = campaign.updated_at
        if campaign.status not in _OVER or (updated is not None and updated >= now - recent):
            ids.append(campaign.id)
    return ids


def reconcile_campaign_metrics(svc: Services, campaign_id: str) -> dict[str, float]:
    """Correct the drift between the metrics document and a recount; returns it per field
    (expected minus stored; empty when exact or deferred).

    Defers while a writer is registered (its states may have landed before its
    increment), and when any write touched the document while the aggregation ran. A
    registration older than the in-flight timeout belongs to a dead writer: it is dropped
    with the correction.
    """
    campaign = svc.campaign(campaign_id)
    now = svc.clock.now()
    before = svc.campaign_metrics.get(campaign_id) or StoredMetrics(id=campaign_id)
    inflight = before.inflight
    stale = [token for token, since in inflight.items() if since < now - svc.inflight_timeout]
    if len(stale) < len(inflight):
        log.info("metrics_reconcile_deferred", campaign_id=campaign_id, reason="writers")
        return {}
    expected = recount(svc, campaign)
    after = svc.campaign_metrics.get(campaign_id) or StoredMetrics(id=campaign_id)
    if before.revision != after.revision:
        log.info("metrics_reconcile_deferred", campaign_id=campaign_id, reason="concurrent updates")
        return {}
    drift = difference(expected, stored_counts(after))
    if drift or stale:
        if not svc.campaign_metrics.correct(campaign_id, drift, after.revision, now, stale):
            return {}
        if drift:
            log.warning("metrics_drift_corrected", campaign_id=campaign_id, drift=drift)
    return drift


def recount(svc: Services, campaign: StoredCampaign) -> dict[str, float]:
    """The metrics document's counters recomputed from the campaign's conversations (one
    aggregation) and its initialization checkpoint (invalid rows), as field paths."""
    expected = dict(svc.conversation_state_repository.recount(campaign.id))
    invalid = InitCheckpoint.of(campaign).invalid
    if invalid:
        expected["invalid_recipients"] = invalid
    return expected


def difference(expected: dict[str, float], stored: dict[str, float]) -> dict[str, float]:
    """Expected minus stored per field path, where they differ (beyond float noise)."""
    return {
        key: expected.get(key, 0) - stored.get(key, 0)
        for key in set(expected) | set(stored)
        if abs(expected.get(key, 0) - stored.get(key, 0)) > 1e-6
    }


def _flatten(prefix: str, value: Any, into: dict[str, float]) -> None:
    if isinstance(value, dict):
        for key, inner in value.items():
            _flatten(f"{prefix}.{key}", inner, into)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        into[prefix] = value


def stored_counts(stored: StoredMetrics) -> dict[str, float]:
    """The counters of a stored metrics document, as field paths."""
    doc = stored.document()
    counts: dict[str, float] = {}
    for key in (
        "total_recipients",
        *_STATUS_FIELD.values(),
        "invalid_recipients",
    ):
        counts[key] = doc.get(key, 0)
    messages = doc.get("message_metrics", {})
    counts["message_metrics.total_sent"] = messages.get("total_sent", 0)
    counts["message_metrics.total_received"] = messages.get("total_received", 0)
    for stage, values in doc.get("stage_metrics", {}).items():
        for name in ("entered", "completed", "total_duration_seconds"):
            counts[f"stage_metrics.{stage}.{name}"] = values.get(name, 0)
    _flatten("variants", doc.get("variants") or {}, counts)
    _flatten("holdout", doc.get("holdout") or {}, counts)
    _flatten("goals", doc.get("goals") or {}, counts)
    _flatten("reviews", doc.get("reviews") or {}, counts)
    return {key: value for key, value in counts.items() if value}


__all__ = [
    "campaigns_to_reconcile",
    "difference",
    "reconcile_campaign_metrics",
    "recount",
    "stored_counts",
]
