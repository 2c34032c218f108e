"""Bad input, property-based (issue 15 part 3): random and malformed envelopes, task
arguments, templates, message texts and audience files. Each gets a clear error (an
``InvalidInputError``/``TemplateError`` naming what is wrong, a dead letter, a skipped
row with its reason) and never an unexpected exception."""

from __future__ import annotations

import io
import json
import string
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from kombu import Connection
from kombu.message import Message

from campaign_worker.adapters.template_files import parse_template
from campaign_worker.bootstrap import Container
from campaign_worker.demo.webhook_receiver import verify_campaign_webhook
from campaign_worker.domain.delivery import signature
from campaign_worker.domain.errors import CampaignWorkerError, InvalidTemplateError, TemplateError
from campaign_worker.domain.placeholders import placeholder_problem
from campaign_worker.domain.transitions import render
from campaign_worker.entrypoints import delivery_tasks, envelope, tasks
from campaign_worker.entrypoints.cli.recipient_files import read_csv, read_jsonl
from tests.unit.test_tasks import Enqueued, enqueued, worker

__all__ = ["enqueued", "worker"]  # fixtures, used by name

FIXTURES = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    st.text(max_size=40),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)

# ------------------------------------------------------------------ envelopes

REGISTERED = {"campaign_worker.pause_campaign", "campaign_worker.record_inbound_message"}
REASONS = {envelope.UNKNOWN_TASK, envelope.MALFORMED_ENVELOPE, envelope.UNDECODABLE_BODY}

headers = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "task": st.one_of(st.sampled_from(sorted(REGISTERED)), json_values),
            "id": st.one_of(st.uuids().map(str), json_values),
            "lang": st.just("py"),
            "argsrepr": json_values,
        },
    ),
    json_values,
)
bodies = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda value: json.dumps(value).encode()),
    st.tuples(json_values, json_values, json_values).map(lambda v: json.dumps(list(v)).encode()),
    st.fixed_dictionaries(
        {"task": json_values, "id": json_values},
        optional={"args": json_values, "kwargs": json_values},
    ).map(lambda v: json.dumps(v).encode()),
)


def kombu_message(body: bytes, header: Any, content_type: str = "application/json") -> Any:
    raw: Any = body  # kombu's stubs say str; transports hand it bytes
    message = Message(
        body=raw,
        channel=Connection("memory://").default_channel,
        content_type=content_type,
        content_encoding="utf-8",
        headers={},
        delivery_info={"exchange": "", "routing_key": "inbound"},
        properties={},
        accept=["application/json"],
    )
    message.headers = header  # kombu's constructor reads a mapping; a transport may not
    return message


@settings(max_examples=300, deadline=None)
@given(body=bodies, header=headers, content_type=st.sampled_from(["application/json", "x/y"]))
def test_any_envelope_is_run_normalised_or_rejected_with_a_reason(
    body: bytes, header: Any, content_type: str
) -> None:
    message = kombu_message(body, header, content_type)
    rejection = envelope.check(message, REGISTERED)
    if rejection is None:
        # What Celery will read: a registered name, an id, and arguments it can call
        # with: [list, dict, dict], or a mapping with list args and dict kwargs (protocol 1
        # when the headers name no task, else what Celery calls a hybrid message).
        payload = message.decode()
        source = header if "task" in header else payload
        assert source["task"] in REGISTERED and isinstance(source["id"], str)
        if isinstance(payload, dict):
            assert isinstance(payload["args"], list) and isinstance(payload["kwargs"], dict)
        else:
            args, kwargs, embed = payload
            assert isinstance(args, list) and isinstance(kwargs, dict)
            assert isinstance(embed, dict)
        return
    assert rejection.reason in REASONS
    assert rejection.error
    assert rejection.dead_letter_id
    assert rejection.envelope["body_bytes"] == len(body)
    json.dumps(rejection.envelope)  # storable as it is


# ------------------------------------------------------------------ public tasks

PUBLIC = [
    (tasks.create_campaign, ["campaign", "idempotency_key"]),
    (tasks.initialize_campaign, ["campaign_id"]),
    (tasks.process_conversations, ["campaign_id", "stage", "limit", "partition", "partitions"]),
    (
        tasks.record_inbound_message,
        ["campaign_id", "user_id", "message_id", "content", "timestamp", "metadata"],
    ),
    (tasks.mark_conversation_complete, ["conversation_id"]),
    (tasks.pause_campaign, ["campaign_id"]),
    (tasks.resume_campaign, ["campaign_id"]),
    (tasks.cancel_campaign, ["campaign_id"]),
    (tasks.get_campaign_metrics, ["campaign_id"]),
    (tasks.list_suppressions, ["user_id", "channel", "limit"]),
    (tasks.add_suppression, ["user_id", "channel", "address", "reason", "source"]),
    (tasks.lift_suppression, ["key", "user_id", "channel", "address"]),
    (delivery_tasks.record_delivery_status, ["message_id", "status", "detail", "timestamp"]),
]


def arguments_for(names: list[str]) -> st.SearchStrategy[tuple[list[Any], dict[str, Any]]]:
    keys = st.one_of(st.sampled_from(names), st.text(max_size=8))
    kwargs = st.dictionaries(keys, json_values, max_size=len(names) + 1)
    return st.tuples(st.lists(json_values, max_size=2), kwargs)


@pytest.mark.parametrize(("task", "names"), PUBLIC, ids=[t.name.split(".")[1] for t, _ in PUBLIC])
@FIXTURES
@given(data=st.data())
def test_any_arguments_to_a_public_task_get_a_result_or_a_clear_error(
    worker: Container, enqueued: Enqueued, task: Any, names: list[str], data: st.DataObject
) -> None:
    args, kwargs = data.draw(arguments_for(names))
    task_id = data.draw(st.uuids()).hex
    result = task.apply(args=args, kwargs=kwargs, task_id=task_id)
    assert result.state in ("SUCCESS", "FAILURE")
    if result.state == "FAILURE":
        assert isinstance(result.result, CampaignWorkerError), repr(result.result)
        letter = worker.db["dead_letters"].find_one({"_id": task_id})
        assert letter is not None and letter["error"]


# ------------------------------------------------------------------ message texts


@given(text=st.text(alphabet=string.printable, max_size=60))
def test_any_text_renders_only_plain_placeholders_or_is_refused(text: str) -> None:
    attributes = {"first_name": "Ann", "attributes": ["x"]}
    if placeholder_problem(text) is not None:
        with pytest.raises(InvalidTemplateError):
            render(text, attributes)
        return
    rendered = render(text, attributes)
    assert isinstance(rendered, str)
    assert "class" not in rendered or "class" in text  # nothing reached beyond the values


@pytest.mark.parametrize(
    "text",
    [
        "{first_name.__class__}",
        "{first_name.__class__.__mro__[1].__subclasses__}",
        "{attributes[0]}",
        "{first_name:{attributes.__class__}}",
        "{first_name:>999999999}",
        "{0}",
        "{}",
        "{first_name!x}",
        "{first_name",
    ],
)
def test_attribute_index_and_spec_access_is_refused_at_validation_and_render(text: str) -> None:
    assert placeholder_problem(text) is not None
    with pytest.raises(InvalidTemplateError, match="message text refused"):
        render(text, {"first_name": "Ann", "attributes": ["secret"]})
    data = {"template_id": "t", "campaign_types": {"s": {"stages": [
        {"name": "a", "messages": [{"text": text}]}]}}}  # fmt: skip
    with pytest.raises(InvalidTemplateError, match=r"messages\.0\.text"):
        parse_template(json.dumps(data), "t.json")


# ------------------------------------------------------------------ templates


stage = st.fixed_dictionaries(
    {"name": st.one_of(st.sampled_from(["a", "b"]), json_values)},
    optional={
        "messages": st.lists(
            st.fixed_dictionaries(
                {"text": st.one_of(st.text(max_size=20), json_values)},
                optional={
                    "wait": st.one_of(st.sampled_from(["1d", "2h", "0s", "-1d"]), json_values)
                },
            ),
            max_size=2,
        ),
        "advance_when": json_values,
        "on_reply": json_values,
        "next": st.one_of(st.sampled_from(["a", "b"]), json_values),
        "on_timeout": json_values,
        "max_time_in_stage": json_values,
        "max_followups_without_reply": json_values,
        "regex": json_values,
    },
)
templates = st.fixed_dictionaries(
    {"template_id": st.one_of(st.just("t"), json_values)},
    optional={
        "campaign_types": st.one_of(
            st.dictionaries(
                st.sampled_from(["sales", ""]),
                st.one_of(
                    st.fixed_dictionaries({"stages": st.lists(stage, max_size=3)}), json_values
                ),
                max_size=2,
            ),
            json_values,
        ),
        "intents": json_values,
        "languages": json_values,
        "out_of_office": json_values,
        "send_window": json_values,
        "attribute_defaults": json_values,
        "opt_out_keywords": json_values,
    },
)


@settings(max_examples=200, deadline=None)
@given(data=templates, as_json=st.booleans())
def test_any_template_document_loads_or_is_refused_naming_the_file(
    data: dict[str, Any], as_json: bool
) -> None:
    source = "bad.json" if as_json else "bad.yaml"
    text = json.dumps(data)  # JSON is YAML too
    try:
        parse_template(text, source)
    except TemplateError as exc:
        assert f"invalid template {source}" in str(exc)


@given(text=st.text(max_size=200))
def test_any_template_text_loads_or_is_refused_naming_the_file(text: str) -> None:
    for source in ("bad.yaml", "bad.json"):
        try:
            parse_template(text, source)
        except TemplateError as exc:
            assert f"invalid template {source}" in str(exc)


# ------------------------------------------------------------------ audience files


@given(text=st.text(max_size=300))
def test_any_csv_gives_rows_or_reasons_with_line_numbers(text: str) -> None:
    for line, row in read_csv(iter(io.StringIO(text))):
        assert isinstance(line, int) and line >= 1
        assert isinstance(row, dict | str)
        if isinstance(row, dict):
            assert set(row) <= {"user_id", "timezone", "attributes"}


@given(lines=st.lists(st.one_of(json_values.map(json.dumps), st.text(max_size=30)), max_size=8))
def test_any_jsonl_gives_objects_or_reasons(lines: list[str]) -> None:
    text = "\n".join(line.replace("\n", " ") for line in lines)
    for line, row in read_jsonl(iter(io.StringIO(text))):
        assert line >= 1
        assert isinstance(row, dict) or (isinstance(row, str) and row)


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(raw=st.binary(max_size=120))
def test_any_campaign_file_is_read_or_refused_with_exit_2(
    tmp_path: Path, suffix: str, raw: bytes
) -> None:
    import typer

    from campaign_worker.entrypoints.cli.campaign_create import load_campaign

    path = tmp_path / f"campaign{suffix}"
    path.write_bytes(raw)
    try:
        data = load_campaign(path)
    except typer.Exit as exc:
        assert exc.exit_code == 2
        return
    assume(isinstance(data, dict))


# ------------------------------------------------------------------ webhook signatures


@settings(max_examples=200, deadline=None)
@example(b"k", b"j", b"", 0, "\u00b2", "")  # a superscript two: isdigit() but not int()
@given(
    secret=st.binary(min_size=1, max_size=32),
    other=st.binary(min_size=1, max_size=32),
    body=st.binary(max_size=200),
    skew=st.integers(min_value=-10_000, max_value=10_000),
    stamp=st.text(max_size=12),
    signature_text=st.text(max_size=80),
)
def test_webhook_verification_accepts_only_fresh_requests_signed_with_the_key(
    secret: bytes, other: bytes, body: bytes, skew: int, stamp: str, signature_text: str
) -> None:
    now = 1_800_000_000
    timestamp = str(now + skew)
    signed = {
        "X-Campaign-Timestamp": timestamp,
        "X-Campaign-Signature": signature(secret, timestamp, body),
    }
    fresh = abs(skew) <= 300
    assert verify_campaign_webhook(secret, signed, body, now=now) is fresh
    if other != secret:
        assert not verify_campaign_webhook(other, signed, body, now=now)  # wrong key
    assert not verify_campaign_webhook(secret, signed, body + b"x", now=now)  # tampered
    # Whatever a sender puts in the headers: a refusal, never an exception.
    garbage = {"X-Campaign-Timestamp": stamp, "X-Campaign-Signature": signature_text}
    verify_campaign_webhook(secret, garbage, body, now=now)
