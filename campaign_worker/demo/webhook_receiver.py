"""The demo's webhook receiver: a local HTTP server that checks each request's signature
(the README's snippet, verbatim below), processes each ``Idempotency-Key`` once, and
reports a delivery status back by task name, as a provider would: ``delivered``, or a hard
bounce for about one recipient in 25."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast


def verify_campaign_webhook(
    secret: bytes,
    headers: Mapping[str, str],
    body: bytes,
    tolerance: float = 300,
    now: float | None = None,
) -> bool:
    """True if ``body`` was signed with ``secret`` less than ``tolerance`` seconds ago.
    ``headers``: the request's headers, looked up case-insensitively as web frameworks do."""
    timestamp = headers.get("X-Campaign-Timestamp") or ""
    if not (timestamp.isascii() and timestamp.isdigit()):
        return False  # "²" is a digit to isdigit() but not to int()
    if abs((time.time() if now is None else now) - int(timestamp)) > tolerance:
        return False  # too old (or from the future): a replayed request
    signed = timestamp.encode() + b"." + body
    expected = "v1=" + hmac.new(secret, signed, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, headers.get("X-Campaign-Signature") or "")


Report = Callable[[str, str, dict[str, Any] | None], None]


def demo_status(user_id: str) -> str:
    """What the simulated provider reports for a user: a few addresses bounce."""
    return "bounced" if zlib.crc32(user_id.encode()) % 25 == 0 else "delivered"


class _Server(ThreadingHTTPServer):
    # A sender keeps tens of requests in flight: the default backlog of 5 would refuse
    # (or delay by a SYN retry) the connections beyond it.
    request_queue_size = 256
    daemon_threads = True


class LocalReceiver:
    """A threaded HTTP server on a free 127.0.0.1 port whose POSTs go to ``handle``: the
    receiving end of a webhook, for the demo and the tests (which subclass it). HTTP/1.1:
    connections are kept alive (every answer has a ``Content-Length``)."""

    path = "/campaign-webhook"

    def __init__(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                receiver.handle(self)

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}{self.path}"

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def handle(self, request: BaseHTTPRequestHandler) -> None:
        raise NotImplementedError


class DemoReceiver(LocalReceiver):
    """Counts requests (``rejected`` when the signature fails) and messages processed."""

    def __init__(self, secret: bytes, report: Report) -> None:
        super().__init__()
        self.secret = secret
        self.report = report
        self.counts: Counter[str] = Counter()
        self.seen: set[str] = set()
        self._lock = threading.Lock()

    def handle(self, request: BaseHTTPRequestHandler) -> None:
        body = request.rfile.read(int(request.headers.get("Content-Length") or 0))
        headers = cast(Mapping[str, str], request.headers)  # case-insensitive .get
        if not verify_campaign_webhook(self.secret, headers, body):
            self._answer(request, 401, "rejected")
            return
        key = request.headers.get("Idempotency-Key") or ""
        with self._lock:
            first = key not in self.seen
            self.seen.add(key)
        self._answer(request, 200, "accepted" if first else "repeats")
        if first:
            message = json.loads(body)
            status = demo_status(message["user_id"])
            detail = {"bounce_type": "hard"} if status == "bounced" else None
            self.report(key, status, detail)
            with self._lock:
                self.counts[f"reported_{status}"] += 1

    def _answer(self, request: BaseHTTPRequestHandler, status: int, counted: str) -> None:
        with self._lock:
            self.counts[counted] += 1
        request.send_response(status)
        request.send_header("Content-Length", "0")
        request.end_headers()


__all__ = ["DemoReceiver", "LocalReceiver", "demo_status", "verify_campaign_webhook"]
