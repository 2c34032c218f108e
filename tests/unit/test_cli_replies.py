"""``campaign-worker replies review|resolve|export-labels`` in a subprocess over the wire:
the held replies listed oldest first with their text, resolved once (a second time says
so, another intent is refused), the resolutions exported as labelled TSV that
``intents eval`` reads."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from campaign_worker.adapters.clock import ManualClock
from tests.cli_support import run_cli
from tests.conftest import ManagerFactory, sample_campaign
from tests.fakes import ScriptedUnderstanding

pytestmark = pytest.mark.wire

FIRST, SECOND = "hmm, I would have to see", "depends who is asking"


def test_review_resolve_and_export(
    wire_db: Any,
    make_manager: ManagerFactory,
    cli_env: dict[str, str],
    clock: ManualClock,
    tmp_path: Path,
) -> None:
    scripted = ScriptedUnderstanding()
    scripted.hold(FIRST, suggested="question")
    scripted.hold(SECOND, suggested="other", reason="opt_out_risk", opt_out_probability=0.3)
    manager = make_manager(wire_db, understanding=scripted)
    assert "no replies held for review" in run_cli("replies", "review", env=cli_env).stdout
    manager.create_campaign(sample_campaign(3))
    manager.initialize_campaign_conversations("camp-1")
    manager.process_due_conversations("camp-1")
    manager.record_inbound_message("camp-1", "user-00002", "in-2", SECOND)
    clock.advance(timedelta(minutes=5))
    manager.record_inbound_message("camp-1", "user-00001", "in-1", FIRST)

    listed = run_cli("replies", "review", "--json", env=cli_env)
    assert listed.returncode == 0, listed.stderr
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [(r["message_id"], r["text"], r["reason"]) for r in rows] == [
        ("in-2", SECOND, "opt_out_risk"),
        ("in-1", FIRST, "low_confidence"),
    ]
    table = run_cli("replies", "review", "--campaign", "camp-1", "--limit", "1", env=cli_env)
    assert "in-2" in table.stdout and "depends who is asking" in table.stdout
    assert "in-1" not in table.stdout

    resolved = run_cli("replies", "resolve", "in-1", "question", "--by", "ann", env=cli_env)
    assert resolved.returncode == 0, resolved.stderr
    result = json.loads(resolved.stdout)
    assert (result["already_resolved"], result["current_stage"]) == (False, "consideration")
    again = run_cli("replies", "resolve", "in-1", "question", env=cli_env)
    assert again.returncode == 0 and "already resolved as question: no change" in again.stderr
    assert json.loads(again.stdout)["already_resolved"] is True
    refused = run_cli("replies", "resolve", "in-1", "opt_out", env=cli_env)
    assert refused.returncode == 2 and "already resolved as 'question'" in refused.stderr
    unknown = run_cli("replies", "resolve", "in-9", "positive", env=cli_env)
    assert unknown.returncode == 1 and "no reply held for review" in unknown.stderr

    exported = run_cli("replies", "export-labels", env=cli_env)
    assert exported.returncode == 0, exported.stderr
    assert exported.stdout == f"question\t{FIRST}\ten\treview,low_confidence\n"
    labels = tmp_path / "labels.tsv"
    labels.write_text(exported.stdout, encoding="utf-8")
    scored = run_cli("intents", "eval", str(labels), "--json", env=cli_env)
    assert scored.returncode == 0, scored.stderr
    assert json.loads(scored.stdout)["replies"] == 1
    later = run_cli("replies", "export-labels", "--since", "2099-01-01", env=cli_env)
    assert later.returncode == 0 and later.stdout == ""
