"""The reply understanding port: what a reply means, for the reply flow.

``ReplyUnderstanding.understand`` takes a reply's raw content (as received, quotes and
signatures included) and returns a ``domain.understanding.Classification``: the intent,
its confidence, the language, the extracted text, and whether a person must review it
before anything acts on it. ``adapters/understanding.py`` implements it (rules, an
n-gram model, template examples); ``bootstrap.build_understanding`` builds it. Tests wire
a fake of this Protocol.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Protocol

from campaign_worker.domain.intent_metrics import Scored, report
from campaign_worker.domain.labelled_replies import LabelledReply
from campaign_worker.domain.templates import Template
from campaign_worker.domain.understanding import Classification


class ReplyUnderstanding(Protocol):
    def understand(
        self, content: str, template: Template | None = None, *, languages: Sequence[str] = ()
    ) -> Classification:
        """Classify one reply. ``template``: its rules, examples and thresholds (None:
        built-in intents, default thresholds). ``languages``: fallbacks for a reply too
        short to tell its language (e.g. the recipient's), before the template's."""
        ...

    def warm_up(self) -> None:
        """Load what the first call would (models); idempotent. Call after fork."""
        ...


def classify_all(
    understanding: ReplyUnderstanding,
    replies: Sequence[LabelledReply],
    template: Template | None = None,
) -> Iterator[tuple[LabelledReply, Classification]]:
    """Each labelled reply with its classification, in order. The gold language is not
    passed as a hint: the language is detected as it would be in production."""
    for reply in replies:
        yield reply, understanding.understand(reply.text, template)


def scored_report(results: Sequence[tuple[LabelledReply, Classification]]) -> dict[str, Any]:
    """The figures of ``domain.intent_metrics.report`` for classified labelled replies."""
    return report(
        [
            Scored(reply.intent, found.outcome, reply.language, reply.tags)
            for reply, found in results
        ]
    )


def evaluate(
    understanding: ReplyUnderstanding,
    replies: Sequence[LabelledReply],
    template: Template | None = None,
) -> dict[str, Any]:
    """The figures of ``domain.intent_metrics.report`` for ``replies``."""
    return scored_report(list(classify_all(understanding, replies, template)))


__all__ = ["ReplyUnderstanding", "classify_all", "evaluate", "scored_report"]
