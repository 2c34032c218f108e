"""One user event: the request as sent (``InboundEvent``), checked and cut to the limits
(``checked``), and what became of it (``EventOutcome``). The batch flow is ``events.py``."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime

from campaign_worker.domain.aliases import Doc
from campaign_worker.domain.documents import to_utc
from campaign_worker.domain.enrollment import EventFact
from campaign_worker.domain.errors import InvalidInputError
from campaign_worker.domain.limits import MAX_METADATA_BYTES, check_size

EVENT_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")


@dataclass(frozen=True)
class InboundEvent:
    """One ``record_event`` request, as sent."""

    user_id: str
    event: str
    event_id: str
    properties: Doc | None = None
    timestamp: datetime | None = None

    def checked(self, now: datetime) -> EventFact:
        """The event as recorded; ``InvalidInputError`` (or ``LimitExceededError``) if it
        can never be: a name that is no metrics field, properties over the size limit (as
        a reply's metadata) or not storable."""
        if not self.user_id or not self.event_id:
            raise InvalidInputError("user_id and event_id must not be empty")
        if not EVENT_NAME.match(self.event):
            raise InvalidInputError(
                "event: a name of letters, digits, _ and -, starting with a letter (1-64)"
            )
        properties = dict(self.properties or {})
        check_size(properties, MAX_METADATA_BYTES, "properties")
        return EventFact(
            event_id=self.event_id,
            user_id=self.user_id,
            event=self.event,
            timestamp=to_utc(self.timestamp or now),
            received_at=now,
            properties=properties,
        )


@dataclass
class EventOutcome:
    """What became of one event: ``result`` ({event_id, duplicate, enrolled, applied,
    converted}) or ``error``."""

    result: Doc | None = None
    error: Exception | None = None


@dataclass
class Tally:
    """Per event id: conversations it enrolled, changed and converted in this call."""

    enrolled: dict[str, int] = field(default_factory=dict)
    applied: dict[str, int] = field(default_factory=dict)
    converted: dict[str, int] = field(default_factory=dict)

    @staticmethod
    def add(into: dict[str, int], event_id: str, count: int = 1) -> None:
        into[event_id] = into.get(event_id, 0) + count


__all__ = ["EVENT_NAME", "EventOutcome", "InboundEvent", "Tally"]
