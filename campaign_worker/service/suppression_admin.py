"""Operators' view of the suppression list: list, add and lift entries."""

from __future__ import annotations

from campaign_worker.domain.aliases import Doc
from campaign_worker.domain.errors import InvalidInputError, NotFoundError
from campaign_worker.domain.suppressions import (
    Suppression,
    address_key,
    normalize_address,
    user_key,
)
from campaign_worker.service.context import Services
from campaign_worker.service.ports import SuppressionRepository

MAX_LIST = 1000


def _repository(svc: Services) -> SuppressionRepository:
    if svc.send_guard.suppressions is None:
        raise InvalidInputError("this worker has no suppression list configured")
    return svc.send_guard.suppressions


def key_of(user_id: str | None, channel: str | None, address: str | None) -> str:
    """The entry id for a user, or for a channel address."""
    if user_id and not (channel or address):
        return user_key(user_id)
    if channel and address and not user_id:
        return address_key(channel, address)
    raise InvalidInputError("give either user_id, or channel and address")


def list_suppressions(
    svc: Services, user_id: str | None = None, channel: str | None = None, limit: int = 100
) -> list[Doc]:
    if not 1 <= limit <= MAX_LIST:
        raise InvalidInputError(f"limit must be between 1 and {MAX_LIST}")
    return [
        entry.as_doc()
        for entry in _repository(svc).list(user_id=user_id, channel=channel, limit=limit)
    ]


def add_suppression(
    svc: Services,
    *,
    user_id: str | None = None,
    channel: str | None = None,
    address: str | None = None,
    reason: str = "added by an operator",
    source: str = "operator",
) -> Doc:
    """Add an entry (idempotent: an existing one is kept as it was); returns it."""
    key = key_of(user_id, channel, address)
    entry = Suppression(
        key,
        reason[:500],
        source[:64],
        svc.clock.now(),
        user_id=user_id,
        channel=channel,
        address=normalize_address(address) if address else None,
    )
    repository = _repository(svc)
    repository.add_many([entry])
    return repository.matching([key])[key].as_doc()


def lift_suppression(
    svc: Services,
    *,
    key: str | None = None,
    user_id: str | None = None,
    channel: str | None = None,
    address: str | None = None,
) -> Doc:
    """Remove one entry (by its id, or by user, or by channel address); returns it.
    Conversations that already ended opted out stay ended; new campaigns may message the
    person again."""
    wanted = key or key_of(user_id, channel, address)
    lifted = _repository(svc).lift(wanted)
    if lifted is None:
        raise NotFoundError(f"no suppression {wanted!r}")
    return lifted.as_doc()


__all__ = ["add_suppression", "key_of", "lift_suppression", "list_suppressions"]
