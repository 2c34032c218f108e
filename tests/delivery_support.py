"""Test helpers for delivery: a real local webhook receiver that verifies requests with the
README's snippet, and a campaign template that sends through a channel."""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import yaml

from campaign_worker.demo.webhook_receiver import LocalReceiver

ROOT = Path(__file__).resolve().parents[1]
Verifier = Callable[..., bool]


def readme_verifier() -> Verifier:
    """``verify_campaign_webhook`` exactly as the README shows it."""
    text = (ROOT / "README.md").read_text()
    blocks = [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "def verify_" in b]
    assert len(blocks) == 1, "README: expected one python block with the verification snippet"
    namespace: dict[str, Any] = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)
    verifier: Verifier = namespace["verify_campaign_webhook"]
    return verifier


@dataclass
class Received:
    key: str
    verified: bool
    answered: int
    body: dict[str, Any] | None
    at: float


# What the receiver does with the n-th request (0-based): an HTTP status to answer, or
# ("sleep", seconds, status) to stall first (a timeout for the sender), ("retry", s) a 429.
Behaviour = Callable[[int], Any]


class WebhookReceiver(LocalReceiver):
    """A local HTTP server (the demo's ``LocalReceiver``): verifies each request with the
    README's snippet, answers as ``behaviour`` says, and counts per ``Idempotency-Key``."""

    path = "/hook"

    def __init__(
        self,
        secret: bytes,
        behaviour: Behaviour = lambda n: 200,
        clock_offset: float = 0.0,  # seconds added to the receiver's clock (replay tests)
        on_accepted: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        super().__init__()
        self.secret, self.behaviour = secret, behaviour
        self.clock_offset, self.on_accepted = clock_offset, on_accepted
        self.received: list[Received] = []
        self.raw: list[tuple[dict[str, str], bytes]] = []
        self._lock = threading.Lock()
        self.verify = readme_verifier()

    def __enter__(self) -> WebhookReceiver:
        self.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self.stop()

    def handle(self, request: BaseHTTPRequestHandler) -> None:
        body = request.rfile.read(int(request.headers.get("Content-Length") or 0))
        key = request.headers.get("Idempotency-Key") or ""
        now = time.time() + self.clock_offset
        verified = self.verify(self.secret, request.headers, body, now=now)
        with self._lock:
            number = len(self.raw)  # in order of arrival
            self.raw.append((dict(request.headers.items()), body))
        action = self.behaviour(number) if verified else 401
        headers: dict[str, str] = {}
        if isinstance(action, tuple) and action[0] == "sleep":
            time.sleep(action[1])
            action = action[2]
        elif isinstance(action, tuple) and action[0] == "retry":
            headers["Retry-After"] = str(action[1])
            action = 429
        status = int(action)
        payload = json.loads(body) if verified else None
        with self._lock:
            self.received.append(Received(key, verified, status, payload, time.time()))
        try:
            request.send_response(status)
            for name, value in headers.items():
                request.send_header(name, value)
            request.send_header("Content-Length", "0")
            request.end_headers()
        except OSError:
            return  # the sender gave up (its read timeout): nothing was delivered
        if 200 <= status < 300 and payload is not None and self.on_accepted is not None:
            self.on_accepted(payload)

    def accepted(self) -> Counter[str]:
        """2xx answers per Idempotency-Key (no de-duplication on the receiver's side)."""
        with self._lock:
            return Counter(r.key for r in self.received if 200 <= r.answered < 300)

    def attempts(self) -> Counter[str]:
        with self._lock:
            return Counter(r.key for r in self.received)


def channel_template(channel: str, template_id: str = "deliver") -> dict[str, Any]:
    """One stage, one message on ``channel``, then the conversation waits for a reply."""
    return {
        "template_id": template_id,
        "channel": channel,
        "campaign_types": {
            "notice": {
                "stages": [
                    {
                        "name": "hello",
                        "messages": [{"text": "Hello {first_name}", "wait": "1h"}],
                        "max_time_in_stage": {"after": "30d", "then": "fail"},
                    }
                ]
            }
        },
    }


def webhook_campaign(
    make_manager: Callable[..., Any], db: Any, templates_dir: Path, users: list[str]
) -> Any:
    """A manager over ``db`` whose campaign ``c`` (``channel_template("webhook")``) has
    recorded its first message to each of ``users``: their outbox rows wait to be sent."""
    (templates_dir / "deliver.yaml").write_text(yaml.safe_dump(channel_template("webhook")))
    manager = make_manager(db, campaign_templates_dir=templates_dir)
    manager.create_campaign(
        {
            "_id": "c",
            "name": "n",
            "campaign_type": "notice",
            "template_id": "deliver",
            "recipients": [{"user_id": user, "attributes": {}} for user in users],
        }
    )
    manager.initialize_campaign_conversations("c")
    manager.process_due_conversations("c")
    return manager


__all__ = [
    "Received",
    "WebhookReceiver",
    "channel_template",
    "readme_verifier",
    "webhook_campaign",
]
