"""Labelled reply files (domain/labelled_replies.py) and the eval figures
(domain/intent_metrics.py): a held reply is its own column, strict opt-out recall,
opt-out safety, false opt-outs over non-opt-outs, accuracy per language and tag."""

from __future__ import annotations

import pytest

from campaign_worker.domain.errors import InvalidInputError
from campaign_worker.domain.intent_metrics import Scored, report
from campaign_worker.domain.labelled_replies import LabelledReply, escape, parse_lines, unescape


def test_lines_columns_escapes_and_comments() -> None:
    lines = [
        "# a comment",
        "",
        "opt_out\tSTOP",
        "positive\tYes\\nplease\ten\temail, quoted ,signature",
        "question\tC:\\\\path\\tx?\tfr",
    ]
    assert parse_lines(lines) == [
        LabelledReply("opt_out", "STOP", None, (), 3),
        LabelledReply("positive", "Yes\nplease", "en", ("email", "quoted", "signature"), 4),
        LabelledReply("question", "C:\\path\tx?", "fr", (), 5),
    ]


def test_escape_is_the_inverse_of_unescape() -> None:
    text = "a\\nb\nc\td\\"
    assert unescape(escape(text)) == text
    assert "\n" not in escape(text) and "\t" not in escape(text)
    assert unescape("keep \\x as is") == "keep \\x as is"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("just text", "line 1: expected intent<TAB>text"),
        ("a\tb\tc\td\te", "got 5 column"),
        ("Opt Out\tSTOP", "is not an intent name"),
        ("positive\t   ", "the reply text is empty"),
    ],
)
def test_a_bad_line_is_named(line: str, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        parse_lines([line])


def test_figures() -> None:
    scored = [
        Scored("opt_out", "opt_out", "en", ("sms",)),
        Scored("opt_out", "needs_review", "en", ("sms",)),
        Scored("opt_out", "not_interested", "de", ("email", "quoted")),
        Scored("positive", "positive", "de", ("email", "quoted")),
        Scored("positive", "opt_out", "fr", ("sms",)),
        Scored("question", "question", "fr", ()),
        Scored("question", "needs_review", "fr", ()),
        Scored("other", "other", None, ()),
    ]
    figures = report(scored)
    assert figures["replies"] == 8
    assert figures["accuracy"] == 0.5
    assert figures["opt_out_recall"] == pytest.approx(1 / 3, abs=1e-4)
    assert figures["opt_out_safety"] == pytest.approx(2 / 3, abs=1e-4)
    assert figures["false_opt_outs"] == 1
    assert figures["false_opt_out_rate"] == 0.2
    assert figures["needs_review_rate"] == 0.25
    assert figures["accuracy_when_decided"] == pytest.approx(4 / 6, abs=1e-4)
    confusion = figures["confusion"]
    assert confusion["opt_out"] == {
        "not_interested": 1,
        "opt_out": 1,
        "other": 0,
        "positive": 0,
        "question": 0,
        "needs_review": 1,
    }
    assert list(confusion["positive"])[-1] == "needs_review"
    opt_out = figures["per_intent"]["opt_out"]
    assert (opt_out["precision"], opt_out["support"], opt_out["predicted"]) == (0.5, 3, 2)
    assert figures["per_intent"]["not_interested"]["precision"] == 0.0
    assert figures["per_intent"]["not_interested"]["support"] == 0
    assert figures["by_language"]["fr"] == {
        "replies": 3,
        "accuracy": pytest.approx(1 / 3, abs=1e-4),
    }
    assert figures["by_tag"]["quoted"] == {"replies": 2, "accuracy": 0.5}
    assert "sms" in figures["by_tag"] and None not in figures["by_language"]
    assert figures["quoted_or_signed"] == {"replies": 2, "accuracy": 0.5}


def test_no_opt_outs_leaves_their_figures_unset() -> None:
    figures = report([Scored("positive", "positive")])
    assert figures["opt_out_recall"] is None and figures["false_opt_out_rate"] == 0.0
    assert figures["by_language"] == {} and figures["by_tag"] == {}
