"""Check a labelled reply set and print its counts as Markdown: the held-out set
(``replies_heldout.tsv``) when it is there, else the file given.

    .venv/bin/python -m bench.data.eval_stats            # counts; exit 1 if a check fails
    .venv/bin/python -m bench.data.eval_stats bench/data/replies_dev_external.tsv

Checks: four columns, known intents, languages and tags, ``sms`` or ``email`` on every line,
no duplicate texts, and the minimums issue 21 sets for the set (with this file's own
floors for per-language size, quoted and signed emails).
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from campaign_worker.domain.intents import BUILT_IN, LANGUAGES, OTHER

PATH = Path(__file__).with_name("replies_heldout.tsv")
INTENTS = (*BUILT_IN, OTHER)
TAGS = ("sms", "email", "quoted", "signature", "footer", "negation", "typo", "emoji", "bottom_post")
MIN_TOTAL = 600
MIN_PER_LANGUAGE = 120
MIN_QUOTED_EMAILS = 60
MIN_SIGNED_EMAILS = 40  # a signature or a footer
MIN_EMAIL_SHARE = 0.35


@dataclass(frozen=True)
class Reply:
    intent: str
    text: str  # line breaks restored
    language: str
    tags: frozenset[str]


def load(path: Path = PATH) -> tuple[list[Reply], list[str]]:
    """The replies of ``path`` and one message per malformed line."""
    replies: list[Reply] = []
    errors: list[str] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, start=1):
        if line.startswith("#"):
            continue
        fields = line.split("\t")
        if len(fields) != 4:
            errors.append(f"line {number}: {len(fields)} columns, expected 4")
            continue
        intent, text, language, tags = fields
        reply = Reply(intent, text.replace("\\n", "\n"), language, frozenset(tags.split(",")))
        errors += [f"line {number}: {problem}" for problem in _problems(reply)]
        replies.append(reply)
    return replies, errors


def _problems(reply: Reply) -> Iterable[str]:
    if reply.intent not in INTENTS:
        yield f"unknown intent {reply.intent!r}"
    if reply.language not in LANGUAGES:
        yield f"unknown language {reply.language!r}"
    if unknown := sorted(reply.tags - set(TAGS)):
        yield f"unknown tags {unknown}"
    if ("sms" in reply.tags) == ("email" in reply.tags):
        yield "needs exactly one of sms, email"
    if not reply.text.strip():
        yield "empty text"


def check(replies: Sequence[Reply]) -> list[str]:
    """Set-wide problems: duplicates and the minimums."""
    errors = [
        f"duplicate text: {text[:60]!r}"
        for text, count in Counter(reply.text for reply in replies).items()
        if count > 1
    ]
    emails = [reply for reply in replies if "email" in reply.tags]
    languages = Counter(reply.language for reply in replies)
    floors = [
        ("replies", len(replies), MIN_TOTAL),
        ("emails with a quoted original", _count(emails, "quoted"), MIN_QUOTED_EMAILS),
        ("emails with a signature or footer", _signed(emails), MIN_SIGNED_EMAILS),
        ("emails", len(emails), round(MIN_EMAIL_SHARE * len(replies))),
        *((f"{language} replies", languages[language], MIN_PER_LANGUAGE) for language in LANGUAGES),
    ]
    errors += [f"{what}: {have} < {need}" for what, have, need in floors if have < need]
    errors += [
        f"{language} has no {intent} reply"
        for language in LANGUAGES
        for intent in INTENTS
        if not any(r.language == language and r.intent == intent for r in replies)
    ]
    return errors


def _count(replies: Iterable[Reply], tag: str) -> int:
    return sum(tag in reply.tags for reply in replies)


def _signed(replies: Iterable[Reply]) -> int:
    return sum(bool(reply.tags & {"signature", "footer"}) for reply in replies)


def table(replies: Sequence[Reply]) -> str:
    """Counts per intent and language, then per tag and language, as Markdown."""
    by_language = [[r for r in replies if r.language == lang] for lang in LANGUAGES]
    header = ["", *LANGUAGES, "all"]
    rows = [
        _row(intent, [_of(group, intent) for group in by_language], _of(replies, intent), replies)
        for intent in INTENTS
    ]
    rows.append(["**all**", *(str(len(group)) for group in by_language), str(len(replies))])
    rows += [
        _row(f"tag `{tag}`", [_count(group, tag) for group in by_language], _count(replies, tag))
        for tag in TAGS
    ]
    lines = [header, ["---"] * len(header), *rows]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)


def _of(replies: Iterable[Reply], intent: str) -> int:
    return sum(reply.intent == intent for reply in replies)


def _row(label: str, counts: list[int], total: int, share_of: Sequence[Reply] = ()) -> list[str]:
    share = f" ({total / len(share_of):.0%})" if share_of else ""
    return [label, *map(str, counts), f"{total}{share}"]


def main(argv: Sequence[str] = ()) -> int:
    path = Path(argv[0]) if argv else PATH
    replies, errors = load(path)
    errors += check(replies)
    print(table(replies))
    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
