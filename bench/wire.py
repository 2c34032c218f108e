"""Bench plumbing: the servers measured, a command recorder, CPU time of processes.

``mongo_server`` honours ``MONGODB_URI``; otherwise it starts a secantusdb on a free port
(the demo's embedded launcher) and knows its pid, so the bench can say how busy the
stand-in server was. ``Recorder`` is a pymongo ``CommandListener`` that counts commands
(one command = one round trip), sums their server-reported durations and, on request,
keeps the commands themselves (to replay the same updates as a raw baseline).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pymongo import monitoring

from campaign_worker.demo.embedded import EmbeddedService, start_mongo, start_redis

Doc = dict[str, Any]
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Server:
    """A service the bench talks to; ``pid`` is known when the bench started it."""

    uri: str
    kind: str
    pid: int | None = None


@contextmanager
def _embedded(start: Any, kind: str) -> Iterator[Server]:
    workdir = Path(tempfile.mkdtemp(prefix="cw-bench-"))
    service: EmbeddedService = start(workdir)
    try:
        yield Server(service.url, kind, service.process.pid)
    finally:
        service.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@contextmanager
def mongo_server(uri: str | None) -> Iterator[Server]:
    """``uri`` if given (MONGODB_URI), else a secantusdb the bench starts and stops."""
    if uri:
        yield Server(uri, "MONGODB_URI")
        return
    with _embedded(start_mongo, "secantusdb (started by the bench)") as server:
        yield server


@contextmanager
def redis_broker(url: str | None) -> Iterator[Server]:
    """``url`` if given (BENCH_BROKER_URL), else a private redis-server on a free port:
    the bench never touches a shared Redis it was not pointed at."""
    if url:
        yield Server(url, "BENCH_BROKER_URL")
        return
    with _embedded(start_redis, "redis-server (started by the bench)") as server:
        yield server


# ----------------------------------------------------------------------------- commands


@dataclass
class Command:
    name: str
    collection: str
    body: Doc | None
    micros: int = 0


@dataclass
class Span:
    commands: list[Command] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.commands)

    def by_name(self) -> dict[str, int]:
        return dict(sorted(Counter(c.name for c in self.commands).items()))

    def micros(self) -> int:
        return sum(c.micros for c in self.commands)


class Recorder(monitoring.CommandListener):
    """Records every command of the client it is registered on while a span is open."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._span: Span | None = None
        self._keep_bodies = False
        self._pending: dict[tuple[int, int], Command] = {}

    @contextmanager
    def span(self, keep_bodies: bool = False) -> Iterator[Span]:
        span = Span()
        with self._lock:
            self._span, self._keep_bodies = span, keep_bodies
        try:
            yield span
        finally:
            with self._lock:
                self._span, self._pending = None, {}

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        with self._lock:
            if self._span is None:
                return
            name = event.command_name
            target = event.command.get(name)
            collection = str(event.command.get("collection", "")) if name == "getMore" else ""
            if isinstance(target, str):
                collection = target
            body = dict(event.command) if self._keep_bodies else None
            command = Command(name, collection, body)
            self._span.commands.append(command)
            self._pending[(event.request_id, event.operation_id or 0)] = command

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        self._finish(event.request_id, event.operation_id or 0, event.duration_micros)

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        self._finish(event.request_id, event.operation_id or 0, event.duration_micros)

    def _finish(self, request_id: int, operation_id: int, micros: int) -> None:
        with self._lock:
            command = self._pending.pop((request_id, operation_id), None)
            if command is not None:
                command.micros = micros


# ----------------------------------------------------------------------------- CPU time


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces: split after its closing parenthesis.
    return raw[raw.rindex(")") + 2 :].split()


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one live process (0 if gone)."""
    fields = _stat_fields(pid)
    if fields is None:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def group_cpu_seconds(pgid: int) -> float:
    """CPU seconds of every live process in process group ``pgid`` (a worker and its
    prefork children: the bench starts each worker in its own session)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is not None and int(fields[2]) == pgid:
            total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return total
