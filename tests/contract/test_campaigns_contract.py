"""The campaign and metrics repositories' contract, on every backend."""

from __future__ import annotations

from datetime import timedelta

from campaign_worker.domain.campaign_documents import (
    AudiencePosition,
    CampaignStatus,
    InitCheckpoint,
    InvalidRow,
    MigrationRecord,
    Recipient,
)
from campaign_worker.domain.effects import MetricsDelta
from campaign_worker.domain.versions import TemplateVersion
from tests.contract.support import MINUTE, START, Store, campaign

SCHEDULED, RUNNING = CampaignStatus.SCHEDULED, CampaignStatus.RUNNING
INITIALIZING, CANCELLED = CampaignStatus.INITIALIZING, CampaignStatus.CANCELLED


def test_a_campaign_is_stored_once_and_read_with_or_without_its_audience(store: Store) -> None:
    repo = store.repos.campaigns
    assert repo.insert(campaign())
    assert not repo.insert(campaign())  # a replay
    plain = repo.get("camp-1")
    assert plain is not None and plain.recipients is None and plain.status == SCHEDULED
    full = repo.get("camp-1", with_recipients=True)
    assert full is not None and isinstance(full.recipients, list) and len(full.recipients) == 3
    assert repo.get("missing") is None
    assert repo.has_recipients(campaign())


def test_status_moves_are_conditional_and_drop_the_lease(store: Store) -> None:
    repo = store.repos.campaigns
    repo.insert(campaign())
    [claimed] = repo.claim_for_initialization(START, "poller", START + MINUTE, 5)
    assert (claimed.status, claimed.lease_owner) == (INITIALIZING, "poller")
    assert repo.transition("camp-1", [SCHEDULED], RUNNING, START) is None
    moved = repo.transition("camp-1", [SCHEDULED, INITIALIZING], CANCELLED, START + MINUTE)
    assert moved is not None and moved.status == CANCELLED
    assert (moved.lease_owner, moved.lease_until, moved.updated_at) == (None, None, START + MINUTE)
    assert [c.id for c in repo.find_by_status([CANCELLED])] == ["camp-1"]
    assert repo.mark_settled("camp-1", START)
    assert not repo.mark_settled("camp-1", START)
    assert repo.find_by_status([CANCELLED]) == []  # settled: the poller is done with it


def test_the_claim_takes_due_campaigns_earliest_first_and_expired_initializations(
    store: Store,
) -> None:
    repo = store.repos.campaigns
    repo.insert(campaign("later", start_at=START + timedelta(hours=1)))
    repo.insert(campaign("second", start_at=START - MINUTE))
    repo.insert(campaign("first", start_at=START - 2 * MINUTE))
    repo.insert(campaign("draft", status=CampaignStatus.DRAFT))
    claimed = repo.claim_for_initialization(START, "a", START + MINUTE, 1)
    assert [c.id for c in claimed] == ["first"]
    claimed = repo.claim_for_initialization(START, "b", START + MINUTE, 5)
    assert [c.id for c in claimed] == ["second"]
    # Its initializer died: once its lease passed, another poller takes it over.
    assert repo.claim_for_initialization(START + MINUTE / 2, "c", START + 2 * MINUTE, 5) == []
    taken = repo.claim_for_initialization(START + 2 * MINUTE, "c", START + 3 * MINUTE, 5)
    assert sorted((c.id, c.lease_owner) for c in taken) == [("first", "c"), ("second", "c")]


def test_recent_campaigns_newest_first(store: Store) -> None:
    repo = store.repos.campaigns
    for index in range(4):
        repo.insert(campaign(f"c-{index}", created_at=START + index * MINUTE))
    repo.transition("c-2", [SCHEDULED], CANCELLED, START)
    assert [c.id for c in repo.list_recent(None, 3)] == ["c-3", "c-2", "c-1"]
    assert [c.id for c in repo.list_recent(SCHEDULED, 10)] == ["c-3", "c-1", "c-0"]


def test_the_audience_in_batches_resumes_after_its_position(store: Store) -> None:
    repo = store.repos.campaigns
    rows = [{"user_id": f"p-{i}", "list": "spring", "timezone": "Europe/Paris"} for i in range(5)]
    rows.append({"user_id": "p-x", "list": "autumn"})
    rows.append({"list": "spring"})  # no user id: invalid
    store.db["people"].insert_many([{"_id": f"r-{i}", **row} for i, row in enumerate(rows)])
    reference = {"collection": "people", "query": {"list": "spring"}}
    repo.insert(campaign("ref", recipients=reference))
    stored = repo.get("ref", with_recipients=True)
    assert stored is not None
    batches = list(repo.iter_recipients(stored, 2))
    users = [[r.user_id for r in batch] for batch, _ in batches]
    assert users == [["p-0", "p-1"], ["p-2", "p-3"], ["p-4", "None"]]
    assert all(isinstance(r, Recipient) for batch, _ in batches[:2] for r in batch)
    assert isinstance(batches[2][0][1], InvalidRow) and "user_id" in batches[2][0][1].error
    assert batches[1][0][0] == Recipient(user_id="p-2", timezone="Europe/Paris")
    resumed = list(repo.iter_recipients(stored, 2, batches[0][1]))
    assert [[r.user_id for r in batch] for batch, _ in resumed] == users[1:]
    inline = repo.get("camp-1", with_recipients=True)
    assert inline is None
    repo.insert(campaign())
    inline = repo.get("camp-1", with_recipients=True)
    assert inline is not None
    walked = list(repo.iter_recipients(inline, 2, AudiencePosition(1)))
    assert [([r.user_id for r in b], p) for b, p in walked] == [
        (["user-0001", "user-0002"], AudiencePosition(3))
    ]
    assert not repo.has_recipients(
        campaign(recipients={"collection": "people", "query": {"list": "x"}})
    )


def test_checkpoints_only_while_initializing_and_the_finish_in_one_move(store: Store) -> None:
    repo = store.repos.campaigns
    repo.insert(campaign())
    checkpoint = InitCheckpoint(AudiencePosition(2), 1, [InvalidRow("u", "user_id: missing")])
    assert not repo.save_init_progress("camp-1", checkpoint, START + MINUTE, START)
    repo.claim_for_initialization(START, "p", START + MINUTE, 1)
    assert repo.save_init_progress("camp-1", checkpoint, START + 2 * MINUTE, START)
    saved = repo.get("camp-1")
    assert saved is not None and InitCheckpoint.of(saved) == checkpoint
    assert saved.lease_until == START + 2 * MINUTE
    done = repo.finish_initialization("camp-1", [INITIALIZING], START, 3, checkpoint)
    assert done is not None and (done.status, done.total_recipients) == (RUNNING, 3)
    assert done.initialized_at == START and done.invalid_recipients == 1
    assert done.invalid_samples == [{"user_id": "u", "error": "user_id: missing"}]
    assert (done.init_progress or {}).get("done") is True
    assert repo.finish_initialization("camp-1", [INITIALIZING], START, 3, checkpoint) is None


def test_one_migration_at_a_time_finished_at_the_revision_it_was_read(store: Store) -> None:
    repo = store.repos.campaigns
    repo.insert(campaign())
    record = MigrationRecord(id="m-1", from_version=1, to_version=2, started_at=START)
    begun = repo.begin_migration("camp-1", record, START)
    assert begun.migrating is not None and begun.migrating.id == "m-1"
    other = repo.begin_migration("camp-1", record.model_copy(update={"id": "m-2"}), START)
    assert other.migrating is not None and other.migrating.id == "m-1"  # not replaced
    assert repo.count_migration("camp-1", "m-1", {"moved": {"a": 2}, "ended": {"b": 0}})
    assert not repo.count_migration("camp-1", "m-2", {"moved": {"a": 1}})
    counted = repo.get("camp-1")
    assert counted is not None and counted.migrating is not None
    assert (counted.migrating.revision, counted.migrating.counts) == (1, {"moved": {"a": 2}})
    version = TemplateVersion.model_validate(
        {
            "_id": "default@abc",
            "template_id": "default",
            "version": 2,
            "content_hash": "abc",
            "content": {},
            "created_at": START,
        }
    )
    assert not repo.finish_migration("camp-1", begun.migrating, version, START)  # revision 0
    assert repo.finish_migration("camp-1", counted.migrating, version, START + MINUTE)
    done = repo.get("camp-1")
    assert done is not None and done.migrating is None
    assert (done.template_version, done.template_hash) == (2, "abc")
    [finished] = done.migrations
    assert finished["id"] == "m-1" and finished["finished_at"] == START + MINUTE
    assert "revision" not in finished and finished["counts"] == {"moved": {"a": 2}}


def test_metrics_increments_derive_rates_and_registrations(store: Store) -> None:
    repo = store.repos.metrics
    repo.ensure("camp-1", START)
    ensured = repo.get("camp-1")
    assert ensured is not None and ensured.document() == {
        "campaign_id": "camp-1",
        "updated_at": START,
    }
    repo.begin("camp-1", "writer", START)
    delta = MetricsDelta(sent=4, received=1, active=3, total_recipients=3)
    delta.stage_entered["awareness"] += 3
    delta.stage_completed["awareness"] += 2
    delta.stage_duration["awareness"] += 90.0
    delta.variants[("awareness", "A", "sent")] += 2
    delta.holdout["conversations"] += 1
    repo.apply_delta("camp-1", delta, START + MINUTE, token="writer", register=["range-next"])
    doc = (repo.get("camp-1") or ensured).document()
    assert doc["message_metrics"] == {"total_sent": 4, "total_received": 1, "response_rate": 0.25}
    assert doc["stage_metrics"]["awareness"] == {
        "entered": 3,
        "completed": 2,
        "total_duration_seconds": 90.0,
        "avg_duration_seconds": 45.0,
    }
    assert doc["variants"] == {"awareness": {"A": {"sent": 2}}} and doc["holdout"] == {
        "conversations": 1
    }
    assert doc["inflight"] == {"range-next": START + MINUTE}  # "writer" deregistered
    assert (doc["revision"], doc["updated_at"]) == (2, START + MINUTE)
    repo.apply_delta("camp-1", MetricsDelta(), START)  # nothing to apply: no write
    assert (repo.get("camp-1") or ensured).revision == 2
    repo.register("camp-1", ["t-1", "t-2"], START)
    assert set((repo.get("camp-1") or ensured).inflight) == {"range-next", "t-1", "t-2"}
    assert repo.get("missing") is None


def test_a_correction_lands_only_on_the_revision_it_read(store: Store) -> None:
    repo = store.repos.metrics
    repo.apply_delta("camp-1", MetricsDelta(failed=2), START, register=["dead"])
    seen = repo.get("camp-1")
    assert seen is not None and seen.revision == 1
    repo.apply_delta("camp-1", MetricsDelta(active=1), START)  # lands meanwhile
    assert not repo.correct("camp-1", {"failed_conversations": -2.0}, seen.revision, START)
    now = repo.get("camp-1")
    assert now is not None
    assert repo.correct("camp-1", {"failed_conversations": -2.0}, now.revision, START, ["dead"])
    corrected = repo.get("camp-1")
    assert corrected is not None and corrected.failed_conversations == 0
    assert corrected.inflight == {} and corrected.revision == now.revision + 1
    assert repo.correct("fresh", {"active_conversations": 1.0}, 0, START)  # none yet
    repo.ensure("ensured", START)  # no revision yet: a correction seen at 0 applies
    assert repo.correct("ensured", {"active_conversations": 1.0}, 0, START)
    assert not repo.correct("ensured", {"active_conversations": 1.0}, 0, START)
