"""What operators do beside running campaigns: the review queue of held replies and the
suppression list. ``CampaignManager`` offers these methods too (it extends this class)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

from campaign_worker.domain.aliases import Doc
from campaign_worker.service import reviews, suppression_admin
from campaign_worker.service.context import Services


class OperatorCommands(Services):
    """The review queue and the suppression list, over the same ports as every flow."""

    # ------------------------------------------------------------------ reviews

    def list_reviews(self, campaign_id: str | None = None, limit: int = 50) -> list[Doc]:
        """Replies held for review, the one held longest first (``service/reviews.py``)."""
        return reviews.list_reviews(self, campaign_id, limit)

    def resolve_reply(self, message_id: str, intent: str, resolved_by: str | None = None) -> Doc:
        """Apply ``intent`` to a held reply as if it had been classified so (idempotent;
        another intent for a resolved reply is refused)."""
        return reviews.resolve_reply(self, message_id, intent, resolved_by)

    def export_labels(self, since: datetime | None = None) -> Iterator[str]:
        """Resolved reviews as labelled TSV lines, for ``intents train``."""
        return reviews.export_labels(self, since)

    # ------------------------------------------------------------------ suppressions

    def list_suppressions(
        self, user_id: str | None = None, channel: str | None = None, limit: int = 100
    ) -> list[Doc]:
        """Entries of the suppression list (opt-outs, bounces, complaints)."""
        return suppression_admin.list_suppressions(self, user_id, channel, limit)

    def add_suppression(
        self,
        user_id: str | None = None,
        channel: str | None = None,
        address: str | None = None,
        reason: str = "added by an operator",
        source: str = "operator",
    ) -> Doc:
        """Suppress a user (``user_id``) or a channel address (``channel``, ``address``)."""
        return suppression_admin.add_suppression(
            self, user_id=user_id, channel=channel, address=address, reason=reason, source=source
        )

    def lift_suppression(
        self,
        key: str | None = None,
        user_id: str | None = None,
        channel: str | None = None,
        address: str | None = None,
    ) -> Doc:
        """Lift one entry (``key``, or ``user_id``, or ``channel`` and ``address``)."""
        return suppression_admin.lift_suppression(
            self, key=key, user_id=user_id, channel=channel, address=address
        )


__all__ = ["OperatorCommands"]
