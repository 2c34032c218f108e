"""Message intake and argument redaction, without a broker: ``envelope.check`` on kombu
messages, the redacted reprs of ``RedactedRequest``, and body scrubbing."""

from __future__ import annotations

import io
import json
import logging
from typing import Any

from kombu import Connection
from kombu.message import Message

from campaign_worker.adapters.logs import (
    LONG_TEXT,
    REDACTED,
    configure_logging,
    redact_arguments,
    scrub,
    secrets_of,
)
from campaign_worker.entrypoints import envelope, tasks
from campaign_worker.entrypoints.observability import on_task_postrun, on_task_prerun
from tests.unit.test_observability import lines, log_stream

__all__ = ["log_stream"]  # a fixture, used by name
from campaign_worker.entrypoints.requests import argument_reprs

KNOWN = {"campaign_worker.pause_campaign"}


def message(body: Any, headers: Any) -> Any:
    data: Any = body if isinstance(body, bytes) else json.dumps(body).encode()
    channel = Connection("memory://").default_channel
    return Message(
        body=data,
        channel=channel,
        content_type="application/json",
        content_encoding="utf-8",
        headers=headers,
        delivery_info={"exchange": "inbound", "routing_key": "inbound"},
        properties={"correlation_id": "c-1"},
        accept=["application/json"],
    )


def v2(task: str = "campaign_worker.pause_campaign", task_id: str = "t-1") -> dict[str, Any]:
    return {"lang": "js", "task": task, "id": task_id}


def test_null_args_and_kwargs_are_normalised_in_the_body_celery_reads() -> None:
    msg = message([None, None, None], v2())
    assert envelope.check(msg, KNOWN) is None
    assert json.loads(msg.body) == [[], {}, {}]
    assert msg.payload == [[], {}, {}]


def test_a_well_formed_message_is_left_as_it_came() -> None:
    msg = message([["c"], {}, {}], v2())
    body = msg.body
    assert envelope.check(msg, KNOWN) is None
    assert msg.body is body


def test_protocol_1_without_args_is_accepted() -> None:
    msg = message({"task": "campaign_worker.pause_campaign", "id": "t-1", "kwargs": {}}, {})
    assert envelope.check(msg, KNOWN) is None
    assert msg.payload["args"] == []


def test_rejections_name_their_reason() -> None:
    cases = {
        "unknown_task": message([[], {"content": "x"}, {}], v2("nope")),
        "malformed_envelope": message({"campaign_id": "c"}, v2()),
        "undecodable_body": message(b"\x00 not json", v2()),
    }
    for reason, msg in cases.items():
        rejection = envelope.check(msg, KNOWN)
        assert rejection is not None and rejection.reason == reason, reason
        assert rejection.dead_letter_id == "t-1"
        assert rejection.envelope["headers"]["id"] == "t-1"
        assert rejection.envelope["routing_key"] == "inbound"


def test_malformed_shapes_are_described() -> None:
    bad = {
        "args is a JSON string": ["x", {}, {}],
        "kwargs is a JSON array": [[], [], {}],
        "body is a JSON object": {"kwargs": {}},
        "no task id": [[], {}, {}],
    }
    for error, body in bad.items():
        headers = v2() if error != "no task id" else {"task": "campaign_worker.pause_campaign"}
        rejection = envelope.check(message(body, headers), KNOWN)
        assert rejection is not None and rejection.reason == "malformed_envelope"
        assert error in rejection.error


def test_a_message_without_id_is_stored_under_a_hash_of_its_body() -> None:
    first = envelope.check(message([[], {}, {}], {"other": 1}), KNOWN)
    again = envelope.check(message([[], {}, {}], {"other": 1}), KNOWN)
    assert first is not None and again is not None
    assert first.dead_letter_id.startswith("sha256:")
    assert first.dead_letter_id == again.dead_letter_id


def test_argument_reprs_keep_ids_and_hide_bodies_even_positional() -> None:
    run = tasks.record_inbound_message.run
    args = ["camp", "user", "msg", "my secret reply"]
    argsrepr, kwargsrepr = argument_reprs(run, args, {"metadata": {"k": "secret metadata"}})
    assert argsrepr == repr(["camp", "user", "msg", REDACTED])
    assert "secret" not in kwargsrepr and "metadata" in kwargsrepr


def test_nested_campaign_shows_ids_only() -> None:
    campaign = {"_id": "c", "recipients": [{"user_id": "u", "attributes": {"a": "b"}}]}
    assert redact_arguments({"campaign": campaign}) == {
        "campaign": {"_id": "c", "recipients": REDACTED}
    }


def test_scrub_removes_whole_and_cut_off_bodies() -> None:
    secrets = secrets_of({"content": "a very private reply text", "campaign_id": "camp-000001"})
    assert secrets == ("a very private reply text",)
    text = "error: 'a very private reply text' and input_value='a very privat...'"
    assert scrub(text, secrets) == f"error: '{REDACTED}' and input_value='{REDACTED}...'"


def test_a_running_tasks_bodies_are_scrubbed_from_log_lines_and_tracebacks(
    log_stream: io.StringIO,
) -> None:
    configure_logging("INFO", "json", redact_bodies=True, stream=log_stream)
    body = "a reply nobody else may read " + "x" * 2 * LONG_TEXT
    on_task_prerun(
        task_id="t-1", task=tasks.record_inbound_message, args=[], kwargs={"content": body}
    )
    try:
        raise ValueError(f"cannot store {body[:100]!r}")
    except ValueError:
        logging.getLogger("celery.app.trace").exception("Task failed: %s", body)
    on_task_postrun(task_id="t-1", task=tasks.record_inbound_message)
    logging.getLogger("after").info("after the task: %s", "a reply nobody else may read")

    during, after = lines(log_stream)
    assert "a reply nobody" not in json.dumps(during)
    assert REDACTED in during["event"] and REDACTED in during["exception"]
    assert len(during["event"]) < LONG_TEXT + 100
    assert "a reply nobody else may read" in after["event"]  # only the running task's
