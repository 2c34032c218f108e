"""Tasks delayed past the broker's visibility timeout, and a long initialization under a
short time limit, on a private Redis with a visibility timeout of 6 s and time limits of
3 s (soft) / 5 s (hard):

- every reply is sent with a countdown of 10 s: Redis hands each one out again while a
  worker holds it for its ETA, so several copies arrive, all due at once; each task runs
  ONCE (its task-id claim in ``task_claims``: ``entrypoints/claims.py``), the other copies
  are acknowledged without running;
- 600 recipients initialized 20 at a time (30 batches), each step with a time budget of
  1 ms (INIT_STEP_SECONDS): a step stops at a checkpoint once its budget is spent, after at
  least one batch, and the next step resumes there. No machine inserts 30 batches over the
  wire in 1 ms, so several steps are certain whatever the machine's speed; each step but
  the first resumes from a checkpoint, none is killed by its time limit, no dead letter,
  nothing twice;
- any other task that runs out of its 3 s (a processing batch on a loaded machine) is
  retried with backoff, not dead-lettered.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from datetime import UTC
from pathlib import Path
from typing import Any

import pymongo
import pytest
from celery import Celery

from tests.e2e.conftest import Broker, Processes, wait_for_workers
from tests.e2e.private_redis import PrivateRedis
from tests.e2e.scenario import INBOUND
from tests.fault.msg_support import (
    CREATE,
    Audience,
    assert_clean,
    check,
    dead_letters,
    fault_env,
    payload,
    record,
    wait_recorded,
)

pytestmark = pytest.mark.timeout(300)

N = 600
CAMPAIGN = "fault-late"
VISIBILITY_TIMEOUT = 6
COUNTDOWN = 10
INITIALIZE = "campaign_worker.initialize_campaign"
INIT_BATCH = 20
INIT_STEP_SECONDS = 0.001


def step_positions(log: str) -> list[object]:
    """Where each initialization step started (its JSON log event), in log order."""
    positions = []
    for line in log.splitlines():
        if '"campaign_initialization_step"' in line:
            positions.append(json.loads(line[line.index("{") :]).get("position"))
    return positions


def received(log: str, name: str) -> Counter[str]:
    """Copies of ``name`` a worker took, per task id (Celery's "received" lines)."""
    return Counter(re.findall(rf"{re.escape(name)}\[([^\]]+)\] received", log))


def test_eta_past_the_visibility_timeout_runs_once_and_init_checkpoints_under_a_time_limit(
    private_redis: PrivateRedis, wire_uri: str, e2e_db_name: str, tmp_path: Path, e2e_lock: None
) -> None:
    began = time.monotonic()
    env = fault_env(
        Broker("redis", private_redis.url, ""),
        wire_uri,
        e2e_db_name,
        CELERY_CONFIG_MODULE="tests.e2e.short_visibility_config",
        CELERY_VISIBILITY_TIMEOUT=str(VISIBILITY_TIMEOUT),
        CELERY_TASK_SOFT_TIME_LIMIT="3",
        CELERY_TASK_TIME_LIMIT="5",
        INIT_BATCH_SIZE=str(INIT_BATCH),
        INIT_BATCHES_PER_TASK="10000",  # only the time budget ends a step
        INIT_STEP_SECONDS=str(INIT_STEP_SECONDS),
        INBOUND_BATCH_SIZE="20",
    )
    procs = Processes(tmp_path, env)
    client = Celery("other-service", broker=private_redis.url)
    mongo: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
        wire_uri, tz_aware=True, tzinfo=UTC, serverSelectionTimeoutMS=20000
    )
    db = mongo[e2e_db_name]
    try:
        nodes = [procs.worker("late-a", concurrency=1), procs.worker("late-b", concurrency=1)]
        procs.beat()
        wait_for_workers(client, nodes)
        client.send_task(CREATE, kwargs={"campaign": payload(N, CAMPAIGN, "late")})
        audience = Audience(client, db, CAMPAIGN, countdown=COUNTDOWN)
        audience.run_until_completed(180)
        # A reply due after its conversation timed out is recorded after the campaign
        # completed; then late copies of the last replies show up (and do not run).
        wait_recorded(db, CAMPAIGN, audience.replies, 60)
        time.sleep(VISIBILITY_TIMEOUT + 2)
        logs = procs.log("late-a") + procs.log("late-b")
        claims = {doc["_id"]: doc for doc in db["task_claims"].find()}
        campaign = db["campaigns"].find_one({"_id": CAMPAIGN})
        letters = dead_letters(db)
    finally:
        client.close()
        procs.stop_all()
        mongo.close()

    report = check(wire_uri, e2e_db_name, CAMPAIGN)
    copies = received(logs, INBOUND)
    delayed = set(audience.task_ids)
    copies_of_delayed = sum(copies[t] for t in delayed)
    steps = received(logs, INITIALIZE)
    record(
        "eta_past_visibility_timeout_and_init_under_time_limit",
        report,
        faults={
            "delayed_replies": len(delayed),
            "extra_copies_delivered": copies_of_delayed - len(delayed),
            "initialization_steps_under_a_3s_soft_limit": sum(steps.values()),
        },
        seconds=time.monotonic() - began,
        runs_per_delayed_task=sorted(Counter(c["runs"] for c in claims.values()).items()),
        copies_skipped=logs.count('"task_copy_skipped"'),
        copies_deferred=logs.count('"task_copy_deferred"'),
        # Under this load a processing batch may run out of its 3 s: retried, not lost.
        soft_limit_retries=len(re.findall(r"Retry in .*SoftTimeLimitExceeded", logs)),
        init_batches=campaign["init_progress"] if campaign else None,
    )
    assert_clean(report)
    assert report.figures["recipients"] == N
    assert report.figures["replies_recorded"] == len(delayed)
    # The fault happened: copies beyond the first, for most delayed replies ...
    assert copies_of_delayed > len(delayed)
    # ... and each delayed task ran once: claimed once, done, every other copy not run.
    assert delayed <= set(claims)
    assert {claims[t]["runs"] for t in delayed} == {1}
    assert all(claims[t]["done_at"] is not None for t in delayed)
    assert logs.count('"task_copy_skipped"') + logs.count('"task_copy_deferred"') > 0
    # The initialization took several steps, none killed or failed by its time limit.
    # (One step would do it all but for the time budget: INIT_BATCHES_PER_TASK is huge.)
    # The first started from nothing; every later one from the checkpoint its predecessor
    # saved: no step started over.
    assert sum(steps.values()) >= 2, steps
    positions = step_positions(procs.log("late-a")) + step_positions(procs.log("late-b"))
    assert len(positions) == sum(steps.values()), (positions, steps)
    assert positions.count(None) == 1, positions
    assert len(set(map(str, positions))) == len(positions), positions
    lines = logs.splitlines()
    assert not [x for x in lines if INITIALIZE in x and "TimeLimitExceeded" in x]
    assert "Hard time limit" not in logs
    assert letters == []
