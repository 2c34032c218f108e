"""Fixtures that put the service's unit tests on in-memory fakes of its ports.

The fakes are the in-memory adapters (``campaign_worker/adapters/memory_*.py``, wired by
``bootstrap.build_manager`` over a ``MemoryDatabase``), proven to answer as the MongoDB
adapters do by the contract suite (``tests/contract``). A test module imports the fixtures
it wants; each replaces the one of the same name from ``tests/conftest.py`` there:

- ``fake_db``: a fresh ``MemoryDatabase`` (``db["collection"]`` shows raw documents);
- ``any_db``: the fake, and a wire-tier database (``wire`` mark): ``db`` and
  ``manager_on_both`` then run each test on both;
- ``manager``: a ``CampaignManager`` over ``fake_db``.

``ScriptedUnderstanding`` is a fake of the ``ReplyUnderstanding`` port: the template's
keyword classifier (``Template.classifier``), sure of itself, except for the replies a
test scripts (``hold``: needs review; ``answer``: any classification). The managers above
use the real engine (the shipped model), as the worker does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from campaign_worker.adapters.memory_store import MemoryDatabase
from campaign_worker.domain.intents import OPT_OUT, OTHER
from campaign_worker.domain.templates import Template
from campaign_worker.domain.understanding import Classification, ReviewReason
from campaign_worker.service.campaign_manager import CampaignManager
from tests.conftest import ManagerFactory


@pytest.fixture
def fake_db() -> MemoryDatabase:
    return MemoryDatabase("campaign_worker_test")


@pytest.fixture(params=["fake", pytest.param("wire", marks=pytest.mark.wire)])
def any_db(request: pytest.FixtureRequest) -> Any:
    """Runs a test on the in-memory fakes and over the wire."""
    if request.param == "fake":
        return MemoryDatabase("campaign_worker_test")
    return request.getfixturevalue("wire_db")


@pytest.fixture
def manager(make_manager: ManagerFactory) -> CampaignManager:
    """A manager on a fresh in-memory database (its ``_db``, for raw documents)."""
    return make_manager(MemoryDatabase("campaign_worker_test"))


class ScriptedUnderstanding:
    """``ReplyUnderstanding`` for unit tests (see the module docstring)."""

    def __init__(self) -> None:
        self.scripted: dict[str, Classification] = {}
        self.calls: list[str] = []

    def answer(self, text: str, classification: Classification) -> None:
        self.scripted[text] = classification

    def hold(
        self,
        text: str,
        suggested: str = "positive",
        reason: ReviewReason = "low_confidence",
        opt_out_probability: float = 0.0,
    ) -> None:
        """``text`` will need review (the classifier's best reading: ``suggested``)."""
        self.answer(
            text,
            Classification(
                intent=suggested,
                confidence=0.3,
                language="en",
                extracted_text=text,
                needs_review=True,
                opt_out_probability=opt_out_probability,
                source="model",
                review_reason=reason,
            ),
        )

    def understand(
        self, content: str, template: Template | None = None, *, languages: Sequence[str] = ()
    ) -> Classification:
        self.calls.append(content)
        if content in self.scripted:
            return self.scripted[content]
        intent = template.classifier.classify(content) if template is not None else OTHER
        return Classification(
            intent=intent,
            confidence=1.0,
            language=languages[0] if languages else "en",
            extracted_text=content,
            needs_review=False,
            opt_out_probability=1.0 if intent == OPT_OUT else 0.0,
            source="rule",
        )

    def warm_up(self) -> None:
        return None


__all__ = ["ScriptedUnderstanding", "any_db", "fake_db", "manager"]
