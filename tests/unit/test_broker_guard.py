"""The guard on kombu's Redis ``Channel.close`` (campaign_worker/adapters/broker.py).

The e2e test (tests/e2e/test_broker_restart_e2e.py) shows the effect on a real worker and
a real Redis restart; these check the guard itself on a stand-in channel class.
"""

from __future__ import annotations

from queue import Empty
from typing import Any

import pytest
from kombu.transport import redis as kombu_redis

from campaign_worker.adapters.broker import install_redis_close_guard


class BrokerGone(Exception):
    pass


class StandInChannel:
    """The attributes the guard reads, and a close() that records how it was reached."""

    connection_errors = (BrokerGone,)

    def __init__(self, in_poll: bool, read_error: type[BaseException] | None) -> None:
        self._in_poll = in_poll
        self.closed = False
        self.read_error = read_error
        self.reads = 0
        self.closes: list[bool] = []  # _in_poll as the original close() saw it

    def _brpop_read(self) -> None:
        self.reads += 1
        self._in_poll = False  # kombu resets it in a finally
        if self.read_error is not None:
            raise self.read_error()

    def close(self) -> None:
        self.closes.append(bool(self._in_poll))
        self.closed = True


@pytest.fixture
def guarded(monkeypatch: pytest.MonkeyPatch) -> type[StandInChannel]:
    cls = type("Channel", (StandInChannel,), {})
    monkeypatch.setattr(kombu_redis, "Channel", cls)
    install_redis_close_guard()
    return cls


def test_a_broker_gone_mid_brpop_no_longer_stops_the_close(guarded: type) -> None:
    channel = guarded(in_poll=True, read_error=BrokerGone)
    channel.close()  # no BrokerGone out of here
    assert channel.reads == 1
    # The original close ran to the end, past the pending read: the channel is closed, so
    # Connection.close() closing it again is a no-op (no AttributeError).
    assert channel.closes == [False]
    assert channel.closed


def test_an_empty_brpop_reply_is_absorbed_as_before(guarded: type) -> None:
    channel = guarded(in_poll=True, read_error=Empty)
    channel.close()
    assert (channel.reads, channel.closes) == (1, [False])


def test_other_errors_still_propagate(guarded: type) -> None:
    channel = guarded(in_poll=True, read_error=ValueError)
    with pytest.raises(ValueError):
        channel.close()


def test_a_channel_not_in_poll_closes_untouched(guarded: type) -> None:
    channel = guarded(in_poll=False, read_error=BrokerGone)
    channel.close()
    assert (channel.reads, channel.closes) == (0, [False])


def test_installing_twice_wraps_once(guarded: Any) -> None:
    first = guarded.close
    install_redis_close_guard()
    assert guarded.close is first


def worker_starts() -> None:
    """What a worker does before its consumer connects (``celeryd_init``): the app's
    handler installs the guards (not an import: only a worker consumes)."""
    from celery import signals

    from campaign_worker.entrypoints import celery_app, worker_lifecycle

    assert celery_app.app is not None
    handler = worker_lifecycle._guard_the_broker
    assert any(receiver is handler for _, receiver in signals.celeryd_init.receivers)
    handler()


def test_a_starting_worker_installs_the_guard() -> None:
    worker_starts()
    assert getattr(kombu_redis.Channel.close, "_campaign_worker_guarded", False)


# ------------------------------------------------------------------ payload guard


def virtual_message(headers: Any) -> Any:
    """A message as kombu's virtual transports (Redis) build it from a raw payload."""
    from kombu import Connection
    from kombu.transport.virtual import base as kombu_virtual

    worker_starts()
    channel: Any = Connection("memory://").default_channel
    payload = {
        "body": '[[], {"campaign_id": "c"}, {}]',
        "content-type": "application/json",
        "content-encoding": "utf-8",
        "headers": headers,
        "properties": {"delivery_tag": "t-1", "delivery_info": {"routing_key": "celery"}},
    }
    return kombu_virtual.Message(payload, channel=channel)


@pytest.mark.parametrize("headers", [["a", "list"], "a string", 7])
def test_headers_that_are_not_a_mapping_build_a_message_that_is_dead_lettered(
    headers: Any,
) -> None:
    from campaign_worker.adapters.broker import INVALID_HEADERS
    from campaign_worker.entrypoints import envelope

    message = virtual_message(headers)  # raised AttributeError in the consumer loop before
    invalid = {"error": "headers are not a mapping", "headers": repr(headers)}
    assert message.headers == {INVALID_HEADERS: invalid}
    rejection = envelope.check(message, {"campaign_worker.pause_campaign"})
    assert rejection is not None
    assert (rejection.reason, rejection.error) == (
        "malformed_envelope",
        "headers are not a mapping",
    )
    assert rejection.dead_letter_id.startswith("sha256:")


def test_mapping_headers_pass_the_payload_guard_untouched() -> None:
    headers = {"task": "campaign_worker.pause_campaign", "id": "t-1", "lang": "py"}
    assert virtual_message(headers).headers == headers


@pytest.mark.parametrize(
    ("item", "error"),
    [
        (b"not json at all \xff", "the raw item is not JSON"),
        (b'["a", "list"]', "the raw item is not a JSON object"),
        (b'{"body": "x"}', "the raw item has no properties"),
    ],
)
def test_a_raw_item_that_is_no_kombu_payload_becomes_a_dead_letter(item: bytes, error: str) -> None:
    from kombu import Connection
    from kombu.transport import redis as kombu_redis
    from kombu.transport.virtual import base as kombu_virtual
    from kombu.utils.encoding import bytes_to_str

    from campaign_worker.entrypoints import envelope

    worker_starts()
    channel: Any = Connection("memory://").default_channel
    redis_module: Any = kombu_redis
    payload = redis_module.loads(bytes_to_str(item))  # what _brpop_read does with an item
    message: Any = kombu_virtual.Message(payload, channel=channel)
    rejection = envelope.check(message, {"campaign_worker.pause_campaign"})
    assert rejection is not None
    assert (rejection.reason, rejection.error) == ("malformed_envelope", error)
    assert rejection.envelope["body_bytes"] > 0
    assert message.delivery_tag
