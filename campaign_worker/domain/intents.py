"""Reply intents: what an inbound message means, decided once when it is recorded.

A template declares intents as keyword sets, phrases, whole-message answers and regexes;
built-in intents (``opt_out``, ``out_of_office``, ``not_interested``, ``question``,
``positive``) come with defaults per language. Everything is matched on normalized text:
lower case, accents and apostrophes dropped, punctuation other than ``?`` turned into
spaces, whitespace collapsed. A message matching no intent is ``other``.

``compile_classifier`` builds one ``ReplyClassifier`` per template (``Template`` caches
it), so a step never normalizes the history again: the intent is stored in the message's
metadata (``metadata.intent``) when the reply is appended.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, get_args

OPT_OUT = "opt_out"
OUT_OF_OFFICE = "out_of_office"
NOT_INTERESTED = "not_interested"
QUESTION = "question"
POSITIVE = "positive"
OTHER = "other"
BUILT_IN = (OPT_OUT, OUT_OF_OFFICE, NOT_INTERESTED, QUESTION, POSITIVE)
# Replies with these intents do not count as a reply (no advancing, no "replied").
NOT_A_REPLY = frozenset({OUT_OF_OFFICE})

_QUESTION_START = r"^(how|what|when|why|which|who|where|can|could|does|do|is|are|will)\b"

# language -> intent -> (words/phrases anywhere, whole-message answers, regexes)
DEFAULTS: dict[str, dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]]] = {
    "en": {
        OPT_OUT: (
            (
                "stop",
                "stopall",
                "unsubscribe",
                "opt out",
                "optout",
                "remove me",
                "take me off",
                "do not contact",
                "dont contact",
                "do not message",
                "dont message",
                "leave me alone",
            ),
            ("end", "quit", "cancel"),
            (),
        ),
        OUT_OF_OFFICE: (
            (
                "out of office",
                "out of the office",
                "ooo",
                "automatic reply",
                "auto reply",
                "autoreply",
                "on vacation",
                "on holiday",
                "on leave",
                "on annual leave",
                "away from the office",
                "away from my desk",
                "limited access to email",
            ),
            (),
            (),
        ),
        NOT_INTERESTED: (
            (
                "not interested",
                "no thanks",
                "no thank you",
                "not for us",
                "not for me",
                "not right now",
                "no need",
                "not a fit",
                "not a good fit",
                "we already have",
            ),
            ("no", "nope", "nah", "pass"),
            (),
        ),
        QUESTION: ((), (), (r"\?", _QUESTION_START)),
        POSITIVE: (
            (
                "yes",
                "yeah",
                "yep",
                "sure",
                "interested",
                "sounds good",
                "tell me more",
                "lets talk",
                "definitely",
                "absolutely",
                "im in",
            ),
            ("ok", "okay", "great", "y"),
            (),
        ),
    },
    "de": {
        OPT_OUT: (("abmelden", "austragen", "stopp", "keine nachrichten mehr"), (), ()),
        OUT_OF_OFFICE: (("nicht im buro", "abwesend", "im urlaub", "abwesenheitsnotiz"), (), ()),
        NOT_INTERESTED: (("kein interesse", "nein danke"), ("nein",), ()),
        QUESTION: ((), (), (r"\?",)),
        POSITIVE: (("ja", "gerne", "interessiert"), (), ()),
    },
    "fr": {
        OPT_OUT: (("desabonner", "desinscrire", "arret"), (), ()),
        OUT_OF_OFFICE: (("absent du bureau", "en conges", "en vacances"), (), ()),
        NOT_INTERESTED: (("pas interesse", "non merci"), ("non",), ()),
        QUESTION: ((), (), (r"\?",)),
        POSITIVE: (("oui", "volontiers", "interesse"), (), ()),
    },
    "es": {
        OPT_OUT: (("darme de baja", "baja", "no me contacten"), (), ()),
        OUT_OF_OFFICE: (("fuera de la oficina", "de vacaciones"), (), ()),
        NOT_INTERESTED: (("no me interesa", "no gracias"), ("no",), ()),
        QUESTION: ((), (), (r"\?",)),
        POSITIVE: (("si", "claro", "me interesa"), (), ()),
    },
}
Language = Literal["en", "de", "fr", "es"]
LANGUAGES: tuple[str, ...] = get_args(Language)

_APOSTROPHES = re.compile(r"['\u2019\u2018`]")
_NOT_WORD = re.compile(r"[^\w?]+")


def normalize(text: str) -> str:
    """Lower case, no accents or apostrophes, punctuation but ``?`` as spaces, one space."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    plain = "".join(char for char in decomposed if not unicodedata.combining(char))
    return _NOT_WORD.sub(" ", _APOSTROPHES.sub("", plain)).strip()


class IntentDeclaration(Protocol):
    """What a template declares for one intent (``templates.IntentSpec``)."""

    @property
    def keywords(self) -> Sequence[str]: ...
    @property
    def phrases(self) -> Sequence[str]: ...
    @property
    def exact(self) -> Sequence[str]: ...
    @property
    def regex(self) -> Sequence[str]: ...
    @property
    def replace_defaults(self) -> bool: ...


@dataclass(frozen=True)
class _Matcher:
    name: str
    anywhere: re.Pattern[str] | None
    exact: frozenset[str]
    patterns: tuple[re.Pattern[str], ...]

    def matches(self, text: str) -> bool:
        if text in self.exact:
            return True
        if self.anywhere is not None and self.anywhere.search(text):
            return True
        return any(pattern.search(text) for pattern in self.patterns)


class ReplyClassifier:
    """Compiled intents of one template, tried in order; the first match wins."""

    def __init__(self, matchers: Sequence[_Matcher]) -> None:
        self._matchers = tuple(matchers)

    @property
    def intents(self) -> list[str]:
        return [matcher.name for matcher in self._matchers]

    def classify(self, content: str) -> str:
        return self.match(content) or OTHER

    def match(self, content: str) -> str | None:
        """The first intent whose words, answers or regexes match (None: none does)."""
        text = normalize(content)
        for matcher in self._matchers:
            if matcher.matches(text):
                return matcher.name
        return None


def _words_pattern(words: Iterable[str]) -> re.Pattern[str] | None:
    normalized = sorted({normalize(word) for word in words} - {""}, key=len, reverse=True)
    if not normalized:
        return None
    return re.compile(r"(?<!\w)(?:" + "|".join(map(re.escape, normalized)) + r")(?!\w)")


def _matcher(
    name: str,
    languages: Sequence[str],
    declared: IntentDeclaration | None,
    extra_exact: Iterable[str] = (),
) -> _Matcher:
    anywhere: list[str] = []
    exact: set[str] = {normalize(word) for word in extra_exact}
    regexes: list[str] = []
    if declared is None or not declared.replace_defaults:
        for language in languages:
            words, answers, patterns = DEFAULTS.get(language, {}).get(name, ((), (), ()))
            anywhere += words
            exact |= {normalize(answer) for answer in answers}
            regexes += patterns
    if declared is not None:
        anywhere += [*declared.keywords, *declared.phrases]
        exact |= {normalize(answer) for answer in declared.exact}
        regexes += declared.regex
    return _Matcher(
        name=name,
        anywhere=_words_pattern(anywhere),
        exact=frozenset(exact - {""}),
        patterns=tuple(re.compile(pattern) for pattern in dict.fromkeys(regexes)),
    )


def compile_classifier(
    languages: Sequence[str],
    declared: Mapping[str, IntentDeclaration],
    opt_out_keywords: Iterable[str] = (),
) -> ReplyClassifier:
    """Order: opt-out, out-of-office, the template's own intents (as declared), then
    not-interested, question, positive. ``opt_out_keywords`` opt out as a whole message."""
    first = [
        _matcher(OPT_OUT, languages, declared.get(OPT_OUT), opt_out_keywords),
        _matcher(OUT_OF_OFFICE, languages, declared.get(OUT_OF_OFFICE)),
    ]
    custom = [_matcher(name, (), spec) for name, spec in declared.items() if name not in BUILT_IN]
    last = [_matcher(name, languages, declared.get(name)) for name in BUILT_IN[2:]]
    return ReplyClassifier([*first, *custom, *last])


def compile_rules(
    declared: Mapping[str, IntentDeclaration], opt_out_keywords: Iterable[str] = ()
) -> ReplyClassifier:
    """Only what a template declares, no built-in phrases: the reply understanding's
    explicit rules (the model reads everything else). Same order as
    ``compile_classifier``."""
    first = [
        _matcher(OPT_OUT, (), declared.get(OPT_OUT), opt_out_keywords),
        _matcher(OUT_OF_OFFICE, (), declared.get(OUT_OF_OFFICE)),
    ]
    custom = [_matcher(name, (), spec) for name, spec in declared.items() if name not in BUILT_IN]
    last = [_matcher(name, (), declared[name]) for name in BUILT_IN[2:] if name in declared]
    return ReplyClassifier([*first, *custom, *last])


__all__ = [
    "BUILT_IN",
    "LANGUAGES",
    "NOT_A_REPLY",
    "NOT_INTERESTED",
    "OPT_OUT",
    "OTHER",
    "OUT_OF_OFFICE",
    "POSITIVE",
    "QUESTION",
    "Language",
    "ReplyClassifier",
    "compile_classifier",
    "compile_rules",
    "normalize",
]
