"""The ports of the review queue (``service/reviews.py``): the conversations holding a
reply for a person, and the labelled examples their resolutions leave. Implemented by
``adapters/mongo_reviews.py`` and, in memory, ``adapters/memory_reviews.py``."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Protocol

from campaign_worker.domain.documents import StoredState
from campaign_worker.domain.reviews import ReplyLabel


class ReplyReviewRepository(Protocol):
    def pending(self, campaign_id: str | None, limit: int) -> list[StoredState]:
        """Conversations with a reply pending review (of one campaign, or all), the one
        held longest first (by ``review_pending_since``), at most ``limit``."""
        ...

    def holding(self, message_id: str) -> StoredState | None:
        """The conversation that holds (or held) the review of reply ``message_id``."""
        ...

    def save_label(self, label: ReplyLabel) -> None:
        """Keep a resolution as a labelled example (idempotent: by message id)."""
        ...

    def labels(self, since: datetime | None) -> Iterator[ReplyLabel]:
        """The labelled examples resolved at or after ``since`` (all: None), oldest
        first."""
        ...


__all__ = ["ReplyReviewRepository"]
