"""Custom intents declared by example replies, pure: similarity in the n-gram space.

A template intent may list ``examples``; a reply is compared with every example by the
cosine similarity of their feature vectors (``reply_features.features``, sublinear term
frequency, each feature weighted by ``weight``, e.g. the shipped model's IDF). The best
example names the intent and its similarity is the confidence. ``example_problems``
checks a template's examples: too few for an intent, or an example whose nearest other
example belongs to another intent and is close to it (a collision).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from campaign_worker.domain.reply_features import features

MIN_EXAMPLES: Final = 3
# Two examples of different intents this similar are a collision: a reply near one is
# near the other as well.
COLLISION_SIMILARITY: Final = 0.7

Weight = Callable[[str], float]


def _uniform(_feature: str) -> float:
    return 1.0


def vector(text: str, weight: Weight = _uniform) -> dict[str, float]:
    """The L2-normalized, weighted, sublinear-TF feature vector of ``text``."""
    counts = Counter(features(text))
    raw = {feature: (1.0 + math.log(count)) * weight(feature) for feature, count in counts.items()}
    norm = math.sqrt(sum(value * value for value in raw.values()))
    return {feature: value / norm for feature, value in raw.items()} if norm else {}


@dataclass(frozen=True)
class ExampleMatch:
    intent: str
    similarity: float
    example: str


class ExampleIndex:
    """Every example of a template's intents, for nearest-example lookups."""

    def __init__(self, examples: Mapping[str, Sequence[str]], weight: Weight = _uniform) -> None:
        self._weight = weight
        self._entries: list[tuple[str, str]] = []
        self._postings: dict[str, list[tuple[int, float]]] = defaultdict(list)
        for intent, texts in examples.items():
            for text in texts:
                entry = len(self._entries)
                self._entries.append((intent, text))
                for feature, value in vector(text, weight).items():
                    self._postings[feature].append((entry, value))

    def __bool__(self) -> bool:
        return bool(self._entries)

    def similarities(self, text: str) -> list[float]:
        """Cosine similarity of ``text`` with each example, in declaration order."""
        scores = [0.0] * len(self._entries)
        for feature, value in vector(text, self._weight).items():
            for entry, other in self._postings.get(feature, ()):
                scores[entry] += value * other
        return scores

    def best(self, text: str) -> ExampleMatch | None:
        """The most similar example (None without examples or with nothing shared)."""
        if not self._entries:
            return None
        scores = self.similarities(text)
        entry = max(range(len(scores)), key=scores.__getitem__)
        if scores[entry] <= 0.0:
            return None
        intent, example = self._entries[entry]
        return ExampleMatch(intent, min(scores[entry], 1.0), example)


def _cosine(one: Mapping[str, float], other: Mapping[str, float]) -> float:
    return sum(value * other.get(feature, 0.0) for feature, value in one.items())


def example_problems(examples: Mapping[str, Sequence[str]]) -> list[str]:
    """What is wrong with a template's examples, one sentence each (empty: nothing):
    an intent with fewer than ``MIN_EXAMPLES``, or an example at least
    ``COLLISION_SIMILARITY`` similar to another intent's example and no less similar to
    it than to any of its own intent's (it would be taken for the other intent)."""
    problems = [
        f"intent {intent!r} has {len(texts)} example(s); give at least {MIN_EXAMPLES}"
        for intent, texts in examples.items()
        if 0 < len(texts) < MIN_EXAMPLES
    ]
    entries = [(intent, text, vector(text)) for intent, texts in examples.items() for text in texts]
    reported: set[frozenset[int]] = set()
    for index, (intent, text, own) in enumerate(entries):
        same = max(
            (_cosine(own, e[2]) for i, e in enumerate(entries) if i != index and e[0] == intent),
            default=0.0,
        )
        for other_index, (other_intent, other_text, theirs) in enumerate(entries):
            pair = frozenset((index, other_index))
            if other_intent == intent or pair in reported:
                continue
            similarity = _cosine(own, theirs)
            if similarity >= COLLISION_SIMILARITY and similarity >= same:
                reported.add(pair)
                problems.append(
                    f"intent {intent!r} example {text!r} collides with intent "
                    f"{other_intent!r} example {other_text!r} (similarity {similarity:.2f})"
                )
    return problems


__all__ = [
    "COLLISION_SIMILARITY",
    "MIN_EXAMPLES",
    "ExampleIndex",
    "ExampleMatch",
    "example_problems",
    "vector",
]
