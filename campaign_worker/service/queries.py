"""Read-only queries: pending conversations, a conversation and its history, and the
campaign metrics document in the seed's shape."""

from __future__ import annotations

import structlog

from campaign_worker.domain.aliases import Doc
from campaign_worker.domain.campaign_documents import CampaignStatus
from campaign_worker.domain.documents import (
    ConversationState,
    ConversationStatus,
    Unreadable,
    parse_document,
)
from campaign_worker.domain.errors import InvalidInputError, UnknownStageError
from campaign_worker.domain.goals import goal_report
from campaign_worker.domain.metrics_documents import CampaignMetrics
from campaign_worker.domain.splits import HOLDOUT_COUNTERS, VARIANT_COUNTERS
from campaign_worker.domain.templates import CampaignTypeTemplate
from campaign_worker.service.context import Services

log = structlog.get_logger(__name__)


def get_pending_conversations(
    svc: Services,
    campaign_id: str,
    stage: str | None = None,
    limit: int = 100,
    status: str = "active",
) -> list[Doc]:
    """For ``active`` (the default): due conversations (``next_action_at`` <= now),
    oldest first, via the index. For a finished status, where nothing is ever due: the
    conversations in it, most recently finished first."""
    if limit < 1:
        raise InvalidInputError("limit must be a positive integer")
    try:
        ConversationStatus(status)
    except ValueError:
        raise InvalidInputError(f"status: unknown conversation status {status!r}") from None
    campaign = svc.campaign(campaign_id)
    if stage is not None:
        _, type_template = svc.type_template(campaign)
        if stage not in type_template.stage_names:
            raise UnknownStageError(stage, type_template.stage_names)
    found = svc.conversation_state_repository.find_due(
        campaign_id, svc.clock.now(), stage=stage, status=status, limit=limit
    )
    for unreadable in [s for s in found if isinstance(s, Unreadable)]:
        # Processing fails it alone; a listing shows the conversations it can read.
        log.warning("conversation_unreadable", conversation_id=unreadable.id)
    return [state.to_mongo() for state in found if isinstance(state, ConversationState)]


def list_campaigns(svc: Services, status: str | None = None, limit: int = 50) -> list[Doc]:
    """Campaigns newest first (without inline recipients), optionally in one status."""
    if limit < 1:
        raise InvalidInputError("limit must be a positive integer")
    try:
        wanted = None if status is None else CampaignStatus(status)
    except ValueError:
        known = [member.value for member in CampaignStatus]
        raise InvalidInputError(
            f"status: unknown campaign status {status!r}; known: {known}"
        ) from None
    return [found.to_mongo() for found in svc.campaigns.list_recent(wanted, limit)]


def get_campaign_metrics(svc: Services, campaign_id: str) -> Doc:
    """The seed's Campaign Metrics Document, stages in template order."""
    campaign = svc.campaign(campaign_id)
    stored = svc.campaign_metrics.get(campaign_id)
    raw = {} if stored is None else stored.document()
    raw.setdefault("campaign_id", campaign_id)
    raw.setdefault("updated_at", svc.clock.now())
    negative = _clamp_negative(raw)
    if negative:
        # Stored drift, not the caller's input: report zero; the reconcile corrects it.
        log.warning("metrics_document_negative", campaign_id=campaign_id, fields=negative)
    metrics = parse_document(CampaignMetrics, raw, what=f"metrics of {campaign_id}")
    try:
        type_template: CampaignTypeTemplate | None = svc.type_template(campaign)[1]
    except InvalidInputError:
        type_template = None
    order = type_template.stage_names if type_template is not None else []
    names = order + [name for name in metrics.stage_metrics if name not in order]
    empty = {"entered": 0, "completed": 0, "avg_duration_seconds": 0.0}
    doc = metrics.model_dump(mode="python", exclude={"revision", "inflight", "delivery_counted"})
    if not doc["delivery"]:
        del doc["delivery"]  # the seed's shape until a channel reported something
    if any(doc["reviews"].values()):
        doc["reviews"] = {key: doc["reviews"].get(key, 0) for key in ("pending", "resolved")}
    else:
        del doc["reviews"]  # the seed's shape until a reply was held for review
    _splits(doc, type_template)
    doc["stage_metrics"] = {
        name: metrics.stage_metrics[name].model_dump(exclude={"total_duration_seconds"})
        if name in metrics.stage_metrics
        else dict(empty)
        for name in names
    }
    _goals(doc, type_template)
    return doc


def _goals(doc: Doc, type_template: CampaignTypeTemplate | None) -> None:
    """``goals.<event>`` with rates and means (``goals.goal_report``); left out when the
    campaign has no goal and nothing converted."""
    stored = dict(doc.get("goals") or {})
    goal = None if type_template is None else type_template.goal
    if goal is not None:
        stored.setdefault(goal.event, {})
    if not stored:
        doc.pop("goals", None)
        return
    doc["goals"] = {event: goal_report(values, doc) for event, values in stored.items()}


def _splits(doc: Doc, type_template: CampaignTypeTemplate | None) -> None:
    """``variants`` with every counter of the template's splits (zeros where nothing
    happened yet), ``holdout`` likewise; both left out when the campaign has neither."""
    variants: dict[str, dict[str, Doc]] = {}
    for stage in type_template.stages if type_template is not None else []:
        for variant, _ in stage.split:
            variants.setdefault(stage.name, {})[variant] = {}
    for stage_name, stored in doc["variants"].items():
        for variant, counters in stored.items():
            variants.setdefault(stage_name, {})[variant] = counters
    for stage_variants in variants.values():
        for variant, counters in stage_variants.items():
            filled = {name: int(counters.get(name, 0)) for name in VARIANT_COUNTERS}
            stage_variants[variant] = {**filled, "intents": dict(counters.get("intents") or {})}
    doc["variants"] = variants
    if not variants:
        del doc["variants"]
    held = type_template is not None and type_template.holdout > 0
    if held or doc["holdout"]:
        doc["holdout"] = {
            **{name: 0 for name in (*HOLDOUT_COUNTERS, "replies")},
            **doc["holdout"],
        }
    else:
        del doc["holdout"]


def _clamp_negative(doc: Doc, prefix: str = "") -> list[str]:
    """Set negative counters in ``doc`` (nested) to 0; returns their paths."""
    clamped = []
    for key, value in doc.items():
        if isinstance(value, dict) and key != "inflight":
            clamped += _clamp_negative(value, f"{prefix}{key}.")
        elif isinstance(value, int | float) and not isinstance(value, bool) and value < 0:
            doc[key] = 0
            clamped.append(prefix + key)
    return clamped


__all__ = ["get_campaign_metrics", "get_pending_conversations", "list_campaigns"]
