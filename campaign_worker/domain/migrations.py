"""Migrating a conversation to another template version: the stage map and what it
does to one conversation. Pure.

A stage map sends each old stage to a target:

- ``new`` (the stage under another name, or merged into it): the conversation keeps its
  place: the same stage entry (renamed; its messages and replies still count), the
  same step and entry time. Messages already sent are never sent again.
- ``new:enter``: the conversation enters ``new`` from its start, as if it advanced
  there (counted like an advance: old stage completed, new stage entered).
- ``exit:<outcome>``: the conversation ends (completed, failed or opted_out).

A stage the new version still has and the map does not name stays as it is. A stage
the new version lacks and the map does not name is *unresolved*: a dry run reports it
("stage X removed") and applying refuses unless the map or a default covers it.

Texts: messages not yet sent go out with the new version's texts; recorded ones stay as
they were sent. A stage with fewer messages than a conversation already sent in it has
sent them all: its rules and timeouts decide what comes next (``rules.wait_after``).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from campaign_worker.domain.documents import FINISHED_STATUSES, ConversationState
from campaign_worker.domain.effects import Action, Decision, Effects
from campaign_worker.domain.errors import InvalidInputError
from campaign_worker.domain.templates import CampaignTypeTemplate, Template
from campaign_worker.domain.transitions import apply

_STAGE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_OUTCOMES: dict[str, Action] = {
    "completed": Action.COMPLETE,
    "failed": Action.FAIL,
    "opted_out": Action.OPT_OUT,
}


@dataclass(frozen=True)
class Target:
    """Where an old stage goes: a stage (kept place, or ``enter`` from its start) or an
    exit with an outcome."""

    stage: str | None = None
    enter: bool = False
    exit: Literal["completed", "failed", "opted_out"] | None = None

    @classmethod
    def parse(cls, text: str) -> Target:
        """``stage``, ``stage:enter`` or ``exit:<completed|failed|opted_out>``."""
        text = text.strip()
        if text.startswith("exit:"):
            outcome = text.removeprefix("exit:")
            if outcome not in _OUTCOMES:
                raise InvalidInputError(
                    f"stage map target {text!r}: outcome must be one of {sorted(_OUTCOMES)}"
                )
            return cls(exit=outcome)  # type: ignore[arg-type]
        stage, _, mode = text.partition(":")
        if not _STAGE.match(stage) or mode not in ("", "enter"):
            raise InvalidInputError(
                f"stage map target {text!r}: expected STAGE, STAGE:enter or exit:OUTCOME"
            )
        return cls(stage=stage, enter=mode == "enter")

    def describe(self) -> str:
        if self.exit is not None:
            return f"exit:{self.exit}"
        return f"{self.stage}:enter" if self.enter else str(self.stage)


def map_items(items: list[str]) -> dict[str, str]:
    """``old=new`` strings (the CLI's ``--map``) as a mapping."""
    pairs: dict[str, str] = {}
    for item in items:
        old, sep, new = item.partition("=")
        if not sep or not old.strip() or not new.strip():
            raise InvalidInputError(f"stage map entry {item!r}: expected OLD=NEW")
        if old.strip() in pairs:
            raise InvalidInputError(f"stage map: {old.strip()!r} is mapped twice")
        pairs[old.strip()] = new.strip()
    return pairs


@dataclass(frozen=True)
class StageMap:
    """Old stage -> target, and the target of removed stages the map does not name."""

    targets: dict[str, Target] = field(default_factory=dict)
    default: Target | None = None

    @classmethod
    def parse(cls, pairs: dict[str, str], default: str | None = None) -> StageMap:
        for old in pairs:
            if not _STAGE.match(old):
                raise InvalidInputError(f"stage map: {old!r} is not a stage name")
        return cls(
            {old: Target.parse(new) for old, new in pairs.items()},
            Target.parse(default) if default else None,
        )

    def as_doc(self) -> dict[str, Any]:
        return {
            "map": {old: target.describe() for old, target in sorted(self.targets.items())},
            "default": None if self.default is None else self.default.describe(),
        }

    def check(self, to: CampaignTypeTemplate) -> None:
        """Every stage target exists in the new version."""
        wanted = [t for t in [*self.targets.values(), self.default] if t and t.stage]
        missing = sorted({str(t.stage) for t in wanted if to.stage(str(t.stage)) is None})
        if missing:
            raise InvalidInputError(
                f"stage map targets {missing} are not stages of the new version "
                f"(its stages: {to.stage_names})"
            )


@dataclass(frozen=True)
class Move:
    """What a migration does to one conversation."""

    kind: Literal["keep", "move", "enter", "end", "unresolved", "finished", "already"]
    from_stage: str
    to_stage: str | None = None
    outcome: str | None = None
    reason: str = ""

    def key(self) -> str:
        """How a report groups it."""
        if self.kind in ("keep", "move", "enter"):
            return f"{self.from_stage} -> {self.to_stage}"
        if self.kind == "end":
            return f"{self.from_stage} -> exit:{self.outcome} ({self.reason})"
        if self.kind == "unresolved":
            return f"{self.from_stage}: {self.reason}"
        return self.from_stage


def plan(
    state: ConversationState, to: CampaignTypeTemplate, to_version: int, stage_map: StageMap
) -> Move:
    """What migrating ``state`` to version ``to_version`` (``to``) does."""
    stage = state.current_stage
    if state.status in FINISHED_STATUSES:
        return Move("finished", stage)
    if state.context.template_version == to_version:
        return Move("already", stage)
    target = stage_map.targets.get(stage)
    if target is None:
        if to.stage(stage) is not None:
            return Move("keep", stage, stage)
        target = stage_map.default
        if target is None:
            return Move("unresolved", stage, reason=f"stage {stage} removed")
    if target.exit is not None:
        why = "mapped" if stage in stage_map.targets else f"stage {stage} removed"
        return Move("end", stage, outcome=target.exit, reason=why)
    if target.enter:
        return Move("enter", stage, target.stage)
    return Move("keep" if target.stage == stage else "move", stage, target.stage)


def migrate(
    state: ConversationState,
    move: Move,
    template: Template,
    to: CampaignTypeTemplate,
    to_version: int,
    now: datetime,
) -> tuple[ConversationState, Effects] | None:
    """``state`` on version ``to_version`` as ``move`` says, and its effects (metrics of
    an exit or a stage entered); None when there is nothing to write."""
    if move.kind in ("finished", "already"):
        return None
    if move.kind == "unresolved":
        raise InvalidInputError(f"conversation {state.id}: {move.reason}; map it or give a default")
    effects = Effects()
    context = state.context.model_copy(
        update={"template_version": to_version, "available_stages": _stages(state, to)}
    )
    moved = state.model_copy(update={"context": context, "next_action_at": now})
    if move.kind == "end":
        decision = Decision(_OUTCOMES[str(move.outcome)], f"migration: {move.reason}")
        return apply(moved, decision, template, to, now, effects), effects
    assert move.to_stage is not None
    if move.kind == "enter":
        decision = Decision(Action.ADVANCE, "migration", next_stage=move.to_stage)
        entered = apply(moved, decision, template, to, now, effects)
        context = entered.context.model_copy(update={"available_stages": to.stage_names})
        return entered.model_copy(update={"context": context}), effects
    if move.kind == "move":
        moved = _rename_entry(moved, move.to_stage)
        # The entry counts as entered under its new name now (stage metrics = recount).
        effects.delta.stage_entered[move.to_stage] += 1
        effects.delta.stage_entered[move.from_stage] -= 1
        context = moved.context.model_copy(update={"available_stages": to.stage_names})
        moved = moved.model_copy(update={"context": context})
    return moved, effects


def _stages(state: ConversationState, to: CampaignTypeTemplate) -> list[str]:
    """The new version's stages; the current one kept while it is still being left
    (an exit happens in it, and validation wants it listed)."""
    names = to.stage_names
    return names if state.current_stage in names else [*names, state.current_stage]


def _rename_entry(state: ConversationState, to_stage: str) -> ConversationState:
    """The current entry under its new name, its old name remembered."""
    index = next(
        i
        for i in range(len(state.stages) - 1, -1, -1)
        if state.stages[i].name == state.current_stage
    )
    entry = state.stages[index]
    renamed = entry.model_copy(update={"name": to_stage, "formerly": [*entry.formerly, entry.name]})
    stages = [*state.stages[:index], renamed, *state.stages[index + 1 :]]
    return state.model_copy(update={"current_stage": to_stage, "stages": stages})


@dataclass
class Report:
    """Counts of a migration (dry run or applied): moves by ``from -> to``, ends by stage,
    outcome and reason, what is unresolved, and what needed nothing."""

    moved: Counter[str] = field(default_factory=Counter)
    ended: Counter[str] = field(default_factory=Counter)
    unresolved: Counter[str] = field(default_factory=Counter)
    already: int = 0
    conflicts: int = 0

    def add(self, move: Move) -> None:
        if move.kind in ("keep", "move", "enter"):
            self.moved[move.key()] += 1
        elif move.kind == "end":
            self.ended[move.key()] += 1
        elif move.kind == "unresolved":
            self.unresolved[move.key()] += 1
        elif move.kind == "already":
            self.already += 1

    def merge(self, other: Report) -> None:
        self.moved.update(other.moved)
        self.ended.update(other.ended)
        self.unresolved.update(other.unresolved)
        self.already += other.already
        self.conflicts += other.conflicts

    @property
    def total(self) -> int:
        return sum(self.moved.values()) + sum(self.ended.values())

    def as_doc(self) -> dict[str, Any]:
        return {
            "moved": dict(sorted(self.moved.items())),
            "ended": dict(sorted(self.ended.items())),
            "unresolved": dict(sorted(self.unresolved.items())),
            "already": self.already,
            "migrated": self.total,
            # Writes that lost to a concurrent writer and were planned again.
            "conflicts": self.conflicts,
        }


__all__ = ["Move", "Report", "StageMap", "Target", "map_items", "migrate", "plan"]
