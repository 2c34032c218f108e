"""Clocks. The service never calls ``datetime.now`` itself: tests and demos move time."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

from campaign_worker.domain.documents import to_utc


class SystemClock:
    def now(self) -> datetime:
        return to_utc(datetime.now(UTC))


class ManualClock:
    """A clock that only moves when told to (thread-safe)."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = to_utc(start or datetime.now(UTC))
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, delta: timedelta) -> datetime:
        with self._lock:
            self._now = to_utc(self._now + delta)
            return self._now

    def set(self, when: datetime) -> None:
        with self._lock:
            self._now = to_utc(when)


class OffsetClock:
    """System time plus an offset read from a callable: lets a demo compress time
    across processes (each worker reads the shared offset)."""

    def __init__(
        self, offset_seconds: float = 0.0, speed: float = 1.0, epoch: datetime | None = None
    ) -> None:
        self._offset = timedelta(seconds=offset_seconds)
        self._speed = speed
        self._epoch = to_utc(epoch or datetime.now(UTC))

    def now(self) -> datetime:
        real = datetime.now(UTC)
        scaled = self._epoch + (real - self._epoch) * self._speed
        return to_utc(scaled + self._offset)
