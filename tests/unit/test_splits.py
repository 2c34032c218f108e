"""A/B splits and the holdout: template validation, deterministic weighted assignment
(property tests), what is recorded and published, and per-variant metrics that equal a
recount from the conversation documents."""

from __future__ import annotations

import hashlib
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from campaign_worker.adapters.clock import ManualClock
from campaign_worker.adapters.template_files import parse_template
from campaign_worker.domain.documents import ConversationState, Direction
from campaign_worker.domain.errors import InvalidTemplateError
from campaign_worker.domain.splits import (
    choose_variant,
    in_holdout,
    recount,
    variant_index,
)
from tests import fakes
from tests.conftest import START, ManagerFactory
from tests.splits_support import (
    SPLIT_TEMPLATE,
    conversations,
    drive_split_campaign,
    stored_split_counts,
    user,
    write_split_template,
)

fake_db = fakes.fake_db  # fixture: the in-memory database

# ---------------------------------------------------------------- templates


def _template(messages: list[Any], holdout: Any = None) -> str:
    import json

    sales: dict[str, Any] = {"stages": [{"name": "pitch", "messages": messages}]}
    if holdout is not None:
        sales["holdout"] = holdout
    return json.dumps({"template_id": "t", "campaign_types": {"sales": sales}})


def test_the_split_template_loads() -> None:
    template = parse_template(SPLIT_TEMPLATE, "ab.yaml")
    sales = template.campaign_types["sales"]
    assert sales.holdout == 0.25
    pitch = sales.stages[0]
    assert pitch.split == (("short", 3), ("long", 1))
    assert sales.stages[1].split == ()


@pytest.mark.parametrize(
    ("messages", "holdout", "expected"),
    [
        (
            [{"text": "Hi", "variants": [{"id": "a", "text": "A"}]}],
            None,
            "stage 'pitch' field campaign_types.sales.stages.0.messages.0: "
            "Value error, a message needs exactly one of text, variants",
        ),
        (
            [{"wait": "1d"}],
            None,
            "messages.0: Value error, a message needs exactly one of text, variants",
        ),
        (
            [{"variants": [{"id": "a", "text": "A"}, {"id": "a", "text": "B"}]}],
            None,
            "field campaign_types.sales.stages.0.messages.0.variants: "
            "Value error, duplicate variant ids: ['a']",
        ),
        (
            [{"variants": [{"id": "a", "weight": 0, "text": "A"}]}],
            None,
            "messages.0.variants.0.weight: Input should be greater than or equal to 1",
        ),
        (
            [{"variants": [{"id": "a.b", "text": "A"}]}],
            None,
            "messages.0.variants.0.id: String should match pattern",
        ),
        (
            [{"variants": [{"id": "a", "text": "{0}"}]}],
            None,
            "messages.0.variants.0.text: Value error, placeholder {0} must be a plain",
        ),
        (
            [{"variants": []}],
            None,
            "messages.0.variants: List should have at least 1 item",
        ),
        (
            [
                {"variants": [{"id": "a", "text": "A"}, {"id": "b", "text": "B"}]},
                {"variants": [{"id": "a", "text": "A2"}, {"id": "c", "text": "C2"}]},
            ],
            None,
            "stage 'pitch' field campaign_types.sales.stages.0: Value error, "
            "messages.1.variants: ids and weights [('a', 1), ('c', 1)] differ from "
            "messages.0.variants [('a', 1), ('b', 1)] (a stage is one split)",
        ),
        ([{"text": "Hi"}], 1, "field campaign_types.sales.holdout: Input should be less than 1"),
        ([{"text": "Hi"}], -0.1, "campaign_types.sales.holdout: Input should be greater than"),
    ],
)
def test_invalid_splits_name_file_stage_and_field(
    messages: list[Any], holdout: Any, expected: str
) -> None:
    with pytest.raises(InvalidTemplateError) as caught:
        parse_template(_template(messages, holdout), "/etc/cw/t.json")
    assert str(caught.value).startswith("invalid template /etc/cw/t.json: ")
    assert expected in str(caught.value)


def test_a_stage_may_mix_plain_and_split_messages() -> None:
    template = parse_template(
        _template(
            [
                {"text": "Hi"},
                {"variants": [{"id": "a", "text": "A"}, {"id": "b", "weight": 2, "text": "B"}]},
            ]
        ),
        "t.json",
    )
    assert template.campaign_types["sales"].stages[0].split == (("a", 1), ("b", 2))


# ---------------------------------------------------------------- assignment

names = st.text(min_size=1, max_size=40)
PINNED = [1, 0, 0, 1, 1, 1]  # variant_index("camp", "user-{i}", "pitch", [1, 1]), i < 6
weights = st.lists(st.integers(min_value=1, max_value=1000), min_size=1, max_size=8)


@settings(max_examples=300, deadline=None)
@given(campaign=names, user_id=names, stage=names, ws=weights)
def test_assignment_is_deterministic_and_in_range(
    campaign: str, user_id: str, stage: str, ws: list[int]
) -> None:
    index = variant_index(campaign, user_id, stage, ws)
    assert 0 <= index < len(ws)
    assert variant_index(campaign, user_id, stage, list(ws)) == index
    # The documented rule, recomputed: sha256 of "campaign|user|stage", first 8 bytes,
    # modulo the total weight, walked through the cumulative weights.
    digest = hashlib.sha256(f"{campaign}|{user_id}|{stage}".encode()).digest()
    bucket = int.from_bytes(digest[:8], "big") % sum(ws)
    assert sum(ws[:index]) <= bucket < sum(ws[: index + 1])


@settings(max_examples=25, deadline=None)
@given(ws=st.lists(st.integers(min_value=1, max_value=9), min_size=2, max_size=4))
def test_assignment_respects_the_weights(ws: list[int]) -> None:
    """Over 4,000 recipients each variant's share is within 3.5 points of its weight's
    (more than 5 standard deviations at these sizes)."""
    n = 4000
    counts = Counter(variant_index("camp", f"user-{i}", "pitch", ws) for i in range(n))
    for index, weight in enumerate(ws):
        assert abs(counts[index] / n - weight / sum(ws)) < 0.035


@pytest.mark.parametrize("bad", [[], [0], [2, -1]])
def test_weights_must_be_positive(bad: list[int]) -> None:
    with pytest.raises(ValueError):
        variant_index("c", "u", "s", bad)


def test_variants_differ_by_stage_and_campaign_not_by_process() -> None:
    """Keyed by (campaign, user, stage): another stage or campaign re-draws; a fixed
    triple always gives the same (sha256, not Python's per-process hash())."""
    template = parse_template(SPLIT_TEMPLATE, "ab.yaml")
    variants = template.campaign_types["sales"].stages[0].messages[0].variants
    assert variants is not None
    picks = {choose_variant("ab-1", user(i), "pitch", variants).id for i in range(50)}
    assert picks == {"short", "long"}
    # Pinned: a change of the hash would silently reshuffle running campaigns.
    pinned = [variant_index("camp", f"user-{i}", "pitch", [1, 1]) for i in range(6)]
    assert pinned == PINNED
    by_stage = [variant_index("camp", f"u{i}", "other", [1, 1]) for i in range(64)]
    by_pitch = [variant_index("camp", f"u{i}", "pitch", [1, 1]) for i in range(64)]
    assert by_stage != by_pitch


@settings(max_examples=200, deadline=None)
@given(campaign=names, user_id=names, share=st.floats(0.0, 0.99))
def test_holdout_is_deterministic_and_monotonic(campaign: str, user_id: str, share: float) -> None:
    held = in_holdout(campaign, user_id, share)
    assert in_holdout(campaign, user_id, share) is held
    if held:  # a larger share keeps everyone already held out
        assert in_holdout(campaign, user_id, min(0.99, share + 0.1))
    assert not in_holdout(campaign, user_id, 0.0)


def test_holdout_share() -> None:
    held = sum(in_holdout("camp", f"user-{i}", 0.1) for i in range(10_000))
    assert 850 < held < 1150


# ---------------------------------------------------------------- a campaign


@pytest.fixture
def split_manager(tmp_path: Path, fake_db: Any, make_manager: ManagerFactory) -> Any:
    write_split_template(tmp_path)
    return make_manager(fake_db, campaign_templates_dir=tmp_path)


def test_messages_carry_their_variant_and_the_holdout_gets_nothing(
    split_manager: Any, fake_db: Any, clock: ManualClock
) -> None:
    drive_split_campaign(split_manager, clock, 80)
    states = conversations(fake_db, "ab-1")
    outbox = {row["_id"]: row for row in fake_db["outbox"].find({"campaign_id": "ab-1"})}
    held = [s for s in states if s.holdout]
    assert {s.user_id for s in held} == {
        user(i) for i in range(80) if in_holdout("ab-1", user(i), 0.25)
    }
    assert 8 <= len(held) <= 32
    texts = {
        "short": ("Hi P", "Still interested, P"),
        "long": ("Hello P", "A reminder of our spring offer, P"),
    }
    for state in states:
        outbound = [m for m in state.message_history if m.direction == Direction.OUTBOUND]
        assert outbound, state.user_id
        for message in outbound:
            if state.holdout:
                # Recorded for the clock, never published.
                assert message.metadata["withheld"] is True and message.content == ""
                assert "variant" not in message.metadata
                assert message.message_id not in outbox
                continue
            row = outbox[message.message_id]
            if message.metadata["stage"] != "pitch":
                assert "variant" not in message.metadata and "metadata" not in row
                continue
            expected = variant_index("ab-1", state.user_id, "pitch", [3, 1])
            variant = ("short", "long")[expected]
            assert message.metadata["variant"] == variant
            assert row["metadata"] == {"variant": variant}
            assert message.content.startswith(texts[variant][message.metadata["step"]])
        assert state.metrics.messages_sent == (0 if state.holdout else len(outbound))
        for reply in (m for m in state.message_history if m.direction == Direction.INBOUND):
            if state.holdout or reply.metadata["stage"] != "pitch":
                assert "variant" not in reply.metadata
            else:
                assert reply.metadata["variant"] == outbound[0].metadata["variant"]
    assert all(s.status.value != "active" for s in states)


def test_per_variant_metrics_equal_a_recount_of_the_conversations(
    split_manager: Any, fake_db: Any, clock: ManualClock
) -> None:
    drive_split_campaign(split_manager, clock, 120)
    metrics = split_manager.get_campaign_metrics("ab-1")
    states = conversations(fake_db, "ab-1")
    assert stored_split_counts(metrics) == recount(states)
    pitch = metrics["variants"]["pitch"]
    assert set(pitch) == {"short", "long"}
    treated = [s for s in states if not s.holdout]
    assert pitch["short"]["conversations"] + pitch["long"]["conversations"] == len(treated)
    assert pitch["short"]["conversations"] > pitch["long"]["conversations"]  # 3:1
    assert sum(v["replies"] for v in pitch.values()) > 0
    assert sum(v["advanced"] for v in pitch.values()) > 0
    assert pitch["short"]["intents"].get("positive", 0) > 0
    holdout = metrics["holdout"]
    held = [s for s in states if s.holdout]
    assert holdout["conversations"] == len(held) > 0
    assert holdout["active"] == 0
    assert sum(holdout[k] for k in ("completed", "failed", "opted_out", "cancelled")) == len(held)
    assert holdout["replies"] == sum(
        m.direction == Direction.INBOUND for s in held for m in s.message_history
    )
    # The campaign's own counters include the holdout; nothing the holdout did was sent.
    assert metrics["total_recipients"] == 120
    assert metrics["message_metrics"]["total_sent"] == len(
        list(fake_db["outbox"].find({"campaign_id": "ab-1"}))
    )


def test_recount_of_a_known_history() -> None:
    """The recount's rules on one conversation written out by hand."""
    at = START
    doc: dict[str, Any] = {
        "_id": "c1",
        "user_id": "u1",
        "campaign_id": "c",
        "campaign_type": "sales",
        "current_stage": "close",
        "stages": [
            {"name": "pitch", "entered_at": at, "exited_at": at, "completed": True},
            {"name": "close", "entered_at": at},
        ],
        "message_history": [
            _msg("o1", "outbound", "pitch", 0, variant="b"),
            _msg("o2", "outbound", "pitch", 0, variant="b"),
            _msg("i1", "inbound", "pitch", 0, variant="b", intent="positive"),
            _msg("o3", "outbound", "close", 1),
            _msg("i2", "inbound", "close", 1, intent="question"),
        ],
        "context": {"template_id": "ab", "available_stages": ["pitch", "close"]},
        "created_at": at,
        "last_active": at,
    }
    held = {**doc, "_id": "c2", "holdout": True, "status": "failed", "message_history": []}
    held["message_history"] = [_msg("i3", "inbound", "pitch", 0, intent="other")]
    states = [ConversationState.model_validate(d) for d in (doc, held)]
    assert recount(states) == {
        "variants.pitch.b.sent": 2,
        "variants.pitch.b.conversations": 1,
        "variants.pitch.b.replies": 1,
        "variants.pitch.b.intents.positive": 1,
        "variants.pitch.b.advanced": 1,
        "holdout.conversations": 1,
        "holdout.failed": 1,
        "holdout.replies": 1,
    }


def _msg(
    message_id: str, direction: str, stage: str, entry: int, **metadata: Any
) -> dict[str, Any]:
    return {
        "message_id": message_id,
        "direction": direction,
        "content": "x",
        "timestamp": START + timedelta(minutes=len(message_id)),
        "metadata": {"stage": stage, "entry": entry, **metadata},
    }


def test_a_metrics_document_shows_every_variant_of_the_template_before_any_send(
    split_manager: Any,
) -> None:
    split_manager.create_campaign(
        {
            "_id": "ab-0",
            "name": "A/B",
            "campaign_type": "sales",
            "template_id": "ab",
            "recipients": [{"user_id": "u-1"}],
        }
    )
    metrics = split_manager.get_campaign_metrics("ab-0")
    zero = {"conversations": 0, "sent": 0, "replies": 0, "advanced": 0, "intents": {}}
    assert metrics["variants"] == {"pitch": {"short": zero, "long": zero}}
    assert metrics["holdout"] == {
        "conversations": 0,
        "active": 0,
        "completed": 0,
        "failed": 0,
        "opted_out": 0,
        "cancelled": 0,
        "replies": 0,
    }


def test_a_campaign_without_splits_keeps_the_seed_shape(manager: Any) -> None:
    from tests.conftest import sample_campaign

    manager.create_campaign(sample_campaign(3))
    metrics = manager.get_campaign_metrics("camp-1")
    assert "variants" not in metrics and "holdout" not in metrics


def test_a_reply_cannot_claim_a_variant(
    split_manager: Any, fake_db: Any, clock: ManualClock
) -> None:
    """``metadata.variant`` names a metrics field: a client's own is dropped, the
    variant recorded is the one the reply answers (none for the holdout)."""
    split_manager.create_campaign(
        {
            "_id": "ab-2",
            "name": "A/B",
            "campaign_type": "sales",
            "template_id": "ab",
            "recipients": [{"user_id": user(i)} for i in range(12)],
        }
    )
    split_manager.initialize_campaign_conversations("ab-2")
    split_manager.process_due_conversations("ab-2")
    held = [user(i) for i in range(12) if in_holdout("ab-2", user(i), 0.25)]
    treated = [user(i) for i in range(12) if user(i) not in held]
    assert held and treated
    for target in (held[0], treated[0]):
        split_manager.record_inbound_message(
            "ab-2", target, f"in-{target}", "hmm", metadata={"variant": "x.$e", "channel": "sms"}
        )
    states = {s.user_id: s for s in conversations(fake_db, "ab-2")}
    for target in (held[0], treated[0]):
        reply = next(m for m in states[target].message_history if m.message_id == f"in-{target}")
        assert reply.metadata["channel"] == "sms"
        sent = states[target].message_history[0].metadata.get("variant")
        assert reply.metadata.get("variant") == sent
    assert sent in ("short", "long")
    metrics = split_manager.get_campaign_metrics("ab-2")
    assert set(metrics["variants"]["pitch"]) == {"short", "long"}
    assert metrics["holdout"]["replies"] == 1
    assert stored_split_counts(metrics) == recount(conversations(fake_db, "ab-2"))


def test_the_reconcile_recounts_variants_and_the_holdout(
    split_manager: Any, fake_db: Any, clock: ManualClock
) -> None:
    drive_split_campaign(split_manager, clock, 60)
    assert split_manager.reconcile_campaign_metrics("ab-1") == {}
    # A writer that died between its conversation write and its increment: lost counts.
    fake_db["campaign_metrics"].update_one(
        {"_id": "ab-1"},
        {
            "$inc": {"variants.pitch.short.sent": -2, "holdout.failed": -1},
            "$unset": {"variants.pitch.long.intents": ""},
        },
    )
    drift = split_manager.reconcile_campaign_metrics("ab-1")
    assert drift["variants.pitch.short.sent"] == 2 and drift["holdout.failed"] == 1
    assert any(key.startswith("variants.pitch.long.intents.") for key in drift)
    metrics = split_manager.get_campaign_metrics("ab-1")
    assert stored_split_counts(metrics) == recount(conversations(fake_db, "ab-1"))


def test_the_metrics_command_shows_variants_and_the_holdout(
    split_manager: Any, fake_db: Any, clock: ManualClock
) -> None:
    from rich.console import Console

    from campaign_worker.entrypoints.cli.conversations import messages_table, with_statuses
    from campaign_worker.entrypoints.cli.metrics import funnel, render

    drive_split_campaign(split_manager, clock, 40)
    metrics = split_manager.get_campaign_metrics("ab-1")
    report = funnel(metrics)
    rows = {row["variant"]: row for row in report["variants"]}
    short = metrics["variants"]["pitch"]["short"]
    assert rows["short"]["stage"] == "pitch"
    assert rows["short"]["replies"] == short["replies"]
    assert rows["short"]["reply_rate"] == pytest.approx(short["replies"] / short["conversations"])
    held = metrics["holdout"]
    others = report["holdout"]["others"]
    assert others["conversations"] == 40 - held["conversations"]
    assert others["completed"] == metrics["completed_conversations"] - held["completed"]

    out = Console(record=True, width=200)
    out.print(render(report))
    text = out.export_text()
    assert "variants" in text and "short" in text and "long" in text
    assert f"holdout: {held['conversations']} conversations, completed {held['completed']}" in text
    assert f"everyone else: completed {others['completed']} of {others['conversations']}" in text

    # One conversation of each group, as `conversations show` lists its messages.
    states = conversations(fake_db, "ab-1")
    for state in (next(s for s in states if s.holdout), next(s for s in states if not s.holdout)):
        doc = with_statuses(split_manager.get_conversation(state.id))
        out = Console(record=True, width=200)
        out.print(messages_table(doc))
        shown = out.export_text()
        if state.holdout:
            assert "withheld" in shown and "(short)" not in shown and "(long)" not in shown
        else:
            assert "pitch (short)" in shown or "pitch (long)" in shown


def test_a_recipient_keeps_the_variant_of_their_stage_visit_when_weights_change(
    split_manager: Any, fake_db: Any, clock: ManualClock, tmp_path: Path
) -> None:
    split_manager.create_campaign(
        {
            "_id": "ab-3",
            "name": "A/B",
            "campaign_type": "sales",
            "template_id": "ab",
            "recipients": [{"user_id": user(i)} for i in range(30)],
        }
    )
    split_manager.initialize_campaign_conversations("ab-3")
    split_manager.process_due_conversations("ab-3")
    # The operator turns the split round (1:3) while the campaign runs.
    edited = SPLIT_TEMPLATE.replace("weight: 3", "weight: 1").replace(
        "{id: long, weight: 1", "{id: long, weight: 3"
    )
    (tmp_path / "ab.yaml").write_text(edited, encoding="utf-8")
    split_manager.config_manager.reload()
    assert split_manager.config_manager.get_template("ab").campaign_types["sales"].stages[
        0
    ].split == (("short", 1), ("long", 3))
    clock.advance(timedelta(days=1, hours=1))
    split_manager.process_due_conversations("ab-3")
    moved = 0
    for state in conversations(fake_db, "ab-3"):
        if state.holdout:
            continue
        sent = [m.metadata["variant"] for m in state.message_history if m.metadata.get("variant")]
        assert len(sent) == 2 and sent[0] == sent[1], state.user_id
        moved += sent[0] != ("short", "long")[variant_index("ab-3", state.user_id, "pitch", [1, 3])]
    assert moved > 0  # the new weights would have switched some of them
    metrics = split_manager.get_campaign_metrics("ab-3")
    assert stored_split_counts(metrics) == recount(conversations(fake_db, "ab-3"))


LOOP_TEMPLATE = """
template_id: loop
campaign_types:
  sales:
    stages:
      - name: pitch
        messages:
          - variants: [{id: a, text: "Offer A"}, {id: b, text: "Offer B"}]
            wait: 1d
        on_reply: {question: faq, positive: {exit: completed}}
        max_time_in_stage: {after: 5d, then: fail}
      - name: faq
        messages: [{text: "Here is how it works", wait: 1d}]
        advance_when: {reply_received: any}  # "I see" (other) too
        next: pitch
        max_time_in_stage: {after: 5d, then: fail}
"""


def test_a_stage_visited_twice_counts_two_visits_of_its_variant(
    tmp_path: Path, fake_db: Any, make_manager: ManagerFactory, clock: ManualClock
) -> None:
    (tmp_path / "loop.yaml").write_text(LOOP_TEMPLATE, encoding="utf-8")
    manager = make_manager(fake_db, campaign_templates_dir=tmp_path)
    manager.create_campaign(
        {
            "_id": "loop-1",
            "name": "Loop",
            "campaign_type": "sales",
            "template_id": "loop",
            "recipients": [{"user_id": "u-1"}],
        }
    )
    manager.initialize_campaign_conversations("loop-1")
    manager.process_due_conversations("loop-1")
    clock.advance(timedelta(hours=1))
    assert (
        manager.record_inbound_message("loop-1", "u-1", "in-1", "How does it work?")[
            "current_stage"
        ]
        == "faq"
    )
    clock.advance(timedelta(hours=1))
    back = manager.record_inbound_message("loop-1", "u-1", "in-2", "I see")
    assert back["current_stage"] == "pitch"  # visit 2: the pitch goes out again
    clock.advance(timedelta(hours=1))
    assert manager.record_inbound_message("loop-1", "u-1", "in-3", "yes")["status"] == "completed"

    variant = ("a", "b")[variant_index("loop-1", "u-1", "pitch", [1, 1])]
    metrics = manager.get_campaign_metrics("loop-1")
    assert metrics["variants"]["pitch"][variant] == {
        "conversations": 2,  # stage visits
        "sent": 2,
        "replies": 2,
        "advanced": 2,  # to faq, then completed
        "intents": {"question": 1, "positive": 1},
    }
    other = "b" if variant == "a" else "a"
    assert metrics["variants"]["pitch"][other]["sent"] == 0
    assert "holdout" not in metrics
    assert stored_split_counts(metrics) == recount(conversations(fake_db, "loop-1"))
