"""``campaign-worker``: the bare command, --version, help and templates, in a subprocess."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli_support import run_cli

PACKAGED = Path(__file__).resolve().parents[2] / "campaign_worker" / "templates" / "default.yaml"

BROKEN = """\
template_id: broken
campaign_types:
  sales:
    stages:
      - name: awareness
        messages:
          - text: "Hi {first_name}"
        max_followups_without_reply: {count: -1}
"""


def test_the_bare_command_prints_help_and_exits_0() -> None:
    result = run_cli()
    assert result.returncode == 0, result.stderr
    assert "Usage: campaign-worker" in result.stdout
    for command in ("templates", "dead-letters", "health", "demo"):
        assert command in result.stdout


def test_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == "campaign-worker 0.1.0"


@pytest.mark.parametrize(
    ("argv", "default"),
    [
        (["health"], "[default: 3.0]"),
        (["demo"], "[default: 250]"),
        (["dead-letters", "list"], "[default: 50]"),
    ],
)
def test_help_shows_defaults(argv: list[str], default: str) -> None:
    result = run_cli(*argv, "--help")
    assert result.returncode == 0
    assert default in result.stdout


def test_an_unknown_command_or_bad_value_is_a_usage_error() -> None:
    unknown = run_cli("bogus")
    assert unknown.returncode == 2
    assert "No such command 'bogus'" in unknown.stderr
    assert run_cli("demo", "--recipients", "0").returncode == 2


def test_templates_validate_a_good_file() -> None:
    result = run_cli("templates", "validate", str(PACKAGED))
    assert result.returncode == 0, result.stderr
    assert f"ok: {PACKAGED} is valid" in result.stdout
    assert "awareness → consideration → decision" in result.stdout
    as_json = json.loads(run_cli("templates", "validate", str(PACKAGED), "--json").stdout)
    assert as_json["valid"] is True
    assert as_json["campaign_types"]["onboarding"] == ["welcome", "setup", "activation"]


def test_templates_validate_names_file_stage_and_field(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(BROKEN)
    result = run_cli("templates", "validate", str(path))
    assert result.returncode == 1
    assert f"invalid template {path}" in result.stderr
    assert "stage 'awareness'" in result.stderr
    assert "max_followups_without_reply.count" in result.stderr
    assert result.stdout == ""


def test_templates_validate_a_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    result = run_cli("templates", "validate", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2
    assert "does not exist" in result.stderr


def test_templates_list_packaged_and_directory(tmp_path: Path) -> None:
    (tmp_path / "extra.yaml").write_text(
        PACKAGED.read_text().replace("template_id: default", "template_id: extra")
    )
    result = run_cli("templates", "list", env={"CAMPAIGN_TEMPLATES_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if "sales" in line]
    assert len(rows) == 2 and "default" in rows[0] and "extra" in rows[1]
    listed = run_cli("templates", "list", "--json", env={"CAMPAIGN_TEMPLATES_DIR": str(tmp_path)})
    ids = [json.loads(line)["template_id"] for line in listed.stdout.splitlines()]
    assert ids == ["default", "extra"]


def test_templates_list_reports_a_broken_directory(tmp_path: Path) -> None:
    (tmp_path / "broken.yaml").write_text(BROKEN)
    result = run_cli("templates", "list", env={"CAMPAIGN_TEMPLATES_DIR": str(tmp_path)})
    assert result.returncode == 1
    assert "broken.yaml" in result.stderr and "stage 'awareness'" in result.stderr
