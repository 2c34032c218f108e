"""Migrating a campaign's in-flight conversations to another template version.

A dry run counts what would happen (``domain.migrations.Report``). Applying walks the
campaign's active conversations by id in batches: each conversation is planned from its
own state and written with the processing writes' compare-and-set (``writes.
write_changes``), so a migration racing a processing batch or a reply either lands or
loses cleanly; a loser is re-read and planned again. A conversation already on the
target version is left alone, so applying again (after a crash, or twice) finishes the
job without doing anything twice. The campaign document holds the migration being
applied (``migrating``: target, map, counts) and, once every conversation is across,
the record of it (``migrations``) and the new pin. Migrating back reverses it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import structlog

from campaign_worker.domain.aliases import Doc
from campaign_worker.domain.campaign_documents import (
    CampaignStatus,
    MigrationRecord,
    StoredCampaign,
)
from campaign_worker.domain.documents import ConversationState, StoredState, Unreadable
from campaign_worker.domain.errors import (
    ConcurrencyConflictError,
    InvalidInputError,
    InvalidStateTransitionError,
)
from campaign_worker.domain.migrations import Move, Report, StageMap, migrate, plan
from campaign_worker.domain.templates import CampaignTypeTemplate, Template
from campaign_worker.domain.versions import TemplateVersion
from campaign_worker.service.context import Services
from campaign_worker.service.metrics_ledger import MetricsLedger
from campaign_worker.service.template_versions import type_of
from campaign_worker.service.writes import CAS_ATTEMPTS, Evaluated, write_changes

log = structlog.get_logger(__name__)
MIGRATABLE = (CampaignStatus.RUNNING, CampaignStatus.PAUSED)
CURRENT = "current"  # the template file's content as loaded now


@dataclass
class MigrationResult:
    """What a migration did (or, dry, would do)."""

    campaign_id: str
    from_version: int | None
    to_version: int
    dry_run: bool
    stage_map: Doc
    report: Report = field(default_factory=Report)
    migration_id: str | None = None
    finished: bool = False  # the campaign's pin moved and the migration is recorded

    def as_dict(self) -> Doc:
        return {
            "campaign_id": self.campaign_id,
            "from_version": self.from_version,
            "to_version": self.to_version,
            "dry_run": self.dry_run,
            "stage_map": self.stage_map,
            "migration_id": self.migration_id,
            "finished": self.finished,
            **self.report.as_doc(),
        }


@dataclass(frozen=True)
class _MigrationTarget:
    version: TemplateVersion
    template: Template
    type_template: CampaignTypeTemplate


def migrate_campaign(
    svc: Services,
    campaign_id: str,
    to: int | str,
    stage_map: StageMap,
    *,
    dry_run: bool = True,
    batch_size: int | None = None,
) -> MigrationResult:
    """Move ``campaign_id``'s active conversations to template version ``to`` (a number,
    or ``"current"``: the file as loaded now) as ``stage_map`` says. ``dry_run``: count
    only. Applying refuses while any conversation's stage is unresolved."""
    campaign = svc.campaign(campaign_id)
    if campaign.status not in MIGRATABLE:
        raise InvalidStateTransitionError(
            f"campaign {campaign_id!r} is {campaign.status.value!r}; only a running or "
            "paused campaign's conversations can be migrated"
        )
    target = _target(svc, campaign, to)
    stage_map.check(target.type_template)
    size = batch_size or svc.process_batch_size
    if size < 1:
        raise InvalidInputError("batch_size must be a positive integer")
    result = MigrationResult(
        campaign_id,
        campaign.template_version,
        target.version.version,
        dry_run,
        stage_map.as_doc(),
    )
    if not dry_run:
        _refuse_if_another(campaign, target.version.version)
    result.report = _scan(svc, campaign_id, target, stage_map, size)
    if not dry_run:
        _applied(svc, campaign, target, stage_map, size, result)
    return result


def _applied(
    svc: Services,
    campaign: StoredCampaign,
    target: _MigrationTarget,
    stage_map: StageMap,
    size: int,
    result: MigrationResult,
) -> None:
    """Apply the scanned migration (refused while a stage is unresolved), recorded on the
    campaign; ``result`` says what was moved and whether it finished."""
    if result.report.unresolved:
        raise InvalidInputError(
            "cannot apply: "
            + "; ".join(f"{n} in {k}" for k, n in result.report.unresolved.items())
            + " (map those stages, or give a default)"
        )
    if (
        not result.report.total
        and campaign.migrating is None
        and campaign.template_version == target.version.version
    ):
        result.finished = True  # nothing to move: applied already
        return
    record = _begin(svc, campaign, target, stage_map)
    result.migration_id = record.id
    result.report = _apply(svc, campaign.id, target, stage_map, size, record.id)
    result.finished = not result.report.unresolved and _finish(svc, campaign.id, record, target)
    log.info(
        "campaign_migrated",
        campaign_id=campaign.id,
        to_version=target.version.version,
        migrated=result.report.total,
        finished=result.finished,
    )


def _target(svc: Services, campaign: StoredCampaign, to: int | str) -> _MigrationTarget:
    if svc.versions is None:
        raise InvalidInputError("template versions are not configured in this process")
    if to == CURRENT:
        version = svc.versions.current(campaign.template_id)
    elif isinstance(to, int) or (isinstance(to, str) and to.isdigit()):
        version = svc.versions.get(campaign.template_id, int(to))[0]
    else:
        raise InvalidInputError(f"to: a version number or {CURRENT!r}, not {to!r}")
    template = svc.versions.get(campaign.template_id, version.version)[1]
    return _MigrationTarget(
        version, template, type_of(template, campaign.campaign_type, version.label)
    )


def _pages(svc: Services, campaign_id: str, size: int) -> Iterator[list[ConversationState]]:
    """The campaign's active conversations, a page at a time."""
    after: str | None = None
    while True:
        page = svc.conversation_state_repository.page_active(campaign_id, after, size)
        if not page:
            return
        after = page[-1].id
        yield _readable(page)
        if len(page) < size:
            return


def _readable(read: list[StoredState]) -> list[ConversationState]:
    """The states that validate (broken documents skipped: processing fails those)."""
    for unreadable in [s for s in read if isinstance(s, Unreadable)]:
        log.warning("migration_skipped_invalid", conversation_id=unreadable.id)
    return [state for state in read if isinstance(state, ConversationState)]


def _scan(
    svc: Services, campaign_id: str, target: _MigrationTarget, stage_map: StageMap, size: int
) -> Report:
    report = Report()
    for states in _pages(svc, campaign_id, size):
        for state in states:
            report.add(plan(state, target.type_template, target.version.version, stage_map))
    return report


def _begin(
    svc: Services, campaign: StoredCampaign, target: _MigrationTarget, stage_map: StageMap
) -> MigrationRecord:
    """The migration record being applied: a new one, or the one a crash or a
    concurrent applier left for the same target (resumed; its map is this one)."""
    record = MigrationRecord(
        id=uuid.uuid4().hex,
        from_version=campaign.template_version,
        to_version=target.version.version,
        to_hash=target.version.content_hash,
        started_at=svc.clock.now(),
        **stage_map.as_doc(),
    )
    stored = svc.campaigns.begin_migration(campaign.id, record, svc.clock.now())
    _refuse_if_another(stored, target.version.version)
    return stored.migrating or record


def _refuse_if_another(campaign: StoredCampaign, to_version: int) -> None:
    """One migration at a time: one half applied to another version must finish first
    (each conversation on it would otherwise be pulled two ways)."""
    current = campaign.migrating
    if current is not None and current.to_version != to_version:
        raise InvalidStateTransitionError(
            f"campaign {campaign.id!r} is being migrated to version "
            f"{current.to_version}: apply that migration again to finish it first"
        )


def _apply(
    svc: Services,
    campaign_id: str,
    target: _MigrationTarget,
    stage_map: StageMap,
    size: int,
    migration_id: str,
) -> Report:
    total = Report()
    ledger = svc.ledger(campaign_id)
    try:
        for states in _pages(svc, campaign_id, size):
            batch = _apply_batch(svc, states, target, stage_map, ledger)
            svc.campaigns.count_migration(
                campaign_id,
                migration_id,
                {"moved": dict(batch.moved), "ended": dict(batch.ended)},
            )
            total.merge(batch)
    finally:
        ledger.close()
    return total


def _apply_batch(
    svc: Services,
    states: list[ConversationState],
    target: _MigrationTarget,
    stage_map: StageMap,
    ledger: MetricsLedger,
) -> Report:
    """Migrate one page in bulk compare-and-sets; re-read and re-plan those that lost."""
    report = Report()
    pending = states
    for _ in range(CAS_ATTEMPTS):
        now = svc.clock.now()
        changes: list[Evaluated] = []
        moves: dict[str, Move] = {}
        for state in pending:
            move = plan(state, target.type_template, target.version.version, stage_map)
            outcome = (
                None
                if move.kind == "unresolved"
                else migrate(
                    state, move, target.template, target.type_template, target.version.version, now
                )
            )
            if outcome is None:
                report.add(move)  # already there, finished meanwhile, or unresolved
                continue
            moves[state.id] = move
            changes.append(Evaluated(state, outcome[0], outcome[1]))
        written = write_changes(svc, changes, lambda _: ledger, now)
        for conversation_id in written.applied:
            report.add(moves[conversation_id])
        for conversation_id, reason in written.failed.items():
            log.error("migration_write_refused", conversation_id=conversation_id, reason=reason)
            report.unresolved[f"{moves[conversation_id].from_stage}: write refused"] += 1
        settled = {*written.applied, *written.failed}
        lost = [c.old.id for c in changes if c.old.id not in settled]
        if not lost:
            return report
        report.conflicts += len(lost)
        pending = _readable(svc.conversation_state_repository.get_many(lost))
    raise ConcurrencyConflictError("conversations kept changing under the migration; apply again")


def _finish(
    svc: Services, campaign_id: str, begun: MigrationRecord, target: _MigrationTarget
) -> bool:
    """Record the migration and move the pin (compare-and-set on its revision)."""
    for _ in range(CAS_ATTEMPTS):
        campaign = svc.campaign(campaign_id)
        current = campaign.migrating
        if current is None or current.id != begun.id:
            return campaign.template_version == target.version.version  # finished by another
        if svc.campaigns.finish_migration(campaign_id, current, target.version, svc.clock.now()):
            return True
    return False


__all__ = ["CURRENT", "MigrationResult", "migrate_campaign"]
