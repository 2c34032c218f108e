"""A sample campaign, end to end, with simulated recipients and a compressed clock.

The audience is deterministic (seeded): each recipient has a persona that decides whether
and when they answer in each stage. The funnel printed at the end is read back from the
campaign metrics document, i.e. exactly what an operator would see.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from campaign_worker.adapters.mongo_demo_reads import ConversationPlace
from campaign_worker.domain.documents import ConversationState

SAMPLE_NAMES = [
    "Ada",
    "Grace",
    "Alan",
    "Edsger",
    "Barbara",
    "Ken",
    "Margaret",
    "Linus",
    "Frances",
    "Donald",
    "Radia",
    "Dennis",
    "Hedy",
    "John",
    "Katherine",
]


def _roll(*parts: str) -> float:
    """A deterministic number in [0, 1) for the given parts."""
    digest = hashlib.sha256("|".join(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def sample_recipients(count: int, prefix: str = "user") -> list[dict[str, Any]]:
    return [
        {
            "user_id": f"{prefix}-{index:05d}",
            "attributes": {
                "first_name": SAMPLE_NAMES[index % len(SAMPLE_NAMES)],
                "product": "Acme Analytics",
            },
            "timezone": "UTC",
        }
        for index in range(count)
    ]


def sample_campaign(campaign_id: str, count: int) -> dict[str, Any]:
    return {
        "_id": campaign_id,
        "name": "Acme Analytics launch (demo)",
        "campaign_type": "sales",
        "template_id": "default",
        "recipients": sample_recipients(count),
    }


@dataclass(frozen=True)
class SimulatedReply:
    user_id: str
    message_id: str
    content: str


# (probability, text) per stage: the first bucket the roll falls in decides. The packaged
# sales journey routes each by its intent: opt out, out-of-office pause, skip ahead on a
# price question, exit on "no thanks", back from decision to consideration on a question.
_PERSONAS: dict[str, list[tuple[float, str | None]]] = {
    "awareness": [
        (0.10, "What's the price?"),
        (0.16, "Automatic reply: I am out of the office until Monday"),
        (0.20, "No thanks"),
        (0.30, "How does it work?"),
        (0.55, "Yes, tell me more"),
        (0.90, None),
        (0.93, "STOP please"),
        (1.0, "Please unsubscribe me"),
    ],
    "consideration": [(0.55, "What's the pricing?"), (0.75, "Looks interesting"), (1.0, None)],
    "decision": [
        (0.50, "Let's do it, BUY"),
        (0.62, "Is there a free trial?"),
        (0.72, "No thanks"),
        (1.0, None),
    ],
}


def reply_for(user_id: str, stage: str) -> tuple[str | None, timedelta]:
    """What this recipient answers in ``stage`` (None: silence) and after how long."""
    options = _PERSONAS.get(stage, [(1.0, None)])
    roll = _roll(user_id, stage)
    text = next(text for limit, text in options if roll < limit)
    delay = timedelta(hours=1 + 40 * _roll(user_id, stage, "delay"))
    return text, delay


Answer = Callable[[str, str], tuple[str | None, timedelta]]


def due_replies(
    conversations: Iterable[ConversationPlace],
    now: datetime,
    already: set[str],
    answer: Answer = reply_for,
) -> list[SimulatedReply]:
    """Replies the simulated audience sends by ``now``, given their conversations.

    A recipient answers at most once per stage (``already`` holds the reply ids sent),
    ``delay`` after the stage's first message, which goes out as the stage is entered.
    ``answer(user_id, stage)`` says what and when (the demo's personas by default).
    """
    replies = []
    for conversation in conversations:
        if not conversation.stage_step:
            continue  # nothing sent in this stage yet: nothing to answer
        stage = conversation.stage
        message_id = f"in-{conversation.conversation_id}-{stage}"
        if message_id in already:
            continue
        text, delay = answer(conversation.user_id, stage)
        if text is not None and now >= conversation.entered_at + delay:
            replies.append(SimulatedReply(conversation.user_id, message_id, text))
    return replies


def active_places(manager: Any, campaign_id: str) -> list[ConversationPlace]:
    """Where the campaign's active conversations are (read through the service's port)."""
    places, after = [], None
    while page := manager.conversation_state_repository.page_active(campaign_id, after, 1000):
        after = page[-1].id
        places += [ConversationPlace.of(s) for s in page if isinstance(s, ConversationState)]
    return places


def format_funnel(metrics: dict[str, Any], outcomes: dict[str, int] | None = None) -> str:
    """The funnel as a small text table."""
    lines = [
        f"Campaign {metrics['campaign_id']}: {metrics['total_recipients']} recipients",
        "",
        f"{'stage':<16}{'entered':>9}{'completed':>11}{'conv.':>8}{'avg time':>12}",
    ]
    for stage, values in metrics["stage_metrics"].items():
        entered, completed = values["entered"], values["completed"]
        rate = f"{completed / entered:.0%}" if entered else "-"
        hours = values["avg_duration_seconds"] / 3600
        lines.append(f"{stage:<16}{entered:>9}{completed:>11}{rate:>8}{hours:>10.1f} h")
    lines += format_transitions(metrics.get("funnel") or {})
    mm = metrics["message_metrics"]
    lines += [
        "",
        f"messages sent {mm['total_sent']}, received {mm['total_received']}, "
        f"response rate {mm['response_rate']:.2f}, "
        f"deferred by the frequency cap {mm.get('deferred', 0)}",
        f"outcomes: completed {metrics['completed_conversations']}, "
        f"failed {metrics['failed_conversations']}, "
        f"opted out {metrics.get('opted_out_conversations', 0)}, "
        f"still active {metrics['active_conversations']}",
    ]
    if outcomes:
        lines.append(
            "from conversation documents: "
            + ", ".join(f"{key} {value}" for key, value in sorted(outcomes.items()))
        )
    return "\n".join(lines)


def format_transitions(funnel: dict[str, dict[str, int]]) -> list[str]:
    """The branched funnel: every transition that happened, from -> to (or exit)."""
    if not funnel:
        return []
    lines = ["", f"{'transition':<38}{'conversations':>14}"]
    for source, targets in funnel.items():
        for target, count in sorted(targets.items(), key=lambda item: -item[1]):
            label = target.replace("exit:", "(exit) ")
            lines.append(f"{source + ' -> ' + label:<38}{count:>14}")
    return lines


def drive(
    manager: Any,
    clock: Any,
    campaign_id: str,
    *,
    answer: Answer = reply_for,
    tick: timedelta = timedelta(hours=4),
    max_days: int = 45,
    after_step: Callable[[], None] | None = None,
) -> bool:
    """Step a ManualClock by ``tick``: process what is due, send the audience's due
    replies, poll; True once the campaign completed, False after ``max_days``."""
    start = clock.now()
    replied: set[str] = set()
    while clock.now() - start < timedelta(days=max_days):
        while manager.process_due_conversations(campaign_id).claimed:
            pass
        active = active_places(manager, campaign_id)
        for reply in due_replies(active, clock.now(), replied, answer):
            replied.add(reply.message_id)
            manager.record_inbound_message(
                campaign_id, reply.user_id, reply.message_id, reply.content
            )
        poll = manager.poll_campaigns()
        if after_step is not None:
            after_step()
        if campaign_id in poll.completed:
            return True
        clock.advance(tick)
    return False


def run_in_process(
    manager: Any,
    clock: Any,
    campaign_id: str,
    recipients: int,
    *,
    tick: timedelta = timedelta(hours=4),
    max_days: int = 45,
    progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Drive a campaign through CampaignManager directly with a ManualClock."""
    manager.create_campaign(sample_campaign(campaign_id, recipients))
    created = manager.initialize_campaign_conversations(campaign_id)
    progress(f"initialized {created} conversations")
    start = clock.now()
    last_day = -1

    def daily() -> None:
        nonlocal last_day
        day = (clock.now() - start).days
        if day != last_day:
            metrics = manager.get_campaign_metrics(campaign_id)
            progress(
                f"day {day:>2}: active {metrics['active_conversations']:>4}  completed "
                f"{metrics['completed_conversations']:>4}  failed "
                f"{metrics['failed_conversations']:>4}  opted out "
                f"{metrics['opted_out_conversations']:>3}"
            )
            last_day = day

    drive(manager, clock, campaign_id, tick=tick, max_days=max_days, after_step=daily)
    return dict(manager.get_campaign_metrics(campaign_id))
