"""The review queue over the wire: its indexes as a worker creates them, the queue's
queries on them, and two resolutions of one held reply racing (two managers, two
clients): one advances the conversation, the other finds it resolved; one message sent."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

import pymongo
import pytest

from campaign_worker.adapters.clock import ManualClock
from campaign_worker.adapters.mongo_reviews import LABELS
from campaign_worker.domain.documents import ConversationState, conversation_id_for
from campaign_worker.service.campaign_manager import CampaignManager
from campaign_worker.service.ports import WriteOutcome
from tests.conftest import ManagerFactory, sample_campaign
from tests.fakes import ScriptedUnderstanding

pytestmark = pytest.mark.wire

Doc = dict[str, Any]
UNSURE = "well, it depends on a lot of things"


@pytest.fixture
def extra_client(wire_uri: str) -> Any:
    clients: list[pymongo.MongoClient[Doc]] = []

    def make() -> pymongo.MongoClient[Doc]:
        clients.append(pymongo.MongoClient(wire_uri, tz_aware=True))
        return clients[-1]

    yield make
    for client in clients:
        client.close()


def understanding() -> ScriptedUnderstanding:
    scripted = ScriptedUnderstanding()
    scripted.hold(UNSURE, suggested="question")
    return scripted


def held(manager: CampaignManager, clock: ManualClock, users: Sequence[int]) -> None:
    """A campaign of four whose ``users`` replied UNSURE, a minute apart, in that order."""
    manager.create_campaign(sample_campaign(4))
    manager.initialize_campaign_conversations("camp-1")
    manager.process_due_conversations("camp-1")
    for index in users:
        clock.advance(timedelta(minutes=1))
        manager.record_inbound_message("camp-1", f"user-{index:05d}", f"in-{index}", UNSURE)


def test_the_queue_is_indexed_and_answers_oldest_first(
    wire_db: Any, make_manager: ManagerFactory, clock: ManualClock
) -> None:
    manager = make_manager(wire_db, understanding=understanding())
    held(manager, clock, [2, 0, 3])
    indexes = {i["name"]: i["key"] for i in wire_db["conversation_states"].list_indexes()}
    assert list(indexes["review_pending"]) == ["review_pending_since"]
    assert list(indexes["campaign_review_pending"]) == ["campaign_id", "review_pending_since"]
    assert list(indexes["review_message"]) == ["reviews.message_id"]
    assert "resolved_at" in {i["name"] for i in wire_db[LABELS].list_indexes()}

    assert [row["message_id"] for row in manager.list_reviews()] == ["in-2", "in-0", "in-3"]
    assert [row["message_id"] for row in manager.list_reviews("camp-1", limit=2)] == [
        "in-2",
        "in-0",
    ]
    manager.resolve_reply("in-0", "question")
    assert [row["message_id"] for row in manager.list_reviews()] == ["in-2", "in-3"]
    assert manager.get_campaign_metrics("camp-1")["reviews"] == {"pending": 2, "resolved": 1}
    assert manager.reconcile_campaign_metrics("camp-1") == {}  # the aggregation agrees
    [line] = manager.export_labels()
    assert line.startswith(f"question\t{UNSURE}\t")


def test_two_resolutions_racing_advance_the_conversation_once(
    wire_db: Any,
    make_manager: ManagerFactory,
    extra_client: Callable[[], pymongo.MongoClient[Doc]],
    clock: ManualClock,
) -> None:
    held(make_manager(wire_db, understanding=understanding()), clock, [1])
    managers = [
        make_manager(extra_client()[wire_db.name], understanding=understanding()) for _ in "ab"
    ]
    barrier = threading.Barrier(len(managers))
    for manager in managers:
        # Each writes only once both have read the held conversation: a real race.
        repo = manager.conversation_state_repository
        write = repo.write_transitions

        def racing(
            pairs: Sequence[tuple[ConversationState, ConversationState]],
            now: Any,
            write: Any = write,
        ) -> WriteOutcome:
            barrier.wait(timeout=30)
            return write(pairs, now)  # type: ignore[no-any-return]

        repo.write_transitions = racing  # type: ignore[method-assign,assignment]
    results: list[Doc] = []
    errors: list[BaseException] = []

    def resolve(manager: CampaignManager) -> None:
        try:
            results.append(manager.resolve_reply("in-1", "question", resolved_by="ops"))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=resolve, args=(m,)) for m in managers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    assert sorted(r["already_resolved"] for r in results) == [False, True]
    assert {r["current_stage"] for r in results} == {"consideration"}
    doc = wire_db["conversation_states"].find_one(
        {"_id": conversation_id_for("camp-1", "user-00001")}
    )
    outbound = [m for m in doc["message_history"] if m["direction"] == "outbound"]
    assert [m["metadata"]["stage"] for m in outbound] == ["awareness", "consideration"]
    assert wire_db["outbox"].count_documents({"conversation_id": doc["_id"]}) == 2
    assert wire_db[LABELS].count_documents({}) == 1
    metrics = managers[0].get_campaign_metrics("camp-1")
    assert metrics["reviews"] == {"pending": 0, "resolved": 1}
    assert managers[0].reconcile_campaign_metrics("camp-1") == {}
