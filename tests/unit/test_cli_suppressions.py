"""``campaign-worker suppressions list|add|lift`` in a subprocess over the wire."""

from __future__ import annotations

import json
from typing import Any

import pytest

from campaign_worker.service.campaign_manager import CampaignManager
from tests.cli_support import run_cli
from tests.conftest import ManagerFactory, sample_campaign

pytestmark = pytest.mark.wire


def test_list_add_and_lift(
    wire_db: Any, make_manager: ManagerFactory, cli_env: dict[str, str]
) -> None:
    manager: CampaignManager = make_manager(wire_db)
    assert "no suppressions" in run_cli("suppressions", "list", env=cli_env).stdout
    # An opt-out reply puts the person on the list.
    manager.create_campaign(sample_campaign(2))
    manager.initialize_campaign_conversations("camp-1")
    manager.process_due_conversations("camp-1")
    manager.record_inbound_message("camp-1", "user-00001", "in-1", "please STOP messaging me")

    added = run_cli(
        "suppressions", "add", "--channel", "email", "--address", "Ann@Example.com", env=cli_env
    )
    assert added.returncode == 0, added.stderr
    assert json.loads(added.stdout)["_id"] == "address:email:ann@example.com"

    listed = run_cli("suppressions", "list", "--json", env=cli_env)
    entries = [json.loads(line) for line in listed.stdout.splitlines()]
    assert {e["_id"]: e["source"] for e in entries} == {
        "user:user-00001": "opt_out",
        "address:email:ann@example.com": "operator",
    }
    table = run_cli("suppressions", "list", "--user", "user-00001", env=cli_env).stdout
    assert "user:user-00001" in table and "ann@example.com" not in table

    lifted = run_cli("suppressions", "lift", "--user", "user-00001", env=cli_env)
    assert lifted.returncode == 0, lifted.stderr
    assert json.loads(lifted.stdout)["campaign_id"] == "camp-1"
    again = run_cli("suppressions", "lift", "--user", "user-00001", env=cli_env)
    assert again.returncode == 1 and "no suppression" in again.stderr
    both = run_cli("suppressions", "add", "--user", "x", "--channel", "sms", env=cli_env)
    assert both.returncode == 2
    assert [e["_id"] for e in manager.list_suppressions()] == ["address:email:ann@example.com"]
