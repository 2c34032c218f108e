"""Every task message delivered twice, for a whole campaign: worker and beat run
``tests.fault.duplicating_app``, which publishes each task message twice (same task id,
same body: two broker messages), and the test publishes its create and every reply twice
under one task id. Nothing is lost, sent twice or recorded twice, and the metrics document
equals a recount without any reconcile."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from tests.e2e.conftest import Broker, Processes, wait_for_workers
from tests.fault.msg_support import (
    CREATE,
    Audience,
    assert_clean,
    check,
    dead_letters,
    doubled,
    fault_env,
    payload,
    record,
)

pytestmark = pytest.mark.timeout(240)

N = 200
CAMPAIGN = "fault-dup"
APP = "tests.fault.duplicating_app"


@pytest.fixture
def dup_dir(tmp_path: Path) -> Path:
    path = tmp_path / "doubled"
    path.mkdir()
    return path


@pytest.fixture
def procs(
    redis_broker: Broker, wire_uri: str, e2e_db_name: str, tmp_path: Path, dup_dir: Path
) -> Iterator[Processes]:
    env = fault_env(redis_broker, wire_uri, e2e_db_name, FAULT_DUP_DIR=str(dup_dir))
    started = Processes(tmp_path, env)
    try:
        yield started
    finally:
        started.stop_all()


def test_every_task_message_delivered_twice(
    procs: Processes,
    redis_broker: Broker,
    mongo: Any,
    wire_uri: str,
    e2e_db_name: str,
    dup_dir: Path,
) -> None:
    began = time.monotonic()
    client = Celery("other-service", broker=redis_broker.url)
    try:
        node = procs.worker("dup", concurrency=2, app=APP)
        procs.beat(app=APP)
        wait_for_workers(client, [node])
        for _ in range(2):
            client.send_task(CREATE, kwargs={"campaign": payload(N, CAMPAIGN)}, task_id="c-1")
        audience = Audience(client, mongo, CAMPAIGN, copies=2)
        audience.run_until_completed(150)
        time.sleep(2)  # copies still queued would act now
    finally:
        client.close()

    report = check(wire_uri, e2e_db_name, CAMPAIGN)
    extra = doubled(dup_dir)
    faults = {
        "task_messages_doubled_by_worker_and_beat": sum(extra.values()),
        "client_messages_doubled": 1 + audience.replies,
    }
    record(
        "every_task_message_delivered_twice",
        report,
        faults=faults,
        seconds=time.monotonic() - began,
        doubled_by_task=extra,
        replies=audience.replies,
    )
    assert_clean(report)
    assert report.figures["recipients"] == N
    assert report.figures["replies_recorded"] == audience.replies
    # The doubling really happened, for the worker's and beat's own messages.
    assert extra.get("campaign_worker.poll_campaigns", 0) > 0
    assert extra.get("campaign_worker.initialize_campaign", 0) > 0
    assert extra.get("campaign_worker.process_conversations", 0) > 0
    assert dead_letters(mongo) == []
    assert procs.started[0][1].poll() is None, "the worker died"
