"""A whole campaign on real ``celery worker`` and ``celery beat`` processes, driven by task
name from clients that know nothing of campaign_worker, on Redis and on RabbitMQ, with one
worker and with two."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from campaign_worker.entrypoints.tasks import campaign_id_for_task
from tests.e2e.conftest import COUNTING_APP, Broker, Processes, wait_for_workers, wait_until
from tests.e2e.scenario import (
    CREATE,
    METRICS,
    Driver,
    assert_final_state,
    campaign_payload,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

N = 80
PLAIN_CLIENT = Path(__file__).with_name("plain_client.py")


def create_from_plain_process(broker: Broker, env: dict[str, str], n: int, cwd: Path) -> str:
    """create_campaign from a separate Python process that imports only celery."""
    done = subprocess.run(
        [
            sys.executable,
            str(PLAIN_CLIENT),
            broker.url,
            broker.backend,
            CREATE,
            json.dumps({"campaign": campaign_payload(n)}),
        ],
        env={k: v for k, v in env.items() if k != "PYTHONPATH"},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    reply = json.loads(done.stdout.strip().splitlines()[-1])
    # No _id in the payload: the id derives from the task id (a redelivery is a no-op).
    assert reply["result"] == campaign_id_for_task(reply["task_id"])
    return str(reply["result"])


def summed_counters(directory: Path) -> dict[str, Counter[str]]:
    totals: dict[str, Counter[str]] = {
        "mongo_commands": Counter(),
        "published": Counter(),
        "mongo_commands_by_task": Counter(),
        "task_runs": Counter(),
    }
    for path in directory.glob("*.json"):
        data = json.loads(path.read_text())
        for key in totals:
            totals[key].update(data[key])
    return totals


def report(name: str, figures: dict[str, Any]) -> None:
    line = json.dumps({"e2e": name, **figures}, sort_keys=True)
    print(f"\nE2E FIGURES {line}")


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"], indirect=True)
def test_campaign_completes_on_real_worker_and_beat(
    broker: Broker, processes: Processes, client: Celery, mongo: Any, tmp_path: Path
) -> None:
    counters = tmp_path / "counters"
    counters.mkdir()
    processes.env["COUNTERS_DIR"] = str(counters)
    node = processes.worker("e2e-one", app=COUNTING_APP)
    processes.beat(app=COUNTING_APP)
    wait_for_workers(client, [node])

    started = time.monotonic()
    campaign_id = create_from_plain_process(broker, processes.env, N, tmp_path)
    driver = Driver(client, mongo, campaign_id)
    driver.run_until_completed(timeout=120)
    elapsed = time.monotonic() - started

    expected = assert_final_state(mongo, campaign_id, N)

    # The metrics task answers with the same document, JSON-safe.
    metrics = client.send_task(METRICS, kwargs={"campaign_id": campaign_id}).get(timeout=30)
    assert metrics["campaign_id"] == campaign_id
    assert metrics["completed_conversations"] == expected["completed_conversations"]
    assert metrics["failed_conversations"] == expected["failed_conversations"]
    assert metrics["opted_out_conversations"] == expected["opted_out_conversations"]
    assert metrics["message_metrics"]["total_sent"] == expected["total_sent"]
    assert metrics["message_metrics"]["response_rate"] == pytest.approx(
        expected["total_received"] / expected["total_sent"]
    )
    assert list(metrics["stage_metrics"]) == ["hello", "offer"]
    assert isinstance(metrics["updated_at"], str)

    # SIGTERM: warm shutdown, each process closes its MongoDB client, exit code 0.
    worker_proc = processes.started[0][1]
    assert processes.stop(worker_proc) == 0
    log = processes.log("e2e-one")
    assert "worker_process_stopped" in log and "worker_stopped" in log

    totals = summed_counters(counters)
    published = totals["published"]
    client_published = 1 + driver.replies + 1  # create, replies, metrics
    commands = sum(totals["mongo_commands"].values())
    report(
        broker.name,
        {
            "conversations": N,
            "wall_seconds": round(elapsed, 1),
            "tasks_published_by_workers_and_beat": dict(published),
            "tasks_published_by_clients": client_published,
            "tasks_per_1000_conversations": round(
                (sum(published.values()) + client_published) * 1000 / N
            ),
            "tasks_per_1000_excluding_polls": round(
                (
                    sum(published.values())
                    - published["campaign_worker.poll_campaigns"]
                    + client_published
                )
                * 1000
                / N
            ),
            "mongo_round_trips": commands,
            "mongo_round_trips_per_1000_conversations": round(commands * 1000 / N),
            "mongo_commands": dict(totals["mongo_commands"]),
            "task_runs": dict(totals["task_runs"]),
            "mongo_round_trips_per_task_run": {
                name.rsplit(".", 1)[-1]: round(count / totals["task_runs"][name], 1)
                for name, count in totals["mongo_commands_by_task"].items()
                if totals["task_runs"][name]
            },
        },
    )


@pytest.mark.parametrize("broker", ["redis"], indirect=True)
def test_two_worker_processes_give_the_same_end_state(
    broker: Broker, processes: Processes, client: Celery, mongo: Any
) -> None:
    processes.env["PROCESS_BATCH_SIZE"] = "10"  # more, smaller batches: more contention
    nodes = [processes.worker("e2e-a"), processes.worker("e2e-b")]
    processes.beat()
    wait_for_workers(client, nodes)

    result = client.send_task(CREATE, kwargs={"campaign": campaign_payload(N, "two-workers")})
    assert result.get(timeout=30) == "two-workers"
    Driver(client, mongo, "two-workers").run_until_completed(timeout=120)

    assert_final_state(mongo, "two-workers", N)

    # Processing ran as registered tasks over partition ranges (batches of 10 of 80 split
    # their ranges); every registration was released by the task it named, so nothing
    # keeps the metrics reconcile waiting.
    def released() -> bool:
        doc = mongo["campaign_metrics"].find_one({"_id": "two-workers"}) or {}
        return not doc.get("inflight")

    wait_until(released, 30, "every processing registration to be released")
    logs = "".join(processes.log(node.split("@")[0]) for node in nodes)
    assert re.search(r"partition\W+[0-9]+of[2-9]", logs), "no batch ran on a partition range"
    stats = client.control.inspect(destination=nodes, timeout=5).stats() or {}
    done = {node: sum(stats[node]["total"].values()) for node in nodes}
    assert all(count > 0 for count in done.values()), done  # both took part
