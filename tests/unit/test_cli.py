"""``campaign-worker``: the bare command, --version, help and templates, in a subprocess."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

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
    for command in ("campaigns", "conversations", "metrics", "check", "simulate", "templates",
                    "dead-letters", "health", "demo", "intents"):  # fmt: skip
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


@pytest.mark.parametrize(
    "group",
    ["", "campaigns", "conversations", "templates", "dead-letters", "suppressions", "intents"],
)
def test_every_command_summary_is_one_line(group: str) -> None:
    # A docstring whose first paragraph spans lines is listed with its line breaks.
    result = run_cli(*([group] if group else []))
    assert result.returncode == 0, result.stderr
    panel = result.stdout.split("Commands", 1)[1].splitlines()[1:]
    rows = panel[: next(i for i, s in enumerate(panel) if s.startswith("╰"))]
    assert rows
    continued = [row for row in rows if row.startswith("│  ")]
    assert continued == [], f"wrapped summaries in {group or 'campaign-worker'}: {continued}"


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


def test_simulate_prints_the_funnel_and_a_sample_conversation() -> None:
    result = run_cli("simulate", "default", "--campaign-type", "sales", "--recipients", "30",
                     "--reply-rate", "0.7")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "campaign simulation: 30 recipients" in result.stdout
    assert re.search(r"awareness\s+│\s+30\s+│", result.stdout)
    assert "messages of sample recipient user-00000" in result.stdout
    assert "Hi Ada!" in result.stdout  # the template's first message, filled in
    assert "completed after" in result.stderr


def test_simulate_json_and_reply_rate() -> None:
    def run(rate: str) -> dict[str, Any]:
        argv = ("simulate", str(PACKAGED), "--recipients", "40", "--reply-rate", rate, "--json")
        result = run_cli(*argv)
        assert result.returncode == 0, result.stderr
        return dict(json.loads(result.stdout))

    silent, eager = run("0"), run("1")
    assert silent["funnel"]["messages"]["total_received"] == 0
    assert silent["funnel"]["stages"]["consideration"]["entered"] == 0
    assert eager["funnel"]["stages"]["decision"]["completed"] == 40
    assert eager["funnel"]["outcomes"]["completed"] == 40
    directions = [m["direction"] for m in eager["sample"]["message_history"]]
    assert directions[:2] == ["outbound", "inbound"]


def test_simulate_bad_input(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(BROKEN)
    invalid = run_cli("simulate", str(broken))
    assert invalid.returncode == 1 and f"invalid template {broken}" in invalid.stderr
    unknown_type = run_cli("simulate", "default", "--campaign-type", "nope")
    assert unknown_type.returncode == 2 and "no campaign type 'nope'" in unknown_type.stderr
    unknown = run_cli("simulate", "no-such-template")
    assert unknown.returncode == 2 and "unknown template_id 'no-such-template'" in unknown.stderr
    assert run_cli("simulate", "default", "--reply-rate", "1.5").returncode == 2
