"""Counting MongoDB commands on the wire (pymongo command monitoring).

``CommandCounter`` is a ``pymongo.monitoring.CommandListener``: register it on a client
(``MongoClient(..., event_listeners=[counter])``) and every command that client sends
(``find``, ``getMore``, ``insert``, ``update``, ``findAndModify``, ...) is counted by name.
One command is one request/reply exchange with the server, i.e. one round trip, so the
counts are what the bench and the wire tests use to show that batch work costs a fixed
number of round trips per batch rather than one per conversation.

Server monitoring heartbeats and connection handshakes are not commands in this sense
(pymongo reports them through other listener types) and are not counted.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

from pymongo import monitoring


@dataclass(frozen=True)
class CommandCounts:
    """Commands counted over some span: per command name, plus failures."""

    by_name: Mapping[str, int] = field(default_factory=dict)
    failed: int = 0

    @property
    def total(self) -> int:
        return sum(self.by_name.values())

    def __sub__(self, earlier: CommandCounts) -> CommandCounts:
        names = set(self.by_name) | set(earlier.by_name)
        diff = {name: self.by_name.get(name, 0) - earlier.by_name.get(name, 0) for name in names}
        return CommandCounts(
            by_name={name: count for name, count in sorted(diff.items()) if count},
            failed=self.failed - earlier.failed,
        )

    def as_dict(self) -> dict[str, object]:
        return {"total": self.total, "failed": self.failed, "by_name": dict(self.by_name)}


class _Span:
    """Filled in when a ``CommandCounter.measure()`` block exits."""

    def __init__(self) -> None:
        self.counts = CommandCounts()


class CommandCounter(monitoring.CommandListener):
    """Counts the commands a MongoClient sends, by command name. Thread-safe.

    ``ignore`` names commands left out of the counts (e.g. ``{"endSessions"}``).
    """

    def __init__(self, ignore: Iterable[str] = ()) -> None:
        self._ignore = frozenset(ignore)
        self._lock = threading.Lock()
        self._started: Counter[str] = Counter()
        self._failed = 0

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name in self._ignore:
            return
        with self._lock:
            self._started[event.command_name] += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        return None

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        if event.command_name in self._ignore:
            return
        with self._lock:
            self._failed += 1

    def snapshot(self) -> CommandCounts:
        with self._lock:
            return CommandCounts(by_name=dict(sorted(self._started.items())), failed=self._failed)

    @property
    def total(self) -> int:
        return self.snapshot().total

    def reset(self) -> None:
        with self._lock:
            self._started.clear()
            self._failed = 0

    @contextmanager
    def measure(self) -> Iterator[_Span]:
        """``with counter.measure() as span: ...`` then ``span.counts`` holds the commands
        sent inside the block (by every thread using the client)."""
        span = _Span()
        before = self.snapshot()
        try:
            yield span
        finally:
            span.counts = self.snapshot() - before


__all__ = ["CommandCounter", "CommandCounts"]
