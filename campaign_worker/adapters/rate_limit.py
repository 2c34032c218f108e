"""Per-channel rate limits shared by every worker process and host, in Redis (``limits``).

A moving window: at most N sends of a channel in any window of the limit's length, counted
in one Redis sorted set per channel (an atomic Lua script per hit, a hit taking a
block of slots at once), so adding workers never
adds sends. Keys live under ``RATE_LIMIT_KEY_PREFIX``."""

from __future__ import annotations

import time
from collections.abc import Mapping

from limits import RateLimitItem, parse
from limits.errors import StorageError
from limits.storage import RedisStorage
from limits.strategies import MovingWindowRateLimiter

from campaign_worker.domain.errors import TransientError

# Never wait less than this for a slot (the window's oldest hit may expire any moment).
_MIN_WAIT_SECONDS = 0.01


class RedisRateLimiter:
    """``take(channel, wanted)``: up to ``wanted`` slots taken now (one hit of that cost,
    else one of what the window has left), and when fewer, the seconds to the next."""

    def __init__(self, url: str, limits: Mapping[str, str], key_prefix: str) -> None:
        storage = RedisStorage(url, key_prefix=key_prefix, wrap_exceptions=True)
        self._limiter = MovingWindowRateLimiter(storage)
        self._items: dict[str, RateLimitItem] = {
            channel: parse(limit) for channel, limit in limits.items()
        }

    def take(self, channel: str, wanted: int) -> tuple[int, float]:
        item = self._items.get(channel)
        if item is None or wanted <= 0:
            return wanted, 0.0
        try:
            if self._limiter.hit(item, "channel", channel, cost=wanted):
                return wanted, 0.0
            stats = self._limiter.get_window_stats(item, "channel", channel)
            granted = min(stats.remaining, wanted)
            if granted > 0 and not self._limiter.hit(item, "channel", channel, cost=granted):
                granted = 0  # another process took them meanwhile
        except StorageError as exc:
            raise TransientError(
                f"rate limiter unreachable: {type(exc.storage_error).__name__}"
            ) from None
        return granted, max(stats.reset_time - time.time(), _MIN_WAIT_SECONDS)


class NoRateLimit:
    """No limit configured (or no Redis to share it through)."""

    def take(self, channel: str, wanted: int) -> tuple[int, float]:
        return wanted, 0.0


__all__ = ["NoRateLimit", "RedisRateLimiter"]
