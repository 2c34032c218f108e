"""structlog configuration: one pipeline for our events, Celery's and the stdlib's.

JSON lines in production, a readable console renderer in a terminal (``LOG_FORMAT``).
Context (task_id, task_name, campaign_id, conversation_id) lives in contextvars, bound by
Celery signals, so every event inside a task carries it without the task doing anything.
"""

from __future__ import annotations

import logging
import logging.config
import re
import sys
from collections.abc import Mapping
from typing import Any

import structlog
from structlog.types import EventDict, Processor, WrappedLogger

# Keys whose values are message bodies or secrets. ``args``/``kwargs`` are task payloads
# (Celery's "received"/"succeeded" records carry their repr under ``data``), which hold
# inbound message bodies.
BODY_KEYS = frozenset({"content", "body", "text", "message_body", "args", "kwargs"})
SECRET_KEYS = frozenset({"password", "secret", "token", "authorization", "api_key"})
_URI_CREDENTIALS = re.compile(
    r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]*):[^@/\s]+@", re.I
)
REDACTED = "[redacted]"


def redact_uri(value: str) -> str:
    """``redis://user:pw@host`` -> ``redis://user:[redacted]@host`` (``redis://:pw@host``,
    a password without a user, too)."""
    return _URI_CREDENTIALS.sub(rf"\g<scheme>\g<user>:{REDACTED}@", value)


class Redactor:
    """Drops secrets always, and message bodies at INFO and above when configured."""

    def __init__(self, redact_bodies: bool = True) -> None:
        self.redact_bodies = redact_bodies

    def __call__(self, logger: WrappedLogger, method: str, event_dict: EventDict) -> EventDict:
        debug = method == "debug" or event_dict.get("level") == "debug"
        redacted = self._redact(event_dict, self.redact_bodies and not debug)
        event_dict.clear()
        event_dict.update(redacted)
        return event_dict

    def _redact(self, mapping: Mapping[str, Any], bodies: bool, depth: int = 0) -> dict[str, Any]:
        # A copy: nested dicts may belong to the caller (e.g. a LogRecord's ``data``).
        result: dict[str, Any] = {}
        for key, value in mapping.items():
            lowered = key.lower() if isinstance(key, str) else ""
            if lowered in SECRET_KEYS or (bodies and lowered in BODY_KEYS):
                result[key] = REDACTED
            elif isinstance(value, str) and "://" in value:
                result[key] = redact_uri(value)
            elif isinstance(value, dict) and depth < 4:
                result[key] = self._redact(value, bodies, depth + 1)
            else:
                result[key] = value
        return result


def _shared_processors(redact_bodies: bool) -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.stdlib.ExtraAdder(),
        Redactor(redact_bodies),
    ]


def configure_logging(
    level: str = "INFO",
    fmt: str = "auto",
    redact_bodies: bool = True,
    stream: Any = None,
) -> None:
    """Configure structlog and route stdlib logging (Celery's too) through it."""
    stream = stream or sys.stderr
    use_json = fmt == "json" or (fmt == "auto" and not stream.isatty())
    renderer: Processor = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=stream.isatty())
    )
    shared = _shared_processors(redact_bodies)
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)  # warnings become records of this pipeline too
    # Chatty libraries stay at WARNING unless we debug.
    for name in ("pymongo", "kombu", "amqp", "urllib3"):
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLevelName(level)))
