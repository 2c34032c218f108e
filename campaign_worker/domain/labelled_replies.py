"""Labelled replies as TSV lines, pure: the training corpus, the dev and evaluation sets.

One reply a line: ``intent<TAB>text``, optionally ``<TAB>language<TAB>tags`` (tags comma
separated, e.g. ``email,quoted,signature``). In the text ``\\n`` is a new line, ``\\t`` a
tab and ``\\\\`` a backslash. Blank lines and lines starting with ``#`` are skipped. The
same escaping is how ``intents classify`` reads one reply per line.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from campaign_worker.domain.errors import InvalidInputError

_ESCAPE: Final = re.compile(r"\\(.)")
_ESCAPES: Final = {"n": "\n", "t": "\t", "\\": "\\"}
_INTENT: Final = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


@dataclass(frozen=True, slots=True)
class LabelledReply:
    """One reply and the intent a person gave it."""

    intent: str
    text: str
    language: str | None = None
    tags: tuple[str, ...] = ()
    line: int = 0  # where it was read (1-based), for messages


def unescape(text: str) -> str:
    """``\\n``, ``\\t`` and ``\\\\`` as a new line, a tab and a backslash; any other
    backslash is kept as it is."""
    return _ESCAPE.sub(lambda match: _ESCAPES.get(match[1], match[0]), text)


def escape(text: str) -> str:
    """The inverse of ``unescape``: one line, no tabs."""
    return (
        text.replace("\\", "\\\\").replace("\t", "\\t").replace("\r\n", "\n").replace("\n", "\\n")
    )


def parse_line(line: str, number: int) -> LabelledReply | None:
    """One TSV line (None for a blank or comment line); a bad line raises
    ``InvalidInputError`` naming its number."""
    line = line.rstrip("\r\n")
    if not line.strip() or line.lstrip().startswith("#"):
        return None
    columns = line.split("\t")
    if len(columns) < 2 or len(columns) > 4:
        raise InvalidInputError(
            f"line {number}: expected intent<TAB>text[<TAB>language[<TAB>tags]], "
            f"got {len(columns)} column(s)"
        )
    intent = columns[0].strip()
    if not _INTENT.match(intent):
        raise InvalidInputError(f"line {number}: {intent!r} is not an intent name")
    text = unescape(columns[1])
    if not text.strip():
        raise InvalidInputError(f"line {number}: the reply text is empty")
    language = columns[2].strip() or None if len(columns) > 2 else None
    tags = (
        tuple(tag.strip() for tag in columns[3].split(",") if tag.strip())
        if len(columns) > 3
        else ()
    )
    return LabelledReply(intent, text, language, tags, number)


def parse_lines(lines: Iterable[str]) -> list[LabelledReply]:
    """Every labelled reply of ``lines``, in order."""
    found = (parse_line(line, number) for number, line in enumerate(lines, start=1))
    return [reply for reply in found if reply is not None]


__all__ = ["LabelledReply", "escape", "parse_line", "parse_lines", "unescape"]
