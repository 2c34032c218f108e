"""The features a reply is classified by: character and word n-grams, pure.

One function, ``features``, used alike when the intent model is trained (as the
vectorizer's analyzer), when it scores a reply, and when a template's example replies are
compared, so the three can never drift apart. Text is folded first: lower case, accents
dropped, "n't" joined ("don't" -> "dont") and other apostrophes split ("m'écrivez" ->
"m ecrivez"), links, addresses and digits replaced by placeholders.

- ``c:`` character 2- to 5-grams of each word padded with spaces (typos, inflections);
- ``w:`` words and ``b:`` word pairs, punctuation and emoji as words of their own;
- ``n:`` a word within three words after a negation ("don't stop" is not "stop");
- ``len:`` the reply's length in words, bucketed.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache
from typing import Final

MAX_CHARS: Final = 2000  # longer extracted text is read up to here (bounds the cost)
_CONTRACTION: Final = re.compile(r"(?<=\w)['\u2019\u2018`]t\b")
_APOSTROPHE: Final = re.compile(r"['\u2019\u2018`]")
_URL: Final = re.compile(r"(?:https?://|www\.)\S+")
_EMAIL: Final = re.compile(r"\S+@\S+\.\w+")
_DIGITS: Final = re.compile(r"\d+")
_TOKEN: Final = re.compile(r"\w+|[^\w\s]")
NEGATIONS: Final = frozenset(
    {
        # en
        "not", "no", "never", "dont", "doesnt", "didnt", "cant", "cannot", "wont", "isnt",
        "arent", "wasnt", "shouldnt", "wouldnt", "nothing", "without", "nor",
        # de
        "nicht", "kein", "keine", "keinen", "keiner", "keinem", "nie", "niemals", "ohne",
        # fr
        "ne", "n", "pas", "jamais", "sans", "ni",
        # es
        "nunca", "jamas", "sin",
    }
)  # fmt: skip
_NEGATION_SCOPE: Final = 3
_SCOPE_ENDS: Final = frozenset(",.;:!?")
_LENGTHS: Final = ((1, "1"), (2, "2"), (5, "3-5"), (10, "6-10"), (25, "11-25"))


def fold(text: str) -> str:
    """Lower case, no accents, apostrophes resolved, placeholders for links and numbers."""
    text = text[:MAX_CHARS].casefold()
    text = _URL.sub(" _url_ ", text)
    text = _EMAIL.sub(" _email_ ", text)
    text = _CONTRACTION.sub("t", text)
    text = _APOSTROPHE.sub(" ", text)
    decomposed = unicodedata.normalize("NFKD", text)
    text = "".join(char for char in decomposed if not unicodedata.combining(char))
    return _DIGITS.sub("0", text)


def tokens(text: str) -> list[str]:
    """Words, and each punctuation mark or emoji on its own, of folded text."""
    return _TOKEN.findall(text)


def _length(count: int) -> str:
    for limit, name in _LENGTHS:
        if count <= limit:
            return name
    return "26+"


@lru_cache(maxsize=65536)
def _char_grams(word: str) -> tuple[str, ...]:
    padded = f" {word} "
    size = len(padded)
    return tuple(
        "c:" + padded[start : start + n] for n in (2, 3, 4, 5) for start in range(size - n + 1)
    )


def features(text: str) -> list[str]:
    """The reply's features (repeated ones repeated: their count is their weight)."""
    words = tokens(fold(text))
    out: list[str] = []
    append = out.append
    for word in words:
        if word[0].isalnum() or word[0] == "_":
            out.extend(_char_grams(word))
    previous = "<s>"
    negated = 0
    for word in words:
        append("w:" + word)
        append(f"b:{previous} {word}")
        if negated:
            append("n:" + word)
            negated -= 1
        if word in NEGATIONS:
            negated = _NEGATION_SCOPE
        elif word in _SCOPE_ENDS:
            negated = 0
        previous = word
    append(f"b:{previous} </s>")
    append("len:" + _length(len(words)))
    return out


__all__ = ["MAX_CHARS", "NEGATIONS", "features", "fold", "tokens"]
