"""Reply intents: normalization, built-in defaults, template intents, languages."""

from __future__ import annotations

from typing import Any

import pytest

from campaign_worker.adapters.template_files import ConfigManager
from campaign_worker.domain.intents import normalize
from campaign_worker.domain.templates import Template


def template(**extra: Any) -> Template:
    return Template.model_validate(
        {
            "template_id": "t",
            "campaign_types": {"x": {"stages": [{"name": "a", "messages": [{"text": "hi"}]}]}},
            **extra,
        }
    )


def test_normalize_drops_case_accents_apostrophes_and_punctuation_but_question_marks() -> None:
    assert normalize("  Don\u2019t   STOP!!  Café, ok? ") == "dont stop cafe ok?"


@pytest.mark.parametrize(
    ("content", "intent"),
    [
        # The examples: none of these may count as interest.
        ("no thanks", "not_interested"),
        ("STOP please", "opt_out"),
        ("please unsubscribe me", "opt_out"),
        ("I am out of the office until Monday", "out_of_office"),
        ("Automatic reply: On vacation", "out_of_office"),
        ("Not interested, sorry.", "not_interested"),
        ("No.", "not_interested"),
        ("How does it work?", "question"),
        ("what does it cost", "question"),
        ("Yes, tell me more!", "positive"),
        ("ok", "positive"),
        ("stopwatch", "other"),
        ("Thursday works", "other"),
        ("CANCEL", "opt_out"),
    ],
)
def test_built_in_intents(content: str, intent: str) -> None:
    assert template().classifier.classify(content) == intent


def test_a_template_intent_is_tried_before_the_generic_ones_and_extends_built_ins() -> None:
    t = template(
        intents={
            "pricing": {"keywords": ["price", "pricing", "quote"], "regex": [r"\bcost(s)?\b"]},
            "positive": {"exact": ["buy"]},
        }
    )
    assert t.classifier.classify("What is the price?") == "pricing"
    assert t.classifier.classify("costs?") == "pricing"
    assert t.classifier.classify("BUY") == "positive"
    assert t.classifier.classify("yes") == "positive"  # the defaults still apply


def test_replace_defaults_drops_the_built_in_phrases() -> None:
    t = template(intents={"positive": {"keywords": ["deal"], "replace_defaults": True}})
    assert t.classifier.classify("yes") == "other"
    assert t.classifier.classify("Deal!") == "positive"


def test_languages_select_built_in_phrase_sets() -> None:
    german = template(languages=["de"])
    assert german.classifier.classify("Ich bin nicht im Büro") == "out_of_office"
    assert german.classifier.classify("Nein danke") == "not_interested"
    assert german.classifier.classify("yes") == "other"  # English not selected
    both = template(languages=["en", "de"])
    assert both.classifier.classify("yes") == "positive"
    assert both.classifier.classify("Bitte abmelden") == "opt_out"


def test_template_opt_out_keywords_opt_out_as_the_whole_message() -> None:
    t = template(opt_out_keywords=["ENOUGH"])
    assert t.classifier.classify("Enough!") == "opt_out"
    assert t.classifier.classify("enough said, yes") == "positive"


def test_unknown_language_and_bad_regex_are_refused() -> None:
    with pytest.raises(ValueError, match="languages"):
        template(languages=["xx"])
    with pytest.raises(ValueError, match="invalid regex"):
        template(intents={"x": {"regex": ["("]}})


def test_the_classifier_is_compiled_once_per_template() -> None:
    t = template()
    assert t.classifier is t.classifier
    packaged = ConfigManager().get_template("default")
    assert packaged.classifier is packaged.classifier
