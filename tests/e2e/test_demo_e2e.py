"""`campaign-worker demo` (what `make demo` runs) works on a machine with no services
configured: it starts its embedded MongoDB stand-in and Redis, runs the sample campaign on
a real worker and beat, prints the funnel, and stops everything it started."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]


def _run_demo(*extra: str) -> subprocess.CompletedProcess[str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("CELERY_", "MONGODB_", "CLOCK_", "CAMPAIGN_"))
    }
    return subprocess.run(
        [sys.executable, "-m", "campaign_worker.entrypoints.cli", "demo", *extra],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _funnel(output: str) -> dict[str, tuple[int, int]]:
    rows = re.findall(r"^(awareness|consideration|decision)\s+(\d+)\s+(\d+)", output, re.M)
    return {stage: (int(entered), int(completed)) for stage, entered, completed in rows}


def _transitions(output: str) -> dict[tuple[str, str], int]:
    """The branched funnel's rows: (from, to) -> count; exits as "exit:<outcome>"."""
    rows = re.findall(r"^(\w+) -> (\(exit\) )?(\w+)\s+(\d+)$", output, re.M)
    return {
        (source, f"exit:{target}" if is_exit else target): int(count)
        for source, is_exit, target, count in rows
    }


def _assert_branched(output: str, recipients: int) -> None:
    """Each stage is entered exactly as often as transitions lead into it; every
    conversation leaves through exactly one exit; the journey did branch."""
    funnel, moves = _funnel(output), _transitions(output)
    assert funnel["awareness"][0] == recipients
    for stage in ("consideration", "decision"):
        assert funnel[stage][0] == sum(n for (_, to), n in moves.items() if to == stage)
    assert sum(n for (_, to), n in moves.items() if to.startswith("exit:")) == recipients
    assert moves.get(("awareness", "decision"), 0) > 0  # skipped ahead on a price question
    assert moves.get(("awareness", "exit:failed"), 0) > 0  # "no thanks" exits
    assert moves.get(("awareness", "exit:opted_out"), 0) > 0  # opt-out phrases


def test_demo_on_worker_with_embedded_services() -> None:
    result = _run_demo("--recipients", "40", "--speed", "86400", "--timeout", "200")
    output = result.stdout
    assert result.returncode == 0, output + result.stderr
    assert "MongoDB: embedded secantusdb" in output
    assert "Broker: embedded Redis" in output
    assert "campaign status: completed" in output
    _assert_branched(output, 40)
    outcomes = re.search(
        r"outcomes: completed (\d+), failed (\d+), opted out (\d+), still active (\d+)", output
    )
    assert outcomes is not None
    completed, failed, opted_out, active = map(int, outcomes.groups())
    assert (completed + failed + opted_out, active) == (40, 0)
    assert completed == _transitions(output).get(("decision", "exit:completed"), 0)


def test_demo_in_process() -> None:
    result = _run_demo("--in-process", "--recipients", "30")
    assert result.returncode == 0, result.stdout + result.stderr
    _assert_branched(result.stdout, 30)
    assert "still active 0" in result.stdout
