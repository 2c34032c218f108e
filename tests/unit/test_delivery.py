"""Delivery's pure rules, the webhook channel's answers, settings, and the dispatcher's
deferrals and suppressions (on both tiers)."""

from __future__ import annotations

import dataclasses
import inspect
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from campaign_worker.adapters.channel_webhook import WebhookChannel
from campaign_worker.adapters.clock import ManualClock
from campaign_worker.adapters.mongo import OUTBOX
from campaign_worker.delivery_wiring import build_delivery
from campaign_worker.demo import webhook_receiver
from campaign_worker.domain.delivery import (
    DeliveryStatus,
    Outgoing,
    ends_conversation,
    parse_retry_after,
    retry_delay,
    signature,
)
from campaign_worker.domain.errors import PermanentDeliveryError, TransientDeliveryError
from campaign_worker.domain.templates import Template
from campaign_worker.settings import Settings, describe_settings_error
from tests import fakes
from tests.conftest import ManagerFactory
from tests.delivery_support import channel_template, readme_verifier, webhook_campaign

any_db = fakes.any_db  # fixture: each test on the in-memory fakes, and over the wire

NOW = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
MESSAGE = Outgoing("m-1", "c-1", "conv-1", "u-1", "webhook", "u-1", "Hi", "hello", 0, NOW)


def test_retry_delay_is_jittered_below_an_exponential_cap() -> None:
    rng = random.Random(7)
    for attempt in range(1, 12):
        delay = retry_delay(attempt, base=2, cap=60, rng=rng)
        assert 0 <= delay <= min(60, 2 * 2 ** (attempt - 1))
    assert retry_delay(1, base=2, cap=60, retry_after=30, rng=rng) >= 30
    assert retry_delay(1, base=2, cap=60, retry_after=3600, rng=rng) == 60  # capped


def test_retry_after_as_seconds_or_an_http_date() -> None:
    assert parse_retry_after("120", NOW) == 120
    assert parse_retry_after("Mon, 05 Jan 2026 09:01:00 GMT", NOW) == 60
    assert parse_retry_after("soon", NOW) is None
    assert parse_retry_after(None, NOW) is None


@pytest.mark.parametrize(
    ("status", "detail", "ends"),
    [
        (DeliveryStatus.COMPLAINED, None, True),
        (DeliveryStatus.BOUNCED, None, True),
        (DeliveryStatus.BOUNCED, {"bounce_type": "hard"}, True),
        (DeliveryStatus.BOUNCED, {"bounce_type": "soft"}, False),
        (DeliveryStatus.DELIVERED, None, False),
        (DeliveryStatus.FAILED, "mailbox full", False),
    ],
)
def test_what_ends_a_conversation(status: DeliveryStatus, detail: Any, ends: bool) -> None:
    assert ends_conversation(status, detail) is ends


def test_the_readme_snippet_verifies_what_the_channel_signs() -> None:
    verify = readme_verifier()
    body, stamp = b'{"a":1}', str(int(NOW.timestamp()))
    headers = {"X-Campaign-Timestamp": stamp, "X-Campaign-Signature": signature(b"k", stamp, body)}
    now = NOW.timestamp()
    assert verify(b"k", headers, body, now=now)
    assert not verify(b"other", headers, body, now=now)
    assert not verify(b"k", headers, body + b" ", now=now)
    assert not verify(b"k", headers, body, now=now + 301)
    assert not verify(b"k", {**headers, "X-Campaign-Timestamp": "x"}, body, now=now)


def test_channels_are_inherited_from_template_type_and_stage() -> None:
    data = channel_template("webhook")
    data["campaign_types"]["notice"]["stages"].append(
        {
            "name": "mail",
            "channel": "smtp",
            "messages": [{"text": "a"}, {"text": "b", "channel": "sms"}],
        }
    )
    data["campaign_types"]["plain"] = {"stages": [{"name": "s", "messages": [{"text": "x"}]}]}
    template = Template.model_validate(data)
    notice = template.campaign_types["notice"]
    assert [[m.channel for m in s.messages] for s in notice.stages] == [
        ["webhook"],
        ["smtp", "sms"],
    ]
    assert template.campaign_types["plain"].stages[0].messages[0].channel == "webhook"
    assert (
        Template.model_validate({**data, "channel": None})
        .campaign_types["plain"]
        .stages[0]
        .messages[0]
        .channel
        == "default"
    )
    with pytest.raises(ValidationError, match="channel"):
        Template.model_validate({**data, "channel": "no.dots"})


def test_delivery_settings_are_checked_and_secrets_never_shown() -> None:
    settings = Settings(
        webhook_url="http://h/", webhook_secret="hunter2-secret", smtp_password="pw-xyz"
    )
    assert "hunter2" not in repr(settings) and "pw-xyz" not in repr(settings)
    with pytest.raises(ValidationError) as missing:
        Settings(webhook_url="http://h/")
    assert "WEBHOOK_SECRET" in describe_settings_error(missing.value)
    with pytest.raises(ValidationError) as short:
        Settings(webhook_url="http://h/", webhook_secret="k", delivery_lease_seconds=20)
    assert "DELIVERY_LEASE_SECONDS" in describe_settings_error(short.value)
    with pytest.raises(ValidationError) as bad:
        Settings(delivery_rate_limits="webhook=lots")
    text = describe_settings_error(bad.value)
    assert text.startswith("invalid settings: DELIVERY_RATE_LIMITS:") and "lots" in text
    assert Settings(delivery_rate_limits="webhook=5/second; smtp=2 per 3 seconds").rate_limits == {
        "webhook": "5/second",
        "smtp": "2 per 3 seconds",
    }
    assert Settings(celery_broker_url="amqp://x//").limiter_redis_url is None


def answering(status: int, headers: dict[str, str] | None = None) -> WebhookChannel:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["Idempotency-Key"] == "m-1"
        assert request.headers["X-Campaign-Signature"].startswith("v1=")
        return httpx.Response(status, headers=headers or {})

    return WebhookChannel(
        "http://receiver/",
        b"k",
        connect_timeout=1,
        read_timeout=1,
        transport=httpx.MockTransport(handler),
    )


def test_webhook_answers_map_to_sent_retry_or_fail() -> None:
    assert answering(200, {"X-Message-Id": "p-9"}).send(MESSAGE) == "p-9"
    assert answering(204).send(MESSAGE) is None
    for status in (500, 503, 408):
        with pytest.raises(TransientDeliveryError):
            answering(status).send(MESSAGE)
    with pytest.raises(TransientDeliveryError) as limited:
        answering(429, {"Retry-After": "7"}).send(MESSAGE)
    assert limited.value.retry_after == 7
    for status in (400, 401, 404, 410, 422):
        with pytest.raises(PermanentDeliveryError, match=f"HTTP {status}"):
            answering(status).send(MESSAGE)

    def timeout(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    slow = WebhookChannel(
        "http://r/", b"k", connect_timeout=1, read_timeout=1, transport=httpx.MockTransport(timeout)
    )
    with pytest.raises(TransientDeliveryError, match="timeout"):
        slow.send(MESSAGE)


class FakeChannel:
    name = "webhook"
    needs_attributes = False

    def __init__(self) -> None:
        self.sent: list[str] = []

    def address(self, user_id: str, attributes: Any) -> str:
        return user_id

    def send(self, message: Outgoing) -> str | None:
        self.sent.append(message.message_id)
        return None


class SlowLimit:
    def __init__(self, wait: float) -> None:
        self.wait = wait

    def take(self, channel: str, wanted: int) -> tuple[int, float]:
        return (0, self.wait) if self.wait > 0 else (wanted, 0.0)


@pytest.fixture
def delivering(db: Any, make_manager: ManagerFactory, tmp_path: Path) -> Any:
    return webhook_campaign(make_manager, db, tmp_path, [f"u-{i}" for i in range(3)])


def test_a_rate_limited_row_goes_back_to_pending_until_its_slot(
    db: Any, delivering: Any, clock: ManualClock
) -> None:
    channel = FakeChannel()
    delivery = build_delivery(
        db,
        delivering,
        Settings(),
        channels=[channel],
        limiter=SlowLimit(50),
        clock=delivering.clock,
    )
    result = delivery.dispatcher.dispatch("a")
    assert channel.sent == [] and result.as_dict() == {"claimed": 3, "deferred": 3}
    for doc in db[OUTBOX].find():
        assert doc["status"] == "pending"
        assert doc["next_attempt_at"] == clock.now() + timedelta(seconds=50)
        assert doc.get("attempts") is None  # a deferral is not an attempt


def test_a_suppressed_address_is_not_sent_to(db: Any, delivering: Any) -> None:
    channel = FakeChannel()
    delivery = build_delivery(
        db, delivering, Settings(), channels=[channel], limiter=SlowLimit(0), clock=delivering.clock
    )
    delivery.dispatcher.suppressions.suppress(
        "u-1", "webhook", "u-1", "complaint", "c", datetime.now(UTC)
    )
    delivery.dispatcher.dispatch("a")
    failed = [d for d in db[OUTBOX].find() if d["status"] == "failed"]
    assert [(d["user_id"], d["last_error"]) for d in failed] == [("u-1", "address suppressed")]
    assert len(channel.sent) == 2


def test_outbox_rows_stay_for_an_external_deliverer(db: Any, delivering: Any) -> None:
    """Rows on ``outbox`` (or a name no channel has) are never claimed; ``default`` rows
    are claimed only when DELIVERY_DEFAULT_CHANNEL names a channel this worker sends."""
    ids = sorted(d["_id"] for d in db[OUTBOX].find())
    db[OUTBOX].update_one({"_id": ids[0]}, {"$set": {"channel": "outbox"}})
    db[OUTBOX].update_one({"_id": ids[1]}, {"$set": {"channel": "sms"}})
    db[OUTBOX].update_one({"_id": ids[2]}, {"$set": {"channel": "default"}})
    channel = FakeChannel()
    kept = build_delivery(
        db, delivering, Settings(), channels=[channel], limiter=SlowLimit(0), clock=delivering.clock
    )
    assert kept.dispatcher.dispatch("a").claimed == 0
    as_webhook = Settings(delivery_default_channel="webhook")
    sending = build_delivery(
        db, delivering, as_webhook, channels=[channel], limiter=SlowLimit(0), clock=delivering.clock
    )
    assert sending.dispatcher.dispatch("b").claimed == 1
    assert channel.sent == [ids[2]]
    assert {d["_id"]: d["status"] for d in db[OUTBOX].find()} == {
        ids[0]: "pending",
        ids[1]: "pending",
        ids[2]: "sent",
    }


def test_the_demo_receiver_verifies_with_the_readme_snippet_verbatim() -> None:
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert inspect.getsource(webhook_receiver.verify_campaign_webhook) in text


def test_a_paused_campaign_holds_its_messages_and_a_cancelled_one_sends_none(
    db: Any, delivering: Any, clock: ManualClock
) -> None:
    channel = FakeChannel()
    delivery = build_delivery(
        db, delivering, Settings(), channels=[channel], limiter=SlowLimit(0), clock=delivering.clock
    )
    delivering.pause_campaign("c")
    assert delivery.dispatcher.dispatch("a").as_dict() == {"claimed": 3, "held": 3}
    assert {d["status"] for d in db[OUTBOX].find()} == {"pending"}
    delivering.cancel_campaign("c")
    clock.advance(timedelta(minutes=2))
    assert delivery.dispatcher.dispatch("b").as_dict() == {"claimed": 3, "failed": 3}
    assert {d["last_error"] for d in db[OUTBOX].find()} == {"campaign cancelled"}
    assert channel.sent == []


def test_prometheus_counts_a_status_only_when_the_metrics_document_did() -> None:
    from prometheus_client import REGISTRY

    from campaign_worker.entrypoints import delivery_tasks
    from campaign_worker.service.delivery_status import StatusRecorded

    labels = {"channel": "webhook", "status": "delivered"}

    def value() -> float:
        return REGISTRY.get_sample_value("campaign_worker_delivery_statuses_total", labels) or 0.0

    before = value()
    delivery_tasks._count(
        [
            StatusRecorded("m-1", "delivered", "webhook", duplicate=False, counted=True),
            StatusRecorded("m-1", "delivered", "webhook", duplicate=True, counted=False),
        ]
    )
    assert value() == before + 1


def test_a_batch_past_its_time_hands_the_rest_back(db: Any, delivering: Any) -> None:
    channel = FakeChannel()
    delivery = build_delivery(
        db, delivering, Settings(), channels=[channel], limiter=SlowLimit(0), clock=delivering.clock
    )
    delivery.dispatcher.policy = dataclasses.replace(delivery.dispatcher.policy, batch_seconds=-1)
    assert delivery.dispatcher.dispatch("slow").as_dict() == {"claimed": 3}
    assert channel.sent == []
    docs = list(db[OUTBOX].find())
    assert {d["status"] for d in docs} == {"pending"}
    assert all("lease_owner" not in d and d.get("attempts") is None for d in docs)
    # Released rows are due at once: the next batch sends them.
    delivery.dispatcher.policy = dataclasses.replace(delivery.dispatcher.policy, batch_seconds=60)
    assert delivery.dispatcher.dispatch("next").as_dict() == {"claimed": 3, "sent": 3}
