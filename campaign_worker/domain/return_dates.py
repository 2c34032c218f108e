"""Return dates in out-of-office replies ("back on Monday", "until 3 December"), pure.

Dates are read in the recipient's timezone relative to when the reply arrived; the
follow-ups resume at 09:00 local time on the day found. Day-first numeric dates
(``3.12.2026``) and ISO dates (``2026-12-03``) are read; a date without a year is the
next one on or after the reply's day. Month and weekday names, "tomorrow", "next week"
and the words that lead to a return date are read in English, German, French and
Spanish ("bis zum 10. Januar", "de retour le 5 janvier", "vuelvo el 7 de enero"). The
reply understanding passes the extracted text (the quoted message's dates are not the
sender's).
"""

from __future__ import annotations

import re
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

RESUME_AT = time(9, 0)  # local time follow-ups resume on the return day

# Each weekday's names (en, de, fr, es), Monday first.
_WEEKDAY_NAMES = (
    ("monday", "montag", "lundi", "lunes"),
    ("tuesday", "dienstag", "mardi", "martes"),
    ("wednesday", "mittwoch", "mercredi", "miércoles", "miercoles"),
    ("thursday", "donnerstag", "jeudi", "jueves"),
    ("friday", "freitag", "vendredi", "viernes"),
    ("saturday", "samstag", "sonnabend", "samedi", "sábado", "sabado"),
    ("sunday", "sonntag", "dimanche", "domingo"),
)
_WEEKDAYS = {name: number for number, names in enumerate(_WEEKDAY_NAMES) for name in names}
_TOMORROW = ("tomorrow", "morgen", "demain", "mañana", "manana")
_NEXT_WEEK = (
    "next week", "nächste woche", "nächster woche", "naechste woche", "la semaine prochaine",
    "semaine prochaine", "la próxima semana", "la proxima semana", "la semana que viene",
)  # fmt: skip
_MONTHS = {
    name: number
    for number, names in enumerate(
        (
            ("january", "jan", "januar", "jänner", "janvier", "janv", "enero", "ene"),
            ("february", "feb", "februar", "février", "fevrier", "févr", "fevr", "febrero"),
            ("march", "mar", "märz", "maerz", "mars", "marzo"),
            ("april", "apr", "avril", "avr", "abril", "abr"),
            ("may", "mai", "mayo"),
            ("june", "jun", "juni", "juin", "junio"),
            ("july", "jul", "juli", "juillet", "juil", "julio"),
            ("august", "aug", "août", "aout", "agosto", "ago"),
            ("september", "sep", "sept", "septembre", "septiembre", "setiembre"),
            ("october", "oct", "oktober", "okt", "octobre", "octubre"),
            ("november", "nov", "novembre", "noviembre"),
            (
                "december",
                "dec",
                "dezember",
                "dez",
                "décembre",
                "decembre",
                "déc",
                "diciembre",
                "dic",
            ),
        ),
        start=1,
    )
    for name in names
}
_MONTH = "(" + "|".join(sorted(_MONTHS, key=len, reverse=True)) + r")\b\.?"
_DAY = r"(\d{1,2})(?:st|nd|rd|th|er|\.)?"
_ISO = re.compile(r"\b(\d{4})-(\d{2})-(\d{2})\b")
_DOTTED = re.compile(r"\b(\d{1,2})[./](\d{1,2})[./](\d{4})\b")
_DAY_MONTH = re.compile(rf"\b{_DAY}\s+(?:of\s+|de\s+)?{_MONTH}(?:\s+(?:de\s+)?(\d{{4}}))?", re.I)
_MONTH_DAY = re.compile(rf"\b{_MONTH}\s+{_DAY}\b(?:,?\s+(\d{{4}}))?", re.I)
_RELATIVE = re.compile(
    r"\b("
    + "|".join(sorted([*_TOMORROW, *_NEXT_WEEK, *_WEEKDAYS], key=len, reverse=True))
    + r")\b",
    re.I,
)
# Words after which a date is the return date rather than, say, when the leave began.
_TRIGGER = re.compile(
    r"\b(back|return|returning|returns|until|till|til|through|reachable|available"
    r"|zurück|zurueck|wieder|bis|ab"
    r"|retour|jusqu|jusqu'au|à partir|a partir|de nouveau"
    r"|hasta|regreso|vuelvo|vuelta|volveré|volvere|a partir)\b",
    re.I,
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
    if word in _TOMORROW:
        return today + timedelta(days=1)
    if word in _NEXT_WEEK:
        return today + timedelta(days=7 - today.weekday())
    ahead = (_WEEKDAYS[word] - today.weekday()) % 7
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
