"""A flood of generated malformed task messages (issue 15 part 3) pushed raw through a real
Redis broker to a real worker while a small valid campaign runs: every bad message becomes
a dead letter with its reason, the worker process never dies, and the campaign completes
with every invariant holding."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections import Counter
from typing import Any

import pytest
import redis
from celery import Celery
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from campaign_worker.adapters.clock import SystemClock
from campaign_worker.bootstrap import build_manager
from campaign_worker.settings import Settings
from tests.e2e.broker_tools import publish_raw
from tests.e2e.conftest import TEMPLATES, Broker, Processes, wait_for_workers, wait_until
from tests.e2e.scenario import CREATE, Driver, campaign_payload

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

N = 40
FLOOD = 300  # and 6 more below
PAUSE = "campaign_worker.pause_campaign"
INBOUND = "campaign_worker.record_inbound_message"
HUGE = 5 * 1024 * 1024  # beyond the 4 MiB a dead letter keeps of a raw body

json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=30),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


def headers(task: str, task_id: str) -> dict[str, Any]:
    return {"lang": "py", "task": task, "id": task_id}


KINDS = ("unknown", "object", "args", "types", "missing", "bytes", "null-args")


def bad_message(
    data: st.DataObject, task_id: str, kind: str
) -> tuple[Any, dict[str, Any], str, str]:
    """(body, headers, queue, the dead letter reason expected) of one malformed message of
    ``kind`` (every kind in turn: a single generated example starts from the simplest
    values, so the kind is not left to it)."""
    body: Any
    if kind == "unknown":
        name = "campaign_worker." + data.draw(st.text(string_alphabet(), min_size=1, max_size=20))
        body = [data.draw(st.lists(json_values, max_size=2)), {}, {}]
        return body, headers(name, task_id), "celery", "unknown_task"
    if kind == "object":
        body = data.draw(st.dictionaries(st.text(max_size=8).filter(lambda k: k != "args"),
                                         json_values, max_size=3))  # fmt: skip
        return body, headers(PAUSE, task_id), "celery", "malformed_envelope"
    if kind == "args":
        args = data.draw(st.one_of(st.text(max_size=5), st.integers(), st.dictionaries(
            st.text(max_size=3), st.integers(), min_size=1, max_size=2)))  # fmt: skip
        return [args, {}, {}], headers(PAUSE, task_id), "celery", "malformed_envelope"
    if kind == "types":
        wrong = data.draw(
            st.one_of(st.integers(), st.lists(st.integers(), max_size=2), st.booleans())
        )
        kwargs = {"campaign_id": "bad", "user_id": wrong, "message_id": task_id, "content": 7}
        return [[], kwargs, {}], headers(INBOUND, task_id), "inbound", "invalid_input"
    if kind == "missing":
        return [[], {"content": "hello"}, {}], headers(INBOUND, task_id), "inbound", "invalid_input"
    if kind == "bytes":
        raw = b"\xff\xfe" + data.draw(st.binary(max_size=40))
        return raw, headers(PAUSE, task_id), "celery", "undecodable_body"
    # null args and kwargs for a campaign that does not exist: runs, then refused.
    body = [None, {"campaign_id": f"nope-{task_id}"}, None]
    return body, headers(PAUSE, task_id), "celery", "invalid_input"


def string_alphabet() -> st.SearchStrategy[str]:
    return st.characters(min_codepoint=48, max_codepoint=122)


@pytest.mark.parametrize("broker", ["redis"], indirect=True)
@settings(
    max_examples=1,
    phases=[Phase.generate],
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
@given(data=st.data())
def test_a_flood_of_malformed_messages_leaves_only_dead_letters(
    broker: Broker, processes: Processes, client: Celery, mongo: Any, data: st.DataObject
) -> None:
    node = processes.worker("flood", concurrency=2)
    processes.beat()
    wait_for_workers(client, [node])
    _, worker = processes.started[0]
    campaign_id = "flood-campaign"
    client.send_task(CREATE, kwargs={"campaign": campaign_payload(N, campaign_id)}).get(timeout=60)
    driver = Driver(client, mongo, campaign_id)

    expected: dict[str, str] = {}
    for index in range(FLOOD):
        task_id = f"bad-{index}-{uuid.uuid4().hex[:8]}"
        kind = KINDS[index % len(KINDS)]
        body, header, queue, reason = bad_message(data, task_id, kind)
        publish_raw(broker, body, header, queue=queue)
        expected[task_id] = reason
        if index % 25 == 0:
            driver.step()  # the valid campaign goes on meanwhile
    # Headers that are not a mapping (a Redis client can publish any JSON): they ended
    # the worker ("Unrecoverable error") before adapters/broker.install_payload_guard.
    for odd in (["a", "list"], "a string"):
        body = [[], {"campaign_id": uuid.uuid4().hex}, {}]
        publish_raw(broker, body, odd, queue="celery")
        digest = hashlib.sha256(json.dumps(body).encode()).hexdigest()
        expected[f"sha256:{digest}"] = "malformed_envelope"
    # Items that are no kombu payload at all, pushed straight into the queue's list: not
    # JSON, JSON that is not an object, an object without properties (they ended it too).
    raw_items = [
        f"not json {uuid.uuid4().hex}",
        json.dumps(["a", "list", uuid.uuid4().hex]),
        json.dumps({"body": uuid.uuid4().hex}),
    ]
    with redis.Redis.from_url(broker.url) as queue_client:
        for item in raw_items:
            queue_client.lpush("celery", item.encode())
            expected[f"sha256:{hashlib.sha256(item.encode()).hexdigest()}"] = "malformed_envelope"
    huge_id = f"huge-{uuid.uuid4().hex[:8]}"
    publish_raw(broker, json.dumps([["x" * HUGE], {}, {}]), headers("no.such.task", huge_id))
    expected[huge_id] = "unknown_task"

    driver.run_until_completed(timeout=200)

    def stored() -> int:
        return int(mongo["dead_letters"].count_documents({"_id": {"$in": list(expected)}}))

    wait_until(lambda: stored() == len(expected), 120, "a dead letter for every bad message")
    letters = {d["_id"]: d for d in mongo["dead_letters"].find({"_id": {"$in": list(expected)}})}
    reasons = Counter(letter["reason"] for letter in letters.values())
    for task_id, reason in expected.items():
        assert letters[task_id]["reason"] == reason, (task_id, letters[task_id])
        assert letters[task_id].get("error")
    huge = letters[huge_id]["envelope"]
    assert huge["body_truncated"] is True and huge["body_bytes"] > HUGE

    assert worker.poll() is None, "the worker process died"
    log = processes.log("flood")
    assert "Unrecoverable error" not in log and "consumer: Cannot connect" not in log

    settings_ = Settings(mongodb_db=mongo.name, campaign_templates_dir=TEMPLATES)
    manager = build_manager(mongo, settings_, clock=SystemClock())
    report = manager.check_invariants(campaign_id)
    figures = {"messages": len(expected), "reasons": reasons, **report.figures}
    print(f"\nBAD INPUT E2E {json.dumps(figures)}")
    assert set(reasons) == {"unknown_task", "malformed_envelope", "invalid_input",
                            "undecodable_body"}  # fmt: skip
    assert report.ok, report.violations
    assert report.figures["recipients"] == N and report.figures["conversations_lost"] == 0
