"""Extraction of the author's own words: quotes, signatures and footers removed, in
en/de/fr/es, top- and bottom-posted (adapters/reply_text.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from campaign_worker.adapters.reply_text import extract

CASES: list[dict[str, Any]] = yaml.safe_load(
    (Path(__file__).parent / "fixtures" / "extraction" / "cases.yaml").read_text("utf-8")
)


def collapsed(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.parametrize("case", CASES, ids=[case["id"] for case in CASES])
def test_the_new_text_of_each_layout(case: dict[str, Any]) -> None:
    assert collapsed(extract(case["raw"])) == collapsed(case["expected"])


def test_every_language_and_form_is_covered_by_the_cases() -> None:
    assert {case["lang"] for case in CASES} == {"en", "de", "fr", "es"}
    for language in ("en", "de", "fr", "es"):
        ids = {case["id"] for case in CASES if case["lang"] == language}
        assert any("bottom_post" in i for i in ids), language
        assert any("disclaimer" in i or "confidentiality" in i for i in ids), language


def test_the_original_is_not_changed() -> None:
    raw = "Yes please\n\nOn Tue, 3 Dec 2026 at 10:15, Acme <a@b.example> wrote:\n> Reply STOP"
    copy = str(raw)
    assert extract(raw) == "Yes please"
    assert raw == copy


def test_one_plain_line_is_returned_as_it_is() -> None:
    assert extract("  STOP  ") == "STOP"
    assert extract("Don't stop sending these, love them") == "Don't stop sending these, love them"


def test_a_reply_that_is_only_a_quote_falls_back_to_its_text() -> None:
    assert extract("> Reply YES or STOP to opt out.") == "Reply YES or STOP to opt out."


def test_carriage_returns_are_new_lines() -> None:
    raw = "Not interested\r\n\r\nOn Tue, 3 Dec 2026 at 10:15, Acme <a@b.example> wrote:\r\n> hi"
    assert extract(raw) == "Not interested"


def test_an_opt_out_sentence_is_never_taken_for_a_footer() -> None:
    raw = "Hi,\n\nPlease unsubscribe me from your newsletter.\nThanks"
    assert "unsubscribe me" in extract(raw)
    second_line = "Hello\nTo unsubscribe me just delete my address, I beg you."
    assert "unsubscribe me" in extract(second_line)


def test_a_sentence_starting_like_a_sign_off_is_kept() -> None:
    raw = "Hi,\nThanks, but we already use another tool and we are happy with it.\nBest,\nAnn"
    got = extract(raw)
    assert "already use another tool" in got
    assert "Ann" not in got


def test_a_newsletter_footer_with_a_link_is_removed() -> None:
    raw = (
        "Sounds good, call me.\n\nACME Corp | 1 Main St\n"
        "To unsubscribe from our newsletter click here: https://acme.example/u"
    )
    assert extract(raw) == "Sounds good, call me.\n\nACME Corp | 1 Main St"
