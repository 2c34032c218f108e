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


def test_demo_on_worker_with_embedded_services() -> None:
    result = _run_demo("--recipients", "40", "--speed", "86400", "--timeout", "200")
    output = result.stdout
    assert result.returncode == 0, output + result.stderr
    assert "MongoDB: embedded secantusdb" in output
    assert "Broker: embedded Redis" in output
    assert "campaign status: completed" in output
    funnel = _funnel(output)
    assert funnel["awareness"][0] == 40
    # Each stage is entered by exactly those who completed the one before.
    assert funnel["consideration"][0] == funnel["awareness"][1]
    assert funnel["decision"][0] == funnel["consideration"][1]
    outcomes = re.search(
        r"outcomes: completed (\d+), failed (\d+), opted out (\d+), still active (\d+)", output
    )
    assert outcomes is not None
    completed, failed, opted_out, active = map(int, outcomes.groups())
    assert (completed + failed + opted_out, active) == (40, 0)
    assert completed == funnel["decision"][1]


def test_demo_in_process() -> None:
    result = _run_demo("--in-process", "--recipients", "30")
    assert result.returncode == 0, result.stdout + result.stderr
    funnel = _funnel(result.stdout)
    assert funnel["awareness"][0] == 30
    assert "still active 0" in result.stdout
