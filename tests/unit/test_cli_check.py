"""``campaign-worker check CAMPAIGN [--json] [--running]`` in a subprocess over the wire:
exit 0 when every invariant holds, 1 when one fails or the campaign is unknown, 2 for bad
usage."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from campaign_worker.adapters.clock import ManualClock
from campaign_worker.domain.documents import conversation_id_for
from campaign_worker.domain.invariants import FIGURES
from campaign_worker.service.campaign_manager import CampaignManager
from tests.cli_support import run_cli
from tests.conftest import ManagerFactory, sample_campaign

pytestmark = pytest.mark.wire


@pytest.fixture
def started(wire_db: Any, make_manager: ManagerFactory, clock: ManualClock) -> CampaignManager:
    """camp-1 (3 recipients), first messages sent an hour ago (the command's clock is the
    system's)."""
    clock.set(datetime.now(UTC) - timedelta(hours=1))
    manager = make_manager(wire_db)
    manager.create_campaign(sample_campaign(3))
    manager.initialize_campaign_conversations("camp-1")
    manager.process_due_conversations("camp-1")
    return manager


def test_a_sound_campaign_exits_0(started: CampaignManager, cli_env: dict[str, str]) -> None:
    result = run_cli("check", "camp-1", "--json", env=cli_env)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert set(report) == {"campaign_id", "ok", "figures", "violations"}
    assert report["ok"] is True and report["violations"] == []
    assert set(FIGURES) <= set(report["figures"])
    assert report["figures"]["conversations"] == 3
    assert report["figures"]["messages_recorded"] == 3
    table = run_cli("check", "camp-1", env=cli_env)
    assert table.returncode == 0, table.stderr
    assert "every invariant holds" in table.stdout
    assert "messages_sent_twice" in table.stdout


def test_a_violation_exits_1_and_is_shown(
    started: CampaignManager, cli_env: dict[str, str], wire_db: Any
) -> None:
    lost = conversation_id_for("camp-1", "user-00002")
    wire_db.outbox.delete_one({"conversation_id": lost})
    result = run_cli("check", "camp-1", "--json", env=cli_env)
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is False
    assert report["figures"]["messages_lost"] == 1
    (violation,) = report["violations"]
    assert violation["invariant"] == "outbound_in_outbox"
    assert len(violation["sample"]) == 1 and violation["sample"][0].startswith("out-")
    assert "1 recorded messages are not deliverable" in violation["detail"]
    table = run_cli("check", "camp-1", env=cli_env)
    assert table.returncode == 1
    assert "outbound_in_outbox" in table.stdout and "FAILED: 1 invariants" in table.stdout


def test_running_skips_the_quiet_invariants(
    started: CampaignManager, cli_env: dict[str, str], wire_db: Any
) -> None:
    wire_db.outbox.update_one(
        {"conversation_id": conversation_id_for("camp-1", "user-00000")},
        {
            "$set": {
                "status": "sending",
                "lease_owner": "a-dead-dispatcher",
                "lease_until": datetime.now(UTC) - timedelta(minutes=5),
            }
        },
    )
    quiet = run_cli("check", "camp-1", "--json", env=cli_env)
    assert quiet.returncode == 1
    assert json.loads(quiet.stdout)["figures"]["stale_leases"] == 1
    running = run_cli("check", "camp-1", "--running", "--json", env=cli_env)
    assert running.returncode == 0, running.stdout


def test_unknown_campaign_and_bad_usage(cli_env: dict[str, str]) -> None:
    unknown = run_cli("check", "nope", env=cli_env)
    assert unknown.returncode == 1
    assert "nope" in unknown.stderr and "Traceback" not in unknown.stderr
    assert run_cli("check", env=cli_env).returncode == 2
    assert run_cli("check", "camp-1", "--bogus", env=cli_env).returncode == 2
