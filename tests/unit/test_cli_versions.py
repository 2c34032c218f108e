"""``campaign-worker templates diff|versions`` and ``campaigns migrate`` in a subprocess
over the wire, on the live-edit scenario of tests/integration/test_versions_wire.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from campaign_worker.adapters.clock import ManualClock
from tests.cli_support import run_cli
from tests.integration.test_versions_wire import V1, V2, Live, started

pytestmark = pytest.mark.wire


@pytest.fixture
def live(wire_db: Any, tmp_path: Path, clock: ManualClock) -> Live:
    directory = tmp_path / "templates"
    directory.mkdir()
    setup = Live(wire_db, directory, clock)
    setup.write(V1)
    return setup


@pytest.fixture
def env(cli_env: dict[str, str], live: Live) -> dict[str, str]:
    return {**cli_env, "CAMPAIGN_TEMPLATES_DIR": str(live.directory)}


def test_templates_diff_files_and_stored_versions(
    live: Live, env: dict[str, str], tmp_path: Path
) -> None:
    old, new = tmp_path / "v1.yaml", tmp_path / "v2.yaml"
    old.write_text(V1)
    new.write_text(V2)

    shown = run_cli("templates", "diff", str(old), str(new), env=env)
    assert shown.returncode == 0, shown.stderr
    for line in (
        "sales: stages removed: pitch, closing",
        "sales: stages added: offer",
        "sales: stage intro: message 0 text changed",
        "sales: stage intro: message 2 removed",
    ):
        assert line in shown.stdout, shown.stdout
    same = json.loads(run_cli("templates", "diff", str(old), str(old), "--json", env=env).stdout)
    assert same["identical"] is True

    live.worker()  # stores v1 (the directory's file) as version 1
    stored = run_cli("templates", "diff", "live@1", str(new), "--json", env=env)
    assert stored.returncode == 0, stored.stderr
    found = json.loads(stored.stdout)
    assert found["identical"] is False
    assert found["campaign_types"]["sales"]["stages_removed"] == ["pitch", "closing"]
    assert json.loads(run_cli("templates", "diff", "live@1", str(old), "--json", env=env).stdout)[
        "identical"
    ]
    missing = run_cli("templates", "diff", "live@9", str(new), env=env)
    assert missing.returncode == 2 and "no version 9" in missing.stderr
    assert run_cli("templates", "diff", "no-such-thing", str(new), env=env).returncode == 2


def test_templates_versions_lists_what_is_stored(live: Live, env: dict[str, str]) -> None:
    assert "no stored versions" in run_cli("templates", "versions", "live", env=env).stdout
    live.worker()
    live.write(V2)
    live.worker()
    listed = run_cli("templates", "versions", "live", "--json", env=env)
    assert [json.loads(line)["version"] for line in listed.stdout.splitlines()] == [1, 2]
    assert "versions of live" in run_cli("templates", "versions", "live", env=env).stdout


def test_campaigns_migrate_previews_refuses_unresolved_and_applies(
    live: Live, env: dict[str, str]
) -> None:
    started(live)
    live.write(V2)

    unresolved = run_cli("campaigns", "migrate", "camp-1", "--to", "current", env=env)
    assert unresolved.returncode == 2
    assert "unresolved (stage closing removed)" in unresolved.stdout
    assert "unresolved (stage pitch removed)" in unresolved.stdout
    assert "would move: 2" in unresolved.stdout  # the two in intro, still there

    args = ["campaigns", "migrate", "camp-1", "--to", "2", "--map", "pitch=offer"]
    preview = run_cli(*args, "--default", "exit:completed", "--dry-run", "--json", env=env)
    assert preview.returncode == 0, preview.stderr
    report = json.loads(preview.stdout)
    assert report["dry_run"] and report["moved"] == {"intro -> intro": 2, "pitch -> offer": 2}
    assert report["ended"] == {"closing -> exit:completed (stage closing removed)": 1}
    assert live.db["campaigns"].find_one({"_id": "camp-1"})["template_version"] == 1

    applied = run_cli(*args, "--map", "closing=exit:completed", "--apply", env=env)
    assert applied.returncode == 0, applied.stderr
    assert "moved: 5" in applied.stdout
    assert live.db["campaigns"].find_one({"_id": "camp-1"})["template_version"] == 2

    assert run_cli(*args, "--apply", "--dry-run", env=env).returncode == 2
    assert run_cli(*args, "--map", "nonsense", env=env).returncode == 2
    unknown = run_cli("campaigns", "migrate", "nope", "--to", "2", env=env)
    assert unknown.returncode == 1 and "nope" in unknown.stderr
