"""Campaign templates: ordered stages, their messages and progression rules.

A template file maps campaign types to stages::

    template_id: default
    opt_out_keywords: [STOP, UNSUBSCRIBE]
    campaign_types:
      sales:
        stages:
          - name: awareness
            messages:
              - text: "Hi {first_name}!"
                wait: 1d            # before the next follow-up / next check
            advance_when: {any: [{intent: [positive]}, {min_time_in_stage: 3d}]}
            max_time_in_stage: {after: 7d, then: fail}
            max_followups_without_reply: {count: 2, then: fail}

Durations are seconds, ``30m``/``2h``/``1d12h`` or ISO 8601 (``PT2H``).
"""

from __future__ import annotations

import re
from datetime import time, timedelta
from functools import cached_property
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, field_validator, model_validator

from campaign_worker.domain import branches
from campaign_worker.domain.delivery import inherit_channels
from campaign_worker.domain.examples import example_problems
from campaign_worker.domain.intents import BUILT_IN, OTHER, Language, ReplyClassifier
from campaign_worker.domain.intents import compile_classifier as _compile_classifier
from campaign_worker.domain.intents import compile_rules as _compile_rules
from campaign_worker.domain.placeholders import check_placeholders
from campaign_worker.domain.placeholders import placeholder_problem as placeholder_problem
from campaign_worker.domain.template_fields import (
    ChannelName,
    Duration,
    EventName,
    ExitOutcome,
    IntentName,
    IntentSpec,
    StageName,
    VariantId,
)
from campaign_worker.domain.template_fields import TemplateModel as _Model
from campaign_worker.domain.template_fields import parse_duration as parse_duration
from campaign_worker.domain.understanding import UnderstandingPolicy


class MessageVariant(_Model):
    """One variant of a message in an A/B split: its id (recorded on the message and
    counted in the metrics), its weight among the message's variants, its text."""

    id: VariantId
    weight: int = Field(default=1, ge=1, le=1_000_000)
    text: str = Field(min_length=1)

    @field_validator("text")
    @classmethod
    def _valid_placeholders(cls, value: str) -> str:
        return check_placeholders(value)


class OutboundMessage(_Model):
    # ``text``, or ``variants`` (a split: each recipient gets one, by weight).
    text: str | None = Field(default=None, min_length=1)
    variants: list[MessageVariant] | None = Field(default=None, min_length=1)
    wait: Duration = timedelta(days=1)
    channel: ChannelName = "default"

    @field_validator("text")
    @classmethod
    def _valid_placeholders(cls, value: str | None) -> str | None:
        return None if value is None else check_placeholders(value)

    @field_validator("variants")
    @classmethod
    def _unique_ids(cls, value: list[MessageVariant] | None) -> list[MessageVariant] | None:
        ids = [variant.id for variant in value or []]
        duplicated = sorted({variant for variant in ids if ids.count(variant) > 1})
        if duplicated:
            raise ValueError(f"duplicate variant ids: {duplicated}")
        return value

    @model_validator(mode="after")
    def _text_or_variants(self) -> OutboundMessage:
        if (self.text is None) == (self.variants is None):
            raise ValueError("a message needs exactly one of text, variants")
        return self

    @property
    def split(self) -> tuple[tuple[str, int], ...]:
        """The message's variant ids and weights (empty without variants)."""
        return tuple((variant.id, variant.weight) for variant in self.variants or [])

    @field_validator("wait")
    @classmethod
    def _non_negative(cls, value: timedelta) -> timedelta:
        if value < timedelta(0):
            raise ValueError("must not be negative")
        return value


class Rule(_Model):
    """One progression condition, or an ``any``/``all`` combination of them."""

    any: list[Rule] | None = Field(default=None, min_length=1)
    all: list[Rule] | None = Field(default=None, min_length=1)
    # true: a reply whose meaning is understood (any intent but ``other``; a reply held
    # for review never counts until resolved); "any": any reply at all, ``other`` too.
    reply_received: Literal[True, "any"] | None = None
    keywords: list[Annotated[str, Field(min_length=1)]] | None = Field(default=None, min_length=1)
    regex: str | None = None
    min_messages_sent: int | None = Field(default=None, ge=0)
    min_time_in_stage: Duration | None = None
    # A reply in this stage classified as one of these intents.
    intent: list[IntentName] | None = Field(default=None, min_length=1)
    # An event of one of these names arrived in this stage visit (``record_event``).
    event: list[EventName] | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _exactly_one(self) -> Rule:
        given = [name for name in type(self).model_fields if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(
                "a rule needs exactly one of any, all, reply_received, keywords, regex, "
                f"min_messages_sent, min_time_in_stage, intent, event (got {given or 'none'})"
            )
        return self

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"invalid regex: {exc}") from exc
        return value


class MaxTimeInStage(_Model):
    after: Duration
    then: Literal["advance", "fail"] = "fail"


class MaxFollowups(_Model):
    count: int = Field(ge=0)
    then: Literal["fail", "complete"] = "fail"


def _target_shorthand(value: Any) -> Any:
    return {"goto": value} if isinstance(value, str) else value


class _Target(_Model):
    """Where a branch leads: a named stage (``goto``, or just its name) or an exit."""

    goto: StageName | None = None
    exit: ExitOutcome | None = None

    @model_validator(mode="after")
    def _one_target(self) -> _Target:
        if (self.goto is None) == (self.exit is None):
            raise ValueError("a branch target is a stage name, {goto: stage} or {exit: outcome}")
        return self

    def describe(self) -> str:
        return self.goto if self.goto is not None else f"exit:{self.exit}"


BranchTarget = Annotated[_Target, BeforeValidator(_target_shorthand)]


class OnTimeout(_Target):
    """Still in the stage ``after`` entering it (nothing routed or advanced it): go to
    ``goto`` or ``exit``."""

    after: Duration


class OutOfOffice(_Model):
    """Follow-ups pause after an auto-reply: until its return date, at most ``max_pause``
    away, else for ``pause``."""

    pause: Duration = timedelta(days=3)
    max_pause: Duration = timedelta(days=30)


class Stage(_Model):
    name: StageName
    channel: ChannelName | None = None  # for its messages that name none
    messages: list[OutboundMessage] = Field(default_factory=list)
    advance_when: Rule | None = None
    max_time_in_stage: MaxTimeInStage | None = None
    max_followups_without_reply: MaxFollowups | None = None
    # Branches: by the intent of a reply, after a silence, and where "advance" leads
    # (default: the following stage, or completion after the last).
    on_reply: dict[IntentName, BranchTarget] | None = None
    # By an event of the user in this stage visit (``record_event``).
    on_event: dict[EventName, BranchTarget] | None = None
    on_timeout: OnTimeout | None = None
    next: BranchTarget | None = None

    @model_validator(mode="after")
    def _followups_reachable(self) -> Stage:
        # A limit the stage's messages can never reach would leave a silent conversation
        # active with nothing scheduled, forever.
        limit = self.max_followups_without_reply
        if limit is not None and limit.count >= len(self.messages):
            raise ValueError(
                f"max_followups_without_reply.count {limit.count} needs more than "
                f"{limit.count} messages in the stage (it has {len(self.messages)})"
            )
        return self

    @model_validator(mode="after")
    def _one_split(self) -> Stage:
        # A recipient gets one variant per stage visit (domain/splits.py): every message
        # with variants must offer the same ones, so "the stage's variant" is one thing.
        splits = [(i, m.split) for i, m in enumerate(self.messages) if m.variants is not None]
        for index, split in splits[1:]:
            first, expected = splits[0]
            if split != expected:
                raise ValueError(
                    f"messages.{index}.variants: ids and weights {list(split)} differ from "
                    f"messages.{first}.variants {list(expected)} (a stage is one split)"
                )
        return self

    @property
    def split(self) -> tuple[tuple[str, int], ...]:
        """The stage's variant ids and weights (empty when none of its messages splits)."""
        return next((m.split for m in self.messages if m.variants is not None), ())


class Entry(_Model):
    """Event-triggered entry: the event enrolls its user, attributes taken from its
    properties."""

    event: EventName
    attributes: list[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")]] = Field(
        default_factory=list
    )


class ReEntry(_Model):
    """A person may enter again once their last conversation finished, ``after`` its start."""

    after: Duration


class Goal(_Model):
    """A conversation converts when ``event`` arrives ``within`` its entry (holdout too)."""

    event: EventName
    within: Duration


class CampaignTypeTemplate(_Model):
    stages: list[Stage] = Field(min_length=1)
    channel: ChannelName | None = None  # for its stages that name none
    # Share of the audience held out: sent nothing, its outcome counted apart (splits.py).
    holdout: float = Field(default=0.0, ge=0.0, lt=1.0)
    # Always-on campaigns (domain/enrollment.py): ``open`` never completes for lack of
    # active conversations; people enroll while it runs, by task or by ``entry`` event.
    audience: Literal["fixed", "open"] | None = None  # None: fixed (a content hash unchanged)
    entry: Entry | None = None
    re_entry: ReEntry | None = None
    goal: Goal | None = None

    @model_validator(mode="after")
    def _unique_stage_names(self) -> CampaignTypeTemplate:
        names = [stage.name for stage in self.stages]
        duplicated = sorted({name for name in names if names.count(name) > 1})
        if duplicated:
            raise ValueError(f"duplicate stage names: {duplicated}")
        problems = branches.problems(self)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def stage_names(self) -> list[str]:
        return [stage.name for stage in self.stages]

    def stage(self, name: str) -> Stage | None:
        return next((stage for stage in self.stages if stage.name == name), None)

    @cached_property
    def event_names(self) -> frozenset[str]:
        """Events its stages react to (``on_event``, ``event`` rules): recorded on its
        conversations when they arrive."""
        return frozenset(name for stage in self.stages for _, name in branches.events_used(stage))


class SendWindow(_Model):
    """Local hours in which messages may go out, in each recipient's own timezone.

    ``start`` may be later than ``end`` for a window across midnight (22:00-06:00).
    """

    start: time
    end: time

    @model_validator(mode="after")
    def _not_empty(self) -> SendWindow:
        if self.start == self.end:
            raise ValueError("start and end must differ")
        return self


_DEFAULT_POLICY = UnderstandingPolicy()


def _english() -> list[Language]:
    return ["en"]


class Template(_Model):
    template_id: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,128}$")]
    description: str = ""
    # Each needs a word character: an empty one would match a punctuation-only reply.
    opt_out_keywords: list[Annotated[str, Field(pattern=r"\w")]] = Field(
        default_factory=lambda: ["STOP", "UNSUBSCRIBE"]
    )
    # Used when a recipient lacks an attribute a message refers to.
    attribute_defaults: dict[str, str] = Field(default_factory=dict)
    # No messages outside these local hours (replies are still handled at any time).
    send_window: SendWindow | None = None
    # Built-in intent phrases of these languages apply; ``intents`` adds or overrides.
    languages: list[Language] = Field(default_factory=_english, min_length=1)
    intents: dict[IntentName, IntentSpec] = Field(default_factory=dict)
    out_of_office: OutOfOffice = Field(default_factory=OutOfOffice)
    # Reply understanding thresholds (domain/understanding.py has the defaults); None when
    # absent, so a template that sets none keeps its content hash (domain/versions.py).
    understanding: UnderstandingPolicy | None = None
    channel: ChannelName | None = None  # for its campaign types that name none
    campaign_types: dict[str, CampaignTypeTemplate] = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _inherit_channels(cls, data: Any) -> Any:
        return inherit_channels(data)

    @model_validator(mode="after")
    def _known_intents(self) -> Template:
        known = {*BUILT_IN, OTHER, *self.intents}
        problems = [
            f"campaign type {type_name!r} stage {stage.name!r} field {where}: "
            f"unknown intent {intent!r} (known: {sorted(known)})"
            for type_name, type_template in self.campaign_types.items()
            for stage in type_template.stages
            for where, intent in branches.intents_used(stage)
            if intent not in known
        ]
        problems += [
            f"understanding.review_intents: unknown intent {intent!r} (known: {sorted(known)})"
            for intent in self.understanding_policy.review_intents
            if intent not in known
        ]
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @model_validator(mode="after")
    def _examples_apart(self) -> Template:
        problems = example_problems(
            {name: spec.examples for name, spec in self.intents.items() if spec.examples}
        )
        if problems:
            raise ValueError("intents: " + "; ".join(problems))
        return self

    @cached_property
    def classifier(self) -> ReplyClassifier:
        """This template's intents, compiled once (templates are immutable)."""
        return _compile_classifier(self.languages, self.intents, self.opt_out_keywords)

    @cached_property
    def rules(self) -> ReplyClassifier:
        """Only the intents it declares (no built-in phrases): the reply understanding's
        explicit rules, read before its model."""
        return _compile_rules(self.intents, self.opt_out_keywords)

    @property
    def examples(self) -> dict[str, list[str]]:
        """Each intent's example replies (intents without examples left out)."""
        return {name: spec.examples for name, spec in self.intents.items() if spec.examples}

    @property
    def understanding_policy(self) -> UnderstandingPolicy:
        """Its reply understanding thresholds, the defaults where it sets none."""
        return self.understanding or _DEFAULT_POLICY

    def for_type(self, campaign_type: str) -> CampaignTypeTemplate | None:
        return self.campaign_types.get(campaign_type)
