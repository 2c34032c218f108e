"""The dispatcher and delivery statuses over the wire, against real local servers: an HTTP
receiver that verifies signatures with the README's snippet, and an SMTP server."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, timedelta
from pathlib import Path
from typing import Any

import httpx
import pymongo
import pytest
import yaml
from aiosmtpd.controller import Controller
from aiosmtpd.handlers import Message as MessageHandler

from campaign_worker.adapters.channel_smtp import SmtpChannel
from campaign_worker.adapters.channel_webhook import WebhookChannel
from campaign_worker.adapters.clock import ManualClock
from campaign_worker.adapters.mongo import OUTBOX
from campaign_worker.adapters.rate_limit import NoRateLimit
from campaign_worker.delivery_wiring import Delivery, build_delivery
from campaign_worker.demo.embedded import free_port
from campaign_worker.domain.delivery import DeliveryStatus, RowMove, RowStatus, signature
from campaign_worker.domain.documents import conversation_id_for
from campaign_worker.service.campaign_manager import CampaignManager
from campaign_worker.service.delivery_ports import Channel
from campaign_worker.settings import Settings
from tests.conftest import ManagerFactory
from tests.delivery_support import WebhookReceiver, channel_template
from tooling.mongo_monitoring import CommandCounter

pytestmark = pytest.mark.wire

SECRET = b"s3cret-signing-key"
Doc = dict[str, Any]


def campaign(manager: CampaignManager, n: int, *, emails: bool = True) -> str:
    recipients = [
        {
            "user_id": f"u-{i}",
            "attributes": {
                "first_name": f"Ann{i}",
                **({"email": f"u{i}@example.test"} if emails and i % 5 != 4 else {}),
            },
        }
        for i in range(n)
    ]
    campaign_id = manager.create_campaign(
        {
            "_id": "camp-d",
            "name": "delivery",
            "campaign_type": "notice",
            "template_id": "deliver",
            "recipients": recipients,
        }
    )
    manager.initialize_campaign_conversations(campaign_id)
    manager.process_due_conversations(campaign_id)
    return campaign_id


@pytest.fixture
def templates(tmp_path: Path, request: pytest.FixtureRequest) -> Path:
    channel = getattr(request, "param", "webhook")
    directory = tmp_path / "templates"
    directory.mkdir()
    (directory / "deliver.yaml").write_text(yaml.safe_dump(channel_template(channel)))
    return directory


@pytest.fixture
def manager(wire_db: Any, make_manager: ManagerFactory, templates: Path) -> CampaignManager:
    return make_manager(wire_db, campaign_templates_dir=templates)


def delivery_for(
    wire_db: Any, manager: CampaignManager, channels: list[Channel], **settings: Any
) -> Delivery:
    config = Settings(delivery_backoff_base_seconds=1, delivery_lease_seconds=30, **settings)
    return build_delivery(
        wire_db, manager, config, channels=channels, limiter=NoRateLimit(), clock=manager.clock
    )


def webhook(url: str, secret: bytes = SECRET, read_timeout: float = 2.0) -> WebhookChannel:
    return WebhookChannel(url, secret, connect_timeout=1.0, read_timeout=read_timeout)


def rows(wire_db: Any) -> dict[str, Doc]:
    return {doc["_id"]: doc for doc in wire_db[OUTBOX].find()}


def test_webhook_delivers_signed_messages_and_records_sent(
    wire_db: Any, manager: CampaignManager
) -> None:
    campaign(manager, 4)
    with WebhookReceiver(SECRET) as receiver:
        delivery = delivery_for(wire_db, manager, [webhook(receiver.url)])
        result = delivery.dispatcher.dispatch("owner-1")
    assert result.claimed == 4
    assert all(r.verified for r in receiver.received)
    assert set(receiver.accepted().values()) == {1}
    assert set(receiver.accepted()) == set(rows(wire_db))
    first = receiver.received[0].body
    assert first is not None and first["content"].startswith("Hello Ann")
    for doc in rows(wire_db).values():
        assert (doc["status"], doc["attempts"], doc["delivered_via"]) == ("sent", 1, "webhook")
        assert doc["delivery"]["status"] == "sent"
        assert "lease_owner" not in doc
    state = manager.get_conversation(conversation_id_for("camp-d", "u-0"))
    assert state["message_history"][0]["metadata"]["delivery"]["status"] == "sent"
    assert manager.get_campaign_metrics("camp-d")["delivery"] == {"webhook": {"sent": 4}}
    # Nothing left to claim: a second pass sends nothing.
    assert delivery.dispatcher.dispatch("owner-2").claimed == 0


def test_receiver_rejects_a_wrong_key_and_a_replayed_timestamp(
    wire_db: Any, manager: CampaignManager
) -> None:
    campaign(manager, 2)
    with WebhookReceiver(SECRET) as receiver:
        wrong = delivery_for(wire_db, manager, [webhook(receiver.url, secret=b"not-the-key")])
        wrong.dispatcher.dispatch("wrong-key")
        assert [r.answered for r in receiver.received] == [401, 401]
        # A 4xx other than 408/425/429 fails the message at once, with the reason.
        assert {d["status"] for d in rows(wire_db).values()} == {"failed"}
        assert {d["last_error"] for d in rows(wire_db).values()} == {"webhook answered HTTP 401"}

        # A request signed with the right key, captured and sent again ten minutes later.
        headers = {"Content-Type": "application/json", "Idempotency-Key": "m-1"}
        body = b'{"message_id":"m-1"}'

        stamp = str(int(time.time()))
        headers |= {
            "X-Campaign-Timestamp": stamp,
            "X-Campaign-Signature": signature(SECRET, stamp, body),
        }
        assert httpx.post(receiver.url, content=body, headers=headers).status_code == 200
        receiver.clock_offset = 600
        assert httpx.post(receiver.url, content=body, headers=headers).status_code == 401
        receiver.clock_offset = 0
        tampered = body.replace(b"m-1", b"m-2")
        assert httpx.post(receiver.url, content=tampered, headers=headers).status_code == 401


def dispatch_until_settled(
    delivery: Delivery, clock: ManualClock, wire_db: Any, rounds: int = 40
) -> int:
    """Dispatch, moving the clock past each retry's time, until no row is pending."""
    passes = 0
    for passes in range(1, rounds + 1):
        delivery.dispatcher.dispatch(f"pass-{passes}")
        if not any(d["status"] in ("pending", "sending") for d in rows(wire_db).values()):
            return passes
        clock.advance(timedelta(minutes=15))  # beyond any backoff used here
    raise AssertionError(f"rows still pending after {rounds} passes")


def test_500s_and_timeouts_then_recovery_deliver_each_message_once(
    wire_db: Any, manager: CampaignManager, clock: ManualClock
) -> None:
    campaign(manager, 6)

    def flaky(n: int) -> Any:
        if n < 6:
            return 500
        if n < 9:
            return ("sleep", 1.5, 503)  # beyond the sender's read timeout of 0.5 s
        return 200

    with WebhookReceiver(SECRET, flaky) as receiver:
        delivery = delivery_for(
            wire_db, manager, [webhook(receiver.url, read_timeout=0.5)], delivery_max_attempts=10
        )
        dispatch_until_settled(delivery, clock, wire_db)
    accepted = receiver.accepted()
    assert len(accepted) == 6 and set(accepted.values()) == {1}
    # Every request counted on arrival (a stalled one is answered after the sender left).
    assert len(receiver.raw) >= 6 + 9
    docs = rows(wire_db).values()
    assert {d["status"] for d in docs} == {"sent"}
    assert sum(d["attempts"] for d in docs) == len(receiver.raw)
    assert manager.get_campaign_metrics("camp-d")["delivery"] == {"webhook": {"sent": 6}}


def test_429_waits_for_retry_after_and_attempts_run_out(
    wire_db: Any, manager: CampaignManager, clock: ManualClock
) -> None:
    campaign(manager, 1)
    with WebhookReceiver(SECRET, lambda n: ("retry", 120)) as receiver:
        delivery = delivery_for(wire_db, manager, [webhook(receiver.url)], delivery_max_attempts=2)
        delivery.dispatcher.dispatch("a")
        (doc,) = rows(wire_db).values()
        assert doc["status"] == "pending"
        assert doc["last_error"] == "webhook answered HTTP 429"
        assert doc["next_attempt_at"] >= clock.now() + timedelta(seconds=120)
        clock.advance(timedelta(seconds=119))
        assert delivery.dispatcher.dispatch("b").claimed == 0  # not due yet
        clock.advance(timedelta(seconds=2))
        delivery.dispatcher.dispatch("c")
    (doc,) = rows(wire_db).values()
    assert doc["status"] == "failed"
    assert doc["last_error"].startswith("gave up after 2 attempts: webhook answered HTTP 429")
    assert len(receiver.received) == 2


def test_concurrent_dispatchers_send_each_message_once(
    wire_db: Any, manager: CampaignManager
) -> None:
    campaign(manager, 30)
    with WebhookReceiver(SECRET) as receiver:
        dispatchers = [
            delivery_for(wire_db, manager, [webhook(receiver.url)], delivery_batch_size=4)
            for _ in range(4)
        ]
        errors: list[BaseException] = []

        def drain(delivery: Delivery, name: str) -> None:
            try:
                for n in range(100):
                    if delivery.dispatcher.dispatch(f"{name}-{n}").claimed == 0:
                        return
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [
            threading.Thread(target=drain, args=(d, f"t{i}")) for i, d in enumerate(dispatchers)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    assert not errors
    accepted = receiver.accepted()
    assert len(accepted) == 30 and set(accepted.values()) == {1}
    assert {d["status"] for d in rows(wire_db).values()} == {"sent"}


def test_an_expired_lease_is_claimed_again_and_the_late_owner_cannot_finish(
    wire_db: Any, manager: CampaignManager, clock: ManualClock
) -> None:
    campaign(manager, 2)
    with WebhookReceiver(SECRET) as receiver:
        delivery = delivery_for(wire_db, manager, [webhook(receiver.url)])
        dispatcher = delivery.dispatcher
        # A dispatcher that claimed the rows and died.
        until = clock.now() + timedelta(seconds=30)
        dead = dispatcher.rows.claim(["webhook"], clock.now(), 10, "dead-owner", until)
        assert len(dead) == 2
        assert dispatcher.dispatch("live").claimed == 0  # leased
        clock.advance(timedelta(seconds=31))
        assert dispatcher.dispatch("live").claimed == 2
    late = RowMove(dead[0].id, RowStatus.SENT, at=clock.now())
    assert dispatcher.rows.finish_many("dead-owner", [late]) == set()
    assert set(receiver.accepted().values()) == {1} and len(receiver.accepted()) == 2


@pytest.fixture
def smtp_server() -> Iterator[tuple[Controller, list[Any]]]:
    received: list[Any] = []

    class Keep(MessageHandler):
        def handle_message(self, message: Any) -> None:
            received.append(message)

    controller = Controller(Keep(), hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        yield controller, received
    finally:
        controller.stop()


@pytest.mark.parametrize("templates", ["smtp"], indirect=True)
def test_smtp_sends_to_the_email_attribute_and_fails_without_one(
    wire_db: Any, manager: CampaignManager, smtp_server: tuple[Controller, list[Any]]
) -> None:
    controller, received = smtp_server
    campaign(manager, 5)  # u-4 has no email attribute
    channel = SmtpChannel(
        "127.0.0.1", controller.port, sender="news@example.test", subject="Hi", timeout=5
    )
    delivery_for(wire_db, manager, [channel]).dispatcher.dispatch("smtp")
    by_id = rows(wire_db)
    failed = [d for d in by_id.values() if d["status"] == "failed"]
    assert [d["user_id"] for d in failed] == ["u-4"]
    assert failed[0]["last_error"] == "recipient 'u-4' has no email address in attribute 'email'"
    assert sorted(m["To"] for m in received) == [f"u{i}@example.test" for i in range(4)]
    for message in received:
        key = message["Idempotency-Key"]
        assert by_id[key]["status"] == "sent"
        assert message["Message-ID"] == f"<{key}@campaign-worker>"
        assert message.get_payload().startswith("Hello Ann")


def test_statuses_flow_back_once_and_a_hard_bounce_ends_the_conversation(
    wire_db: Any, manager: CampaignManager, clock: ManualClock
) -> None:
    campaign(manager, 3)
    with WebhookReceiver(SECRET) as receiver:
        delivery = delivery_for(wire_db, manager, [webhook(receiver.url)])
        delivery.dispatcher.dispatch("a")
    ids = {d["user_id"]: d["_id"] for d in rows(wire_db).values()}
    record = delivery.statuses.record
    later = clock.now() + timedelta(minutes=5)
    first = record(ids["u-0"], DeliveryStatus.DELIVERED, timestamp=later)
    assert (first.duplicate, first.counted) == (False, True)
    again = record(ids["u-0"], DeliveryStatus.DELIVERED, timestamp=later)
    assert (again.duplicate, again.counted) == (True, False)
    record(ids["u-1"], DeliveryStatus.BOUNCED, {"bounce_type": "soft"})
    hard = record(ids["u-2"], DeliveryStatus.BOUNCED, {"bounce_type": "hard", "code": "5.1.1"})
    assert hard.conversation_status == "failed"

    u0 = manager.get_conversation(conversation_id_for("camp-d", "u-0"))
    assert u0["message_history"][0]["metadata"]["delivery"]["status"] == "delivered"
    assert u0["status"] == "active"
    assert manager.get_conversation(conversation_id_for("camp-d", "u-1"))["status"] == "active"
    u2 = manager.get_conversation(conversation_id_for("camp-d", "u-2"))
    assert (u2["status"], u2["status_reason"]) == (
        "failed",
        f"hard bounce for message {ids['u-2']}",
    )
    assert u2["message_history"][0]["metadata"]["delivery"]["status"] == "bounced"
    suppression = wire_db["suppressions"].find_one({"user_id": "u-2"})
    assert (suppression["channel"], suppression["address"], suppression["reason"]) == (
        "webhook",
        "u-2",
        "hard bounce",
    )
    metrics = manager.get_campaign_metrics("camp-d")
    assert metrics["delivery"] == {"webhook": {"sent": 3, "delivered": 1, "bounced": 2}}
    assert metrics["failed_conversations"] == 1 and metrics["active_conversations"] == 2
    # A provider's report outranks "sent" whatever the clocks say (the dispatcher may
    # record "sent" after the provider's report arrived); among reports, the later wins.
    record(ids["u-0"], DeliveryStatus.SENT, timestamp=later + timedelta(hours=1))
    # A repeated "failed" keeps its first time: it cannot become the latest by repeating.
    record(ids["u-1"], DeliveryStatus.FAILED, "first", timestamp=later)
    record(ids["u-1"], DeliveryStatus.DELIVERED, timestamp=later + timedelta(minutes=1))
    record(ids["u-1"], DeliveryStatus.FAILED, "again", timestamp=later + timedelta(hours=1))
    u1_row = delivery.statuses.statuses.row(ids["u-1"])
    assert u1_row is not None and u1_row.delivery is not None
    assert u1_row.delivery.status == "delivered"
    record(ids["u-0"], DeliveryStatus.FAILED, "late", timestamp=later - timedelta(minutes=1))
    stored = delivery.statuses.statuses.row(ids["u-0"])
    assert stored is not None and stored.delivery is not None
    assert stored.delivery.status == "delivered"


@pytest.mark.parametrize("templates", ["smtp"], indirect=True)
def test_smtp_refusals_fail_on_5xx_and_retry_on_4xx(
    wire_db: Any, manager: CampaignManager, clock: ManualClock
) -> None:
    class Refuse:
        async def handle_RCPT(
            self, server: Any, session: Any, envelope: Any, address: str, options: Any
        ) -> str:
            if address.startswith("u0@"):
                return "550 5.1.1 no such mailbox"
            if address.startswith("u1@"):
                return "451 4.3.0 try again later"
            envelope.rcpt_tos.append(address)
            return "250 OK"

        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            return "250 accepted"

    controller = Controller(Refuse(), hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        campaign(manager, 3)
        channel = SmtpChannel(
            "127.0.0.1", controller.port, sender="news@example.test", subject="Hi", timeout=5
        )
        delivery_for(wire_db, manager, [channel]).dispatcher.dispatch("smtp")
    finally:
        controller.stop()
    by_user = {d["user_id"]: d for d in rows(wire_db).values()}
    assert (by_user["u-0"]["status"], by_user["u-0"]["last_error"]) == (
        "failed",
        "smtp recipient refused: 550",
    )
    assert (by_user["u-1"]["status"], by_user["u-1"]["last_error"]) == (
        "pending",
        "smtp recipient refused: 451",
    )
    assert by_user["u-1"]["next_attempt_at"] > clock.now()
    assert by_user["u-2"]["status"] == "sent"


def test_a_batch_costs_the_same_round_trips_whatever_its_size(
    wire_uri: str, wire_db: Any, manager: CampaignManager
) -> None:
    """Sends are concurrent and the bookkeeping is per batch: the claim (find, update,
    find), campaigns, suppressions, attempts, the metrics count, events and latest on the
    outbox and on the conversations, the moves. No recipient read for the webhook."""
    campaign(manager, 40)
    counter = CommandCounter()
    client: Any = pymongo.MongoClient(
        wire_uri, tz_aware=True, tzinfo=UTC, event_listeners=[counter]
    )
    try:
        with WebhookReceiver(SECRET) as receiver:
            delivery = delivery_for(client[wire_db.name], manager, [webhook(receiver.url)])
            with counter.measure() as span:
                result = delivery.dispatcher.dispatch("counted")
    finally:
        client.close()
    assert result.as_dict() == {"claimed": 40, "sent": 40}
    assert set(receiver.accepted().values()) == {1} and len(receiver.accepted()) == 40
    assert dict(span.counts.by_name) == {"find": 4, "update": 6}
    assert manager.get_campaign_metrics("camp-d")["delivery"] == {"webhook": {"sent": 40}}
    history = manager.get_conversation(conversation_id_for("camp-d", "u-7"))["message_history"]
    assert history[0]["metadata"]["delivery"]["status"] == "sent"
