"""Per-connection rate limiting: a token bucket and a strike count.

Counting per connection, not per address, keeps users behind one proxy from
throttling each other.
"""

from __future__ import annotations

import time


class RateLimiter:
    __slots__ = ("capacity", "per_second", "tokens", "stamp", "strikes")

    def __init__(self, messages_per_minute: int) -> None:
        self.capacity = float(messages_per_minute)
        self.per_second = messages_per_minute / 60.0
        self.tokens = self.capacity
        self.stamp = time.monotonic()
        self.strikes = 0

    def check(self, now: float | None = None) -> float:
        """Take one token: 0.0 when allowed, else seconds until one is free."""
        if now is None:
            now = time.monotonic()
        self.tokens = min(
            self.capacity, self.tokens + (now - self.stamp) * self.per_second
        )
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            self.strikes = 0
            return 0.0
        self.strikes += 1
        return (1.0 - self.tokens) / self.per_second
