"""Reply understanding, the pure part: the result, the thresholds and the decision.

The pipeline (the adapter ``adapters/understanding.py`` runs it): the author's own words
are extracted from the reply; explicit rules read them first (a whole-message opt-out
word, then the template's own keywords, phrases and regexes); the statistical model
gives every built-in intent a probability; a template's example replies name its custom
intents by similarity; ``decide`` turns all that and the template's thresholds into one
``Classification``. Safety first: an opt-out rule always wins, and a reply whose opt-out
probability passes the low ``opt_out_review_above`` threshold is an opt-out when the
model is sure (``opt_out_above``) and otherwise needs review, never anything that could
advance.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from campaign_worker.domain.examples import ExampleMatch
from campaign_worker.domain.intents import OPT_OUT, OTHER, OUT_OF_OFFICE, normalize

NEEDS_REVIEW: Final = "needs_review"  # what an evaluation counts a held reply as
Source = Literal["rule", "model", "example"]
ReviewReason = Literal["low_confidence", "opt_out_risk", "review_intent"]

# The defaults, in one place (chosen on the development sets: campaign_worker/data/intents/
# dev.tsv and bench/data/replies_dev_external.tsv; frozen before the held-out look).
REVIEW_BELOW: Final = 0.45
OPT_OUT_REVIEW_ABOVE: Final = 0.15
OPT_OUT_ABOVE: Final = 0.8
EXAMPLE_MATCH: Final = 0.45
# A confident auto-reply is one before the template's own rules: auto-replies are long
# and mention prices, products and people.
OUT_OF_OFFICE_FIRST: Final = 0.8

# Whole-message opt-out words (normalized) in en/de/fr/es, with the polite words that
# may come with them ("STOP please", "bitte abmelden", "baja por favor").
OPT_OUT_WORDS: Final = frozenset(
    {
        "stop", "stopall", "stop all", "unsubscribe", "unsub", "unsubscribe me", "cancel",
        "end", "quit", "optout", "opt out", "opt me out", "remove", "remove me", "stopp",
        "abmelden", "austragen", "abbestellen", "arret", "desabonner", "desinscrire",
        "desinscription", "baja", "alto", "darme de baja", "dar de baja", "cancelar", "parar",
    }
)  # fmt: skip
_POLITE: Final = frozenset(
    {
        "please", "pls", "plz", "now", "thanks", "thank", "you", "thx", "bitte", "danke",
        "sofort", "svp", "merci", "s", "il", "vous", "plait", "por", "favor", "gracias", "ya",
    }
)  # fmt: skip

# An opt-out command negated ("don't unsubscribe me", "nicht abmelden", "ne me désinscrivez
# pas", "no me den de baja"): such a reply is never opted out by the model alone.
_NEGATED_OPT_OUT: Final = re.compile(
    r"\b(?:don'?t|do not|never|didn'?t (?:mean|want) to)\s+(?:please\s+)?"
    r"(?:unsubscribe|remove|opt\s*(?:me\s+)?out|stop|take me off|delete)"
    r"|\bnicht\s+(?:ab(?:melden|bestellen)|austragen|entfernen|löschen|aufhören|stoppen)"
    r"|\b(?:melden|tragen|nehmen|streichen)\s+sie\s+mich\s+(?:bitte\s+)?nicht\b"
    r"|\bhört?\s+(?:bitte\s+)?(?:bloß\s+|bloss\s+)?nicht\s+auf"
    r"|\bne\s+(?:me\s+|m['\u2019]\s*)?(?:désinscrivez|desinscrivez|désabonnez|desabonnez|retirez|enlevez"
    r"|supprimez|sortez)\s+(?:\w+\s+)?pas"
    r"|\bn['\u2019]\s*arr[eê]tez\s+(?:\w+\s+)?pas"
    r"|\bno\s+(?:me\s+)?(?:den\s+de\s+baja|quiten|saquen|borren|eliminen|paren|dejen\s+de)",
    re.IGNORECASE,
)

IntentName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")]


class UnderstandingPolicy(BaseModel):
    """A template's thresholds (``understanding:`` in its file)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Below this confidence a reply needs review (the conversation holds for a person).
    review_below: float = Field(default=REVIEW_BELOW, gt=0.0, le=1.0)
    # Above this opt-out probability a reply never advances: opt-out or review.
    opt_out_review_above: float = Field(default=OPT_OUT_REVIEW_ABOVE, ge=0.0, lt=1.0)
    # From this opt-out probability the model's opt-out is acted on (opted out); between
    # the two a person decides.
    opt_out_above: float = Field(default=OPT_OUT_ABOVE, gt=0.0, le=1.0)
    # From this similarity to a template example, the reply is that example's intent.
    example_match: float = Field(default=EXAMPLE_MATCH, gt=0.0, le=1.0)
    # Intents that always need review (e.g. [other]: nothing unrecognized advances).
    review_intents: list[IntentName] = Field(default_factory=list)

    @model_validator(mode="after")
    def _safety_below_review(self) -> UnderstandingPolicy:
        for name in ("review_below", "opt_out_above"):
            if self.opt_out_review_above >= getattr(self, name):
                raise ValueError(
                    f"opt_out_review_above ({self.opt_out_review_above}) must be below "
                    f"{name} ({getattr(self, name)}): it is the lower, safety threshold"
                )
        return self


@dataclass(frozen=True)
class Classification:
    """What a reply means, how sure that is, and whether a person must look at it.

    ``intent`` is the best reading even when ``needs_review`` (a reviewer's hint);
    ``decided`` is the intent a flow may act on: None while the reply needs review.
    """

    intent: str
    confidence: float
    language: str
    extracted_text: str
    needs_review: bool
    opt_out_probability: float
    source: Source
    review_reason: ReviewReason | None = None
    scores: Mapping[str, float] = field(default_factory=dict)

    @property
    def decided(self) -> str | None:
        return None if self.needs_review else self.intent

    @property
    def outcome(self) -> str:
        """The intent, or ``needs_review``: how an evaluation counts the reply."""
        return NEEDS_REVIEW if self.needs_review else self.intent

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, rounded (the CLI's output, a message's metadata)."""
        return {
            "intent": self.intent,
            "confidence": round(self.confidence, 4),
            "language": self.language,
            "extracted_text": self.extracted_text,
            "needs_review": self.needs_review,
            "opt_out_probability": round(self.opt_out_probability, 4),
            "source": self.source,
            "review_reason": self.review_reason,
            "scores": {name: round(value, 4) for name, value in sorted(self.scores.items())},
        }


def is_opt_out_word(text: str, keywords: frozenset[str] = frozenset()) -> bool:
    """The whole message is an opt-out word (built in, or one of ``keywords``, given
    normalized), alone or with polite words: "STOP", "Stop please!", "bitte abmelden"."""
    normalized = normalize(text)
    if not normalized or "?" in normalized:
        return False
    words = OPT_OUT_WORDS | keywords
    if normalized in words:
        return True
    core = [word for word in normalized.split() if word not in _POLITE]
    return bool(core) and (" ".join(core) in words or all(word in words for word in core))


def negates_opt_out(text: str) -> bool:
    """The reply negates an opt-out command ("please don't unsubscribe me")."""
    return bool(_NEGATED_OPT_OUT.search(text))


@dataclass(frozen=True)
class Evidence:
    """What the pipeline found for one reply, for ``decide``."""

    extracted_text: str
    language: str
    probabilities: Mapping[str, float]
    rule: str | None = None  # the intent an explicit rule gave
    example: ExampleMatch | None = None
    negated_opt_out: bool = False  # ``negates_opt_out`` of the text


def decide(evidence: Evidence, policy: UnderstandingPolicy) -> Classification:
    """One classification from the evidence, in order: an opt-out rule; a negated opt-out
    command the model reads as an opt-out (review); a confident opt-out
    (``opt_out_above``); the opt-out safety threshold (review); a confident
    auto-reply; another rule; a template example; the model, needing review below
    ``review_below``."""
    probabilities = evidence.probabilities
    opt_out = probabilities.get(OPT_OUT, 0.0)
    best = max(probabilities, key=probabilities.__getitem__) if probabilities else OTHER
    confidence = probabilities.get(best, 0.0)

    def result(
        intent: str,
        score: float,
        source: Source,
        reason: ReviewReason | None = None,
    ) -> Classification:
        if reason is None and intent in policy.review_intents:
            reason = "review_intent"
        return Classification(
            intent=intent,
            confidence=score,
            language=evidence.language,
            extracted_text=evidence.extracted_text,
            needs_review=reason is not None,
            opt_out_probability=opt_out,
            source=source,
            review_reason=reason,
            scores=probabilities,
        )

    if evidence.rule == OPT_OUT:
        return result(OPT_OUT, 1.0, "rule")
    if best == OPT_OUT and evidence.negated_opt_out:
        return result(OPT_OUT, confidence, "model", "opt_out_risk")
    if best == OPT_OUT and confidence >= max(policy.opt_out_above, policy.review_below):
        return result(OPT_OUT, confidence, "model")
    if opt_out > policy.opt_out_review_above:
        return result(best, confidence, "model", "opt_out_risk")
    if best == OUT_OF_OFFICE and confidence >= max(OUT_OF_OFFICE_FIRST, policy.review_below):
        return result(OUT_OF_OFFICE, confidence, "model")
    if evidence.rule is not None:
        return result(evidence.rule, 1.0, "rule")
    example = evidence.example
    if example is not None and example.similarity >= policy.example_match:
        return result(example.intent, example.similarity, "example")
    if confidence < policy.review_below:
        return result(best, confidence, "model", "low_confidence")
    return result(best, confidence, "model")


__all__ = [
    "EXAMPLE_MATCH",
    "NEEDS_REVIEW",
    "OPT_OUT_ABOVE",
    "OPT_OUT_REVIEW_ABOVE",
    "OPT_OUT_WORDS",
    "REVIEW_BELOW",
    "Classification",
    "Evidence",
    "UnderstandingPolicy",
    "decide",
    "is_opt_out_word",
    "negates_opt_out",
]
