"""Campaign commands: create (idempotent by id or client key) and status moves."""

from __future__ import annotations

import hashlib
import json
import uuid

import structlog

from campaign_worker.domain.aliases import Doc
from campaign_worker.domain.campaign_documents import (
    CAMPAIGN_TRANSITIONS,
    Campaign,
    CampaignStatus,
    StoredCampaign,
)
from campaign_worker.domain.documents import parse_document
from campaign_worker.domain.errors import InvalidInputError, InvalidStateTransitionError
from campaign_worker.service.context import Services

log = structlog.get_logger(__name__)


def validate_campaign(svc: Services, data: Doc) -> Campaign:
    """The campaign as ``data`` describes it, checked against its template; raises if not."""
    campaign = parse_document(Campaign, _as_its_type_says(svc, data), what="campaign")
    svc.templates_at(campaign.template_id, campaign.campaign_type, campaign.template_version)
    return campaign


def _as_its_type_says(svc: Services, data: Doc) -> Doc:
    """The request with what its campaign type declares and it does not say: an ``open``
    audience, the ``entry`` event (an unknown template is reported by the caller)."""
    try:
        version = data.get("template_version")
        _, type_template = svc.templates_at(
            str(data["template_id"]),
            str(data["campaign_type"]),
            version if isinstance(version, int) else None,
        )
    except (KeyError, InvalidInputError):
        return data
    enriched = dict(data)
    if type_template.audience == "open":
        enriched.setdefault("audience", "open")
    if type_template.entry is not None:
        enriched.setdefault("entry_event", type_template.entry.event)
    return enriched


def pin_version(svc: Services, campaign: Campaign) -> Campaign:
    """The campaign with the template version it runs on: the one it names, else the
    template file's current content (registered as a version if new)."""
    if svc.versions is None:
        return campaign
    if campaign.template_version is not None:
        stored, _ = svc.versions.get(campaign.template_id, campaign.template_version)
    else:
        stored = svc.versions.current(campaign.template_id)
    return campaign.model_copy(
        update={"template_version": stored.version, "template_hash": stored.content_hash}
    )


def create_campaign(svc: Services, data: Doc | Campaign, idempotency_key: str | None = None) -> str:
    """Validate and store a campaign; returns its id.

    Replaying the same request (same ``_id``, or same ``idempotency_key`` without an
    ``_id``) is a no-op that returns the same id; a different campaign under an id or
    key already used is refused.
    """
    raw = _request(data, idempotency_key)
    fingerprint = _fingerprint(raw)
    campaign = validate_campaign(svc, raw)
    if campaign.status not in (CampaignStatus.DRAFT, CampaignStatus.SCHEDULED):
        raise InvalidInputError(
            f"status: a new campaign must be draft or scheduled, not {campaign.status.value!r}"
        )
    if campaign.audience != "open" and not svc.campaigns.has_recipients(campaign):
        raise InvalidInputError("recipients: the audience is empty (no document matches the query)")
    now = svc.clock.now()
    campaign = pin_version(svc, campaign).model_copy(
        update={"created_at": now, "updated_at": now, "request_fingerprint": fingerprint}
    )
    created = svc.campaigns.insert(campaign)
    if not created:
        stored = svc.campaign(campaign.id).request_fingerprint
        if stored is not None and stored != fingerprint:
            raise InvalidInputError(
                f"campaign {campaign.id!r} exists with different content; an id or "
                "idempotency key names one campaign"
            )
    svc.campaign_metrics.ensure(campaign.id, now)
    log.info(
        "campaign_created",
        campaign_id=campaign.id,
        created=created,
        campaign_type=campaign.campaign_type,
        template_version=campaign.template_version,
    )
    return campaign.id


def _request(data: Doc | Campaign, idempotency_key: str | None) -> Doc:
    raw = data.to_mongo() if isinstance(data, Campaign) else dict(data)
    if idempotency_key is None:
        return raw
    if not idempotency_key or len(idempotency_key) > 512:
        raise InvalidInputError("idempotency_key: must be 1 to 512 characters")
    raw.setdefault("idempotency_key", idempotency_key)
    if "_id" not in raw and "id" not in raw:
        raw["_id"] = campaign_id_for_key(idempotency_key)
    return raw


def campaign_id_for_key(idempotency_key: str) -> str:
    """The campaign id a client's idempotency key stands for (same key, same campaign)."""
    return uuid.uuid5(uuid.NAMESPACE_URL, f"campaign-worker:campaign-key:{idempotency_key}").hex


def _fingerprint(raw: Doc) -> str:
    """A hash of what the client asked for (its request, less server-set fields)."""
    request = {k: v for k, v in raw.items() if k not in {"created_at", "updated_at"}}
    encoded = json.dumps(request, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(encoded.encode()).hexdigest()


def transition_campaign(svc: Services, campaign_id: str, to: CampaignStatus) -> StoredCampaign:
    """Move to ``to`` from any status allowed to; a replay (already there) is a no-op."""
    allowed = [status for status, targets in CAMPAIGN_TRANSITIONS.items() if to in targets]
    doc = svc.campaigns.transition(campaign_id, allowed, to, svc.clock.now())
    if doc is None:
        current = svc.campaign(campaign_id)
        if current.status == to:
            return current
        raise InvalidStateTransitionError(
            f"campaign {campaign_id!r} is {current.status.value!r}; cannot move to {to.value!r}"
        )
    log.info("campaign_status_changed", campaign_id=campaign_id, status=to.value)
    return doc


def resume_campaign(svc: Services, campaign_id: str) -> StoredCampaign:
    """Back to running, or to scheduled if it was paused before it was initialized."""
    current = svc.campaign(campaign_id)
    target = CampaignStatus.RUNNING if current.initialized_at else CampaignStatus.SCHEDULED
    return transition_campaign(svc, campaign_id, target)


__all__ = ["campaign_id_for_key", "create_campaign", "resume_campaign", "transition_campaign"]
