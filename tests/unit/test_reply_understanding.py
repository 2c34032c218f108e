"""The reply understanding engine with the shipped model (adapters/understanding.py):
a handful of clear-cut replies, negations, quoted emails, template rules on the extracted
text, custom intents by example, thresholds. Accuracy itself is measured in bench/."""

from __future__ import annotations

import pytest

from campaign_worker.adapters.template_files import TemplateFiles, parse_template
from campaign_worker.adapters.understanding import NgramReplyUnderstanding
from campaign_worker.bootstrap import build_understanding
from campaign_worker.domain.templates import Template
from campaign_worker.settings import Settings

QUOTED_STOP = (
    "\n\nOn Tue, 3 Dec 2026 at 10:15, Acme Sales <sales@acme.example> wrote:\n"
    "> Hi Ana! Want to hear more? Reply YES or STOP to opt out."
)


@pytest.fixture(scope="module")
def engine() -> NgramReplyUnderstanding:
    built = NgramReplyUnderstanding()
    built.warm_up()
    return built


@pytest.fixture(scope="module")
def default_template() -> Template:
    return TemplateFiles().get_template("default")


def custom_template(extra: str = "") -> Template:
    return parse_template(
        f"""
template_id: custom
languages: [en, de]
intents:
  pricing:
    examples: ["what's the price", "how much is it", "send me a quote", "was kostet das"]
  callback:
    keywords: [callback]
{extra}
campaign_types:
  sales:
    stages:
      - name: one
        messages: [{{text: "Hi"}}]
""",
        "custom.yaml",
    )


@pytest.mark.parametrize(
    ("reply", "intent"),
    [
        ("STOP", "opt_out"),
        ("no more texts please", "opt_out"),
        ("don't text me anymore", "opt_out"),
        ("ne m'écrivez plus", "opt_out"),
        ("Bitte keine Nachrichten mehr", "opt_out"),
        ("No me escriban más", "opt_out"),
        ("I'm out of the office until Monday with limited access to email.", "out_of_office"),
        ("No thanks, we're all set", "not_interested"),
        ("How much does it cost?", "question"),
        ("Yes please, tell me more", "positive"),
    ],
)
def test_clear_cut_replies(engine: NgramReplyUnderstanding, reply: str, intent: str) -> None:
    found = engine.understand(reply)
    assert found.intent == intent
    assert not found.needs_review


@pytest.mark.parametrize(
    "reply",
    [
        "Don't stop sending these, love them",
        "Stop by our booth at the fair!",
        "Can't stop smiling 😂",
        "How do I stop the auto-renewal?",
    ],
)
def test_stop_that_is_not_an_opt_out(engine: NgramReplyUnderstanding, reply: str) -> None:
    found = engine.understand(reply)
    assert found.intent != "opt_out"
    assert found.decided != "opt_out"


def test_the_quoted_opt_out_line_is_not_read(
    engine: NgramReplyUnderstanding, default_template: Template
) -> None:
    found = engine.understand("Yes please" + QUOTED_STOP, default_template)
    assert found.extracted_text == "Yes please"
    assert found.intent == "positive" and not found.needs_review
    assert found.opt_out_probability < 0.1


def test_template_keywords_read_the_extracted_text(
    engine: NgramReplyUnderstanding, default_template: Template
) -> None:
    # "quote" is a pricing keyword of the packaged template; here only the quote says it.
    reply = "Sounds good, let's talk" + QUOTED_STOP.replace("Want to hear more?", "Your quote:")
    assert engine.understand(reply, default_template).intent == "positive"
    own = engine.understand("What does a quote for 20 seats cost?", default_template)
    assert (own.intent, own.source) == ("pricing", "rule")


def test_whole_message_opt_out_keywords_of_the_template(engine: NgramReplyUnderstanding) -> None:
    template = custom_template("opt_out_keywords: [HALT]")
    found = engine.understand("halt!", template)
    assert (found.intent, found.source) == ("opt_out", "rule")


def test_custom_intents_by_example(engine: NgramReplyUnderstanding) -> None:
    template = custom_template()
    found = engine.understand("How much does it cost for 10 users?", template)
    assert (found.intent, found.source) == ("pricing", "example")
    german = engine.understand("Was kostet das im Monat?", template)
    assert german.intent == "pricing"
    assert engine.understand("callback tomorrow please", template).intent == "callback"
    assert engine.understand("Not interested, thanks", template).intent == "not_interested"
    # Built once per template and kept.
    assert engine._example_index(template) is engine._example_index(template)


def test_an_opt_out_beats_a_custom_intent(engine: NgramReplyUnderstanding) -> None:
    found = engine.understand("Stop sending me quotes, remove me from your list", custom_template())
    assert found.intent == "opt_out" and not found.needs_review


def test_the_review_threshold_of_a_template(engine: NgramReplyUnderstanding) -> None:
    strict = custom_template("understanding: {review_below: 1.0, opt_out_review_above: 0.5}")
    found = engine.understand("maybe later, who knows", strict)
    assert found.needs_review and found.review_reason == "low_confidence"
    assert found.decided is None


def test_unrecognized_replies_can_be_held_by_template(engine: NgramReplyUnderstanding) -> None:
    held = custom_template("understanding: {review_intents: [other]}")
    found = engine.understand("lol", held)
    assert found.intent == "other" and found.needs_review


def test_language_and_its_fallback_for_short_replies(engine: NgramReplyUnderstanding) -> None:
    assert engine.understand("Ich bin bis zum 10. Januar im Urlaub.").language == "de"
    assert engine.understand("Je suis absent du bureau jusqu'au 5 janvier.").language == "fr"
    assert engine.understand("ok", languages=["es"]).language == "es"
    assert engine.understand("ok", custom_template()).language in ("en", "de")


def test_every_classification_carries_a_confidence_and_scores(
    engine: NgramReplyUnderstanding,
) -> None:
    found = engine.understand("hmm")
    assert 0.0 <= found.confidence <= 1.0
    assert sum(found.scores.values()) == pytest.approx(1.0)
    assert found.opt_out_probability == found.scores["opt_out"]
    assert engine.understand("").extracted_text == ""


def test_the_composition_root_builds_it(tmp_path_factory: pytest.TempPathFactory) -> None:
    built = build_understanding(Settings())
    assert built.understand("STOP").intent == "opt_out"
