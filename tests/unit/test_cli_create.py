"""``campaign-worker campaigns create`` in a subprocess over the wire."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from campaign_worker.service.campaign_manager import CampaignManager
from tests.cli_support import run_cli
from tests.conftest import ManagerFactory

pytestmark = pytest.mark.wire

CAMPAIGN = "name: Spring sale\ncampaign_type: sales\ntemplate_id: default\n"
CSV = (
    "user_id,timezone,first_name,plan\n"
    "u-1,Europe/Paris,Ann,pro\n"
    "u-2,,Bob,free\n"
    "u-3,Not/AZone,Cy,free\n"  # line 4: unknown timezone
    "u-4,UTC,Dee\n"  # line 5: a cell short
    "u-5,UTC,Eve,pro\n"
)


@pytest.fixture
def files(tmp_path: Path) -> Path:
    (tmp_path / "campaign.yaml").write_text(CAMPAIGN)
    (tmp_path / "audience.csv").write_text(CSV)
    return tmp_path


@pytest.fixture
def wire_manager(wire_db: Any, make_manager: ManagerFactory) -> CampaignManager:
    return make_manager(wire_db)


def create(files: Path, env: dict[str, str], *extra: str) -> Any:
    return run_cli("campaigns", "create", str(files / "campaign.yaml"), *extra, env=env)


def test_csv_import_skips_malformed_rows_by_line(
    files: Path, cli_env: dict[str, str], wire_db: Any, wire_manager: CampaignManager
) -> None:
    result = create(files, cli_env, "--recipients", str(files / "audience.csv"), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["imported"] == 3 and report["skipped"] == 2
    assert "line 4: skipped: timezone" in result.stderr
    assert "line 5: skipped: fewer cells" in result.stderr

    campaign = wire_db.campaigns.find_one({"_id": report["campaign_id"]})
    reference = campaign["recipients"]
    assert reference["collection"] == "recipients"
    rows = list(wire_db.recipients.find(reference["query"]).sort("_id", 1))
    assert [row["user_id"] for row in rows] == ["u-1", "u-2", "u-5"]
    assert rows[0]["timezone"] == "Europe/Paris" and rows[1]["timezone"] == "UTC"
    assert rows[0]["attributes"] == {"first_name": "Ann", "plan": "pro"}
    assert wire_manager.initialize_campaign_conversations(report["campaign_id"]) == 3


def test_jsonl_in_small_batches_with_an_idempotency_key(
    files: Path, cli_env: dict[str, str], wire_db: Any
) -> None:
    lines = [json.dumps({"user_id": f"u-{i}", "attributes": {"n": i}}) for i in range(7)]
    lines.insert(3, "{oops")  # line 4
    (files / "audience.jsonl").write_text("\n".join(lines) + "\n")
    argv = ("--recipients", str(files / "audience.jsonl"), "--batch-size", "2")
    first = create(files, cli_env, *argv, "--idempotency-key", "k-1")
    assert first.returncode == 0, first.stderr
    assert "7 recipients imported, 1 skipped" in first.stdout
    assert "line 4: skipped: not JSON" in first.stderr
    again = create(files, cli_env, *argv, "--idempotency-key", "k-1", "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["campaign_id"] in first.stdout
    assert wire_db.recipients.count_documents({}) == 7  # nothing imported twice
    assert wire_db.campaigns.count_documents({}) == 1


def test_missing_files_and_nothing_valid(
    files: Path, cli_env: dict[str, str], wire_db: Any
) -> None:
    missing = run_cli("campaigns", "create", str(files / "nope.yaml"), env=cli_env)
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    no_audience = create(files, cli_env, "--recipients", str(files / "nope.csv"))
    assert no_audience.returncode == 2 and "does not exist" in no_audience.stderr
    (files / "bad.csv").write_text("user_id,timezone\n,UTC\nu-1,Mars/Base\n")
    nothing = create(files, cli_env, "--recipients", str(files / "bad.csv"))
    assert nothing.returncode == 1
    assert "line 2: skipped" in nothing.stderr and "line 3: skipped" in nothing.stderr
    assert "no valid row to import" in nothing.stderr
    assert wire_db.campaigns.count_documents({}) == 0


def test_an_invalid_campaign_is_refused_before_importing(
    files: Path, cli_env: dict[str, str], wire_db: Any
) -> None:
    (files / "campaign.yaml").write_text(CAMPAIGN.replace("sales", "nosuchtype"))
    result = create(files, cli_env, "--recipients", str(files / "audience.csv"))
    assert result.returncode == 2
    assert "no campaign_type 'nosuchtype'" in result.stderr
    assert wire_db.recipients.count_documents({}) == 0
    (files / "campaign.yaml").write_text("- a list\n")
    assert create(files, cli_env).returncode == 2


def test_inline_recipients_from_json(files: Path, cli_env: dict[str, str]) -> None:
    doc = {"_id": "c-json", "name": "Inline", "campaign_type": "sales",
           "template_id": "default", "recipients": [{"user_id": "u-1"}]}  # fmt: skip
    (files / "campaign.json").write_text(json.dumps(doc))
    result = run_cli("campaigns", "create", str(files / "campaign.json"), env=cli_env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "created campaign c-json"


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("latin1.csv", "user_id,first_name\nu-1,José\n".encode("latin-1"), "not UTF-8 text"),
        ("quote.csv", b'"', "the header is not valid CSV"),
    ],
)
def test_an_unreadable_audience_file_is_a_clear_error(
    files: Path, cli_env: dict[str, str], name: str, content: bytes, message: str
) -> None:
    (files / name).write_bytes(content)
    result = create(files, cli_env, "--recipients", str(files / name))
    assert result.returncode in (1, 2), result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_a_campaign_file_that_is_not_utf8_is_refused(files: Path, cli_env: dict[str, str]) -> None:
    (files / "campaign.yaml").write_bytes(b"name: \xff\xfe\n")
    result = create(files, cli_env)
    assert result.returncode == 2
    assert "not UTF-8 text" in result.stderr and "Traceback" not in result.stderr
