"""structlog configuration: one pipeline for our events, Celery's and the stdlib's.

JSON lines in production, a readable console renderer in a terminal (``LOG_FORMAT``).
Context (task_id, task_name, campaign_id, conversation_id) lives in contextvars, bound by
Celery signals, so every event inside a task carries it without the task doing anything.
"""

from __future__ import annotations

import ast
import contextlib
import json
import logging
import logging.config
import os
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

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

# Task argument keys whose values are ids, never bodies: shown in argument reprs (Flower,
# Celery's log lines); every other value is redacted.
VISIBLE_KEYS = frozenset(
    {
        "_id",
        "id",
        "campaign_id",
        "conversation_id",
        "user_id",
        "message_id",
        "template_id",
        "campaign_type",
        "stage",
        "limit",
        "timestamp",
        "start_at",
    }
)
MIN_SECRET = 8  # shorter body strings ("yes", "STOP") are too common to scrub from text
MAX_SECRETS = 64  # the longest ones: a 50,000-recipient campaign must not slow every line
LONG_TEXT = 16_000  # above this, a log string is cut: no 10 MB body in one line


class TaskSecrets:
    """The body strings of one task's arguments, found on first use (most tasks log
    nothing at INFO that needs them)."""

    def __init__(self, *arguments: Any) -> None:
        self._arguments: tuple[Any, ...] | None = arguments
        self._secrets: tuple[str, ...] = ()

    def get(self) -> tuple[str, ...]:
        if self._arguments is not None:
            self._secrets, self._arguments = secrets_of(*self._arguments), None
        return self._secrets


#: The task running in this context (bound at task_prerun): its body strings are scrubbed
#: from every log line, since exception messages and tracebacks can echo an argument.
task_secrets: ContextVar[TaskSecrets | None] = ContextVar("task_secrets", default=None)


def redact_arguments(value: Any, key: str = "", depth: int = 0) -> Any:
    """``value`` with everything but ids (``VISIBLE_KEYS``) replaced by ``[redacted]``."""
    if isinstance(value, Mapping) and depth < 6:
        return {k: redact_arguments(v, str(k), depth + 1) for k, v in value.items()}
    if key in VISIBLE_KEYS and (value is None or isinstance(value, str | int | float)):
        return value if not isinstance(value, str) else value[:512]
    return REDACTED


def secrets_of(*values: Any) -> tuple[str, ...]:
    """Every body string (not an id) inside ``values``, longest first."""
    found = {text for text in _strings(values, "", 0) if len(text) >= MIN_SECRET}
    return tuple(sorted(found, key=len, reverse=True)[:MAX_SECRETS])


def _strings(value: Any, key: str, depth: int) -> Iterator[str]:
    if depth > 8:
        return
    if isinstance(value, str):
        if key not in VISIBLE_KEYS:
            yield value
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield from _strings(v, str(k), depth + 1)
    elif isinstance(value, Sequence | set) and not isinstance(value, bytes):
        for item in value:
            yield from _strings(item, key, depth + 1)


def scrub(text: str, secrets: Sequence[str]) -> str:
    """Replace each secret in ``text``, also a cut-off start of one (reprs truncate), by
    ``[redacted]``."""
    for secret in secrets:
        probe = secret[:MIN_SECRET]
        start = text.find(probe)
        while start != -1:
            length = _common_prefix(text, start, secret)
            text = text[:start] + REDACTED + text[start + length :]
            start = text.find(probe, start + len(REDACTED))
    return text


def _common_prefix(text: str, start: int, secret: str) -> int:
    length = 0
    limit = min(len(secret), len(text) - start)
    while length < limit and text[start + length] == secret[length]:
        length += 1
    return length


class BodyScrubber:
    """Last step before rendering (after tracebacks are formatted): scrub the running
    task's body strings from every value and cut very long ones, at INFO and above."""

    def __init__(self, redact_bodies: bool = True) -> None:
        self.redact_bodies = redact_bodies

    def __call__(self, logger: WrappedLogger, method: str, event_dict: EventDict) -> EventDict:
        if not self.redact_bodies or event_dict.get("level") == "debug" or method == "debug":
            return event_dict
        running = task_secrets.get()
        secrets = running.get() if running is not None else ()
        for key, value in list(event_dict.items()):
            event_dict[key] = self._clean(value, secrets, 0)
        return event_dict

    def _clean(self, value: Any, secrets: tuple[str, ...], depth: int) -> Any:
        if isinstance(value, str):
            cleaned = scrub(value, secrets) if secrets else value
            if len(cleaned) > LONG_TEXT:
                cut = len(cleaned) - LONG_TEXT
                cleaned = f"{cleaned[:LONG_TEXT]}...[{cut} characters cut]"
            return cleaned
        if isinstance(value, dict) and depth < 4:
            return {k: self._clean(v, secrets, depth + 1) for k, v in value.items()}
        return value


# Credentials of this process's configuration (``register_credentials``): scrubbed from
# every rendered line at every level, exception texts and tracebacks included.
_credentials: tuple[str, ...] = ()


def register_credentials(*values: str | None) -> None:
    """Remember credentials to scrub from every log line: passwords found in URIs (broker,
    result backend, MongoDB) and secrets given as they are (webhook secret, SMTP
    password). Values under 4 characters are skipped (too common to scrub from text)."""
    found = []
    for value in values:
        if not value:
            continue
        match = _URI_CREDENTIALS.search(value) if "://" in value else None
        if match is not None:
            password = match.group(0)[len(match.group("scheme") + match.group("user")) + 1 : -1]
            found.append(unquote(password))
            found.append(password)
        elif "://" not in value:
            found.append(value)
    global _credentials
    _credentials = tuple(sorted({v for v in found if len(v) >= 4}, key=len, reverse=True))


def scrub_credentials(logger: WrappedLogger, method: str, event_dict: EventDict) -> EventDict:
    """Last step before rendering: no registered credential survives in any value."""
    if not _credentials:
        return event_dict
    for key, value in list(event_dict.items()):
        event_dict[key] = _without_credentials(value, 0)
    return event_dict


def _without_credentials(value: Any, depth: int) -> Any:
    if isinstance(value, str):
        for secret in _credentials:
            if secret in value:
                value = value.replace(secret, REDACTED)
        return value
    if isinstance(value, dict) and depth < 6:
        return {k: _without_credentials(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple) and depth < 6:
        return [_without_credentials(v, depth + 1) for v in value]
    return value


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


def task_result_fields(logger: WrappedLogger, method: str, event_dict: EventDict) -> EventDict:
    """Celery's "Task ... succeeded in ...s: <repr>" line: the result as a structured
    ``result`` field (task results are JSON, so their repr reads back) and the event
    without the repr."""
    data = event_dict.get("data")
    if not isinstance(data, dict) or not isinstance(data.get("return_value"), str):
        return event_dict
    data = dict(data)
    text = data.pop("return_value")
    try:
        event_dict["result"] = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        event_dict["result"] = text
    runtime = data.get("runtime")
    took = f" in {runtime:.3f}s" if isinstance(runtime, int | float) else ""
    event_dict["event"] = f"Task {data.get('name')}[{data.get('id')}] succeeded{took}"
    event_dict["data"] = data
    return event_dict


def uses_json(fmt: str, stream: Any = None) -> bool:
    """Whether log lines are JSON: ``json``, or ``auto`` and not a terminal."""
    stream = stream or sys.stderr
    return fmt == "json" or (fmt == "auto" and not stream.isatty())


def json_say(message: str, stream: Any = sys.__stdout__) -> None:
    """Celery's own console lines (``worker: Warm shutdown``), as JSON lines. Runs in a
    signal handler, like Celery's ``safe_say``: one ``os.write``, no logging locks."""
    line = json.dumps(
        {
            "event": message.strip(),
            "level": "info",
            "logger": "celery.apps.worker",
            "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        }
    )
    with contextlib.suppress(OSError, ValueError, AttributeError):
        os.write(stream.fileno(), f"{line}\n".encode())


def _shared_processors(redact_bodies: bool) -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.stdlib.ExtraAdder(),
        task_result_fields,
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
    use_json = uses_json(fmt, stream)
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
            BodyScrubber(redact_bodies),
            scrub_credentials,
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
    # Warnings become records of this pipeline too. Installed afresh: captureWarnings(True)
    # does nothing if it ran before, even when warnings.showwarning was replaced since.
    logging.captureWarnings(False)
    logging.captureWarnings(True)
    # Chatty libraries stay at WARNING unless we debug.
    for name in ("pymongo", "kombu", "amqp", "urllib3"):
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLevelName(level)))
