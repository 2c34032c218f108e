"""`make bench` at tiny sizes (``--smoke``): it runs end to end from the command line and its
JSON holds every figure of issue 10 with sane values. Not timed: speed lives in the bench
itself; this only checks the bench still works against the code it measures.

Starts its own redis-server (free port) for the worker runs and uses the wire tier's
MongoDB (``MONGODB_URI`` or the session's secantusdb).
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.figures import TARGETS

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.wire, pytest.mark.bench]

ROUND_TRIP_FIGURES = (
    "init_round_trips_per_1000_inline",
    "init_round_trips_per_1000_referenced",
    "advance_round_trips_per_1000_service",
    "advance_round_trips_per_1000_celery",
    "reply_round_trips_per_1000_celery",
    "enroll_round_trips_per_1000",
    "event_round_trips_per_1000",
)
RATIOS = (
    "claim_share_of_batch_db_time",
    "init_rate_over_raw_insert_many",
    "advance_rate_over_raw_bulk_write",
    "advance_rate_over_naive",
    "cpu_per_step_over_bson_encode",
    "worker_cpu_per_1000_over_noop",
)


def _shared_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One directory for every pytest-xdist worker of this run (the run's own otherwise)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session")
def smoke(wire_uri: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The smoke bench, run once per test run: the first worker to need it runs it (about
    90 s of both cores), the others wait for its result under a file lock."""
    shared = _shared_dir(tmp_path_factory)
    result = shared / "bench-smoke.json"
    with open(shared / "bench-smoke.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not result.exists():
            result.write_text(json.dumps(_run_smoke(wire_uri, shared)))
    report: dict[str, Any] = json.loads(result.read_text())
    return report


def _run_smoke(wire_uri: str, shared: Path) -> dict[str, Any]:
    out = shared / "bench-results"
    out.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "BENCH_"))}
    done = subprocess.run(
        [sys.executable, "-m", "bench.run", "--smoke", "--uri", wire_uri, "--out", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    [path] = out.glob("bench-*.json")
    report: dict[str, Any] = json.loads(path.read_text())
    report["stdout"] = done.stdout
    return report


@pytest.mark.timeout(900)
def test_every_figure_is_reported_beside_target_and_baseline(smoke: dict[str, Any]) -> None:
    assert list(smoke["figures"]) == list(TARGETS)
    for key, figure in smoke["figures"].items():
        assert figure["target"] == TARGETS[key][1], key
        assert figure["baseline"], key
        assert f"| {TARGETS[key][0]} | **" in smoke["stdout"], key
    assert smoke["commit"] and smoke["machine"]["cpus"] >= 1
    assert smoke["server"]["version"]


@pytest.mark.timeout(900)
def test_round_trip_counts_are_positive_integers(smoke: dict[str, Any]) -> None:
    for key in ROUND_TRIP_FIGURES:
        detail = smoke["figures"][key]["detail"]
        assert isinstance(detail["round_trips"], int) and detail["round_trips"] > 0, key
        assert detail["round_trips"] == sum(detail["by_command"].values()), key
        assert all(isinstance(n, int) and n > 0 for n in detail["by_command"].values()), key
        per_1000 = smoke["figures"][key]["value"]
        assert per_1000 == pytest.approx(detail["round_trips"] * 1000 / detail["items"], abs=0.1)
    # Every reply is at least one write of its conversation.
    replies = smoke["figures"]["reply_round_trips_per_1000_celery"]["detail"]
    assert replies["by_command"].get("update", 0) > 0
    messages = smoke["figures"]["broker_messages_per_1000_advanced"]["detail"]
    assert isinstance(messages["messages"], int) and messages["messages"] >= 1


@pytest.mark.timeout(900)
def test_ratios_rates_and_memory_are_sane(smoke: dict[str, Any]) -> None:
    figures = smoke["figures"]
    for key in RATIOS:
        value = figures[key]["value"]
        assert isinstance(value, int | float) and math.isfinite(value) and value > 0, key
    assert figures["claim_share_of_batch_db_time"]["value"] <= 1
    rates = [
        float(r.replace(",", ""))
        for r in figures["conversations_per_s_by_workers"]["value"].split(" / ")
    ]
    assert len(rates) == 3 and all(r > 0 for r in rates)
    runs = figures["conversations_per_s_by_workers"]["detail"]
    assert sorted(int(c) for c in runs) == [1, 2, 4]
    assert "bound:" in figures["conversations_per_s_by_workers"]["note"]
    rss = figures["init_peak_rss_mib"]["detail"]["runs"]
    assert len(rss) == 2 and all(0 < run["peak_rss_mib"] < 4096 for run in rss)
    assert [run["created"] for run in rss] == [run["recipients"] for run in rss]


@pytest.mark.timeout(900)
def test_reply_understanding_figures_are_sane(smoke: dict[str, Any]) -> None:
    figures = smoke["figures"]
    for key in ("intents_accuracy", "intents_opt_out_recall", "intents_quoted_signed_accuracy",
                "intents_worst_language_accuracy"):  # fmt: skip
        value = figures[key]["value"]
        assert isinstance(value, int | float) and 0 <= value <= 1, key
        assert figures[key]["baseline"].startswith("keyword classifier: "), key
    assert 0 <= figures["intents_false_opt_out_rate"]["value"] <= 1
    detail = figures["intents_accuracy"]["detail"]
    assert detail["replies"] > 0 and detail["latency_ms"]["samples"] >= detail["replies"]
    assert "needs_review" in next(iter(detail["figures"]["confusion"].values()))
    latency = detail["latency_ms"]
    assert 0 < latency["p50"] <= latency["p99"] <= latency["max"]
    assert figures["intents_latency_p99_ms"]["value"] == latency["p99"]
    assert 0 < figures["intents_startup_s"]["value"] < 300
