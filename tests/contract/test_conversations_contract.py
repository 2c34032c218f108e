"""The conversation repository's contract: what the flows rely on, on every backend."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from campaign_worker.adapters.clock import ManualClock
from campaign_worker.bootstrap import build_manager
from campaign_worker.domain.documents import ConversationState, Unreadable, conversation_id_for
from campaign_worker.domain.partitions import PartitionRange
from campaign_worker.domain.splits import recount
from campaign_worker.service.reconcile import difference, stored_counts
from campaign_worker.settings import Settings
from tests.contract.support import MINUTE, START, Store, replied, sent, state, users
from tests.splits_support import drive_split_campaign, user, write_split_template

CONVERSATIONS = "conversation_states"


def ids(found: list[ConversationState | Unreadable]) -> list[str]:
    return [item.user_id or "" for item in found]


def test_insert_skips_duplicates_by_id_and_by_campaign_and_user(store: Store) -> None:
    repo = store.repos.conversations
    assert repo.insert_states([state(u) for u in users(3)]) == 3
    same_user_other_id = state("user-0001").model_copy(update={"id": "another-id"})
    again = [same_user_other_id, *(state(u) for u in users(5))]
    assert repo.insert_states(again) == 2  # only user-0003 and user-0004 are new
    assert repo.insert_states([]) == 0
    assert store.db[CONVERSATIONS].count_documents({}) == 5
    assert repo.get_state("another-id") is None
    assert repo.count_conversations("camp-1") == 5


def test_a_stored_state_reads_back_equal_and_a_broken_one_as_unreadable(store: Store) -> None:
    repo = store.repos.conversations
    first = state("user-0000")
    repo.insert_states([first])
    assert repo.get_state(first.id) == first
    broken = {**first.to_mongo(), "_id": "broken", "user_id": "user-9", "metrics": "many"}
    store.db[CONVERSATIONS].insert_one(broken)
    found = repo.get_state("broken")
    assert isinstance(found, Unreadable)
    assert (found.id, found.campaign_id, found.user_id) == ("broken", "camp-1", "user-9")
    assert "metrics" in found.error and "many" not in found.error
    pairs = [("camp-1", "user-0000"), ("camp-1", "user-9"), ("camp-1", "nobody")]
    by_users = repo.find_by_users(pairs)
    assert sorted((type(s).__name__, s.id) for s in by_users) == sorted(
        [("ConversationState", first.id), ("Unreadable", "broken")]
    )
    assert {s.id for s in repo.get_many([first.id, "broken", "missing"])} == {first.id, "broken"}


def test_read_due_is_due_active_oldest_first_within_the_limit(store: Store) -> None:
    repo = store.repos.conversations
    later = START + timedelta(hours=1)
    repo.insert_states(
        [state(u, next_action_at=START - i * MINUTE) for i, u in enumerate(users(4, "due"))]
        + [state(u, next_action_at=later) for u in users(2, "later")]
        + [state(u, next_action_at=None) for u in users(2, "idle")]
        + [state(u, status="completed") for u in users(2, "done")]
        + [state(u, campaign_id="camp-2") for u in users(2, "other")]
        + [state("advanced", next_action_at=START - 10 * MINUTE, stage="decision")]
    )
    oldest_first = ["advanced", "due-0003", "due-0002", "due-0001", "due-0000"]
    assert ids(repo.read_due("camp-1", START, limit=50)) == oldest_first
    assert ids(repo.read_due("camp-1", START, limit=2)) == oldest_first[:2]
    assert ids(repo.read_due("camp-1", START, stage="decision", limit=50)) == ["advanced"]
    settling = ids(repo.read_due("camp-1", START, limit=50, settling=True))
    assert sorted(settling) == sorted([*oldest_first, *users(2, "later"), *users(2, "idle")])
    assert settling[:2] == users(2, "idle")  # no due time sorts first
    assert repo.count_due("camp-1", START, settling=False, limit=100) == 5
    assert repo.count_due("camp-1", START, settling=False, limit=3) == 3
    assert repo.count_due("camp-1", START, settling=True, limit=100) == 9
    assert repo.oldest_due(START, ["camp-1", "camp-3"]) == START - 10 * MINUTE
    assert repo.oldest_due(START - timedelta(days=1), ["camp-1"]) is None
    assert repo.oldest_due(START, []) is None
    assert repo.count_active("camp-1") == 9
    assert repo.count_conversations("camp-1") == 11


def test_find_due_lists_finished_ones_most_recently_finished_first(store: Store) -> None:
    repo = store.repos.conversations
    repo.insert_states(
        [
            state(u, status="completed", next_action_at=None, finished_at=START + i * MINUTE)
            for i, u in enumerate(users(3, "done"))
        ]
        + [state(u) for u in users(2)]
    )
    done = repo.find_due("camp-1", START, stage=None, status="completed", limit=2)
    assert ids(done) == ["done-0002", "done-0001"]
    due = repo.find_due("camp-1", START, stage=None, status="active", limit=10)
    assert sorted(ids(due)) == users(2)
    assert repo.find_due("camp-1", START, stage="decision", status="active", limit=10) == []


def test_partition_ranges_are_disjoint_and_old_documents_go_to_the_first(store: Store) -> None:
    repo = store.repos.conversations
    repo.insert_states([state(u) for u in users(40)])
    old = [
        {k: v for k, v in state(u).to_mongo().items() if k != "partition"} for u in users(3, "old")
    ]
    store.db[CONVERSATIONS].insert_many(old)
    for count in (1, 2, 4):
        seen: list[str] = []
        for index in range(count):
            span = PartitionRange(index, count)
            found = repo.read_due("camp-1", START, limit=500, span=span)
            assert repo.count_due("camp-1", START, settling=False, limit=500, span=span) == len(
                found
            )
            seen += ids(found)
            olds = [s for s in ids(found) if s.startswith("old")]
            assert index == 0 or not olds
        assert sorted(seen) == sorted([*users(40), *users(3, "old")])


def test_a_write_is_a_compare_and_set_on_the_version(store: Store) -> None:
    repo = store.repos.conversations
    repo.insert_states([state(u) for u in users(3)])
    a, b, c = (repo.get_state(state(u).id) for u in users(3))
    assert isinstance(a, ConversationState) and isinstance(b, ConversationState)
    assert isinstance(c, ConversationState)
    first = repo.write_transitions([(a, replied(a, "in-1")), (b, replied(b, "in-2"))], START)
    assert set(first.applied) == {a.id, b.id} and not first.failed
    assert len(set(first.applied.values())) == 2  # a token per write
    # a and b are stale now: their writes lose; c's lands.
    again = repo.write_transitions(
        [(a, replied(a, "in-3")), (b, replied(b, "in-4")), (c, replied(c, "in-5"))], START
    )
    assert set(again.applied) == {c.id} and not again.failed
    stored = repo.get_state(a.id)
    assert isinstance(stored, ConversationState)
    assert stored.version == a.version + 1
    assert [m.message_id for m in stored.message_history] == ["in-1"]
    assert stored.last_write == [first.applied[a.id]]
    assert repo.write_transitions([], START).applied == {}


def test_a_write_records_outbound_messages_as_unpublished_until_marked(store: Store) -> None:
    repo = store.repos.conversations
    old = state("user-0000", lease_owner="old-release", lease_until=START)
    old = old.model_copy(update={"partition": None})
    repo.insert_states([old])
    written = repo.write_transitions([(old, sent(old, "out-1"))], START)
    token = written.applied[old.id]
    stored = repo.get_state(old.id)
    assert isinstance(stored, ConversationState)
    assert (stored.unpublished, stored.publish_token, stored.publish_due_at) == (
        ["out-1"],
        token,
        START,
    )
    assert stored.lease_owner is None and stored.lease_until is None  # dropped by the write
    assert stored.partition is not None  # given its bucket by its first write
    assert ids(repo.find_unpublished(START, 10)) == ["user-0000"]
    assert repo.find_unpublished(START - MINUTE, 10) == []
    assert repo.mark_published([(old.id, "another-token", ["out-1"])]) == 0
    assert repo.mark_published([(old.id, token, ["out-1"])]) == 1
    marked = repo.get_state(old.id)
    assert isinstance(marked, ConversationState)
    assert (marked.unpublished, marked.publish_due_at) == ([], None)
    assert repo.find_unpublished(START, 10) == []


def test_a_write_the_store_cannot_hold_fails_alone(store: Store) -> None:
    if store.kind == "mongomock":
        pytest.skip("mongomock-ng keeps Python ints unencoded: BSON's limits are the wire's")
    repo = store.repos.conversations
    repo.insert_states([state(u) for u in users(2)])
    a, b = (repo.get_state(state(u).id) for u in users(2))
    assert isinstance(a, ConversationState) and isinstance(b, ConversationState)
    attributes = a.context.model_copy(update={"attributes": {"n": 2**70}})
    written = repo.write_transitions(
        [(a, a.model_copy(update={"context": attributes})), (b, replied(b, "in-1"))], START
    )
    assert set(written.applied) == {b.id}
    assert list(written.failed) == [a.id] and written.failed[a.id]
    assert repo.get_state(a.id) == a  # unchanged


def test_a_write_may_only_append_to_the_history(store: Store) -> None:
    repo = store.repos.conversations
    first = state("user-0000")
    repo.insert_states([first])
    repo.write_transitions([(first, replied(first, "in-1"))], START)
    stored = repo.get_state(first.id)
    assert isinstance(stored, ConversationState)
    rewritten = stored.model_copy(update={"message_history": []})
    with pytest.raises(ValueError, match="appended"):
        repo.write_transitions([(stored, rewritten)], START)


def test_failing_a_conversation_needs_it_active(store: Store) -> None:
    repo = store.repos.conversations
    repo.insert_states([state("user-0000"), state("user-0001", status="completed")])
    active, done = (state(u).id for u in ("user-0000", "user-0001"))
    assert repo.fail_conversation(active, "x" * 600, START)
    assert not repo.fail_conversation(active, "again", START)
    assert not repo.fail_conversation(done, "finished", START)
    assert not repo.fail_conversation("missing", "none", START)
    failed = repo.get_state(active)
    assert isinstance(failed, ConversationState)
    assert (failed.status.value, failed.finished_at, failed.next_action_at) == (
        "failed",
        START,
        None,
    )
    assert failed.status_reason == "x" * 500 and failed.version == 1


def test_active_conversations_page_by_id(store: Store) -> None:
    repo = store.repos.conversations
    repo.insert_states([state(u) for u in users(7)] + [state("done", status="failed")])
    everyone = sorted(state(u).id for u in users(7))
    pages, after = [], None
    while page := repo.page_active("camp-1", after, 3):
        pages.append([s.id for s in page])
        after = page[-1].id
    assert pages == [everyone[0:3], everyone[3:6], everyone[6:]]


def test_the_recount_of_a_campaign_equals_what_its_writes_counted(
    store: Store, tmp_path: Path, clock: ManualClock
) -> None:
    """An A/B campaign with a holdout, replies and every ending: the recount (what the
    reconcile compares with) equals the metrics document the writes incremented, and
    ``domain.splits.recount`` of the conversations for the split counters."""
    write_split_template(tmp_path)
    settings = Settings(mongodb_db="contract", campaign_templates_dir=tmp_path)
    manager = build_manager(store.db, settings, clock=clock)
    drive_split_campaign(manager, clock, 40)
    counted = store.repos.conversations.recount("ab-1")
    stored = store.repos.metrics.get("ab-1")
    assert stored is not None
    assert difference(counted, stored_counts(stored)) == {}
    assert counted["total_recipients"] == 40 and counted["message_metrics.total_received"] > 0
    states = [s for s in store.repos.conversations.get_many([state_id(i) for i in range(40)])]
    splits = {k: v for k, v in counted.items() if k.startswith(("variants.", "holdout."))}
    assert splits == recount([s for s in states if isinstance(s, ConversationState)])
    assert store.repos.conversations.recount("nothing") == {}


def state_id(index: int) -> str:
    return conversation_id_for("ab-1", user(index))
