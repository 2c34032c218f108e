"""With JSON logs on, a real worker writes nothing but JSON lines, from its start to its
warm shutdown, and task results are structured fields rather than Python reprs."""

from __future__ import annotations

import json
from typing import Any

import pytest
from celery import Celery

from tests.e2e.conftest import Broker, Processes, wait_for_workers

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


@pytest.mark.parametrize("broker", ["redis"], indirect=True)
def test_every_worker_line_is_json_and_results_are_fields(
    broker: Broker, processes: Processes, client: Celery
) -> None:
    processes.env["LOG_FORMAT"] = "json"
    node = processes.worker("e2e-json", concurrency=1)
    wait_for_workers(client, [node])
    polled = client.send_task("campaign_worker.poll_campaigns", queue="polling").get(timeout=30)
    assert polled["initialize"] == []
    worker = next(proc for label, proc in processes.started if label == "e2e-json")
    assert processes.stop(worker) == 0

    lines = [line for line in processes.log("e2e-json").splitlines() if line.strip()]
    records: list[dict[str, Any]] = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            pytest.fail(f"not a JSON line: {line[:200]!r}")
    events = [str(record.get("event", "")) for record in records]
    starting = next(r for r in records if r.get("event") == "worker_starting")
    assert "polling" in starting["queues"] and starting["hostname"] == node
    assert any("Warm shutdown" in event for event in events)
    [done] = [r for r in records if " succeeded" in str(r.get("event")) and "result" in r]
    assert done["result"] == {**polled, "oldest_due": None}
    assert "{'initialize'" not in done["event"]
