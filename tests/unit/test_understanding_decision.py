"""The decision of domain/understanding.py on given evidence: rules, the opt-out safety
threshold, the review threshold, examples, review intents; the whole-message opt-out
words; the thresholds' validation."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
from pydantic import ValidationError

from campaign_worker.domain.examples import ExampleMatch
from campaign_worker.domain.understanding import (
    NEEDS_REVIEW,
    Evidence,
    UnderstandingPolicy,
    decide,
    is_opt_out_word,
    negates_opt_out,
)

POLICY = UnderstandingPolicy(review_below=0.6, opt_out_review_above=0.15)


def scores(**given: float) -> Mapping[str, float]:
    names = ("not_interested", "opt_out", "other", "out_of_office", "positive", "question")
    rest = (1.0 - sum(given.values())) / (len(names) - len(given))
    return {name: given.get(name, rest) for name in names}


def evidence(probabilities: Mapping[str, float], **extra: object) -> Evidence:
    return Evidence("text", "en", probabilities, **extra)  # type: ignore[arg-type]


def test_an_opt_out_rule_wins_over_everything() -> None:
    found = decide(evidence(scores(positive=0.95), rule="opt_out"), POLICY)
    assert (found.intent, found.source, found.needs_review) == ("opt_out", "rule", False)
    assert found.confidence == 1.0


def test_a_confident_opt_out_opts_out() -> None:
    found = decide(evidence(scores(opt_out=0.85)), POLICY)
    assert (found.intent, found.source, found.needs_review) == ("opt_out", "model", False)
    assert found.opt_out_probability == pytest.approx(0.85)


def test_a_likely_opt_out_below_opt_out_above_needs_review() -> None:
    found = decide(evidence(scores(opt_out=0.65)), POLICY)
    assert found.intent == "opt_out" and found.needs_review
    assert found.review_reason == "opt_out_risk"
    lenient = UnderstandingPolicy(review_below=0.6, opt_out_review_above=0.15, opt_out_above=0.6)
    assert decide(evidence(scores(opt_out=0.65)), lenient).decided == "opt_out"


def test_an_unsure_opt_out_needs_review() -> None:
    found = decide(evidence(scores(opt_out=0.5, positive=0.3)), POLICY)
    assert found.needs_review and found.review_reason == "opt_out_risk"
    assert found.outcome == NEEDS_REVIEW and found.decided is None


def test_a_small_opt_out_chance_never_advances_even_when_another_intent_is_confident() -> None:
    found = decide(evidence(scores(positive=0.8, opt_out=0.16)), POLICY)
    assert found.intent == "positive"
    assert found.needs_review and found.review_reason == "opt_out_risk"
    below = decide(evidence(scores(positive=0.8, opt_out=0.14)), POLICY)
    assert not below.needs_review and below.decided == "positive"


def test_the_safety_threshold_beats_a_template_rule_and_an_example() -> None:
    example = ExampleMatch("pricing", 0.9, "what's the price")
    found = decide(evidence(scores(question=0.6, opt_out=0.3), rule="pricing"), POLICY)
    assert found.needs_review
    found = decide(evidence(scores(question=0.6, opt_out=0.3), example=example), POLICY)
    assert found.needs_review


def test_below_the_review_threshold_a_reply_needs_review() -> None:
    found = decide(evidence(scores(question=0.55, opt_out=0.01)), POLICY)
    assert found.intent == "question"
    assert found.needs_review and found.review_reason == "low_confidence"
    sure = decide(evidence(scores(question=0.65, opt_out=0.01)), POLICY)
    assert not sure.needs_review and sure.decided == "question"


def test_a_template_rule_gives_its_intent_with_full_confidence() -> None:
    found = decide(evidence(scores(positive=0.4, opt_out=0.01), rule="pricing"), POLICY)
    assert (found.intent, found.confidence, found.source) == ("pricing", 1.0, "rule")


def test_an_example_match_from_its_threshold() -> None:
    near = ExampleMatch("pricing", 0.5, "how much is it")
    found = decide(evidence(scores(question=0.7, opt_out=0.01), example=near), POLICY)
    assert (found.intent, found.source, found.confidence) == ("pricing", "example", 0.5)
    far = ExampleMatch("pricing", 0.3, "how much is it")
    found = decide(evidence(scores(question=0.7, opt_out=0.01), example=far), POLICY)
    assert (found.intent, found.source) == ("question", "model")


def test_a_confident_auto_reply_comes_before_the_template_rules() -> None:
    found = decide(evidence(scores(out_of_office=0.9, opt_out=0.01), rule="pricing"), POLICY)
    assert found.intent == "out_of_office"
    unsure = decide(evidence(scores(out_of_office=0.7, opt_out=0.01), rule="pricing"), POLICY)
    assert unsure.intent == "pricing"


def test_review_intents_always_need_review() -> None:
    policy = UnderstandingPolicy(review_intents=["other"])
    found = decide(evidence(scores(other=0.99, opt_out=0.0)), policy)
    assert found.intent == "other" and found.needs_review
    assert found.review_reason == "review_intent"


def test_the_result_as_json() -> None:
    found = decide(evidence(scores(positive=0.9, opt_out=0.01)), POLICY)
    data = found.as_dict()
    assert set(data) >= {"intent", "confidence", "language", "extracted_text", "needs_review"}
    assert data["intent"] == "positive" and data["scores"]["positive"] == 0.9


@pytest.mark.parametrize(
    "text",
    ["STOP", "stop", "Stop.", "STOP!!!", "stop please", "Please stop", "STOPALL", "stop all",
     "Unsubscribe", "UNSUBSCRIBE ME", "STOPP", "bitte abmelden", "ARRÊT", "arret svp", "BAJA",
     "baja por favor", "ALTO", "Cancel", "quit", "stop stop stop", "Désabonner"],
)  # fmt: skip
def test_whole_message_opt_out_words(text: str) -> None:
    assert is_opt_out_word(text)


@pytest.mark.parametrize(
    "text",
    ["Stop?", "don't stop", "stop by our booth", "can't stop smiling", "bus stop",
     "How do I stop the auto-renewal", "stop sending these", "the end", "", "yes"],
)  # fmt: skip
def test_not_whole_message_opt_out_words(text: str) -> None:
    assert not is_opt_out_word(text)


def test_a_templates_own_words_count_too() -> None:
    assert is_opt_out_word("Halt!", frozenset({"halt"}))
    assert not is_opt_out_word("Halt!")


@pytest.mark.parametrize(
    "fields",
    [
        {"review_below": 0.0},
        {"review_below": 1.5},
        {"opt_out_review_above": -0.1},
        {"opt_out_review_above": 0.7, "review_below": 0.6},
        {"opt_out_review_above": 0.3, "opt_out_above": 0.3},
        {"opt_out_above": 1.1},
        {"example_match": 0},
        {"review_intents": ["Not An Intent"]},
        {"unknown": 1},
    ],
)
def test_bad_thresholds_are_refused(fields: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        UnderstandingPolicy.model_validate(fields)


@pytest.mark.parametrize(
    "text",
    ["Please don't unsubscribe me", "do not remove me from the list", "Bitte nicht abmelden",
     "Melden Sie mich bitte nicht ab", "Hört nicht auf damit!", "Ne me désinscrivez pas",
     "Ne m'enlevez pas de la liste",
     "N'arrêtez surtout pas", "No me den de baja", "no me quiten de la lista"],
)  # fmt: skip
def test_negated_opt_out_commands(text: str) -> None:
    assert negates_opt_out(text)


@pytest.mark.parametrize(
    "text",
    ["Unsubscribe me", "Bitte abmelden", "Désinscrivez-moi", "Denme de baja", "I don't know"],
)
def test_plain_opt_out_commands_are_not_negated(text: str) -> None:
    assert not negates_opt_out(text)


def test_a_negated_opt_out_the_model_reads_as_opt_out_needs_review() -> None:
    found = decide(evidence(scores(opt_out=0.95), negated_opt_out=True), POLICY)
    assert found.intent == "opt_out" and found.needs_review
    assert found.review_reason == "opt_out_risk"
    # The rule never overrides an explicit opt-out word, nor touches other intents.
    assert (
        decide(evidence(scores(opt_out=0.95), rule="opt_out", negated_opt_out=True), POLICY).decided
        == "opt_out"
    )
    assert (
        decide(evidence(scores(positive=0.95, opt_out=0.01), negated_opt_out=True), POLICY).decided
        == "positive"
    )
