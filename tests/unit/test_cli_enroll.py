"""``campaign-worker campaigns enroll`` and the goals in ``metrics --json``, in a
subprocess over the wire."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from campaign_worker.service.campaign_manager import CampaignManager
from tests.always_on_support import open_campaign, write_template
from tests.cli_support import run_cli
from tests.conftest import ManagerFactory

pytestmark = pytest.mark.wire

CSV = (
    "user_id,timezone,first_name,plan\n"
    "u-1,Europe/Paris,Ann,pro\n"
    "u-2,,Bob,free\n"
    "u-3,Not/AZone,Cy,free\n"  # line 4: unknown timezone
    "u-4,UTC,Dee\n"  # line 5: a cell short
    "u-5,UTC,Eve,pro\n"
    "u-1,UTC,Ann again,pro\n"  # line 7: already enrolled
)


@pytest.fixture
def env(cli_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    return {**cli_env, "CAMPAIGN_TEMPLATES_DIR": str(write_template(tmp_path))}


@pytest.fixture
def manager(wire_db: Any, make_manager: ManagerFactory, env: dict[str, str]) -> CampaignManager:
    manager = make_manager(wire_db, campaign_templates_dir=Path(env["CAMPAIGN_TEMPLATES_DIR"]))
    manager.create_campaign(open_campaign("always"))
    manager.initialize_campaign_step("always")
    return manager


def test_enroll_streams_a_file_in_batches_and_reports_rows_by_line(
    manager: CampaignManager, env: dict[str, str], tmp_path: Path, wire_db: Any
) -> None:
    path = tmp_path / "people.csv"
    path.write_text(CSV)
    argv = ("campaigns", "enroll", "always", "--recipients", str(path), "--batch-size", "2")
    done = run_cli(*argv, "--json", env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "campaign_id": "always",
        "enrolled": 3,
        "already": 1,
        "suppressed": 0,
        "invalid": 2,
    }
    assert "line 4: skipped:" in done.stderr and "timezone" in done.stderr
    assert "line 5: skipped:" in done.stderr
    users = sorted(d["user_id"] for d in wire_db.conversation_states.find({}))
    assert users == ["u-1", "u-2", "u-5"]
    again = run_cli(*argv, env=env)
    assert again.returncode == 0 and "enrolled 0, already enrolled 4" in again.stdout
    unknown = run_cli("campaigns", "enroll", "nope", "--recipients", str(path), env=env)
    assert unknown.returncode == 1


def test_metrics_json_shows_goals_and_lift(manager: CampaignManager, env: dict[str, str]) -> None:
    people = [{"user_id": f"p{i:03d}"} for i in range(40)]
    manager.enroll_recipients("always", people)
    for i in range(0, 40, 2):
        manager.record_event(f"p{i:03d}", "purchased", f"buy-{i}")
    done = run_cli("metrics", "always", "--json", env=env)
    assert done.returncode == 0, done.stderr
    goal = json.loads(done.stdout)["goals"]["purchased"]
    assert goal["converted"] == 20 and goal["conversations"] == 40
    [versus] = goal["lift"]
    assert versus["group"] == "treatment" and versus["baseline"] == "holdout"
    assert versus["verdict"] == "sample too small to tell"
    text = run_cli("metrics", "always", env=env)
    assert "goal purchased: 20 of 40 converted (50.0%)" in text.stdout
    assert "sample too small to tell" in text.stdout
