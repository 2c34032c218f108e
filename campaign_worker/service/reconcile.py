"""The metrics reconcile: recompute a campaign's metrics document from its conversations
and correct drift, exactly, while batches run (see docs/architecture.md, "Exact
metrics")."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import structlog

from campaign_worker.domain.aliases import Doc
from campaign_worker.domain.campaign_documents import CampaignStatus, StoredCampaign
from campaign_worker.domain.documents import to_utc
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
    before = svc.campaign_metrics.get(campaign_id) or {}
    inflight = {str(k): to_utc(v) for k, v in (before.get("inflight") or {}).items()}
    stale = [token for token, since in inflight.items() if since < now - svc.inflight_timeout]
    if len(stale) < len(inflight):
        log.info("metrics_reconcile_deferred", campaign_id=campaign_id, reason="writers")
        return {}
    expected = recount(svc, campaign)
    after = svc.campaign_metrics.get(campaign_id) or {}
    if before.get("revision") != after.get("revision"):
        log.info("metrics_reconcile_deferred", campaign_id=campaign_id, reason="concurrent updates")
        return {}
    drift = difference(expected, stored_counts(after))
    if drift or stale:
        revision = int(after.get("revision") or 0)
        if not svc.campaign_metrics.correct(campaign_id, drift, revision, now, stale):
            return {}
        if drift:
            log.warning("metrics_drift_corrected", campaign_id=campaign_id, drift=drift)
    return drift


def recount(svc: Services, campaign: StoredCampaign) -> dict[str, float]:
    """The metrics document's counters recomputed from the campaign's conversations (one
    aggregation) and its initialization checkpoint (invalid rows), as field paths."""
    expected = expected_counts(svc.conversation_state_repository.aggregate_campaign(campaign.id))
    invalid = int((campaign.init_progress or {}).get("invalid", 0))
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


def expected_counts(aggregate: Doc) -> dict[str, float]:
    """Flatten a conversation aggregation into metrics-document field paths."""
    counts: dict[str, float] = {"total_recipients": 0}
    for row in aggregate.get("status", []):
        counts["total_recipients"] += row["n"]
        counts[_STATUS_FIELD[str(row["_id"])]] = row["n"]
    for row in aggregate.get("messages", []):
        counts["message_metrics.total_sent"] = row["sent"]
        counts["message_metrics.total_received"] = row["received"]
    for row in aggregate.get("stages", []):
        stage = row["_id"]
        counts[f"stage_metrics.{stage}.entered"] = row["entered"]
        counts[f"stage_metrics.{stage}.completed"] = row["completed"]
        counts[f"stage_metrics.{stage}.total_duration_seconds"] = row["total_ms"] / 1000.0
    counts.update(_split_counts(aggregate))
    return {key: value for key, value in counts.items() if value}


def _split_counts(aggregate: Doc) -> dict[str, float]:
    """The A/B split and holdout counters (``variants.*``, ``holdout.*``)."""
    counts: dict[str, float] = {}
    for row in aggregate.get("holdout", []):
        counts["holdout.conversations"] = counts.get("holdout.conversations", 0) + row["n"]
        counts["holdout.replies"] = counts.get("holdout.replies", 0) + row["replies"]
        counts[f"holdout.{row['_id']}"] = row["n"]
    for row in aggregate.get("variant_messages", []):
        key = row["_id"]
        path = f"variants.{key['stage']}.{key['variant']}"
        if key["direction"] == "outbound":
            counts[f"{path}.sent"] = counts.get(f"{path}.sent", 0) + row["n"]
            continue
        counts[f"{path}.replies"] = counts.get(f"{path}.replies", 0) + row["n"]
        if isinstance(key.get("intent"), str):
            counts[f"{path}.intents.{key['intent']}"] = row["n"]
    for row in aggregate.get("variant_visits", []):
        path = f"variants.{row['_id']['stage']}.{row['_id']['variant']}"
        counts[f"{path}.conversations"] = row["visits"]
        counts[f"{path}.advanced"] = row["advanced"]
    return counts


def _flatten(prefix: str, value: Any, into: dict[str, float]) -> None:
    if isinstance(value, dict):
        for key, inner in value.items():
            _flatten(f"{prefix}.{key}", inner, into)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        into[prefix] = value


def stored_counts(doc: Doc) -> dict[str, float]:
    """The counters of a stored metrics document, as field paths."""
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
    return {key: value for key, value in counts.items() if value}


__all__ = [
    "campaigns_to_reconcile",
    "difference",
    "expected_counts",
    "reconcile_campaign_metrics",
    "recount",
    "stored_counts",
]
