"""Rate limiting of client messages: per connection, and per user.

Counting per connection, not per address, keeps users behind one proxy from
throttling each other. The per-user bucket is shared by all of a user's
connections on this node, so opening more connections does not buy more
messages (fifty connections of one user once relayed 2,950 events in 0.1 s).
It is counted per node: a user whose connections land on N workers gets up to
N times the rate, which the per-address connection limit bounds.
"""

from __future__ import annotations

import time


class RateLimiter:
    """A token bucket with a strike count (refusals in a row)."""

    __slots__ = ("capacity", "per_second", "tokens", "stamp", "strikes")

    def __init__(self, messages_per_minute: int) -> None:
        self.capacity = float(messages_per_minute)
        self.per_second = messages_per_minute / 60.0
        self.tokens = self.capacity
        self.stamp = time.monotonic()
        self.strikes = 0

    def refill(self, now: float) -> None:
        self.tokens = min(
            self.capacity, self.tokens + (now - self.stamp) * self.per_second
        )
        self.stamp = now

    def wait(self) -> float:
        """Seconds until a token is free (0.0: one is free now); after refill."""
        if self.tokens >= 1.0:
            return 0.0
        return (1.0 - self.tokens) / self.per_second

    def check(self, now: float | None = None) -> float:
        """Take one token: 0.0 when allowed, else seconds until one is free."""
        if now is None:
            now = time.monotonic()
        self.refill(now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            self.strikes = 0
            return 0.0
        self.strikes += 1
        return self.wait()


class SharedLimiter:
    """A connection's own bucket and its user's, taken together.

    A message passes only when both have a token, and then takes one from
    each; ``strikes`` are the connection's own, so the 4129 close follows
    the connection that keeps sending while refused.
    """

    __slots__ = ("own", "user", "strikes")

    def __init__(self, own: RateLimiter, user: RateLimiter) -> None:
        self.own = own
        self.user = user
        self.strikes = 0

    def check(self, now: float | None = None) -> float:
        if now is None:
            now = time.monotonic()
        own, user = self.own, self.user
        own.refill(now)
        user.refill(now)
        wait = max(own.wait(), user.wait())
        if wait:
            self.strikes += 1
            return wait
        own.tokens -= 1.0
        user.tokens -= 1.0
        self.strikes = 0
        return 0.0


class UserBuckets:
    """One bucket per user with connections on this node, dropped with the
    user's last connection."""

    def __init__(self, messages_per_minute: int) -> None:
        self.messages_per_minute = messages_per_minute
        self._buckets: dict[str, tuple[RateLimiter, int]] = {}

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, user_key: str) -> RateLimiter:
        """The user's bucket, counting one more connection of theirs."""
        bucket, count = self._buckets.get(user_key, (None, 0))
        if bucket is None:
            bucket = RateLimiter(self.messages_per_minute)
        self._buckets[user_key] = (bucket, count + 1)
        return bucket

    def give_back(self, user_key: str) -> None:
        """One connection of the user is gone."""
        entry = self._buckets.get(user_key)
        if entry is None:
            return
        bucket, count = entry
        if count <= 1:
            del self._buckets[user_key]
        else:
            self._buckets[user_key] = (bucket, count - 1)
