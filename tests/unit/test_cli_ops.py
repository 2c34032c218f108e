"""``health``, ``dead-letters`` and ``demo`` through the installed entry point."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from campaign_worker.demo.embedded import free_port
from tests.cli_support import run_cli

pytestmark = pytest.mark.wire


def test_health_bitmask(cli_env: dict[str, str]) -> None:
    closed = free_port()  # bound, then released: nothing listens there
    down = run_cli("health", "--skip-worker", "--timeout", "0.5", env={
        "CELERY_BROKER_URL": f"redis://127.0.0.1:{closed}/0",
        "MONGODB_URI": f"mongodb://127.0.0.1:{closed}",
    })  # fmt: skip
    assert down.returncode == 3  # broker (1) + MongoDB (2)
    report = json.loads(down.stdout)
    assert report["exit_code"] == 3 and report["healthy"] is False
    up = run_cli("health", "--skip-worker", env={**cli_env, "CELERY_BROKER_URL": "memory://"})
    assert up.returncode == 0, up.stdout
    assert json.loads(up.stdout)["checks"]["mongodb"]["ok"] is True


def test_dead_letters_on_an_empty_database(cli_env: dict[str, str]) -> None:
    listed = run_cli("dead-letters", "list", env=cli_env)
    assert listed.returncode == 0 and listed.stdout == "no dead letters\n"
    assert run_cli("dead-letters", "list", "--json", env=cli_env).stdout == ""
    missing = run_cli("dead-letters", "replay", "nope", env=cli_env)
    assert missing.returncode == 1
    assert "dead letter not found: nope" in missing.stderr
    assert run_cli("dead-letters", "list", "--limit", "0", env=cli_env).returncode == 2


def test_demo_in_process(cli_env: dict[str, str], wire_db: Any) -> None:
    result = run_cli("demo", "--in-process", "--recipients", "12", env=cli_env, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Running demo-" in result.stdout and "with 12 recipients" in result.stdout
    assert re.search(r"^awareness\s+12\s+\d+", result.stdout, re.M)
    assert "still active 0" in result.stdout
    assert wire_db.campaigns.count_documents({}) == 1  # in the test's own database


@pytest.mark.parametrize("group", ["campaigns", "conversations", "templates", "dead-letters"])
def test_a_bare_group_prints_its_help(group: str) -> None:
    result = run_cli(group)
    assert result.returncode == 0
    assert f"Usage: campaign-worker {group}" in result.stdout
