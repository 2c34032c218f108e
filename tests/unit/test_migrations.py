"""Pure parts of template versions and migrations: content hashes, the stage map, what a
migration does to one conversation, and the template diff."""

from __future__ import annotations

import pytest

from campaign_worker.domain.documents import ConversationState, ConversationStatus, message_id_for
from campaign_worker.domain.effects import Effects
from campaign_worker.domain.errors import InvalidInputError
from campaign_worker.domain.migrations import StageMap, Target, map_items, migrate, plan
from campaign_worker.domain.progression import run
from campaign_worker.domain.rules import visit_of
from campaign_worker.domain.template_diff import diff_templates
from campaign_worker.domain.templates import Template
from campaign_worker.domain.transitions import enter_stage
from campaign_worker.domain.versions import content_hash, content_of
from tests.unit.test_progression import DAY, T0, Flow, flow, msgs, new_state

A = flow(
    {"name": "intro", "messages": msgs("1d", "1d"), "advance_when": {"reply_received": True}},
    {"name": "pitch", "messages": msgs("1d"), "advance_when": {"reply_received": True}},
)
B = flow(
    {"name": "intro", "messages": msgs("1d"), "advance_when": {"reply_received": True}},
    {"name": "offer", "messages": msgs("1d", "1d"), "advance_when": {"reply_received": True}},
)


def test_content_hash_ignores_form_and_follows_content() -> None:
    template = A[0]
    again = Template.model_validate(content_of(template))
    assert again == template and content_hash(again) == content_hash(template)
    assert content_hash(B[0]) != content_hash(template)


@pytest.mark.parametrize(
    ("text", "target"),
    [
        ("offer", Target(stage="offer")),
        ("offer:enter", Target(stage="offer", enter=True)),
        ("exit:failed", Target(exit="failed")),
    ],
)
def test_targets_parse(text: str, target: Target) -> None:
    assert Target.parse(text) == target
    assert Target.parse(text).describe() == text


@pytest.mark.parametrize("text", ["exit:gone", "of fer", "offer:later", ""])
def test_bad_targets_are_refused(text: str) -> None:
    with pytest.raises(InvalidInputError):
        Target.parse(text)


def test_map_items_refuse_bad_and_doubled_entries() -> None:
    assert map_items(["pitch=offer", " a = exit:failed "]) == {"pitch": "offer", "a": "exit:failed"}
    for items in (["pitch"], ["=offer"], ["pitch=offer", "pitch=intro"]):
        with pytest.raises(InvalidInputError):
            map_items(items)
    with pytest.raises(InvalidInputError, match="not stages of the new version"):
        StageMap.parse({"pitch": "nowhere"}).check(B[1])


def in_stage(f: Flow, stage: str, sent: int) -> ConversationState:
    """A conversation of ``f`` that entered ``stage`` and sent ``sent`` of its messages."""
    state = new_state(f)
    now = T0
    state, _ = run(state, f[0], f[1], now)
    if state.current_stage != stage:
        state = enter_stage(state, stage, now)
    while state.stage_step < sent:
        now += DAY
        state, _ = run(state, f[0], f[1], now)
    return state


def migrated(
    state: ConversationState, stage_map: StageMap, to: Flow, version: int, days: int
) -> tuple[ConversationState, Effects]:
    """``state`` migrated to ``to`` (version ``version``) ``days`` after T0."""
    outcome = migrate(
        state, plan(state, to[1], version, stage_map), to[0], to[1], version, T0 + days * DAY
    )
    assert outcome is not None
    return outcome


def test_plan_keeps_moves_ends_and_reports_unresolved() -> None:
    pitch = in_stage(A, "pitch", 1)
    intro = in_stage(A, "intro", 2)
    assert plan(intro, B[1], 2, StageMap()).kind == "keep"
    unresolved = plan(pitch, B[1], 2, StageMap())
    assert (unresolved.kind, unresolved.reason) == ("unresolved", "stage pitch removed")
    ended = plan(pitch, B[1], 2, StageMap.parse({}, "exit:failed"))
    assert (ended.kind, ended.outcome, ended.key()) == (
        "end",
        "failed",
        "pitch -> exit:failed (stage pitch removed)",
    )
    moved = plan(pitch, B[1], 2, StageMap.parse({"pitch": "offer"}))
    assert (moved.kind, moved.key()) == ("move", "pitch -> offer")


def test_a_renamed_stage_keeps_its_place_and_never_reuses_a_message_id() -> None:
    state = in_stage(A, "pitch", 1)
    moved, effects = migrated(state, StageMap.parse({"pitch": "offer"}), B, 2, days=2)
    assert moved.current_stage == "offer" and moved.stage_step == 1
    assert moved.stages[-1].formerly == ["pitch"]
    assert effects.delta.stage_entered == {"offer": 1, "pitch": -1}
    # Its step 0 was sent (as pitch): the next message is offer's step 1, not step 0.
    later, sent = run(moved, B[0], B[1], T0 + 4 * DAY)
    assert [e.step for e in sent.outbound] == [1]
    ids = [m.message_id for m in later.message_history]
    assert len(ids) == len(set(ids))
    # Migrated back: the same entry, under both names; pitch's one message was sent
    # (as pitch, step 0), so nothing goes out again.
    returned, _ = migrated(later, StageMap.parse({"offer": "pitch"}), A, 1, days=5)
    assert returned.stages[-1].formerly == ["pitch", "offer"]
    assert visit_of(returned) == 0 and message_id_for(returned.id, "pitch", 0) in ids
    _, again = run(returned, A[0], A[1], T0 + 9 * DAY)
    assert not again.outbound


def test_enter_starts_the_stage_and_an_exit_ends_the_conversation() -> None:
    state = in_stage(A, "pitch", 1)
    entered, effects = migrated(state, StageMap.parse({"pitch": "offer:enter"}), B, 2, days=3)
    assert (entered.current_stage, entered.stage_step) == ("offer", 0)
    assert entered.context.available_stages == ["intro", "offer"]
    assert effects.delta.stage_entered == {"offer": 1}
    ended, effects = migrated(state, StageMap.parse({"pitch": "exit:completed"}), B, 2, days=3)
    assert ended.status == ConversationStatus.COMPLETED
    assert (effects.delta.active, effects.delta.completed) == (-1, 1)
    assert migrate(ended, plan(ended, B[1], 2, StageMap()), B[0], B[1], 2, T0) is None


def test_a_stage_with_fewer_messages_than_were_sent_does_not_crash() -> None:
    state = in_stage(A, "intro", 2)
    kept, _ = migrated(state, StageMap(), B, 2, days=3)
    later, effects = run(kept, B[0], B[1], T0 + 9 * DAY)
    assert not effects.outbound and later.status == ConversationStatus.ACTIVE


def test_diff_names_stage_and_message_changes() -> None:
    found = diff_templates(A[0], B[0])
    changes = found["campaign_types"]["x"]
    assert changes["stages_removed"] == ["pitch"] and changes["stages_added"] == ["offer"]
    assert changes["stages_changed"] == {"intro": ["message 1 removed"]}
    assert diff_templates(A[0], A[0])["identical"] is True
