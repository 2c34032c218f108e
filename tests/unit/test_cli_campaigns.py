"""``campaign-worker campaigns|metrics|conversations`` in a subprocess over the wire."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from typing import Any

import pytest

from campaign_worker.domain.documents import conversation_id_for
from campaign_worker.service.campaign_manager import CampaignManager
from tests.cli_support import EXE, run_cli
from tests.conftest import ManagerFactory, sample_campaign

pytestmark = pytest.mark.wire


@pytest.fixture
def wire_manager(wire_db: Any, make_manager: ManagerFactory) -> CampaignManager:
    return make_manager(wire_db)


@pytest.fixture
def running(wire_manager: CampaignManager) -> CampaignManager:
    """camp-1 (3 recipients) initialized, first messages sent, user-00000 replied."""
    wire_manager.create_campaign(sample_campaign(3))
    wire_manager.initialize_campaign_conversations("camp-1")
    wire_manager.process_due_conversations("camp-1")
    wire_manager.record_inbound_message("camp-1", "user-00000", "in-1", "Tell me more")
    return wire_manager


def test_list_and_show(wire_manager: CampaignManager, cli_env: dict[str, str]) -> None:
    assert "no campaigns" in run_cli("campaigns", "list", env=cli_env).stdout
    wire_manager.create_campaign(sample_campaign(2))
    wire_manager.create_campaign(sample_campaign(1, campaign_id="camp-2", name="Autumn"))
    wire_manager.pause_campaign("camp-2")

    listed = run_cli("campaigns", "list", env=cli_env)
    assert listed.returncode == 0, listed.stderr
    assert "camp-1" in listed.stdout and "Autumn" in listed.stdout
    paused = run_cli("campaigns", "list", "--status", "paused", "--json", env=cli_env)
    assert [json.loads(line)["_id"] for line in paused.stdout.splitlines()] == ["camp-2"]

    shown = run_cli("campaigns", "show", "camp-1", "--json", env=cli_env)
    doc = json.loads(shown.stdout)
    assert doc["name"] == "Spring sale" and doc["status"] == "scheduled"
    assert "recipients" not in doc  # inline audience left out
    assert "Spring sale" in run_cli("campaigns", "show", "camp-1", env=cli_env).stdout


def test_unknown_campaign_and_bad_status(cli_env: dict[str, str]) -> None:
    for verb in ("show", "pause", "resume", "cancel"):
        result = run_cli("campaigns", verb, "nope", env=cli_env)
        assert result.returncode == 1, verb
        assert "campaign not found: 'nope'" in result.stderr
    bad = run_cli("campaigns", "list", "--status", "sleeping", env=cli_env)
    assert bad.returncode == 2
    assert "unknown campaign status 'sleeping'" in bad.stderr


def test_pause_resume_cancel(wire_manager: CampaignManager, cli_env: dict[str, str]) -> None:
    wire_manager.create_campaign(sample_campaign(2))
    paused = run_cli("campaigns", "pause", "camp-1", env=cli_env)
    assert paused.returncode == 0, paused.stderr
    assert paused.stdout.strip() == "campaign camp-1: paused"
    assert wire_manager.get_campaign("camp-1")["status"] == "paused"
    resumed = run_cli("campaigns", "resume", "camp-1", "--json", env=cli_env)
    assert json.loads(resumed.stdout)["status"] == "scheduled"
    assert run_cli("campaigns", "cancel", "camp-1", env=cli_env).returncode == 0
    assert wire_manager.get_campaign("camp-1")["status"] == "cancelled"
    again = run_cli("campaigns", "resume", "camp-1", env=cli_env)
    assert again.returncode == 2  # an invalid transition: input that can never work
    assert "cancelled" in again.stderr


def test_metrics_funnel(running: CampaignManager, cli_env: dict[str, str]) -> None:
    table = run_cli("metrics", "camp-1", env=cli_env)
    assert table.returncode == 0, table.stderr
    assert "campaign camp-1: 3 recipients" in table.stdout
    assert re.search(r"awareness\s+│\s+3\s+│\s+1\s+│\s+33%", table.stdout), table.stdout
    assert "messages sent 4, received 1, response rate 0.25" in table.stdout
    assert "outcomes: completed 0, failed 0, opted_out 0, cancelled 0, active 3" in table.stdout

    report = json.loads(run_cli("metrics", "camp-1", "--json", env=cli_env).stdout)
    assert report["stages"]["awareness"]["entered"] == 3
    assert report["stages"]["awareness"]["conversion"] == pytest.approx(1 / 3)
    assert report["stages"]["consideration"]["entered"] == 1
    assert report["outcomes"]["active"] == 3
    assert report["messages"]["response_rate"] == pytest.approx(1 / 4)  # the reply advanced it
    assert report["transitions"] == [{"from": "awareness", "to": "consideration", "count": 1}]
    assert re.search(r"awareness\s+│\s+consideration\s+│\s+1", table.stdout), table.stdout


def test_metrics_of_an_unknown_campaign(cli_env: dict[str, str]) -> None:
    result = run_cli("metrics", "nope", env=cli_env)
    assert result.returncode == 1
    assert "campaign not found: 'nope'" in result.stderr


def test_metrics_watch_refreshes_until_interrupted(
    running: CampaignManager, cli_env: dict[str, str]
) -> None:
    command = [str(EXE), "metrics", "camp-1", "--watch", "0.2", "--json"]
    process = subprocess.Popen(
        command, env={**os.environ, **cli_env}, stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    first = json.loads(process.stdout.readline())
    running.record_inbound_message("camp-1", "user-00001", "in-2", "yes please")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # snapshots until the new reply shows
        latest = json.loads(process.stdout.readline())
        if latest["messages"]["total_received"] == 2:
            break
    process.send_signal(signal.SIGINT)
    assert process.wait(30) == 0
    assert first["messages"]["total_received"] == 1
    assert latest["messages"]["total_received"] == 2


def test_metrics_watch_prints_tables_off_a_terminal(
    running: CampaignManager, cli_env: dict[str, str]
) -> None:
    command = [str(EXE), "metrics", "camp-1", "--watch", "0.2"]
    env = {**os.environ, **cli_env, "COLUMNS": "120"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    headers = 0
    for line in process.stdout:  # two snapshots, one after the other
        headers += line.startswith("campaign camp-1: 3 recipients")
        if headers == 2:
            break
    assert headers == 2
    process.send_signal(signal.SIGINT)
    assert process.wait(30) == 0


def test_conversation_show(running: CampaignManager, cli_env: dict[str, str]) -> None:
    by_user = run_cli("conversations", "show", "--campaign", "camp-1", "--user", "user-00000",
                      env=cli_env)  # fmt: skip
    assert by_user.returncode == 0, by_user.stderr
    assert "user user-00000" in by_user.stdout
    assert "Tell me more" in by_user.stdout  # bodies are shown: an explicit read
    assert re.search(r"awareness\s+│.*│\s+yes", by_user.stdout)
    conversation_id = conversation_id_for("camp-1", "user-00000")
    doc = json.loads(
        run_cli("conversations", "show", conversation_id, "--json", env=cli_env).stdout
    )
    assert [m["direction"] for m in doc["message_history"]] == ["outbound", "inbound", "outbound"]
    assert doc["message_history"][1]["status"] == "received"
    assert {m["status"] for m in doc["message_history"][::2]} <= {"sent", "pending"}
    assert [entry["name"] for entry in doc["stages"]] == ["awareness", "consideration"]


def test_conversation_show_unknown_or_ambiguous(cli_env: dict[str, str]) -> None:
    unknown = run_cli("conversations", "show", "--campaign", "camp-1", "--user", "x", env=cli_env)
    assert unknown.returncode == 1
    assert "no conversation for user 'x' in campaign 'camp-1'" in unknown.stderr
    by_id = run_cli("conversations", "show", "abc", env=cli_env)
    assert by_id.returncode == 1 and "conversation not found: 'abc'" in by_id.stderr
    assert run_cli("conversations", "show", env=cli_env).returncode == 2
    assert run_cli("conversations", "show", "abc", "--user", "u", env=cli_env).returncode == 2
