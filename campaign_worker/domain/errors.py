"""One exception hierarchy for the whole package.

Entrypoints map these to behaviour: ``InvalidInputError`` (and its subclasses) is never
retried and goes to the dead-letter store; ``TransientError`` is retried with backoff.
"""

from __future__ import annotations


class CampaignWorkerError(Exception):
    """Base of every error this package raises on purpose."""


class InvalidInputError(CampaignWorkerError, ValueError):
    """The caller sent something that can never succeed as sent; do not retry."""


class NotFoundError(InvalidInputError, LookupError):
    """A referenced document does not exist."""


class CampaignNotFoundError(NotFoundError):
    def __init__(self, campaign_id: str) -> None:
        super().__init__(f"campaign not found: {campaign_id!r}")
        self.campaign_id = campaign_id


class ConversationNotFoundError(NotFoundError):
    def __init__(self, conversation_id: str) -> None:
        super().__init__(f"conversation not found: {conversation_id!r}")
        self.conversation_id = conversation_id


class ReviewNotFoundError(NotFoundError):
    """No reply held for review has this message id."""

    def __init__(self, message_id: str) -> None:
        super().__init__(f"no reply held for review with message id {message_id!r}")
        self.message_id = message_id


class ReviewConflictError(InvalidInputError):
    """The review was already resolved with another intent: a resolution is final."""

    def __init__(self, message_id: str, resolved: str, asked: str) -> None:
        super().__init__(
            f"reply {message_id!r} was already resolved as {resolved!r}; "
            f"refusing to resolve it again as {asked!r}"
        )
        self.message_id = message_id
        self.resolved = resolved


class UnknownStageError(InvalidInputError):
    def __init__(self, stage: str, available: list[str]) -> None:
        super().__init__(f"unknown stage {stage!r}; available stages: {available}")
        self.stage = stage
        self.available = available


class InvalidDocumentError(InvalidInputError):
    """A document (payload or stored) failed validation; the message names the field."""


class TemplateError(CampaignWorkerError):
    """Base for template problems."""


class TemplateNotFoundError(TemplateError, InvalidInputError):
    def __init__(self, what: str) -> None:
        super().__init__(what)


class InvalidTemplateError(TemplateError):
    """A template file failed validation; the message names file, stage and field."""


class LimitExceededError(InvalidInputError):
    """A payload over a documented size limit (see ``domain/limits.py``); not retried."""


class InvalidStateTransitionError(InvalidInputError):
    """E.g. resuming a cancelled campaign."""


class ConcurrencyConflictError(CampaignWorkerError):
    """A compare-and-set kept losing to concurrent writers; safe to retry later."""


class TransientError(CampaignWorkerError):
    """An infrastructure hiccup (database or broker unreachable); retry with backoff."""


class ConfigurationError(CampaignWorkerError):
    """The worker cannot serve as configured (settings, templates, indexes); do not start."""


class DeliveryError(CampaignWorkerError):
    """A channel could not hand a message to its provider."""


class TransientDeliveryError(DeliveryError):
    """Worth another attempt later (timeout, 5xx, 429); ``retry_after`` in seconds if the
    provider said when."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class PermanentDeliveryError(DeliveryError):
    """Can never succeed as sent (a 4xx, no address): the message fails, no retry."""
