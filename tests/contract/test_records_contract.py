"""The outbox, suppressions, frequency-cap slots, template versions and the invariant
checker's reads: their contract, on every backend."""

from __future__ import annotations

from datetime import timedelta

from campaign_worker.adapters.template_files import parse_template
from campaign_worker.domain.audited import AuditedConversation
from campaign_worker.domain.suppressions import FrequencyCap, Suppression
from campaign_worker.service.ports import SendRequest
from tests.contract.support import MINUTE, START, Store, envelope, sent, state, users

HOUR = timedelta(hours=1)


def test_publishing_is_idempotent_by_message_id(store: Store) -> None:
    outbox = store.repos.outbox
    assert outbox.enqueue_many([envelope("m-1"), envelope("m-2", variant="B")]) == 2
    assert outbox.enqueue_many([envelope("m-2"), envelope("m-3")]) == 1
    assert outbox.enqueue_many([]) == 0
    rows = {row["_id"]: row for row in store.db["outbox"].find({})}
    assert sorted(rows) == ["m-1", "m-2", "m-3"]
    assert rows["m-2"]["metadata"] == {"variant": "B"} and "metadata" not in rows["m-1"]
    assert rows["m-1"] == {**envelope("m-1").outbox_row()}


def test_suppressions_keep_their_first_reason_and_list_oldest_first(store: Store) -> None:
    entries = store.repos.suppressions
    first = Suppression("user:u-1", "stop", "opt_out", START, user_id="u-1", campaign_id="c")
    mail = Suppression(
        "address:email:a@x", "bounce", "bounce", START + MINUTE, channel="email", address="a@x"
    )
    assert entries.add_many([mail, first]) == 2
    assert entries.add_many([first.__class__(**{**vars(first), "reason": "again"})]) == 0
    assert entries.matching(["user:u-1", "user:nobody"]) == {"user:u-1": first}
    assert entries.matching([]) == {}
    assert entries.list() == [first, mail]
    assert entries.list(channel="email") == [mail]
    assert entries.list(user_id="u-1", limit=1) == [first]
    assert entries.lift("user:u-1") == first
    assert entries.lift("user:u-1") is None
    assert entries.list() == [mail]


def test_a_frequency_cap_gives_each_send_a_slot_in_its_window(store: Store) -> None:
    budget = store.repos.send_budget
    caps = {"sms": FrequencyCap(2, HOUR)}
    asks = [SendRequest("sms", "u-1", f"m-{i}") for i in range(3)]
    assert budget.reserve(asks, caps, START) == {"m-2": START + HOUR}
    # A replay of a send keeps its slot (taken again now); another send still waits.
    assert budget.reserve(asks[:2], caps, START + MINUTE) == {}
    later = START + 10 * MINUTE
    ask = [SendRequest("sms", "u-1", "m-3")]
    assert budget.reserve(ask, caps, later) == {"m-3": START + MINUTE + HOUR}
    assert budget.reserve([SendRequest("sms", "u-2", "m-4")], caps, later) == {}  # other user
    assert budget.reserve([SendRequest("email", "u-1", "m-5")], caps, later) == {}  # uncapped
    freed = START + MINUTE + HOUR
    assert budget.reserve(ask, caps, freed) == {}
    one_an_hour = {"*": FrequencyCap(1, HOUR)}
    assert budget.reserve([SendRequest("sms", "u-1", "m-6")], one_an_hour, freed) == {
        "m-6": freed + HOUR
    }


TEMPLATE = """
template_id: contract
campaign_types:
  sales:
    stages:
      - name: hello
        messages:
          - text: "Hi {first_name}"
"""


def test_template_versions_are_registered_once_per_content(store: Store) -> None:
    versions = store.repos.template_versions
    first = parse_template(TEMPLATE, "contract.yaml")
    changed = parse_template(TEMPLATE.replace("Hi", "Hello"), "contract.yaml")
    one = versions.register(first, START, "file")
    assert one.version == 1 and versions.register(first, START + MINUTE).version == 1
    two = versions.register(changed, START + MINUTE, "file")
    assert two.version == 2 and two.content_hash != one.content_hash
    assert versions.get("contract", 2) == two
    assert versions.get("contract", 3) is None
    assert [v.version for v in versions.list("contract")] == [1, 2]
    assert versions.list("other") == []


def test_the_invariant_reads_project_conversations_and_outbox_rows(store: Store) -> None:
    conversations = store.repos.conversations
    conversations.insert_states([state(u) for u in users(5)] + [state("x", campaign_id="c-2")])
    one = state(users(1)[0])
    conversations.write_transitions([(one, sent(one, "out-1"))], START)
    store.repos.outbox.enqueue_many(
        [envelope("out-1", conversation_id=one.id), envelope("out-9", campaign_id="c-2")]
    )
    twin = {**state("user-0001").to_mongo(), "_id": "twin"}
    store.db["conversation_states"].drop_index("campaign_user_entry_unique")  # lets a twin in
    store.db["conversation_states"].insert_one(twin)
    reads = store.repos.invariant_reads
    batches = list(reads.conversations("camp-1", 2))
    assert [len(batch) for batch in batches] == [2, 2, 2]
    seen = {c.id: c for batch in batches for c in batch}
    assert sorted(seen) == sorted([*(state(u).id for u in users(5)), "twin"])
    audited = seen[one.id]
    assert audited == AuditedConversation.of(
        {**state(users(1)[0]).to_mongo(), **audited_fields(audited)}
    )
    assert [entry.message_id for entry in audited.history] == ["out-1"]
    assert audited.unpublished == ("out-1",) and audited.messages_sent == 1
    assert [c.id for c in reads.conversations_by_id([one.id, "missing"])] == [one.id]
    found = reads.conversations_of_users("camp-1", ["user-0001", "user-0003", "nobody"])
    assert sorted(found) == sorted(
        [
            (state("user-0001").id, "user-0001"),
            ("twin", "user-0001"),
            (state("user-0003").id, "user-0003"),
        ]
    )
    [row] = reads.outbox_rows([one.id])
    assert (row.id, row.status, row.stage, row.step, row.event_statuses) == (
        "out-1",
        "pending",
        "awareness",
        0,
        (),
    )
    assert reads.count_outbox("camp-1") == 1 and reads.count_outbox("c-2") == 1


def audited_fields(audited: AuditedConversation) -> dict[str, object]:
    """What a write changed, as stored (for a whole-document comparison)."""
    return {
        "message_history": [
            {
                "message_id": e.message_id,
                "direction": "inbound" if e.inbound else "outbound",
                "metadata": {"stage": e.stage, "step": e.step, "entry": e.visit},
            }
            for e in audited.history
        ],
        "metrics": {"messages_sent": audited.messages_sent, "messages_received": 0},
        "unpublished": list(audited.unpublished),
        "publish_due_at": audited.publish_due_at,
    }
