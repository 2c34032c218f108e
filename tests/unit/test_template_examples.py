"""Custom intents by example (domain/examples.py) and the template fields of the reply
understanding: examples, thresholds, and the errors a template file gets for them."""

from __future__ import annotations

import pytest

from campaign_worker.adapters.template_files import parse_template
from campaign_worker.domain.errors import InvalidTemplateError
from campaign_worker.domain.examples import ExampleIndex, example_problems
from campaign_worker.domain.understanding import (
    EXAMPLE_MATCH,
    OPT_OUT_ABOVE,
    OPT_OUT_REVIEW_ABOVE,
    REVIEW_BELOW,
)

PRICING = ["what's the price", "how much is it", "send me a quote"]
DEMO = ["can I see a demo", "show me how it works", "book a demo please"]


def template_text(intents: str = "", understanding: str = "") -> str:
    return f"""
template_id: t
{intents}
{understanding}
campaign_types:
  sales:
    stages:
      - name: one
        messages: [{{text: "Hi"}}]
"""


def test_the_nearest_example_names_the_intent() -> None:
    index = ExampleIndex({"pricing": PRICING, "demo": DEMO})
    found = index.best("How much does it cost?")
    assert found is not None and found.intent == "pricing"
    assert found.example == "how much is it"
    demo = index.best("I'd like to see a demo")
    assert demo is not None and demo.intent == "demo"
    assert 0 < demo.similarity <= 1


def test_a_reply_sharing_nothing_matches_no_example() -> None:
    assert ExampleIndex({"pricing": PRICING}).best("🙂") is None
    assert ExampleIndex({}).best("how much") is None


def test_similarities_are_cosines() -> None:
    index = ExampleIndex({"pricing": PRICING})
    assert index.similarities("how much is it")[1] == pytest.approx(1.0)
    assert all(0 <= s <= 1 + 1e-9 for s in index.similarities("what is the price of it"))


def test_too_few_examples_are_a_problem() -> None:
    [problem] = example_problems({"pricing": ["price?", "cost?"]})
    assert "'pricing' has 2 example(s)" in problem and "at least 3" in problem


def test_examples_that_collide_across_intents_are_a_problem() -> None:
    problems = example_problems({"pricing": [*PRICING, "book a demo please!"], "demo": DEMO})
    assert len(problems) == 1
    assert "'book a demo please!'" in problems[0] and "'demo'" in problems[0]
    assert example_problems({"pricing": PRICING, "demo": DEMO}) == []


def test_a_template_with_examples_and_thresholds_loads() -> None:
    template = parse_template(
        template_text(
            f"intents:\n  pricing:\n    examples: {PRICING}\n    keywords: [tariff]",
            "understanding:\n  {review_below: 0.7, opt_out_review_above: 0.1,"
            " review_intents: [other]}",
        ),
        "t.yaml",
    )
    assert template.examples == {"pricing": PRICING}
    policy = template.understanding_policy
    assert (policy.review_below, policy.opt_out_review_above) == (0.7, 0.1)
    assert policy.review_intents == ["other"]
    assert template.rules.match("our tariff?") == "pricing"
    assert template.rules.match("yes please") is None  # no built-in phrases in the rules


def test_defaults_come_from_one_place() -> None:
    template = parse_template(template_text(), "t.yaml")
    policy = template.understanding_policy
    assert (
        policy.review_below,
        policy.opt_out_review_above,
        policy.opt_out_above,
        policy.example_match,
    ) == (REVIEW_BELOW, OPT_OUT_REVIEW_ABOVE, OPT_OUT_ABOVE, EXAMPLE_MATCH)


@pytest.mark.parametrize(
    ("intents", "understanding", "message"),
    [
        ('intents:\n  pricing:\n    examples: ["price?", "cost?"]', "", "at least 3"),
        (
            f"intents:\n  pricing:\n    examples: {[*PRICING, 'can I see a demo?']}\n"
            f"  demo:\n    examples: {DEMO}",
            "",
            "collides with intent",
        ),
        ("", "understanding: {review_below: 0.1, opt_out_review_above: 0.2}", "must be below"),
        ("", "understanding: {review_intents: [pricing]}", "unknown intent 'pricing'"),
        ("", "understanding: {review_threshold: 0.5}", "review_threshold"),
    ],
)
def test_template_errors_name_the_problem(intents: str, understanding: str, message: str) -> None:
    with pytest.raises(InvalidTemplateError, match=message):
        parse_template(template_text(intents, understanding), "t.yaml")


def test_a_template_without_the_new_fields_keeps_its_content_and_hash() -> None:
    from pathlib import Path

    from campaign_worker.domain.versions import content_hash, content_of

    # The packaged template as it was before issue 21 (main at d41b369), parsed now.
    path = Path(__file__).parent / "fixtures" / "default_template_d41b369.yaml"
    before = parse_template(path.read_text(), path.name)
    content = content_of(before)
    assert "understanding" not in content
    assert all("examples" not in spec for spec in content["intents"].values())
    # Its hash then: the new optional fields change nothing for a template without them.
    assert content_hash(before).startswith("36109bbc099d4251")
