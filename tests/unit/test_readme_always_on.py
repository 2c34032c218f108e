"""The README's always-on worked example loads and runs as it says: a trial event
enrolls, a booked meeting completes, a purchase converts."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from campaign_worker.adapters.template_files import parse_template
from campaign_worker.domain.documents import ConversationState
from tests.conftest import ManagerFactory
from tests.fakes import fake_db

__all__ = ["fake_db"]
README = Path(__file__).resolve().parents[2] / "README.md"


def worked_example() -> str:
    section = README.read_text(encoding="utf-8").split("### Always-on campaigns", 1)[1]
    match = re.search(r"```yaml\n(.*?)```", section, re.DOTALL)
    assert match is not None, "the README lost its always-on example"
    return match.group(1)


def test_the_worked_example_runs_as_the_readme_says(
    tmp_path: Path, fake_db: Any, make_manager: ManagerFactory
) -> None:
    text = worked_example()
    trial = parse_template(text, "README.md").campaign_types["trial"]
    assert (trial.audience, trial.holdout) == ("open", 0.2)
    (tmp_path / "onboarding.yaml").write_text(text)
    manager = make_manager(fake_db, campaign_templates_dir=tmp_path)
    manager.create_campaign(
        {"_id": "trials", "name": "Trials", "campaign_type": "trial", "template_id": "onboarding"}
    )
    manager.initialize_campaign_step("trials")
    enrolled = manager.record_event(
        "u-1", "trial_started", "evt-1", {"plan": "pro", "first_name": "Ada"}
    )
    assert enrolled["enrolled"] == 1
    assert manager.enroll_recipients("trials", [{"user_id": "u-2"}], "crm-7").enrolled == 1
    assert manager.record_event("u-1", "meeting_booked", "evt-2")["applied"] == 1
    assert manager.record_event("u-2", "purchased", "order-991")["converted"] == 1
    docs = {
        d["user_id"]: ConversationState.model_validate(d) for d in fake_db["conversation_states"]
    }
    assert docs["u-1"].status == "completed"
    assert docs["u-1"].context.attributes == {"plan": "pro", "first_name": "Ada"}
    assert docs["u-2"].conversion is not None
    assert manager.get_campaign_metrics("trials")["goals"]["purchased"]["converted"] == 1
