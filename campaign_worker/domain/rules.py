"""Facts about a conversation's stage, pure: opt-out keywords, replies in the stage, the
stage's rules and when they may change, message waits and the recipient's send window."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

from campaign_worker.domain.documents import (
    ConversationEvent,
    ConversationState,
    Direction,
    Message,
    to_utc,
)
from campaign_worker.domain.intents import NOT_A_REPLY, OTHER, ReplyClassifier
from campaign_worker.domain.reviews import acted_intent
from campaign_worker.domain.templates import Rule, SendWindow, Stage


def _normalise(text: str) -> str:
    return re.sub(r"[\s\W_]+$", "", text.strip()).upper()


def is_opt_out(content: str, keywords: list[str]) -> bool:
    """Carrier practice: the keyword is the whole message (case and trailing punctuation aside)."""
    normalised = _normalise(content)
    return any(normalised == _normalise(keyword) for keyword in keywords)


@lru_cache(maxsize=1024)
def _keyword_pattern(keyword: str) -> re.Pattern[str]:
    """Compiled once per keyword (templates are immutable), not once per step."""
    return re.compile(rf"(?<!\w){re.escape(keyword)}(?!\w)", re.I)


def entry_index(state: ConversationState) -> int:
    """Index of the current stage entry in ``state.stages`` (a stage entered again after
    a branch back gets a new entry, so its earlier replies and sends stay behind)."""
    for index in range(len(state.stages) - 1, -1, -1):
        if state.stages[index].name == state.current_stage:
            return index
    return len(state.stages) - 1


def visit_of(state: ConversationState) -> int:
    """How many times the current stage was entered before this entry. An entry a
    migration renamed counts under its former names too, so no (stage, visit) pair, and
    no message id, is ever used by two entries."""
    index = entry_index(state)
    return sum(state.current_stage in entry.names for entry in state.stages[:index])


def _in_entry(message: Message, names: set[str], entry: int) -> bool:
    if message.metadata.get("stage") not in names:
        return False
    tagged = message.metadata.get("entry")
    return tagged is None or tagged == entry  # untagged: written before branches existed


def _entry_names(state: ConversationState, stage: str, entry: int) -> set[str]:
    """``stage`` and, when it is the current entry's stage, the names a migration gave
    that entry before (its messages were recorded under them)."""
    if 0 <= entry < len(state.stages) and state.stages[entry].name == stage:
        return state.stages[entry].names
    return {stage}


def reply_text(message: Message) -> str:
    """The words every rule reads: the author's own, extracted when the reply was recorded
    (quotes, signatures and footers removed); the content when they are the content itself
    (nothing else is stored then), and for a reply stored before extraction existed."""
    text = message.metadata.get("extracted_text")
    return text if isinstance(text, str) else message.content


def intent_of(
    state: ConversationState, message: Message, classifier: ReplyClassifier | None = None
) -> str | None:
    """The intent the flows act on (``reviews.acted_intent``: None while held); a message
    recorded before intents existed is classified now if a classifier is given."""
    intent = acted_intent(state, message)
    if intent is not None or classifier is None or _classified(message):
        return intent
    return classifier.classify(reply_text(message))


def _classified(message: Message) -> bool:
    return "intent" in message.metadata or message.metadata.get("needs_review") is True


def understood(state: ConversationState, message: Message) -> bool:
    """A reply whose meaning is known: an intent other than ``other`` (a reply recorded
    before intents existed counts, as it did then). A held reply is not, until resolved."""
    intent = acted_intent(state, message)
    if intent is None:
        return not _classified(message)
    return intent != OTHER


def replies_in_entry(state: ConversationState, stage: str) -> list[Message]:
    """Inbound messages of the current entry of ``stage``, auto-replies included."""
    entry = entry_index(state)
    names = _entry_names(state, stage, entry)
    return [
        message
        for message in state.message_history
        if message.direction == Direction.INBOUND and _in_entry(message, names, entry)
    ]


def inbound_in_stage(state: ConversationState, stage: str) -> list[Message]:
    """Replies that count in the current entry of ``stage``: an out-of-office auto-reply
    is not a reply."""
    return [
        message
        for message in replies_in_entry(state, stage)
        if acted_intent(state, message) not in NOT_A_REPLY
    ]


def events_in_entry(state: ConversationState) -> list[ConversationEvent]:
    """Events recorded in the current stage entry, in arrival order."""
    entry = entry_index(state)
    return [event for event in state.events if event.entry == entry]


def last_outbound_in_stage(state: ConversationState, stage: str) -> Message | None:
    entry = entry_index(state)
    names = _entry_names(state, stage, entry)
    for message in reversed(state.message_history):
        if message.direction == Direction.OUTBOUND and _in_entry(message, names, entry):
            return message
    return None


def evaluate_rule(rule: Rule, state: ConversationState, now: datetime) -> tuple[bool, str]:
    """Evaluate one (possibly composite) rule against the current stage."""
    stage = state.current_stage
    if rule.any is not None:
        for child in rule.any:
            matched, reason = evaluate_rule(child, state, now)
            if matched:
                return True, reason
        return False, "no 'any' condition met"
    if rule.all is not None:
        reasons = []
        for child in rule.all:
            matched, reason = evaluate_rule(child, state, now)
            if not matched:
                return False, reason
            reasons.append(reason)
        return True, " and ".join(reasons)
    if rule.reply_received is not None:
        return _reply_received(state, stage, rule.reply_received == "any")
    if rule.keywords is not None:
        for message in inbound_in_stage(state, stage):
            for keyword in rule.keywords:
                if _keyword_pattern(keyword).search(reply_text(message)):
                    return True, f"reply matched keyword {keyword!r}"
        return False, "no reply matched the keywords"
    if rule.regex is not None:
        pattern = re.compile(rule.regex, re.I)
        for message in inbound_in_stage(state, stage):
            if pattern.search(reply_text(message)):
                return True, f"reply matched /{rule.regex}/"
        return False, "no reply matched the regex"
    if rule.intent is not None:
        for message in inbound_in_stage(state, stage):
            intent = acted_intent(state, message)
            if intent in rule.intent:
                return True, f"reply is {intent}"
        return False, "no reply with the intents"
    if rule.event is not None:
        for event in events_in_entry(state):
            if event.event in rule.event:
                return True, f"event {event.event} arrived"
        return False, "no event with the names yet"
    if rule.min_messages_sent is not None:
        enough = state.stage_step >= rule.min_messages_sent
        return enough, f"{state.stage_step} of {rule.min_messages_sent} messages sent"
    if rule.min_time_in_stage is not None:
        elapsed = now - state.current_stage_entry().entered_at
        enough = elapsed >= rule.min_time_in_stage
        return enough, f"{int(elapsed.total_seconds())}s in stage (min {rule.min_time_in_stage})"
    raise AssertionError("validated Rule has exactly one condition")  # pragma: no cover


def _reply_received(state: ConversationState, stage: str, any_reply: bool) -> tuple[bool, str]:
    """``reply_received: true``: an understood reply (not ``other``, not held);
    ``reply_received: any``: any reply at all (out-of-office auto-replies aside)."""
    replies = inbound_in_stage(state, stage)
    if not replies:
        return False, "no reply yet"
    if any_reply or any(understood(state, message) for message in replies):
        return True, "reply received"
    return False, "no understood reply yet (only replies of intent other)"


def rule_wakeups(rule: Rule, entered_at: datetime) -> list[datetime]:
    """Times at which a time-based rule may flip to true; worth waking up for."""
    if rule.min_time_in_stage is not None:
        return [entered_at + rule.min_time_in_stage]
    children = rule.any or rule.all or []
    return [when for child in children for when in rule_wakeups(child, entered_at)]


def should_advance(state: ConversationState, stage: Stage, now: datetime) -> tuple[bool, str]:
    """The stage's ``advance_when`` rule; a stage without one advances when its drip ends,
    unless it has an ``on_timeout`` (then a reply or the timeout moves it)."""
    if stage.advance_when is not None:
        return evaluate_rule(stage.advance_when, state, now)
    if stage.on_timeout is not None:
        return False, "waiting for a reply or the timeout"  # the timeout decides, not the drip
    if not stage.messages:
        return True, "stage has no messages and no rule"
    last = last_outbound_in_stage(state, stage.name)
    drip_done = state.stage_step >= len(stage.messages) and last is not None
    if drip_done and last is not None and now >= last.timestamp + stage.messages[-1].wait:
        return True, "all stage messages sent and the last wait elapsed"
    return False, "stage messages still running"


def wait_after(stage: Stage, step: int) -> timedelta:
    """The wait after message ``step`` of ``stage``. A template edit may have removed
    messages a conversation already sent: then the last remaining wait applies (none if
    the stage has no messages left), so progress never depends on a message that is gone."""
    if not stage.messages:
        return timedelta(0)
    return stage.messages[max(0, min(step, len(stage.messages) - 1))].wait


def next_send_time(now: datetime, window: SendWindow | None, timezone: str) -> datetime:
    """``now`` if a message may go out now in the recipient's local time, else the UTC
    time the window next opens."""
    if window is None:
        return now
    zone = ZoneInfo(timezone)
    local = now.astimezone(zone)
    clock = local.time().replace(tzinfo=None)
    if window.start < window.end:
        inside = window.start <= clock < window.end
    else:  # across midnight
        inside = clock >= window.start or clock < window.end
    if inside:
        return now
    day = local.date() if clock < window.start else local.date() + timedelta(days=1)
    opens = datetime.combine(day, window.start, tzinfo=zone)
    return to_utc(opens)


__all__ = [
    "entry_index",
    "evaluate_rule",
    "events_in_entry",
    "inbound_in_stage",
    "intent_of",
    "is_opt_out",
    "last_outbound_in_stage",
    "next_send_time",
    "replies_in_entry",
    "reply_text",
    "rule_wakeups",
    "should_advance",
    "understood",
    "visit_of",
    "wait_after",
]
