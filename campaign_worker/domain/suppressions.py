"""Suppressions and frequency caps as data, pure.

A suppression stops every campaign from messaging someone: by user id (an opt-out) or by
channel address (an opt-out too, or a bounce or complaint the delivering service adds).
Its document ``_id`` says what it matches (``user:<id>``, ``address:<channel>:<address>``)
so a check is one ``_id $in`` query and adding one twice changes nothing.

A frequency cap allows at most ``messages`` sends per recipient and channel within any
rolling ``window``, across campaigns.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any


def user_key(user_id: str) -> str:
    return f"user:{user_id}"


def normalize_address(address: str) -> str:
    return address.strip().lower()


def address_key(channel: str, address: str) -> str:
    return f"address:{channel}:{normalize_address(address)}"


def addresses_of(
    attributes: Mapping[str, Any], address_attributes: Mapping[str, str]
) -> list[tuple[str, str]]:
    """(channel, address) pairs a recipient's attributes give (channel -> attribute name)."""
    found = []
    for channel, attribute in address_attributes.items():
        value = attributes.get(attribute)
        if isinstance(value, str) and value.strip():
            found.append((channel, normalize_address(value)))
    return found


def keys_for(
    user_id: str, attributes: Mapping[str, Any], address_attributes: Mapping[str, str]
) -> list[str]:
    """Every suppression ``_id`` that would stop messages to this recipient."""
    pairs = addresses_of(attributes, address_attributes)
    return [user_key(user_id), *(address_key(channel, address) for channel, address in pairs)]


@dataclass(frozen=True)
class Suppression:
    """One entry of the suppression list."""

    key: str
    reason: str
    source: str
    created_at: datetime | None  # None only on an entry another service wrote without one
    user_id: str | None = None
    channel: str | None = None
    address: str | None = None
    campaign_id: str | None = None

    def as_doc(self) -> dict[str, Any]:
        return {
            "_id": self.key,
            "user_id": self.user_id,
            "channel": self.channel,
            "address": self.address,
            "reason": self.reason,
            "source": self.source,
            "campaign_id": self.campaign_id,
            "created_at": self.created_at,
        }

    @classmethod
    def of(cls, doc: Mapping[str, Any]) -> Suppression:
        """An entry as stored (the delivering service writes them too: fields it left out
        read as empty; an entry without ``source`` is ``list``)."""

        def text(name: str) -> str | None:
            value = doc.get(name)
            return None if value is None else str(value)

        created = doc.get("created_at")
        return cls(
            key=str(doc["_id"]),
            reason=text("reason") or "",
            source=str(doc.get("source", "list")),
            created_at=created if isinstance(created, datetime) else None,
            user_id=text("user_id"),
            channel=text("channel"),
            address=text("address"),
            campaign_id=text("campaign_id"),
        )


def opt_out_entries(
    user_id: str,
    attributes: Mapping[str, Any],
    address_attributes: Mapping[str, str],
    *,
    campaign_id: str,
    reason: str,
    now: datetime,
) -> list[Suppression]:
    """The suppressions an opt-out records: the user, and each of their addresses."""
    entries = [
        Suppression(
            user_key(user_id), reason, "opt_out", now, user_id=user_id, campaign_id=campaign_id
        )
    ]
    for channel, address in addresses_of(attributes, address_attributes):
        entries.append(
            Suppression(
                address_key(channel, address),
                reason,
                "opt_out",
                now,
                user_id=user_id,
                channel=channel,
                address=address,
                campaign_id=campaign_id,
            )
        )
    return entries


_CAP = re.compile(r"^\s*(\d+)\s*/\s*(\S+)\s*$")


@dataclass(frozen=True)
class FrequencyCap:
    messages: int
    window: timedelta


def parse_caps(spec: str) -> dict[str, FrequencyCap]:
    """``"default=3/1d,sms=1/12h"`` -> channel -> cap. Empty: no caps."""
    from campaign_worker.domain.templates import parse_duration

    caps: dict[str, FrequencyCap] = {}
    for part in filter(None, (item.strip() for item in spec.split(","))):
        channel, _, rule = part.partition("=")
        match = _CAP.match(rule)
        window = parse_duration(match[2]) if match else None
        if not channel.strip() or match is None or not isinstance(window, timedelta):
            raise ValueError(f"frequency cap {part!r}: expected CHANNEL=N/DURATION")
        if int(match[1]) < 1 or window <= timedelta(0):
            raise ValueError(f"frequency cap {part!r}: N and the window must be positive")
        caps[channel.strip()] = FrequencyCap(int(match[1]), window)
    return caps


__all__ = [
    "FrequencyCap",
    "Suppression",
    "address_key",
    "addresses_of",
    "keys_for",
    "normalize_address",
    "opt_out_entries",
    "parse_caps",
    "user_key",
]
