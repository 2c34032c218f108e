"""The README's complete template example loads, validates and runs as it says."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Any

from campaign_worker.adapters.clock import ManualClock
from campaign_worker.adapters.template_files import parse_template
from campaign_worker.domain.documents import conversation_id_for
from tests.conftest import ManagerFactory

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_example() -> str:
    """The first YAML block of the README's "The template language" section."""
    section = README.read_text(encoding="utf-8").split("### The template language", 1)[1]
    match = re.search(r"```yaml\n(.*?)```", section, re.DOTALL)
    assert match is not None, "the README lost its template example"
    return match.group(1)


def test_the_readme_example_is_a_valid_template() -> None:
    template = parse_template(readme_example(), "README.md")
    sales = template.campaign_types["sales"]
    assert template.template_id == "acme"
    assert sales.stage_names == ["awareness", "consideration", "decision", "reminder"]
    assert sales.holdout == 0.1
    assert sales.stages[0].split == (("short", 3), ("long", 1))
    assert template.classifier.classify("How much would it be?") == "pricing"
    assert template.classifier.classify("deal") == "buy"
    assert template.classifier.classify("no thanks") == "not_interested"


def test_the_readme_example_branches_as_documented(
    tmp_path: Path, mock_db: Any, make_manager: ManagerFactory, clock: ManualClock
) -> None:
    (tmp_path / "acme.yaml").write_text(readme_example(), encoding="utf-8")
    manager = make_manager(mock_db, campaign_templates_dir=tmp_path)
    people = ["pricing", "no", "silent"]
    manager.create_campaign(
        {
            "_id": "acme-1",
            "name": "Acme",
            "campaign_type": "sales",
            "template_id": "acme",
            "recipients": [{"user_id": u, "attributes": {"first_name": u}} for u in people],
        }
    )
    manager.initialize_campaign_conversations("acme-1")
    manager.process_due_conversations("acme-1")
    clock.advance(timedelta(hours=1))

    # pricing skips ahead to decision; not_interested exits failed.
    skipped = manager.record_inbound_message("acme-1", "pricing", "in-1", "How much is it?")
    assert skipped["current_stage"] == "decision"
    refused = manager.record_inbound_message("acme-1", "no", "in-2", "No thanks")
    assert refused["status"] == "failed"
    # decision: a question goes back to consideration.
    back = manager.record_inbound_message("acme-1", "pricing", "in-3", "Can you explain?")
    assert back["current_stage"] == "consideration"

    # The silent one: still in awareness 5 days after entering, on_timeout -> reminder.
    clock.advance(timedelta(days=5))
    manager.process_due_conversations("acme-1")
    silent = manager.get_conversation(conversation_id_for("acme-1", "silent"))
    assert silent["current_stage"] == "reminder"
