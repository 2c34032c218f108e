"""Return dates in out-of-office replies ("back on Monday", "until 3 December"), pure.

Dates are read in the recipient's timezone relative to when the reply arrived; the
follow-ups resume at 09:00 local time on the day found. Day-first numeric dates
(``3.12.2026``) and ISO dates (``2026-12-03``) are read; a date without a year is the
next one on or after the reply's day.
"""

from __future__ import annotations

import re
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

RESUME_AT = time(9, 0)  # local time follow-ups resume on the return day

_WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_MONTHS = {
    name: number
    for number, names in enumerate(
        (
            ("january", "jan"),
            ("february", "feb"),
            ("march", "mar"),
            ("april", "apr"),
            ("may",),
            ("june", "jun"),
            ("july", "jul"),
            ("august", "aug"),
            ("september", "sep", "sept"),
            ("october", "oct"),
            ("november", "nov"),
            ("december", "dec"),
        ),
        start=1,
    )
    for name in names
}
_MONTH = "(" + "|".join(sorted(_MONTHS, key=len, reverse=True)) + r")\b\.?"
_DAY = r"(\d{1,2})(?:st|nd|rd|th)?"
_ISO = re.compile(r"\b(\d{4})-(\d{2})-(\d{2})\b")
_DOTTED = re.compile(r"\b(\d{1,2})\.(\d{1,2})\.(\d{4})\b")
_DAY_MONTH = re.compile(rf"\b{_DAY}\s+(?:of\s+)?{_MONTH}(?:\s+(\d{{4}}))?", re.I)
_MONTH_DAY = re.compile(rf"\b{_MONTH}\s+{_DAY}\b(?:,?\s+(\d{{4}}))?", re.I)
_RELATIVE = re.compile(r"\b(tomorrow|next week|" + "|".join(_WEEKDAYS) + r")\b", re.I)
# Words after which a date is the return date rather than, say, when the leave began.
_TRIGGER = re.compile(
    r"\b(back|return|returning|returns|until|till|til|through|reachable|available)\b", re.I
)


def _next_on_or_after(today: date, month: int, day: int, year: int | None) -> date | None:
    try:
        if year is not None:
            return date(year, month, day)
        found = date(today.year, month, day)
        return found if found >= today else date(today.year + 1, month, day)
    except ValueError:
        return None


def _relative(word: str, today: date) -> date:
    word = word.lower()
    if word == "tomorrow":
        return today + timedelta(days=1)
    if word == "next week":
        return today + timedelta(days=7 - today.weekday())
    ahead = (_WEEKDAYS.index(word) - today.weekday()) % 7
    return today + timedelta(days=ahead or 7)  # "back on Monday" said on a Monday: next week


def _date_in(text: str, today: date) -> date | None:
    """The first date expression in ``text``."""
    found: list[tuple[int, date | None]] = []
    if match := _ISO.search(text):
        found.append(
            (match.start(), _next_on_or_after(today, int(match[2]), int(match[3]), int(match[1])))
        )
    if match := _DOTTED.search(text):
        found.append(
            (match.start(), _next_on_or_after(today, int(match[2]), int(match[1]), int(match[3])))
        )
    if match := _DAY_MONTH.search(text):
        year = int(match[3]) if match[3] else None
        found.append(
            (
                match.start(),
                _next_on_or_after(today, _MONTHS[match[2].lower()], int(match[1]), year),
            )
        )
    if match := _MONTH_DAY.search(text):
        year = int(match[3]) if match[3] else None
        found.append(
            (
                match.start(),
                _next_on_or_after(today, _MONTHS[match[1].lower()], int(match[2]), year),
            )
        )
    if match := _RELATIVE.search(text):
        found.append((match.start(), _relative(match[1], today)))
    dated = [(start, day) for start, day in found if day is not None]
    return min(dated, key=lambda item: item[0])[1] if dated else None


def parse_return_date(text: str, received_at: datetime, timezone: str) -> datetime | None:
    """When the sender is back (UTC, 09:00 their local time), or None if the reply names
    no date. A date after a word such as "back" or "until" is preferred to one before."""
    zone = ZoneInfo(timezone)
    today = received_at.astimezone(zone).date()
    trigger = _TRIGGER.search(text)
    day = (_date_in(text[trigger.end() :], today) if trigger else None) or _date_in(text, today)
    if day is None or day < today:
        return None
    local = datetime.combine(day, RESUME_AT, tzinfo=zone)
    return local.astimezone(ZoneInfo("UTC"))


def resume_at(
    text: str,
    received_at: datetime,
    timezone: str,
    *,
    default_pause: timedelta,
    max_pause: timedelta,
) -> datetime:
    """When follow-ups resume after an out-of-office reply: the return date it names
    (at most ``max_pause`` away), else ``default_pause`` after it arrived."""
    parsed = parse_return_date(text, received_at, timezone)
    if parsed is None or parsed <= received_at:
        return received_at + default_pause
    return min(parsed, received_at + max_pause)


__all__ = ["RESUME_AT", "parse_return_date", "resume_at"]
